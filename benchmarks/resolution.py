"""Do SGMN's components earn their place at a finer patch grid? The goal models at 64 px and 128 px.

    python benchmarks/resolution.py --jobs 2   # `hard`, 5 selection seeds: about 50 min on 2 cores from an empty cache
    python benchmarks/resolution.py --report --jobs 2   # the goal models on the report seeds 0-4: 28 min (64 px cached)
    python benchmarks/resolution.py --smoke    # a minute or two; what tests/test_benchmarks.py runs

The accuracy benchmark trains the tiny tower on 64 px frames: a 4x4 grid of 16 px patches, where
even the ground-truth box earns nothing measurable (its oracle diagnostic). benchmarks/
localisation_scale.py found that at 128 px (8x8 patches) the same oracle earns R@1, from random
weights. This script asks the next question with the accuracy benchmark's pretrained start: per
frame size it pretrains the tiny tower at that input size (``sgmn pretrain``; at 64 px the
accuracy benchmark's own checkpoint, at 128 px the same recipe with the shops rendered at 192 px,
the default's 1.5x) and fine-tunes every model that issue 9's `hard` goals compare -- clip-meanpool,
full SGMN, SGMN without each of TGA, TDB, GCI and SMF -- and two diagnostics: oracle boxes (what
finding the product is worth) and TGA's bias on every layer of the tower (does a TGA closer to what
the oracle does capture it?), on `hard` data rendered at that size, with the accuracy benchmark's
budget and code path (``accuracy.run_one``), on seeds it never reports. Paired R@1 differences with
95% bootstrap CIs over seeds and queries, and TGA's mechanism metrics.

Writes the ``resolution`` section of docs/benchmarks.md and docs/benchmarks/resolution.json. With
``--report``: the goal models alone on the report seeds 0-4, judged as the accuracy benchmark judges
them, into the ``resolution-report`` section and docs/benchmarks/resolution_report.json.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402
import common  # noqa: E402
import localisation_scale  # noqa: E402

SECTION = "resolution"
JSON_PATH = common.REPO / "docs" / "benchmarks" / "resolution.json"
SEEDS = (100, 101, 102, 103, 104)  # selection seeds: the accuracy benchmark reports 0-4
REPORT_SECTION = "resolution-report"
REPORT_JSON_PATH = common.REPO / "docs" / "benchmarks" / "resolution_report.json"
REPORT_SEEDS = accuracy.AccuracyConfig().seeds
SIZES = (64, 128)
BASE_SIZE = 64  # the tiny tower's own input size: no override, the accuracy benchmark's pretraining
COMPARED = {"vs_clip_meanpool": accuracy.CLIP_MEANPOOL,
            **{k: accuracy.ABLATIONS[k] for k in ("TGA", "TDB", "GCI", "SMF")}}
# TGA's bias on every layer of the tiny tower: closer to what the oracle does (it masks every layer's
# attention); does it capture what localisation is worth where the default, on the last layer, does not?
TGA_EVERY_LAYER = accuracy.ALTERNATIVES["TGA on every layer"]


def tiny_variant(size: int) -> str:
    """The registered name of the tiny SGMN with its tower at ``size`` px: `sgmn-tiny` itself at
    its own size, else a variant registered here, so that `sgmn pretrain` can build it."""
    from sgmn.model.registry import get_config, list_models, register_variant

    if size == BASE_SIZE:
        return "sgmn-tiny"
    name = f"sgmn-tiny-{size}"
    if name not in list_models():
        register_variant(name)(lambda: get_config("sgmn-tiny", **{"vision.image_size": size}).replace(name=name))
    return name


def pretrain_overrides(size: int, base: dict) -> dict:
    if size == BASE_SIZE:
        return dict(base)
    from sgmn.train.pretrain import PretrainConfig

    # `sgmn pretrain` renders its shops at 96 px for the 64 px tower: keep that ratio
    rendered = base.get("image_size", PretrainConfig.image_size) * size // BASE_SIZE
    return {**base, "model": tiny_variant(size), "image_size": int(rendered)}


def sized(spec: accuracy.ModelSpec, size: int) -> accuracy.ModelSpec:
    """``spec`` with its tower at ``size`` px (unchanged at the base size, so the cache is shared)."""
    if size == BASE_SIZE:
        return spec
    return dataclasses.replace(spec, label=f"{spec.label}, {size} px",
                               overrides=(*spec.overrides, ("vision.image_size", size)))


def models(size: int, diagnostics: bool = True) -> list[accuracy.ModelSpec]:
    extra = (accuracy.ORACLE, TGA_EVERY_LAYER) if diagnostics else ()
    return [sized(m, size) for m in (accuracy.FULL, *COMPARED.values(), *extra)]


def _mean(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _fmt(value: Optional[float], fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def measure(cfg: accuracy.AccuracyConfig, preset: str, sizes, seeds, out: Path, jobs: int,
            threads: Optional[int], diagnostics: bool = True) -> dict:
    tasks, pretrains = [], {}
    for size in sizes:
        at_size = dataclasses.replace(cfg, data_overrides={**cfg.data_overrides, "image_size": size},
                                      pretrain=pretrain_overrides(size, cfg.pretrain))
        pretrains[size] = accuracy.ensure_pretrain(at_size, out)
        for seed in seeds:
            synth = accuracy.synth_config(at_size, preset, seed)
            accuracy.ensure_data(synth, out / "data")
            tasks += [(at_size, spec, synth, out, pretrains[size], {"preset": preset, "size": size})
                      for spec in models(size, diagnostics)]
    rows = accuracy.run_all(tasks, jobs, threads)
    result = {"preset": preset, "seeds": list(seeds), "diagnostics": diagnostics, "runs": len(rows),
              "fresh_runs": sum(not r.get("from_cache") for r in rows), "cpu_s": sum(r["cpu_s"] for r in rows),
              "sizes": {}}
    for size in sizes:
        mine = [r for r in rows if r["size"] == size]
        full = sized(accuracy.FULL, size).label
        oracle = sized(accuracy.ORACLE, size).label
        every_layer = sized(TGA_EVERY_LAYER, size).label

        def tga(label: str) -> dict:
            mech = [r.get("mechanism") or {} for r in mine if r["model"] == label]
            return {"cos": _mean([m.get("tga_cos") for m in mech]), "pointing": _mean([m.get("tga_pointing") for m in mech])}

        cell = result["sizes"][str(size)] = {
            "patches": (size // 16) ** 2,
            "pretrain": {"key": pretrains[size]["key"], "zero_shot": pretrains[size]["info"].get("zero_shot")},
            "R@1": {s.label: statistics.fmean(r["R@1"] for r in mine if r["model"] == s.label)
                    for s in models(size, diagnostics)},
            "effects": {name: accuracy.paired_effect(mine, preset, full, sized(spec, size).label, cfg.n_boot)
                        for name, spec in COMPARED.items()},
            "tga": {"SGMN": tga(full)},
        }
        if diagnostics:
            cell["oracle_minus_sgmn"] = accuracy.paired_effect(mine, preset, oracle, full, cfg.n_boot)
            cell["tga_every_layer_minus_sgmn"] = accuracy.paired_effect(mine, preset, every_layer, full, cfg.n_boot)
            cell["tga"]["TGA on every layer"] = tga(every_layer)
    return result


def markdown(result: dict, command: str, seconds: float, info: dict) -> str:
    sizes = list(result["sizes"])
    full_r1 = [f"{result['sizes'][s]['R@1'][sized(accuracy.FULL, int(s)).label]:.1f}" for s in sizes]
    rows = [["SGMN R@1", *full_r1]]
    rows += [[f"SGMN − {'clip-meanpool' if name == 'vs_clip_meanpool' else 'no ' + name}",
              *(accuracy._bold_if_clear(result["sizes"][s]["effects"][name]) for s in sizes)] for name in COMPARED]
    cells = [result["sizes"][s] for s in sizes]
    tga_models = ["SGMN"]
    if result["diagnostics"]:
        rows += [["oracle boxes − SGMN", *(accuracy._bold_if_clear(c["oracle_minus_sgmn"]) for c in cells)],
                 ["TGA on every layer − SGMN",
                  *(accuracy._bold_if_clear(c["tga_every_layer_minus_sgmn"]) for c in cells)]]
        tga_models.append("TGA on every layer")
    for model in tga_models:
        rows += [[f"{model}: TGA influence (mean cos of v with / without ASR)",
                  *(_fmt(c["tga"][model]["cos"], "{:.3f}") for c in cells)],
                 [f"{model}: TGA pointing (box mass / uniform)",
                  *(_fmt(c["tga"][model]["pointing"], "{:.2f}×") for c in cells)]]
    rows += [["pretraining: zero-shot frame → title R@1",
              *(_fmt((c["pretrain"]["zero_shot"] or {}).get("frame_to_title_R@1"), "{:.1f}") for c in cells)]]
    header = ["", *(f"{s} px ({int(result['sizes'][s]['patches'] ** 0.5)}×{int(result['sizes'][s]['patches'] ** 0.5)} "
                    f"patches)" for s in sizes)]
    if result["diagnostics"]:
        title = "Do the components earn their place at a finer patch grid?"
        which = ("every model of the goals and two diagnostics, oracle boxes and TGA's bias on all 3 layers of the "
                 f"tower, on selection seeds {result['seeds']} (the accuracy benchmark reports 0-4)")
    else:
        title = "The goals at a finer patch grid, on the report seeds"
        which = (f"every model of the goals, on the accuracy benchmark's report seeds {result['seeds']}. The 128 px "
                 "goal was set before this run, from the selection seeds' section: SGMN − clip-meanpool ≥ +10 with "
                 "its CI above 0, and each component's removal costing ≥ 2 with its CI above 0")
    return "\n".join([
        f"## {title} (`{result['preset']}`, pretrained start)", "",
        accuracy.provenance(command, seconds, result), "",
        common.machine_markdown(info), "",
        f"Per frame size, the tiny tower is pretrained at that input size (`sgmn pretrain`; at 128 px its shops are "
        f"rendered at 192 px, as they are at 96 px for 64 px). Fine-tuned from it on `{result['preset']}` data "
        f"rendered at that size, with the accuracy benchmark's budget: {which}. Paired R@1 differences, 95% bootstrap "
        "CI over seeds and queries (bold: the CI excludes 0); TGA's mechanism metrics are averaged over seeds.", "",
        common.markdown_table(header, rows),
    ])


def main(argv: Optional[list[str]] = None) -> None:
    report = {"seeds": REPORT_SEEDS, "section": REPORT_SECTION, "json": REPORT_JSON_PATH,
              "measure": functools.partial(measure, diagnostics=False),
              "help": "the goal models alone on the accuracy benchmark's report seeds (its own section and JSON)"}
    localisation_scale.size_sweep_main("resolution.py", __doc__.split("\n")[0], JSON_PATH, SECTION, measure, markdown,
                                       SIZES, (BASE_SIZE, 96), SEEDS, argv, report)


if __name__ == "__main__":
    main()
