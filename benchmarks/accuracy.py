"""Accuracy of SGMN against the baselines and its own ablations on the synthetic presets, with
paired bootstrap confidence intervals.

    python benchmarks/accuracy.py --standard --goals-only --jobs 2   # the goals and effects: about 30 min on 2 cores
    python benchmarks/accuracy.py --standard --jobs 2   # and every alternative and diagnostic: about 1.5 h (see docs)
    python benchmarks/accuracy.py                       # full sizes, 5 seeds, knob sweep: bigger machines
    python benchmarks/accuracy.py --smoke               # a few minutes; what tests/test_benchmarks.py runs

What it does, every model with the same data, training budget and seeds:

1. ``sgmn pretrain`` once (``sgmn.train.pretrain``, cached): the tiny vision tower and text
   projection pretrained image-title contrastively on synthetic shops disjoint from every room here;
2. on the presets ``easy``, ``default`` and ``hard``: ``clip-meanpool``, ``rice-icl`` (full mode),
   full SGMN and SGMN without each of TGA, TDB, GCI, SMF and the text branch, other designs of a
   component (``ALTERNATIVES``) and pairs that measure a component in another setting
   (``DIAGNOSTICS``), every one fine-tuned from that checkpoint (``model.vision.pretrained``;
   ``sgmn train``'s recipe then is the paper's, with the backbone learning-rate factor ``FINETUNE`` that ``recipe_selection.py`` selected),
   plus full SGMN from random weights (the ``scratch`` recipe) for comparison. Training is
   ``sgmn.train.loop.train``; each saved epoch on the curve is scored on the test split with
   ``sgmn.eval.protocol.evaluate`` (per-room galleries, video mode, main image): the learning
   curves. The last epoch's per-query hits give the results (no checkpoint is selected on test);
3. 95% bootstrap CIs over seeds and queries (seeds resampled, then queries within each drawn seed):
   for each model's R@1 / R@5, and for the *paired* differences full SGMN minus each ablation and
   minus ``clip-meanpool`` (paired: same data, seed and queries for both models);
4. (full mode) the four difficulty knobs swept one at a time around the ``default`` preset.

A seed fixes the synthetic data and the training. Synthetic sets are generated once per
(preset / knob value, seed) into ``benchmarks/out/accuracy/data`` and every finished run is kept in
``benchmarks/out/accuracy/results`` (keyed by data, model, budget, pretrain and code), so an
interrupted run resumes. Writes the ``accuracy`` section of docs/benchmarks.md, the plots under
docs/img/ and docs/benchmarks/accuracy.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

PRESETS = ("easy", "default", "hard")
KNOBS = ("distractors", "domain_gap", "fine_grained", "asr_informativeness")
JSON_PATH = common.REPO / "docs" / "benchmarks" / "accuracy.json"


@dataclass(frozen=True)
class ModelSpec:
    label: str
    variant: str
    overrides: tuple[tuple[str, object], ...] = ()
    start: str = "pretrain"  # "pretrain": fine-tuned from the `sgmn pretrain` checkpoint; "scratch": random init
    train: tuple[tuple[str, object], ...] = ()  # TrainConfig fields this model alone trains with

    def overrides_dict(self) -> dict:
        return dict(self.overrides)


FULL = ModelSpec("SGMN", "sgmn-tiny")
CLIP_MEANPOOL = ModelSpec("clip-meanpool", "clip-meanpool")
RICE = ModelSpec("rice-icl", "rice-icl")
SCRATCH = ModelSpec("SGMN (from scratch)", "sgmn-tiny", start="scratch")
ABLATIONS = {  # effect name -> the model without that component
    "TGA": ModelSpec("SGMN − TGA", "sgmn-tiny", (("use_tga", False),)),
    "TDB": ModelSpec("SGMN − TDB", "sgmn-tiny", (("use_tdb", False),)),
    "GCI": ModelSpec("SGMN − GCI", "sgmn-tiny", (("use_gci", False),)),
    "SMF": ModelSpec("SGMN − SMF", "sgmn-tiny", (("use_smf", False),)),
    "text": ModelSpec("SGMN − text", "sgmn-tiny", (("use_text", False),)),
}
# Other designs of a component, trained side by side with the default one (paired rows in the
# effects table: "SGMN − it"), so a design choice is a measurement, not a claim.
ALTERNATIVES = {  # effect name -> the model with the other design
    "TGA as a CLS mix": ModelSpec("SGMN, TGA as a CLS mix (α₀ 0.1)", "sgmn-tiny",
                                  (("tga_mode", "mix"), ("tga_mix_init", 0.1))),
    "L_pair through S": ModelSpec("SGMN, L_pair also trains S", "sgmn-tiny", (("smf_prior_gradient", True),)),
    # TGA's bias on every layer of the tiny tower (3), not only the last: does moving v more help?
    "TGA on every layer": ModelSpec("SGMN, TGA biases all 3 layers", "sgmn-tiny", (("tga_bias_layers", 3),)),
    # The published L_pair (a row per product only) against the default's added clip rows.
    "L_pair product rows only (published)": ModelSpec("SGMN, L_pair product rows only", "sgmn-tiny",
                                                      (("smf_clip_rows", False),)),
    # The same training as full SGMN, then SMF re-ranks each query's top 4 (the positive and k = 3
    # others: the candidate count it trains on); what the cross encoder earns at inference.
    "SMF re-ranking the top 4": ModelSpec("SGMN, SMF re-ranks the top 4", "sgmn-tiny", (("rerank_top_k", 4),)),
}
# A component measured in another setting than full SGMN: a pair of models that differ in it alone
# (paired rows in the effects table: "with − without"), to find out why it earns what it does there.
NO_TEXT_TERM = (("text_weight", 0.0), ("losses.txt", 0.0))
# Twice the batch for twice the epochs: about as many optimiser steps as every other model.
BATCH_32 = (("batch_size", 32), ("epochs", 16))
DIAGNOSTICS = {  # effect name -> (the model with the component, the same model without it)
    # With no text term in the score and no L_txt, TGA is the ASR's only way into the score (besides
    # SMF, which scores nothing at inference): does it earn there what it cannot add beside the text?
    "TGA where the score has no text term": (
        ModelSpec("SGMN, no text term", "sgmn-tiny", NO_TEXT_TERM),
        ModelSpec("SGMN, no text term, − TGA", "sgmn-tiny", (*NO_TEXT_TERM, ("use_tga", False))),
    ),
    # GCI's graph links the clips and products of one batch; at batch 16 its triplets are L_base's.
    # Does a graph twice as large give it something to add?
    "GCI at batch 32": (
        ModelSpec("SGMN, batch 32", "sgmn-tiny", train=BATCH_32),
        ModelSpec("SGMN − GCI, batch 32", "sgmn-tiny", (("use_gci", False),), train=BATCH_32),
    ),
    # Localisation given, not learned: the ground-truth product boxes mask every patch outside the
    # product on both sides (`detector_boxes`, an oracle detector). What finding the product is worth
    # on these frames bounds what TGA, which learns to find it from the ASR, could add.
    "localisation given": (
        ModelSpec("SGMN, oracle boxes on both sides", "sgmn-tiny", (("detector_boxes", True),)),
        FULL,
    ),
    # L_pair's clip rows were selected on fine-tuned models; does a model trained from random
    # weights (as `make demo` trains it) take them as well?
    "L_pair's clip rows, from scratch": (
        SCRATCH,
        ModelSpec("SGMN (from scratch), L_pair product rows only", "sgmn-tiny", (("smf_clip_rows", False),),
                  start="scratch"),
    ),
}
ORACLE = DIAGNOSTICS["localisation given"][0]
# What issue 9's goals and effects need (`--goals-only`): the baseline, full SGMN, each ablation, and
# the from-scratch row; the alternatives and diagnostics explain, they decide no goal.
GOAL_MODELS = (CLIP_MEANPOOL, FULL, *ABLATIONS.values(), SCRATCH)
MODELS: tuple[ModelSpec, ...] = tuple(dict.fromkeys((
    CLIP_MEANPOOL, RICE, FULL, *ABLATIONS.values(), *ALTERNATIVES.values(),
    *(m for pair in DIAGNOSTICS.values() for m in pair), SCRATCH)))  # each model once, in this order
# effect name -> the model full SGMN is compared with (paired difference SGMN − it)
EFFECTS = {**{k: m.label for k, m in ABLATIONS.items()}, "vs_clip_meanpool": CLIP_MEANPOOL.label}
# Issue 9 goal 5: the preset whose difficulty knob each component targets. `hard` raises every
# knob (distractors for TGA, the stream-side domain gap / motion for TDB and GCI, fine-grained
# siblings for SMF's hard negatives), so it is the target of all four.
GOAL_PRESET = {"TGA": "hard", "TDB": "hard", "GCI": "hard", "SMF": "hard"}
KNOB_MODELS = (FULL, CLIP_MEANPOOL)
# How every fine-tuned model here trains: the candidate that benchmarks/recipe_selection.py selected
# on seeds this benchmark never reports (the paper's backbone factor 1e-3 is meant for CLIP, not for
# a tower pretrained a few hundred steps). tests/test_benchmarks.py keeps it equal to that selection.
FINETUNE = {"backbone_lr_factor": 0.3}


@dataclass
class AccuracyConfig:
    mode: str = "full"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    presets: tuple[str, ...] = PRESETS
    models: tuple[ModelSpec, ...] = MODELS
    # SynthConfig fields replaced in every generated set (sizes only; difficulty stays the preset's).
    data_overrides: dict = field(default_factory=lambda: dict(test_clips_per_product=2))
    # Knob sweep around `knob_preset` (empty: none); the preset's own value is one of the points.
    knob_preset: str = "default"
    knob_values: dict = field(default_factory=lambda: {
        "distractors": (0.1, 0.5, 0.9), "domain_gap": (0.15, 0.5, 0.85),
        "fine_grained": (0.0, 0.5, 0.9), "asr_informativeness": (0.0, 0.6, 1.0)})
    knob_models: tuple[ModelSpec, ...] = KNOB_MODELS
    # TrainConfig fields, the same for every model. lr / backbone_lr_factor are left to the recipe
    # `sgmn train` picks from the starting point (paper for pretrained, scratch for random weights).
    train: dict = field(default_factory=lambda: dict(
        epochs=10, batch_size=16, warmup_ratio=0.1, num_workers=0, val_fraction=0.0, log_every=50))
    # TrainConfig fields for the models that start from the pretrain checkpoint only (empty: the
    # recipe `sgmn train` picks for a pretrained backbone); the from-scratch row keeps its recipe.
    finetune: dict = field(default_factory=lambda: dict(FINETUNE))
    curve_every: int = 1  # score every this many epochs on the test split (the last epoch always)
    # PretrainConfig fields replaced (empty: `sgmn pretrain`'s defaults).
    pretrain: dict = field(default_factory=dict)
    n_boot: int = 4000


def mode_config(mode: str) -> AccuracyConfig:
    if mode == "full":
        return AccuracyConfig()
    if mode == "standard":
        cfg = AccuracyConfig(
            mode="standard", models=tuple(m for m in MODELS if m is not RICE), knob_values={},
            data_overrides=dict(rooms=5, clips_per_product=3, test_clips_per_product=2, frames_per_clip=6,
                                image_size=64),
            curve_every=2)
        cfg.train["epochs"] = 8
        return cfg
    if mode == "smoke":
        cfg = AccuracyConfig(
            mode="smoke", seeds=(0, 1), presets=("easy",), models=(CLIP_MEANPOOL, FULL, SCRATCH),
            data_overrides=dict(rooms=2, products_per_room=4, clips_per_product=2, test_clips_per_product=1,
                                frames_per_clip=3, image_size=48),
            knob_preset="easy", knob_values={}, curve_every=1, n_boot=500,
            pretrain=dict(shops=3, products_per_shop=4, frames_per_clip=2, epochs=1, batch_size=16, val_shops=1),
        )
        cfg.train.update(epochs=2, batch_size=8)
        return cfg
    raise ValueError(f"unknown mode {mode!r}; choose smoke, standard or full")


# ---------------------------------------------------------------- data and pretraining
def synth_config(cfg: AccuracyConfig, preset: str, seed: int, knob: Optional[tuple[str, float]] = None):
    from sgmn.data.synthetic import preset as synth_preset

    overrides = dict(cfg.data_overrides, seed=seed)
    if knob is not None:
        overrides[knob[0]] = knob[1]
    return synth_preset(preset, **overrides)


@functools.lru_cache(maxsize=None)
def source_hash(*paths: Path) -> str:
    """Hash of Python sources, so cached data and results go stale when the code changes (read once
    per process: one benchmark run keys all its results with the code it started with)."""
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


def ensure_pretrain(cfg: AccuracyConfig, out: Path) -> dict:
    """The `sgmn pretrain` checkpoint every pretrained model starts from (cached by config + code)."""
    from sgmn.train.pretrain import PretrainConfig, pretrain

    t0 = time.perf_counter()
    result = pretrain(PretrainConfig().with_overrides(cfg.pretrain), cache_root=out / "pretrain",
                      text_cache_dir=out / "text-cache", progress=False)
    info = result.info
    print(f"[pretrain] {'cached ' if result.cached else ''}{result.path} ({time.perf_counter() - t0:.0f} s): "
          f"zero-shot {info.get('zero_shot')}", flush=True)
    return {"path": str(result.path), "key": info["key"], "cached": result.cached, "info": info}


# ---------------------------------------------------------------- one run
def query_hits(rankings: dict, ground_truth: dict) -> dict:
    """{query id: first-hit rank (None: never found)} from evaluate()'s rankings."""
    from sgmn.eval.metrics import first_hit_rank

    return {q: first_hit_rank(rankings[q], gt) if q in rankings else None for q, gt in ground_truth.items()}


def train_config(cfg: AccuracyConfig, spec: ModelSpec, seed: int):
    from sgmn.train.config import TrainConfig

    return TrainConfig(**{**cfg.train, **(cfg.finetune if spec.start == "pretrain" else {}), **dict(spec.train)},
                       seed=seed)


def run_key(cfg: AccuracyConfig, spec: ModelSpec, synth, pretrain_key: Optional[str]) -> str:
    train_cfg = train_config(cfg, spec, synth.seed)
    blob = [data_key(synth), spec.variant, spec.overrides, spec.start, pretrain_key if spec.start == "pretrain" else None,
            train_cfg.to_dict(), cfg.curve_every, source_hash(common.REPO / "sgmn")]
    return hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_run(cfg: AccuracyConfig, spec: ModelSpec, synth, out: Path, pretrained: Optional[dict], run_dir: Path,
              train_cfg=None):
    """Train ``spec`` on ``synth`` into ``run_dir`` (emptied first) as every run here does (with
    ``train_cfg`` in place of :func:`train_config`'s when given); the ``TrainResult`` (checkpoints
    stay in ``run_dir``)."""
    from sgmn.train.loop import train

    overrides = dict(spec.overrides_dict(), **{"text.cache_dir": str(out / "text-cache")})
    if spec.start == "pretrain":
        overrides["vision.pretrained"] = pretrained["path"]
    shutil.rmtree(run_dir, ignore_errors=True)
    return train(ensure_data(synth, out / "data"), "lpr4m", spec.variant, run_dir,
                 train_config=train_cfg or train_config(cfg, spec, synth.seed), model_overrides=overrides)


def hits_by_query(scored) -> dict:
    """An ``evaluate`` result's queries (sorted) and their hits at rank 1 and 5, as the paired
    effects need them."""
    ranks = query_hits(scored.rankings, scored.ground_truth)
    queries = sorted(ranks)
    return {"queries": queries,
            "hits@1": [int(ranks[q] is not None and ranks[q] <= 1) for q in queries],
            "hits@5": [int(ranks[q] is not None and ranks[q] <= 5) for q in queries]}


def run_one(cfg: AccuracyConfig, spec: ModelSpec, synth, out: Path, pretrained: Optional[dict],
            threads: Optional[int] = None) -> dict:
    """Train ``spec`` on ``synth`` with the config's budget and seed; score the curve epochs and keep
    the last epoch's per-query ranks. Cached by :func:`run_key`."""
    import torch

    import sgmn
    from sgmn.data.readers import read_dataset
    from sgmn.eval.protocol import evaluate

    if threads:
        torch.set_num_threads(threads)
    data_dir = ensure_data(synth, out / "data")
    key = run_key(cfg, spec, synth, pretrained and pretrained["key"])
    cached = out / "results" / f"{key}.json"
    if cached.exists():
        # The key is the training, not the name: the same run may be read under another spec's label.
        return {**json.loads(cached.read_text()), "model": spec.label, "from_cache": True}

    run_dir = out / "runs" / key
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = train_run(cfg, spec, synth, out, pretrained, run_dir)
    train_s = time.perf_counter() - t0
    recipe = json.loads((run_dir / "train_config.json").read_text())
    data = read_dataset(data_dir, "lpr4m")
    epochs = result.epochs_completed
    curve_epochs = sorted({e for e in range(cfg.curve_every, epochs + 1, cfg.curve_every)} | {epochs})
    curve, final = [], None
    t0 = time.perf_counter()
    for e in curve_epochs:
        model = sgmn.load_model(run_dir / f"epoch-{e:03d}")
        res = evaluate(model, data, split="test", progress=False, mechanism=e == epochs)
        curve.append({"epoch": e, "R@1": res.metrics["R@1"], "R@5": res.metrics["R@5"]})
        final = res
    eval_s = time.perf_counter() - t0
    metrics = final.metrics
    hits = hits_by_query(final)
    hits1 = hits["hits@1"]
    if not math.isclose(100.0 * sum(hits1) / len(hits1), metrics["R@1"], abs_tol=1e-6):
        raise RuntimeError(f"{spec.label}: per-query hits disagree with evaluate()'s R@1 {metrics['R@1']}")
    row = {
        "model": spec.label, "variant": spec.variant, "overrides": dict(spec.overrides), "start": spec.start,
        "seed": synth.seed, "data": data_key(synth), "synth": dataclasses.asdict(synth),
        **{k: metrics[k] for k in ("R@1", "R@3", "R@5", "R@10", "chance_R@1", "num_queries",
                                   "num_missing_predictions", "median_rank")},
        "gallery_products": metrics["protocol"]["gallery_products"],
        **hits, "curve": curve,
        "mechanism": mechanism_summary(metrics.get("mechanism") or {}),
        "recipe": {k: recipe[k] for k in ("recipe", "lr", "backbone_lr_factor")},
        "steps": result.step, "final_loss": result.last_losses.get("loss"),
        "train_s": train_s, "eval_s": eval_s, "cpu_s": time.process_time() - cpu0,
        "threads": torch.get_num_threads(),
    }
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(row))
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints are not needed once scored
    print(f"[run] {spec.label:<20} {data_key(synth)} ({result.step} steps, {train_s:.0f} s train, {eval_s:.0f} s eval, "
          f"{row['cpu_s']:.0f} CPU-s): R@1 {row['R@1']:.1f}  R@5 {row['R@5']:.1f}  (chance {row['chance_R@1']:.1f})",
          flush=True)
    return {**row, "from_cache": False}


def mechanism_summary(mech: dict) -> dict:
    """The final model's mechanism metrics (``sgmn eval --mechanism``), where the model has them:
    TGA influence (mean cos of v with and without the ASR), TGA pointing (attention mass in the
    product's box / a uniform map's), the SMF cross encoder's accuracy on mined candidates."""
    out = {}
    if (mech.get("tga_influence") or {}).get("mean_cos") is not None:
        out["tga_cos"] = mech["tga_influence"]["mean_cos"]
    if (mech.get("tga_pointing") or {}).get("mass_ratio") is not None:
        out["tga_pointing"] = mech["tga_pointing"]["mass_ratio"]
    if (mech.get("smf_accuracy") or {}).get("accuracy") is not None:
        out["smf_accuracy"], out["smf_chance"] = mech["smf_accuracy"]["accuracy"], mech["smf_accuracy"]["chance"]
    return out


def mechanism_table(rows: list[dict], presets: Sequence[str], models: Sequence[str]) -> list[list[str]]:
    """Mean over seeds of each mechanism metric, per preset and model (models without any: left out)."""
    table = []
    for p in presets:
        for m in models:
            mechs = [r.get("mechanism") or {} for r in rows if r["preset"] == p and r["model"] == m]
            if not any(mechs):
                continue

            def mean(key, scale=1.0, fmt="{:.3f}"):
                values = [x[key] for x in mechs if key in x]
                return fmt.format(scale * statistics.fmean(values)) if values else "–"

            table.append([p, m, mean("tga_cos"), mean("tga_pointing", fmt="{:.2f}×"),
                          f"{mean('smf_accuracy', 100, '{:.1f}')} ({mean('smf_chance', 100, '{:.1f}')})"
                          if any("smf_accuracy" in x for x in mechs) else "–"])
    return table


def _run_task(args):  # a top-level function, so a process pool can pickle it
    return args[-1], run_one(*args[:-1])


def run_all(tasks: list[tuple], jobs: int, threads: Optional[int]) -> list[dict]:
    """Run ``(cfg, spec, synth, out, pretrained, extra)`` tasks, in ``jobs`` processes when > 1;
    each result is ``{**run_one(...), **extra}``, in task order."""
    args = [(cfg, spec, synth, out, pretrained, threads, extra) for cfg, spec, synth, out, pretrained, extra in tasks]
    return [{**row, **extra} for extra, row in parallel_map(_run_task, args, jobs)]


def parallel_map(fn, args: list, jobs: int) -> list:
    """``[fn(a) for a in args]``, in ``jobs`` fresh ("spawn") processes when > 1; ``fn`` must be a
    top-level function, so that a process pool can pickle it."""
    if jobs <= 1:
        return [fn(a) for a in args]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, args))


# ---------------------------------------------------------------- statistics
def bootstrap_ci(per_seed: Sequence[Sequence[float]], n_boot: int = 4000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """Mean and percentile CI of a per-query quantity, resampling seeds and queries within seeds.

    ``per_seed[s]`` holds one value per query of seed ``s`` (a hit, or a paired hit difference).
    Each replicate draws as many seeds as there are, with replacement, then for every drawn seed
    its queries with replacement, and averages the per-seed means (every seed weighs the same).
    Returns ``(mean over seeds of the per-seed means, lo, hi)``.
    """
    arrays = [np.asarray(v, dtype=np.float64) for v in per_seed]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("bootstrap_ci needs at least one seed, each with at least one query")
    rng = np.random.default_rng(seed)
    n_seeds = len(arrays)
    # boot[s, b, j]: mean of a query resample of seed s, for replicate b at draw position j. Hits and
    # hit differences take few distinct values, so a resample is drawn as multinomial counts of the
    # distinct values (the same distribution as drawing queries with replacement, far cheaper).
    boot = np.empty((n_seeds, n_boot, n_seeds))
    for s, a in enumerate(arrays):
        values, counts = np.unique(a, return_counts=True)
        draws = rng.multinomial(a.size, counts / a.size, size=(n_boot, n_seeds))
        boot[s] = draws @ values / a.size
    pick = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if n_seeds > 1 else np.zeros((n_boot, 1), dtype=int)
    stats = boot[pick, np.arange(n_boot)[:, None], np.arange(n_seeds)[None, :]].mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(np.mean([a.mean() for a in arrays])), float(lo), float(hi)


def _rows_by(rows: list[dict], preset: str, model: str) -> dict[int, dict]:
    return {r["seed"]: r for r in rows if r["preset"] == preset and r["model"] == model}


def model_ci(rows: list[dict], preset: str, model: str, metric: str, n_boot: int) -> Optional[dict]:
    """R@1 or R@5 of one model with its 95% CI, in points."""
    runs = _rows_by(rows, preset, model)
    if not runs:
        return None
    hits = f"hits@{metric[2:]}"
    m, lo, hi = bootstrap_ci([runs[s][hits] for s in sorted(runs)], n_boot)
    return {"mean": 100 * m, "ci95": [100 * lo, 100 * hi]}


def paired_effect(rows: list[dict], preset: str, a: str, b: str, n_boot: int, metric: str = "R@1") -> Optional[dict]:
    """R@k of model ``a`` minus model ``b`` in points, paired per seed and query, with its 95% CI."""
    ra, rb = _rows_by(rows, preset, a), _rows_by(rows, preset, b)
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
        return None
    hits = f"hits@{metric[2:]}"
    diffs = []
    for s in seeds:
        if ra[s]["queries"] != rb[s]["queries"] or ra[s]["data"] != rb[s]["data"]:
            raise ValueError(f"{a} and {b} on {preset} seed {s} were not scored on the same queries")
        diffs.append(np.asarray(ra[s][hits], float) - np.asarray(rb[s][hits], float))
    m, lo, hi = bootstrap_ci(diffs, n_boot)
    return {"mean": 100 * m, "ci95": [100 * lo, 100 * hi]}


def results_json(cfg: AccuracyConfig, rows: list[dict]) -> dict:
    """The docs/benchmarks/accuracy.json document (schema: issue 9 point 4)."""
    doc: dict = {"presets": {}, "effects": {}}
    labels = [m.label for m in cfg.models]
    for p in cfg.presets:
        models = {}
        for m in labels:
            r1, r5 = model_ci(rows, p, m, "R@1", cfg.n_boot), model_ci(rows, p, m, "R@5", cfg.n_boot)
            if r1 is not None:
                models[m] = {"R@1": r1, "R@5": r5}
        doc["presets"][p] = {"models": models}
        effects = {}
        for name, other in EFFECTS.items():
            if FULL.label in labels and other in labels:
                effects[name] = paired_effect(rows, p, FULL.label, other, cfg.n_boot)
        doc["effects"][p] = effects
    return doc


def oracle_patch_share(folders: Sequence[Path], image_size: Optional[int] = None) -> float:
    """The mean share of a query frame's patches that the oracle boxes keep (test frames with a box,
    at the oracle model's geometry, or its tower at ``image_size`` px): how much of the frame it hides."""
    from sgmn.data.dataset import NoTextVectors, QueryClips
    from sgmn.data.readers import read_dataset
    from sgmn.model.registry import get_config

    mc = get_config(ORACLE.variant, **ORACLE.overrides_dict())
    shares: list[float] = []
    for folder in folders:
        clips = QueryClips(read_dataset(folder, "lpr4m"), "test", num_frames=mc.num_frames,
                           image_size=image_size or mc.vision.image_size, patch_size=mc.vision.patch_size,
                           geometry=mc.geometry,
                           use_boxes=True, text=NoTextVectors(mc.text.dim))
        for i in range(len(clips)):
            sample = clips[i]
            boxed = sample["frame_mask"] & sample["box_mask"]
            shares += sample["patch_mask"][boxed, 1:].float().mean(1).tolist()
    return statistics.fmean(shares)


def _ci_text(d: Optional[dict], signed: bool = False) -> str:
    if d is None:
        return "–"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"{fmt.format(d['mean'])} [{fmt.format(d['ci95'][0])}, {fmt.format(d['ci95'][1])}]"


def _bold_if_clear(d: Optional[dict]) -> str:
    """A signed difference with its CI, bold when the CI excludes 0."""
    text = _ci_text(d, True)
    return f"**{text}**" if d and (d["ci95"][0] > 0 or d["ci95"][1] < 0) else text


def goal_lines(doc: dict) -> list[str]:
    """Issue 9 goal 5, judged on the CIs (pass / fail / not measured)."""
    eff = doc["effects"]
    lines = []
    hard = eff.get("hard", {}).get("vs_clip_meanpool")
    if hard is None:
        lines.append("- SGMN ≥ clip-meanpool + 10 R@1 points on `hard`, CI above 0: **not measured** in this mode.")
    else:
        ok = hard["mean"] >= 10 and hard["ci95"][0] > 0
        lines.append(f"- SGMN ≥ clip-meanpool + 10 R@1 points on `hard`, CI above 0: **{'PASS' if ok else 'FAIL'}** "
                     f"(SGMN − clip-meanpool {_ci_text(hard, True)}).")
    for comp, target in GOAL_PRESET.items():
        d = eff.get(target, {}).get(comp)
        measured = [p for p, e in eff.items() if e.get(comp)]
        elsewhere = [p for p in measured if eff[p][comp]["mean"] >= 2 and eff[p][comp]["ci95"][0] > 0]
        also = (f"; holds on: {', '.join(elsewhere)}" if elsewhere else "; holds on no preset") if measured else ""
        if d is None:
            lines.append(f"- removing {comp} costs ≥ 2 R@1 points on `{target}`, CI above 0: **not measured** in this mode{also}.")
            continue
        ok = d["mean"] >= 2 and d["ci95"][0] > 0
        lines.append(f"- removing {comp} costs ≥ 2 R@1 points on `{target}` (its knobs' preset), CI above 0: "
                     f"**{'PASS' if ok else 'FAIL'}** (SGMN − SGMN without {comp}: {_ci_text(d, True)}){also}.")
    lines.append("- demo model: ASR changes v (mean cos < 0.99) and TGA's map finds the product (≥ 1.5× a uniform "
                 "map's mass in the box): measured by `sgmn eval`'s mechanism metrics in `make demo`, not by this script.")
    return lines


# ---------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_models(doc: dict, presets: Sequence[str], models: list[str], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 3.6), dpi=100)
    width = 0.8 / len(models)
    x = np.arange(len(presets))
    for i, m in enumerate(models):
        cells = [doc["presets"][p]["models"].get(m, {}).get("R@1") for p in presets]
        means = [c["mean"] if c else np.nan for c in cells]
        err = [[c["mean"] - c["ci95"][0] if c else 0 for c in cells], [c["ci95"][1] - c["mean"] if c else 0 for c in cells]]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, means, width, yerr=err, label=m, capsize=2)
    ax.set_xticks(x, presets)
    ax.set_ylabel("test R@1 (%), 95% CI")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=3)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def curve_means(rows: list[dict], preset: str, model: str) -> tuple[list[int], list[float]]:
    """Test R@1 per scored epoch, mean over seeds."""
    by_epoch: dict[int, list[float]] = {}
    for r in rows:
        if r["preset"] == preset and r["model"] == model:
            for point in r["curve"]:
                by_epoch.setdefault(point["epoch"], []).append(point["R@1"])
    epochs = sorted(by_epoch)
    return epochs, [statistics.fmean(by_epoch[e]) for e in epochs]


def plot_curves(rows: list[dict], presets: Sequence[str], models: list[str], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(presets), figsize=(3.3 * len(presets), 3.0), dpi=100, squeeze=False)
    for ax, p in zip(axes[0], presets):
        for m in models:
            epochs, means = curve_means(rows, p, m)
            if epochs:
                ax.plot(epochs, means, marker="o", markersize=3, label=m)
        ax.set_title(p, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("test R@1 (%), mean over seeds")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_knobs(rows: list[dict], knobs: list[str], models: list[str], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(knobs), figsize=(2.6 * len(knobs), 2.8), dpi=100, squeeze=False)
    for ax, knob in zip(axes[0], knobs):
        for m in models:
            values = sorted({r["value"] for r in rows if r["knob"] == knob and r["model"] == m})
            means = [statistics.fmean(r["R@1"] for r in rows if r["knob"] == knob and r["model"] == m and r["value"] == v)
                     for v in values]
            ax.plot(values, means, marker="o", label=m)
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
def render(cfg: AccuracyConfig, rows: list[dict], knob_rows: list[dict], doc: dict, pretrained: dict, info: dict,
           command: str, seconds: float, plots: dict, oracle_share: Optional[dict] = None) -> str:
    from sgmn.train.config import TrainConfig

    models = [m.label for m in cfg.models]
    runs = {(r["data"], r["model"]): r for r in rows + knob_rows}
    fresh = [r for r in runs.values() if not r.get("from_cache")]
    reuse = "" if len(fresh) == len(runs) else (
        f"; {len(runs) - len(fresh)} of the {len(runs)} runs were read from the results cache of an earlier run")
    cpu = sum(r["cpu_s"] for r in runs.values())
    out = [f"## Accuracy on the synthetic presets ({cfg.mode} mode)", "",
           f"Command: `{command}` — finished in {seconds / 60:.1f} min wall ({len(fresh)} training runs{reuse}); "
           f"the runs' own CPU time adds up to {cpu / 60:.1f} CPU-min.", "",
           common.machine_markdown(info), ""]
    train_cfg = TrainConfig(**cfg.train)
    own_budget = {m.label: m.train for m in cfg.models if m.train}  # models that train otherwise
    pinfo = pretrained["info"]
    zs = pinfo.get("zero_shot") or {}
    recipes = sorted({(r["start"], json.dumps(r["recipe"], sort_keys=True)) for r in rows})
    out += [
        f"Every model uses the `sgmn-tiny` backbone ({_backbone_words()}). All but `SGMN (from scratch)` are "
        "fine-tuned from one `sgmn pretrain` checkpoint (`model.vision.pretrained`): the tiny vision tower and "
        f"text projection pretrained image-title contrastively on {pinfo['synthetic']['rooms']} synthetic shops "
        f"(seed {pinfo['synthetic']['seed']}, disjoint from every room here), {pinfo['steps']} steps"
        + (f", zero-shot image → title R@1 within a held-out shop {zs.get('shop_image_to_title_R@1', float('nan')):.1f} "
           f"(frames {zs.get('frame_to_title_R@1', float('nan')):.1f}; chance {zs.get('chance_R@1', float('nan')):.1f})"
           if zs else "") + f"; key `{pretrained['key']}`. Same data, budget and seeds for every model"
        + (" (but those trained otherwise, listed below)" if own_budget else "") + "; evaluated "
        "with the per-room protocol (video mode, main image; a query ranks only its own room's products), on the "
        "last epoch (no checkpoint is picked on test).", "",
        f"- seeds: {list(cfg.seeds)} (a seed fixes the synthetic data and the training)",
        f"- training (every model): epochs {train_cfg.epochs}, batch {train_cfg.batch_size}, AdamW, warm-up "
        f"{train_cfg.warmup_ratio:g} then cosine, weight decay {train_cfg.weight_decay:g}, grad clip {train_cfg.grad_clip}, "
        f"{train_cfg.precision}; learning rates: "
        + "; ".join(f"{start}: {json.loads(r)}" for start, r in recipes)
        + (f" (fine-tuned models: `sgmn train`'s recipe with `{json.dumps(cfg.finetune)}`, the candidate "
           "`benchmarks/recipe_selection.py` selected on seeds this page never reports; see its section below)"
           if cfg.finetune else " (`sgmn train`'s recipes)"),
        *_trained_otherwise(own_budget, rows, cfg.presets),
        f"- synthetic data: the presets with these sizes replaced: `{json.dumps(cfg.data_overrides)}`"
        if cfg.data_overrides else "- synthetic data: the presets at their own sizes",
        f"- 95% CIs: bootstrap ({cfg.n_boot} replicates) over seeds and, within each drawn seed, over queries; "
        "differences are paired (same data, seed and queries for both models)",
        "",
    ]
    sizes = []
    for p in cfg.presets:
        r = next(r for r in rows if r["preset"] == p)
        s = r["synth"]
        steps = statistics.fmean(x["steps"] for x in rows if x["preset"] == p and x["model"] not in own_budget)
        sizes.append([p, f"{s['rooms']} × {s['products_per_room']}", s["clips_per_product"],
                      f"{r['num_queries']} × {len(cfg.seeds)} seeds", f"{s['frames_per_clip']} × {s['image_size']} px",
                      s["distractors"], s["domain_gap"], s["fine_grained"], s["asr_informativeness"], s["asr_missing"],
                      f"{steps:.0f}", f"{r['chance_R@1']:.1f}"])
    out += [common.markdown_table(
        ["preset", "rooms × products", "train clips / product", "test queries", "frames", "distractors",
         "domain gap", "fine-grained", "ASR informativeness", "ASR missing", "optimiser steps", "chance R@1"], sizes), ""]
    if oracle_share:
        shares = [oracle_share[p] for p in cfg.presets]
        out += [f"`{ORACLE.label}` masks every patch outside the product's box in the queries' frames as in "
                f"training: it keeps {' / '.join(f'{100 * x:.0f}%' for x in shares)} of a frame's patches "
                f"({' / '.join(cfg.presets)}; mean over the test frames with a box).", ""]

    out += ["### R@1 and R@5 with 95% CIs", ""]
    table = [[m] + [_ci_text(doc["presets"][p]["models"].get(m, {}).get(k)) for p in cfg.presets for k in ("R@1", "R@5")]
             for m in models]
    out += [common.markdown_table(["model"] + [f"{p} {k}" for p in cfg.presets for k in ("R@1", "R@5")], table), ""]
    if plots.get("models"):
        out += [f"![R@1 per model and preset, 95% CIs]({plots['models']})", ""]

    out += ["### What each component earns: paired differences in R@1 points, 95% CIs", "",
            "Full SGMN minus the model named (positive: SGMN is better; the CI excludes 0 when it is bold); a "
            "diagnostic row, the first model named minus the second.", ""]
    etable = []
    for name in EFFECTS:
        cells = []
        for p in cfg.presets:
            cells.append(_bold_if_clear(doc["effects"][p].get(name)))
        if any(c != "–" for c in cells):
            etable.append([f"SGMN − {EFFECTS[name]}" if name == "vs_clip_meanpool" else f"{name} (SGMN − SGMN without it)", *cells])
    for name, spec in ALTERNATIVES.items():
        if spec.label in models:
            cells = [_bold_if_clear(paired_effect(rows, p, FULL.label, spec.label, cfg.n_boot)) for p in cfg.presets]
            etable.append([f"default design vs {name} (SGMN − {spec.label})", *cells])
    for name, (with_it, without_it) in DIAGNOSTICS.items():
        if with_it.label in models and without_it.label in models:
            cells = [_bold_if_clear(paired_effect(rows, p, with_it.label, without_it.label, cfg.n_boot))
                     for p in cfg.presets]
            etable.append([f"{name} ({with_it.label} − {without_it.label})", *cells])
    scratch = [paired_effect(rows, p, FULL.label, SCRATCH.label, cfg.n_boot) if SCRATCH.label in models else None
               for p in cfg.presets]
    if any(scratch):
        etable.append(["pretrained start (SGMN − SGMN from scratch)", *[_bold_if_clear(d) for d in scratch]])
    out += [common.markdown_table(["effect", *cfg.presets], etable), ""]

    out += ["### Goals (issue 9, point 5)", ""] + goal_lines(doc) + [""]

    mtable = mechanism_table(rows, cfg.presets, models)
    if mtable:
        out += ["### Mechanism metrics of the final models, mean over seeds", "",
                "`sgmn eval`'s mechanism metrics on each run's test split: TGA influence = mean cos of the clip "
                "embedding v with and without the ASR (1: the ASR changes nothing); TGA pointing = the attention "
                "mass inside the product's box relative to a uniform map (1×: no better than uniform); SMF accuracy = "
                "how often the cross encoder alone, without the retrieval score, picks the ground-truth product "
                "among it and the query's highest-ranked other products (chance in brackets).", "",
                common.markdown_table(["preset", "model", "TGA influence (cos)", "TGA pointing", "SMF accuracy % (chance)"],
                                      mtable), ""]

    out += ["### Learning curves", "",
            "Test R@1 after each scored epoch, mean over seeds. The change over the last scored interval says whether "
            "the budget was enough for the curve to flatten:", ""]
    flat = []
    header_epochs = curve_means(rows, cfg.presets[0], models[0])[0]
    for p in cfg.presets:
        for m in models:
            epochs, means = curve_means(rows, p, m)
            if len(epochs) >= 2:
                shown = " → ".join(f"{v:.1f}" for v in means)
                if epochs != header_epochs:
                    shown += f" (epochs {epochs})"
                flat.append([p, m, shown, f"{means[-1] - means[-2]:+.1f}"])
    out += [common.markdown_table(["preset", "model", "test R@1 per scored epoch " + str(header_epochs),
                                   "last interval"], flat), ""]
    if plots.get("curves"):
        out += [f"![test R@1 per epoch]({plots['curves']})", ""]

    if knob_rows:
        kmodels = [m.label for m in cfg.knob_models]
        out += ["### Difficulty knobs, one at a time", "",
                f"Each knob swept around the `{cfg.knob_preset}` preset (the other knobs keep the preset's values); "
                "mean R@1 over seeds.", ""]
        krows = []
        for knob in cfg.knob_values:
            for v in sorted(cfg.knob_values[knob]):
                cells = [f"{statistics.fmean(r['R@1'] for r in knob_rows if r['knob'] == knob and r['value'] == v and r['model'] == m):.1f}"
                         for m in kmodels]
                krows.append([knob, v, *cells])
        out += [common.markdown_table(["knob", "value", *[f"{m} R@1" for m in kmodels]], krows), ""]
        if plots.get("knobs"):
            out += [f"![R@1 against each difficulty knob]({plots['knobs']})", ""]

    per_run = [r["cpu_s"] for r in runs.values()]
    train_s = [r["train_s"] + r["eval_s"] for r in runs.values()]
    out += [f"Per run: {statistics.fmean(train_s):.1f} s wall (train + curve evaluation) and "
            f"{statistics.fmean(per_run):.1f} CPU-s on average over {len(per_run)} runs; the pretraining took "
            f"{pinfo['seconds']:.0f} s ({pinfo.get('cpu_seconds', float('nan')):.0f} CPU-s){' (cached here)' if pretrained['cached'] else ''}.",
            "",
            "Results with their CIs are in `docs/benchmarks/accuracy.json`; every run (per-query ranks, curves, "
            f"times) in `benchmarks/out/accuracy/{cfg.mode}-results.json` after a run."]
    return "\n".join(out)


def _trained_otherwise(own_budget: dict, rows: list[dict], presets: Sequence[str]) -> list[str]:
    """One line per budget of the models that train with their own (label -> TrainConfig fields)."""
    lines = []
    for budget in dict.fromkeys(own_budget.values()):
        labels = [m for m, b in own_budget.items() if b == budget]
        steps = [statistics.fmean(x["steps"] for x in rows if x["preset"] == p and x["model"] in labels)
                 for p in presets]
        lines.append(f"- trained otherwise: {', '.join(f'`{m}`' for m in labels)} with `{json.dumps(dict(budget))}`, "
                     f"optimiser steps {' / '.join(f'{n:.0f}' for n in steps)} ({' / '.join(presets)})")
    return lines


def _backbone_words() -> str:
    from sgmn.model.registry import get_config

    c = get_config(FULL.variant)
    v = c.vision
    return (f"ViT {v.image_size} px, {v.patch_size} px patches, width {v.width}, {v.layers} layers; "
            f"d = {c.embed_dim}; {c.num_frames} frames per clip")


# ---------------------------------------------------------------- scripts built on this one
def selection_script_args(description: str, json_path: Path, smoke_help: str, argv: Optional[list[str]],
                          flags: Sequence[tuple[str, str]] = ()) -> tuple[argparse.Namespace, Optional[int]]:
    """The command line of a script that trains on the accuracy benchmark's code path and cache
    (``--smoke``, ``--jobs``, ``--doc``, ``--json``, ``--out``, and ``flags``: (flag, help) switches), parsed; torch's threads set to 1
    per process when runs go in parallel. Returns (args, threads per run or None)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--jobs", type=int, default=1, help="training runs in parallel processes (2 on 2 cores)")
    parser.add_argument("--doc", type=Path, default=common.DOC)
    parser.add_argument("--json", type=Path, default=json_path)
    parser.add_argument("--out", type=Path, default=common.OUT_DIR / "accuracy", help="shared with accuracy.py")
    for flag, help_text in flags:  # the script's own on/off switches
        parser.add_argument(flag, action="store_true", help=help_text)
    args = parser.parse_args(argv)
    import torch

    threads = 1 if args.jobs > 1 else None
    if threads:
        torch.set_num_threads(threads)
    return args, threads


def run_and_write(produce, render, section: str, doc: Path, json_path: Path, command: str) -> dict:
    """What a script that trains on this benchmark's code path does around its own runs: ``produce()``,
    then ``render(result, seconds, info)`` as its section of ``doc`` and the result, with the command
    and the git commit, as ``json_path``."""
    info = common.machine_info()
    t0 = time.perf_counter()
    result = produce()
    write_results(section, render(result, time.perf_counter() - t0, info), doc, json_path, result, command, info)
    return result


def run_selection(cfg: AccuracyConfig, out: Path, select, render, section: str, doc: Path, json_path: Path,
                  command: str) -> dict:
    """:func:`run_and_write` for a selection script: the pretraining (cached), ``select(pretrained)``,
    then ``render(result, seconds, info, pretrained)``."""
    pretrained: dict = {}

    def produce():
        pretrained.update(ensure_pretrain(cfg, out))
        return select(pretrained)

    return run_and_write(produce, lambda result, seconds, info: render(result, seconds, info, pretrained),
                         section, doc, json_path, command)


def runs_provenance(result: dict) -> str:
    """How many of a script's runs trained and how many came from the results cache (``result``:
    runs, fresh_runs)."""
    fresh, runs = result["fresh_runs"], result["runs"]
    cache = "the accuracy benchmark's results cache"
    if fresh == runs:
        return f"all {runs} training runs trained here"
    if fresh == 0:
        return f"all {runs} training runs read from {cache}"
    return f"{fresh} of {runs} training runs trained here, the others read from {cache}"


def provenance(command: str, seconds: float, result: dict) -> str:
    """A script's "Command: ..." line: its wall time, :func:`runs_provenance`, and the runs' CPU time."""
    return (f"Command: `{command}` — finished in {seconds / 60:.1f} min wall ({runs_provenance(result)}); "
            f"the runs' own CPU time adds up to {result['cpu_s'] / 60:.1f} CPU-min.")


def write_results(section: str, body: str, doc: Path, json_path: Path, result: dict, command: str, info: dict) -> None:
    """A script's section of ``doc``, and its result with the command and the git commit as ``json_path``."""
    common.write_section(section, body, doc)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({**result, "command": command, "git": info.get("git")}, indent=1) + "\n")


# ---------------------------------------------------------------- main
def run(cfg: AccuracyConfig, doc: Path, img_dir: Path, out: Path, command: Optional[str] = None,
        json_path: Path = JSON_PATH, jobs: int = 1, threads: Optional[int] = None) -> dict:
    started = time.perf_counter()
    info = common.machine_info()
    out.mkdir(parents=True, exist_ok=True)
    pretrained = ensure_pretrain(cfg, out)
    tasks = []
    for preset in cfg.presets:
        for seed in cfg.seeds:
            synth = synth_config(cfg, preset, seed)
            ensure_data(synth, out / "data")  # before any worker starts: no two processes write one set
            tasks += [(cfg, spec, synth, out, pretrained, {"preset": preset}) for spec in cfg.models]
    for knob, values in cfg.knob_values.items():
        for value in values:
            for seed in cfg.seeds:
                synth = synth_config(cfg, cfg.knob_preset, seed, (knob, value))
                ensure_data(synth, out / "data")
                tasks += [(cfg, spec, synth, out, pretrained, {"knob": knob, "value": value}) for spec in cfg.knob_models]
    results = run_all(tasks, jobs, threads)
    rows = [r for r in results if "preset" in r]
    knob_rows = [r for r in results if "knob" in r]

    result_doc = results_json(cfg, rows)
    oracle_share = {p: oracle_patch_share([out / "data" / data_key(synth_config(cfg, p, seed)) for seed in cfg.seeds])
                    for p in cfg.presets} if ORACLE in cfg.models else {}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result_doc, indent=1) + "\n")
    plots = {}
    labels = [m.label for m in cfg.models]
    for name, fn, args in (("models", plot_models, (result_doc, cfg.presets, labels)),
                           # (on one epoch axis: the models trained for other epochs are in the table)
                           ("curves", plot_curves, (rows, cfg.presets, [m.label for m in cfg.models if not m.train])),
                           ("knobs", plot_knobs, (knob_rows, list(cfg.knob_values), [m.label for m in cfg.knob_models]))):
        if name == "knobs" and not knob_rows:
            continue
        png = img_dir / f"accuracy-{cfg.mode}-{name}.png"
        fn(*args, png)
        plots[name] = os.path.relpath(png.resolve(), doc.parent.resolve())
    seconds = time.perf_counter() - started
    command = command or common.command_line()
    (out / f"{cfg.mode}-results.json").write_text(json.dumps(
        {"command": command, "machine": info, "seconds": seconds, "config": dataclasses.asdict(cfg),
         "pretrain": pretrained, "main": rows, "knobs": knob_rows, "oracle_patch_share": oracle_share}, default=str))
    body = render(cfg, rows, knob_rows, result_doc, pretrained, info, command, seconds, plots, oracle_share)
    common.write_section("accuracy", body, doc)
    print(body)
    return {"main": rows, "knobs": knob_rows, "seconds": seconds, "json": result_doc, "pretrain": pretrained}


def estimate(cfg: AccuracyConfig, out: Path, jobs: int, threads: Optional[int], cores: int = 2) -> dict:
    """Project the mode's duration from measured runs: the pretraining, and on each preset one seed
    of full SGMN (the costliest model; ablations and the from-scratch row are counted at its cost,
    an upper bound) and of ``clip-meanpool`` (the cheapest; ``rice-icl`` counted at its cost).
    CPU-seconds are measured (wall time on a shared machine says little); the projection assumes
    ``cores`` otherwise idle cores kept busy by ``jobs`` single-thread runs."""
    t0, c0 = time.perf_counter(), time.process_time()
    pretrained = ensure_pretrain(cfg, out)
    pre_cpu = pretrained["info"].get("cpu_seconds")  # as measured when it was computed (cached or not)
    per_preset = {}
    data_cpu = []
    for preset in cfg.presets:
        synth = synth_config(cfg, preset, cfg.seeds[0])
        c1 = time.process_time()
        if not (out / "data" / data_key(synth) / ".complete").exists():
            ensure_data(synth, out / "data")
            data_cpu.append(time.process_time() - c1)
        rows = {spec.label: run_one(cfg, spec, synth, out, pretrained, threads) for spec in (FULL, CLIP_MEANPOOL)}
        per_preset[preset] = {label: r["cpu_s"] for label, r in rows.items()}
    n_seeds = len(cfg.seeds)
    baselines = sum(1 for m in cfg.models if m.variant in ("clip-meanpool", "rice-icl"))
    sgmn_like = len(cfg.models) - baselines
    runs_cpu = sum(n_seeds * (sgmn_like * c[FULL.label] + baselines * c[CLIP_MEANPOOL.label]) for c in per_preset.values())
    knob_runs = sum(len(v) for v in cfg.knob_values.values()) * n_seeds
    default_cost = per_preset.get(cfg.knob_preset, next(iter(per_preset.values())))
    runs_cpu += knob_runs * (default_cost[FULL.label] + default_cost[CLIP_MEANPOOL.label])
    gen_cpu = (statistics.fmean(data_cpu) if data_cpu else 0.0) * len(cfg.presets) * n_seeds
    parallel = max(1, min(jobs, cores))
    wall = (pre_cpu or 0.0) + gen_cpu + runs_cpu / parallel
    result = {"mode": cfg.mode, "pretrain_cpu_s": pre_cpu, "data_cpu_s_per_set": statistics.fmean(data_cpu) if data_cpu else None,
              "run_cpu_s": per_preset, "runs": n_seeds * len(cfg.models) * len(cfg.presets) + knob_runs * 2,
              "projected_cpu_min": ((pre_cpu or 0) + gen_cpu + runs_cpu) / 60,
              "projected_wall_min": wall / 60, "jobs": jobs, "cores": cores,
              "measured_in_s": time.perf_counter() - t0, "measured_cpu_s": time.process_time() - c0}
    print(json.dumps(result, indent=1))
    return result


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--standard", action="store_true", help="5 seeds at CPU sizes: about 1.5 h on a quiet 2-core CPU with --jobs 2, "
                       "about 30 min with --goals-only")
    group.add_argument("--smoke", action="store_true", help="a few minutes; for the test suite")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the mode's seeds (>= 2)")
    parser.add_argument("--goals-only", action="store_true",
                        help="train only the models the goals and effects need (clip-meanpool, SGMN, its ablations, "
                             "from scratch): --standard then fits in well under an hour")
    parser.add_argument("--estimate", action="store_true",
                        help="measure the pretraining and one seed of the cheapest / costliest model per preset, "
                             "and project the mode's duration (writes no docs)")
    parser.add_argument("--jobs", type=int, default=1, help="training runs in parallel processes (2 on 2 cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's; 1 with --jobs 2)")
    parser.add_argument("--doc", type=Path, default=common.DOC, help="markdown file to write the section into")
    parser.add_argument("--json", type=Path, default=JSON_PATH, help="where the results with CIs go")
    parser.add_argument("--img-dir", type=Path, default=common.IMG_DIR)
    parser.add_argument("--out", type=Path, default=common.OUT_DIR / "accuracy", help="data, caches, raw results")
    args = parser.parse_args(argv)
    import torch

    threads = args.threads or (1 if args.jobs > 1 else None)
    if threads:
        torch.set_num_threads(threads)
    cfg = mode_config("standard" if args.standard else "smoke" if args.smoke else "full")
    if args.seeds is not None:
        if len(set(args.seeds)) < 2:
            parser.error("--seeds: give at least two different seeds (CIs resample seeds)")
        cfg.seeds = tuple(args.seeds)
    if args.goals_only:
        cfg.models = tuple(m for m in cfg.models if m in GOAL_MODELS)
    if args.estimate:
        estimate(cfg, args.out, args.jobs, threads)
        return
    run(cfg, args.doc, args.img_dir, args.out,
        command=common.command_line() if argv is None else "python benchmarks/accuracy.py " + " ".join(argv),
        json_path=args.json, jobs=args.jobs, threads=threads)


if __name__ == "__main__":
    main()
