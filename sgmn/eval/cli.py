"""`sgmn eval`: the per-room protocol on a data set, writing metrics.json and rankings.json."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        data: Path = typer.Option(..., "--data", help="Data root."),
        format: str = typer.Option("lpr4m", "--format", help="lpr4m | lpr750k | sgmn | movingfashion | folders"),
        checkpoint: Path = typer.Option(..., "--checkpoint", help="Run folder, saved model folder or published .bin"),
        out: Path = typer.Option(..., "--out", help="Output folder for metrics.json and rankings.json"),
        split: str = typer.Option("test", "--split"),
        mode: str = typer.Option("video", "--mode", help="video: one prediction per clip; frame: per frame, causal window"),
        gallery: str = typer.Option("main", "--gallery", help="main: one image per product; all: best image counts"),
        batch_size: int = typer.Option(16, "--batch-size"),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if available)"),
        num_workers: int = typer.Option(0, "--num-workers"),
        on_error: str = typer.Option("raise", "--on-error", help="raise | skip (unreadable queries count as misses)"),
        innersource: bool = typer.Option(False, "--innersource", help="MovingFashion: rank only against products of the query's own source group (default: allsource)"),
        mechanism: bool = typer.Option(True, "--mechanism/--no-mechanism", help="Also measure TGA influence / pointing and SMF accuracy (metrics.json 'mechanism')"),
        mechanism_queries: int = typer.Option(256, "--mechanism-queries", min=1, help="At most this many queries for the mechanism metrics"),
        text_weight: Optional[float] = typer.Option(None, "--text-weight", help="Rank by v·p + λ a·t with this λ instead of the checkpoint's (to choose λ on your validation split)"),
    ):
        """Evaluate a checkpoint with the per-room protocol (R@1/3/5/10, ranks, breakdowns).

        Under torchrun (WORLD_SIZE > 1) the queries and the gallery are split across the ranks and
        the merged result equals one process's; rank 0 writes the files."""
        from sgmn.data.readers import READERS
        from sgmn.errors import exit_with, user_errors

        # Checked before the model and the data are loaded, naming the option at fault.
        for option, value, allowed in (("--format", format, tuple(READERS)), ("--mode", mode, ("video", "frame")),
                                       ("--gallery", gallery, ("main", "all")), ("--on-error", on_error, ("raise", "skip"))):
            if value not in allowed:
                exit_with(f"{option} {value!r} is not one of {', '.join(allowed)}")
        if text_weight is not None and not (math.isfinite(text_weight) and text_weight >= 0):
            exit_with(f"--text-weight {text_weight}: must be a finite number ≥ 0")
        for option, path in (("--data", data), ("--checkpoint", checkpoint)):
            if not path.exists():
                exit_with(f"{option} {path}: no such file or folder")

        import torch

        import sgmn
        from sgmn.data.readers import read_dataset
        from sgmn.eval.mechanism import format_mechanism
        from sgmn.eval.protocol import evaluate, format_table
        from sgmn.distributed import cleanup_distributed, local_rank, setup_distributed

        distributed = setup_distributed()
        try:
            with user_errors():  # a wrong checkpoint or bad data: one line, exit code 2
                dev = device or (f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu")
                model = sgmn.load_model(checkpoint).to(dev)
                if text_weight is not None:
                    if not getattr(model, "uses_text", False):
                        exit_with(f"--text-weight: {checkpoint} has no text branch, so its score has no text term")
                    model.config.text_weight = text_weight  # the score reads it at every call
                dataset = read_dataset(data, format, on_error=on_error)
                result = evaluate(model, dataset, split=split, mode=mode, gallery=gallery, batch_size=batch_size,
                                  device=dev, num_workers=num_workers, on_error=on_error, same_group_only=innersource,
                                  mechanism=mechanism, mechanism_max_queries=mechanism_queries, distributed=distributed)
            import torch.distributed as dist

            if distributed and dist.get_rank() != 0:
                return  # every rank holds the same merged result: rank 0 writes it
            result.metrics["model"]["checkpoint"] = str(checkpoint)
            if text_weight is not None:
                result.metrics["model"]["text_weight"] = text_weight
            if distributed:
                result.metrics["protocol"]["ranks"] = dist.get_world_size()
            if dataset.skipped:
                result.metrics["data"]["skipped_while_reading"] = dict(dataset.skipped)
            result.write(out)
            typer.echo(format_table(result.metrics))
            if result.metrics.get("mechanism"):
                typer.echo(format_mechanism(result.metrics["mechanism"]))
            typer.echo(f"wrote {out / 'metrics.json'} and {out / 'rankings.json'}")
            if dataset.skipped:
                typer.echo(f"skipped while reading: {json.dumps(dict(dataset.skipped))}")
        finally:
            if distributed:
                cleanup_distributed()
