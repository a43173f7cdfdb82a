"""The GPU check in one command: does training work, and how fast, on this machine's GPUs?

    python benchmarks/gpu_check.py                 # every visible GPU; a few minutes (< 8 min)
    python benchmarks/gpu_check.py --cpu-dry-run   # the same logic on the CPU at sgmn-tiny size

Phases (each a real ``sgmn.train.loop.Trainer`` run: autocast, GradScaler, DDP, checkpoints):

1. ``sgmn-vitb32`` (random weights) trains ``--steps`` optimiser steps on one GPU in bf16, then
   in fp16; each must give finite losses that fall (mean of the last third of the logged losses
   below that of the first third), then is evaluated: the clips of the training set retrieve
   their product among all products through the inference API (``encode_clips`` /
   ``encode_products`` / ``score``), R@1 reported;
2. the bf16 run again under ``torchrun --nproc_per_node=<every visible GPU>`` (DDP, NCCL);
3. the ViT forward alone (bf16, the training batch's frames): achieved TFLOP/s (FLOPs counted by
   ``torch.utils.flop_counter``) as a share of the GPU's bf16 peak. Goal: >= 40 % on
   H100/H200-class GPUs.

Reported: clips/s per phase (median of the trainer's logged windows after warm-up), peak GPU
memory, the ViT share. Everything goes to a JSON file (``--json``, default
``benchmarks/out/gpu_check.json``). The data are in-memory tensors built to be learnable (clip
frames are noisy views of their product image; ASR and title vectors share a per-product
vector): the check is about the GPU training path; data loading speed is
``benchmarks/data_speed.py``'s.

Exit status: 0 = every check passed; 1 = a check failed (the JSON says which); 3 = skipped:
no CUDA device is visible (the JSON then holds ``"status": "skipped"``, nothing was measured).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the sgmn package
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

EXIT_SKIPPED = 3
DEFAULT_JSON = common.OUT_DIR / "gpu_check.json"


# ---- learnable in-memory data -----------------------------------------------------------------


class LearnablePairs(torch.utils.data.Dataset):
    """``n`` training pairs in the ``TrainPairs`` batch format over ``n // 2`` products: a clip's
    frames are its product's image plus noise, its ASR vector the product's title vector plus
    noise, so every loss term has something to learn."""

    def __init__(self, config, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        T, S, D, N = config.num_frames, config.vision.image_size, config.text.dim, config.vision.num_tokens
        self.products = max(2, n // 2)
        self.images = torch.randn(self.products, 3, S, S, generator=g)
        self.titles = torch.randn(self.products, D, generator=g)
        # A small bank of noise: drawing fresh 10 x 3 x 224 x 224 noise per clip would make the
        # loader, not the GPU, the bottleneck of the measured clips/s.
        self.noise = 0.5 * torch.randn(8, T, 3, S, S, generator=g)
        self.n, self.T, self.S, self.D, self.N, self.seed = n, T, S, D, N, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        label = i % self.products
        frames = self.images[label][None] + self.noise[i % len(self.noise)]
        frame_mask = torch.ones(self.T, dtype=torch.bool)
        frame_mask[max(1, self.T - i % 3) :] = False  # some clips are shorter (padding)
        return {
            "frames": frames * frame_mask[:, None, None, None],
            "frame_mask": frame_mask,
            "patch_mask": torch.ones(self.T, self.N, dtype=torch.bool),
            "asr_vec": self.titles[label] + 0.3 * torch.randn(self.D, generator=g),
            "asr_mask": torch.tensor(True),
            "product_pixels": self.images[label],
            "title_vec": self.titles[label],
            "title_mask": torch.tensor(True),
            "labels": torch.tensor(label),
        }


# ---- one training run (one process, or one rank of torchrun) ----------------------------------


def model_overrides(dry_run: bool) -> dict:
    # Random weights; the dry run shrinks sgmn-tiny further so the CPU finishes in seconds.
    return {"num_frames": 4, "vision.layers": 1} if dry_run else {}


def train_once(model_name: str, precision: str, steps: int, batch_size: int, dry_run: bool, out_dir: Path) -> dict:
    import sgmn
    from sgmn.data.dataset import collate
    from sgmn import distributed as dist_utils
    from sgmn.train.config import TrainConfig
    from sgmn.train.loop import Trainer

    world = dist_utils.world_size()
    torch.manual_seed(0)
    model = sgmn.create_model(model_name, **model_overrides(dry_run))
    cfg = TrainConfig(
        # random weights: the backbone learns at 0.1 x lr (the pretrained recipe's 1e-3 would keep it still)
        epochs=1, batch_size=batch_size, precision=precision, lr=1e-3 if dry_run else 3e-4, backbone_lr_factor=0.1,
        warmup_ratio=0.1, num_workers=0 if dry_run else max(1, min(4, (os.cpu_count() or 2) // world)),
        log_every=1 if dry_run else 2, val_fraction=0.0,
        device="cpu" if dry_run else "auto",
    )
    data = LearnablePairs(model.config, steps * batch_size * world)
    trainer = Trainer(model, data, cfg, out_dir, collate_fn=collate)
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(trainer.device)
        torch.cuda.set_sync_debug_mode("warn")  # count the host syncs the loop makes
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = trainer.fit()
    wall = time.perf_counter() - t0
    if cuda:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    rows = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()] if dist_utils.rank() == 0 else []
    steps_rows = [r for r in rows if r["kind"] == "step"]
    losses = [r["loss"] for r in steps_rows]
    speeds = [r["clips_per_s"] for r in steps_rows[2:] if r.get("clips_per_s")]  # after warm-up
    third = max(1, len(losses) // 3)
    out = {
        "model": model_name, "precision": trainer.precision, "ranks": world, "steps": result.step,
        "global_batch": batch_size * world, "wall_s": round(wall, 2),
        "losses": losses, "loss_terms_last": result.last_losses,
        "finite": all(math.isfinite(x) for x in losses) and bool(losses),
        "falling": bool(losses) and statistics.mean(losses[-third:]) < statistics.mean(losses[:third]),
        "clips_per_s": statistics.median(speeds) if speeds else None,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(trainer.device) if cuda else None,
        # host syncs seen by torch.cuda.set_sync_debug_mode over the run (log steps, the fp16
        # GradScaler's inf check and checkpointing included), and where the first ones came from
        "host_syncs": len(syncs) if cuda else None,
        "host_sync_sites": sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})[:20] if cuda else None,
        "device": torch.cuda.get_device_name(trainer.device) if cuda else "cpu",
    }
    if dist_utils.rank() == 0:
        out["eval"] = evaluate_in_memory(trainer.model, data, trainer.device, trainer.precision)
    return out


@torch.no_grad()
def evaluate_in_memory(model, data: LearnablePairs, device, precision: str, max_clips: int = 256) -> dict:
    """R@1 of the training clips against all products, through the inference API."""
    from sgmn.train.loop import _autocast

    model.eval()
    n = min(len(data), max_clips)
    samples = [data[i] for i in range(n)]
    t0 = time.perf_counter()
    with _autocast(torch.device(device), precision):
        clips = [
            model.encode_clips(
                torch.stack([s["frames"] for s in samples[i : i + 32]]).to(device),
                torch.stack([s["frame_mask"] for s in samples[i : i + 32]]).to(device),
                asr=torch.stack([s["asr_vec"] for s in samples[i : i + 32]]).to(device),
            )
            for i in range(0, n, 32)
        ]
        products = model.encode_products(data.images.to(device), titles=data.titles.to(device))
        scores = torch.cat([model.score(c, products).float() for c in clips])
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    labels = torch.tensor([int(s["labels"]) for s in samples], device=scores.device)
    r1 = (scores.argmax(dim=1) == labels).float().mean().item() * 100
    model.train()
    return {"clips": n, "products": data.products, "R@1": r1, "chance_R@1": 100.0 / data.products,
            "finite": bool(torch.isfinite(scores).all()), "clips_per_s": n / seconds}


# ---- the ViT forward's share of the GPU's peak --------------------------------------------------


def vit_share(model_name: str, batch_size: int, dry_run: bool, peak_override: Optional[float]) -> dict:
    import sgmn
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device("cpu" if dry_run else "cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    model = sgmn.create_model(model_name, **model_overrides(dry_run)).to(device)
    cfg = model.config
    pixels = torch.randn(batch_size * cfg.num_frames, 3, cfg.vision.image_size, cfg.vision.image_size, device=device)
    backbone = model.backbone
    dtype = torch.bfloat16

    def forward():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
            return backbone(pixels, None)

    with FlopCounterMode(display=False) as counter:
        forward()
    flops = counter.get_total_flops()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    seconds = common.time_call(forward, repeats=3 if dry_run else 20, warmup=1 if dry_run else 5, sync=sync)
    achieved = flops / seconds / 1e12
    peak = None
    if device.type == "cuda":
        from speed import gpu_peak_tflops

        peak = gpu_peak_tflops(torch.cuda.get_device_name(device), "bf16", peak_override)
    share = achieved / peak if peak else None
    return {
        "images": pixels.shape[0], "gflops_per_image": flops / pixels.shape[0] / 1e9, "seconds": seconds,
        "achieved_tflops": achieved, "peak_bf16_tflops": peak, "share_of_peak": share,
        "goal": 0.4, "meets_goal": None if share is None else share >= 0.4,
    }


# ---- torchrun phase -----------------------------------------------------------------------------


def run_torchrun(nproc: int, args, tmp: Path) -> dict:
    part = tmp / "torchrun.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", __file__, "--worker", "--json", str(part), "--steps", str(args.steps),
        "--run-dir", str(tmp / "torchrun-run"),
        "--batch-size", str(args.batch_size), "--model", args.model,
    ] + (["--cpu-dry-run"] if args.cpu_dry_run else [])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1" if args.cpu_dry_run else "4")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.torchrun_timeout)
    if proc.returncode != 0 or not part.is_file():
        return {"ranks": nproc, "error": f"torchrun exited {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}"}
    result = json.loads(part.read_text())
    result["torchrun_wall_s"] = round(time.perf_counter() - t0, 2)
    return result


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args) -> int:
    from sgmn import distributed as dist_utils

    dist_utils.setup_distributed(timeout_s=600)
    try:
        result = train_once(args.model, "bf16", args.steps, args.batch_size, args.cpu_dry_run, Path(args.run_dir))
        if dist_utils.rank() == 0:
            Path(args.json).write_text(json.dumps(result))
    finally:
        dist_utils.cleanup_distributed()
    return 0


# ---- main ---------------------------------------------------------------------------------------


def checks_of(report: dict) -> dict[str, bool]:
    checks = {}
    for name in ("bf16", "fp16", "torchrun"):
        phase = report["phases"].get(name, {})
        checks[f"{name}: trained without error"] = "error" not in phase and phase.get("steps", 0) > 0
        checks[f"{name}: losses finite"] = bool(phase.get("finite"))
        checks[f"{name}: losses falling"] = bool(phase.get("falling"))
        if name != "torchrun":
            checks[f"{name}: evaluation finite"] = bool(phase.get("eval", {}).get("finite"))
    return checks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-dry-run", action="store_true", help="run every phase on the CPU at sgmn-tiny size")
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps per phase (default 40; dry run 8)")
    ap.add_argument("--batch-size", type=int, default=None, help="clips per GPU (default 32; dry run 4)")
    ap.add_argument("--model", default=None, help="default sgmn-vitb32 (dry run: sgmn-tiny)")
    ap.add_argument("--ranks", type=int, default=None, help="torchrun processes (default: every visible GPU; dry run 2)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 peak when not in the built-in table")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--doc", type=Path, default=common.DOC, help="markdown file whose gpu-check section is rewritten (GPU runs only)")
    ap.add_argument("--torchrun-timeout", type=int, default=300)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    dry = args.cpu_dry_run
    args.steps = args.steps or (8 if dry else 40)
    args.batch_size = args.batch_size or (4 if dry else 32)
    args.model = args.model or ("sgmn-tiny" if dry else "sgmn-vitb32")
    if args.worker:
        return worker(args)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": common.command_line(), "machine": common.machine_info(), "dry_run": dry,
                    "model": args.model, "steps": args.steps, "batch_size_per_rank": args.batch_size, "phases": {}}
    if not dry and not torch.cuda.is_available():
        report.update(status="skipped", reason="no CUDA device is visible (torch.cuda.is_available() is False)")
        args.json.write_text(json.dumps(report, indent=2))
        print(f"[gpu_check] skipped: no CUDA device is visible; nothing was measured ({args.json}). "
              "Use --cpu-dry-run to exercise the check's logic on the CPU.")
        return EXIT_SKIPPED
    if not dry:
        report["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for precision in ("bf16", "fp16"):
            try:
                report["phases"][precision] = train_once(args.model, precision, args.steps, args.batch_size, dry, tmp / precision)
            except Exception as e:  # reported as a failed check, the other phases still run
                report["phases"][precision] = {"error": f"{type(e).__name__}: {e}"}
            _print_phase(precision, report["phases"][precision])
        if not dry:
            torch.cuda.empty_cache()
        nproc = args.ranks or (2 if dry else torch.cuda.device_count())
        report["phases"]["torchrun"] = run_torchrun(nproc, args, tmp)
        _print_phase(f"torchrun x{nproc}", report["phases"]["torchrun"])
    try:
        report["vit"] = vit_share(args.model, args.batch_size, dry, args.peak_tflops)
    except Exception as e:
        report["vit"] = {"error": f"{type(e).__name__}: {e}"}
    vit = report["vit"]
    if vit.get("share_of_peak") is not None:
        print(f"[gpu_check] ViT forward: {vit['achieved_tflops']:.0f} TFLOP/s = {100 * vit['share_of_peak']:.0f}% "
              f"of the bf16 peak ({vit['peak_bf16_tflops']:.0f}); goal >= 40%")
    elif "achieved_tflops" in vit:
        print(f"[gpu_check] ViT forward: {vit['achieved_tflops']:.3f} TFLOP/s (no known peak for this device)")
    report["checks"] = checks_of(report)
    report["total_s"] = round(time.perf_counter() - t0, 1)
    report["status"] = "passed" if all(report["checks"].values()) else "failed"
    args.json.write_text(json.dumps(report, indent=2, default=str))
    if not dry and args.doc:
        common.write_section("gpu-check", render(report), args.doc)
    for name, ok in report["checks"].items():
        print(f"[gpu_check] {'ok  ' if ok else 'FAIL'} {name}")
    print(f"[gpu_check] {report['status']} in {report['total_s']} s; report: {args.json}")
    return 0 if report["status"] == "passed" else 1


def render(report: dict) -> str:
    def fmt(x, spec):
        return "–" if x is None else format(x, spec)

    rows = []
    for name, phase in report["phases"].items():
        if "error" in phase:
            rows.append([name, "–", "–", "error", "–", "–", "–", "–"])
            continue
        losses = phase.get("losses") or []
        mem = phase.get("peak_memory_bytes")
        rows.append([
            name, phase.get("ranks"), phase.get("global_batch"),
            f"{losses[0]:.3f} → {losses[-1]:.3f}" if losses else "–", fmt(phase.get("clips_per_s"), ".1f"),
            common.human_bytes(mem) if mem else "–", fmt(phase.get("eval", {}).get("R@1"), ".1f"),
            "–" if phase.get("host_syncs") is None else f"{phase['host_syncs']} in {phase.get('steps')} steps",
        ])
    table = common.markdown_table(["phase", "GPUs", "global batch", "loss first → last", "clips/s", "peak memory / GPU", "R@1 (train clips)", "host syncs (rank 0)"], rows)
    vit = report.get("vit", {})
    share = vit.get("share_of_peak")
    vit_line = (
        f"ViT forward (bf16, {vit.get('images')} images): {fmt(vit.get('achieved_tflops'), '.0f')} TFLOP/s"
        + (f" = {100 * share:.0f}% of the bf16 peak ({vit['peak_bf16_tflops']:.0f} TFLOP/s); goal ≥ 40%" if share is not None else "")
    )
    failed = [k for k, ok in report["checks"].items() if not ok]
    return f"""## GPU check (`benchmarks/gpu_check.py`)

Command: `{report['command']}`; GPUs: {', '.join(report.get('gpus', []))}

{common.machine_markdown(report['machine'])}

`{report['model']}`, random weights, {report['steps']} optimiser steps per phase, {report['batch_size_per_rank']}
clips per GPU, learnable in-memory data (see the script). Status: **{report['status']}**
({report['total_s']} s){'; failed: ' + ', '.join(failed) if failed else ''}.

{table}

{vit_line}.
"""


def _print_phase(name: str, phase: dict) -> None:
    if "error" in phase:
        print(f"[gpu_check] {name}: ERROR {phase['error'][:500]}")
        return
    mem = phase.get("peak_memory_bytes")
    ev = phase.get("eval", {})
    losses = phase.get("losses") or [float("nan")]
    print(
        f"[gpu_check] {name}: {phase['steps']} steps x {phase['global_batch']} clips, loss {losses[0]:.3f} -> "
        f"{losses[-1]:.3f}, {phase['clips_per_s'] or float('nan'):.1f} clips/s"
        + (f", peak {common.human_bytes(mem)}" if mem else "")
        + (f", eval R@1 {ev['R@1']:.1f}% (chance {ev['chance_R@1']:.1f}%)" if ev else "")
    )


if __name__ == "__main__":
    sys.exit(main())
