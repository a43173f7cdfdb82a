"""VisionBackbone: the patch mask works inside attention, and without a mask the tower is exactly
the transformers model."""

import pytest
import torch
import transformers

from sgmn.model.backbone import VisionBackbone
from sgmn.model.config import VisionConfig

TINY = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2)  # 4x4 grid, N = 17


def tiny_backbone(kind="clip", seed=0) -> VisionBackbone:
    torch.manual_seed(seed)
    return VisionBackbone(VisionConfig(kind=kind, **TINY), embed_dim=16).eval()


def patch_slice(index: int, patch: int = 8, grid: int = 4):
    """Pixel rows/cols of patch token ``index`` (1-based: token 0 is CLS)."""
    r, c = divmod(index - 1, grid)
    return slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch)


@pytest.mark.parametrize("kind", ["clip", "chinese-clip"])
def test_masked_patches_cannot_influence_kept_tokens(kind):
    backbone = tiny_backbone(kind)
    pixels = torch.randn(2, 3, 32, 32)
    keep = torch.ones(2, 17, dtype=torch.bool)
    keep[0, [2, 7, 16]] = False
    keep[1, 9:] = False
    perturbed = pixels.clone()
    for image in range(2):
        for token in (~keep[image]).nonzero().flatten().tolist():
            rows, cols = patch_slice(token)
            perturbed[image, :, rows, cols] = torch.randn(3, 8, 8) * 5
    with torch.no_grad():
        out = backbone(pixels, keep)
        out_perturbed = backbone(perturbed, keep)
        unmasked = backbone(pixels)
    assert out.shape == (2, 17, 16)
    torch.testing.assert_close(out[keep], out_perturbed[keep], atol=1e-5, rtol=0)
    # the perturbation is real (masked tokens themselves change) ...
    assert (out[~keep] - out_perturbed[~keep]).abs().max() > 1e-2
    # ... and the mask is real (kept tokens differ from the unmasked forward)
    assert (out[:, 0] - unmasked[:, 0]).abs().max() > 1e-4


def test_masked_output_does_not_depend_on_attention_implementation():
    backbone = tiny_backbone()
    pixels = torch.randn(3, 3, 32, 32)
    keep = torch.rand(3, 17) > 0.4
    keep[:, 0] = True
    with torch.no_grad():
        sdpa = backbone(pixels, keep)
        backbone.vision_model.config._attn_implementation = "eager"
        eager = backbone(pixels, keep)
    torch.testing.assert_close(sdpa[keep], eager[keep], atol=1e-5, rtol=0)


def test_without_mask_equals_the_plain_transformers_model():
    backbone = tiny_backbone()
    pixels = torch.randn(2, 3, 32, 32)
    hf = transformers.CLIPVisionModel(backbone.vision_model.config).eval()
    hf.load_state_dict(backbone.vision_model.state_dict())
    with torch.no_grad():
        ours = backbone(pixels)
        all_kept = backbone(pixels, torch.ones(2, 17, dtype=torch.bool))
        reference = hf(pixel_values=pixels)
        expected_cls = backbone.proj(reference.pooler_output)
        expected_tokens = backbone.proj(hf.post_layernorm(reference.last_hidden_state))
    # same operations in the same order; only the batching of LayerNorm/Linear rows differs
    torch.testing.assert_close(ours[:, 0], expected_cls, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours, expected_tokens, atol=1e-6, rtol=0)
    assert torch.equal(ours, all_kept)


def test_cls_must_be_kept_and_mask_shape_checked():
    backbone = tiny_backbone()
    pixels = torch.randn(1, 3, 32, 32)
    keep = torch.ones(1, 17, dtype=torch.bool)
    keep[0, 0] = False
    with pytest.raises(ValueError, match="CLS"):
        backbone(pixels, keep)
    with pytest.raises(ValueError, match="keep_mask must be"):
        backbone(pixels, torch.zeros(1, 10, dtype=torch.bool))


def test_freeze_stops_gradients_to_the_tower_only():
    torch.manual_seed(0)
    backbone = VisionBackbone(VisionConfig(freeze=True, **TINY), embed_dim=16)
    assert not any(p.requires_grad for p in backbone.vision_model.parameters())
    assert backbone.proj.weight.requires_grad
