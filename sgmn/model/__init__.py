"""The model: SGMN, the baselines, and the registry of named variants.

Importing this package is cheap; the classes are loaded on first access.
"""

from sgmn.model.config import LossWeights, SGMNConfig, TextConfig, VisionConfig
from sgmn.model.registry import create_model, get_config, list_models, load_model

_LAZY = {
    "SGMN": "sgmn.model.sgmn",
    "CLIPMeanPool": "sgmn.model.baselines",
    "RICEInstanceContrast": "sgmn.model.baselines",
    "RetrievalModel": "sgmn.model.base",
    "ClipEmbeddings": "sgmn.model.base",
    "ProductEmbeddings": "sgmn.model.base",
    "TextGuidedAttention": "sgmn.model.tga",
    "TextGuidedCLSBias": "sgmn.model.tga",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sgmn.model' has no attribute {name!r}")


__all__ = [
    "SGMNConfig", "VisionConfig", "TextConfig", "LossWeights",
    "create_model", "get_config", "list_models", "load_model", *_LAZY,
]
