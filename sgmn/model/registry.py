"""Named model variants (like timm's registry), ``create_model`` and ``load_model``.

A variant is a function returning an :class:`SGMNConfig`; ``create_model(name, **overrides)``
applies overrides (dotted names such as ``**{"vision.layers": 2}`` or plain fields) and builds the
class that ``config.architecture`` names.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Union

import torch

from sgmn.errors import DataError
from sgmn.model.config import SGMNConfig, TextConfig, VisionConfig

log = logging.getLogger(__name__)

_VARIANTS: dict[str, Callable[[], SGMNConfig]] = {}


def register_variant(name: str):
    def wrap(fn: Callable[[], SGMNConfig]):
        if name in _VARIANTS:
            raise ValueError(f"model variant {name!r} is already registered")
        _VARIANTS[name] = fn
        return fn

    return wrap


def _vitb32() -> VisionConfig:
    return VisionConfig(image_size=224, patch_size=32, width=768, layers=12, heads=12)


def _tiny_vision() -> VisionConfig:
    # 64 px, 16 px patches -> a 4x4 grid (17 tokens): trains on a CPU in minutes.
    return VisionConfig(image_size=64, patch_size=16, width=96, layers=3, heads=4)


def _tiny_sizes() -> dict[str, Any]:
    return dict(
        embed_dim=64, num_frames=6, temporal_heads=4, temporal_layers=2,
        gci_heads=4, gci_frame_topk=4, cross_heads=4,
    )


@register_variant("sgmn-vitb32")
def sgmn_vitb32() -> SGMNConfig:
    """The paper's sizes: CLIP ViT-B/32 (width 768, 12 layers, 12 heads), 224 px, d = 512, T = 10."""
    return SGMNConfig(name="sgmn-vitb32", vision=_vitb32(), embed_dim=512, num_frames=10)


@register_variant("sgmn-tiny")
def sgmn_tiny() -> SGMNConfig:
    return SGMNConfig(name="sgmn-tiny", vision=_tiny_vision(), text=TextConfig(), **_tiny_sizes())


@register_variant("clip-meanpool")
def clip_meanpool() -> SGMNConfig:
    return SGMNConfig(
        name="clip-meanpool", architecture="clip-meanpool", vision=_tiny_vision(), **_tiny_sizes(),
        use_tga=False, use_tdb=False, use_gci=False, use_smf=False, use_text=False,
    )


@register_variant("rice-icl")
def rice_icl() -> SGMNConfig:
    return clip_meanpool().replace(name="rice-icl", architecture="rice-icl")


@register_variant("clip-meanpool-vitb32")
def clip_meanpool_vitb32() -> SGMNConfig:
    return clip_meanpool().replace(
        name="clip-meanpool-vitb32", embed_dim=512, num_frames=10, vision=dataclasses.asdict(_vitb32())
    )


@register_variant("rice-icl-vitb32")
def rice_icl_vitb32() -> SGMNConfig:
    return clip_meanpool_vitb32().replace(name="rice-icl-vitb32", architecture="rice-icl")


def list_models() -> list[str]:
    return sorted(_VARIANTS)


def model_class(architecture: str):
    from sgmn.model.baselines import CLIPMeanPool, RICEInstanceContrast
    from sgmn.model.sgmn import SGMN

    classes = {"sgmn": SGMN, "clip-meanpool": CLIPMeanPool, "rice-icl": RICEInstanceContrast}
    if architecture not in classes:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(classes)}")
    return classes[architecture]


def get_config(name: str, **overrides: Any) -> SGMNConfig:
    if name not in _VARIANTS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    config = _VARIANTS[name]()
    return config.replace(**overrides) if overrides else config


def build_model(config: SGMNConfig):
    """Build the model a config describes; loads ``vision.pretrained`` weights when set."""
    model = model_class(config.architecture)(config)
    if config.vision.pretrained:
        missing = model.backbone.load_pretrained(config.vision.pretrained)
        if missing:
            log.warning("vision weights from %s left %d tensors at random init: %s",
                        config.vision.pretrained, len(missing), missing[:8])
        if Path(config.vision.pretrained).is_dir():  # a `sgmn pretrain` folder also holds text heads
            from sgmn.model.pretrained import load_text_projections

            load_text_projections(model, config.vision.pretrained)
    return model


def create_model(name: Union[str, SGMNConfig], **overrides: Any):
    """A registered variant (or an explicit config) with optional overrides, e.g.
    ``create_model("sgmn-tiny", use_gci=False, **{"vision.layers": 2})``."""
    if isinstance(name, SGMNConfig):
        config = name.replace(**overrides) if overrides else name
    else:
        config = get_config(name, **overrides)
    return build_model(config)


def _saved_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def load_model(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu"):
    """Load a model from a saved folder (``config.json`` + ``model.safetensors``), a run folder
    (``best/``, else ``last/``), or a published-code ``pytorch_model.bin.<epoch>`` file."""
    from sgmn.model.base import RetrievalModel

    path = Path(path)
    if path.is_file():
        return _load_published(path, map_location)
    if not path.is_dir():
        raise DataError("no such file or folder", file=path)
    if _saved_model_dir(path):
        return RetrievalModel.from_pretrained(path, map_location=map_location)
    for sub in ("best", "last"):
        if _saved_model_dir(path / sub):
            return RetrievalModel.from_pretrained(path / sub, map_location=map_location)
    raise DataError(
        "not a saved model: expected config.json + model.safetensors here, or in best/ or last/", file=path
    )


def _load_published(path: Path, map_location):
    from sgmn.model.checkpoint import (
        import_published_checkpoint,
        published_config_from_state_dict,
        read_published_state_dict,
    )
    from sgmn.model.sgmn import SGMN

    state = read_published_state_dict(path)  # DataError naming the file when it is not one
    model = SGMN(published_config_from_state_dict(state))
    report = import_published_checkpoint(state, model)
    log.info("imported published checkpoint %s: %s", path, report.summary())
    model.import_report = report  # kept for callers that want to show what was (not) loaded
    return model.to(map_location)
