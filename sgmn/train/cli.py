"""`sgmn train`: one process, or several under ``torchrun --nproc_per_node=N -m sgmn.cli train ...``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from sgmn.data.readers import READERS
from sgmn.train.config import TrainConfig, parse_assignments

FORMATS = tuple(READERS)  # the reader registry is the one list of data layouts


def split_overrides(assignments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``--set`` assignments into (train config fields, model config dotted names).

    ``train.X`` and ``model.X`` say where a key goes; a bare key goes to the train config when it
    is one of its fields, otherwise it is an error (no guessing).
    """
    train_fields = set(TrainConfig().to_dict())
    train, model = {}, {}
    for key, value in assignments.items():
        if key.startswith("train."):
            train[key[len("train.") :]] = value
        elif key.startswith("model."):
            model[key[len("model.") :]] = value
        elif key in train_fields:
            train[key] = value
        else:
            raise typer.BadParameter(f"--set {key}=...: prefix the key with 'train.' or 'model.'", param_hint="--set")
    return train, model


def _run_dir_of(checkpoint: Path) -> Path:
    """RUN for RUN, RUN/last or RUN/epoch-NNN."""
    if checkpoint.name == "last" or checkpoint.name.startswith("epoch-") or checkpoint.name == "best":
        return checkpoint.parent
    return checkpoint


def _saved_train_config(checkpoint: Path) -> TrainConfig:
    import torch

    from sgmn.train.loop import TRAIN_STATE

    state = torch.load(checkpoint / TRAIN_STATE, map_location="cpu", weights_only=False)
    return TrainConfig.from_dict(state["train_config"], source=str(checkpoint / TRAIN_STATE))


def _check_options(data, format, model, out, config, resume, set_, explicit):
    """Options -> (checkpoint, TrainConfig, model overrides, run folder); UsageError when wrong."""
    from sgmn.errors import UsageError
    from sgmn.train.loop import resolve_checkpoint

    if format not in FORMATS:
        raise UsageError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    if not Path(data).exists():
        raise UsageError(f"--data {data}: no such folder")
    try:
        train_set, model_set = split_overrides(parse_assignments(set_))
    except (ValueError, typer.BadParameter) as e:
        raise UsageError(getattr(e, "message", None) or str(e)) from e

    checkpoint = resolve_checkpoint(resume) if resume is not None else None  # FileNotFoundError names it
    try:
        if config is not None:
            cfg = TrainConfig.from_json(config)
        elif checkpoint is not None:
            # Continue with the run's own settings; its max_steps was where it stopped, so drop it.
            cfg = _saved_train_config(checkpoint).with_overrides({"max_steps": None})
        else:
            cfg = TrainConfig()
        cfg = cfg.with_overrides({**{k: v for k, v in explicit.items() if v is not None}, **train_set})
    except ValueError as e:
        raise UsageError(str(e)) from e

    if checkpoint is None and model is None:
        raise UsageError("give --model NAME (or --resume RUN)")
    if checkpoint is not None and (model is not None or model_set):
        typer.echo("[sgmn train] --resume: the model comes from the checkpoint; --model / --set model.* ignored", err=True)
    if checkpoint is None:
        check_model_request(model, model_set)
    if out is None:
        if checkpoint is None:
            raise UsageError("give --out RUN")
        out = _run_dir_of(checkpoint)
    if checkpoint is None and (Path(out) / "log.jsonl").exists():
        raise UsageError(
            f"{out} already holds a training run (log.jsonl): continue it with --resume {out}, "
            "or train into another --out folder"
        )
    return checkpoint, cfg, model_set, out


def check_model_request(model: str, model_set: dict[str, Any]):
    """The config ``model`` + ``--set model.*`` describe (UsageError for an unknown name or key),
    with its ``pretrained`` weights found (a DataError naming the field when they are not)."""
    from sgmn.errors import UsageError
    from sgmn.hub import resolve_pretrained
    from sgmn.model.registry import get_config, list_models

    if model not in list_models():
        raise UsageError(f"--model {model!r} is not a registered model; available: {', '.join(list_models())}")
    try:
        config = get_config(model, **model_set)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--set model.*: {e}") from e
    if config.vision.pretrained:
        resolve_pretrained(config.vision.pretrained, "model.vision.pretrained")
    if config.text.pretrained and config.text.encoder != "precomputed":
        resolve_pretrained(config.text.pretrained, "model.text.pretrained")
    return config


def train_command(
    data: Path = typer.Option(..., "--data", help="Data set root folder."),
    format: str = typer.Option("lpr4m", "--format", help=f"Data layout: {', '.join(FORMATS)}."),
    model: Optional[str] = typer.Option(None, "--model", help="Registered model variant, e.g. sgmn-vitb32 or sgmn-tiny."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder to write (default with --resume: the resumed run)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Train config JSON file (TrainConfig fields)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Per-rank batch; global = this x ranks."),
    lr: Optional[float] = typer.Option(None, "--lr"),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="RUN (its last/) or RUN/epoch-NNN to continue."),
    set_: list[str] = typer.Option([], "--set", help="key=value override: train.<field> or model.<dotted.field>."),
) -> None:
    """Train a model; writes RUN/{config.json, train_config.json, log.jsonl, epoch-NNN/, last/, best/}."""
    from sgmn.errors import user_errors

    # Every mistake in the options is found here, before the data is read or any text encoded,
    # and reported as one line with exit code 2.
    with user_errors():
        checkpoint, cfg, model_set, out = _check_options(
            data, format, model, out, config, resume, set_,
            {"epochs": epochs, "max_steps": max_steps, "batch_size": batch_size, "lr": lr,
             "precision": precision, "seed": seed},
        )
        from sgmn.train.loop import train

        result = train(data, format, model or "", out, train_config=cfg, model_overrides=model_set, resume=checkpoint)
    from sgmn import distributed

    if distributed.is_main_process():
        best = f", best val R@1 {result.best_metric:.2f}" if result.best_metric is not None else ""
        typer.echo(
            f"[sgmn train] done: {result.epochs_completed} epochs, {result.step} steps"
            f"{' (stopped by --max-steps)' if result.stopped_early else ''}{best}; run folder {result.out_dir}"
        )


def pretrain_command(
    model: str = typer.Option("sgmn-tiny", "--model", help="Variant whose vision tower / text projection to pretrain."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the cache, ~/.cache/sgmn/pretrain/KEY)."),
    seed: int = typer.Option(0, "--seed"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    set_: list[str] = typer.Option([], "--set", help="key=value override of a PretrainConfig field, e.g. shops=80."),
) -> None:
    """CLIP-style image-title pretraining on synthetic shops disjoint from every benchmark room (cached)."""
    from sgmn.train.pretrain import PretrainConfig, pretrain

    try:
        overrides = parse_assignments(set_)
        overrides.update({"model": model, "seed": seed, **({"epochs": epochs} if epochs is not None else {})})
        config = PretrainConfig().with_overrides(overrides)
        from sgmn.model.registry import get_config

        get_config(model)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--set / --model")
    try:
        result = pretrain(config, out=out)
    except FileExistsError as e:
        raise typer.BadParameter(str(e), param_hint="--out")
    zs = result.info.get("zero_shot", {})
    scores = (f"; zero-shot frame->title R@1 {zs['frame_to_title_R@1']:.1f}, shop image->title "
              f"{zs['shop_image_to_title_R@1']:.1f} (chance {zs['chance_R@1']:.1f})") if zs else ""
    typer.echo(f"[sgmn pretrain] {'cached: ' if result.cached else ''}{result.path}{scores}")
    typer.echo(f"fine-tune from it: sgmn train --model {model} --set model.vision.pretrained={result.path} ...")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("pretrain")(pretrain_command)
