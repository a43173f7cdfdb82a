"""The variant registry: names, sizes, overrides, forward/backward of every variant, load_model."""

import pytest
import torch

import sgmn
from sgmn.errors import DataError
from sgmn.model import create_model, get_config, list_models, load_model
from sgmn.model.baselines import CLIPMeanPool, RICEInstanceContrast
from sgmn.model.sgmn import SGMN

EXPECTED = {"sgmn-vitb32", "sgmn-tiny", "clip-meanpool", "rice-icl", "clip-meanpool-vitb32", "rice-icl-vitb32"}


def small_batch(config, B=3, T=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    S, N, Dt = config.vision.image_size, config.vision.num_tokens, config.text.dim
    return {
        "frames": torch.randn(B, T, 3, S, S, generator=g),
        "frame_mask": torch.tensor([[True, True], [True, False], [True, True]])[:B],
        "patch_mask": torch.ones(B, T, N, dtype=torch.bool),
        "asr_vec": torch.randn(B, Dt, generator=g),
        "asr_mask": torch.ones(B, dtype=torch.bool),
        "product_pixels": torch.randn(B, 3, S, S, generator=g),
        "title_vec": torch.randn(B, Dt, generator=g),
        "title_mask": torch.ones(B, dtype=torch.bool),
        "labels": torch.tensor([0, 1, 2])[:B],
    }


def test_all_variants_are_listed():
    assert EXPECTED <= set(list_models())


def test_paper_and_tiny_sizes():
    paper = get_config("sgmn-vitb32")
    v = paper.vision
    assert (v.width, v.layers, v.heads, v.patch_size, v.image_size) == (768, 12, 12, 32, 224)
    assert (paper.embed_dim, paper.num_frames, v.num_tokens) == (512, 10, 50)
    tiny = get_config("sgmn-tiny")
    assert tiny.vision.grid == 4 and tiny.embed_dim % tiny.gci_heads == 0
    assert tiny.embed_dim % tiny.cross_heads == 0 and tiny.embed_dim % tiny.temporal_heads == 0
    assert tiny.vision.width % tiny.vision.heads == 0
    # the baselines share the tiny backbone sizes and switch every SGMN component off
    for name in ("clip-meanpool", "rice-icl"):
        base = get_config(name)
        assert base.vision == tiny.vision and base.embed_dim == tiny.embed_dim
        assert not (base.use_text or base.use_tga or base.use_tdb or base.use_gci or base.use_smf)
    assert get_config("rice-icl-vitb32").vision == paper.vision


def test_vitb32_backbone_has_the_openai_parameter_count():
    torch.manual_seed(0)
    model = create_model("sgmn-vitb32")
    # OpenAI CLIP ViT-B/32 visual tower incl. the 768->512 projection: 87,849,216 parameters
    assert sum(p.numel() for p in model.backbone.parameters()) == 87_849_216


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_variant_builds_and_trains_one_step(name):
    torch.manual_seed(0)
    overrides = {"vision.layers": 1} if name.endswith("vitb32") else {}
    model = create_model(name, **overrides)
    expected_class = {"sgmn": SGMN, "clip-meanpool": CLIPMeanPool, "rice-icl": RICEInstanceContrast}
    assert type(model) is expected_class[model.config.architecture]
    assert model.config.name == name
    batch = small_batch(model.config)
    out = model(batch)
    assert torch.isfinite(out["loss"]) and out["losses"]
    out["loss"].backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    clips = model.encode_clips(batch["frames"], batch["frame_mask"], asr=batch["asr_vec"])
    prods = model.encode_products(batch["product_pixels"], titles=batch["title_vec"])
    assert model.score(clips, prods).shape == (3, 3)


def test_overrides_dotted_and_plain():
    model = create_model("sgmn-tiny", use_gci=False, text_weight=0.25, **{"vision.layers": 2, "losses.reg": 3.0})
    assert model.config.vision.layers == 2 and len(model.backbone.vision_model.encoder.layers) == 2
    assert model.config.use_gci is False and model.graph is None
    assert model.config.text_weight == 0.25 and model.config.losses.reg == 3.0
    # the package-level entry point goes through the same registry
    assert sgmn.create_model("rice-icl").config.architecture == "rice-icl"


def test_unknown_names_and_fields_are_refused():
    with pytest.raises(ValueError, match="sgmn-tiny"):  # lists what exists
        create_model("sgmn-huge")
    with pytest.raises(ValueError, match="vision.depth"):
        create_model("sgmn-tiny", **{"vision.depth": 3})


def _scores(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    S, Dt = model.config.vision.image_size, model.config.text.dim
    clips = model.encode_clips(torch.randn(2, 2, 3, S, S, generator=g), asr=torch.randn(2, Dt, generator=g))
    prods = model.encode_products(torch.randn(3, 3, S, S, generator=g), titles=torch.randn(3, Dt, generator=g))
    return model.score(clips, prods)


def test_load_model_from_a_saved_folder_and_a_run_folder(tmp_path):
    torch.manual_seed(0)
    model = create_model("sgmn-tiny", **{"vision.layers": 1})
    other = create_model("sgmn-tiny", **{"vision.layers": 1})
    model.save_pretrained(tmp_path / "saved")
    assert torch.equal(_scores(load_model(tmp_path / "saved")), _scores(model))

    run = tmp_path / "run"
    other.save_pretrained(run / "last")
    assert torch.equal(_scores(load_model(run)), _scores(other))  # only last/ -> last/
    model.save_pretrained(run / "best")
    assert torch.equal(_scores(load_model(run)), _scores(model))  # best/ wins over last/

    baseline = create_model("rice-icl")
    baseline.save_pretrained(tmp_path / "rice")
    loaded = load_model(tmp_path / "rice")
    assert isinstance(loaded, RICEInstanceContrast)
    assert torch.equal(_scores(loaded), _scores(baseline))


def test_load_model_refuses_what_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_model(tmp_path / "empty")
    with pytest.raises(DataError, match="missing"):
        load_model(tmp_path / "missing")
    bad = tmp_path / "pytorch_model.bin.1"
    bad.write_text("not a checkpoint")
    with pytest.raises(DataError, match="pytorch_model.bin.1"):
        load_model(bad)


def test_load_model_imports_a_published_checkpoint_with_its_scores(tmp_path):
    # the random published-layout checkpoint and the functional re-implementation of the
    # published inference both come from the checkpoint importer's tests
    from test_checkpoint_import import inputs, published_state_dict, ref_scores

    sd = published_state_dict()
    path = tmp_path / "pytorch_model.bin.3"
    torch.save(sd, path)
    model = load_model(path)
    assert isinstance(model, SGMN) and model.import_report.missing == []
    frames, frame_mask, patch_mask, asr, images, titles = inputs()
    clips = model.encode_clips(frames, frame_mask, patch_mask, asr=asr, asr_mask=torch.ones(2, dtype=torch.bool))
    prods = model.encode_products(images, titles=titles, title_mask=torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(model.score(clips, prods), ref_scores(sd, *inputs()), atol=1e-4, rtol=0)
