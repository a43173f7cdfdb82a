import pytest
import torch
import torch.nn.functional as F

from sgmn.model.config import SGMNConfig
from sgmn.model.graph import CrossDomainGraph, frame_level_matching

G, T, N, D, K = 6, 4, 5, 16, 3


def _config(**overrides):
    return SGMNConfig(embed_dim=D, gci_heads=4, gci_frame_topk=K, **overrides)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(G, T, D, generator=g)
    frame_mask = torch.ones(G, T, dtype=torch.bool)
    frame_mask[1, 2:] = False  # clip 1 has 2 real frames
    frame_mask[4, 1:] = False  # clip 4 has 1
    products = torch.randn(G, N, D, generator=g)
    v = F.normalize(frames.mean(1), dim=-1)
    p = F.normalize(products[:, 0], dim=-1)
    return v, p, frames, frame_mask, products


def _reference_profile(frames, mask, products, k, direction):
    """Per-pair loop over the documented SCAN recipe."""
    out = torch.zeros(frames.shape[0], products.shape[0], k + 1)
    for i in range(frames.shape[0]):
        f = F.normalize(frames[i][mask[i]], dim=-1)  # real frames only
        for j in range(products.shape[0]):
            s = F.leaky_relu(f @ F.normalize(products[j], dim=-1).t(), 0.1)  # (t, N)
            if direction == "clip":
                vals = (s / s.norm(dim=0, keepdim=True)).max(dim=1).values
            else:
                vals = (s / s.norm(dim=1, keepdim=True)).max(dim=0).values
            top = vals.sort(descending=True).values[:k]
            out[i, j, : len(top)] = top
            out[i, j, k] = top.mean()
    return out


def test_frame_level_matching_follows_scan_recipe_and_ignores_padding():
    _, _, frames, mask, products = _inputs()
    for direction in ("clip", "product"):
        profile = frame_level_matching(frames, mask, products, K, direction)
        assert profile.shape == (G, G, K + 1)
        assert torch.allclose(profile, _reference_profile(frames, mask, products, K, direction), atol=1e-5)
        # padded frames' content changes nothing, not even when it is garbage
        noisy = frames.clone()
        noisy[~mask] = torch.randn(int((~mask).sum()), D) * 50
        noisy[4, 3] = float("nan")
        assert torch.equal(frame_level_matching(noisy, mask, products, K, direction), profile)
    # clip 4 has a single real frame: one real value, the rest of the K slots are padding
    clip_side = frame_level_matching(frames, mask, products, K, "clip")
    assert (clip_side[4, :, 1:K] == 0).all() and torch.allclose(clip_side[4, :, K], clip_side[4, :, 0])


def test_frame_level_matching_uses_real_product_tokens():
    _, _, frames, mask, products = _inputs()
    changed = products.clone()
    changed[2, 3] = frames[0, 0] * 3.0  # a patch token (not the CLS) that matches clip 0's first frame
    for direction in ("clip", "product"):
        before = frame_level_matching(frames, mask, products, K, direction)
        after = frame_level_matching(frames, mask, changed, K, direction)
        assert not torch.allclose(before[0, 2], after[0, 2])
        assert torch.equal(before[:, [0, 1, 3, 4, 5]], after[:, [0, 1, 3, 4, 5]])  # other products untouched


def _topk_rows(distance, k):
    return [set(row.topk(k, largest=False).indices.tolist()) for row in distance]


def test_intra_edges_are_same_domain_top_half_and_bug_switch_uses_cross_domain():
    torch.manual_seed(0)
    v, p, frames, mask, products = _inputs()
    out = CrossDomainGraph(_config())(v, p, frames, mask, products)
    clip_block, prod_block = out.edges[:G, :G], out.edges[G:, G:]
    k = G // 2
    assert (clip_block.sum(1) == k).all() and (prod_block.sum(1) == k).all()  # exactly top-50%, self included
    assert [set(r.nonzero().flatten().tolist()) for r in clip_block] == _topk_rows(torch.cdist(v, v), k)
    assert [set(r.nonzero().flatten().tolist()) for r in prod_block] == _topk_rows(torch.cdist(p, p), k)
    # inter-domain edges: each clip keeps its top-50% products by the mean clip-side frame-level
    # match, each product its top-50% clips by the mean product-side match (the published rule)
    clip_mean = _reference_profile(frames, mask, products, K, "clip")[..., K]
    prod_mean = _reference_profile(frames, mask, products, K, "product")[..., K]
    for i in range(G):
        kth = clip_mean[i].topk(k).values[-1]
        assert torch.equal(out.edges[i, G:], clip_mean[i] >= kth - 1e-6)
        kth = prod_mean[:, i].topk(k).values[-1]
        assert torch.equal(out.edges[G + i, :G], prod_mean[:, i] >= kth - 1e-6)
    assert (out.edges[:G, G:].sum(1) >= k).all() and not out.edges[:G, G:].all()
    # clip 4 has one real frame: SCAN's normalisation over frames makes every product tie at 1
    assert out.edges[4, G:].all()
    every = CrossDomainGraph(_config(gci_inter_all_pairs=True))(v, p, frames, mask, products)
    assert every.edges[:G, G:].all() and every.edges[G:, :G].all()

    torch.manual_seed(0)
    buggy = CrossDomainGraph(_config(gci_intra_cross_domain_bug=True))(v, p, frames, mask, products)
    expected = [rows | {i} for i, rows in enumerate(_topk_rows(torch.cdist(v, p), k))]
    assert [set(r.nonzero().flatten().tolist()) for r in buggy.edges[:G, :G]] == expected
    assert not torch.equal(buggy.edges[:G, :G], clip_block)


def test_no_edge_means_exactly_zero_attention():
    torch.manual_seed(0)
    v, p, frames, mask, products = _inputs()
    out = CrossDomainGraph(_config())(v, p, frames, mask, products)
    assert out.attention.shape == (4, 2 * G, 2 * G)
    assert (out.attention[:, ~out.edges] == 0).all()
    assert (out.attention[:, out.edges] > 0).all()
    assert torch.allclose(out.attention.sum(-1), torch.ones(4, 2 * G), atol=1e-5)
    # ṽ, p̃ are re-normalised
    assert torch.allclose(out.v_tilde.norm(dim=-1), torch.ones(G)) and torch.allclose(out.p_tilde.norm(dim=-1), torch.ones(G))


def test_gradients_reach_every_parameter_and_losses_are_finite():
    torch.manual_seed(0)
    v, p, frames, mask, products = _inputs()
    frames.requires_grad_(True)
    v.requires_grad_(True)
    graph = CrossDomainGraph(_config())
    out = graph(v, p, frames, mask, products)
    labels = torch.tensor([0, 1, 2, 3, 0, 4])  # clips 0 and 4 show the same product
    terms = graph.losses(out, labels, include_base=True)
    assert set(terms) == {"gnn", "reg", "base"}
    assert all(torch.isfinite(t) and t.item() > 0 for t in terms.values())
    sum(terms.values()).backward()
    for name, param in graph.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # frame-level matching is detached (published): no gradient reaches the frame features
    assert frames.grad is None
    v.grad = None
    out = graph(v, p, frames, mask, products)
    graph.losses(out, labels)["reg"].backward()
    assert v.grad is None or (v.grad == 0).all()  # L_reg teaches the relevance MLP only


def test_relevance_is_mlp_of_top_k_plus_mean_and_intra_weights_carry_gradient():
    torch.manual_seed(0)
    v, p, frames, mask, products = _inputs()
    graph = CrossDomainGraph(_config())
    relevance, reverse = graph.relevances(frames, mask, products)
    profile = _reference_profile(frames, mask, products, K, "clip")
    expected = graph.relevance_clip_to_product(profile[..., :K]).squeeze(-1) + profile[..., K]
    torch.testing.assert_close(relevance, expected, atol=1e-5, rtol=1e-5)
    # the intra-domain weights exp(-|x - y|) keep their gradient (published): the graph's
    # attention, hence L_gnn, reaches v through them and not only through the node features
    from sgmn.model.graph import intra_domain_edges

    x = v.clone().requires_grad_(True)
    _, weights = intra_domain_edges(x, 0.5, 1.0)
    weights.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_deterministic_under_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        graph = CrossDomainGraph(_config())
        v, p, frames, mask, products = _inputs(seed=5)
        out = graph(v, p, frames, mask, products)
        outs.append((out.v_tilde, out.relevance, graph.losses(out, torch.arange(G))["gnn"]))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_chunked_frame_level_matching_equals_one_block_in_values_and_gradients():
    # The chunked path (clips in blocks, each checkpointed) must give the same profile and the
    # same gradients as one (G, G, T, N) block, while holding only a block at a time.
    _, _, frames, mask, products = _inputs()
    for direction in ("clip", "product"):
        results = []
        for block in (None, "one clip per chunk"):
            f, p = frames.clone().requires_grad_(), products.clone().requires_grad_()
            kwargs = {} if block is None else {"block_elements": G * T * N}  # G products x T x N: 1 clip/chunk
            out = frame_level_matching(f, mask, p, K, direction, **kwargs)
            (out * torch.arange(out.numel()).reshape(out.shape).sin()).sum().backward()
            results.append((out.detach(), f.grad, p.grad))
        (ref, ref_f, ref_p), (chunked, ch_f, ch_p) = results
        torch.testing.assert_close(chunked, ref)
        torch.testing.assert_close(ch_f, ref_f)
        torch.testing.assert_close(ch_p, ref_p)
        assert ref_f.abs().sum() > 0 and ref_p.abs().sum() > 0


def test_chunked_frame_level_matching_holds_one_block_in_memory(monkeypatch):
    import sgmn.model.graph as graph_module

    calls = []
    block = graph_module.frame_level_matching_block

    def spy(frame_tokens, *args, **kwargs):
        calls.append(frame_tokens.shape[0])
        return block(frame_tokens, *args, **kwargs)

    monkeypatch.setattr(graph_module, "frame_level_matching_block", spy)
    _, _, frames, mask, products = _inputs()
    with torch.no_grad():
        frame_level_matching(frames, mask, products, K, "clip", block_elements=2 * G * T * N)
    assert calls == [2, 2, 2]  # three blocks of two clips: never the whole (G, G, T, N)


def test_self_loops_only_ablation_passes_nothing_between_nodes():
    torch.manual_seed(0)
    v, p, frames, mask, products = _inputs()
    graph = CrossDomainGraph(_config(gci_self_loops_only=True))
    out = graph(v, p, frames, mask, products)
    assert torch.equal(out.edges, torch.eye(2 * G, dtype=torch.bool))
    # each node's refinement depends on that node alone: moving one clip moves only its own ṽ
    graph.eval()
    base = graph(v, p, frames, mask, products)
    moved = v.clone()
    moved[2] = F.normalize(moved[2] + 0.5, dim=-1)
    after = graph(moved, p, frames, mask, products)
    changed = (after.v_tilde - base.v_tilde).abs().amax(-1) > 1e-6
    assert changed.tolist() == [i == 2 for i in range(G)]
    assert torch.allclose(after.p_tilde, base.p_tilde, atol=1e-6)
    # and the node is still transformed by the learned layer, not passed through
    assert not torch.allclose(base.v_tilde, v, atol=1e-3)


def test_mean_layer_ablation_is_the_fixed_edge_weighted_mean():
    torch.manual_seed(0)
    v, p, frames, mask, products = _inputs()
    graph = CrossDomainGraph(_config(gci_layer="mean"))
    assert len(graph.layers) == 0
    assert {name.split(".")[0] for name, _ in graph.named_parameters()} == {
        "relevance_clip_to_product", "relevance_product_to_clip"}
    out = graph(v, p, frames, mask, products)
    x = torch.cat([v, p])
    edges, bias = graph.adjacency(v, p, *graph.relevances_and_means(frames, mask, products))
    assert torch.equal(edges, out.edges)
    expected = F.normalize(0.5 * x + 0.5 * torch.softmax(bias, dim=-1) @ x, dim=-1)
    assert torch.allclose(torch.cat([out.v_tilde, out.p_tilde]), expected, atol=1e-5)
    assert (out.attention[0][~out.edges] == 0).all()
    # L_gnn still trains the relevance MLP through the edge weights
    labels = torch.arange(G)
    graph.losses(out, labels)["gnn"].backward()
    assert graph.relevance_clip_to_product[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="gci_layer 'sum'"):
        CrossDomainGraph(_config(gci_layer="sum"))


@pytest.mark.parametrize("layer", ["transformer", "mean"])
def test_detached_messages_move_only_the_refined_node_itself(layer):
    # The refined values are the same; only the gradient to the neighbours is cut.
    def run(detach):
        torch.manual_seed(0)
        v, p, frames, mask, products = _inputs()
        v, p = v.clone().requires_grad_(), p.clone().requires_grad_()
        graph = CrossDomainGraph(_config(gci_layer=layer, gci_detach_messages=detach)).eval()
        out = graph(v, p, frames, mask, products)
        out.v_tilde[2].sum().backward()
        return out, v.grad, p.grad

    plain, v_grad, p_grad = run(False)
    cut, v_grad_cut, p_grad_cut = run(True)
    assert torch.allclose(plain.v_tilde, cut.v_tilde) and torch.allclose(plain.p_tilde, cut.p_tilde)
    others = [i for i in range(G) if i != 2]
    assert v_grad[others].abs().sum() > 0 and p_grad.abs().sum() > 0  # published: neighbours move
    assert v_grad_cut[others].abs().sum() == 0 and p_grad_cut.abs().sum() == 0
    assert v_grad_cut[2].abs().sum() > 0


def test_refined_triplets_are_trip_of_both_refined_sides_alone():
    from sgmn.model.losses import bidirectional_triplet

    torch.manual_seed(0)
    v, p, frames, mask, products = _inputs()
    labels = torch.tensor([0, 1, 2, 2, 3, 4])
    losses = {}
    for mode in ("published", "refined"):
        torch.manual_seed(0)
        graph = CrossDomainGraph(_config(gci_triplets=mode)).eval()
        out = graph(v, p, frames, mask, products)
        losses[mode] = graph.losses(out, labels)["gnn"]
        c = graph.config
        kw = dict(margin=c.triplet_margin, cutoff=c.triplet_cutoff, nonzero_cutoff=c.triplet_nonzero_cutoff,
                  hinge=c.triplet_hinge)
        refined = bidirectional_triplet(out.v_tilde, out.p_tilde, labels, **kw)
        cross = bidirectional_triplet(out.v, out.p_tilde, labels, **kw) + bidirectional_triplet(
            out.v_tilde, out.p, labels, **kw)
        assert cross > 0
        expected = refined if mode == "refined" else refined + cross
        assert torch.allclose(losses[mode], expected)
    with pytest.raises(ValueError, match="gci_triplets 'both'"):
        CrossDomainGraph(_config(gci_triplets="both"))
