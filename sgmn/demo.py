"""`sgmn demo`: the whole job end to end on the built-in synthetic data, on a CPU, in minutes.

synthesise the ``default`` preset (LPR4M layout) -> train ``sgmn-tiny`` (10 epochs) -> evaluate with the per-room protocol ->
print the metrics table -> write ``<out>/report.html`` (queries with the text-guided attention
overlaid, ASR, top-5 products, hit/miss, loss and R@k plots).

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


def run_demo(out: Path, preset: str = "default", seed: int = 0, model: str = "sgmn-tiny",
             epochs: Optional[int] = None, max_steps: Optional[int] = None) -> dict:
    from sgmn.data.readers import read_dataset
    from sgmn.data.synthetic import generate, preset as synth_preset
    from sgmn.eval.protocol import evaluate, format_table
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

    run_dir = out / "run"
    cfg = dict(DEMO_TRAIN, seed=seed)
    if epochs is not None:
        cfg["epochs"] = epochs
    if max_steps is not None:
        cfg["max_steps"] = max_steps
    if (run_dir / "log.jsonl").exists():  # a previous demo's run: start afresh, do not append to it
        typer.echo(f"[2/4] replacing the previous demo run in {run_dir}")
        shutil.rmtree(run_dir)
    typer.echo(f"[2/4] training {model} into {run_dir} ({cfg})")
    train(data_dir, "lpr4m", model, run_dir, TrainConfig(**cfg))

    typer.echo("[3/4] evaluating on the test split (per-room galleries, video mode, main image)")
    trained = sgmn.load_model(run_dir)
    result = evaluate(trained, data, split="test", return_attention=True)
    result.write(out / "eval")
    typer.echo(format_table(result.metrics))

    typer.echo("[4/4] writing the report")
    report = write_report(out / "report.html", data, result.metrics, result.rankings, result.attention,
                          num_frames=trained.config.num_frames, log_path=run_dir / "log.jsonl",
                          title=f"sgmn demo: {model} on the synthetic '{preset}' preset")
    typer.echo(f"report: {report}   metrics: {out / 'eval' / 'metrics.json'}   ({time.time() - t0:.0f} s in all)")
    return result.metrics


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_command(
        out: Path = typer.Option(Path("demo"), "--out", help="Folder for data, run, evaluation and report.html"),
        preset: str = typer.Option("default", "--preset", help="Synthetic preset: easy | default | hard"),
        seed: int = typer.Option(0, "--seed"),
        model: str = typer.Option("sgmn-tiny", "--model"),
        epochs: Optional[int] = typer.Option(None, "--epochs"),
        max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    ):
        """Run the main job end to end on the built-in synthetic data and write report.html."""
        run_demo(out, preset=preset, seed=seed, model=model, epochs=epochs, max_steps=max_steps)
