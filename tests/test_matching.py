import math

import pytest
import torch

from sgmn.model.matching import (
    CrossEncoder,
    SelectiveFusion,
    clip_token_keep,
    mine_hard_negatives,
    pairwise_matching_loss,
    rerank,
)

D, HEADS, N, T = 16, 4, 5, 2


def test_mining_returns_hardest_clips_of_other_products_only():
    # rows = clips, columns = products; clip labels [0, 1, 0, 2, 3], product labels [0, 1, 2, 3]
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.8, 0.3],
            [0.2, 0.7, 0.5, 0.6],
            [0.95, 0.4, 0.2, 0.1],  # a second clip of product 0 scores highest for product 0
            [0.6, 0.3, 0.9, 0.2],
            [0.5, 0.8, 0.1, 0.7],
        ]
    )
    clip_labels = torch.tensor([0, 1, 0, 2, 3])
    product_labels = torch.tensor([0, 1, 2, 3])
    neg, valid = mine_hard_negatives(scores, clip_labels, product_labels, k=3)
    assert valid.all()
    assert neg.tolist() == [
        [3, 4, 1],  # product 0: clips 2 and 0 are the same product, excluded despite scoring highest
        [4, 2, 3],
        [0, 1, 2],
        [1, 0, 3],
    ]
    for p in range(4):
        assert (clip_labels[neg[p]] != product_labels[p]).all()

    # fewer than k clips of other products: the rest is marked invalid, never filled with a same-product clip
    neg, valid = mine_hard_negatives(scores[:3, :2], clip_labels[:3], product_labels[:2], k=3)
    assert valid.tolist() == [[True, False, False], [True, True, False]]
    assert neg.tolist() == [[1, -1, -1], [2, 0, -1]]


def _tokens(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_selective_fusion_leaves_tokens_without_text_unchanged_and_ignores_masked_tokens():
    torch.manual_seed(0)
    fusion = SelectiveFusion(D, HEADS)
    tokens = _tokens(1, 3, T * N, D)
    text = _tokens(2, 3, D)
    keep = torch.ones(3, T * N, dtype=torch.bool)
    keep[:, N:] = False  # second frame is padding
    cls = list(range(0, T * N, N))
    out = fusion(tokens, text, torch.tensor([True, False, True]), keep, cls)
    assert torch.equal(out[1], tokens[1])  # no ASR: unchanged
    changed = (out != tokens).any(-1)
    assert changed[0].tolist() == [i in cls for i in range(T * N)]  # only the frame CLS positions move

    noisy = tokens.clone()
    noisy[:, N + 1 :] = torch.randn(3, N - 1, D) * 10  # masked tokens (not CLS positions)
    again = fusion(noisy, text, torch.tensor([True, False, True]), keep, cls)
    assert torch.allclose(again[:, :N], out[:, :N], atol=1e-6)  # masked keys do not steer the summary

    out.sum().backward()
    for name, param in fusion.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_cross_encoder_ignores_masked_clip_tokens_and_gets_gradients_everywhere():
    torch.manual_seed(0)
    encoder = CrossEncoder(D, HEADS, layers=1)
    products = _tokens(1, 4, N, D)
    clips = _tokens(2, 4, T * N, D)
    frame_mask = torch.tensor([[True, True], [True, False], [True, True], [True, False]])
    patch_mask = torch.ones(4, T, N, dtype=torch.bool)
    patch_mask[0, 0, 3:] = False
    keep = clip_token_keep(frame_mask, patch_mask, N)
    assert keep[1].tolist() == [True] * N + [False] * N and keep[0, 3:5].tolist() == [False, False]
    scores = encoder(products, clips, keep)
    assert scores.shape == (4,) and torch.isfinite(scores).all()

    noisy = clips.clone()
    noisy[~keep] = torch.randn(int((~keep).sum()), D) * 10
    assert torch.allclose(encoder(products, noisy, keep), scores, atol=1e-5)
    noisy[0, 0] = torch.randn(D) * 3  # a kept token does matter
    assert not torch.allclose(encoder(products, noisy, keep)[0], scores[0])

    scores.sum().backward()
    for name, param in encoder.named_parameters():
        if name == "prior_weight":  # used by the loss / re-ranker, not by the encoder's own score
            continue
        assert param.grad is not None and param.grad.abs().sum() > 0, name

    with pytest.raises(ValueError, match="no real token"):
        encoder(products, clips, torch.zeros(4, T * N, dtype=torch.bool))


def _pair_scorer(encoder, products, clips, keep):
    """The cross encoder's score of one (product, clip) pair, as a float."""
    return lambda p, c: encoder(products[p : p + 1], clips[c : c + 1], keep[c : c + 1])[0].item()


def _cross_encoder_batch(G: int):
    """A seeded 1-layer cross encoder and G products' and G clips' tokens, every clip token kept."""
    torch.manual_seed(0)
    encoder = CrossEncoder(D, HEADS, layers=1)
    return encoder, _tokens(1, G, N, D), _tokens(2, G, T * N, D), torch.ones(G, T * N, dtype=torch.bool)


def _target_zero_cross_entropy(rows: list[list[float]]) -> float:
    """Mean over rows of the cross-entropy with the first logit of each row as the target."""
    return sum(-s[0] + math.log(sum(math.exp(x) for x in s)) for s in rows) / len(rows)


def test_pairwise_loss_is_cross_entropy_with_target_zero_on_every_row():
    G, k = 5, 3
    encoder, products, clips, keep = _cross_encoder_batch(G)
    negatives = torch.tensor([[1, 2, 3], [0, 2, 4], [4, 3, -1], [0, 1, 2], [-1, -1, -1]])
    valid = negatives >= 0
    loss = pairwise_matching_loss(encoder, products, clips, keep, torch.arange(G), negatives, valid)

    score = _pair_scorer(encoder, products, clips, keep)
    rows = [0, 1, 2, 3]  # product 4 has no negative: nothing to classify
    candidates = {p: [p] + [int(c) for c in negatives[p] if c >= 0] for p in rows}
    expected = _target_zero_cross_entropy([[score(p, c) for c in candidates[p]] for p in rows])
    assert abs(loss.item() - expected) < 1e-5

    loss.backward()
    assert all(p.grad is not None for n, p in encoder.named_parameters() if n != "prior_weight")

    # with a first-stage prior (smf_score_prior): logits = cross + prior_weight * prior (detached)
    prior = torch.randn(G, 1 + k, generator=torch.Generator().manual_seed(3), requires_grad=True)
    with_prior = pairwise_matching_loss(encoder, products, clips, keep, torch.arange(G), negatives, valid, prior)
    expected = _target_zero_cross_entropy(
        [[score(p, c) + 10.0 * prior[p, j].item() for j, c in enumerate(candidates[p])] for p in rows])
    assert abs(with_prior.item() - expected) < 1e-4
    encoder.zero_grad()
    with_prior.backward()
    assert encoder.prior_weight.grad.abs() > 0 and prior.grad is None  # the prior itself is detached

    # detach_prior=False (smf_prior_gradient): the same loss, and d loss / d prior[p, j] is
    # prior_weight * (softmax_j - [j == 0]) / rows on the scored slots, 0 on invalid ones
    attached = pairwise_matching_loss(encoder, products, clips, keep, torch.arange(G), negatives, valid, prior,
                                      detach_prior=False)
    assert abs(attached.item() - with_prior.item()) < 1e-6
    attached.backward()
    with torch.no_grad():
        logits = torch.stack([torch.stack([torch.tensor(score(p, c)) for c in [p] + [max(int(c), 0) for c in negatives[p]]])
                              for p in range(G)]) + 10.0 * prior
        logits = logits.masked_fill(~torch.cat([torch.ones(G, 1, dtype=torch.bool), valid], 1), float("-inf"))
        grad = 10.0 * (logits.softmax(1) - torch.nn.functional.one_hot(torch.zeros(G, dtype=torch.long), 1 + k)) / len(rows)
        grad[4] = 0.0  # product 4 has no negative: no loss row
    torch.testing.assert_close(prior.grad, grad, atol=1e-5, rtol=1e-4)

    none = pairwise_matching_loss(encoder, products, clips, keep, torch.arange(G), negatives[4:].expand(G, k), valid[4:].expand(G, k))
    assert none.item() == 0.0 and none.requires_grad


def test_clip_rows_classify_each_clip_among_products():
    G, k = 4, 2
    encoder, products, clips, keep = _cross_encoder_batch(G)
    negatives = torch.tensor([[1, 2], [3, -1], [0, 1], [-1, -1]])  # product indices per clip
    valid = negatives >= 0
    loss = pairwise_matching_loss(encoder, products, clips, keep, torch.arange(G), negatives, valid, rows="clip")

    score = _pair_scorer(encoder, products, clips, keep)
    expected = _target_zero_cross_entropy(  # clip 3 has no negative: nothing to classify
        [[score(p, c) for p in [c] + [int(p) for p in negatives[c] if p >= 0]] for c in range(3)])
    assert abs(loss.item() - expected) < 1e-5
    with pytest.raises(ValueError, match="rows must be"):
        pairwise_matching_loss(encoder, products, clips, keep, torch.arange(G), negatives, valid, rows="both")


def test_only_clip_rows_see_a_per_product_offset_of_the_score():
    # Why smf_clip_rows exists: re-ranking orders the products of one clip, so an offset that
    # favours some products changes its result; the published product rows cannot see it (each
    # softmax row holds one product), the clip rows do.
    G, k = 4, 2
    encoder, products, clips, keep = _cross_encoder_batch(G)
    scores = torch.randn(G, G, generator=torch.Generator().manual_seed(5))  # (clips, products)
    labels = torch.arange(G)
    offset = torch.tensor([0.0, 3.0, -2.0, 1.0])  # a per-product bias added to every pair's prior

    def losses(s):
        by_product = mine_hard_negatives(s, labels, labels, k)
        by_clip = mine_hard_negatives(s.t(), labels, labels, k)
        out = []
        for rows, neg, by_row in (("product", by_product, s.t()), ("clip", by_clip, s)):
            prior = by_row.gather(1, torch.cat([labels[:, None], neg.indices], dim=1))
            out.append(pairwise_matching_loss(encoder, products, clips, keep, labels, neg.indices, neg.valid,
                                              prior=prior, rows=rows).item())
        return out

    (product_rows, clip_rows), (product_shifted, clip_shifted) = losses(scores / 10), losses((scores + offset) / 10)
    assert abs(product_rows - product_shifted) < 1e-5
    assert abs(clip_rows - clip_shifted) > 1e-2


def test_rerank_scores_match_the_cross_encoder_and_are_deterministic():
    results = []
    for _ in range(2):
        torch.manual_seed(7)
        encoder = CrossEncoder(D, HEADS, layers=1).eval()
        products = _tokens(1, 6, N, D)
        clips = _tokens(2, 2, T * N, D)
        keep = torch.ones(2, T * N, dtype=torch.bool)
        candidates = torch.tensor([[5, 0, 2], [1, 1, 4]])
        results.append(rerank(encoder, products, clips, keep, candidates, batch_size=4))
    assert torch.equal(results[0], results[1])
    direct = encoder(products[[1]], clips[[1]], keep[[1]])
    assert torch.allclose(results[0][1, 0], direct[0], atol=1e-6) and torch.allclose(results[0][1, 1], direct[0], atol=1e-6)
    all_products = rerank(encoder, products, clips, keep)
    assert all_products.shape == (2, 6) and torch.allclose(all_products[0, [5, 0, 2]], results[0][0], atol=1e-6)
