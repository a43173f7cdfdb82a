"""Optimiser and learning-rate schedule of the paper's recipe.

Parameter groups: {backbone, new modules} x {decay, no decay}. Gradient clipping has its own
groups (:func:`clip_groups`): one per top-level module by default.
- Backbone = parameters whose name starts with ``backbone.`` (the CLIP tower); they train at
  ``lr * backbone_lr_factor`` (3e-4 x 1e-3 in the paper) so CLIP's features are only nudged.
- No decay = biases, norm gains, embeddings (positional / type / class) and any other 0-d or
  1-d parameter (e.g. a learnable logit scale): decaying them towards 0 only hurts (the
  CLIP / BERT convention the paper inherits).

Schedule (``optimizer step s``, ``W`` warm-up steps, ``T`` total steps, base lr of a group ``l``)::

    lr(s) = l * s / W                                     for s < W   (linear warm-up from 0)
    lr(s) = l * 0.5 * (1 + cos(pi * (s - W) / (T - W)))  for s >= W  (cosine to 0 at s = T)

with ``W = round(warmup_ratio * T)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sgmn.train.config import TrainConfig

BACKBONE_PREFIX = "backbone."
_NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.modules.batchnorm._BatchNorm)


def _strip_wrappers(name: str) -> str:
    # DDP and torch.compile prefix parameter names; groups are decided on the model's own names.
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters that get no weight decay."""
    names: set[str] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, _NO_DECAY_MODULES) or param.ndim < 2 or "position" in param_name or "embedding" in param_name:
                names.add(full)
    return names


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """AdamW parameter groups; each carries a ``name`` ("backbone/decay", ...) for logging."""
    if config.lr is None or config.backbone_lr_factor is None:
        raise ValueError("train config: lr / backbone_lr_factor are unset: resolve the recipe first "
                         "(TrainConfig.resolve_recipe)")
    skip_decay = no_decay_names(model)
    buckets: dict[str, list] = {}
    settings = {
        "backbone/decay": (config.lr * config.backbone_lr_factor, config.weight_decay),
        "backbone/no_decay": (config.lr * config.backbone_lr_factor, 0.0),
        "new/decay": (config.lr, config.weight_decay),
        "new/no_decay": (config.lr, 0.0),
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        own = _strip_wrappers(name)
        part = "backbone" if own.startswith(BACKBONE_PREFIX) else "new"
        decay = "no_decay" if name in skip_decay else "decay"
        buckets.setdefault(f"{part}/{decay}", []).append(param)
    groups = []
    for key, (lr, wd) in settings.items():
        if buckets.get(key):
            groups.append({"name": key, "params": buckets[key], "lr": lr, "weight_decay": wd})
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, config), lr=config.lr, betas=config.betas, eps=config.eps)


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    return int(round(warmup_ratio * total_steps))


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (formula in the module docstring)."""
    if step < warmup_steps:
        return step / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup = warmup_steps_for(total_steps, warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warmup))


def clip_groups(model: nn.Module, mode: str = "module") -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by gradient-clipping group: one per top-level module (``backbone``,
    ``fc_asr``, ``tga``, ``graph``, ...) for ``mode="module"``, a single ``"all"`` otherwise."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = _strip_wrappers(name).split(".")[0] if mode == "module" else "all"
            groups.setdefault(key, []).append(param)
    return groups


@torch.no_grad()
def clip_gradients(groups: dict[str, list[nn.Parameter]], max_norm: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip each group's gradient to ``max_norm`` on its own (no host sync).

    Returns the total pre-clip norm over all groups and each group's pre-clip norm (tensors).
    One shared norm lets the module with the largest gradient (in SGMN the text heads under the
    x100 InfoNCE) set the step of every other module; per-group norms keep each module's own scale.
    """
    norms: dict[str, torch.Tensor] = {}
    for key, params in groups.items():
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            continue
        norms[key] = torch.nn.utils.get_total_norm(grads)
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, norms[key])
    if not norms:
        return torch.zeros(()), norms
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms.values()]))
    return total, norms
