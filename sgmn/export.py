"""`sgmn export`: a saved retrieval model built from a registered variant and pretrained weights,
without training (a zero-shot start: ``index``, ``query`` and ``serve`` take it as ``--checkpoint``).

A top-level module like ``demo.py``: importing ``sgmn.model`` would import torch, and the CLI
imports every command module at start (``sgmn --help`` stays fast).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def parse_model_sets(items: list[str]) -> dict[str, Any]:
    """``["model.vision.pretrained=ID", "text_weight=0"]`` -> dotted config overrides (values as JSON
    when they parse, else strings; the ``model.`` prefix of ``sgmn train --set`` is accepted)."""
    from sgmn.errors import UsageError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected key=value, e.g. model.vision.pretrained=openai/clip-vit-base-patch32")
        if key.startswith("train."):
            raise UsageError(f"--set {key}: export builds a model, it does not train (no train.* keys)")
        key = key[len("model."):] if key.startswith("model.") else key
        try:
            out[key] = json.loads(value.strip())
        except json.JSONDecodeError:
            out[key] = value.strip()
    return out


def export_command(
    model: str = typer.Option(..., "--model", help="Registered variant, e.g. clip-meanpool-vitb32 or sgmn-vitb32."),
    out: Path = typer.Option(..., "--out", help="Folder to write (config.json + model.safetensors)."),
    set_: list[str] = typer.Option(
        [], "--set", help="model.<dotted.field>=value, e.g. model.vision.pretrained=openai/clip-vit-base-patch32"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a saved model already in --out."),
) -> None:
    """Build a model from pretrained weights without training and save it (a zero-shot start).

    `vision.pretrained` (and `text.pretrained`) take a local folder / .pt file or a Hugging Face id,
    downloaded into the HF cache unless HF_HUB_OFFLINE=1. Parts that no pretrained weights cover
    (SGMN's temporal block and text projections, for instance) stay at random initialisation and
    are listed: fine-tune with `sgmn train` before relying on them.
    """
    from sgmn.errors import UsageError, exit_with, user_errors

    with user_errors():
        overrides = parse_model_sets(set_)
        from sgmn.model.registry import build_model, get_config, list_models

        if model not in list_models():
            raise UsageError(f"--model {model!r} is not a registered model; available: {', '.join(list_models())}")
        if (out / "model.safetensors").exists() and not overwrite:
            raise UsageError(f"{out} already holds a saved model: give another --out, or --overwrite")
        try:
            config = get_config(model, **overrides)
        except (ValueError, TypeError) as err:
            raise UsageError(f"--set: {err}") from err
        if not config.vision.pretrained:
            exit_with(
                f"--model {model} has no pretrained weights to start from: give "
                "--set model.vision.pretrained=<HF id, folder or OpenAI .pt> (a random model retrieves nothing)"
            )
        net = build_model(config)
        net.save_pretrained(out)
    covered = ("backbone.",)
    untrained = sorted({name.split(".")[0] for name, _ in net.named_parameters() if not name.startswith(covered)})
    typer.echo(f"wrote {out}: {config.name} with vision weights from {config.vision.pretrained}")
    if untrained:
        typer.echo(f"  not pretrained (random initialisation, train before relying on them): {', '.join(untrained)}")
    typer.echo(f"  use it: sgmn index --checkpoint {out} ... ; sgmn query --checkpoint {out} ... ; sgmn serve --checkpoint {out} ...")


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
