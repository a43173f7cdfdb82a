"""Where GCI's cost at batch 32 comes from, on selection seeds.

    python benchmarks/gci_probe.py --jobs 2   # about 10 min on a quiet 2-core CPU (runs are cached with accuracy.py's)
    python benchmarks/gci_probe.py --smoke    # a minute; what tests/test_benchmarks.py runs

The accuracy benchmark's diagnostic pair "GCI at batch 32" finds that GCI costs R@1 on ``default``
when the batch (so the graph) is twice as large. This script takes the same preset, budget and code
path (``accuracy.run_one``) on the selection seeds 100-102, which the accuracy benchmark never
reports, and trains variants of GCI that each remove one suspect, every one paired against SGMN
without GCI at the same budget:

* L_reg alone (``losses.gnn`` 0): the graph then only trains its relevance MLP;
* no GCI with four times L_base's weight: about the triplet weight L_gnn adds, without the graph;
* one clip-product neighbour per node (``gci_topk_ratio`` 0) and every clip-product pair an edge
  (``gci_inter_all_pairs``): the edges;
* self-loops only (``gci_self_loops_only``): message passing; the learned layer maps each node alone;
* a fixed edge-weighted mean in place of the learned layer (``gci_layer`` "mean"): the layer's weights.

Then it asks whether the cost is one of small training sets: full GCI and L_base × 4, each against no
GCI, on sets that differ only in the number of training clips per product (``DATA_SIZES``; the
standard mode's sets have 3), with the same epochs, so more data is also more optimiser steps.

Writes the ``gci-probe`` section of docs/benchmarks.md and docs/benchmarks/gci_probe.json.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402
import common  # noqa: E402
import recipe_selection  # noqa: E402

SECTION = "gci-probe"
JSON_PATH = common.REPO / "docs" / "benchmarks" / "gci_probe.json"
SELECTION_SEEDS = recipe_selection.SELECTION_SEEDS  # seeds the accuracy benchmark never reports
PRESET = "default"
FULL, WITHOUT = accuracy.DIAGNOSTICS["GCI at batch 32"]
BUDGET = FULL.train
# variant -> (the model, what it removes)
VARIANTS = {
    "full GCI": (FULL, "nothing: GCI as published"),
    "L_reg alone": (accuracy.ModelSpec("SGMN, GCI with L_reg alone, batch 32", "sgmn-tiny",
                                       (("losses.gnn", 0.0),), train=BUDGET), "L_gnn"),
    "no GCI, L_base × 4": (accuracy.ModelSpec("SGMN − GCI, L_base × 4, batch 32", "sgmn-tiny",
                                              (("use_gci", False), ("losses.base", 4.0)), train=BUDGET),
                           "the graph, keeping about L_gnn's triplet weight"),
    "one neighbour": (accuracy.ModelSpec("SGMN, GCI with one clip–product neighbour, batch 32", "sgmn-tiny",
                                         (("gci_topk_ratio", 0.0),), train=BUDGET),
                      "all edges but one clip–product neighbour per node (and the self-loop)"),
    "every pair": (accuracy.ModelSpec("SGMN, GCI on every clip–product pair, batch 32", "sgmn-tiny",
                                      (("gci_inter_all_pairs", True),), train=BUDGET),
                   "the choice of clip–product edges (every pair is one)"),
    "self-loops only": (accuracy.ModelSpec("SGMN, GCI with self-loops only, batch 32", "sgmn-tiny",
                                           (("gci_self_loops_only", True),), train=BUDGET),
                        "message passing: the learned layer maps each node on its own"),
    "fixed mean": (accuracy.ModelSpec("SGMN, GCI as a fixed neighbour mean, batch 32", "sgmn-tiny",
                                      (("gci_layer", "mean"),), train=BUDGET),
                   "the learned layer: each node becomes the mean of itself and its edge-weighted neighbours"),
}

# training clips per product; the standard mode's sets have 3, so the first size repeats the table above
DATA_SIZES = (3, 6, 12)
SIZE_VARIANTS = ("full GCI", "no GCI, L_base × 4")


def probe(cfg: accuracy.AccuracyConfig, variants: dict, baseline: accuracy.ModelSpec, seeds, preset: str,
          out: Path, pretrained: dict, jobs: int = 1, threads: Optional[int] = None) -> dict:
    """Train every variant and ``baseline`` on ``preset`` x ``seeds``; each variant's paired R@1
    difference against the baseline, with its 95% CI."""
    tasks = []
    for seed in seeds:
        synth = accuracy.synth_config(cfg, preset, seed)
        accuracy.ensure_data(synth, out / "data")
        tasks += [(cfg, spec, synth, out, pretrained, {"preset": preset})
                  for spec in [baseline, *(spec for spec, _ in variants.values())]]
    rows = accuracy.run_all(tasks, jobs, threads)

    def r1(label):
        return [r["R@1"] for r in sorted(rows, key=lambda r: r["seed"]) if r["model"] == label]

    def curve(label):
        return accuracy.curve_means(rows, preset, label)[1]

    result = {}
    for name, (spec, removes) in variants.items():
        effect = accuracy.paired_effect(rows, preset, spec.label, baseline.label, cfg.n_boot)
        result[name] = {"model": spec.label, "removes": removes, "R@1": statistics.fmean(r1(spec.label)),
                        "per_seed": r1(spec.label), "vs_no_gci": effect, "curve": curve(spec.label)}
    return {"seeds": list(seeds), "preset": preset, "budget": dict(baseline.train),
            "baseline": {"model": baseline.label, "R@1": statistics.fmean(r1(baseline.label)),
                         "per_seed": r1(baseline.label), "curve": curve(baseline.label)},
            "curve_epochs": accuracy.curve_means(rows, preset, baseline.label)[0],
            "variants": result, "runs": len(rows), "fresh_runs": sum(not r.get("from_cache") for r in rows),
            "cpu_s": sum(r["cpu_s"] for r in rows)}


def probe_sizes(cfg: accuracy.AccuracyConfig, sizes, variants: dict, baseline: accuracy.ModelSpec, seeds,
                preset: str, out: Path, pretrained: dict, jobs: int = 1, threads: Optional[int] = None) -> dict:
    """Each variant's paired R@1 difference against ``baseline`` on sets of ``preset`` that differ
    only in ``clips_per_product`` (the training clips of each product; the test sets keep their size)."""
    tasks = []
    for size in sizes:
        for seed in seeds:
            synth = dataclasses.replace(accuracy.synth_config(cfg, preset, seed), clips_per_product=size)
            accuracy.ensure_data(synth, out / "data")
            tasks += [(cfg, spec, synth, out, pretrained, {"preset": f"{preset}, {size} clips per product"})
                      for spec in [baseline, *variants.values()]]
    rows = accuracy.run_all(tasks, jobs, threads)
    result = []
    for size in sizes:
        group = f"{preset}, {size} clips per product"
        base = [r for r in rows if r["preset"] == group and r["model"] == baseline.label]
        synth = base[0]["synth"]
        result.append({
            "clips_per_product": size,
            "training_clips": synth["rooms"] * synth["products_per_room"] * size,
            "steps": statistics.fmean(r["steps"] for r in base),
            "baseline_R@1": statistics.fmean(r["R@1"] for r in base),
            "vs_no_gci": {name: accuracy.paired_effect(rows, group, spec.label, baseline.label, cfg.n_boot)
                          for name, spec in variants.items()},
        })
    return {"sizes": result, "runs": len(rows), "fresh_runs": sum(not r.get("from_cache") for r in rows),
            "cpu_s": sum(r["cpu_s"] for r in rows)}


def _provenance(result: dict) -> str:
    fresh, runs = result["fresh_runs"], result["runs"]
    cache = "the accuracy benchmark's results cache"
    if fresh == runs:
        return f"all {runs} training runs trained here"
    if fresh == 0:
        return f"all {runs} training runs read from {cache}"
    return f"{fresh} of {runs} training runs trained here, the others read from {cache}"


def markdown(result: dict, command: str, seconds: float, info: dict) -> str:
    base = result["baseline"]
    rows = [[name, v["removes"], f"{v['R@1']:.1f}", accuracy._bold_if_clear(v["vs_no_gci"])]
            for name, v in result["variants"].items()]
    curve_rows = [[name, *(f"{x:.1f}" for x in v["curve"])]
                  for name, v in [("no GCI", base), *result["variants"].items()]]
    return "\n".join([
        f"## Where GCI's cost at batch 32 comes from (`{result['preset']}`, selection seeds)", "",
        f"Command: `{command}` — finished in {seconds / 60:.1f} min wall ({_provenance(result)}); the runs' own "
        f"CPU time adds up to {result['cpu_s'] / 60:.1f} CPU-min.", "",
        common.machine_markdown(info), "",
        f"The accuracy benchmark's sizes and code path on `{result['preset']}`, trained with "
        f"`{json.dumps(result['budget'])}` as its diagnostic pair \"GCI at batch 32\", on seeds {result['seeds']} "
        "(the accuracy benchmark reports seeds 0-4, never these). Each variant of GCI removes one suspect; its "
        f"test R@1 (mean over the seeds) and its paired difference against `{base['model']}` "
        f"(R@1 {base['R@1']:.1f}), 95% CI over seeds and queries (bold: it excludes 0):", "",
        common.markdown_table(["variant", "what it removes", "R@1", "− no GCI"], rows), "",
        "A cost that stays when a suspect is removed does not come from that suspect. Per-seed values are in "
        "`docs/benchmarks/gci_probe.json`.", "",
        "Test R@1 after each scored epoch of the same runs (mean over the seeds), which shows when in training "
        "each variant gains or loses against no GCI:", "",
        common.markdown_table(["model", *(f"epoch {e}" for e in result["curve_epochs"])], curve_rows),
        *_sizes_markdown(result.get("by_size")),
    ])


def _sizes_markdown(by_size: Optional[dict]) -> list[str]:
    if not by_size:
        return []
    names = list(by_size["sizes"][0]["vs_no_gci"])
    rows = [[str(s["clips_per_product"]), str(s["training_clips"]), f"{s['steps']:.0f}", f"{s['baseline_R@1']:.1f}",
             *(accuracy._bold_if_clear(s["vs_no_gci"][n]) for n in names)] for s in by_size["sizes"]]
    fresh = by_size["fresh_runs"]
    return [
        "", "The same comparison on sets that differ only in the number of training clips per product (as many "
        "test clips, drawn anew by the generator; the same epochs, so more clips are also more optimiser steps), "
        f"paired against no GCI on each set ({by_size['runs']} runs, {fresh} trained here):", "",
        common.markdown_table(["training clips per product", "training clips", "optimiser steps", "no GCI R@1",
                               *(f"{n} − no GCI" for n in names)], rows),
    ]


def run(cfg: accuracy.AccuracyConfig, variants: dict, baseline: accuracy.ModelSpec, seeds, preset: str, doc: Path,
        json_path: Path, out: Path, command: str, jobs: int = 1, threads: Optional[int] = None,
        sizes: tuple[int, ...] = ()) -> dict:
    info = common.machine_info()
    t0 = time.perf_counter()
    pretrained = accuracy.ensure_pretrain(cfg, out)
    result = probe(cfg, variants, baseline, seeds, preset, out, pretrained, jobs, threads)
    if sizes:
        result["by_size"] = probe_sizes(cfg, sizes, {n: variants[n][0] for n in SIZE_VARIANTS if n in variants},
                                        baseline, seeds, preset, out, pretrained, jobs, threads)
    seconds = time.perf_counter() - t0
    common.write_section(SECTION, markdown(result, command, seconds, info), doc)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({**result, "command": command, "git": info.get("git")}, indent=1) + "\n")
    return result


def main(argv: Optional[list[str]] = None) -> None:
    args, threads = accuracy.selection_script_args(
        __doc__.split("\n")[0], JSON_PATH, "two variants at the accuracy smoke sizes and budget", argv)
    variants, baseline, sizes = VARIANTS, WITHOUT, DATA_SIZES
    if args.smoke:
        # the smoke sets are too small for batch 32: the smoke budget, one seed, two variants
        cfg, seeds, preset = accuracy.mode_config("smoke"), SELECTION_SEEDS[:1], "easy"
        variants = {k: (dataclasses.replace(spec, train=()), removes)
                    for k, (spec, removes) in VARIANTS.items() if k in ("full GCI", "L_reg alone")}
        baseline = dataclasses.replace(WITHOUT, train=())
        sizes = (2, 3)  # the smoke sets have 2
    else:
        cfg, seeds, preset = accuracy.mode_config("standard"), SELECTION_SEEDS, PRESET
    command = common.command_line() if argv is None else "python benchmarks/gci_probe.py " + " ".join(argv)
    run(cfg, variants, baseline, seeds, preset, args.doc, args.json, args.out, command, args.jobs, threads, sizes)


if __name__ == "__main__":
    main()
