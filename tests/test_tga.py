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
