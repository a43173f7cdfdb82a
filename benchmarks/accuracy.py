"""Accuracy of SGMN against the baselines and its own ablations on the synthetic presets.

    python benchmarks/accuracy.py --quick    # < 15 min on a 2-core CPU (smaller data, 3 epochs, 2 seeds)
    python benchmarks/accuracy.py            # full sizes, 10 epochs, 3 seeds: for bigger machines
    python benchmarks/accuracy.py --smoke    # about a minute; what tests/test_benchmarks.py runs

What it does, every model with the same data, training budget and seeds:

1. on the synthetic presets ``easy``, ``default`` and ``hard``: ``clip-meanpool``, ``rice-icl``,
   full SGMN and SGMN without each of TGA, TDB, GCI, SMF and the text branch — all on the
   ``sgmn-tiny`` backbone (the registry gives the baselines the same tiny ViT), trained from
   random weights with ``sgmn.train.loop.train`` and evaluated with ``sgmn.eval.protocol.evaluate``
   (per-room galleries, video mode, main image); R@1/5/10 as mean ± std over the seeds;
2. the four difficulty knobs of ``SynthConfig`` swept one at a time around the ``default``
   preset (the others stay at the preset's values) for full SGMN vs ``clip-meanpool``.

A seed fixes both the synthetic data (``SynthConfig.seed``) and the training (``TrainConfig.seed``),
so the spread covers data and initialisation. Each synthetic set is generated once per
(preset / knob value, seed) into ``benchmarks/out/accuracy/data`` and reused, and each finished
(data, seed, model, budget) result is kept in ``benchmarks/out/accuracy/results`` so an
interrupted run resumes where it stopped. Writes the ``accuracy`` section of docs/benchmarks.md
and plots under docs/img/.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

PRESETS = ("easy", "default", "hard")
KNOBS = ("distractors", "domain_gap", "fine_grained", "asr_informativeness")


@dataclass(frozen=True)
class ModelSpec:
    label: str
    variant: str
    overrides: tuple[tuple[str, object], ...] = ()

    def overrides_dict(self) -> dict:
        return dict(self.overrides)


FULL = ModelSpec("SGMN", "sgmn-tiny")
MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("clip-meanpool", "clip-meanpool"),
    ModelSpec("rice-icl", "rice-icl"),
    FULL,
    ModelSpec("SGMN − TGA", "sgmn-tiny", (("use_tga", False),)),
    ModelSpec("SGMN − TDB", "sgmn-tiny", (("use_tdb", False),)),
    ModelSpec("SGMN − GCI", "sgmn-tiny", (("use_gci", False),)),
    ModelSpec("SGMN − SMF", "sgmn-tiny", (("use_smf", False),)),
    ModelSpec("SGMN − text", "sgmn-tiny", (("use_text", False),)),
)
KNOB_MODELS = (FULL, MODELS[0])  # full SGMN vs clip-meanpool


@dataclass
class AccuracyConfig:
    mode: str = "full"
    seeds: tuple[int, ...] = (0, 1, 2)
    presets: tuple[str, ...] = PRESETS
    models: tuple[ModelSpec, ...] = MODELS
    # SynthConfig fields replaced in every generated set (sizes only; difficulty stays the preset's).
    data_overrides: dict = field(default_factory=dict)
    # Knob sweep around `knob_preset`; the preset's own value is one of the points.
    knob_preset: str = "default"
    knob_values: dict = field(default_factory=lambda: {
        "distractors": (0.1, 0.5, 0.9), "domain_gap": (0.15, 0.5, 0.85),
        "fine_grained": (0.0, 0.5, 0.9), "asr_informativeness": (0.0, 0.6, 1.0)})
    knob_models: tuple[ModelSpec, ...] = KNOB_MODELS
    # TrainConfig fields, the same for every model. The tiny ViT starts from random weights, so it
    # trains at the full learning rate (backbone_lr_factor 1, as `sgmn demo` does).
    train: dict = field(default_factory=lambda: dict(
        epochs=10, batch_size=16, lr=1e-3, backbone_lr_factor=1.0, warmup_ratio=0.1,
        num_workers=0, val_fraction=0.0, log_every=50))


def mode_config(mode: str) -> AccuracyConfig:
    if mode == "full":
        return AccuracyConfig()
    if mode == "quick":
        cfg = AccuracyConfig(mode="quick", seeds=(0, 1),
                             data_overrides=dict(rooms=3, clips_per_product=3, test_clips_per_product=1,
                                                 frames_per_clip=6, image_size=64))
        cfg.train["epochs"] = 3
        return cfg
    if mode == "smoke":
        cfg = AccuracyConfig(
            mode="smoke", seeds=(0, 1), presets=("easy",), models=(MODELS[0], FULL, MODELS[-1]),
            data_overrides=dict(rooms=2, products_per_room=4, clips_per_product=2, test_clips_per_product=1,
                                frames_per_clip=3, image_size=48),
            knob_preset="easy", knob_values={"distractors": (0.1, 0.9)},
        )
        cfg.train.update(epochs=1, batch_size=4)
        return cfg
    raise ValueError(f"unknown mode {mode!r}; choose smoke, quick or full")


# ---------------------------------------------------------------- data
def synth_config(cfg: AccuracyConfig, preset: str, seed: int, knob: Optional[tuple[str, float]] = None):
    from sgmn.data.synthetic import preset as synth_preset

    overrides = dict(cfg.data_overrides, seed=seed)
    if knob is not None:
        overrides[knob[0]] = knob[1]
    return synth_preset(preset, **overrides)


def source_hash(*paths: Path) -> str:
    """Hash of Python sources, so cached data and results go stale when the code changes."""
    h = hashlib.sha1()
    for path in paths:
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(str(f.relative_to(common.REPO)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:10]


def data_key(synth) -> str:
    """Folder name of a generated set: its seed, plus a hash of its whole config and of the generator."""
    import sgmn.data.synthetic as generator

    d = dataclasses.asdict(synth)
    digest = hashlib.sha1(json.dumps([d, source_hash(Path(generator.__file__))], sort_keys=True).encode())
    return f"seed{synth.seed}-{digest.hexdigest()[:10]}"


def ensure_data(synth, data_root: Path) -> Path:
    """Generate the set once; a folder without the completion marker is regenerated."""
    from sgmn.data.synthetic import generate

    folder = data_root / data_key(synth)
    marker = folder / ".complete"
    if marker.exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)  # a half-written set from an interrupted run
    summary = generate(folder, synth, progress=False)
    marker.write_text(json.dumps(summary["config"], sort_keys=True))
    print(f"[data] generated {folder.name}: {summary['rooms']} rooms, {summary['products']} products, "
          f"{summary['train_clips']} train / {summary['test_clips']} test clips in {summary['seconds']} s", flush=True)
    return folder


# ---------------------------------------------------------------- one run
def run_one(cfg: AccuracyConfig, spec: ModelSpec, synth, out: Path) -> dict:
    """Train ``spec`` on the set ``synth`` with the config's budget and seed, evaluate on its test split.

    Results are cached by (data, model, budget); a cached result is returned as it was.
    """
    import sgmn
    from sgmn.data.readers import read_dataset
    from sgmn.eval.protocol import evaluate
    from sgmn.train.config import TrainConfig
    from sgmn.train.loop import train

    data_dir = ensure_data(synth, out / "data")
    train_cfg = TrainConfig(**cfg.train, seed=synth.seed)
    # The whole package's source is part of the key: a result of older model code is not reused.
    key = hashlib.sha1(json.dumps([data_key(synth), spec.variant, spec.overrides, train_cfg.to_dict(),
                                   source_hash(common.REPO / "sgmn")],
                                  sort_keys=True, default=str).encode()).hexdigest()[:16]
    cached = out / "results" / f"{key}.json"
    if cached.exists():
        return {**json.loads(cached.read_text()), "from_cache": True}

    # Text vectors are shared by every run through one content-keyed cache.
    overrides = dict(spec.overrides_dict(), **{"text.cache_dir": str(out / "text-cache")})
    run_dir = out / "runs" / key
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    result = train(data_dir, "lpr4m", spec.variant, run_dir, train_config=train_cfg, model_overrides=overrides)
    train_s = time.perf_counter() - t0
    model = sgmn.load_model(run_dir)
    data = read_dataset(data_dir, "lpr4m")
    t0 = time.perf_counter()
    metrics = evaluate(model, data, split="test", progress=False).metrics
    eval_s = time.perf_counter() - t0
    for k in ("R@1", "R@5", "R@10"):
        if not math.isfinite(metrics[k]):
            raise RuntimeError(f"{spec.label} on {data_dir}: {k} is not finite ({metrics[k]})")
    row = {
        "model": spec.label, "variant": spec.variant, "overrides": dict(spec.overrides), "seed": synth.seed,
        "data": data_key(synth), "synth": dataclasses.asdict(synth),
        **{k: metrics[k] for k in ("R@1", "R@3", "R@5", "R@10", "chance_R@1", "num_queries",
                                   "num_missing_predictions", "median_rank")},
        "gallery_products": metrics["protocol"]["gallery_products"],
        "steps": result.step, "final_loss": result.last_losses.get("loss"),
        "train_s": train_s, "eval_s": eval_s,
    }
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(row, indent=1))
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints are not needed once scored
    print(f"[run] {spec.label:<14} {data_key(synth)} ({result.step} steps, {train_s:.1f} s): "
          f"R@1 {row['R@1']:.1f}  R@5 {row['R@5']:.1f}  R@10 {row['R@10']:.1f}  (chance {row['chance_R@1']:.1f})",
          flush=True)
    return {**row, "from_cache": False}


# ---------------------------------------------------------------- statistics
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.1f} ± {s:.1f}"


def summarise(rows: list[dict], group: tuple[str, ...]) -> dict:
    """{group values: {metric: [values over seeds]}}."""
    out: dict = {}
    for r in rows:
        key = tuple(r[g] for g in group)
        d = out.setdefault(key, {})
        for k in ("R@1", "R@5", "R@10", "chance_R@1", "train_s", "steps"):
            d.setdefault(k, []).append(r[k])
    return out


def ablation_verdicts(rows: list[dict], presets: tuple[str, ...]) -> list[str]:
    """One honest sentence per component: did removing it lower R@1, beyond the seed spread?"""
    stats = summarise(rows, ("preset", "model"))
    lines = []
    for label in dict.fromkeys(r["model"] for r in rows if r["model"].startswith("SGMN − ")):
        parts, helped = [], 0
        for p in presets:
            full, ablated = stats.get((p, FULL.label)), stats.get((p, label))
            if not full or not ablated:
                continue
            (mf, sf), (ma, sa) = mean_std(full["R@1"]), mean_std(ablated["R@1"])
            delta = mf - ma  # > 0: the component helped
            clear = delta > max(sf, sa)
            helped += clear
            parts.append(f"{p} {delta:+.1f}")
        component = label.split("− ", 1)[1]
        verdict = ("helped beyond the seed spread on " + f"{helped} of {len(parts)} presets" if helped
                   else "did **not** help beyond the seed spread on any preset")
        lines.append(f"- **{component}**: full SGMN minus SGMN without it, R@1 points: {', '.join(parts)} — {verdict}.")
    return lines


# ---------------------------------------------------------------- plots
def plot_models(rows: list[dict], presets: tuple[str, ...], models: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stats = summarise(rows, ("preset", "model"))
    fig, ax = plt.subplots(figsize=(7.5, 3.4), dpi=100)
    width = 0.8 / len(models)
    x = np.arange(len(presets))
    for i, m in enumerate(models):
        ms = [mean_std(stats[(p, m)]["R@1"]) for p in presets]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, [v[0] for v in ms], width, yerr=[v[1] for v in ms],
               label=m, capsize=2)
    chance = [mean_std(stats[(p, models[0])]["chance_R@1"])[0] for p in presets]
    ax.scatter(x, chance, marker="_", s=800, color="black", zorder=3, label="chance")
    ax.set_xticks(x, presets)
    ax.set_ylabel("R@1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=3)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_knobs(rows: list[dict], knobs: list[str], models: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summarise(rows, ("knob", "value", "model"))
    fig, axes = plt.subplots(1, len(knobs), figsize=(2.6 * len(knobs), 2.8), dpi=100, squeeze=False)
    for ax, knob in zip(axes[0], knobs):
        for m in models:
            values = sorted({k[1] for k in stats if k[0] == knob and k[2] == m})
            ms = [mean_std(stats[(knob, v, m)]["R@1"]) for v in values]
            ax.errorbar(values, [a for a, _ in ms], yerr=[b for _, b in ms], marker="o", capsize=2, label=m)
        ax.set_title(knob, fontsize=9)
        ax.set_xlabel("knob value", fontsize=8)
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("R@1 (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- report
def render(cfg: AccuracyConfig, main_rows: list[dict], knob_rows: list[dict], info: dict, command: str,
           seconds: float, plots: dict) -> str:
    from sgmn.train.config import TrainConfig

    presets = cfg.presets
    models = [m.label for m in cfg.models]
    stats = summarise(main_rows, ("preset", "model"))
    runs = {(r["data"], r["model"]): r for r in main_rows + knob_rows}
    fresh = {(r["data"], r["model"]) for r in main_rows + knob_rows if not r.get("from_cache")}
    reuse = "" if len(fresh) == len(runs) else (
        f"; {len(runs) - len(fresh)} of the {len(runs)} runs were read from the results cache of an earlier run")
    out = [f"## Accuracy on the synthetic presets ({cfg.mode} mode)", "",
           f"Command: `{command}` — finished in {seconds / 60:.1f} min ({len(fresh)} training runs{reuse}).", "",
           common.machine_markdown(info), ""]
    train_cfg = TrainConfig(**cfg.train)
    out += [
        "Every model is trained from **random weights** (no CLIP weights can be downloaded here) on the "
        f"`sgmn-tiny` backbone ({_backbone_words()}), with the same "
        "data, the same training budget and the same seeds, then evaluated with the per-room protocol (video mode, "
        "main image; a query ranks only its own room's products). A seed fixes both the synthetic data and the "
        "training. Cells are mean ± sample std over the seeds, in percent.", "",
        f"- seeds: {list(cfg.seeds)}",
        f"- training (every model): epochs {train_cfg.epochs}, batch {train_cfg.batch_size}, AdamW lr "
        f"{train_cfg.lr:g} (backbone factor {train_cfg.backbone_lr_factor:g}), warm-up {train_cfg.warmup_ratio:g} "
        f"then cosine, weight decay {train_cfg.weight_decay:g}, grad clip {train_cfg.grad_clip}, {train_cfg.precision}",
        f"- synthetic data: the presets with these sizes replaced: `{json.dumps(cfg.data_overrides)}`"
        if cfg.data_overrides else "- synthetic data: the presets at their own sizes",
        "",
    ]
    sizes = []
    for p in presets:
        r = next(r for r in main_rows if r["preset"] == p)
        s = r["synth"]
        sizes.append([p, f"{s['rooms']} × {s['products_per_room']}", s["clips_per_product"], r["num_queries"],
                      f"{s['frames_per_clip']} × {s['image_size']} px", s["distractors"], s["domain_gap"],
                      s["fine_grained"], s["asr_informativeness"], s["asr_missing"],
                      f"{mean_std(stats[(p, models[0])]['steps'])[0]:.0f}"])
    out += [common.markdown_table(
        ["preset", "rooms × products", "train clips / product", "test queries", "frames", "distractors",
         "domain gap", "fine-grained", "ASR informativeness", "ASR missing", "optimiser steps"], sizes), ""]

    headers = ["model"] + [f"{p} {k}" for p in presets for k in ("R@1", "R@5", "R@10")]
    table = []
    for m in models:
        table.append([m] + [pm(stats[(p, m)][k]) for p in presets for k in ("R@1", "R@5", "R@10")])
    table.append(["chance (R@1)"] + [x for p in presets
                                     for x in (f"{mean_std(stats[(p, models[0])]['chance_R@1'])[0]:.1f}", "", "")])
    out += ["### SGMN vs baselines and ablations", ""]
    if cfg.mode != "full":
        out += [f"**{cfg.mode.capitalize()} mode trains each model for only a few dozen steps on a few dozen test "
                "queries per preset: differences of a few points are within the noise. Use the full mode "
                "(`python benchmarks/accuracy.py`, more seeds and epochs) before drawing conclusions.**", ""]
    out += [common.markdown_table(headers, table), ""]
    if any(r["gallery_products"] / max(1, r["synth"]["rooms"]) <= 10 for r in main_rows):
        out += ["R@10 is 100 by construction where a room has 10 products or fewer.", ""]
    if plots.get("models"):
        out += [f"![R@1 per model and preset]({plots['models']})", ""]
    out += ["What each component did here (a component *helped* on a preset when full SGMN's mean R@1 exceeds "
            "the ablation's by more than either's seed std):", ""] + ablation_verdicts(main_rows, presets) + [""]
    base = {m: [mean_std(stats[(p, m)]["R@1"])[0] for p in presets] for m in models}
    if FULL.label in base and "clip-meanpool" in base:
        diffs = ", ".join(f"{p} {f - c:+.1f}" for p, f, c in zip(presets, base[FULL.label], base["clip-meanpool"]))
        out += [f"Full SGMN minus clip-meanpool, R@1 points: {diffs}.", ""]
    if _same_rankings(main_rows, "clip-meanpool", "rice-icl"):
        out += ["`rice-icl` scored exactly like `clip-meanpool` in every run. This is expected here, not a bug: "
                "each synthetic product has one shop image and product images are not augmented, so two clips of "
                "the same product in a batch face two *identical* product columns, and InfoNCE with "
                "label positives (RICE) then equals InfoNCE with batch-index positives (CLIP4Clip). The two differ "
                "only when a product's images differ (several images or augmentation).", ""]
    train_s = [r["train_s"] for r in runs.values()]
    out += [f"Training took {statistics.fmean(train_s):.1f} s per run on average ({len(train_s)} distinct runs).", ""]

    if knob_rows:
        kstats = summarise(knob_rows, ("knob", "value", "model"))
        kmodels = [m.label for m in cfg.knob_models]
        out += ["### Difficulty knobs, one at a time", "",
                f"Each knob is swept around the `{cfg.knob_preset}` preset (the other knobs keep the preset's values; "
                "the preset's own value is the middle point and reuses the runs above).", ""]
        krows = []
        for knob in cfg.knob_values:
            for v in sorted(cfg.knob_values[knob]):
                cells = [pm(kstats[(knob, v, m)]["R@1"]) for m in kmodels]
                krows.append([knob, v, *cells, f"{mean_std(kstats[(knob, v, kmodels[0])]['chance_R@1'])[0]:.1f}"])
        out += [common.markdown_table(["knob", "value", *[f"{m} R@1" for m in kmodels], "chance R@1"], krows), ""]
        if plots.get("knobs"):
            out += [f"![R@1 against each difficulty knob]({plots['knobs']})", ""]
    out += ["Raw per-run results (every seed, R@3, median rank, times) are in "
            f"`benchmarks/out/accuracy/{cfg.mode}-results.json` after a run."]
    return "\n".join(out)


def _same_rankings(rows: list[dict], a: str, b: str) -> bool:
    """Whether models ``a`` and ``b`` reached the same R@1/3/5/10 and median rank on every set."""
    def scores(label):
        return {r["data"]: tuple(round(r[k], 6) for k in ("R@1", "R@3", "R@5", "R@10", "median_rank"))
                for r in rows if r["model"] == label}

    sa, sb = scores(a), scores(b)
    return bool(sa) and sa == sb


def _backbone_words() -> str:
    from sgmn.model.registry import get_config

    c = get_config(FULL.variant)
    v = c.vision
    return (f"ViT {v.image_size} px, {v.patch_size} px patches, width {v.width}, {v.layers} layers; "
            f"d = {c.embed_dim}; {c.num_frames} frames per clip")


# ---------------------------------------------------------------- main
def run(cfg: AccuracyConfig, doc: Path, img_dir: Path, out: Path, command: Optional[str] = None) -> dict:
    started = time.perf_counter()
    info = common.machine_info()
    out.mkdir(parents=True, exist_ok=True)
    main_rows = []
    for preset in cfg.presets:
        for seed in cfg.seeds:
            synth = synth_config(cfg, preset, seed)
            for spec in cfg.models:
                main_rows.append({**run_one(cfg, spec, synth, out), "preset": preset})
    knob_rows = []
    for knob, values in cfg.knob_values.items():
        for value in values:
            for seed in cfg.seeds:
                synth = synth_config(cfg, cfg.knob_preset, seed, (knob, value))
                for spec in cfg.knob_models:
                    knob_rows.append({**run_one(cfg, spec, synth, out), "knob": knob, "value": value})

    plots = {}
    models_png = img_dir / f"accuracy-{cfg.mode}-models.png"
    plot_models(main_rows, cfg.presets, [m.label for m in cfg.models], models_png)
    plots["models"] = os.path.relpath(models_png.resolve(), doc.parent.resolve())
    if knob_rows:
        knobs_png = img_dir / f"accuracy-{cfg.mode}-knobs.png"
        plot_knobs(knob_rows, list(cfg.knob_values), [m.label for m in cfg.knob_models], knobs_png)
        plots["knobs"] = os.path.relpath(knobs_png.resolve(), doc.parent.resolve())
    seconds = time.perf_counter() - started
    command = command or common.command_line()
    (out / f"{cfg.mode}-results.json").write_text(json.dumps(
        {"command": command, "machine": info, "seconds": seconds, "config": dataclasses.asdict(cfg),
         "main": main_rows, "knobs": knob_rows}, indent=1, default=str))
    body = render(cfg, main_rows, knob_rows, info, command, seconds, plots)
    common.write_section("accuracy", body, doc)
    print(body)
    return {"main": main_rows, "knobs": knob_rows, "seconds": seconds}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="< 15 min on a 2-core CPU")
    group.add_argument("--smoke", action="store_true", help="about a minute; for the test suite")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the mode's seeds (>= 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--doc", type=Path, default=common.DOC, help="markdown file to write the section into")
    parser.add_argument("--img-dir", type=Path, default=common.IMG_DIR)
    parser.add_argument("--out", type=Path, default=common.OUT_DIR / "accuracy", help="data, caches, raw results")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = mode_config("quick" if args.quick else "smoke" if args.smoke else "full")
    if args.seeds is not None:
        if len(set(args.seeds)) < 2:
            parser.error("--seeds: give at least two different seeds (results are mean ± std over seeds)")
        cfg.seeds = tuple(args.seeds)
    run(cfg, args.doc, args.img_dir, args.out,
        command=common.command_line() if argv is None else "python benchmarks/accuracy.py " + " ".join(argv))


if __name__ == "__main__":
    main()
