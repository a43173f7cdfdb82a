"""Behaviour of the assembled SGMN model and the baselines (tiny configs, random weights, CPU)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sgmn.model import create_model
from sgmn.model.base import ClipEmbeddings, ProductEmbeddings

S, P, G = 32, 16, 2  # 32 px images, 16 px patches -> 2x2 grid, N = 5 tokens
N = 1 + G * G
DT = 384


def tiny(name="sgmn-tiny", **overrides):
    torch.manual_seed(0)
    sizes = {
        "vision.image_size": S, "vision.patch_size": P, "vision.width": 32, "vision.layers": 1,
        "vision.heads": 2, "embed_dim": 32, "num_frames": 4, "temporal_layers": 1, "temporal_heads": 2,
        "gci_heads": 2, "gci_frame_topk": 4, "cross_heads": 2,
    }
    sizes.update(overrides)
    return create_model(name, **sizes)


def make_batch(B=4, T=4, seed=0, asr=True, title=True):
    g = torch.Generator().manual_seed(seed)
    lengths = [T, T - 1, 2, 1][:B] + [T] * max(0, B - 4)
    frame_mask = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        frame_mask[i, :n] = True
    asr_mask = torch.tensor([asr and i % 3 != 1 for i in range(B)])
    title_mask = torch.tensor([title and i % 4 != 2 for i in range(B)])
    return {
        "frames": torch.randn(B, T, 3, S, S, generator=g),
        "frame_mask": frame_mask,
        "patch_mask": torch.ones(B, T, N, dtype=torch.bool),
        "boxes": torch.tensor([0.0, 0.0, S / 2, S / 2]).repeat(B, T, 1),
        "box_mask": frame_mask.clone(),
        "asr_vec": torch.randn(B, DT, generator=g) * asr_mask[:, None],
        "asr_mask": asr_mask,
        "product_pixels": torch.randn(B, 3, S, S, generator=g),
        "title_vec": torch.randn(B, DT, generator=g) * title_mask[:, None],
        "title_mask": title_mask,
        "labels": torch.tensor([0, 1, 0, 2] * (B // 4) + [3] * (B % 4))[:B],
        "clip_ids": [f"c{i}" for i in range(B)],
        "product_ids": [f"p{i}" for i in range(B)],
    }


def assert_finite(x, what):
    assert torch.isfinite(x).all(), f"{what} has NaN/inf"


# ---- training forward ---------------------------------------------------------------------------
def test_full_model_losses_are_the_method_terms_and_total_is_their_weighted_sum():
    model = tiny(**{"losses.vi": 0.5, "losses.box": 0.3})
    out = model(make_batch())
    assert set(out["losses"]) == {"txt", "base", "reg", "gnn", "pair", "vi", "box"}
    w = model.config.losses
    expected = sum(getattr(w, k) * v for k, v in out["losses"].items())
    torch.testing.assert_close(out["loss"], expected)
    for k, v in out["losses"].items():
        assert_finite(v, k)


@pytest.mark.parametrize(
    "switch, removed_terms, removed_modules",
    [
        ("use_gci", {"gnn", "reg"}, ["graph"]),
        ("use_smf", {"pair"}, ["fusion", "cross"]),
        ("use_text", {"txt", "box"}, ["fc_asr", "fc_title", "tga"]),
        ("use_tga", {"box"}, ["tga"]),
        ("use_tdb", set(), ["temporal"]),
    ],
)
def test_ablation_switch_removes_its_terms_and_modules(switch, removed_terms, removed_modules):
    full = tiny()
    ablated = tiny(**{switch: False})
    batch = make_batch()
    full_terms = set(full(batch)["losses"])
    ablated_terms = set(ablated(batch)["losses"])
    assert ablated_terms == full_terms - removed_terms
    for name in removed_modules:
        assert getattr(ablated, name) is None
        assert not any(k.startswith(name + ".") for k in ablated.state_dict())
    assert sum(p.numel() for p in ablated.parameters()) < sum(p.numel() for p in full.parameters())


def test_zero_weight_term_is_absent_not_a_fake_zero():
    model = tiny(**{"losses.gnn": 0.0})
    terms = model(make_batch())["losses"]
    assert "gnn" not in terms and "reg" in terms


@pytest.mark.parametrize("prior_gradient", [False, True])
def test_pair_loss_trains_the_encoders_through_the_prior_only_when_asked(prior_gradient):
    # A cross encoder whose output ignores its input (score weight 0) passes no gradient back to
    # the tokens, so what reaches the backbone can only come through the first-stage prior S.
    model = tiny(smf_prior_gradient=prior_gradient)
    with torch.no_grad():
        model.cross.score.weight.zero_()
    batch = make_batch()
    pair = model(batch)["losses"]["pair"]
    assert pair.item() > 0
    pair.backward()
    backbone = sum(p.grad.abs().sum() for p in model.backbone.parameters() if p.grad is not None)
    title = model.fc_title.weight.grad
    if prior_gradient:  # S = v.p + lambda a.t: the visual and the text side both learn from the mined negatives
        assert backbone > 0 and title is not None and title.abs().sum() > 0
    else:
        assert backbone == 0 and (title is None or title.abs().sum() == 0)


def _modules_without_grad(model):
    bad = []
    for mod_name, module in model.named_children():
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            continue
        if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in params):
            bad.append(mod_name)
        # every weight matrix / vector must learn, except embedding tables (rows of unused positions)
        for name, p in module.named_parameters():
            if "embedding" in name:
                continue
            if f"{mod_name}.{name}" == "cross.score.bias":
                # a bias shared by every candidate of a softmax row: its gradient is exactly 0
                continue
            if p.grad is None or p.grad.abs().sum() == 0:
                bad.append(f"{mod_name}.{name}")
    return bad


@pytest.mark.parametrize("switch", [None, "use_gci", "use_smf", "use_text", "use_tga", "use_tdb"])
def test_gradients_reach_every_enabled_module(switch):
    model = tiny(**({switch: False} if switch else {}), **{"losses.box": 0.3})
    batch = make_batch()
    model(batch)["loss"].backward()
    assert _modules_without_grad(model) == []


def test_missing_text_everywhere_gives_no_nan_and_drops_the_text_term():
    model = tiny(**{"losses.vi": 1.0, "losses.box": 1.0})
    batch = make_batch(asr=False, title=False)
    out = model(batch)
    assert "txt" not in out["losses"]
    assert "box" not in out["losses"]  # no ASR -> no attention map to supervise
    assert_finite(out["loss"], "loss")
    out["loss"].backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert_finite(p.grad, name)
    # a batch without any text keys at all (MovingFashion) behaves the same
    no_keys = {k: v for k, v in batch.items() if not k.startswith(("asr", "title"))}
    out2 = model(no_keys)
    assert set(out2["losses"]) == set(out["losses"])
    torch.testing.assert_close(out2["loss"], out["loss"])
    clips = model.encode_clips(batch["frames"], batch["frame_mask"], asr=None, return_attention=True)
    prods = model.encode_products(batch["product_pixels"], titles=[None, "", "  ", None])
    for x in (clips.embedding, clips.text_embedding, prods.embedding, prods.text_embedding):
        assert_finite(x, "embedding")
    assert not clips.text_mask.any() and not prods.text_mask.any()
    assert torch.all(clips.text_embedding == 0)
    assert torch.all(clips.attention == 0)  # no text, no guidance
    torch.testing.assert_close(model.score(clips, prods), clips.embedding @ prods.embedding.t())


def test_text_term_counts_only_pairs_with_text_on_both_sides():
    model = tiny(use_gci=False, use_smf=False)
    batch = make_batch()
    out = model(batch)
    # change the ASR vector of a clip whose title is missing: the text loss must not move
    i = int(((batch["asr_mask"]) & (~batch["title_mask"])).nonzero()[0])
    batch2 = dict(batch, asr_vec=batch["asr_vec"].clone())
    batch2["asr_vec"][i] = torch.randn(DT)
    torch.testing.assert_close(model(batch2)["losses"]["txt"], out["losses"]["txt"])


def test_training_forward_takes_positives_and_mined_negatives_by_product_id(monkeypatch):
    """The unit tests of the losses / mining hold only if forward hands them the product labels."""
    import sgmn.model.matching as matching
    from sgmn.model.losses import bidirectional_triplet

    mined = []
    mine = matching.mine_hard_negatives

    def recording_mine(*args, **kwargs):
        mined.append(mine(*args, **kwargs))
        return mined[-1]

    monkeypatch.setattr(matching, "mine_hard_negatives", recording_mine)
    model = tiny()
    batch = make_batch()  # labels [0, 1, 0, 2]: clips 0 and 2 show the same product
    labels = batch["labels"]
    out = model(batch)["losses"]

    # mining: product 0 may only take clips 1 and 3; clip 2 (same product) is never its negative;
    # in the clip rows (smf_clip_rows), clip 0 likewise only products 1 and 3
    assert len(mined) == 2  # the default: product rows and clip rows
    mined.clear()
    tiny(smf_clip_rows=False)(batch)  # the published loss: one direction
    assert len(mined) == 1
    mined.clear()
    tiny(smf_clip_rows=True)(batch)
    by_product, by_clip = mined
    for negatives in (by_product, by_clip):
        for row in range(4):
            chosen = negatives.indices[row][negatives.valid[row]]
            assert (labels[chosen] != labels[row]).all(), row
        assert negatives.valid[0].tolist() == [True, True, False]

    # L_base is Trip(v, p) with positives by product id, on the same v, p the inference API gives
    clips = model.encode_clips(batch["frames"], batch["frame_mask"], batch["patch_mask"],
                               asr=batch["asr_vec"], asr_mask=batch["asr_mask"])
    prods = model.encode_products(batch["product_pixels"], batch["title_vec"], batch["title_mask"])
    by_id = bidirectional_triplet(clips.embedding, prods.embedding, labels)
    by_index = bidirectional_triplet(clips.embedding, prods.embedding, torch.arange(4))
    torch.testing.assert_close(out["base"], by_id, atol=1e-5, rtol=0)
    assert (by_id - by_index).abs() > 1e-3
    # the graph terms follow the labels too: distinct labels would give another L_gnn
    distinct = model(dict(batch, labels=torch.arange(4)))["losses"]
    assert (out["gnn"] - distinct["gnn"]).abs() > 1e-4


def test_pair_loss_is_the_mean_of_the_product_rows_and_the_clip_rows(monkeypatch):
    import sgmn.model.matching as matching

    calls = []
    loss_fn = matching.pairwise_matching_loss

    def recording_loss(*args, **kwargs):
        calls.append((kwargs.get("rows", "product"), loss_fn(*args, **kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(matching, "pairwise_matching_loss", recording_loss)
    batch = make_batch()
    both = tiny(smf_clip_rows=True)(batch)["losses"]["pair"]
    assert [rows for rows, _ in calls] == ["product", "clip"]
    torch.testing.assert_close(both, (calls[0][1] + calls[1][1]) / 2)
    assert (calls[0][1] - calls[1][1]).abs() > 1e-4  # two different problems, not one counted twice
    calls.clear()
    published = tiny(smf_clip_rows=False)(batch)["losses"]["pair"]
    assert [rows for rows, _ in calls] == ["product"] and torch.equal(published, calls[0][1])


def test_a_config_saved_before_smf_clip_rows_existed_keeps_the_published_l_pair():
    from sgmn.model.config import SGMNConfig

    saved = tiny().config.to_dict()
    assert saved["smf_clip_rows"] is True  # the default now, written into every saved config
    assert SGMNConfig.from_dict(saved).smf_clip_rows is True
    del saved["smf_clip_rows"]  # what the code before the switch wrote
    assert SGMNConfig.from_dict(saved).smf_clip_rows is False


def test_deterministic_under_a_seed():
    out1 = tiny()(make_batch())
    out2 = tiny()(make_batch())
    for k in out1["losses"]:
        assert torch.equal(out1["losses"][k], out2["losses"][k]), k


def test_box_loss_prefers_attention_inside_the_box():
    model = tiny(use_gci=False, use_smf=False, **{"losses.box": 1.0})
    batch = make_batch()
    attn_in = torch.zeros(4, 4, G * G)
    attn_in[..., 0] = 1.0  # the box covers the top-left patch only
    attn_out = torch.zeros(4, 4, G * G)
    attn_out[..., 3] = 1.0
    fm, am = batch["frame_mask"], batch["asr_mask"]
    assert model._box_loss(attn_in, batch, fm, am) < 1e-4
    assert model._box_loss(attn_out, batch, fm, am) > 5.0


# ---- inference ----------------------------------------------------------------------------------
def test_padded_frames_do_not_change_a_clip_embedding():
    model = tiny()
    g = torch.Generator().manual_seed(1)
    real = torch.randn(1, 3, 3, S, S, generator=g)
    asr = torch.randn(1, DT, generator=g)
    short = model.encode_clips(real, asr=asr)
    padded = torch.cat([real, 50 * torch.randn(1, 2, 3, S, S, generator=g)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    long = model.encode_clips(padded, mask, asr=asr, return_attention=True)
    torch.testing.assert_close(long.embedding, short.embedding, atol=1e-5, rtol=0)
    assert torch.all(long.attention[0, 3:] == 0)


def test_masked_patches_do_not_influence_the_clip_embedding():
    model = tiny()
    g = torch.Generator().manual_seed(2)
    frames = torch.randn(1, 2, 3, S, S, generator=g)
    asr = torch.randn(1, DT, generator=g)
    keep = torch.ones(1, 2, N, dtype=torch.bool)
    keep[..., 4] = False  # patch (row 1, col 1) = pixels [16:32, 16:32]
    base = model.encode_clips(frames, patch_mask=keep, asr=asr, return_attention=True)
    perturbed = frames.clone()
    perturbed[..., P:, P:] = 100 * torch.randn_like(perturbed[..., P:, P:])
    again = model.encode_clips(perturbed, patch_mask=keep, asr=asr)
    torch.testing.assert_close(again.embedding, base.embedding, atol=1e-5, rtol=0)
    unmasked = model.encode_clips(perturbed, asr=asr)
    assert (unmasked.embedding - base.embedding).abs().max() > 1e-4  # the same change matters when visible
    assert torch.all(base.attention[..., 1, 1] == 0)


def test_tga_map_sums_to_one_over_kept_patches_and_follows_the_asr():
    model = tiny()
    g = torch.Generator().manual_seed(3)
    frames = torch.randn(2, 3, 3, S, S, generator=g)
    keep = torch.ones(2, 3, N, dtype=torch.bool)
    keep[0, :, 2] = False
    c1 = model.encode_clips(frames, patch_mask=keep, asr=torch.randn(2, DT, generator=g), return_attention=True)
    assert c1.attention.shape == (2, 3, G, G)
    torch.testing.assert_close(c1.attention.sum((-1, -2)), torch.ones(2, 3))
    assert torch.all(c1.attention[0, :, 0, 1] == 0)
    c2 = model.encode_clips(frames, patch_mask=keep, asr=torch.randn(2, DT, generator=g), return_attention=True)
    assert (c1.attention - c2.attention).abs().max() > 1e-4
    assert (c1.embedding - c2.embedding).abs().max() > 1e-6


@pytest.mark.parametrize("tga_mode", ["attention_bias", "mix"])
def test_the_asr_changes_the_clip_embedding_by_a_measurable_amount(tga_mode):
    # v with the ASR is clearly not v without it (the first design, a gated residual, gave cos
    # 0.9998 after training). "mix" mixes a real share of the attended summary from the start;
    # "attention_bias" starts from a near-uniform map (bias ~ 0) and moves v once the map is
    # peaked, as the box loss makes it: a sharpened query stands in for that training here.
    model = tiny(tga_mode=tga_mode)
    if tga_mode == "attention_bias":
        with torch.no_grad():
            model.tga.query.weight.mul_(30.0)
    g = torch.Generator().manual_seed(4)
    frames = torch.randn(3, 4, 3, S, S, generator=g)
    asr = torch.randn(3, DT, generator=g)
    guided = model.encode_clips(frames, asr=asr).embedding
    unguided = model.encode_clips(frames, asr=asr, asr_mask=torch.zeros(3, dtype=torch.bool)).embedding
    assert (guided * unguided).sum(-1).max() < 0.99
    other = model.encode_clips(frames, asr=torch.randn(3, DT, generator=g)).embedding
    assert (guided * other).sum(-1).max() < 0.9999
    no_tga = tiny(use_tga=False)
    no_tga.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("tga.")}, strict=False)
    torch.testing.assert_close(no_tga.encode_clips(frames, asr=asr).embedding, unguided)


def _pil_clip(rng, n):
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def test_encoding_one_at_a_time_equals_encoding_a_batch():
    model = tiny()
    rng = np.random.default_rng(0)
    clips = [_pil_clip(rng, n) for n in (3, 1, 2)]
    vecs = torch.randn(3, DT)
    batch = model.encode_clips(clips, asr=vecs)
    for i, clip in enumerate(clips):
        one = model.encode_clips([clip], asr=vecs[i : i + 1])
        torch.testing.assert_close(one.embedding[0], batch.embedding[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(one.text_embedding[0], batch.text_embedding[i], atol=1e-5, rtol=0)
    # arrays and PIL images give the same embedding
    arrays = [[np.asarray(im) for im in clip] for clip in clips]
    torch.testing.assert_close(model.encode_clips(arrays, asr=vecs).embedding, batch.embedding)
    images = [clip[0] for clip in clips]
    prods = model.encode_products(images)
    for i, im in enumerate(images):
        torch.testing.assert_close(model.encode_products([im]).embedding[0], prods.embedding[i], atol=1e-5, rtol=0)


def test_score_is_visual_plus_lambda_text_where_both_have_text():
    model = tiny(text_weight=0.5)
    g = torch.Generator().manual_seed(4)
    clips = model.encode_clips(torch.randn(3, 2, 3, S, S, generator=g), asr=torch.randn(3, DT, generator=g),
                               asr_mask=torch.tensor([True, False, True]))
    prods = model.encode_products(torch.randn(2, 3, S, S, generator=g), titles=torch.randn(2, DT, generator=g),
                                  title_mask=torch.tensor([True, False]))
    got = model.score(clips, prods)
    v, p = clips.embedding.double(), prods.embedding.double()
    a, t = clips.text_embedding.double(), prods.text_embedding.double()
    for i in range(3):
        for j in range(2):
            expected = float(v[i] @ p[j])
            if i in (0, 2) and j == 0:
                expected += 0.5 * float(a[i] @ t[j])
            assert math.isclose(float(got[i, j]), expected, abs_tol=1e-5)
    # the normalised pieces are unit vectors where present and zero where missing
    torch.testing.assert_close(clips.embedding.norm(dim=-1), torch.ones(3))
    assert torch.all(clips.text_embedding[1] == 0) and torch.all(prods.text_embedding[1] == 0)
    torch.testing.assert_close(clips.text_embedding[[0, 2]].norm(dim=-1), torch.ones(2))


def test_zero_rows_of_precomputed_vectors_mean_no_text():
    model = tiny()
    vecs = torch.randn(2, DT)
    vecs[1] = 0
    clips = model.encode_clips(torch.randn(2, 1, 3, S, S), asr=vecs)
    assert clips.text_mask.tolist() == [True, False]


def test_strings_are_encoded_with_the_configured_text_encoder():
    model = tiny()
    frames = torch.randn(2, 1, 3, S, S)
    by_string = model.encode_clips(frames, asr=["a red striped mug, only today", None])
    assert by_string.text_mask.tolist() == [True, False]
    vecs, has = model.text_encoder.encode(["a red striped mug, only today", None])
    by_vector = model.encode_clips(frames, asr=torch.as_tensor(vecs), asr_mask=torch.as_tensor(has))
    torch.testing.assert_close(by_string.text_embedding, by_vector.text_embedding)


def test_bad_inputs_are_refused_with_a_clear_reason():
    model = tiny()
    with pytest.raises(ValueError, match=r"3,32,32"):
        model.encode_clips(torch.randn(1, 2, 3, 64, 64))
    with pytest.raises(ValueError, match="asr"):
        model.encode_clips(torch.randn(1, 2, 3, S, S), asr=torch.randn(1, 7))
    with pytest.raises(ValueError, match="no real frame"):
        model.encode_clips(torch.randn(1, 2, 3, S, S), frame_mask=torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="uint8"):
        model.encode_products([np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match=r"asr_mask: expected shape \(1,\)"):
        model.encode_clips(torch.randn(1, 2, 3, S, S), asr=torch.randn(1, DT), asr_mask=torch.ones(3, dtype=torch.bool))
    # NaN pixels would make the whole embedding NaN: refused, naming the clip and frame / the image
    frames = torch.randn(2, 3, 3, S, S)
    frames[1, 2, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"\(1, 2\)"):
        model.encode_clips(frames)
    mask = torch.tensor([[True] * 3, [True, True, False]])  # ... unless the frame is padding
    assert torch.isfinite(model.encode_clips(frames, mask).embedding).all()
    images = torch.randn(3, 3, S, S)
    images[2, 1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"images: pixels of \[2\]"):
        model.encode_products(images)


def test_inference_restores_training_mode():
    model = tiny()
    model.train()
    model.encode_products(torch.randn(1, 3, S, S))
    assert model.training


def test_save_and_load_round_trip_gives_identical_scores(tmp_path):
    from sgmn.model.sgmn import SGMN

    model = tiny(text_weight=0.7)
    g = torch.Generator().manual_seed(5)
    frames, asr = torch.randn(2, 3, 3, S, S, generator=g), torch.randn(2, DT, generator=g)
    pixels, titles = torch.randn(3, 3, S, S, generator=g), torch.randn(3, DT, generator=g)
    before = model.score(model.encode_clips(frames, asr=asr), model.encode_products(pixels, titles))
    model.save_pretrained(tmp_path / "m")
    loaded = SGMN.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    after = loaded.score(loaded.encode_clips(frames, asr=asr), loaded.encode_products(pixels, titles))
    assert torch.equal(before, after)


def test_rerank_reorders_only_the_top_k_with_the_cross_encoder():
    model = tiny(rerank_top_k=3)
    with torch.no_grad():
        model.cross.prior_weight.fill_(0.0)  # the cross encoder's own order first; the prior below
    g = torch.Generator().manual_seed(6)
    clips = model.encode_clips(torch.randn(2, 2, 3, S, S, generator=g), asr=torch.randn(2, DT, generator=g),
                               keep_tokens=True)
    prods = model.encode_products(torch.randn(5, 3, S, S, generator=g), torch.randn(5, DT, generator=g),
                                  keep_tokens=True)
    base = model.score(clips, prods)
    reranked = model.rerank_scores(clips, prods, base)
    # the cross encoder's score of every (clip, product) pair, one pair at a time
    clip_tokens, keep, product_tokens = model._fuse_for_cross_encoder(
        clips.tokens, clips.frame_mask, clips.patch_mask, clips.text_vector, clips.text_mask,
        prods.tokens, prods.text_vector, prods.text_mask,
    )
    with torch.no_grad():
        cross = torch.tensor([[float(model.cross(product_tokens[j : j + 1], clip_tokens[i : i + 1], keep[i : i + 1]))
                               for j in range(5)] for i in range(2)])
        # with smf_score_prior the pair score is prior_weight * S + the cross encoder's output
        cross = cross + model.cross.prior_weight * base
    reordered = 0
    for i in range(2):
        top = base[i].topk(3).indices
        assert set(reranked[i].topk(3).indices.tolist()) == set(top.tolist())  # the top-K set is kept
        rest = [j for j in range(5) if j not in top.tolist()]
        torch.testing.assert_close(reranked[i, rest], base[i, rest])  # everything else untouched
        assert sorted(reranked[i, top].tolist()) == sorted(base[i, top].tolist())
        # inside the top-K the order is the cross encoder's
        by_cross = top[cross[i, top].argsort(descending=True)].tolist()
        assert reranked[i].topk(3).indices.tolist() == by_cross
        reordered += by_cross != top.tolist()
    assert reordered > 0  # not vacuous: for some clip the cross encoder's order differs from the base order
    # a dominant prior (smf_score_prior: prior_weight * S + cross) gives the first-stage order back
    with torch.no_grad():
        model.cross.prior_weight.fill_(1e4)
    torch.testing.assert_close(model.rerank_scores(clips, prods, base), base)


# ---- baselines ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["clip-meanpool", "rice-icl"])
def test_baselines_share_the_inference_api_and_have_no_text_branch(name):
    model = tiny(name)
    batch = make_batch()
    out = model(batch)
    assert set(out["losses"]) == {"icl"}
    out["loss"].backward()
    assert _modules_without_grad(model) == []
    clips = model.encode_clips(batch["frames"], batch["frame_mask"], asr=["ignored"] * 4)
    prods = model.encode_products(batch["product_pixels"], titles=["ignored"] * 4)
    assert isinstance(clips, ClipEmbeddings) and isinstance(prods, ProductEmbeddings)
    assert not clips.text_mask.any() and clips.attention is None
    torch.testing.assert_close(model.score(clips, prods), clips.embedding @ prods.embedding.t())
    # v is the normalised mean of the normalised frame CLS features
    cls = model.backbone(batch["frames"][0, :4], None)[:, 0]
    v0 = torch.nn.functional.normalize(torch.nn.functional.normalize(cls, dim=-1).mean(0), dim=0)
    torch.testing.assert_close(clips.embedding[0], v0, atol=1e-5, rtol=0)


def test_rice_positives_follow_product_ids_and_clip_meanpool_follows_the_batch_index():
    meanpool, rice = tiny("clip-meanpool"), tiny("rice-icl")
    rice.load_state_dict(meanpool.state_dict())
    batch = make_batch()  # labels [0, 1, 0, 2]: clips 0 and 2 show the same product
    assert not torch.isclose(meanpool(batch)["loss"], rice(batch)["loss"])
    distinct = dict(batch, labels=torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(meanpool(distinct)["loss"], rice(distinct)["loss"])


def test_tga_on_products_uses_the_title_and_only_then():
    model = tiny(tga_on_products=True)
    g = torch.Generator().manual_seed(7)
    pixels, titles = torch.randn(2, 3, S, S, generator=g), torch.randn(2, DT, generator=g)
    with_title = model.encode_products(pixels, titles)
    other_title = model.encode_products(pixels, torch.randn(2, DT, generator=g))
    no_title = model.encode_products(pixels, None)
    assert (with_title.embedding - other_title.embedding).abs().max() > 1e-6
    torch.testing.assert_close(with_title.attention.sum(-1), torch.ones(2))
    plain = tiny().encode_products(pixels, None)  # same weights (same seed) without product TGA
    torch.testing.assert_close(no_title.embedding, plain.embedding)
    model(make_batch())["loss"].backward()
    assert model.tga_product.query.weight.grad.abs().sum() > 0


def test_learnable_logit_scale_is_trained_and_saved(tmp_path):
    fixed = tiny(use_gci=False, use_smf=False)
    assert not any("logit_scale" in n for n, _ in fixed.named_parameters())
    assert not any("logit_scale" in k for k in fixed.state_dict())
    model = tiny(use_gci=False, use_smf=False, learnable_logit_scale=True, logit_scale=20.0)
    model(make_batch())["loss"].backward()
    assert model.logit_scale.log_scale.grad.abs() > 0
    torch.testing.assert_close(model.logit_scale(), torch.tensor(20.0))
    assert "logit_scale.log_scale" in model.state_dict()
