"""Text-guided attention (TGA): the ASR picks which patches of each frame count.

The published code adds one projected text vector to every token, which is attention over a single
key (weight always 1): nothing is selected. Here the text really attends: per frame, a query made
from the text embedding scores that frame's *patch* tokens, a softmax over the kept patches turns
the scores into a spatial map, and the frame feature becomes a learned convex mix of the CLS
feature and the map-weighted patch summary (rescaled to the CLS norm): f = (1 - alpha) CLS +
alpha summary, alpha = sigmoid(mix_logit), 0.5 at start. A small per-channel gate on a summary
added to CLS (this module's first design) left v unchanged (cos 0.9998 with vs without ASR after
training); a mix whose weight is a share of the feature cannot be silently negligible.

Conventions
- masks are boolean, ``True`` = keep / real;
- masked patches get attention weight exactly 0 (they are removed before the softmax);
- a sample without text (``text_mask`` False) keeps its CLS unchanged and gets an all-zero map —
  "no guidance", not a uniform guess; the same holds for a frame with no kept patch;
- ``value`` and ``out`` start as identities, so at start the summary is the attention-weighted
  mean of the (normalised) patch tokens, which live in the same projected space as CLS: a
  pretrained backbone's features are mixed with its own patch features, not with noise.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn


def drop_masked_patches(logits: torch.Tensor, patch_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., P) patch scores with the masked patches at -inf, and has_patch (..., 1).

    A frame with no kept patch would give a softmax over nothing (NaN): it keeps all its scores
    here, and the caller zeroes its map (``has_patch`` False)."""
    has_patch = patch_mask.any(dim=-1, keepdim=True)
    return logits.masked_fill(~(patch_mask | ~has_patch), float("-inf")), has_patch


class TextGuidedAttention(nn.Module):
    """Text query over patch tokens, mixed into the CLS feature.

    Args:
        dim: feature size of the tokens and of the (projected) text embedding.
        mix_init: initial share alpha of the attended summary in the frame feature, in (0, 1).
        ln_eps: LayerNorm epsilon of the query / key normalisation.
    """

    def __init__(self, dim: int, mix_init: float = 0.5, ln_eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.norm_text = nn.LayerNorm(dim, eps=ln_eps)
        self.norm_patch = nn.LayerNorm(dim, eps=ln_eps)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        if not 0.0 < mix_init < 1.0:
            raise ValueError(f"mix_init must be in (0, 1), got {mix_init}")
        self.mix_logit = nn.Parameter(torch.tensor(math.log(mix_init / (1.0 - mix_init))))
        with torch.no_grad():
            for linear in (self.value, self.out):
                linear.weight.copy_(torch.eye(dim))
                linear.bias.zero_()
        self.scale = dim**-0.5

    @property
    def mix(self) -> torch.Tensor:
        """alpha: the share of the attended summary in a guided frame feature."""
        return torch.sigmoid(self.mix_logit)

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
        logits, has_patch = drop_masked_patches(torch.einsum("bd,btpd->btp", q, k) * self.scale, patch_mask)
        attn = torch.softmax(logits, dim=-1)
        valid = has_patch & text_mask.view(B, 1, 1)
        attn = attn * valid.to(attn.dtype)

        summary = self.out(torch.einsum("btp,btpd->btd", attn, v))
        # Rescaled to the CLS norm, so that alpha is the summary's share of the feature whatever
        # the two scales are.
        # In float32: under fp16 autocast the squares of 512 features overflow, and the ratio of a
        # row without guidance (summary 0, replaced below) would be inf, and inf x 0 = NaN.
        cls_norm = cls.float().norm(dim=-1, keepdim=True)
        ratio = cls_norm / summary.float().norm(dim=-1, keepdim=True).clamp(min=1e-6)
        summary = (summary.float() * torch.where(valid, ratio, 0.0)).to(cls.dtype)
        mixed = cls + self.mix.to(cls.dtype) * (summary - cls)
        # Where there is no guidance CLS passes through exactly unchanged.
        return torch.where(valid, mixed, cls), attn


def attention_grid(attn: torch.Tensor) -> torch.Tensor:
    """Reshape a (..., P) patch attention map to (..., g, g) for display (P must be a square)."""
    P = attn.shape[-1]
    g = int(round(P**0.5))
    if g * g != P:
        raise ValueError(f"attention over {P} patches is not a square grid")
    return attn.reshape(*attn.shape[:-1], g, g)


class TextGuidedCLSBias(nn.Module):
    """TGA as an attention bias: the text's map over patches steers where CLS looks in the
    backbone's last layer, or last ``layers`` layers (``SGMNConfig.tga_mode = "attention_bias"``,
    ``tga_bias_layers``).

    The map is computed as in :class:`TextGuidedAttention`, from the tokens that enter the first
    biased layer: a query from the text scores the patch tokens, a softmax over the kept patches
    gives the map. Each biased layer's CLS query then gets an additive bias ``beta * log(P_kept * map)``
    on its patch keys: 0 for a uniform map, positive on the patches the text picks, negative
    elsewhere; ``beta`` (learned, 1 at start) sets how strongly. The frame feature is still the
    backbone's own CLS, in the same space as a shop image's CLS, but pooled from where the text
    points. (A convex mix of CLS and a patch summary put half of each frame feature in the patch
    tokens' space, which a pretrained backbone fine-tuned at a small learning rate never
    aligned with the shop images' CLS: it cost R@1, see docs/model.md.)

    Conventions as :class:`TextGuidedAttention`: a sample without text gets bias 0 (the CLS is
    exactly the unguided one) and an all-zero map; masked patches get map weight exactly 0.
    """

    def __init__(self, width: int, dim: int, strength_init: float = 1.0, ln_eps: float = 1e-5, layers: int = 1):
        super().__init__()
        self.dim = dim
        if layers < 1:
            raise ValueError(f"tga_bias_layers must be at least 1, got {layers}")
        self.layers = layers  # the backbone's last `layers` layers get the bias (see VisionBackbone.forward)
        self.norm_text = nn.LayerNorm(dim, eps=ln_eps)
        self.norm_patch = nn.LayerNorm(width, eps=ln_eps)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(width, dim)
        self.strength = nn.Parameter(torch.tensor(float(strength_init)))
        self.scale = dim**-0.5

    def text_query(self, text: torch.Tensor) -> torch.Tensor:
        """(B, d) text embedding -> (B, d) query (computed once per clip, shared by its frames)."""
        return self.query(self.norm_text(text))

    def forward(
        self,
        hidden: torch.Tensor,
        query: torch.Tensor,
        valid: torch.Tensor,
        patch_mask: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bias and map for one batch of images.

        Args:
            hidden: (M, N, width) tokens entering the last layer (CLS first).
            query: (M, d) text query per image (:meth:`text_query`).
            valid: (M,) bool, True = the image's sample has text.
            patch_mask: (M, P) bool, True = patch kept; None = all kept.

        Returns:
            bias (M, P) for the CLS query's patch keys (0 where ``valid`` is False) and the map
            (M, P): rows sum to 1 over kept patches where valid, all zeros otherwise.
        """
        M, N, _ = hidden.shape
        P = N - 1
        if patch_mask is None:
            patch_mask = torch.ones(M, P, dtype=torch.bool, device=hidden.device)
        k = self.key(self.norm_patch(hidden[:, 1:]))
        logits = torch.einsum("md,mpd->mp", query.to(k.dtype), k).float() * self.scale
        logits, has_patch = drop_masked_patches(logits, patch_mask)
        log_map = torch.log_softmax(logits, dim=-1)
        use = valid.view(M, 1) & has_patch & patch_mask
        kept = patch_mask.sum(-1, keepdim=True).clamp(min=1).float()
        # Masked patches are -inf in log_map: replaced by 0 BEFORE any arithmetic, since a where()
        # that drops strength * -inf afterwards still back-propagates 0 * inf = NaN into strength
        # (the key mask blocks those patches anyway).
        log_map = log_map.masked_fill(~use, 0.0)
        bias = torch.where(use, self.strength * (log_map + kept.log()), 0.0)
        attn = torch.where(use, log_map.exp(), 0.0)
        return bias, attn
