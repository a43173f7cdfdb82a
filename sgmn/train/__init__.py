"""Training: ``TrainConfig``, the optimiser/schedule of the paper's recipe, and the loop.

``from sgmn.train import train, TrainConfig`` is what ``sgmn train`` runs; ``Trainer`` trains any
model with the ``forward(batch) -> {"loss", "losses"}`` contract on any dataset.
"""

from sgmn.train.config import TrainConfig
from sgmn.train.loop import NonFiniteLossError, Trainer, TrainResult, train

__all__ = ["TrainConfig", "Trainer", "TrainResult", "NonFiniteLossError", "train"]
