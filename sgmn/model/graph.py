"""Graph-based cross-domain interaction (GCI), training only.

The G clips and G products of the global batch become the 2G nodes of one graph:

* intra-domain edges join each node to its top ``gci_topk_ratio`` most similar nodes OF ITS OWN
  DOMAIN (clip-clip, product-product), weighted exp(-||x - y|| / sigma). The published code picks
  these neighbours with the cross-domain (clip-product) similarities; ``gci_intra_cross_domain_bug``
  reproduces that for comparison. As published, the choice of neighbours carries no gradient but
  the weights do (L_gnn also shapes v and p through them);
* inter-domain edges join each clip to its top ``gci_topk_ratio`` products and each product to
  its top clips by the mean frame-level match, as published (``gci_inter_all_pairs``: every pair);
  they carry a relevance learned from FRAME-LEVEL matching (:func:`frame_level_matching`) by a
  small MLP per direction over the top-K scores, plus their mean as a residual (published). The
  frame-level matching runs on DETACHED features, as published: it only steers the graph and
  L_reg, and its gradient does not reach the encoders;
* one graph-transformer layer attends over the nodes with the edge values as an additive attention
  bias and -inf where there is no edge, so a non-edge gets attention weight exactly 0. Self-loops
  are always edges, so no row is all -inf.

Two ablations, off as published, separate what the graph passes between nodes from what its layer
learns: ``gci_self_loops_only`` keeps the self-loops alone (the layer then maps each node on its own),
and ``gci_layer = "mean"`` replaces the learned layer by a fixed edge-weighted mean over neighbours.

The refined, re-normalised embeddings ṽ, p̃ feed L_gnn; the relevance is regularised towards the
detached exp(-cdist(v, p)) by L_reg (:func:`sgmn.model.losses.relation_kl`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .config import SGMNConfig
from .losses import bidirectional_triplet, full_precision, relation_kl

Direction = Literal["clip", "product"]


def _l2_normalise_over(x: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    # In float32: under fp16 autocast eps = 1e-8 rounds to 0 and squares of small similarities
    # underflow, so padded rows would give 0/0 = NaN in the backward pass.
    x = x.float()
    return x / x.norm(dim=dim, keepdim=True).clamp(min=eps)


def _topk_with_mean(values: torch.Tensor, keep: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k of the kept entries along the last axis, zero-padded to k, followed by their mean.

    values, keep: (..., L). Entries with keep False are never selected; when fewer than k entries
    are kept the missing slots are 0 and the mean covers the real values only (0 if none).
    """
    k_available = min(k, values.shape[-1])
    top, _ = values.masked_fill(~keep, float("-inf")).topk(k_available, dim=-1)
    real = torch.isfinite(top)
    top = top.masked_fill(~real, 0.0)
    count = real.sum(dim=-1, keepdim=True)
    mean = top.sum(dim=-1, keepdim=True) / count.clamp(min=1).to(top.dtype)
    if k_available < k:
        top = F.pad(top, (0, k - k_available))
    return torch.cat([top, mean], dim=-1)


# Elements of one (clips, products, T, N) similarity block: frame-level matching runs over chunks
# of clips of at most this size, so its memory does not grow with G x G (see frame_level_matching).
MATCHING_BLOCK_ELEMENTS = 2**24


def frame_level_matching(
    frame_tokens: torch.Tensor,
    frame_mask: Optional[torch.Tensor],
    product_tokens: torch.Tensor,
    topk: int,
    direction: Direction = "clip",
    product_mask: Optional[torch.Tensor] = None,
    block_elements: Optional[int] = None,
) -> torch.Tensor:
    """Chunked :func:`frame_level_matching_block` (same result, see there): the clips go through in
    chunks of at most ``block_elements`` (default :data:`MATCHING_BLOCK_ELEMENTS`) similarities,
    each chunk under activation checkpointing when gradients are needed, so the (G, G', T, N)
    intermediates never exist at once, in the forward or the backward pass: the memory is
    that of one chunk plus the (G, G', K+1) profiles."""
    G, T, _ = frame_tokens.shape
    Gp, N, _ = product_tokens.shape
    per_clip = max(1, Gp * T * N)
    chunk = max(1, (block_elements or MATCHING_BLOCK_ELEMENTS) // per_clip)
    if chunk >= G:
        return frame_level_matching_block(frame_tokens, frame_mask, product_tokens, topk, direction, product_mask)
    grad = torch.is_grad_enabled() and (frame_tokens.requires_grad or product_tokens.requires_grad)
    parts = []
    for start in range(0, G, chunk):
        rows = slice(start, start + chunk)
        args = (frame_tokens[rows], None if frame_mask is None else frame_mask[rows], product_tokens, topk, direction, product_mask)
        if grad:
            parts.append(torch.utils.checkpoint.checkpoint(frame_level_matching_block, *args, use_reentrant=False))
        else:
            parts.append(frame_level_matching_block(*args))
    return torch.cat(parts, dim=0)


def frame_level_matching_block(
    frame_tokens: torch.Tensor,
    frame_mask: Optional[torch.Tensor],
    product_tokens: torch.Tensor,
    topk: int,
    direction: Direction = "clip",
    product_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """SCAN-style frame-level match profile of every clip against every product: (G, G', K+1).

    frame_tokens (G, T, d) frame features; frame_mask (G, T) True = real frame; product_tokens
    (G', N, d) ALL of a product's tokens (CLS and patches: the published code used the CLS copied
    T times, which makes the product side constant); product_mask (G', N) optional.

    For each clip-product pair the T x N cosine similarities are passed through LeakyReLU(0.1)
    and L2-normalised across the query axis (as SCAN does), then:

    * ``direction="clip"``: queries are the frames; for each real frame the max over the
      product's tokens, then the top-K frames;
    * ``direction="product"``: queries are the product's tokens; for each token the max over the
      clip's real frames, then the top-K tokens.

    The profile is the top-K values (zero-padded when fewer than K are real) plus their mean.
    Padded frames are zeroed before anything else, so their content cannot change the result.
    Everything is an einsum over d: (G, G', T, N) is materialised, never (G, G', T, N, d).
    """
    G, T, _ = frame_tokens.shape
    Gp, N, _ = product_tokens.shape
    if frame_mask is None:
        frame_mask = torch.ones(G, T, dtype=torch.bool, device=frame_tokens.device)
    if product_mask is None:
        product_mask = torch.ones(Gp, N, dtype=torch.bool, device=product_tokens.device)
    frame_mask, product_mask = frame_mask.bool(), product_mask.bool()
    # where() rather than a product with the mask: padding may hold anything, even NaN.
    frames = F.normalize(torch.where(frame_mask[..., None], frame_tokens, 0.0), dim=-1)
    products = F.normalize(torch.where(product_mask[..., None], product_tokens, 0.0), dim=-1)
    sim = F.leaky_relu(torch.einsum("gtd,hnd->ghtn", frames, products), negative_slope=0.1)
    keep = frame_mask[:, None, :, None] & product_mask[None, :, None, :]  # (G, 1|G', T, N)
    sim = sim * keep
    if direction == "clip":
        sim = _l2_normalise_over(sim, dim=2)  # across frames (the queries)
        per_frame = sim.masked_fill(~keep, float("-inf")).amax(dim=3)  # (G, G', T)
        per_frame = per_frame.masked_fill(~frame_mask[:, None, :], 0.0)
        return _topk_with_mean(per_frame, frame_mask[:, None, :].expand_as(per_frame), topk)
    if direction == "product":
        sim = _l2_normalise_over(sim, dim=3)  # across product tokens (the queries)
        per_token = sim.masked_fill(~keep, float("-inf")).amax(dim=2)  # (G, G', N)
        token_keep = (product_mask[None, :, :] & frame_mask.any(dim=1)[:, None, None]).expand_as(per_token)
        per_token = per_token.masked_fill(~token_keep, 0.0)
        return _topk_with_mean(per_token, token_keep, topk)
    raise ValueError(f"direction must be 'clip' or 'product', got {direction!r}")


def intra_domain_edges(
    x: torch.Tensor, ratio: float, sigma: float, reference: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges among the G nodes of one domain: (edges bool (G, G), weights (G, G)).

    Row i is joined to its ``max(1, int(ratio * G))`` nearest nodes (itself included, being at
    distance 0) plus a self-loop; the weight is exp(-||x_i - x_j|| / sigma). ``reference`` replaces
    the distances used for the choice of neighbours with ones to another set of nodes (the
    published code's cross-domain similarities); edges and weights still join nodes of this
    domain. The choice is discrete (no gradient); the weights keep their gradient, as published.
    """
    G = x.shape[0]
    with torch.no_grad():
        choice = torch.cdist(x, x if reference is None else reference)
        k = max(1, min(G, int(ratio * G)))
        nearest = choice.topk(k, dim=1, largest=False).indices
        edges = torch.zeros(G, G, dtype=torch.bool, device=x.device)
        edges.scatter_(1, nearest, True)
        edges |= torch.eye(G, dtype=torch.bool, device=x.device)
    return edges, torch.exp(-_cdist(x, x) / sigma)


@full_precision
def _cdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances with a finite gradient at 0 (that of a plain sqrt is inf there).
    In float32 with autocast off: the clamp at 1e-12 is 0 in fp16, where sqrt's gradient is inf."""
    squared = (x.pow(2).sum(-1)[:, None] + y.pow(2).sum(-1)[None, :] - 2 * x @ y.t()).clamp(min=1e-12)
    return squared.sqrt()


def top_ratio_edges(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """(R, C) bool: each row's top ``max(1, int(ratio * C))`` columns by ``scores`` (ties kept)."""
    k = max(1, min(scores.shape[1], int(ratio * scores.shape[1])))
    kth = scores.topk(k, dim=1).values[:, -1:]
    return scores >= kth


class GraphTransformerLayer(nn.Module):
    """Post-LN transformer layer (as nn.TransformerEncoderLayer, same parameter names) that also
    returns its per-head attention weights."""

    def __init__(self, dim: int, heads: int, feedforward: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, feedforward)
        self.linear2 = nn.Linear(feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, detach_messages: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x (1, L, d); bias (L, L) additive float mask (-inf = no edge). Returns x and (heads, L, L).
        ``detach_messages``: keys and values carry no gradient (the residual and the query still do)."""
        kv = x.detach() if detach_messages else x
        h, weights = self.self_attn(x, kv, kv, attn_mask=bias, need_weights=True, average_attn_weights=False)
        x = self.norm1(x + self.dropout(h))
        x = self.norm2(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))
        return x, weights[0]


@dataclass
class GraphOutput:
    v: torch.Tensor  # (G, d) input clip embeddings
    p: torch.Tensor  # (G, d) input product embeddings
    v_tilde: torch.Tensor  # (G, d) refined, L2-normalised
    p_tilde: torch.Tensor  # (G, d)
    relevance: torch.Tensor  # (G, G) clip -> product relevance logits (row = clip)
    relevance_reverse: torch.Tensor  # (G, G) product -> clip relevance, same clip x product orientation
    edges: torch.Tensor  # (2G, 2G) bool adjacency over [clips; products], row = attending node
    attention: torch.Tensor  # (heads, 2G, 2G) attention weights of the last graph layer (1 head for "mean")


def _relevance_mlp(in_features: int, dropout: float) -> nn.Sequential:
    # Linear / act / dropout / Linear: indices 0 and 3 match the published mlp_t2i / mlp_i2t.
    return nn.Sequential(
        nn.Linear(in_features, in_features), nn.ReLU(), nn.Dropout(dropout), nn.Linear(in_features, 1)
    )


def _relevance(mlp: nn.Module, profile: torch.Tensor) -> torch.Tensor:
    """MLP over the top-K scores of a profile (..., K+1), plus their mean as a residual (published)."""
    return mlp(profile[..., :-1]).squeeze(-1) + profile[..., -1]


class CrossDomainGraph(nn.Module):
    """GCI over the global batch; see the module docstring. Uses the ``gci_*`` / ``triplet_*``
    fields of :class:`SGMNConfig`."""

    def __init__(self, config: SGMNConfig):
        super().__init__()
        self.config = config
        d, k = config.embed_dim, config.gci_frame_topk
        if d % config.gci_heads != 0:
            raise ValueError(f"embed_dim {d} is not divisible by gci_heads {config.gci_heads}")
        self.relevance_clip_to_product = _relevance_mlp(k, config.dropout)
        self.relevance_product_to_clip = _relevance_mlp(k, config.dropout)
        if config.gci_layer not in ("transformer", "mean"):
            raise ValueError(f"unknown gci_layer {config.gci_layer!r} (expected 'transformer' or 'mean')")
        if config.gci_triplets not in ("published", "refined"):
            raise ValueError(f"unknown gci_triplets {config.gci_triplets!r} (expected 'published' or 'refined')")
        # With gci_layer "mean" the propagation has no weights of its own (see forward).
        learned = config.gci_layer == "transformer"
        self.layers = nn.ModuleList(
            GraphTransformerLayer(d, config.gci_heads, feedforward=d, dropout=config.dropout)
            for _ in range(config.gci_layers if learned else 0)
        )

    def relevances(
        self,
        frame_tokens: torch.Tensor,
        frame_mask: Optional[torch.Tensor],
        product_tokens: torch.Tensor,
        product_mask: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(clip -> product, product -> clip) relevance logits, both (G_clips, G_products)."""
        return self.relevances_and_means(frame_tokens, frame_mask, product_tokens, product_mask)[:2]

    def relevances_and_means(self, frame_tokens, frame_mask, product_tokens, product_mask=None):
        """Relevances as :meth:`relevances`, plus the mean frame-level match of each direction."""
        k = self.config.gci_frame_topk
        # Detached as in the published code: frame-level matching steers the graph, not the encoders.
        frame_tokens, product_tokens = frame_tokens.detach(), product_tokens.detach()
        clip_profile = frame_level_matching(frame_tokens, frame_mask, product_tokens, k, "clip", product_mask)
        product_profile = frame_level_matching(frame_tokens, frame_mask, product_tokens, k, "product", product_mask)
        return (
            _relevance(self.relevance_clip_to_product, clip_profile),
            _relevance(self.relevance_product_to_clip, product_profile),
            clip_profile[..., -1],
            product_profile[..., -1],
        )

    def adjacency(
        self, v: torch.Tensor, p: torch.Tensor, relevance: torch.Tensor, relevance_reverse: torch.Tensor,
        match_mean: Optional[torch.Tensor] = None, match_mean_reverse: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(edges bool (2G, 2G), additive attention bias (2G, 2G)) over the nodes [clips; products].

        ``match_mean`` / ``match_mean_reverse`` (G_clips, G_products): the mean frame-level match of
        each direction; a clip keeps its top ``gci_topk_ratio`` products by ``match_mean``, a product
        its top clips by ``match_mean_reverse``. Without them (or with ``gci_inter_all_pairs``)
        every clip-product pair is an edge.
        """
        cfg = self.config
        bug = cfg.gci_intra_cross_domain_bug
        if cfg.gci_detach_messages:
            v, p = v.detach(), p.detach()
        clip_edges, clip_w = intra_domain_edges(v, cfg.gci_topk_ratio, cfg.gci_sigma, p if bug else None)
        prod_edges, prod_w = intra_domain_edges(p, cfg.gci_topk_ratio, cfg.gci_sigma, v if bug else None)
        if cfg.gci_inter_all_pairs or match_mean is None or match_mean_reverse is None:
            inter = inter_reverse = torch.ones_like(relevance, dtype=torch.bool)
        else:
            inter = top_ratio_edges(match_mean.detach(), cfg.gci_topk_ratio)
            inter_reverse = top_ratio_edges(match_mean_reverse.detach().t(), cfg.gci_topk_ratio).t()
        edges = torch.cat(
            [torch.cat([clip_edges, inter], dim=1), torch.cat([inter_reverse.t(), prod_edges], dim=1)], dim=0
        )
        if cfg.gci_self_loops_only:
            edges = torch.eye(edges.shape[0], dtype=torch.bool, device=edges.device)
        weights = torch.cat(
            [torch.cat([clip_w, relevance], dim=1), torch.cat([relevance_reverse.t(), prod_w], dim=1)], dim=0
        )
        return edges, weights.masked_fill(~edges, float("-inf"))

    def forward(
        self,
        v: torch.Tensor,
        p: torch.Tensor,
        frame_tokens: torch.Tensor,
        frame_mask: Optional[torch.Tensor],
        product_tokens: torch.Tensor,
        product_mask: Optional[torch.Tensor] = None,
        relevances: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> GraphOutput:
        """v, p (G, d) L2-normalised clip / product embeddings of the global batch (row i of v and
        p are a training pair); frame_tokens (G, T, d), frame_mask (G, T); product_tokens (G, N, d).
        ``relevances``: the output of :meth:`relevances_and_means` when the caller computed it already
        (under DDP each rank computes its own clips' rows and all-gathers them); frame_tokens is then
        unused."""
        if v.shape != p.shape or v.ndim != 2:
            raise ValueError(f"v and p must both be (G, d), got {tuple(v.shape)} and {tuple(p.shape)}")
        if relevances is None:
            relevances = self.relevances_and_means(frame_tokens, frame_mask, product_tokens, product_mask)
        relevance, relevance_reverse, mean, mean_reverse = relevances
        edges, bias = self.adjacency(v, p, relevance, relevance_reverse, mean, mean_reverse)
        x = torch.cat([v, p], dim=0)[None]
        attention = None
        if self.config.gci_layer == "mean":
            attention = torch.softmax(bias.float(), dim=-1)[None].to(x.dtype)
            detach = self.config.gci_detach_messages
            for _ in range(self.config.gci_layers):
                x = F.normalize(0.5 * x + 0.5 * attention @ (x.detach() if detach else x), dim=-1)
        for layer in self.layers:
            x, attention = layer(x, bias.to(x.dtype), self.config.gci_detach_messages)
        x = F.normalize(x[0], dim=-1)
        G = v.shape[0]
        return GraphOutput(
            v=v,
            p=p,
            v_tilde=x[:G],
            p_tilde=x[G:],
            relevance=relevance,
            relevance_reverse=relevance_reverse,
            edges=edges,
            attention=attention,
        )

    def losses(self, out: GraphOutput, labels: torch.Tensor, include_base: bool = False) -> dict[str, torch.Tensor]:
        """{"gnn": Trip(v,p~) + Trip(v~,p) + Trip(v~,p~), "reg": relation KL} (+ "base": Trip(v,p)).

        ``labels`` (G,) product labels of the pairs; Trip is :func:`bidirectional_triplet` with the
        config's margin and cutoffs; the KL target is the detached exp(-cdist(v, p)).
        """
        cfg = self.config
        kw = dict(margin=cfg.triplet_margin, cutoff=cfg.triplet_cutoff, nonzero_cutoff=cfg.triplet_nonzero_cutoff,
                  hinge=cfg.triplet_hinge)
        gnn = bidirectional_triplet(out.v_tilde, out.p_tilde, labels, **kw)
        if cfg.gci_triplets == "published":
            gnn = gnn + bidirectional_triplet(out.v, out.p_tilde, labels, **kw) + bidirectional_triplet(
                out.v_tilde, out.p, labels, **kw)
        terms = {
            "gnn": gnn,
            "reg": relation_kl(
                out.relevance, torch.cdist(out.v.detach(), out.p.detach()), relevance_columns=out.relevance_reverse
            ),
        }
        if include_base:
            terms["base"] = bidirectional_triplet(out.v, out.p, labels, **kw)
        return terms
