"""`sgmn demo`: the whole job end to end on the built-in synthetic data, on a CPU, in minutes.

synthesise the ``default`` preset (LPR4M layout) -> train ``sgmn-tiny`` (10 epochs) and the
``clip-meanpool`` baseline on the same data with the same budget -> evaluate both with the per-room
protocol (plus SGMN's mechanism metrics) -> print both rows and what SGMN adds -> write
``<out>/report.html`` (the comparison, mechanism metrics, per-category breakdown, loss plot with
each term explained, sample queries from several rooms with the text-guided attention overlaid,
ASR, top-5 products, hit/miss and the correct product on a miss).

The tiny backbone starts from random weights (no CLIP weights can be downloaded here), so the
demo trains it at the full learning rate (``backbone_lr_factor=1``) instead of the paper's 1e-3
factor meant for a pretrained CLIP.

Reproducibility: the demo writes ``<out>/run-info.json`` and prints one line with what its numbers
depend on and what it cost: seed, preset, torch version, torch threads, the CPU, the git commit,
wall and CPU seconds and the load average before and after. For a seed, runs give bit-identical
weights and metrics when the code (commit), torch version, CPU kind (its SIMD kernels) and the
number of torch threads are the same (reductions are split per thread, so another thread count
rounds differently); ``--threads N`` fixes the count to reproduce a quoted result on another
machine. The data-loader workers and the machine's load do not change the numbers (two processes
give identical weights and metrics: tests/test_demo.py); the wall time does depend on the load,
hence it is recorded.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

import typer

DEMO_TRAIN = dict(epochs=10, batch_size=16, lr=1e-3, backbone_lr_factor=1.0, warmup_ratio=0.05,
                  num_workers=2, log_every=5, val_fraction=0.0)


BASELINE = "clip-meanpool"


def cpu_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> Optional[str]:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_info(start: dict, metrics: dict, seed: int, preset: str, model: str) -> dict:
    """What the demo's numbers depend on (see the module docstring) and what the run cost."""
    import torch

    return {
        "preset": preset, "seed": seed, "model": model,
        "R@1": metrics.get("R@1"), "R@5": metrics.get("R@5"),
        "git": _git_commit(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpu": cpu_name(), "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "wall_s": round(time.time() - start["wall"], 1), "cpu_s": round(_cpu_seconds() - start["cpu"], 1),
        "load_average_start": start["load"], "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }


def run_demo(out: Path, preset: str = "default", seed: int = 0, model: str = "sgmn-tiny",
             epochs: Optional[int] = None, max_steps: Optional[int] = None, baseline: Optional[str] = BASELINE,
             threads: Optional[int] = None) -> dict:
    from sgmn.data.readers import read_dataset
    from sgmn.data.synthetic import generate, preset as synth_preset
    from sgmn.eval.mechanism import format_mechanism
    from sgmn.eval.protocol import evaluate
    from sgmn.eval.report import write_report
    from sgmn.train.config import TrainConfig
    from sgmn.train.loop import train

    import sgmn

    out = Path(out)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    start = {"wall": time.time(), "cpu": _cpu_seconds(), "load": [round(x, 2) for x in os.getloadavg()]}
    data_dir = out / "data"
    marker, wanted = data_dir / ".complete", json.dumps({"preset": preset, "seed": seed})
    if marker.exists() and marker.read_text() == wanted:
        typer.echo(f"[1/4] reusing the synthetic '{preset}' data (seed {seed}) in {data_dir}")
    else:
        if marker.exists():  # the demo's own data of another preset / seed: replace it
            typer.echo(f"[1/4] {data_dir} holds other synthetic data ({marker.read_text()}): replacing it")
            shutil.rmtree(data_dir)
        typer.echo(f"[1/4] synthesising the '{preset}' preset (seed {seed}) into {data_dir}")
        generate(data_dir, synth_preset(preset, seed=seed))  # refuses a non-empty folder it did not write
        marker.write_text(wanted)
    data = read_dataset(data_dir, "lpr4m")
    summary = data.summary()
    typer.echo(json.dumps(summary, indent=2))

    cfg = dict(DEMO_TRAIN, seed=seed)
    if epochs is not None:
        cfg["epochs"] = epochs
    if max_steps is not None:
        cfg["max_steps"] = max_steps
    # The model, then the baseline on the same data with the same budget and seed.
    runs = {model: out / "run"}
    if baseline and baseline != model:
        runs[baseline] = out / f"run-{baseline}"
    for name, run_dir in runs.items():
        if (run_dir / "log.jsonl").exists():  # a previous demo's run: start afresh, do not append to it
            typer.echo(f"[2/4] replacing the previous demo run in {run_dir}")
            shutil.rmtree(run_dir)
        typer.echo(f"[2/4] training {name} into {run_dir} ({cfg})")
        train(data_dir, "lpr4m", name, run_dir, TrainConfig(**cfg))

    typer.echo("[3/4] evaluating on the test split (per-room galleries, video mode, main image)")
    results = {}
    for name, run_dir in runs.items():
        trained = sgmn.load_model(run_dir)
        results[name] = evaluate(trained, data, split="test", return_attention=True, mechanism=True)
        if name == model:
            result, num_frames = results[name], trained.config.num_frames
            has_attention = getattr(trained, "tga", None) is not None
    if (out / "eval").exists():  # a previous demo's results (maybe of a baseline not trained now)
        shutil.rmtree(out / "eval")
    result.write(out / "eval")
    for name in runs:
        if name != model:
            results[name].write(out / "eval" / name)
    typer.echo(_comparison(results, model))
    if result.metrics.get("mechanism"):
        typer.echo(format_mechanism(result.metrics["mechanism"]))

    typer.echo("[4/4] writing the report")
    report = write_report(out / "report.html", data, result.metrics, result.rankings, result.attention,
                          num_frames=num_frames, log_path=runs[model] / "log.jsonl",
                          title=f"sgmn demo: {model} on the synthetic '{preset}' preset",
                          baselines={n: r.metrics for n, r in results.items() if n != model},
                          has_attention=has_attention)
    info = run_info(start, result.metrics, seed, preset, model)
    info["baselines"] = {n: {k: r.metrics.get(k) for k in ("R@1", "R@5")} for n, r in results.items() if n != model}
    (out / "run-info.json").write_text(json.dumps(info, indent=2) + "\n")
    typer.echo(f"report: {report}   metrics: {out / 'eval' / 'metrics.json'}")
    typer.echo(
        f"took {info['wall_s']:.0f} s wall, {info['cpu_s']:.0f} CPU-s on {info['cpu']} ({info['cores_usable']} cores, "
        f"{info['torch_threads']} torch threads), load average {info['load_average_start'][0]} -> "
        f"{info['load_average_end'][0]}; seed {seed}, torch {info['torch']}, git {info['git']} ({out / 'run-info.json'})"
    )
    return result.metrics


def _comparison(results: dict, model: str) -> str:
    """The metrics table of every model trained, then what ``model`` adds over each other one."""
    from sgmn.eval.metrics import DEFAULT_KS
    from sgmn.eval.protocol import format_table

    width = max(len(n) for n in results) + 2
    lines = []
    for i, (name, r) in enumerate(results.items()):
        head, row = format_table(r.metrics).splitlines()
        if i == 0:
            lines.append(f"{'model':<{width}}{head}")
        lines.append(f"{name:<{width}}{row}")
    for name, r in results.items():
        if name != model:
            gains = "   ".join(f"R@{k} {results[model].metrics[f'R@{k}'] - r.metrics[f'R@{k}']:+.2f}" for k in DEFAULT_KS)
            lines.append(f"{model} - {name}: {gains}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_command(
        out: Path = typer.Option(Path("demo"), "--out", help="Folder for data, run, evaluation and report.html"),
        preset: str = typer.Option("default", "--preset", help="Synthetic preset: easy | default | hard"),
        seed: int = typer.Option(0, "--seed"),
        model: str = typer.Option("sgmn-tiny", "--model"),
        epochs: Optional[int] = typer.Option(None, "--epochs"),
        max_steps: Optional[int] = typer.Option(None, "--max-steps"),
        baseline: str = typer.Option(BASELINE, "--baseline", help="Also train this model on the same data and budget for comparison ('none' to skip)"),
        threads: Optional[int] = typer.Option(
            None, "--threads", min=1, help="torch threads (default: torch's choice); results for a seed depend on it"
        ),
    ):
        """Run the main job end to end on the built-in synthetic data and write report.html."""
        run_demo(out, preset=preset, seed=seed, model=model, epochs=epochs, max_steps=max_steps,
                 baseline=None if baseline.lower() == "none" else baseline, threads=threads)
