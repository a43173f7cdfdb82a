import math

import torch
import torch.nn.functional as F

from sgmn.model.losses import (
    bidirectional_triplet,
    distance_weighted_triplet,
    negative_sampling_weights,
    relation_kl,
    symmetric_infonce,
)


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def _reference_triplet(anchors, candidates, a_lab, c_lab, margin=0.2, cutoff=0.5, nonzero=1.7, hinge="distance"):
    """Slow loop version of the documented formula, independent of the vectorised code."""
    a = F.normalize(anchors, dim=-1)
    c = F.normalize(candidates, dim=-1)
    n = a.shape[1]
    total = 0.0
    for i in range(len(a)):
        dist = [math.sqrt(max(2 - 2 * float(a[i] @ c[j]), 1e-12)) for j in range(len(c))]
        pos = [j for j in range(len(c)) if c_lab[j] == a_lab[i]]
        neg = [j for j in range(len(c)) if c_lab[j] != a_lab[i] and dist[j] < nonzero]
        if not pos or not neg:
            continue
        logw = []
        for k in neg:
            d = max(dist[k], cutoff)
            logw.append((2 - n) * math.log(d) - (n - 3) / 2 * math.log(1 - d * d / 4))
        m = max(logw)
        w = [math.exp(x - m) for x in logw]
        w = [x / sum(w) for x in w]
        if hinge == "similarity":  # relu(m + s_an - s_ap), the published code
            sim = [float(a[i] @ c[j]) for j in range(len(c))]
            per_pos = [sum(wk * max(margin + sim[k] - sim[j], 0.0) for wk, k in zip(w, neg)) for j in pos]
        else:
            per_pos = [sum(wk * max(dist[j] - dist[k] + margin, 0.0) for wk, k in zip(w, neg)) for j in pos]
        total += sum(per_pos) / len(pos)
    return total / len(a)


def test_triplet_matches_reference_and_positives_follow_labels():
    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(5, 8, generator=g)
    cands = torch.randn(6, 8, generator=g)
    a_lab = torch.tensor([0, 1, 2, 0, 3])
    c_lab = torch.tensor([0, 1, 2, 3, 0, 4])
    loss = distance_weighted_triplet(anchors, cands, a_lab, c_lab)
    ref = _reference_triplet(anchors, cands, a_lab.tolist(), c_lab.tolist())
    assert abs(loss.item() - ref) < 1e-5
    assert loss.item() > 0
    on_similarity = distance_weighted_triplet(anchors, cands, a_lab, c_lab, hinge="similarity")
    ref_similarity = _reference_triplet(anchors, cands, a_lab.tolist(), c_lab.tolist(), hinge="similarity")
    assert abs(on_similarity.item() - ref_similarity) < 1e-5
    assert abs(on_similarity.item() - loss.item()) > 1e-3  # the two hinges are different losses

    # anchor close to candidate 0, far from candidate 1: the loss depends on which one is labelled positive
    anchor = _unit([1.0, 0.0, 0.0])
    cands = _unit([0.95, 0.3, 0.0], [0.2, 1.0, 0.0])
    right = distance_weighted_triplet(anchor, cands, torch.tensor([7]), torch.tensor([7, 8]))
    swapped = distance_weighted_triplet(anchor, cands, torch.tensor([7]), torch.tensor([8, 7]))
    assert right.item() == 0.0  # positive much closer than the negative: margin satisfied
    assert swapped.item() > 0.5  # now the far candidate is the positive


def test_same_product_candidates_are_pulled_never_pushed():
    clip = _unit([1.0, 0.0, 0.0])
    products = torch.tensor(_unit([0.6, 0.8, 0.0], [0.5, 0.0, 0.9], [0.8, 0.0, 0.6]).tolist(), requires_grad=True)
    towards_clip = clip[0] - products[1].detach()
    # product 1 has the clip's product id (a duplicate in the global batch): it is a positive
    loss = distance_weighted_triplet(clip, products, torch.tensor([5]), torch.tensor([5, 5, 7]))
    loss.backward()
    assert float(-products.grad[1] @ towards_clip) > 0  # gradient descent moves it towards the clip

    # index-based positives (the published code) would make it a negative and push it away
    products.grad = None
    wrong = distance_weighted_triplet(clip, products, torch.tensor([0]), torch.tensor([0, 1, 2]))
    wrong.backward()
    assert float(-products.grad[1] @ towards_clip) < 0


def test_weights_favour_harder_negatives_and_vanish_beyond_cutoff():
    distance = torch.tensor([[0.2, 0.5, 0.8, 1.1, 1.3, 1.75, 1.9]])
    negative = torch.ones_like(distance, dtype=torch.bool)
    w = negative_sampling_weights(distance, negative, dim=64, cutoff=0.5, nonzero_cutoff=1.7)[0]
    assert abs(w.sum().item() - 1) < 1e-6
    assert w[0] == w[1]  # below the cutoff distances are clamped to it
    assert w[1] > w[2] > w[3] > w[4] > 0  # closer (harder) negatives weigh more
    assert w[5] == 0 and w[6] == 0  # beyond nonzero_cutoff
    # positives never get weight
    negative[0, 1] = False
    w = negative_sampling_weights(distance, negative, dim=64)[0]
    assert w[1] == 0 and w[0] > w[2]


def test_no_nan_with_single_product_or_identical_embeddings():
    x = torch.randn(1, 16, requires_grad=True)
    y = torch.randn(1, 16, requires_grad=True)
    loss = bidirectional_triplet(x, y, torch.tensor([3]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(x.grad).all()

    same = torch.ones(4, 16, requires_grad=True)
    loss = bidirectional_triplet(same, same, torch.arange(4))
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - 2 * 0.2) < 1e-4  # relu(0 - 0 + margin), both ways
    assert torch.isfinite(same.grad).all()


def test_infonce_is_symmetric_and_matches_hand_computation():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.2], [0.3, 1.0], [-1.0, 1.0]])
    loss = symmetric_infonce(a, b, scale=2.0)
    an = F.normalize(a, dim=-1).tolist()
    bn = F.normalize(b, dim=-1).tolist()
    s = [[2.0 * sum(p * q for p, q in zip(an[i], bn[j])) for j in range(3)] for i in range(3)]
    rows = sum(-s[i][i] + math.log(sum(math.exp(s[i][j]) for j in range(3))) for i in range(3)) / 3
    cols = sum(-s[j][j] + math.log(sum(math.exp(s[i][j]) for i in range(3))) for j in range(3)) / 3
    assert abs(loss.item() - (rows + cols) / 2) < 1e-5
    assert abs(symmetric_infonce(b, a, scale=2.0).item() - loss.item()) < 1e-6
    # one-direction-twice (the published bug) differs here
    assert abs(rows - cols) > 1e-3

    labels = torch.tensor([0, 0, 1])
    multi = symmetric_infonce(a, b, labels, scale=2.0)
    row0 = -0.5 * (s[0][0] + s[0][1]) + math.log(sum(math.exp(s[0][j]) for j in range(3)))
    row1 = -0.5 * (s[1][0] + s[1][1]) + math.log(sum(math.exp(s[1][j]) for j in range(3)))
    row2 = -s[2][2] + math.log(sum(math.exp(s[2][j]) for j in range(3)))
    col0 = -0.5 * (s[0][0] + s[1][0]) + math.log(sum(math.exp(s[i][0]) for i in range(3)))
    col1 = -0.5 * (s[0][1] + s[1][1]) + math.log(sum(math.exp(s[i][1]) for i in range(3)))
    col2 = -s[2][2] + math.log(sum(math.exp(s[i][2]) for i in range(3)))
    expected = ((row0 + row1 + row2) / 3 + (col0 + col1 + col2) / 3) / 2
    assert abs(multi.item() - expected) < 1e-5
    assert abs(symmetric_infonce(b, a, labels, scale=2.0).item() - multi.item()) < 1e-6


def test_infonce_excludes_missing_text_and_never_nans():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 8, generator=g)
    b = torch.randn(4, 8, generator=g)
    a[2] = 0.0  # a missing ASR encoded as zeros
    mask = torch.tensor([True, True, False, True])
    masked = symmetric_infonce(a, b, a_mask=mask)
    subset = symmetric_infonce(a[mask], b[mask])
    assert torch.isfinite(masked) and abs(masked.item() - subset.item()) < 1e-6

    a.requires_grad_(True)
    none = symmetric_infonce(a, b, a_mask=torch.zeros(4, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0 and (a.grad == 0).all()


def test_relation_kl_is_zero_at_target_both_directions_and_target_detached():
    g = torch.Generator().manual_seed(2)
    v = torch.randn(4, 8, generator=g, requires_grad=True)
    p = torch.randn(4, 8, generator=g, requires_grad=True)
    dist = torch.cdist(v, p)
    assert relation_kl(-dist.detach(), dist).abs().item() < 1e-6
    # probabilities proportional to exp(-D) are the same target
    assert relation_kl(torch.exp(-dist.detach()) * 3.0, dist, relevance_is_logits=False).abs().item() < 1e-6

    # a per-row shift keeps every row-softmax but breaks the column direction
    shifted = -dist.detach() + torch.tensor([[0.0], [2.0], [-1.0], [3.0]])
    row_only = relation_kl(shifted, dist, relevance_columns=-dist.detach())
    assert row_only.abs().item() < 1e-6
    assert relation_kl(shifted, dist).item() > 0.1

    # the direction is KL(relevance || target), as the published code and docs/model.md have it
    rel = torch.randn(4, 4, generator=g)
    target = torch.softmax(-dist.detach(), 1)
    q = torch.softmax(rel, 1)
    expected = (q * (q.log() - target.log())).sum(1).mean()
    qc = torch.softmax(rel.t(), 1)
    tc = torch.softmax(-dist.detach().t(), 1)
    expected = expected + (qc * (qc.log() - tc.log())).sum(1).mean()
    torch.testing.assert_close(relation_kl(rel, dist), expected)

    relevance = torch.zeros(4, 4, requires_grad=True)
    loss = relation_kl(relevance, dist)
    loss.backward()
    assert v.grad is None and p.grad is None  # the target teaches the relevance only
    assert relevance.grad.abs().sum() > 0


def test_losses_run_in_float32_under_autocast():
    g = torch.Generator().manual_seed(4)
    v = F.normalize(torch.randn(8, 32, generator=g), dim=-1)
    p = F.normalize(v + 0.3 * torch.randn(8, 32, generator=g), dim=-1)
    relevance = torch.randn(8, 8, generator=g)
    labels = torch.arange(8) % 5
    exact = (
        relation_kl(relevance, torch.cdist(v, p)),
        bidirectional_triplet(v, p, labels),
        symmetric_infonce(v, p, labels),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = (
            relation_kl(relevance.bfloat16(), torch.cdist(v, p)),
            bidirectional_triplet(v.bfloat16(), p.bfloat16(), labels),
            symmetric_infonce(v.bfloat16(), p.bfloat16(), labels),
        )
    for e, m in zip(exact, mixed):
        assert m.dtype == torch.float32
        assert abs(m.item() - e.item()) < 0.05 * abs(e.item()) + 1e-2
    assert mixed[0].item() >= 0


def _pairs_triplet(anchors, candidates, a_lab, c_lab, margin):
    """Autograd reference that selects the (anchor, positive) pairs and forms the (P, C) hinge."""
    dist = torch.cdist(F.normalize(anchors, dim=-1), F.normalize(candidates, dim=-1))
    same = a_lab[:, None] == c_lab[None, :]
    w = negative_sampling_weights(dist, ~same, anchors.shape[1])
    i, j = same.nonzero(as_tuple=True)
    hinge = F.relu(dist[i, j][:, None] - dist[i] + margin)
    per_pair = (hinge * w[i]).sum(1) / same.sum(1)[i]
    return torch.zeros(len(anchors)).index_add(0, i, per_pair).mean()


def test_sorted_cumulative_triplet_equals_the_pairwise_hinge_in_value_and_gradient():
    # The sync-free (sort + cumulative sums) evaluation of the expectation over negatives must
    # give the hinge formula's value and gradients, with repeated labels, ties and any margin.
    g = torch.Generator().manual_seed(0)
    for trial in range(12):
        A, C = 3 + trial, 5 + 2 * trial
        x = torch.randn(A, 16, generator=g, requires_grad=True)
        y = torch.randn(C, 16, generator=g)
        if trial == 4:
            y[1] = y[0]  # tied distances
        y.requires_grad_(True)
        a_lab, c_lab = torch.randint(0, 4, (A,), generator=g), torch.randint(0, 4, (C,), generator=g)
        margin = 0.1 + 0.1 * trial
        got = distance_weighted_triplet(x, y, a_lab, c_lab, margin=margin)
        assert abs(got.item() - _reference_triplet(x.detach(), y.detach(), a_lab, c_lab, margin=margin)) < 1e-5
        ref = _pairs_triplet(x, y, a_lab, c_lab, margin)
        for mine, theirs in zip(torch.autograd.grad(got, (x, y)), torch.autograd.grad(ref, (x, y))):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
