"""Training: ``TrainConfig``, the optimiser/schedule of the paper's recipe, and the loop.

``from sgmn.train import train, TrainConfig`` is what ``sgmn train`` runs; ``Trainer`` trains any
model with the ``forward(batch) -> {"loss", "losses"}`` contract on any dataset; ``sgmn.train.pretrain``
(``sgmn pretrain``) makes the image-title pretrained start. Names are
imported on first use, so the command line starts without loading torch.
"""

import importlib

_MODULE_OF = {
    "TrainConfig": "sgmn.train.config",
    "NonFiniteLossError": "sgmn.train.loop",
    "Trainer": "sgmn.train.loop",
    "TrainResult": "sgmn.train.loop",
    "train": "sgmn.train.loop",
    "PretrainConfig": "sgmn.train.pretrain",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'sgmn.train' has no attribute {name!r}")
