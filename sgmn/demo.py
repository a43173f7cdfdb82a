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
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Optional

import typer

DEMO_TRAIN = dict(epochs=10, batch_size=16, lr=1e-3, backbone_lr_factor=1.0, warmup_ratio=0.05,
                  num_workers=2, log_every=5, val_fraction=0.0)


BASELINE = "clip-meanpool"


def run_demo(out: Path, preset: str = "default", seed: int = 0, model: str = "sgmn-tiny",
             epochs: Optional[int] = None, max_steps: Optional[int] = None, baseline: Optional[str] = BASELINE) -> dict:
    from sgmn.data.readers import read_dataset
    from sgmn.data.synthetic import generate, preset as synth_preset
    from sgmn.eval.mechanism import format_mechanism
    from sgmn.eval.protocol import evaluate
    from sgmn.eval.report import write_report
    from sgmn.train.config import TrainConfig
    from sgmn.train.loop import train

    import sgmn

    out = Path(out)
    t0 = time.time()
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
    typer.echo(f"report: {report}   metrics: {out / 'eval' / 'metrics.json'}   ({time.time() - t0:.0f} s in all)")
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
    ):
        """Run the main job end to end on the built-in synthetic data and write report.html."""
        run_demo(out, preset=preset, seed=seed, model=model, epochs=epochs, max_steps=max_steps,
                 baseline=None if baseline.lower() == "none" else baseline)
