"""Checkpoint import: a published-code ``pytorch_model.bin.<epoch>``, OpenAI CLIP ``.pt`` files
(plain state dict and TorchScript archive) and Hugging Face CLIP folders, each checked against an
independent computation; plus our own save/load.

The reference below re-implements the published SGMN inference with torch functional ops on the
raw state dict (published-checkpoint.md), so the imported modules are compared with the published
computation, not with themselves.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from sgmn.errors import DataError
from sgmn.model.backbone import VisionBackbone, openai_visual_to_hf
from sgmn.model.checkpoint import (
    import_published_checkpoint,
    load_state,
    published_config_from_state_dict,
    save_model,
)
from sgmn.model.config import SGMNConfig
from sgmn.model.temporal import TemporalDifferenceBlock
from sgmn.model.transformer import ResidualAttentionBlock

WIDTH, LAYERS, PATCH, IMAGE = 128, 2, 16, 32  # vision: 2 heads of 64, 2x2 grid, N = 5
D, TEXT_DIM, T, MAX_POS, TEMPORAL_HEADS = 32, 24, 4, 20, 8
N = 1 + (IMAGE // PATCH) ** 2


# ---- a random checkpoint with the published key names -------------------------------------------


def published_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def rnd(*shape, scale):
        return torch.randn(*shape, generator=gen) * scale

    def layer_norm(prefix, n):
        sd[prefix + ".weight"] = 1 + rnd(n, scale=0.1)
        sd[prefix + ".bias"] = rnd(n, scale=0.1)

    def block(prefix, w):
        sd[prefix + "attn.in_proj_weight"] = rnd(3 * w, w, scale=w**-0.5)
        sd[prefix + "attn.in_proj_bias"] = rnd(3 * w, scale=0.1)
        sd[prefix + "attn.out_proj.weight"] = rnd(w, w, scale=w**-0.5)
        sd[prefix + "attn.out_proj.bias"] = rnd(w, scale=0.1)
        layer_norm(prefix + "ln_1", w)
        sd[prefix + "mlp.c_fc.weight"] = rnd(4 * w, w, scale=w**-0.5)
        sd[prefix + "mlp.c_fc.bias"] = rnd(4 * w, scale=0.1)
        sd[prefix + "mlp.c_proj.weight"] = rnd(w, 4 * w, scale=(4 * w) ** -0.5)
        sd[prefix + "mlp.c_proj.bias"] = rnd(w, scale=0.1)
        layer_norm(prefix + "ln_2", w)

    v = "clip.visual."
    sd[v + "class_embedding"] = rnd(WIDTH, scale=1.0)
    sd[v + "positional_embedding"] = rnd(N, WIDTH, scale=0.5)
    sd[v + "proj"] = rnd(WIDTH, D, scale=WIDTH**-0.5)
    sd[v + "conv1.weight"] = rnd(WIDTH, 3, PATCH, PATCH, scale=(3 * PATCH * PATCH) ** -0.5)
    layer_norm(v + "ln_pre", WIDTH)
    for i in range(LAYERS):
        block(f"{v}transformer.resblocks.{i}.", WIDTH)
    layer_norm(v + "ln_post", WIDTH)
    # the unused CLIP text tower
    sd["clip.positional_embedding"] = rnd(77, D, scale=0.01)
    sd["clip.text_projection"] = rnd(D, D, scale=0.1)
    sd["clip.logit_scale"] = torch.tensor(4.6)
    sd["clip.token_embedding.weight"] = rnd(50, D, scale=0.02)
    layer_norm("clip.ln_final", D)
    block("clip.transformer.resblocks.0.", D)
    # inference heads
    for name in ("fc_asr", "fc_title"):
        sd[name + ".weight"] = rnd(D, TEXT_DIM, scale=TEXT_DIM**-0.5)
        sd[name + ".bias"] = rnd(D, scale=0.1)
    sd["frame_position_embeddings.weight"] = rnd(MAX_POS, D, scale=0.5)
    sd["type_position_embeddings.weight"] = rnd(2, D, scale=0.5)
    block("frame2t_attention.resblocks.0.", D)
    layer_norm("trans_layernorm", D)
    for i in range(2):
        block(f"transformerClip.resblocks.{i}.", D)
    # training-only / dead parts (one or two tensors of each)
    sd["loss_graph.gnn.layers.0.linear1.weight"] = rnd(D, D, scale=0.1)
    sd["loss_graph.adj_model.adj_learning.mlp_t2i.0.weight"] = rnd(10, 10, scale=0.1)
    sd["cross.pooler.dense.weight"] = rnd(D, D, scale=0.1)
    sd["cross.transformer.resblocks.0.ln_1.weight"] = rnd(D, scale=0.1)
    sd["fusion_layer.self_attention.scale"] = rnd(1, scale=1.0)
    sd["similarity_dense.weight"] = rnd(1, D, scale=0.1)
    sd["cat2emb.0.weight"] = rnd(D, 2 * D, scale=0.1)
    sd["cat2emb_trans.self_attention.fc_q.weight"] = rnd(D, D, scale=0.1)
    return sd


# ---- the published inference computation, written out with functional ops ----------------------


def ref_block(x, sd, p, heads, eps, keep=None):
    """Pre-LN block with packed in_proj, QuickGELU MLP and the published additive -1e6 key mask."""
    b, length, w = x.shape
    h = F.layer_norm(x, (w,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps)
    q, k, v = F.linear(h, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, length, heads, w // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(w // heads)
    if keep is not None:
        scores = scores + (1.0 - keep.float())[:, None, None, :] * -1e6
    attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, length, w)
    x = x + F.linear(attended, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"])
    h = F.layer_norm(x, (w,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps)
    h = F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
    h = h * torch.sigmoid(1.702 * h)
    return x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])


def ref_visual(sd, pixels, keep=None, prefix="clip.visual.", heads=WIDTH // 64):
    """OpenAI CLIP ViT: all tokens after ln_post @ proj, (M, N, d)."""
    p = prefix
    x = F.conv2d(pixels, sd[p + "conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = sd[p + "class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd[p + "positional_embedding"]
    x = F.layer_norm(x, (WIDTH,), sd[p + "ln_pre.weight"], sd[p + "ln_pre.bias"], 1e-5)
    for i in range(LAYERS):
        x = ref_block(x, sd, f"{p}transformer.resblocks.{i}.", heads, 1e-5, keep)
    x = F.layer_norm(x, (WIDTH,), sd[p + "ln_post.weight"], sd[p + "ln_post.bias"], 1e-5)
    return x @ sd[p + "proj"]


def ref_tdb(sd, f, m):
    """published-checkpoint.md, "TDB at inference", one token at a time."""
    steps = f.shape[1]
    pos = sd["frame_position_embeddings.weight"]
    typ = sd["type_position_embeddings.weight"]
    m = m.float()
    d = torch.stack([f[:, i + 1] - f[:, i] + pos[i + 1] for i in range(steps - 1)], dim=1)
    d = ref_block(d, sd, "frame2t_attention.resblocks.0.", TEMPORAL_HEADS, 1e-12, m[:, 1:])
    d = 2 * torch.sigmoid(F.layer_norm(d, (D,), sd["trans_layernorm.weight"], sd["trans_layernorm.bias"], 1e-12)) - 1
    tokens, masks = [], []
    for t in range(steps):
        tokens.append(f[:, t] + pos[t] + typ[1])
        masks.append(m[:, t])
        if t < steps - 1:
            tokens.append(d[:, t] + pos[t] + typ[0])
            masks.append(m[:, t])
    x, mask = torch.stack(tokens, dim=1), torch.stack(masks, dim=1)
    for i in range(2):
        x = ref_block(x, sd, f"transformerClip.resblocks.{i}.", TEMPORAL_HEADS, 1e-12, mask)
    return x[:, 0::2] + f


def l2n(x):
    return x / x.norm(dim=-1, keepdim=True)


def ref_scores(sd, frames, frame_mask, patch_mask, asr, images, titles):
    b, steps = frames.shape[:2]
    f = ref_visual(sd, frames.flatten(0, 1), patch_mask.flatten(0, 1))[:, 0].reshape(b, steps, D)
    f = l2n(ref_tdb(sd, f, frame_mask))
    w = frame_mask.float().unsqueeze(-1)
    v = l2n((f * w).sum(1) / w.sum(1))
    p = l2n(ref_visual(sd, images)[:, 0])
    a = l2n(F.linear(asr, sd["fc_asr.weight"], sd["fc_asr.bias"]))
    t = l2n(F.linear(titles, sd["fc_title.weight"], sd["fc_title.bias"]))
    return v @ p.T + 0.5 * a @ t.T


# ---- our side -----------------------------------------------------------------------------------


class PublishedLayout(nn.Module):
    """The four parts the importer fills, named as in SGMN, plus one training-only extra."""

    def __init__(self, config: SGMNConfig):
        super().__init__()
        self.config = config
        self.backbone = VisionBackbone(config.vision, config.embed_dim)
        self.temporal = TemporalDifferenceBlock(
            config.embed_dim,
            config.temporal_heads,
            config.temporal_layers,
            config.max_position,
            config.temporal_ln_eps,
            published_difference_mask=config.temporal_published_mask,
        )
        self.fc_asr = nn.Linear(config.text.dim, config.embed_dim)
        self.fc_title = nn.Linear(config.text.dim, config.embed_dim)
        self.relevance_head = nn.Linear(4, 1)  # stands for GCI / SMF modules the checkpoint cannot fill

    def scores(self, frames, frame_mask, patch_mask, asr, images, titles):
        b, steps = frames.shape[:2]
        f = self.backbone(frames.flatten(0, 1), patch_mask.flatten(0, 1))[:, 0].reshape(b, steps, -1)
        f = F.normalize(self.temporal(f, frame_mask), dim=-1)
        w = frame_mask.float().unsqueeze(-1)
        v = F.normalize((f * w).sum(1) / w.sum(1), dim=-1)
        p = F.normalize(self.backbone(images)[:, 0], dim=-1)
        a = F.normalize(self.fc_asr(asr), dim=-1)
        t = F.normalize(self.fc_title(titles), dim=-1)
        return v @ p.T + self.config.text_weight * a @ t.T


def inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randn(2, T, 3, IMAGE, IMAGE, generator=gen)
    frame_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    frames[0, 3] = 0.0  # padding, as the published data loader leaves it
    patch_mask = torch.ones(2, T, N, dtype=torch.bool)
    patch_mask[0, 1, [2, 4]] = False
    patch_mask[1, 0, 1:] = torch.tensor([True, False, False, True])
    patch_mask[1, 2, 3] = False
    asr = torch.randn(2, TEXT_DIM, generator=gen)
    images = torch.randn(3, 3, IMAGE, IMAGE, generator=gen)
    titles = torch.randn(3, TEXT_DIM, generator=gen)
    return frames, frame_mask, patch_mask, asr, images, titles


def test_published_config_is_read_off_the_shapes():
    config = published_config_from_state_dict(published_state_dict())
    assert config.architecture == "sgmn"
    assert (config.vision.width, config.vision.layers, config.vision.heads) == (WIDTH, LAYERS, 2)
    assert (config.vision.patch_size, config.vision.image_size) == (PATCH, IMAGE)
    assert config.embed_dim == D and config.max_position == MAX_POS and config.temporal_layers == 2
    assert config.text.encoder == "precomputed" and config.text.dim == TEXT_DIM
    assert config.use_tga is False and config.temporal_published_mask is True
    assert config.smf_clip_rows is False  # the published L_pair
    assert config.text_weight == 0.5  # the published score's λ


def test_imported_published_checkpoint_reproduces_the_published_scores(tmp_path):
    sd = published_state_dict()
    path = tmp_path / "pytorch_model.bin.3"
    torch.save(sd, path)
    torch.manual_seed(0)
    model = PublishedLayout(published_config_from_state_dict(sd)).eval()
    before = model.relevance_head.weight.detach().clone()

    report = import_published_checkpoint(path, model)

    assert report.missing == [] and report.unexpected == []
    assert report.untouched == ["relevance_head.weight", "relevance_head.bias"]
    assert torch.equal(model.relevance_head.weight, before)
    for key in (
        "clip.token_embedding.weight",
        "clip.transformer.resblocks.0.attn.in_proj_weight",
        "clip.logit_scale",
        "loss_graph.gnn.layers.0.linear1.weight",
        "cross.pooler.dense.weight",
        "fusion_layer.self_attention.scale",
        "similarity_dense.weight",
        "cat2emb.0.weight",
        "cat2emb_trans.self_attention.fc_q.weight",
    ):
        assert key in report.ignored
    assert not any(k.startswith("clip.visual.") for k in report.ignored)
    assert "temporal.temporal_transformer.resblocks.1.mlp.c_proj.weight" in report.loaded

    batch = inputs()
    with torch.no_grad():
        ours = model.scores(*batch)
        reference = ref_scores(sd, *batch)
    assert ours.shape == (2, 3)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
    # the check has teeth: the padded frame, the patch mask and the TDB all change the scores
    with torch.no_grad():
        frames, frame_mask, patch_mask, asr, images, titles = batch
        no_patch_mask = ref_scores(sd, frames, frame_mask, torch.ones_like(patch_mask), asr, images, titles)
        model.temporal.published_difference_mask = False
        fixed_masking = model.scores(*batch)
    assert (no_patch_mask - reference).abs().max() > 1e-3
    assert (fixed_masking[0] - reference[0]).abs().max() > 1e-4
    torch.testing.assert_close(fixed_masking[1], reference[1], atol=1e-4, rtol=0)  # clip 1 has no padding



def test_load_model_of_a_published_file_gives_the_published_scores(tmp_path):
    # end to end through the real SGMN: load_model -> encode_clips / encode_products -> score
    import sgmn

    sd = published_state_dict()
    torch.save(sd, tmp_path / "pytorch_model.bin.3")
    model = sgmn.load_model(tmp_path / "pytorch_model.bin.3")
    assert model.import_report.missing == []
    frames, frame_mask, patch_mask, asr, images, titles = inputs()
    clips = model.encode_clips(frames, frame_mask, patch_mask, asr=asr, asr_mask=torch.ones(2, dtype=torch.bool))
    products = model.encode_products(images, titles=titles, title_mask=torch.ones(3, dtype=torch.bool))
    with torch.no_grad():
        reference = ref_scores(sd, frames, frame_mask, patch_mask, asr, images, titles)
    torch.testing.assert_close(model.score(clips, products), reference, atol=1e-4, rtol=0)

def test_import_into_a_model_built_for_fixed_masking_switches_to_published_masking():
    sd = published_state_dict()
    config = published_config_from_state_dict(sd).replace(temporal_published_mask=False)
    model = PublishedLayout(config)
    report = import_published_checkpoint(sd, model)
    assert model.temporal.published_difference_mask is True
    assert model.config.temporal_published_mask is True
    assert any("published_difference_mask" in note for note in report.notes)


def test_import_shape_mismatch_names_the_key():
    sd = published_state_dict()
    model = PublishedLayout(published_config_from_state_dict(sd))
    sd["fc_title.weight"] = torch.zeros(D, TEXT_DIM + 1)
    with pytest.raises(DataError, match="fc_title.weight"):
        import_published_checkpoint(sd, model)


def test_import_into_a_smaller_model_names_the_key_without_a_place():
    sd = published_state_dict()
    config = published_config_from_state_dict(sd).replace(temporal_layers=1)
    with pytest.raises(DataError, match=r"transformerClip\.resblocks\.1\."):
        import_published_checkpoint(sd, PublishedLayout(config))


def test_import_reports_missing_parameters():
    sd = published_state_dict()
    model = PublishedLayout(published_config_from_state_dict(sd))
    del sd["trans_layernorm.bias"]
    report = import_published_checkpoint(sd, model)
    assert report.missing == ["temporal.difference_norm.bias"]


def test_unknown_published_keys_are_reported_not_loaded():
    sd = published_state_dict()
    sd["some_new_head.weight"] = torch.zeros(3)
    report = import_published_checkpoint(sd, PublishedLayout(published_config_from_state_dict(sd)))
    assert report.unexpected == ["some_new_head.weight"]
    assert "some_new_head.weight" in report.ignored
    assert "unknown keys" in report.summary()


# ---- OpenAI CLIP files --------------------------------------------------------------------------


def openai_state_dict() -> dict[str, torch.Tensor]:
    """OpenAI CLIP layout: ``visual.*`` plus a few text-tower keys that must be ignored."""
    sd = published_state_dict()
    out = {k[len("clip.") :]: v for k, v in sd.items() if k.startswith("clip.")}
    return out


def tiny_backbone() -> VisionBackbone:
    config = published_config_from_state_dict(published_state_dict())
    torch.manual_seed(0)
    return VisionBackbone(config.vision, D).eval()


def check_backbone_matches_openai(backbone, sd):
    gen = torch.Generator().manual_seed(5)
    pixels = torch.randn(3, 3, IMAGE, IMAGE, generator=gen)
    keep = torch.ones(3, N, dtype=torch.bool)
    keep[1, [1, 3]] = False
    with torch.no_grad():
        ours = backbone(pixels, keep)
        reference = ref_visual(sd, pixels, keep, prefix="visual.")
    torch.testing.assert_close(ours[keep], reference[keep], atol=1e-4, rtol=0)


def test_openai_plain_state_dict_file(tmp_path):
    sd = openai_state_dict()
    path = tmp_path / "ViT-tiny.pt"
    torch.save(sd, path)
    backbone = tiny_backbone()
    assert backbone.load_openai_clip(path) == []
    check_backbone_matches_openai(backbone, sd)


def test_openai_state_dict_in_memory_with_published_prefix():
    sd = published_state_dict()
    backbone = tiny_backbone()
    backbone.load_openai_clip(sd)  # clip.visual.* keys
    check_backbone_matches_openai(backbone, openai_state_dict())


class _OpenAIVisual(nn.Module):
    """Module tree whose state dict has OpenAI CLIP's visual key names."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTH, PATCH, PATCH, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(WIDTH))
        self.positional_embedding = nn.Parameter(torch.zeros(N, WIDTH))
        self.ln_pre = nn.LayerNorm(WIDTH)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*[ResidualAttentionBlock(WIDTH, 2) for _ in range(LAYERS)])
        self.ln_post = nn.LayerNorm(WIDTH)
        self.proj = nn.Parameter(torch.zeros(WIDTH, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x).flatten(2).transpose(1, 2) @ self.proj[:, :1] + self.class_embedding[0]


class _OpenAICLIP(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = _OpenAIVisual()
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x) * self.logit_scale


def test_openai_torchscript_archive(tmp_path):
    sd = {k: v for k, v in openai_state_dict().items() if k.startswith("visual.") or k == "logit_scale"}
    module = _OpenAICLIP()
    module.load_state_dict(sd)
    path = tmp_path / "ViT-tiny-jit.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    backbone = tiny_backbone()
    assert backbone.load_openai_clip(path) == []
    check_backbone_matches_openai(backbone, sd)


def test_openai_size_mismatch_is_a_clear_error(tmp_path):
    sd = openai_state_dict()
    path = tmp_path / "ViT-tiny.pt"
    torch.save(sd, path)
    config = published_config_from_state_dict(published_state_dict())
    config.vision.layers = 3
    with pytest.raises(DataError, match="layers = 2"):
        VisionBackbone(config.vision, D).load_openai_clip(path)
    with pytest.raises(DataError, match="no such checkpoint file"):
        tiny_backbone().load_openai_clip(tmp_path / "missing.pt")


def test_openai_conversion_splits_packed_attention():
    sd = openai_state_dict()
    hf = openai_visual_to_hf(sd)
    packed = sd["visual.transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(hf["vision_model.encoder.layers.1.self_attn.k_proj.weight"], packed[WIDTH : 2 * WIDTH])
    assert torch.equal(hf["visual_projection.weight"], sd["visual.proj"].T)
    assert not any(k.startswith(("text", "token")) for k in hf)


# ---- Hugging Face folders -----------------------------------------------------------------------


def hf_vision_kwargs():
    return dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        image_size=32, patch_size=8, hidden_act="quick_gelu",
    )


def small_vision_config():
    from sgmn.model.config import VisionConfig

    return VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2)


def test_hf_clip_model_folder(tmp_path):
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=64, max_position_embeddings=16),
        vision_config=hf_vision_kwargs(),
        projection_dim=16,
    )
    hf = transformers.CLIPModel(config).eval()
    hf.save_pretrained(tmp_path / "clip")
    backbone = VisionBackbone(small_vision_config(), 16).eval()
    assert backbone.load_hf_pretrained(tmp_path / "clip") == []
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = backbone(pixels)[:, 0]
        expected = hf.get_image_features(pixel_values=pixels)
    expected = expected if isinstance(expected, torch.Tensor) else expected.pooler_output
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_hf_vision_model_folder_without_projection(tmp_path):
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**hf_vision_kwargs())).eval()
    hf.save_pretrained(tmp_path / "vision")
    backbone = VisionBackbone(small_vision_config(), 16).eval()
    with pytest.warns(UserWarning, match="proj.weight"):
        assert backbone.load_hf_pretrained(tmp_path / "vision") == ["proj.weight"]
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            backbone(pixels)[:, 0], backbone.proj(hf(pixel_values=pixels).pooler_output), atol=1e-5, rtol=0
        )


def test_hf_folder_with_other_sizes_is_a_clear_error(tmp_path):
    kwargs = hf_vision_kwargs() | {"num_hidden_layers": 1}
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**kwargs)).save_pretrained(tmp_path / "v")
    with pytest.raises(DataError, match="num_hidden_layers"):
        VisionBackbone(small_vision_config(), 16).load_hf_pretrained(tmp_path / "v")
    with pytest.raises(DataError, match="config.json"):
        VisionBackbone(small_vision_config(), 16).load_hf_pretrained(tmp_path)


def test_vision_pretrained_in_the_config_loads_clip_weights_and_a_saved_model_needs_no_file(tmp_path):
    import sgmn

    sd = openai_state_dict()
    weights = tmp_path / "ViT-tiny.pt"
    torch.save(sd, weights)
    config = published_config_from_state_dict(published_state_dict()).replace(**{"vision.pretrained": str(weights)})
    torch.manual_seed(0)
    model = sgmn.create_model(config)
    check_backbone_matches_openai(model.backbone, sd)
    model.save_pretrained(tmp_path / "saved")
    weights.unlink()  # the saved weights replace the CLIP file: loading must not read it again
    loaded = sgmn.load_model(tmp_path / "saved")
    assert loaded.config.vision.pretrained == str(weights)
    check_backbone_matches_openai(loaded.backbone, sd)

    # a Hugging Face folder goes through the same field
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**hf_vision_kwargs())).eval()
    hf.save_pretrained(tmp_path / "hf")
    sizes = {"vision.image_size": 32, "vision.patch_size": 8, "vision.width": 32, "vision.layers": 2,
             "vision.heads": 2, "embed_dim": 16, "vision.pretrained": str(tmp_path / "hf")}
    with pytest.warns(UserWarning, match="proj.weight"):  # a vision-only folder has no projection
        baseline = sgmn.create_model("clip-meanpool", **sizes).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = baseline.backbone.proj(hf(pixel_values=pixels).pooler_output)
    torch.testing.assert_close(baseline.backbone(pixels)[:, 0], expected, atol=1e-5, rtol=0)


# ---- our own format -----------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    sd = published_state_dict()
    config = published_config_from_state_dict(sd)
    model = PublishedLayout(config).eval()
    import_published_checkpoint(sd, model)
    save_model(model, config, tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.json", "model.safetensors"]

    config_dict, state = load_state(tmp_path / "saved")
    restored_config = SGMNConfig.from_dict(config_dict)
    assert restored_config == config
    torch.manual_seed(123)
    restored = PublishedLayout(restored_config).eval()
    restored.load_state_dict(state)
    batch = inputs()
    with torch.no_grad():
        assert torch.equal(restored.scores(*batch), model.scores(*batch))


def test_load_state_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="config.json"):
        load_state(tmp_path)
    (tmp_path / "config.json").write_text('{"name": "x",\n  oops}')
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DataError, match=r"config.json, line 2"):
        load_state(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(DataError, match="model.safetensors"):
        load_state(tmp_path)
