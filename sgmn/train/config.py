"""Training configuration as data.

``TrainConfig`` holds every knob of ``sgmn train``. Defaults follow the paper's recipe
(docs: /work/shared/spec/method.md "Training recipe"): AdamW, betas (0.9, 0.98), eps 1e-6,
weight decay 0.2 (not on biases, norms and embeddings), 10% linear warm-up then cosine,
10 epochs, clip 1.0 -- except the learning rates, which follow the model's starting point.

Learning-rate recipe (``recipe``, ``lr``, ``backbone_lr_factor``). The paper fine-tunes a
pretrained CLIP: lr 3e-4 for new modules and 3e-4 x 1e-3 for the backbone, so CLIP's features
are only nudged. Applied to a randomly initialised backbone that recipe leaves the backbone
frozen in practice and the model at chance, so ``recipe="auto"`` (the default) picks:

- ``"paper"``  (lr 3e-4, backbone factor 1e-3) when the vision backbone starts from pretrained
  weights (``model.vision.pretrained`` set: a CLIP checkpoint or a ``sgmn pretrain`` output);
- ``"scratch"`` (lr 1e-3, backbone factor 1.0, what ``sgmn demo`` uses) when it starts from
  random weights.

``lr`` / ``backbone_lr_factor`` left at ``None`` take the recipe's value; a value set explicitly
(``--lr``, ``--set train.backbone_lr_factor=...``, a config JSON) always wins. ``resolve_recipe``
fills them in; the run folder's ``train_config.json`` stores the resolved values and recipe.

``batch_size`` is **per rank**: the global batch seen by the batch-wide losses is
``batch_size * world_size`` (the paper's 256 = 8 GPUs x 32), and one optimiser step sees
``batch_size * world_size * grad_accum`` clips.

A config loads from a JSON file (``TrainConfig.from_json``) and takes ``key=value`` overrides on
top (``with_overrides``); values are parsed as JSON when they parse (``3e-4``, ``true``,
``[0.9, 0.98]``, ``null``) and kept as strings otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Recipe = Literal["auto", "scratch", "paper"]

# The learning rates of each recipe (see the module doc).
RECIPES: dict[str, dict[str, float]] = {
    "scratch": {"lr": 1e-3, "backbone_lr_factor": 1.0},
    "paper": {"lr": 3e-4, "backbone_lr_factor": 1e-3},
}
RECIPE_FIELDS = ("lr", "backbone_lr_factor")


@dataclass
class TrainConfig:
    # Length
    epochs: int = 10
    max_steps: Optional[int] = None  # stop after this many optimiser steps (schedule still spans `epochs`)
    batch_size: int = 32  # per rank; global batch = batch_size * world_size
    grad_accum: int = 1  # micro-batches per optimiser step

    # Optimiser (AdamW) and schedule (linear warm-up, then cosine to zero)
    # "auto": "paper" for a pretrained backbone, "scratch" for a random one (module doc).
    recipe: Recipe = "auto"
    lr: Optional[float] = None  # None = the recipe's (1e-3 scratch, 3e-4 paper)
    backbone_lr_factor: Optional[float] = None  # lr of `backbone.` params = lr * factor; None = recipe's
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.2  # never on biases, norm gains, embeddings or other 1-d params
    warmup_ratio: float = 0.1
    grad_clip: Optional[float] = 1.0  # max grad norm; None or 0 = off
    # "module": each top-level module (backbone, fc_asr, tga, graph, cross, ...) is clipped to
    # grad_clip on its own, so the large x100 text InfoNCE gradient of fc_asr / fc_title cannot
    # scale every other module's update down to nothing; "global": one norm over all (the paper).
    grad_clip_mode: Literal["module", "global"] = "module"

    # Numerics and devices
    # bf16 / fp16 autocast (fp16 with a GradScaler); "auto" = bf16 on CUDA (fp16 on GPUs without
    # bf16), fp32 on CPU (so CPU runs stay bit-identical to earlier ones).
    precision: Precision = "auto"
    device: str = "auto"  # "auto" = cuda:<local rank> when available, else cpu
    seed: int = 42
    # Bit-identical runs for a seed: torch.use_deterministic_algorithms (CPU kernels otherwise
    # split reductions across threads differently from run to run). Ops without a deterministic
    # kernel warn instead of failing. None = auto: on for CPU, off on CUDA (opt in with true).
    deterministic: Optional[bool] = None
    tf32: bool = True  # CUDA: TF32 tensor cores for the fp32 matrix products left under autocast
    num_workers: int = 2
    find_unused_parameters: bool = True  # DDP: switched-off branches leave parameters without grads
    dist_timeout_s: float = 3600.0  # process-group timeout (NCCL watchdog): a rank stuck longer aborts the job
    compile: bool = False  # torch.compile the backbone (the ViT: most of the FLOPs)
    activation_checkpointing: bool = False  # recompute the backbone's layers in backward (less memory)

    # Data
    on_error: Literal["raise", "skip"] = "raise"  # reader policy for bad records
    text_cache_dir: Optional[str] = None  # text-vector cache; default RUN/text-cache

    # Validation: the data's own split when it has one, else a held-out share of training rooms
    val_split: str = "val"
    val_fraction: float = 0.1  # of training rooms (0 = no validation, no best/)
    val_batch_size: int = 32
    val_every: int = 1  # epochs

    # Logging
    log_every: int = 10  # optimiser steps between log.jsonl rows

    def __post_init__(self):
        self.betas = tuple(self.betas)  # JSON gives a list
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, field: str, reason: str):
            if not ok:
                raise ValueError(f"train config field {field!r}: {reason}")

        need(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be >= 1, got {self.max_steps}")
        need(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        need(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        need(self.lr is None or self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        need(self.backbone_lr_factor is None or self.backbone_lr_factor >= 0, "backbone_lr_factor",
             f"must be >= 0, got {self.backbone_lr_factor}")
        need(self.recipe in ("auto", "scratch", "paper"), "recipe",
             f"must be auto, scratch or paper, got {self.recipe!r}")
        need(len(self.betas) == 2, "betas", f"must be two numbers, got {self.betas}")
        need(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        need(
            self.precision in ("auto", "fp32", "bf16", "fp16"), "precision",
            f"must be auto, fp32, bf16 or fp16, got {self.precision!r}",
        )
        need(self.dist_timeout_s > 0, "dist_timeout_s", f"must be > 0, got {self.dist_timeout_s}")
        need(0.0 <= self.val_fraction < 1.0, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        need(self.on_error in ("raise", "skip"), "on_error", f"must be raise or skip, got {self.on_error!r}")
        need(self.grad_clip_mode in ("module", "global"), "grad_clip_mode",
             f"must be module or global, got {self.grad_clip_mode!r}")
        need(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        need(self.val_every >= 1, "val_every", f"must be >= 1, got {self.val_every}")

    # ---- "auto" fields, resolved for the device the run uses ---------------------------
    def resolve_precision(self, device_type: str) -> str:
        """fp32 / bf16 / fp16 for a run on ``device_type`` ("cuda", "cpu", ...)."""
        if self.precision != "auto":
            return self.precision
        if device_type == "cuda":
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"

    def resolve_deterministic(self, device_type: str) -> bool:
        return (device_type != "cuda") if self.deterministic is None else self.deterministic

    # ---- the learning-rate recipe -------------------------------------------------------
    @property
    def is_resolved(self) -> bool:
        return self.recipe != "auto" and all(getattr(self, f) is not None for f in RECIPE_FIELDS)

    def resolve_recipe(self, pretrained_backbone: bool) -> tuple["TrainConfig", str]:
        """``(config with lr / backbone_lr_factor filled in, one line saying what was chosen)``.

        ``recipe="auto"`` becomes ``"paper"`` for a pretrained backbone and ``"scratch"``
        otherwise; fields set explicitly are kept as they are.
        """
        name = self.recipe
        if name == "auto":
            name = "paper" if pretrained_backbone else "scratch"
        values = RECIPES[name]
        filled = {f: values[f] for f in RECIPE_FIELDS if getattr(self, f) is None}
        explicit = [f for f in RECIPE_FIELDS if getattr(self, f) is not None]
        resolved = dataclasses.replace(self, recipe=name, **filled)
        why = {
            "auto": "the vision backbone starts from pretrained weights" if pretrained_backbone
            else "the vision backbone starts from random weights",
        }.get(self.recipe, "set explicitly")
        line = (f"recipe {name!r} ({why}): lr {resolved.lr:g}, backbone_lr_factor {resolved.backbone_lr_factor:g}"
                + (f"; kept the explicit {', '.join(explicit)}" if explicit else ""))
        return resolved, line

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "train config") -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown train config fields {unknown}; known: {sorted(known)}")
        return cls(**{k: _coerce(k, v, source) for k, v in d.items()})

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "TrainConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a train config must be a JSON object, got {type(d).__name__}")
        return cls.from_dict(d, source=str(path))

    def save_json(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def with_overrides(self, overrides: dict[str, Any]) -> "TrainConfig":
        """Copy with fields replaced; string values are parsed (see :func:`parse_value`)."""
        d = self.to_dict()
        for key, value in overrides.items():
            if key not in d:
                raise ValueError(f"unknown train config field {key!r}; known: {sorted(d)}")
            d[key] = parse_value(value) if isinstance(value, str) else value
        return TrainConfig.from_dict(d)


def starts_pretrained(model: Any) -> bool:
    """Whether a model's vision backbone was loaded from pretrained weights (``vision.pretrained``)."""
    vision = getattr(getattr(model, "config", None), "vision", None)
    return bool(getattr(vision, "pretrained", None))


def parse_value(text: str) -> Any:
    """``"2"`` -> 2, ``"3e-4"`` -> 0.0003, ``"true"`` -> True, ``"null"`` -> None, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "model.vision.layers=2"]`` -> ``{"train.lr": 1e-4, "model.vision.layers": 2}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected key=value, e.g. train.grad_accum=2 or model.vision.layers=2")
        out[key.strip()] = parse_value(value.strip())
    return out


_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check a value against the field's annotation; ints are accepted where floats are expected."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise ValueError(f"{source}: field {name!r} cannot be null")
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    origin = typing.get_origin(base)
    if origin is Literal:
        if value not in typing.get_args(base):
            raise ValueError(f"{source}: field {name!r} must be one of {typing.get_args(base)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) for v in value):
            raise ValueError(f"{source}: field {name!r} must be a list of numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if base is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{source}: field {name!r} must be true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{source}: field {name!r} must be an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{source}: field {name!r} must be a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ValueError(f"{source}: field {name!r} must be a string, got {value!r}")
        return value
    return value
