"""Mixed precision: every registered variant trains a few steps under CPU bf16 and fp16 autocast
with every component on (TGA on clips and products, TDB, GCI, SMF, text, box and vi terms), with
finite losses and gradients, and the half-precision kernels really run.

The ViT-B/32 variants are shrunk to tiny sizes (the code paths that depend on the dtype are the
same; a real ViT-B/32 step is what benchmarks/gpu_check.py runs on a GPU)."""

from __future__ import annotations

import pytest
import torch

from sgmn.model import create_model
from sgmn.model.registry import list_models

from test_model import make_batch, tiny

torch.set_num_threads(1)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
EVERYTHING_ON = {
    "use_tga": True, "use_tdb": True, "use_gci": True, "use_smf": True, "use_text": True,
    "tga_on_products": True, "losses.vi": 0.5, "losses.box": 0.3,
}


def _variant(name: str):
    overrides = dict(EVERYTHING_ON) if create_model(name).config.architecture == "sgmn" else {}
    return tiny(name, **{**overrides, "text.dim": 384})


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", list_models())
def test_every_variant_trains_under_cpu_autocast(name, precision):
    _train_three_steps(_variant(name), name, precision)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("tga_mode", ["attention_bias", "mix"])
def test_both_tga_modes_train_under_cpu_autocast(tga_mode, precision):
    model = tiny("sgmn-tiny", **{**EVERYTHING_ON, "text.dim": 384, "tga_mode": tga_mode})
    _train_three_steps(model, f"sgmn-tiny/{tga_mode}", precision)


def _train_three_steps(model, name, precision):
    dtype = DTYPES[precision]
    model.train()
    seen = set()
    model.backbone.proj.register_forward_hook(lambda m, args, out: seen.add(out.dtype))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # fp16 needs loss scaling (a GradScaler, as the Trainer uses); bf16 does not
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16", init_scale=2.0**8)
    batch = make_batch(B=8)
    for _ in range(3):
        with torch.autocast("cpu", dtype=dtype):
            out = model(batch)
        loss = out["loss"]
        assert loss.dtype == torch.float32  # the batch-wide losses run in full precision
        assert torch.isfinite(loss), (name, precision, {k: float(v) for k, v in out["losses"].items()})
        for term, value in out["losses"].items():
            assert torch.isfinite(value), f"{name}/{precision}: loss term {term} is {float(value)}"
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert len(grads) > 0.8 * sum(1 for p in model.parameters() if p.requires_grad)
        for n, g in grads.items():
            assert torch.isfinite(g).all(), f"{name}/{precision}: gradient of {n} is not finite"
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    assert seen == {dtype}  # the ViT really ran in half precision
    if model.config.architecture == "sgmn":
        assert set(out["losses"]) == {"txt", "base", "gnn", "reg", "pair", "vi", "box"}


def test_half_precision_losses_match_fp32_closely():
    # Not only finite: the bf16 forward computes the same losses as fp32 up to rounding.
    model = _variant("sgmn-tiny").train()
    batch = make_batch(B=8)
    with torch.no_grad():
        ref = model(batch)["losses"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(batch)["losses"]
    assert ref.keys() == half.keys()
    for k in ref:
        assert abs(float(half[k]) - float(ref[k])) <= 0.05 * abs(float(ref[k])) + 0.02, (k, float(half[k]), float(ref[k]))


def test_the_cuda_path_for_padded_frames_equals_selecting_real_frames():
    # On CUDA the backbone runs on every frame and the padding is zeroed (no host sync); on the
    # CPU the real frames are selected. Both give the same tokens and gradients (run here on CPU).
    from sgmn.model.sgmn import run_backbone_on_real_frames

    model = tiny(**{"vision.layers": 2})
    batch = make_batch(B=4)  # clips with 4, 3, 2 and 1 real frames
    patch_mask = batch["patch_mask"].clone()
    patch_mask[1, 3] = False  # a padded frame whose patch mask is empty
    results = []
    for compute_padding in (False, True):
        frames = batch["frames"].clone().requires_grad_()
        tokens = run_backbone_on_real_frames(model.backbone, frames, batch["frame_mask"], patch_mask, compute_padding=compute_padding)
        (tokens * torch.linspace(-1, 1, tokens.shape[-1])).sum().backward()
        results.append((tokens.detach(), frames.grad))
    (selected, g_selected), (computed, g_computed) = results
    assert torch.all(computed[~batch["frame_mask"]] == 0)
    torch.testing.assert_close(computed, selected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_computed, g_selected, rtol=1e-5, atol=1e-6)


def test_the_cuda_path_with_a_text_guide_equals_selecting_real_frames():
    from sgmn.model.sgmn import run_backbone_on_real_frames

    model = tiny(**{"vision.layers": 2, "tga_mode": "attention_bias"})
    batch = make_batch(B=4)
    patch_mask = batch["patch_mask"].clone()
    patch_mask[1, 3] = False
    query = model.tga.text_query(model.fc_asr(batch["asr_vec"]))
    has_text = torch.tensor([True, False, True, True])
    outs = [run_backbone_on_real_frames(model.backbone, batch["frames"], batch["frame_mask"], patch_mask,
                                        compute_padding=c, guide=(model.tga, query, has_text)) for c in (False, True)]
    (tok_s, map_s), (tok_c, map_c) = outs
    assert torch.all(map_c[~batch["frame_mask"]] == 0) and torch.all(map_c[1] == 0)
    torch.testing.assert_close(tok_c, tok_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(map_c, map_s, rtol=1e-5, atol=1e-6)
