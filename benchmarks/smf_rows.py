"""Does SMF's cross encoder learn the direction it is used in, when L_pair also has clip rows?

    python benchmarks/smf_rows.py --jobs 2     # hard and default, seeds the accuracy benchmark never reports; 6-10 min on 2 cores
    python benchmarks/smf_rows.py --smoke      # seconds; what tests/test_benchmarks.py runs

The published L_pair has one softmax row per product: the product against its own clip and its
k hardest clips of other products. The re-ranker and ``sgmn eval``'s SMF accuracy use the cross
encoder the other way round: one clip against its candidate products. A per-product offset of
the cross encoder's score cancels in every product row, so training never constrains it, yet it
decides the clip's ranking. ``SGMNConfig.smf_clip_rows`` adds the clip rows (each clip against
its own product and its k hardest products of other ids; L_pair is the mean of both directions).
These are the runs that selected it as the default (git c119ef2); both variants set it explicitly.

Per seed, full SGMN is fine-tuned exactly as in the accuracy benchmark (standard mode, same data
recipe, pretraining and code path), once as published and once with the clip rows, and each is
scored on the test split three ways: R@1 as retrieved, R@1 with the cross encoder re-ranking each
query's top ``RERANK_K`` (``rerank_top_k``), and the SMF accuracy (the cross encoder alone picks
the true product among it and the query's k highest-ranked other products). Paired differences
with 95% bootstrap CIs over seeds and queries, as in the accuracy benchmark.

Writes the ``smf-rows`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402
import common  # noqa: E402

SECTION = "smf-rows"
RERANK_K = 4  # the positive and k = 3 others: the candidate count the cross encoder trains on
VARIANTS = {"published rows": (("smf_clip_rows", False),), "with clip rows": (("smf_clip_rows", True),)}


@dataclass
class RowsConfig:
    # Seeds the accuracy benchmark never reports (its selection seeds 100-102 and the fresh ones after them).
    seeds: dict = field(default_factory=lambda: {"hard": tuple(range(100, 109)), "default": tuple(range(100, 106))})
    mode: str = "standard"
    jobs: int = 1
    threads: int = 1


def smoke_config() -> RowsConfig:
    return RowsConfig(seeds={"easy": (0,)}, mode="smoke")


def run_variant(args) -> list[dict]:
    """Train one variant on one (preset, seed); its rows: as retrieved and re-ranked."""
    cfg, preset, seed, variant, out, pretrained, work = args
    import torch

    import sgmn
    from sgmn.data.readers import read_dataset
    from sgmn.eval.protocol import evaluate

    torch.set_num_threads(cfg.threads)
    acc_cfg = accuracy.mode_config(cfg.mode)
    synth = accuracy.synth_config(acc_cfg, preset, seed)
    spec = accuracy.ModelSpec(f"SGMN, {variant}", accuracy.FULL.variant, VARIANTS[variant])
    run_dir = Path(work) / f"{preset}-{seed}-{variant.replace(' ', '_')}"
    result = accuracy.train_run(acc_cfg, spec, synth, out, pretrained, run_dir)
    model = sgmn.load_model(run_dir / f"epoch-{result.epochs_completed:03d}")
    data = read_dataset(accuracy.ensure_data(synth, out / "data"), "lpr4m")
    plain = evaluate(model, data, progress=False, mechanism=True)
    model.config.rerank_top_k = RERANK_K
    reranked = evaluate(model, data, progress=False)
    shutil.rmtree(run_dir, ignore_errors=True)
    smf = plain.metrics["mechanism"]["smf_accuracy"]
    base = {"preset": preset, "seed": seed, "data": accuracy.data_key(synth), "steps": result.step}
    rows = [dict(base, model=spec.label, smf=smf["accuracy"], chance=smf["chance"], **accuracy.hits_by_query(plain)),
            dict(base, model=f"{spec.label}, re-ranked", **accuracy.hits_by_query(reranked))]
    print(f"[smf-rows] {preset} seed {seed} {variant}: R@1 {100 * np.mean(rows[0]['hits@1']):.1f}, re-ranked "
          f"{100 * np.mean(rows[1]['hits@1']):.1f}, SMF accuracy {100 * smf['accuracy']:.1f}%", flush=True)
    return rows


def effects(rows: list[dict], preset: str, n_boot: int) -> list[tuple[str, Optional[dict]]]:
    pub, clip = "SGMN, published rows", "SGMN, with clip rows"
    pairs = [("clip rows, as retrieved (with − without)", clip, pub),
             ("clip rows, re-ranked (with − without)", f"{clip}, re-ranked", f"{pub}, re-ranked"),
             ("re-ranking, published rows (re-ranked − as retrieved)", f"{pub}, re-ranked", pub),
             ("re-ranking, with clip rows (re-ranked − as retrieved)", f"{clip}, re-ranked", clip),
             ("clip rows and re-ranking against the published default", f"{clip}, re-ranked", pub)]
    return [(name, accuracy.paired_effect(rows, preset, a, b, n_boot)) for name, a, b in pairs]


def smf_effect(rows: list[dict], preset: str, n_boot: int) -> tuple[float, float, float]:
    """SMF accuracy with minus without the clip rows, in points, with a bootstrap CI over seeds."""
    by = {(r["model"], r["seed"]): r["smf"] for r in rows if r["preset"] == preset and "smf" in r}
    seeds = sorted({s for _, s in by})
    diffs = [[by[("SGMN, with clip rows", s)] - by[("SGMN, published rows", s)]] for s in seeds]
    m, lo, hi = accuracy.bootstrap_ci(diffs, n_boot)
    return 100 * m, 100 * lo, 100 * hi


def render(cfg: RowsConfig, rows: list[dict], info: dict, seconds: float, n_boot: int) -> str:
    fmt = lambda e: "–" if e is None else f"{e['mean']:+.1f} [{e['ci95'][0]:+.1f}, {e['ci95'][1]:+.1f}]"  # noqa: E731
    parts = []
    for preset, seeds in cfg.seeds.items():
        mean = lambda model, key="hits@1": 100 * statistics.fmean(  # noqa: E731
            float(np.mean(r[key])) if key == "hits@1" else r[key]
            for r in rows if r["preset"] == preset and r["model"] == model)
        table = common.markdown_table(
            ["model", "R@1", f"R@1, top {RERANK_K} re-ranked", "SMF accuracy % (chance)"],
            [[v, f"{mean(f'SGMN, {v}'):.1f}", f"{mean(f'SGMN, {v}, re-ranked'):.1f}",
              f"{mean(f'SGMN, {v}', 'smf'):.1f} ({mean(f'SGMN, {v}', 'chance'):.1f})"] for v in VARIANTS])
        m, lo, hi = smf_effect(rows, preset, n_boot)
        eff = common.markdown_table(["paired difference, R@1 points", "95% CI"],
                                    [[name, fmt(e)] for name, e in effects(rows, preset, n_boot)]
                                    + [["SMF accuracy, points (with − without clip rows; CI over seeds)",
                                        f"{m:+.1f} [{lo:+.1f}, {hi:+.1f}]"]])
        parts.append(f"#### `{preset}`, seeds {list(seeds)}, means over seeds\n\n{table}\n\n{eff}\n")
    steps = sorted({r["steps"] for r in rows})
    body = "\n".join(parts)
    return f"""## Does the cross encoder learn the re-ranker's direction? L_pair with clip rows

Command: `{common.command_line()}` — finished in {seconds / 60:.1f} min.

{common.machine_markdown(info)}

Full SGMN fine-tuned as in the accuracy benchmark ({cfg.mode} mode, {', '.join(map(str, steps))} optimiser steps), once
with the published L_pair (a softmax row per product, over its own clip and its k hardest clips of other products)
and once with `smf_clip_rows` (also a row per clip, over its own product and its k hardest products of other ids;
L_pair is the mean of the two directions). Both are scored as retrieved, with the cross encoder re-ranking each
query's top {RERANK_K} (`rerank_top_k`), and by the SMF accuracy (the cross encoder alone against the query's k
highest-ranked other products). The seeds are ones the accuracy benchmark never reports. 95% CIs: bootstrap
({n_boot} replicates) over seeds and queries, paired.

{body}"""


def run(cfg: RowsConfig, doc: Optional[Path] = common.DOC, out: Optional[Path] = None) -> list[dict]:
    import torch

    torch.set_num_threads(cfg.threads)  # as every run's process: the machine table reports it
    started = time.perf_counter()
    info = common.machine_info()
    acc_cfg = accuracy.mode_config(cfg.mode)
    out = out or common.OUT_DIR / "accuracy"
    pretrained = accuracy.ensure_pretrain(acc_cfg, out)
    for preset, seeds in cfg.seeds.items():  # generated once, before any process could race for a folder
        for seed in seeds:
            accuracy.ensure_data(accuracy.synth_config(acc_cfg, preset, seed), out / "data")
    with tempfile.TemporaryDirectory(prefix="sgmn-smf-rows-") as work:
        tasks = [(cfg, preset, seed, variant, out, pretrained, work)
                 for preset, seeds in cfg.seeds.items() for seed in seeds for variant in VARIANTS]
        rows = [row for part in accuracy.parallel_map(run_variant, tasks, cfg.jobs) for row in part]
    if doc is not None:
        common.write_section(SECTION, render(cfg, rows, info, time.perf_counter() - started, acc_cfg.n_boot), doc)
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one tiny seed (writes no docs)")
    parser.add_argument("--jobs", type=int, default=1, help="training processes (one torch thread each)")
    args = parser.parse_args(argv)
    if args.smoke:
        run(smoke_config(), doc=None)
        return
    run(RowsConfig(jobs=args.jobs))


if __name__ == "__main__":
    main()
