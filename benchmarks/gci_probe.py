"""Where GCI's cost at batch 32 comes from, on selection seeds.

    python benchmarks/gci_probe.py --jobs 2   # about 30 min on a quiet 2-core CPU (the R@1 runs are cached with accuracy.py's;
                                              # the gradient-alignment runs, about 4 min, are not)
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

Then whether the cost is laid down early or late: GCI's losses for the first epochs only
(:func:`switched_runs`: the run stops at the end of that epoch and resumes from its checkpoint with
``losses.gnn`` and ``losses.reg`` at 0; resuming restores the optimiser, the schedule and the data
order), paired against no GCI, with the same stop and resume on no GCI as the control that resuming
changes nothing.

Last, when L_gnn turns against retrieval: full GCI and no GCI are trained again with every epoch's
checkpoint kept, and at each scored epoch the gradient of L_gnn on fixed training batches is compared
with the gradient of L_S, the InfoNCE on the score that retrieval ranks by (v·p + λ a·t), on fixed
test batches (:func:`gradient_alignment`). A negative cosine means that a step down L_gnn is, to
first order, a step up the test L_S.

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

GRADIENT_BATCHES = 5  # fixed batches of training pairs and of test pairs, per checkpoint
SWITCH_EPOCHS = (2, 4)  # GCI's losses for the first this many epochs only


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


def _switched_run(args) -> dict:
    """Train ``spec`` for its first ``epoch`` epochs, then resume from that checkpoint with the model
    config's ``after`` overrides (dotted ``losses.*`` keys), with the optimiser's moments emptied when
    ``reset``; scored at the end like ``run_one``."""
    import math
    import shutil

    import torch

    import sgmn
    from sgmn.data.dataset import NoTextVectors, TrainPairs
    from sgmn.data.readers import read_dataset
    from sgmn.eval.protocol import evaluate
    from sgmn.train.loop import train

    cfg, spec, synth, out, pretrained, threads, epoch, after, reset, label, preset = args
    if threads:
        torch.set_num_threads(threads)
    data_dir = accuracy.ensure_data(synth, out / "data")
    data = read_dataset(data_dir, "lpr4m")
    train_cfg = accuracy.train_config(cfg, spec, synth.seed)
    steps_per_epoch = math.ceil(len(TrainPairs(data, "train", train=False, text=NoTextVectors(1))) / train_cfg.batch_size)
    run_dir = out / "gci-probe-switch" / f"{accuracy.run_key(cfg, spec, synth, pretrained['key'])}-{epoch}"
    accuracy.train_run(cfg, spec, synth, out, pretrained, run_dir,
                       dataclasses.replace(train_cfg, max_steps=epoch * steps_per_epoch))
    checkpoint = run_dir / f"epoch-{epoch:03d}"
    config = json.loads((checkpoint / "config.json").read_text())
    for key, value in after.items():
        section, name = key.split(".")
        config[section][name] = value
    (checkpoint / "config.json").write_text(json.dumps(config, indent=1))
    if reset:  # AdamW's moments (and its bias correction) start afresh; the schedule and the data order do not
        state = torch.load(checkpoint / "train_state.pt", weights_only=False)
        if not state["optimizer"]["state"]:
            raise RuntimeError(f"{checkpoint}: the saved optimiser has no moments to reset")
        state["optimizer"]["state"] = {}
        torch.save(state, checkpoint / "train_state.pt")
    result = train(data_dir, "lpr4m", spec.variant, run_dir, train_config=train_cfg, resume=checkpoint)
    scored = evaluate(sgmn.load_model(run_dir / f"epoch-{result.epochs_completed:03d}"), data, split="test",
                      progress=False)
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"model": label, "preset": preset, "seed": synth.seed, "data": accuracy.data_key(synth),
            "R@1": scored.metrics["R@1"], "steps": result.step, "last_losses": sorted(result.last_losses),
            **accuracy.hits_by_query(scored)}


def switched_runs(cfg: accuracy.AccuracyConfig, full: accuracy.ModelSpec, baseline: accuracy.ModelSpec, epochs,
                  seeds, preset: str, out: Path, pretrained: dict, jobs: int = 1,
                  threads: Optional[int] = None) -> dict:
    """GCI's losses for the first ``epochs`` epochs only, and no GCI stopped and resumed unchanged at
    the first of them (the control), each paired against ``baseline`` trained without a stop."""
    off = {"losses.gnn": 0.0, "losses.reg": 0.0}
    plans = {f"GCI for the first {e} epochs": (full, e, off, False) for e in epochs}
    plans["no GCI, stopped and resumed (control)"] = (baseline, epochs[0], {}, False)
    # whether what lasts is in the weights or in AdamW's moments, which L_gnn's gradients filled
    plans[f"GCI for the first {epochs[0]} epochs, optimiser moments reset"] = (full, epochs[0], off, True)
    plans["no GCI, stopped and resumed, optimiser moments reset"] = (baseline, epochs[0], {}, True)
    args, tasks = [], []
    for seed in seeds:
        synth = accuracy.synth_config(cfg, preset, seed)
        tasks.append((cfg, baseline, synth, out, pretrained, {"preset": preset}))
        args += [(cfg, spec, synth, out, pretrained, threads, e, after, reset, name, preset)
                 for name, (spec, e, after, reset) in plans.items()]
    rows = accuracy.run_all(tasks, jobs, threads)  # the baseline, from the cache
    rows += accuracy.parallel_map(_switched_run, args, jobs)
    result = {}
    reset_control = "no GCI, stopped and resumed, optimiser moments reset"
    for name, (spec, epoch, after, reset) in plans.items():
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: r["seed"])
        result[name] = {"epochs": epoch, "after": after, "reset": reset, "per_seed": [r["R@1"] for r in mine],
                        "steps": [r["steps"] for r in mine], "last_losses": mine[0]["last_losses"],
                        "R@1": statistics.fmean(r["R@1"] for r in mine),
                        "vs_no_gci": accuracy.paired_effect(rows, preset, name, baseline.label, cfg.n_boot),
                        "vs_reset_control": accuracy.paired_effect(rows, preset, name, reset_control, cfg.n_boot)
                        if reset and name != reset_control else None}
    return {"plans": result, "runs": len(args)}


def _switch_markdown(switch: Optional[dict]) -> list[str]:
    if not switch:
        return []
    rows = [[name, f"{v['R@1']:.1f}", accuracy._bold_if_clear(v["vs_no_gci"]),
             accuracy._bold_if_clear(v["vs_reset_control"]) if v.get("vs_reset_control") else "–"]
            for name, v in switch["plans"].items()]
    return [
        "", "Whether the cost is laid down early: GCI's losses (L_gnn, L_reg) for the first epochs only, then the "
        "same run without them (stopped at that epoch's end and resumed from its checkpoint, optimiser, schedule "
        "and data order restored), paired against no GCI; the control stops and resumes no GCI without a change. "
        "The last two rows also empty AdamW's moments at the stop (its bias correction starts again; the schedule "
        "and the data order stay), which asks whether what lasts is in the weights or in the moments that L_gnn's gradients filled; "
        "the GCI row is paired against the reset control as well:",
        "", common.markdown_table(["model", "R@1", "− no GCI", "− no GCI with the same reset"], rows),
    ]


def mean_gradient(model, batches: list, loss: str) -> "torch.Tensor":
    """The gradient of ``model(batch)["losses"][loss]``, averaged over ``batches``, over every
    trainable parameter as one flat vector (zeros where the loss does not reach a parameter)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for batch in batches:
        grads = torch.autograd.grad(model(batch)["losses"][loss], params, allow_unused=True)
        for t, g in zip(total, grads):
            if g is not None:
                t.add_(g, alpha=1.0 / len(batches))
    return torch.cat([t.flatten() for t in total])


def _fixed_batches(data, split: str, model, batch_size: int, count: int) -> list:
    import torch

    from sgmn.data.dataset import TrainPairs, collate
    from sgmn.text import TextVectors, make_text_encoder

    mc = model.config
    pairs = TrainPairs(data, split, num_frames=mc.num_frames, image_size=mc.vision.image_size,
                       patch_size=mc.vision.patch_size, geometry=mc.geometry,
                       text=TextVectors(data, split, make_text_encoder(mc.text), progress=False), train=False)
    loader = torch.utils.data.DataLoader(pairs, batch_size=batch_size, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(0))
    return [batch for _, batch in zip(range(count), loader)]


def _alignment_run(args) -> list[dict]:
    """Train one model with every checkpoint kept; per scored epoch, its losses and gradient cosines."""
    import shutil

    import torch

    import sgmn
    from sgmn.data.readers import read_dataset

    cfg, spec, synth, out, pretrained, threads, batches = args
    if threads:
        torch.set_num_threads(threads)
    run_dir = out / "gci-probe-gradients" / accuracy.run_key(cfg, spec, synth, pretrained["key"])
    result = accuracy.train_run(cfg, spec, synth, out, pretrained, run_dir)
    data = read_dataset(accuracy.ensure_data(synth, out / "data"), "lpr4m")
    batch_size = accuracy.train_config(cfg, spec, synth.seed).batch_size
    epochs = result.epochs_completed
    rows, train, test = [], None, None
    for epoch in sorted({*range(cfg.curve_every, epochs + 1, cfg.curve_every), epochs}):
        model = sgmn.load_model(run_dir / f"epoch-{epoch:03d}").eval()  # no dropout: the same batches, the same loss
        model.config.losses.vi = 1.0  # L_S: computed for the measurement, never trained here
        if train is None:  # the same batches at every epoch (they depend on the config's sizes alone)
            train, test = (_fixed_batches(data, split, model, batch_size, batches) for split in ("train", "test"))
        s_test, s_train = mean_gradient(model, test, "vi"), mean_gradient(model, train, "vi")
        row = {"epoch": epoch, "seed": synth.seed}
        with torch.no_grad():
            for name, split in (("train", train), ("test", test)):
                row[f"L_S_{name}"] = statistics.fmean(float(model(b)["losses"]["vi"]) for b in split)
        for loss in ("gnn", "base"):
            if loss == "gnn" and not model.config.use_gci:
                continue
            g = mean_gradient(model, train, loss)
            row[f"cos_{loss}_test"] = float(torch.nn.functional.cosine_similarity(g, s_test, dim=0))
            row[f"cos_{loss}_train"] = float(torch.nn.functional.cosine_similarity(g, s_train, dim=0))
        rows.append(row)
    shutil.rmtree(run_dir, ignore_errors=True)
    return rows


def gradient_alignment(cfg: accuracy.AccuracyConfig, models: dict, seeds, preset: str, out: Path, pretrained: dict,
                       jobs: int = 1, threads: Optional[int] = None, batches: int = GRADIENT_BATCHES) -> dict:
    """Per model (name -> spec) and scored epoch, the mean over ``seeds`` of: L_S on fixed training
    and test batches, and the cosines of L_gnn's and L_base's gradients (on the training batches)
    with L_S's gradient on the test and on the training batches."""
    args = []
    for seed in seeds:
        synth = accuracy.synth_config(cfg, preset, seed)
        accuracy.ensure_data(synth, out / "data")
        args += [(cfg, spec, synth, out, pretrained, threads, batches) for spec in models.values()]
    runs = accuracy.parallel_map(_alignment_run, args, jobs)
    result = {}
    for i, name in enumerate(models):
        rows = [row for run in runs[i::len(models)] for row in run]
        by_epoch = {}
        for row in rows:
            by_epoch.setdefault(row["epoch"], []).append(row)
        result[name] = [{"epoch": e, **{k: statistics.fmean(r[k] for r in group)
                                        for k in group[0] if k not in ("epoch", "seed")}}
                        for e, group in sorted(by_epoch.items())]
    return {"seeds": list(seeds), "batches": batches, "runs": len(runs), "models": result}


def _alignment_markdown(alignment: Optional[dict]) -> list[str]:
    if not alignment:
        return []
    (gci_name, gci), (base_name, base) = list(alignment["models"].items())
    rows = [[str(g["epoch"]), f"{g['cos_gnn_test']:+.2f}", f"{g['cos_gnn_train']:+.2f}", f"{g['cos_base_test']:+.2f}",
             f"{b['cos_base_test']:+.2f}", f"{g['L_S_test']:.2f}", f"{b['L_S_test']:.2f}", f"{g['L_S_train']:.2f}",
             f"{b['L_S_train']:.2f}"] for g, b in zip(gci, base)]
    return [
        "", f"When L_gnn turns against retrieval: {gci_name} and {base_name} trained again on the same seeds, and at "
        f"each scored epoch, on {alignment['batches']} fixed batches of training pairs and of test pairs, the "
        "cosine between a loss's gradient on the training batches and the gradient of L_S (the InfoNCE on the "
        "score retrieval ranks by, v·p + λ a·t, never trained here) on the test or the training batches, over "
        "every trainable parameter; then L_S itself. Means over the seeds:", "",
        common.markdown_table(
            ["epoch", "cos(∇L_gnn, ∇L_S test)", "cos(∇L_gnn, ∇L_S train)", "cos(∇L_base, ∇L_S test)",
             f"cos(∇L_base, ∇L_S test), {base_name}", "L_S test", f"L_S test, {base_name}", "L_S train",
             f"L_S train, {base_name}"], rows),
    ]


def _more_runs(result: dict) -> str:
    parts = []
    if result.get("by_size"):
        parts.append(f"{result['by_size']['fresh_runs']} of the {result['by_size']['runs']} runs on other training-set "
                     "sizes trained here")
    if result.get("switch"):
        parts.append(f"{result['switch']['runs']} stopped-and-resumed runs, never cached, trained here")
    if result.get("alignment"):
        parts.append(f"{result['alignment']['runs']} gradient-alignment runs, which are never cached, trained here")
    return "".join(f"; {p}" for p in parts)


def markdown(result: dict, command: str, seconds: float, info: dict) -> str:
    base = result["baseline"]
    rows = [[name, v["removes"], f"{v['R@1']:.1f}", accuracy._bold_if_clear(v["vs_no_gci"])]
            for name, v in result["variants"].items()]
    curve_rows = [[name, *(f"{x:.1f}" for x in v["curve"])]
                  for name, v in [("no GCI", base), *result["variants"].items()]]
    return "\n".join([
        f"## Where GCI's cost at batch 32 comes from (`{result['preset']}`, selection seeds)", "",
        f"Command: `{command}` — finished in {seconds / 60:.1f} min wall ({accuracy.runs_provenance(result)}{_more_runs(result)}); "
        f"the first table's runs' own CPU time adds up to {result['cpu_s'] / 60:.1f} CPU-min.", "",
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
        *_switch_markdown(result.get("switch")),
        *_alignment_markdown(result.get("alignment")),
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
        sizes: tuple[int, ...] = (), batches: int = GRADIENT_BATCHES, switch_epochs: tuple[int, ...] = ()) -> dict:
    info = common.machine_info()
    t0 = time.perf_counter()
    pretrained = accuracy.ensure_pretrain(cfg, out)
    result = probe(cfg, variants, baseline, seeds, preset, out, pretrained, jobs, threads)
    if sizes:
        result["by_size"] = probe_sizes(cfg, sizes, {n: variants[n][0] for n in SIZE_VARIANTS if n in variants},
                                        baseline, seeds, preset, out, pretrained, jobs, threads)
    if switch_epochs:
        result["switch"] = switched_runs(cfg, variants["full GCI"][0], baseline, switch_epochs, seeds, preset, out,
                                         pretrained, jobs, threads)
    result["alignment"] = gradient_alignment(cfg, {"full GCI": variants["full GCI"][0], "no GCI": baseline}, seeds,
                                             preset, out, pretrained, jobs, threads, batches)
    seconds = time.perf_counter() - t0
    accuracy.write_results(SECTION, markdown(result, command, seconds, info), doc, json_path, result, command, info)
    return result


def main(argv: Optional[list[str]] = None) -> None:
    args, threads = accuracy.selection_script_args(
        __doc__.split("\n")[0], JSON_PATH, "two variants at the accuracy smoke sizes and budget", argv)
    variants, baseline, sizes, batches, switch = VARIANTS, WITHOUT, DATA_SIZES, GRADIENT_BATCHES, SWITCH_EPOCHS
    if args.smoke:
        # the smoke sets are too small for batch 32: the smoke budget, one seed, two variants
        cfg, seeds, preset = accuracy.mode_config("smoke"), SELECTION_SEEDS[:1], "easy"
        variants = {k: (dataclasses.replace(spec, train=()), removes)
                    for k, (spec, removes) in VARIANTS.items() if k in ("full GCI", "L_reg alone")}
        baseline = dataclasses.replace(WITHOUT, train=())
        sizes, batches, switch = (2, 3), 2, (1,)  # the smoke sets have 2 clips per product; 2 epochs
    else:
        cfg, seeds, preset = accuracy.mode_config("standard"), SELECTION_SEEDS, PRESET
    command = common.command_line() if argv is None else "python benchmarks/gci_probe.py " + " ".join(argv)
    run(cfg, variants, baseline, seeds, preset, args.doc, args.json, args.out, command, args.jobs, threads, sizes,
        batches, switch)


if __name__ == "__main__":
    main()
