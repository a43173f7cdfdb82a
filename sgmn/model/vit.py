"""The CLIP / Chinese-CLIP vision transformer in plain torch (one readable file, nanoGPT style).

Why not transformers' ``CLIPVisionModel``: importing its modeling code pulls in
``torch.distributed``, dynamo, sympy and scipy, about 3 s of every `sgmn query` before any work.
This module computes the same thing, operation for operation (the SDPA attention path of
transformers' CLIP), and its parameters carry transformers' names (``embeddings.*``,
``pre_layrnorm``, ``encoder.layers.{i}.self_attn.q_proj`` ...), so Hugging Face folders, OpenAI
``.pt`` files and saved sgmn models load unchanged. tests/test_backbone.py checks it against
transformers' CLIP and Chinese-CLIP vision models.

The attention mask is boolean, (M, 1, N, N) or anything broadcastable, True = may attend.

The module is built WITHOUT random init (its tensors hold whatever memory held): it is only ever
built to be filled, by :class:`sgmn.model.backbone.VisionBackbone`, with transformers' initial
weights (a fresh model) or with saved weights (checked complete when loaded). Drawing a default
init only to overwrite it cost ~1 s per query for a ViT-B/32.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sgmn.loaded_layers import Conv2d, Embedding, Linear


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Embeddings(nn.Module):
    """Patch convolution, a learned CLS vector in front, learned absolute positions."""

    def __init__(self, width: int, image_size: int, patch_size: int):
        super().__init__()
        self.image_size = image_size
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.patch_embedding = Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.position_embedding = Embedding((image_size // patch_size) ** 2 + 1, width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        m, _, height, width = pixels.shape
        if height != self.image_size or width != self.image_size:
            raise ValueError(f"input image size ({height}*{width}) doesn't match the model "
                             f"({self.image_size}*{self.image_size})")
        patches = self.patch_embedding(pixels.to(dtype=self.patch_embedding.weight.dtype))  # (M, width, g, g)
        patches = patches.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_embedding.expand(m, 1, -1), patches], dim=1)
        return tokens + self.position_embedding.weight.unsqueeze(0)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.head_dim = width // heads
        self.scale = self.head_dim**-0.5
        self.k_proj = Linear(width, width)
        self.v_proj = Linear(width, width)
        self.q_proj = Linear(width, width)
        self.out_proj = Linear(width, width)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        shape = (*x.shape[:-1], -1, self.head_dim)  # (M, N, heads, head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=self.scale, is_causal=False)
        y = y.transpose(1, 2).contiguous().reshape(*x.shape[:-1], -1).contiguous()
        return self.out_proj(y)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(width, hidden)
        self.activation_fn = QuickGELU()
        self.fc2 = Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, width: int, heads: int, mlp_hidden: int, eps: float):
        super().__init__()
        self.self_attn = Attention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_hidden)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, layers: list[Block]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class VisionTransformer(nn.Module):
    """embeddings -> pre_layrnorm -> encoder.layers -> post_layernorm (names as transformers')."""

    def __init__(self, width: int, layers: int, heads: int, mlp_hidden: int, image_size: int, patch_size: int,
                 eps: float = 1e-5):
        super().__init__()
        self.embeddings = Embeddings(width, image_size, patch_size)
        self.pre_layrnorm = nn.LayerNorm(width, eps=eps)  # sic: transformers' spelling
        self.encoder = Encoder([Block(width, heads, mlp_hidden, eps) for _ in range(layers)])
        self.post_layernorm = nn.LayerNorm(width, eps=eps)

    def forward(self, pixels: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(M, 3, S, S) -> (M, N, width), post-LayerNorm applied to every token."""
        x = self.pre_layrnorm(self.embeddings(pixels))
        for layer in self.encoder.layers:
            x = layer(x, mask)
        return self.post_layernorm(x)
