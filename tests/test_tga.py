import torch

from sgmn.model.tga import TextGuidedAttention, attention_grid


def _inputs(B=3, T=4, P=9, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(B, T, d, generator=g)
    patches = torch.randn(B, T, P, d, generator=g)
    text = torch.randn(B, d, generator=g)
    return cls, patches, text


def test_weights_sum_to_one_over_kept_patches_and_masked_get_zero():
    torch.manual_seed(0)
    tga = TextGuidedAttention(16)
    cls, patches, text = _inputs()
    mask = torch.rand(3, 4, 9) > 0.4
    mask[..., 0] = True  # at least one kept patch per frame
    _, attn = tga(cls, patches, text, patch_mask=mask)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 4))
    assert torch.all(attn[~mask] == 0)
    assert torch.all(attn[mask] > 0)


def test_masked_patch_content_does_not_matter():
    torch.manual_seed(0)
    tga = TextGuidedAttention(16)
    cls, patches, text = _inputs()
    mask = torch.ones(3, 4, 9, dtype=torch.bool)
    mask[:, :, 5:] = False
    out1, attn1 = tga(cls, patches, text, patch_mask=mask)
    patches2 = patches.clone()
    patches2[:, :, 5:] += 100.0 * torch.randn_like(patches2[:, :, 5:])
    out2, attn2 = tga(cls, patches2, text, patch_mask=mask)
    torch.testing.assert_close(out1, out2)
    torch.testing.assert_close(attn1, attn2)


def test_attention_moves_when_the_text_changes():
    torch.manual_seed(0)
    tga = TextGuidedAttention(16)
    cls, patches, text = _inputs()
    out1, attn1 = tga(cls, patches, text)
    out2, attn2 = tga(cls, patches, torch.randn(3, 16))
    assert (attn1 - attn2).abs().max() > 1e-3
    assert (out1 - out2).abs().max() > 1e-4


def test_text_query_selects_the_patch_that_matches_it():
    """Identity-like projections: the patch most aligned with the text gets the most weight."""
    d = 8
    tga = TextGuidedAttention(d)
    with torch.no_grad():
        for lin in (tga.query, tga.key):
            lin.weight.copy_(torch.eye(d) * 4.0)
            lin.bias.zero_()
    patches = torch.randn(1, 1, 4, d)
    text = patches[0, 0, 2].clone().unsqueeze(0)
    _, attn = tga(torch.zeros(1, 1, d), patches, text)
    assert attn[0, 0].argmax().item() == 2


def test_missing_text_leaves_cls_unchanged_and_gives_zero_map():
    torch.manual_seed(0)
    tga = TextGuidedAttention(16)
    cls, patches, text = _inputs()
    text_mask = torch.tensor([True, False, True])
    text = text.clone()
    text[1] = 0.0  # missing text arrives as a zero vector
    out, attn = tga(cls, patches, text, text_mask=text_mask)
    assert torch.isfinite(out).all() and torch.isfinite(attn).all()
    torch.testing.assert_close(out[1], cls[1])
    assert torch.all(attn[1] == 0)
    assert (out[0] - cls[0]).abs().max() > 0


def test_frame_without_kept_patches_gives_no_nan():
    tga = TextGuidedAttention(16)
    cls, patches, text = _inputs()
    mask = torch.ones(3, 4, 9, dtype=torch.bool)
    mask[0, 2] = False
    out, attn = tga(cls, patches, text, patch_mask=mask)
    assert torch.isfinite(out).all()
    assert torch.all(attn[0, 2] == 0)
    torch.testing.assert_close(out[0, 2], cls[0, 2])


def test_guided_feature_is_a_real_mix_of_cls_and_summary_and_every_parameter_gets_gradient():
    # The summary enters as a share alpha of the feature (0.5 at start), rescaled to the CLS norm:
    # a small per-channel gate on an added summary left v unchanged in training (issue 9).
    torch.manual_seed(0)
    tga = TextGuidedAttention(16)
    assert abs(tga.mix.item() - 0.5) < 1e-6
    cls, patches, text = _inputs()
    out, attn = tga(cls, patches, text)
    summary = tga.out(torch.einsum("btp,btpd->btd", attn, tga.value(tga.norm_patch(patches))))
    summary = summary / summary.norm(dim=-1, keepdim=True) * cls.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out, 0.5 * cls + 0.5 * summary)
    assert ((out - cls).norm(dim=-1) / cls.norm(dim=-1)).min() > 0.1
    # another text moves the map, and through it the feature, by a measurable amount
    out2, attn2 = tga(cls, patches, torch.randn(3, 16, generator=torch.Generator().manual_seed(5)))
    assert (attn2 - attn).abs().sum(-1).mean() > 0.05
    assert ((out2 - out).norm(dim=-1) / cls.norm(dim=-1)).mean() > 0.01
    out.pow(2).sum().backward()
    for name, p in tga.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_mix_init_is_checked():
    import pytest

    with pytest.raises(ValueError, match="mix_init"):
        TextGuidedAttention(16, mix_init=0.0)


def test_attention_grid_reshapes_square_maps():
    attn = torch.arange(2 * 9, dtype=torch.float).reshape(2, 9)
    grid = attention_grid(attn)
    assert grid.shape == (2, 3, 3)
    assert grid[1, 2, 0] == attn[1, 6]


# ---- tga_mode = "attention_bias": the text biases where the last layer's CLS looks ----------------
from sgmn.model.registry import create_model  # noqa: E402
from sgmn.model.tga import TextGuidedCLSBias  # noqa: E402


def _bias_models():
    torch.manual_seed(0)
    guided = create_model("sgmn-tiny", tga_mode="attention_bias")
    plain = create_model("sgmn-tiny", use_tga=False)
    missing, unexpected = plain.load_state_dict(
        {k: v for k, v in guided.state_dict().items() if not k.startswith("tga.")}, strict=False)
    assert not missing and not unexpected
    return guided.eval(), plain.eval()


def _clip_inputs(model, B=3, T=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    S = model.config.vision.image_size
    frames = torch.randn(B, T, 3, S, S, generator=g)
    frame_mask = torch.ones(B, T, dtype=torch.bool)
    frame_mask[1, 2:] = False
    asr = torch.randn(B, model.config.text.dim, generator=g)
    return frames, frame_mask, asr


def test_bias_map_sums_to_one_over_kept_patches_and_is_zero_without_text():
    torch.manual_seed(0)
    guide = TextGuidedCLSBias(width=24, dim=16)
    hidden, query = torch.randn(4, 10, 24), torch.randn(4, 16)
    keep = torch.rand(4, 9) > 0.4
    keep[:, 0] = True
    valid = torch.tensor([True, True, False, True])
    bias, attn = guide(hidden, query, valid, keep)
    torch.testing.assert_close(attn.sum(-1), valid.float())
    assert torch.all(attn[~keep] == 0) and torch.all(bias[~keep] == 0)
    assert torch.all(bias[2] == 0) and torch.all(attn[2] == 0)
    # the bias is beta * log(P_kept * map): 0 on average in log space, positive where the map peaks
    torch.testing.assert_close(bias[0][keep[0]], guide.strength * (attn[0][keep[0]] * keep[0].sum()).log())


def test_bias_changes_only_the_cls_token_and_zero_bias_changes_nothing():
    torch.manual_seed(0)
    model = create_model("sgmn-tiny")
    backbone = model.backbone.eval()
    S, N = backbone.config.image_size, backbone.config.num_tokens
    pixels = torch.randn(2, 3, S, S)
    plain = backbone(pixels)
    with torch.no_grad():
        zero, _ = backbone(pixels, None, lambda h: (torch.zeros(2, N - 1), torch.zeros(2, N - 1)))
        bias = torch.zeros(2, N - 1)
        bias[:, 3] = 8.0
        steered, _ = backbone(pixels, None, lambda h: (bias, torch.zeros(2, N - 1)))
    torch.testing.assert_close(zero, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steered[:, 1:], plain[:, 1:], atol=1e-5, rtol=1e-5)  # patch tokens untouched
    assert (steered[:, 0] - plain[:, 0]).abs().max() > 1e-2  # the CLS moved


def test_bias_does_not_unmask_a_masked_patch():
    torch.manual_seed(0)
    backbone = create_model("sgmn-tiny").backbone.eval()
    S, N = backbone.config.image_size, backbone.config.num_tokens
    pixels = torch.randn(1, 3, S, S)
    keep = torch.ones(1, N, dtype=torch.bool)
    keep[0, 5] = False
    bias = torch.zeros(1, N - 1)
    bias[0, 4] = 50.0  # a huge bias on the masked patch (token 5 = patch 4)
    other = pixels.clone()
    p = backbone.config.patch_size
    g = S // p
    r, c = divmod(4, g)
    other[..., r * p:(r + 1) * p, c * p:(c + 1) * p] += 10.0  # change only that patch's pixels
    with torch.no_grad():
        a, _ = backbone(pixels, keep, lambda h: (bias, torch.zeros(1, N - 1)))
        b, _ = backbone(other, keep, lambda h: (bias, torch.zeros(1, N - 1)))
    torch.testing.assert_close(a[0, 0], b[0, 0], atol=1e-5, rtol=1e-5)


def test_bias_mode_without_text_equals_the_model_without_tga_and_moves_v_with_text():
    guided, plain = _bias_models()
    frames, frame_mask, asr = _clip_inputs(guided)
    asr_mask = torch.tensor([True, True, False])
    with torch.no_grad():
        out = guided._encode_clip_tensors(frames, frame_mask, None, asr, asr_mask)
        ref = plain._encode_clip_tensors(frames, frame_mask, None, asr, asr_mask)
        guided.tga.strength.fill_(3.0)
        strong = guided._encode_clip_tensors(frames, frame_mask, None, asr, asr_mask)
    torch.testing.assert_close(out["v"][2], ref["v"][2])  # no ASR: exactly the unguided clip
    torch.testing.assert_close(strong["v"][2], ref["v"][2])
    assert (strong["v"][0] - ref["v"][0]).abs().max() > 1e-3  # with ASR the guide moves v
    attn = out["attention"]
    assert attn.shape == (3, 4, guided.config.vision.num_tokens - 1)
    torch.testing.assert_close(attn.sum(-1), (frame_mask & asr_mask[:, None]).float())  # padding: zeros


def test_bias_mode_every_guide_parameter_gets_gradient_and_saves_and_loads(tmp_path):
    guided, _ = _bias_models()
    guided.train()
    frames, frame_mask, asr = _clip_inputs(guided)
    out = guided._encode_clip_tensors(frames, frame_mask, None, asr, torch.ones(3, dtype=torch.bool))
    (out["v"].sum() + out["attention"].pow(2).sum()).backward()
    for name, param in guided.tga.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    guided.save_pretrained(tmp_path / "m")
    loaded = type(guided).from_pretrained(tmp_path / "m").eval()
    guided.eval()
    with torch.no_grad():
        a = guided._encode_clip_tensors(frames, frame_mask, None, asr, torch.ones(3, dtype=torch.bool))["v"]
        b = loaded._encode_clip_tensors(frames, frame_mask, None, asr, torch.ones(3, dtype=torch.bool))["v"]
    torch.testing.assert_close(a, b)
    assert loaded.config.tga_mode == "attention_bias"


def test_bias_gradients_stay_finite_with_masked_patches_and_missing_text():
    # strength * log(map) is -inf on a masked patch: dropping it after the product would still
    # send 0 * inf = NaN into strength's gradient (caught by the DDP test with detector boxes)
    torch.manual_seed(0)
    guide = TextGuidedCLSBias(width=24, dim=16)
    hidden, query = torch.randn(4, 10, 24, requires_grad=True), guide.text_query(torch.randn(4, 16))
    keep = torch.rand(4, 9) > 0.4
    keep[:, 0] = True
    keep[3] = False  # a frame with no kept patch
    bias, attn = guide(hidden, query, torch.tensor([True, False, True, True]), keep)
    (bias.sum() + attn.pow(2).sum()).backward()
    for name, param in guide.named_parameters():
        assert torch.isfinite(param.grad).all(), name
    assert torch.isfinite(hidden.grad).all()
    assert guide.strength.grad.abs() > 0


def test_a_model_saved_before_tga_mode_existed_loads_as_the_mix_it_was_trained_with(tmp_path):
    import json

    from sgmn.model.base import RetrievalModel

    torch.manual_seed(0)
    old = create_model("sgmn-tiny", tga_mode="mix").eval()
    old.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    for key in ("tga_mode", "tga_mix_init", "tga_bias_init"):  # fields the old code did not write
        config.pop(key)
    path.write_text(json.dumps(config))
    loaded = RetrievalModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.tga_mode == "mix" and isinstance(loaded.tga, TextGuidedAttention)
    frames, frame_mask, asr = _clip_inputs(old)
    mask = torch.ones(3, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(loaded._encode_clip_tensors(frames, frame_mask, None, asr, mask)["v"],
                                   old._encode_clip_tensors(frames, frame_mask, None, asr, mask)["v"])
    assert create_model("sgmn-tiny").config.tga_mode == "attention_bias"  # new models get the new default


# ---- tga_bias_layers: the bias on more than the last layer ------------------------------------------
def test_bias_over_more_layers_starts_earlier_and_zero_bias_still_changes_nothing():
    torch.manual_seed(0)
    backbone = create_model("sgmn-tiny").backbone.eval()
    S, N = backbone.config.image_size, backbone.config.num_tokens
    L = len(backbone.vision_model.encoder.layers)
    pixels = torch.randn(2, 3, S, S)
    with torch.no_grad():
        plain = backbone(pixels)
        seen = {}

        def guide_with(bias, k):
            def guide(hidden):
                seen[k] = hidden.clone()
                return bias, torch.zeros(2, N - 1)
            return guide

        zero, _ = backbone(pixels, None, guide_with(torch.zeros(2, N - 1), "zero"), guide_layers=L)
        bias = torch.zeros(2, N - 1)
        bias[:, 3] = 8.0
        last, _ = backbone(pixels, None, guide_with(bias, 1), guide_layers=1)
        two, _ = backbone(pixels, None, guide_with(bias, 2), guide_layers=2)
    torch.testing.assert_close(zero, plain, atol=1e-5, rtol=1e-5)
    # the guide reads the tokens entering the first biased layer: the embeddings when all are biased
    tower = backbone.vision_model
    with torch.no_grad():
        embedded = tower.pre_layrnorm(tower.embeddings(pixels))
    torch.testing.assert_close(seen["zero"], embedded)
    assert (seen[1] - seen[2]).abs().max() > 1e-3
    # biasing two layers steers the CLS further, and the patch tokens of the last layer now read a
    # steered CLS, so they move too (with one layer they are exactly the unguided ones)
    torch.testing.assert_close(last[:, 1:], plain[:, 1:], atol=1e-5, rtol=1e-5)
    assert (two[:, 1:] - plain[:, 1:]).abs().max() > 1e-3
    assert (two[:, 0] - last[:, 0]).abs().max() > 1e-3


def test_bias_layers_out_of_range_are_refused():
    import pytest

    backbone = create_model("sgmn-tiny").backbone.eval()
    S, N = backbone.config.image_size, backbone.config.num_tokens
    L = len(backbone.vision_model.encoder.layers)
    guide = lambda h: (torch.zeros(1, N - 1), torch.zeros(1, N - 1))  # noqa: E731
    for bad in (0, L + 1):
        with pytest.raises(ValueError, match="guide_layers"):
            backbone(torch.randn(1, 3, S, S), None, guide, guide_layers=bad)
    with pytest.raises(ValueError, match="tga_bias_layers"):
        create_model("sgmn-tiny", tga_bias_layers=0)


def test_bias_on_every_layer_without_text_equals_no_tga_and_moves_v_more_than_on_the_last():
    torch.manual_seed(0)
    deep = create_model("sgmn-tiny", tga_bias_layers=3).eval()
    shallow = create_model("sgmn-tiny").eval()
    plain = create_model("sgmn-tiny", use_tga=False).eval()
    state = deep.state_dict()
    shallow.load_state_dict(state)
    plain.load_state_dict({k: v for k, v in state.items() if not k.startswith("tga.")})
    frames, frame_mask, asr = _clip_inputs(deep)
    asr_mask = torch.tensor([True, True, False])
    with torch.no_grad():
        for m in (deep, shallow):
            m.tga.strength.fill_(3.0)
        v_deep = deep._encode_clip_tensors(frames, frame_mask, None, asr, asr_mask)["v"]
        v_shallow = shallow._encode_clip_tensors(frames, frame_mask, None, asr, asr_mask)["v"]
        v_plain = plain._encode_clip_tensors(frames, frame_mask, None, asr, asr_mask)["v"]
    torch.testing.assert_close(v_deep[2], v_plain[2])  # no ASR: exactly the model without TGA
    moved = lambda v: (v[:2] - v_plain[:2]).norm(dim=-1)  # noqa: E731
    assert torch.all(moved(v_deep) > moved(v_shallow))
    assert deep.tga.layers == 3 and deep.config.tga_bias_layers == 3
