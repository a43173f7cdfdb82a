"""Batch-wide training losses of SGMN: distance-weighted triplet, symmetric InfoNCE, relation KL.

All functions are pure tensor functions over the GLOBAL batch (the caller all-gathers with
gradients first). None of them draws random numbers, so a run is reproducible and a DDP step
equals a single-process step on the concatenated batch.

Where this module departs from the published SGMN code (see ``docs`` / spec ``method.md``):

* triplet positives are decided by label equality, not by batch index, so two clips of the same
  product are both positives and never each other's negatives;
* triplet terms are averaged over anchors (the published code sums, so its scale grows with the
  batch size);
* the distance-weighted negative is replaced by its expectation under the sampling distribution
  (deterministic, lower variance, same expected gradient as sampling one negative);
* the text InfoNCE is computed in both directions (the published code computes one twice).

The triplet hinge is on distances, relu(m + d_ap - d_an), by default; ``hinge="similarity"`` is the
published relu(m + s_an - s_ap). Kept as published: L_reg = KL(relevance || target).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

# Squared distances are clamped away from 0 before the square root so that identical embeddings
# give a finite (zero) gradient instead of inf * 0 = NaN.
_MIN_SQUARED_DISTANCE = 1e-12


def full_precision(fn):
    """Run a loss in float32 with autocast off: sqrt(2 - 2s), a x100 logit scale and KL terms are
    too coarse in bf16/fp16 (a KL can even come out negative)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a)]
        device_type = tensors[0].device.type if tensors else "cpu"

        def up(x):
            return x.float() if torch.is_tensor(x) and x.is_floating_point() else x

        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})

    return wrapper


def _zero_like_graph(*tensors: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that stays attached to the inputs' graph (so ``.backward()`` still works)."""
    return sum(t.sum() * 0.0 for t in tensors)


def pairwise_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between L2-normalised rows: d = sqrt(2 - 2 x.y), shape (len(x), len(y))."""
    x = F.normalize(x, dim=-1)
    y = F.normalize(y, dim=-1)
    squared = (2.0 - 2.0 * x @ y.t()).clamp(min=_MIN_SQUARED_DISTANCE)
    return squared.sqrt()


def negative_sampling_weights(
    distance: torch.Tensor,
    negative: torch.Tensor,
    dim: int,
    cutoff: float = 0.5,
    nonzero_cutoff: float = 1.7,
) -> torch.Tensor:
    """Row-normalised "Sampling Matters" weights ∝ 1/q(d) over each row's negatives.

    q(d) ∝ d^(n-2) (1 - d²/4)^((n-3)/2) is the density of pairwise distances of points uniform on
    the unit sphere in n dimensions; weighting by 1/q(d) samples negatives uniformly by distance
    instead of by their (concentrated) natural frequency. ``d`` is clamped at ``cutoff`` so that
    very close negatives do not get unbounded weight, and negatives at ``d >= nonzero_cutoff`` get
    weight 0 (they would contribute no gradient anyway). Weights are computed in log space and
    stabilised by subtracting each row's maximum. A row without any valid negative is all zeros.
    The weights are a sampling distribution, so they carry no gradient.

    distance: (A, C) distances; negative: (A, C) bool, True where the candidate is a negative of
    the anchor; dim: the embedding dimension n.
    """
    d = distance.detach().clamp(min=cutoff)
    # 1 - d²/4 reaches 0 only at antipodal points (d = 2), which are beyond nonzero_cutoff anyway.
    log_q = (dim - 2.0) * d.log() + ((dim - 3.0) / 2.0) * (1.0 - 0.25 * d * d).clamp(min=1e-8).log()
    log_weight = -log_q  # = (2 - n) log d - ((n - 3) / 2) log(1 - d²/4), as in Wu et al.'s code
    valid = negative & (distance.detach() < nonzero_cutoff)
    log_weight = log_weight.masked_fill(~valid, float("-inf"))
    row_max = log_weight.max(dim=1, keepdim=True).values
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weight = (log_weight - row_max).exp()  # exp(-inf) = 0 for invalid entries
    total = weight.sum(dim=1, keepdim=True)
    return torch.where(total > 0, weight / total.clamp(min=1e-30), torch.zeros_like(weight))


@full_precision
def distance_weighted_triplet(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    anchor_labels: torch.Tensor,
    candidate_labels: torch.Tensor,
    margin: float = 0.2,
    cutoff: float = 0.5,
    nonzero_cutoff: float = 1.7,
    hinge: str = "distance",
) -> torch.Tensor:
    """One-directional triplet loss with distance-weighted negatives (Wu et al. 2017).

    anchors (A, d) and candidates (C, d) are L2-normalised here. For anchor i, its positives are
    the candidates with the same label and its negatives those with a different label. The loss of
    anchor i is the mean over its positives j of

        E_{k ~ w_i}[ relu(margin + d(i, j) - d(i, k)) ]     (hinge="distance", default)
        E_{k ~ w_i}[ relu(margin + s(i, k) - s(i, j)) ]     (hinge="similarity", published)

    where w_i is the distance-weighted sampling distribution over i's negatives
    (:func:`negative_sampling_weights`). Using the expectation instead of drawing one negative keeps
    the loss deterministic (reproducible runs, DDP equal to single-process). The result is the
    AVERAGE over all A anchors (the published code sums over anchors); an anchor without a
    positive or without a valid negative contributes 0, so the result is never NaN.
    """
    if anchors.ndim != 2 or candidates.ndim != 2:
        raise ValueError(f"expected (A,d) and (C,d) embeddings, got {tuple(anchors.shape)} and {tuple(candidates.shape)}")
    if anchor_labels.shape != anchors.shape[:1] or candidate_labels.shape != candidates.shape[:1]:
        raise ValueError("labels must have one entry per embedding row")
    distance = pairwise_distance(anchors, candidates)  # (A, C)
    same = anchor_labels[:, None] == candidate_labels[None, :]
    weight = negative_sampling_weights(distance, ~same, anchors.shape[1], cutoff, nonzero_cutoff)

    # Both hinges are relu(b_ij + m - b_ik) in a "badness" b: the distance, or minus the similarity.
    if hinge == "similarity":
        # s = 1 - d²/2 exactly (d is computed from s); bounded gradient even for close pairs
        badness = -(F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).t())
    elif hinge == "distance":
        badness = distance
    else:
        raise ValueError(f"hinge must be 'similarity' or 'distance', got {hinge!r}")
    # E_k[relu(b_ij + m - b_ik)] = sum over negatives k with b_ik < b_ij + m of w_ik (b_ij + m - b_ik):
    # with each anchor's candidates sorted by b, that is (b_ij + m) W - WB, where W and WB are
    # cumulative sums of w and w*b up to b_ij + m. O(A x C) memory for every (anchor, positive)
    # pair at once, and no host sync (selecting the positive pairs first would need their count).
    sorted_badness, order = badness.sort(dim=1)
    sorted_weight = weight.gather(1, order)
    zero = sorted_weight.new_zeros(sorted_weight.shape[0], 1)
    cum_w = torch.cat([zero, sorted_weight.cumsum(dim=1)], dim=1)  # (A, C+1): sums of the first n
    cum_wb = torch.cat([zero, (sorted_weight * sorted_badness).cumsum(dim=1)], dim=1)
    reach = badness + margin  # (A, C): for candidate j as the positive
    count = torch.searchsorted(sorted_badness.detach().contiguous(), reach.detach().contiguous(), right=False)
    per_pair = reach * cum_w.gather(1, count) - cum_wb.gather(1, count)  # (A, C), pair (i, j)
    positives_per_anchor = same.sum(dim=1, keepdim=True).clamp(min=1).to(per_pair.dtype)
    per_anchor = torch.where(same, per_pair, per_pair.new_zeros(())).sum(dim=1, keepdim=True) / positives_per_anchor
    return per_anchor.mean()


def bidirectional_triplet(
    x: torch.Tensor,
    y: torch.Tensor,
    labels: torch.Tensor,
    y_labels: Optional[torch.Tensor] = None,
    margin: float = 0.2,
    cutoff: float = 0.5,
    nonzero_cutoff: float = 1.7,
    hinge: str = "distance",
) -> torch.Tensor:
    """Trip(x, y) = triplet(x anchors -> y candidates) + triplet(y anchors -> x candidates).

    ``labels`` label the rows of x; ``y_labels`` those of y (default: the same labels, for paired
    batches where row i of x and y belong together).
    """
    y_labels = labels if y_labels is None else y_labels
    kw = dict(margin=margin, cutoff=cutoff, nonzero_cutoff=nonzero_cutoff, hinge=hinge)
    return distance_weighted_triplet(x, y, labels, y_labels, **kw) + distance_weighted_triplet(
        y, x, y_labels, labels, **kw
    )


@full_precision
def symmetric_infonce(
    a: torch.Tensor,
    b: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    scale: float = 100.0,
    a_mask: Optional[torch.Tensor] = None,
    b_mask: Optional[torch.Tensor] = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of a (G,d) and b (G,d): mean of a->b and b->a.

    logits = scale * a.b^T (rows L2-normalised first when ``normalize``). Without labels row i's
    only positive is column i; with labels every same-label column is a positive and the target
    probability is spread uniformly over them. Pairs whose ``a`` or ``b`` is missing (``a_mask`` /
    ``b_mask`` False) are removed entirely (neither anchor nor negative): a missing text is a
    normal case, not a zero vector to normalise. With no complete pair the loss is an exact 0 that
    is still attached to the inputs' graph.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (G,d) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    keep = torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
    if a_mask is not None:
        keep = keep & a_mask.to(torch.bool)
    if b_mask is not None:
        keep = keep & b_mask.to(torch.bool)
    # Removed pairs are masked, not selected (selecting needs their count on the host: a sync).
    if normalize:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = scale * a @ b.t()
    columns = keep | ~keep.any()  # with nothing kept no column is masked (no all -inf row)
    if labels is None:
        positive = torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    else:
        positive = labels[:, None] == labels[None, :]
    positive = positive & keep[:, None] & keep[None, :]
    target = positive.to(logits.dtype) / positive.sum(dim=1, keepdim=True).clamp(min=1).to(logits.dtype)
    kept = keep.sum().clamp(min=1).to(logits.dtype)

    def direction(scores, target, positive):
        log_p = F.log_softmax(scores.masked_fill(~columns[None, :], float("-inf")), dim=1)
        return -torch.where(positive, target * log_p, log_p.new_zeros(())).sum() / kept

    # The positive relation is symmetric, so the b->a target is the transpose of the a->b target.
    return 0.5 * (direction(logits, target, positive) + direction(logits.t(), target.t(), positive.t()))


def _row_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax(p) || softmax(q))."""
    return F.kl_div(
        F.log_softmax(q_logits, dim=1),
        F.log_softmax(p_logits, dim=1),
        reduction="batchmean",
        log_target=True,
    )


@full_precision
def relation_kl(
    relevance: torch.Tensor,
    target_distance: torch.Tensor,
    relevance_columns: Optional[torch.Tensor] = None,
    relevance_is_logits: bool = True,
) -> torch.Tensor:
    """L_reg: KL between the learned clip-product relevance and the detached exp(-distance).

    relevance: (G_clips, G_products) learned relevance, logits (default) or positive
    probabilities/affinities (``relevance_is_logits=False``); target_distance: (G_clips,
    G_products), typically ``torch.cdist(v, p)``; it is DETACHED here, the target only teaches the
    relevance. Both directions are summed:

    * row-wise: for each clip, KL(normalise_row(relevance) || normalise_row(exp(-D))), the
      direction of the published code (``F.kl_div(log p_target, p_relevance)``);
    * column-wise: for each product, the same over clips. ``relevance_columns`` (same orientation,
      clips x products) is used for this direction when the product->clip relevance is a separate
      estimate; by default it is ``relevance``.

    Normalising exp(-D) over a row is exactly a softmax of -D, so everything runs in log space.
    """
    if relevance.shape != target_distance.shape:
        raise ValueError(f"relevance {tuple(relevance.shape)} and target {tuple(target_distance.shape)} differ in shape")
    columns = relevance if relevance_columns is None else relevance_columns
    if not relevance_is_logits:
        relevance, columns = relevance.clamp(min=1e-12).log(), columns.clamp(min=1e-12).log()
    target_logits = -target_distance.detach()
    return _row_kl(relevance, target_logits) + _row_kl(columns.t(), target_logits.t())
