"""Multi-modal hard-example mining, selective fusion and the cross encoder (SMF), training only.

From the global multimodal score matrix S (visual + lambda * text) each product takes its k
hardest clips of a DIFFERENT product (the published code only excludes the diagonal, so a second
clip of the same product could be mined as a "negative"). The title is fused into the product's
tokens and the ASR into the clip's tokens (:class:`SelectiveFusion`); a :class:`CrossEncoder`
scores the product against its positive clip and the mined negatives, and
:func:`pairwise_matching_loss` applies cross-entropy with the positive (slot 0) as target on
EVERY product row (the published code took the diagonal of a B x 4 matrix, so only 4 rows got a
loss). At inference the cross encoder may optionally re-rank a retrieval's top-K (:func:`rerank`),
which ranks products for a clip: a direction the product rows never train (their softmax is blind
to any per-product offset of the score); with ``SGMNConfig.smf_clip_rows`` each clip also classifies
its own product among its k hardest products of other ids (``rows="clip"``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .transformer import QuickGELU, ResidualAttentionBlock, key_padding_mask


class HardNegatives(NamedTuple):
    indices: torch.Tensor  # (G_products, k) long clip indices, -1 where invalid
    valid: torch.Tensor  # (G_products, k) bool, True = a real negative


@torch.no_grad()
def mine_hard_negatives(
    scores: torch.Tensor, clip_labels: torch.Tensor, product_labels: torch.Tensor, k: int = 3
) -> HardNegatives:
    """For each product, its k highest-scoring clips whose label differs from the product's.

    scores: (G_clips, G_products) multimodal score matrix S; labels: (G_clips,), (G_products,).
    Rows are sorted hardest first. When fewer than k clips of other products exist, the missing
    slots have ``valid`` False and index -1 (so misuse fails loudly instead of picking a clip of
    the same product). Mining is a discrete choice: no gradient flows through it. The clip rows'
    mining is the same call on ``scores.t()``: each clip's k hardest products of other labels.
    """
    if scores.ndim != 2 or scores.shape != (clip_labels.shape[0], product_labels.shape[0]):
        raise ValueError(
            f"scores {tuple(scores.shape)} must be (G_clips, G_products) = "
            f"({clip_labels.shape[0]}, {product_labels.shape[0]})"
        )
    by_product = scores.detach().t().float()  # (G_products, G_clips)
    same = product_labels[:, None] == clip_labels[None, :]
    by_product = by_product.masked_fill(same, float("-inf"))
    k_available = min(k, by_product.shape[1])
    top, indices = by_product.topk(k_available, dim=1)
    valid = torch.isfinite(top)
    indices = indices.masked_fill(~valid, -1)
    if k_available < k:
        pad = k - k_available
        indices = F.pad(indices, (0, pad), value=-1)
        valid = F.pad(valid, (0, pad), value=False)
    return HardNegatives(indices, valid)


def clip_token_keep(frame_mask: torch.Tensor, patch_mask: Optional[torch.Tensor], num_tokens: int) -> torch.Tensor:
    """(B, T) real frames and (B, T, N) kept patches -> (B, T*N) keep mask of the flattened clip tokens."""
    B, T = frame_mask.shape
    keep = frame_mask.bool()[:, :, None].expand(B, T, num_tokens)
    if patch_mask is not None:
        keep = keep & patch_mask.bool()
    return keep.reshape(B, T * num_tokens)


class SelectiveFusion(nn.Module):
    """TGA-style fusion of a text embedding into a token sequence.

    The text is the query of a multi-head attention over the (kept) tokens, so it selects the
    tokens it talks about; the attended summary enters the sequence through a learned per-channel
    gate as a residual on the CLS position(s): position 0 for a product image, the T frame CLS
    positions (0, N, 2N, ...) for a clip's flattened tokens. Other tokens pass through untouched.
    A sample without text (``text_mask`` False) or without any kept token is returned unchanged.
    The gate starts small so the module starts near identity while every weight gets gradient.
    """

    def __init__(self, dim: int, heads: int, gate_init: float = 0.1, ln_eps: float = 1e-5):
        super().__init__()
        self.norm_text = nn.LayerNorm(dim, eps=ln_eps)
        self.norm_tokens = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.gate = nn.Parameter(torch.full((dim,), float(gate_init)))

    def forward(
        self,
        tokens: torch.Tensor,
        text: torch.Tensor,
        text_mask: Optional[torch.Tensor] = None,
        keep: Optional[torch.Tensor] = None,
        cls_positions: Union[Sequence[int], torch.Tensor] = (0,),
    ) -> torch.Tensor:
        """tokens (B, L, d); text (B, d); text_mask (B,) True = has text; keep (B, L) True = real token."""
        B, L, d = tokens.shape
        if text.shape != (B, d):
            raise ValueError(f"text must be ({B}, {d}), got {tuple(text.shape)}")
        if keep is None:
            keep = torch.ones(B, L, dtype=torch.bool, device=tokens.device)
        if text_mask is None:
            text_mask = torch.ones(B, dtype=torch.bool, device=tokens.device)
        apply = text_mask.bool() & keep.any(dim=1)
        keys = self.norm_tokens(tokens)
        summary = self.attn(
            self.norm_text(text)[:, None], keys, keys, key_padding_mask=key_padding_mask(keep, L), need_weights=False
        )[0][:, 0]
        update = (self.gate * summary) * apply[:, None].to(summary.dtype)  # exactly 0 without text
        positions = torch.as_tensor(cls_positions, dtype=torch.long, device=tokens.device)
        # Under autocast the attention output is half precision but the gate is float32.
        update = update.to(tokens.dtype)
        return tokens.index_add(1, positions, update[:, None].expand(B, positions.numel(), d))


class CrossAttentionBlock(nn.Module):
    """Pre-LN cross-attention block: x + attn(ln_1(x), ln_kv(ctx)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, ln_eps: float = 1e-5, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps)
        self.ln_kv = nn.LayerNorm(width, eps=ln_eps)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(hidden, width))])
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``padding_mask`` (B, Lc): True = ignore this context token."""
        ctx = self.ln_kv(context)
        x = x + self.dropout(self.attn(self.ln_1(x), ctx, ctx, key_padding_mask=padding_mask, need_weights=False)[0])
        return x + self.dropout(self.mlp(self.ln_2(x)))


class CrossEncoder(nn.Module):
    """Scores a (product, clip) pair from their tokens.

    ``layers`` x [self-attention block over the product tokens, cross-attention block where the
    product tokens attend to the clip's T*N tokens], then the product CLS -> LayerNorm -> Linear
    -> scalar. The clip tokens are a set (no position embedding): the match does not depend on
    frame order.

    ``prior_weight`` scales the first-stage score S of a pair, which the loss and the re-ranker
    add to the cross encoder's output (``SGMNConfig.smf_score_prior``): the cross encoder learns
    a correction of the retrieval score. On its own it stayed at chance in joint training (issue
    9: a from-scratch backbone's tokens have cos 0.84-0.95 across clips, its scores varied by
    0.05 between candidates, and 40 steps on frozen features moved nothing).
    """

    def __init__(self, dim: int, heads: int, layers: int = 1, ln_eps: float = 1e-5, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.self_blocks = nn.ModuleList(ResidualAttentionBlock(dim, heads, ln_eps, mlp_ratio, dropout) for _ in range(layers))
        self.cross_blocks = nn.ModuleList(CrossAttentionBlock(dim, heads, ln_eps, mlp_ratio, dropout) for _ in range(layers))
        self.ln_pool = nn.LayerNorm(dim, eps=ln_eps)
        self.score = nn.Linear(dim, 1)
        self.prior_weight = nn.Parameter(torch.tensor(10.0))

    def forward(
        self,
        product_tokens: torch.Tensor,
        clip_tokens: torch.Tensor,
        clip_keep: Optional[torch.Tensor] = None,
        product_keep: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """product_tokens (P, N, d), clip_tokens (P, L, d), clip_keep (P, L) True = real token -> (P,)."""
        if product_tokens.shape[0] != clip_tokens.shape[0]:
            raise ValueError(f"{product_tokens.shape[0]} products but {clip_tokens.shape[0]} clips")
        if clip_keep is not None and clip_keep.is_cuda:  # asynchronous: no host sync on the GPU
            torch._assert_async(clip_keep.any(dim=1).all(), "a clip row has no real token (no real frame?)")
        elif clip_keep is not None and not bool(clip_keep.any(dim=1).all()):
            bad = (~clip_keep.any(dim=1)).nonzero().flatten().tolist()
            raise ValueError(f"clip rows {bad} have no real token (no real frame?)")
        clip_padding = key_padding_mask(clip_keep, clip_tokens.shape[1])
        product_padding = key_padding_mask(product_keep, product_tokens.shape[1])
        x = product_tokens
        for self_block, cross_block in zip(self.self_blocks, self.cross_blocks):
            x = cross_block(self_block(x, product_padding), clip_tokens, clip_padding)
        return self.score(self.ln_pool(x[:, 0])).squeeze(-1)


def pairwise_matching_loss(
    cross_encoder: CrossEncoder,
    product_tokens: torch.Tensor,
    clip_tokens: torch.Tensor,
    clip_keep: Optional[torch.Tensor],
    positive_index: torch.Tensor,
    negatives: torch.Tensor,
    valid: torch.Tensor,
    prior: Optional[torch.Tensor] = None,
    num_rows: Optional[Union[int, torch.Tensor]] = None,
    detach_prior: bool = True,
    rows: Literal["product", "clip"] = "product",
) -> torch.Tensor:
    """L_pair over rows of candidates: each row's positive against its k mined negatives.

    ``rows="product"`` (the published direction): row r is product r (``product_tokens`` (R, N, d),
    title already fused) against clips of ``clip_tokens`` (G, L, d) (ASR already fused, ``clip_keep``
    (G, L)): its positive clip ``positive_index[r]`` (``arange`` for a paired batch) and the clips
    ``negatives[r]``. ``rows="clip"`` (the re-ranker's direction): row r is clip r (``clip_tokens``
    (R, L, d), ``clip_keep`` (R, L)) against products of ``product_tokens`` (G, N, d): its own
    product ``positive_index[r]`` and the products ``negatives[r]``. negatives, valid (R, k) from
    :func:`mine_hard_negatives`; prior (R, 1+k) optional first-stage scores of the candidates
    (positive first), added to the cross encoder's scores times ``cross_encoder.prior_weight``;
    detached unless ``detach_prior`` is False, in which case the loss also trains whatever
    produced them.

    Logits (R, 1+k) = [score(positive), score(negatives)], invalid negatives at -inf;
    cross-entropy with target 0 on every row that has at least one valid negative, averaged over
    those rows (a row without a negative is no classification problem and would only dilute the
    mean). With no such row the result is an exact 0 attached to the graph. ``num_rows`` replaces
    the denominator (the count of rows with a negative): a rank scoring its shard of the rows of a
    global batch passes the global count, so the shards' results sum to the global mean.

    Every (row, slot) pair goes through the cross encoder, the invalid ones (an index clamped to 0)
    masked afterwards: selecting the valid pairs first would need their count on the host, a sync
    that stalls a GPU. The result is the same.
    """
    if rows not in ("product", "clip"):
        raise ValueError(f"rows must be 'product' or 'clip', got {rows!r}")
    R, k = negatives.shape
    has_negative = valid.any(dim=1)
    candidates = torch.cat([positive_index[:, None], negatives.clamp(min=0)], dim=1).reshape(-1)  # (R*(1+k),)
    scored = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
    if rows == "product":
        pair_scores = cross_encoder(product_tokens.repeat_interleave(1 + k, dim=0), clip_tokens[candidates],
                                    None if clip_keep is None else clip_keep[candidates])
    else:
        pair_scores = cross_encoder(product_tokens[candidates], clip_tokens.repeat_interleave(1 + k, dim=0),
                                    None if clip_keep is None else clip_keep.repeat_interleave(1 + k, dim=0))
    pair_scores = pair_scores.reshape(R, 1 + k)
    if prior is not None:  # invalid slots hold any value: they are masked below
        prior = prior.detach() if detach_prior else prior
        pair_scores = pair_scores + cross_encoder.prior_weight * prior.to(pair_scores.dtype)
    logits = pair_scores.float().masked_fill(~scored, float("-inf"))
    target = torch.zeros(R, dtype=torch.long, device=logits.device)
    per_row = F.cross_entropy(logits, target, reduction="none")  # 0 for a row without a negative
    per_row = torch.where(has_negative, per_row, per_row.new_zeros(()))
    if num_rows is None:
        num_rows = has_negative.sum()
    if not torch.is_tensor(num_rows):
        num_rows = torch.tensor(num_rows, device=per_row.device)
    return per_row.sum() / num_rows.clamp(min=1).to(per_row.dtype)


@torch.no_grad()
def rerank(
    cross_encoder: CrossEncoder,
    product_tokens: torch.Tensor,
    clip_tokens: torch.Tensor,
    clip_keep: Optional[torch.Tensor] = None,
    candidates: Optional[torch.Tensor] = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Cross-encoder scores of clips against candidate products (inference re-ranker).

    product_tokens (M, N, d) of the gallery; clip_tokens (B, L, d), clip_keep (B, L);
    candidates (B, K) product indices per clip (e.g. a retrieval's top-K); None = all M products.
    Returns (B, K) (or (B, M)) scores in the candidates' order; pairs run in chunks of batch_size.
    """
    B = clip_tokens.shape[0]
    if candidates is None:
        candidates = torch.arange(product_tokens.shape[0], device=clip_tokens.device).expand(B, -1)
    K = candidates.shape[1]
    clip_idx = torch.arange(B, device=clip_tokens.device)[:, None].expand(B, K).reshape(-1)
    product_idx = candidates.reshape(-1)
    out = []
    for start in range(0, clip_idx.numel(), batch_size):
        c = clip_idx[start : start + batch_size]
        p = product_idx[start : start + batch_size]
        out.append(cross_encoder(product_tokens[p], clip_tokens[c], None if clip_keep is None else clip_keep[c]))
    if not out:
        return torch.zeros(B, K, device=clip_tokens.device)
    return torch.cat(out).reshape(B, K)
