"""VisionBackbone: the patch mask works inside attention, and the plain-torch tower
(sgmn/model/vit.py) computes exactly what transformers' CLIP / Chinese-CLIP vision models compute,
from the same initial weights."""

import inspect

import pytest
import torch
import transformers

from sgmn.model.backbone import VisionBackbone, _hf_vision_config, _innermost_vision, saved_weights_follow
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


HF_VISION = {"clip": "CLIPVisionModel", "chinese-clip": "ChineseCLIPVisionModel"}


def transformers_tower(backbone: VisionBackbone, attn: str = "sdpa"):
    """transformers' vision model holding the backbone's weights."""
    hf_config = _hf_vision_config(backbone.config)
    hf_config._attn_implementation = attn
    hf = getattr(transformers, HF_VISION[backbone.config.kind])(hf_config).eval()
    _innermost_vision(hf).load_state_dict(backbone.vision_model.state_dict(), strict=True)
    return hf


@pytest.mark.parametrize("kind", ["clip", "chinese-clip"])
def test_fresh_backbone_starts_from_the_transformers_init(kind):
    """Same seed -> the same initial tower as transformers' model and the same proj as before the
    tower became plain torch, so seeded training runs are unchanged."""
    backbone = tiny_backbone(kind, seed=3)
    next_draw = torch.rand(4)
    torch.manual_seed(3)
    hf = getattr(transformers, HF_VISION[kind])(_hf_vision_config(backbone.config))
    proj = torch.nn.Linear(32, 16, bias=False)
    torch.nn.init.normal_(proj.weight, std=32**-0.5)
    assert torch.equal(torch.rand(4), next_draw)  # the modules built after it draw the same numbers
    reference = _innermost_vision(hf).state_dict()
    ours = backbone.vision_model.state_dict()
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name
    assert torch.equal(backbone.proj.weight, proj.weight)


def test_rebuilding_for_saved_weights_skips_transformers(monkeypatch):
    def fail(self):
        raise AssertionError("transformers' init ran although saved weights follow")

    monkeypatch.setattr(VisionBackbone, "_init_like_transformers", fail)
    with saved_weights_follow():
        VisionBackbone(VisionConfig(**TINY), embed_dim=16)
    with pytest.raises(AssertionError, match="saved weights follow"):
        VisionBackbone(VisionConfig(**TINY), embed_dim=16)


@pytest.mark.parametrize("kind", ["clip", "chinese-clip"])
def test_tower_equals_the_transformers_model(kind):
    backbone = tiny_backbone(kind)
    pixels = torch.randn(2, 3, 32, 32)
    hf = transformers_tower(backbone)
    with torch.no_grad():
        ours = backbone(pixels)
        all_kept = backbone(pixels, torch.ones(2, 17, dtype=torch.bool))
        reference = hf(pixel_values=pixels)
        expected_cls = backbone.proj(reference.pooler_output)
        expected_tokens = backbone.proj(_innermost_vision(hf).post_layernorm(reference.last_hidden_state))
    # the same operations in the same order: equal up to the batching of LayerNorm/Linear rows
    torch.testing.assert_close(ours[:, 0], expected_cls, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours, expected_tokens, atol=1e-6, rtol=0)
    assert torch.equal(ours, all_kept)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_masked_tower_equals_transformers_layers_under_the_same_mask(attn):
    """The mask semantics (a masked patch is never a key) are those of transformers' attention,
    boolean for SDPA, additive for eager."""
    backbone = tiny_backbone()
    pixels = torch.randn(3, 3, 32, 32)
    keep = torch.rand(3, 17) > 0.4
    keep[:, 0] = True
    tower = _innermost_vision(transformers_tower(backbone, attn))
    keys = keep[:, None, None, :].expand(3, 1, 17, 17)
    mask = keys if attn == "sdpa" else torch.zeros(keys.shape).masked_fill(~keys, torch.finfo(torch.float32).min)
    with torch.no_grad():
        ours = backbone(pixels, keep)
        hidden = tower.pre_layrnorm(tower.embeddings(pixels))
        for layer in tower.encoder.layers:
            old_signature = "causal_attention_mask" in inspect.signature(layer.forward).parameters  # 4.x
            out = layer(hidden, mask, **({"causal_attention_mask": None} if old_signature else {}))
            hidden = out[0] if isinstance(out, tuple) else out
        expected = backbone.proj(tower.post_layernorm(hidden))
    torch.testing.assert_close(ours[keep], expected[keep], atol=1e-5, rtol=0)


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
