"""Temporal difference block (TDB, from CLIP2Video) over the frame features of a clip.

Follows the published SGMN inference computation (docs: published-checkpoint.md, "TDB at
inference"), with frame f_t (t = 0..T-1), positions pos and frame mask m:

  d_i = f_{i+1} - f_i + pos_{i+1}            i = 0..T-2
  d   = difference_transformer(d)            1 block
  d   = 2 * sigmoid(difference_norm(d)) - 1
  x   = [f_0 + pos_0 + type_1, d_0 + pos_0 + type_0, f_1 + pos_1 + type_1, ..., f_{T-1} + ...]
  out = temporal_transformer(x)[even positions] + f

Masks are per-sample key-padding masks (the published code replicates its (B, L, L) masks
head-major, which pairs heads of one sample with masks of another; that is not copied).

Which difference tokens count as real is the one choice exposed (``published_difference_mask``):
- False (default): d_i is real only when both f_i and f_{i+1} are real, so padded frames can never
  change the outputs at real frames.
- True: the published masking: keys of the difference block masked by m_{i+1}, and d_i masked by
  m_i in the temporal transformer. The difference between the last real frame and the first padded
  one then takes part in attention; this is needed to reproduce published checkpoints' scores.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from sgmn.model.transformer import Transformer

FRAME_TYPE = 1
DIFFERENCE_TYPE = 0


class TemporalDifferenceBlock(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        heads: int = 8,
        layers: int = 2,
        max_position: int = 77,
        ln_eps: float = 1e-12,
        published_difference_mask: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.max_position = max_position
        self.published_difference_mask = published_difference_mask
        self.frame_position_embeddings = nn.Embedding(max_position, embed_dim)
        self.type_position_embeddings = nn.Embedding(2, embed_dim)
        # N(0, 0.02) as the published code initialises new modules (PyTorch's N(0, 1) would be as
        # large as the frame features, and the shared type embedding a constant offset in every v)
        nn.init.normal_(self.frame_position_embeddings.weight, std=0.02)
        nn.init.normal_(self.type_position_embeddings.weight, std=0.02)
        self.difference_transformer = Transformer(embed_dim, 1, heads, ln_eps=ln_eps, dropout=dropout)
        self.difference_norm = nn.LayerNorm(embed_dim, eps=ln_eps)
        self.temporal_transformer = Transformer(embed_dim, layers, heads, ln_eps=ln_eps, dropout=dropout)

    def forward(self, frames: torch.Tensor, frame_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """frames (B, T, d) frame features (not normalised); frame_mask (B, T) bool, True = real.

        Returns (B, T, d) temporally enhanced frame features (residual added).
        """
        if frames.dim() != 3 or frames.shape[-1] != self.embed_dim:
            raise ValueError(f"frames must be (B, T, {self.embed_dim}), got {tuple(frames.shape)}")
        batch, num_frames, dim = frames.shape
        if num_frames > self.max_position:
            raise ValueError(f"{num_frames} frames exceed max_position {self.max_position}")
        if frame_mask is None:
            frame_mask = torch.ones(batch, num_frames, dtype=torch.bool, device=frames.device)
        elif frame_mask.shape != (batch, num_frames):
            raise ValueError(f"frame_mask must be ({batch}, {num_frames}), got {tuple(frame_mask.shape)}")
        frame_mask = frame_mask.to(device=frames.device, dtype=torch.bool)

        positions = self.frame_position_embeddings.weight[:num_frames].unsqueeze(0)  # (1, T, d)
        type_weight = self.type_position_embeddings.weight
        frame_tokens = frames + positions + type_weight[FRAME_TYPE]
        if num_frames == 1:
            return self.temporal_transformer(frame_tokens, frame_mask) + frames

        if self.published_difference_mask:
            difference_key_mask = frame_mask[:, 1:]
            difference_token_mask = frame_mask[:, :-1]
        else:
            difference_key_mask = difference_token_mask = frame_mask[:, 1:] & frame_mask[:, :-1]

        differences = frames[:, 1:] - frames[:, :-1] + positions[:, 1:]
        differences = self.difference_transformer(differences, difference_key_mask)
        differences = 2 * torch.sigmoid(self.difference_norm(differences)) - 1
        # a difference token sits after the frame it starts from and shares that frame's position
        difference_tokens = differences + positions[:, :-1] + type_weight[DIFFERENCE_TYPE]

        # interleave [f_0, d_0, f_1, d_1, ..., d_{T-2}, f_{T-1}]
        pairs = torch.stack([frame_tokens[:, :-1], difference_tokens], dim=2).reshape(batch, -1, dim)
        tokens = torch.cat([pairs, frame_tokens[:, -1:]], dim=1)
        pair_mask = torch.stack([frame_mask[:, :-1], difference_token_mask], dim=2).reshape(batch, -1)
        token_mask = torch.cat([pair_mask, frame_mask[:, -1:]], dim=1)

        out = self.temporal_transformer(tokens, token_mask)
        return out[:, 0::2] + frames
