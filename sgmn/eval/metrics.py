"""Retrieval metrics of the per-room protocol (shared/spec/evaluation.md).

A ranking is a list of ``(product_id, score)`` for one query, best first. A query is a hit at k
when ANY of its ground-truth products is among the top k. Queries without a prediction (clip
unreadable, error) are misses and are counted separately; nothing is dropped.

Ties: the rank of a query is ``1 + #(non-ground-truth products scoring >= the best ground-truth
score)``. Ties are thus broken *against* the ground truth, so a constant scorer cannot look good
and the result does not depend on how a sort ordered equal scores.
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import median
from typing import Iterable, Mapping, Optional, Sequence

Ranking = Sequence[tuple[str, float]]

DEFAULT_KS = (1, 3, 5, 10)


def first_hit_rank(ranking: Ranking, ground_truth: Iterable[str]) -> Optional[int]:
    """1-based rank of the best-scoring ground-truth product, ties counted against it.

    ``None`` when no ground-truth product is in the ranking at all.
    """
    gts = set(ground_truth)
    gt_scores = [s for pid, s in ranking if pid in gts]
    if not gt_scores:
        return None
    best = max(gt_scores)
    if math.isnan(best):
        return None
    return 1 + sum(1 for pid, s in ranking if pid not in gts and not (s < best))


def recall_summary(
    rankings: Mapping[str, Ranking],
    ground_truth: Mapping[str, Sequence[str]],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict:
    """R@k (percent), median/mean first-hit rank and counts over every query with ground truth."""
    queries = [q for q, gts in ground_truth.items() if gts]
    n = len(queries)
    hits = {k: 0 for k in ks}
    ranks: list[int] = []
    missing = 0  # no prediction at all
    not_ranked = 0  # a prediction, but no ground-truth product in it
    for q in queries:
        ranking = rankings.get(q)
        if not ranking:
            missing += 1
            continue
        r = first_hit_rank(ranking, ground_truth[q])
        if r is None:
            not_ranked += 1
            continue
        ranks.append(r)
        for k in ks:
            hits[k] += r <= k
    out: dict = {f"R@{k}": (100.0 * hits[k] / n if n else float("nan")) for k in ks}
    out["median_rank"] = float(median(ranks)) if ranks else float("nan")
    out["mean_rank"] = float(sum(ranks) / len(ranks)) if ranks else float("nan")
    out["num_queries"] = n
    out["num_missing_predictions"] = missing
    out["num_gt_not_ranked"] = not_ranked
    return out


def breakdown(
    rankings: Mapping[str, Ranking],
    ground_truth: Mapping[str, Sequence[str]],
    groups: Mapping[str, Mapping[str, Optional[str]]],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict:
    """Per-group metrics: ``groups`` maps a facet name (e.g. "category", "scale") to
    ``{query_id: group value}``. Queries without a value for a facet are left out of that facet."""
    out: dict = {}
    for facet, values in groups.items():
        members: dict[str, dict[str, Sequence[str]]] = defaultdict(dict)
        for q, gts in ground_truth.items():
            v = values.get(q)
            if v is not None and v != "":
                members[str(v)][q] = gts
        if members:
            out[facet] = {v: recall_summary(rankings, gt, ks) for v, gt in sorted(members.items())}
    return out


def chance_recall_at_1(ground_truth: Mapping[str, Sequence[str]], gallery_sizes: Mapping[str, int]) -> float:
    """Expected R@1 (percent) of a random ranking: mean over queries of #gt / gallery size."""
    vals = [
        min(1.0, len(set(gts)) / gallery_sizes[q])
        for q, gts in ground_truth.items()
        if gts and gallery_sizes.get(q)
    ]
    return 100.0 * sum(vals) / len(vals) if vals else float("nan")
