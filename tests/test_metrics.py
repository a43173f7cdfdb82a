"""Metrics of the per-room protocol, checked against rankings made by hand."""

import math

import pytest

from sgmn.eval.metrics import breakdown, chance_recall_at_1, first_hit_rank, recall_summary


def test_first_hit_rank_simple_and_several_ground_truths():
    ranking = [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.1)]
    assert first_hit_rank(ranking, ["a"]) == 1
    assert first_hit_rank(ranking, ["c"]) == 3
    # several correct answers: the best-placed one counts
    assert first_hit_rank(ranking, ["d", "b"]) == 2
    assert first_hit_rank(ranking, ["zzz"]) is None


def test_ties_are_broken_against_the_ground_truth():
    # b ties with the ground truth c: the pessimistic rank puts c behind b
    ranking = [("a", 0.9), ("c", 0.5), ("b", 0.5), ("d", 0.1)]
    assert first_hit_rank(ranking, ["c"]) == 3
    # a constant scorer ranks the ground truth last, whatever the list order
    flat = [("x", 0.0), ("y", 0.0), ("z", 0.0)]
    assert first_hit_rank(flat, ["x"]) == 3
    # ties between two ground-truth products do not push each other down
    assert first_hit_rank([("g1", 0.5), ("g2", 0.5), ("n", 0.2)], ["g1", "g2"]) == 1


def test_recall_counts_missing_predictions_as_misses():
    gt = {
        "q1": ["p1"],  # rank 1
        "q2": ["p2", "p9"],  # p9 at rank 2
        "q3": ["p3"],  # rank 4
        "q4": ["p4"],  # no prediction at all
        "q5": ["p5"],  # predicted, gt absent from the ranking
        "q6": [],  # no ground truth: not a query of the protocol
    }
    rankings = {
        "q1": [("p1", 3.0), ("x", 2.0)],
        "q2": [("x", 3.0), ("p9", 2.0), ("p2", 1.0)],
        "q3": [("a", 4.0), ("b", 3.0), ("c", 2.0), ("p3", 1.0)],
        "q5": [("a", 1.0)],
        "q6": [("a", 1.0)],
    }
    m = recall_summary(rankings, gt, ks=(1, 3, 5, 10))
    assert m["num_queries"] == 5
    assert m["num_missing_predictions"] == 1
    assert m["num_gt_not_ranked"] == 1
    assert m["R@1"] == pytest.approx(100 * 1 / 5)
    assert m["R@3"] == pytest.approx(100 * 2 / 5)
    assert m["R@5"] == pytest.approx(100 * 3 / 5)
    assert m["R@10"] == pytest.approx(100 * 3 / 5)
    assert m["median_rank"] == 2.0
    assert m["mean_rank"] == pytest.approx((1 + 2 + 4) / 3)


def test_empty_ranking_is_a_miss_not_an_error():
    m = recall_summary({"q": []}, {"q": ["p"]})
    assert m["R@1"] == 0.0 and m["num_missing_predictions"] == 1
    assert math.isnan(m["median_rank"])


def test_breakdown_by_facet():
    gt = {"q1": ["a"], "q2": ["b"], "q3": ["c"]}
    rankings = {"q1": [("a", 1.0)], "q2": [("x", 2.0), ("b", 1.0)], "q3": [("c", 1.0)]}
    groups = {"category": {"q1": "mug", "q2": "mug", "q3": "shoe"}, "scale": {"q1": "large"}}
    b = breakdown(rankings, gt, groups, ks=(1,))
    assert b["category"]["mug"]["R@1"] == pytest.approx(50.0)
    assert b["category"]["mug"]["num_queries"] == 2
    assert b["category"]["shoe"]["R@1"] == pytest.approx(100.0)
    assert set(b["scale"]) == {"large"} and b["scale"]["large"]["num_queries"] == 1


def test_chance_level():
    gt = {"q1": ["a"], "q2": ["a", "b"]}
    sizes = {"q1": 10, "q2": 4}
    assert chance_recall_at_1(gt, sizes) == pytest.approx(100 * (0.1 + 0.5) / 2)
