"""Linear, Conv2d and Embedding built without random init.

For the plain-torch towers (sgmn/model/vit.py, sgmn/text/bert.py) that are only ever built to be
filled with loaded weights (checked complete when loaded): drawing a default init only to
overwrite it cost ~1 s per query for a ViT-B/32 and ~0.1 s for MiniLM, and would move the seeded
random stream. Their tensors hold whatever memory held until they are filled.
"""

from torch import nn


class Linear(nn.Linear):
    def reset_parameters(self) -> None:
        pass


class Conv2d(nn.Conv2d):
    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass
