"""Text-guided attention (TGA): the ASR picks which patches of each frame count.

The published code adds one projected text vector to every token, which is attention over a single
key (weight always 1): nothing is selected. Here the text really attends: per frame, a query made
from the text embedding scores that frame's *patch* tokens, a softmax over the kept patches turns
the scores into a spatial map, and the map-weighted patch summary is added to the frame's CLS
feature through a learned per-channel gate (LayerScale-style).

Conventions
- masks are boolean, ``True`` = keep / real;
- masked patches get attention weight exactly 0 (they are removed before the softmax);
- a sample without text (``text_mask`` False) keeps its CLS unchanged and gets an all-zero map —
  "no guidance", not a uniform guess; the same holds for a frame with no kept patch;
- the gate starts small (``gate_init``), so the module starts near identity while every weight
  still receives gradient from the first step (a zero gate would starve the projections).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


class TextGuidedAttention(nn.Module):
    """Text query over patch tokens, gated into the CLS feature.

    Args:
        dim: feature size of the tokens and of the (projected) text embedding.
        gate_init: initial value of the per-channel gate on the attended summary.
        ln_eps: LayerNorm epsilon of the query / key normalisation.
    """

    def __init__(self, dim: int, gate_init: float = 0.1, ln_eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.norm_text = nn.LayerNorm(dim, eps=ln_eps)
        self.norm_patch = nn.LayerNorm(dim, eps=ln_eps)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.full((dim,), float(gate_init)))
        self.scale = dim**-0.5

    def forward(
        self,
        cls: torch.Tensor,
        patches: torch.Tensor,
        text: torch.Tensor,
        patch_mask: Optional[torch.Tensor] = None,
        text_mask: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Guide each frame's CLS by the text.

        Args:
            cls: (B, T, d) frame CLS features.
            patches: (B, T, P, d) patch tokens (CLS excluded).
            text: (B, d) text embedding (e.g. ``fc_asr(asr)``), one query per sample.
            patch_mask: (B, T, P) bool, True = patch kept; None = all kept.
            text_mask: (B,) bool, True = the sample has text; None = all have text.

        Returns:
            new_cls (B, T, d) and attention (B, T, P): rows sum to 1 over kept patches where the
            sample has text and the frame has a kept patch, all zeros otherwise.
        """
        B, T, P, d = patches.shape
        if cls.shape != (B, T, d) or text.shape != (B, d):
            raise ValueError(
                f"TextGuidedAttention: shapes do not agree: cls {tuple(cls.shape)}, "
                f"patches {tuple(patches.shape)}, text {tuple(text.shape)}"
            )
        if patch_mask is None:
            patch_mask = torch.ones(B, T, P, dtype=torch.bool, device=patches.device)
        if text_mask is None:
            text_mask = torch.ones(B, dtype=torch.bool, device=patches.device)

        q = self.query(self.norm_text(text))  # (B, d)
        normed = self.norm_patch(patches)
        k = self.key(normed)  # (B, T, P, d)
        v = self.value(normed)
        logits = torch.einsum("bd,btpd->btp", q, k) * self.scale

        # A frame with no kept patch would give softmax over nothing (NaN): give it a dummy all-keep
        # mask for the softmax and zero its map afterwards.
        has_patch = patch_mask.any(dim=-1, keepdim=True)  # (B, T, 1)
        safe_mask = patch_mask | ~has_patch
        logits = logits.masked_fill(~safe_mask, float("-inf"))
        attn = torch.softmax(logits, dim=-1)
        valid = has_patch & text_mask.view(B, 1, 1)
        attn = attn * valid.to(attn.dtype)

        summary = torch.einsum("btp,btpd->btd", attn, v)
        update = self.gate * self.out(summary)
        # Where there is no guidance the update is exactly zero: CLS passes through unchanged.
        update = update * valid.to(update.dtype)
        return cls + update, attn


def attention_grid(attn: torch.Tensor) -> torch.Tensor:
    """Reshape a (..., P) patch attention map to (..., g, g) for display (P must be a square)."""
    P = attn.shape[-1]
    g = int(round(P**0.5))
    if g * g != P:
        raise ValueError(f"attention over {P} patches is not a square grid")
    return attn.reshape(*attn.shape[:-1], g, g)
