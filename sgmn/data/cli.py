"""`sgmn synth` (write a synthetic data set) and `sgmn inspect` (read a data set, print counts)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from sgmn.errors import DataError


class Preset(str, Enum):
    easy = "easy"
    default = "default"
    hard = "hard"


class OnErrorChoice(str, Enum):
    raise_ = "raise"
    skip = "skip"


def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write (must not exist or be empty)."),
    preset: Preset = typer.Option(Preset.default, "--preset", help="Named difficulty preset."),
    seed: int = typer.Option(0, "--seed", help="Same seed and options give byte-identical annotations."),
    rooms: Optional[int] = typer.Option(None, "--rooms", min=1, help="Live rooms (shops)."),
    products_per_room: Optional[int] = typer.Option(None, "--products-per-room", min=1),
    clips_per_product: Optional[int] = typer.Option(None, "--clips-per-product", min=1, help="Training clips per product."),
    test_clips_per_product: Optional[int] = typer.Option(None, "--test-clips-per-product", min=1),
    frames_per_clip: Optional[int] = typer.Option(None, "--frames-per-clip", min=1),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=32),
    distractors: Optional[float] = typer.Option(None, "--distractors", min=0.0, max=1.0),
    domain_gap: Optional[float] = typer.Option(None, "--domain-gap", min=0.0, max=1.0),
    fine_grained: Optional[float] = typer.Option(None, "--fine-grained", min=0.0, max=1.0),
    asr_informativeness: Optional[float] = typer.Option(None, "--asr-informativeness", min=0.0, max=1.0),
) -> None:
    """Write a synthetic live-commerce data set in the LPR4M layout (read it with --format lpr4m)."""
    from sgmn.data.synthetic import generate
    from sgmn.data.synthetic import preset as make_config

    config = make_config(
        preset.value, seed=seed, rooms=rooms, products_per_room=products_per_room,
        clips_per_product=clips_per_product, test_clips_per_product=test_clips_per_product,
        frames_per_clip=frames_per_clip, image_size=image_size, distractors=distractors,
        domain_gap=domain_gap, fine_grained=fine_grained, asr_informativeness=asr_informativeness,
    )
    try:
        summary = generate(out, config)
    except FileExistsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2)
    typer.echo(json.dumps(summary, indent=2))


def inspect(
    data: Path = typer.Option(..., "--data", help="Data root folder."),
    format: str = typer.Option("lpr4m", "--format", help="Layout: lpr4m, lpr750k, sgmn, movingfashion, folders."),
    on_error: OnErrorChoice = typer.Option(OnErrorChoice.raise_, "--on-error",
                                           help="raise: stop at the first bad row/file; skip: skip and count."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Read a data set and print what was found (rooms, products, clips per split, skips)."""
    from sgmn.data.readers import READERS, read_dataset

    if format not in READERS:
        typer.echo(f"error: unknown format {format!r}; choose one of {', '.join(sorted(READERS))}", err=True)
        raise typer.Exit(code=2)
    try:
        loaded = read_dataset(data, format, on_error=on_error.value)
    except (DataError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2)  # bad input is the user's to fix: one line, exit code 2
    summary = loaded.summary()
    summary["skipped"] = dict(loaded.skipped)  # always shown, {} when nothing was skipped
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        typer.echo(_table(summary))


def _table(summary: dict) -> str:
    rows: list[tuple[str, str]] = []
    for key, value in summary.items():
        if isinstance(value, dict):
            rows.append((key, "none" if not value else ""))
            rows.extend((f"  {k}", str(v)) for k, v in value.items())
        else:
            rows.append((key, str(value)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in rows)


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
    app.command("inspect")(inspect)
