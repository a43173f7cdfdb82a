"""Can SMF's cross encoder tell the product from its mined negatives on these data at all?

    python benchmarks/smf_probe.py             # hard preset, the accuracy benchmark's seeds; ~15 min on 2 cores
    python benchmarks/smf_probe.py --smoke     # seconds; what tests/test_benchmarks.py runs

In the accuracy benchmark the cross encoder, trained jointly with everything else, stays near
chance on its own (the mechanism table there). That has two readings: the joint budget (120
steps at the new modules' lr, warm-up and cosine included) is too short for a transformer block
trained from nothing, or the features and the data cannot support it. This probe separates them.
Per seed it fine-tunes full SGMN exactly as the accuracy benchmark does (same data, pretraining,
recipe, code path), then freezes everything but the cross encoder and the selective fusion and
trains only L_pair, with the retrieval-score prior off (the cross encoder alone), for many more
steps at a higher lr. It reports the training L_pair against ln(1 + k) and the test-split SMF
accuracy (``sgmn eval``'s mechanism metric: the ground-truth product against the query's k
highest-ranked other products; chance 1 / (1 + k)) before and after.

Writes the ``smf-probe`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402
import common  # noqa: E402

SECTION = "smf-probe"


@dataclass
class ProbeConfig:
    preset: str = "hard"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # the accuracy benchmark's
    steps: int = 600  # cross-encoder-only optimiser steps
    lr_factor: float = 10.0  # on the accuracy benchmark's lr for new modules
    every: int = 200  # test SMF accuracy every this many steps
    batch_size: int = 16  # the accuracy benchmark's
    mode: str = "standard"  # the accuracy benchmark's mode (sizes, budget)
    threads: int = 1  # torch threads (the accuracy benchmark's runs use one each)


def smoke_config() -> ProbeConfig:
    return ProbeConfig(preset="easy", seeds=(0,), steps=4, every=2, mode="smoke")


def smf_accuracy(model, data) -> tuple[float, float]:
    from sgmn.eval.protocol import evaluate

    was_training = model.training
    model.eval()
    smf = evaluate(model, data, split="test", progress=False, mechanism=True).metrics["mechanism"]["smf_accuracy"]
    model.train(was_training)
    return smf["accuracy"], smf["chance"]


def probe_seed(cfg: ProbeConfig, acc_cfg, seed: int, out: Path, pretrained: dict, work: Path) -> dict:
    import torch
    from torch.utils.data import DataLoader

    import sgmn
    from sgmn.data.dataset import TrainPairs, collate
    from sgmn.data.readers import read_dataset
    from sgmn.text import TextVectors, make_text_encoder
    from sgmn.train.config import TrainConfig

    spec = accuracy.FULL
    synth = accuracy.synth_config(acc_cfg, cfg.preset, seed)
    data_dir = accuracy.ensure_data(synth, out / "data")
    run_dir = work / f"seed-{seed}"
    t0 = time.perf_counter()
    result = accuracy.train_run(acc_cfg, spec, synth, out, pretrained, run_dir)
    joint_s = time.perf_counter() - t0
    recipe = TrainConfig.from_json(run_dir / "train_config.json")
    model = sgmn.load_model(run_dir / f"epoch-{result.epochs_completed:03d}")
    data = read_dataset(data_dir, "lpr4m")
    joint_acc, chance = smf_accuracy(model, data)

    mc = model.config
    mc.smf_score_prior = False  # the cross encoder alone
    for name in vars(mc.losses):
        setattr(mc.losses, name, 1.0 if name == "pair" else 0.0)
    trained = [p for n, p in model.named_parameters() if n.startswith(("cross.", "fusion"))]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    text = TextVectors(data, "train", make_text_encoder(mc.text), progress=False)
    pairs = TrainPairs(data, "train", num_frames=mc.num_frames, image_size=mc.vision.image_size,
                       patch_size=mc.vision.patch_size, geometry=mc.geometry, text=text, train=True, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(pairs, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, generator=generator,
                        drop_last=True)
    lr = recipe.lr * cfg.lr_factor
    opt = torch.optim.AdamW(trained, lr=lr, betas=recipe.betas, eps=recipe.eps, weight_decay=recipe.weight_decay)
    torch.manual_seed(seed)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses, curve, step = [], [(0, joint_acc)], 0
    t0 = time.perf_counter()
    while step < cfg.steps:
        for batch in loader:
            loss = model(batch)["losses"]["pair"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % cfg.every == 0 or step == cfg.steps:
                curve.append((step, smf_accuracy(model, data)[0]))
            if step >= cfg.steps:
                break
    window = max(1, min(50, len(losses) // 4))
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()}
    is_trained = {id(p) for p in trained}
    row = {"seed": seed, "joint_steps": result.step, "joint_s": joint_s, "probe_s": time.perf_counter() - t0,
           "chance": chance, "k": int(mc.smf_k), "joint_accuracy": joint_acc, "probe_accuracy": curve[-1][1],
           "curve": curve, "lr": lr, "trained_params": sum(p.numel() for p in trained),
           "pair_first": statistics.fmean(losses[:window]), "pair_last": statistics.fmean(losses[-window:]),
           "trained_moved": max(moved[n] for n, p in model.named_parameters() if id(p) in is_trained),
           "frozen_moved": max(moved[n] for n, p in model.named_parameters() if id(p) not in is_trained)}
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"[smf-probe] seed {seed}: joint {100 * joint_acc:.1f}% -> probe {100 * row['probe_accuracy']:.1f}% "
          f"(chance {100 * chance:.1f}%), L_pair {row['pair_first']:.3f} -> {row['pair_last']:.3f}", flush=True)
    return row


def render(cfg: ProbeConfig, acc_cfg, rows: list[dict], info: dict, seconds: float) -> str:
    k = rows[0]["k"]
    table = common.markdown_table(
        ["seed", "joint training: SMF accuracy %", f"after {cfg.steps} probe steps: SMF accuracy %",
         "test accuracy per probe step", "train L_pair first → last 50 steps", "chance %"],
        [[r["seed"], f"{100 * r['joint_accuracy']:.1f}", f"{100 * r['probe_accuracy']:.1f}",
          ", ".join(f"{s}: {100 * a:.1f}" for s, a in r["curve"]), f"{r['pair_first']:.3f} → {r['pair_last']:.3f}",
          f"{100 * r['chance']:.1f}"] for r in rows])
    mean = lambda key: 100 * statistics.fmean(r[key] for r in rows)  # noqa: E731
    return f"""## Can SMF's cross encoder learn on these data? (`{cfg.preset}` preset)

Command: `{common.command_line()}` — finished in {seconds / 60:.1f} min.

{common.machine_markdown(info)}

Per seed, full SGMN is fine-tuned exactly as in the accuracy benchmark ({acc_cfg.mode} mode, {rows[0]['joint_steps']}
optimiser steps), then everything but the cross encoder and the selective fusion ({rows[0]['trained_params']:,}
parameters) is frozen and only L_pair trains, without the retrieval-score prior, for {cfg.steps} steps at lr
{rows[0]['lr']:g} ({cfg.lr_factor:g}× the new modules' lr, constant), batch {cfg.batch_size}. SMF accuracy: on the
test split, the cross encoder alone picks the ground-truth product among it and the query's {k} highest-ranked other
products (chance {100 * rows[0]['chance']:.1f}%); L_pair's chance level is ln(1 + k) = {math.log(1 + k):.3f}.

{table}

Mean over seeds: {mean('joint_accuracy'):.1f}% after joint training, {mean('probe_accuracy'):.1f}% after the probe
(chance {mean('chance'):.1f}%).
"""


def run(cfg: ProbeConfig, doc: Optional[Path] = common.DOC, out: Optional[Path] = None) -> list[dict]:
    import torch

    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    info = common.machine_info()
    acc_cfg = accuracy.mode_config(cfg.mode)
    out = out or common.OUT_DIR / "accuracy"
    pretrained = accuracy.ensure_pretrain(acc_cfg, out)
    with tempfile.TemporaryDirectory(prefix="sgmn-smf-probe-") as work:
        rows = [probe_seed(cfg, acc_cfg, seed, out, pretrained, Path(work)) for seed in cfg.seeds]
    if doc is not None:
        common.write_section(SECTION, render(cfg, acc_cfg, rows, info, time.perf_counter() - started), doc)
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one tiny seed, a few steps (writes no docs)")
    parser.add_argument("--steps", type=int, default=ProbeConfig.steps)
    args = parser.parse_args(argv)
    if args.smoke:
        run(smoke_config(), doc=None)
        return
    run(ProbeConfig(steps=args.steps))


if __name__ == "__main__":
    main()
