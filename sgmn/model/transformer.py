"""OpenAI-CLIP-style pre-LN transformer blocks.

Parameter names follow OpenAI CLIP (``attn.in_proj_weight``, ``ln_1``, ``mlp.c_fc``, ``mlp.c_proj``,
``ln_2``) so that blocks of the published SGMN code (``transformerClip``, ``frame2t_attention``)
load 1:1 by name. Masks follow the project convention: ``keep_mask`` True = real token.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the activation OpenAI CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def key_padding_mask(keep_mask: Optional[torch.Tensor], seq_len: int) -> Optional[torch.Tensor]:
    """(B, L) keep mask -> attention key-padding mask (True = ignore), or None when nothing is masked.

    A row with no kept key at all would give NaN after the softmax. Such a row is unmasked
    entirely instead, so it attends over all its keys: that is exactly what the published code's
    additive -1e6 mask amounts to on an all-masked row (the constant cancels in the softmax), and
    the outputs of such a row are padding that callers mask downstream.
    """
    if keep_mask is None:
        return None
    if keep_mask.dim() != 2 or keep_mask.shape[1] != seq_len:
        raise ValueError(f"keep_mask must be (B, {seq_len}), got {tuple(keep_mask.shape)}")
    keep = keep_mask.bool()
    keep = keep | ~keep.any(dim=1, keepdim=True)
    # On CUDA the mask is returned as is: testing it for "nothing masked" would wait for the GPU.
    if not keep.is_cuda and bool(keep.all()):
        return None
    return ~keep


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(
        self,
        width: int,
        heads: int,
        ln_eps: float = 1e-5,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        hidden = int(width * mlp_ratio)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``padding_mask``: (B, L) bool, True = ignore this key (already guarded, see key_padding_mask)."""
        h = self.ln_1(x)
        h = self.attn(h, h, h, key_padding_mask=padding_mask, need_weights=False)[0]
        x = x + self.dropout(h)
        x = x + self.dropout(self.mlp(self.ln_2(x)))
        return x


class Transformer(nn.Module):
    """A stack of ResidualAttentionBlocks over (B, L, width) with a per-sample key mask."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        ln_eps: float = 1e-5,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.width = width
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width, heads, ln_eps, mlp_ratio, dropout) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor, keep_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, L, width); keep_mask: (B, L) bool, True = real key. Returns (B, L, width)."""
        if x.dim() != 3 or x.shape[-1] != self.width:
            raise ValueError(f"expected input (B, L, {self.width}), got {tuple(x.shape)}")
        if x.shape[1] == 0:
            return x
        padding = key_padding_mask(keep_mask, x.shape[1])
        for block in self.resblocks:
            x = block(x, padding)
        return x
