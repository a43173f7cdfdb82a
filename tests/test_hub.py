"""Pretrained weights by Hugging Face id (issue 12 item 10) and the zero-shot `sgmn export` (item 11).

The tests build tiny models, place them in a Hugging Face cache layout
(``models--org--name/snapshots/<hash>/`` + ``refs/main``) under a temporary ``HF_HUB_CACHE``, and
block every network connection: ids resolve from the cache, nothing downloads.
"""

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import sgmn
from sgmn.cli import app
from sgmn.errors import DataError
from sgmn.hub import resolve_pretrained
from helpers import write_mp4  # noqa: E402

REVISION = "0123456789abcdef0123456789abcdef01234567"


def place_in_cache(cache: Path, repo_id: str, fill) -> Path:
    """A snapshot folder of ``repo_id`` in the HF cache layout, filled by ``fill(folder)``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    fill(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


def tiny_clip_vision(seed=0):
    """A CLIP vision tower with the sizes of the tiny registered variants (clip-meanpool, sgmn-tiny)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.CLIPVisionConfig(
        hidden_size=96, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4, image_size=64,
        patch_size=16, projection_dim=64, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    return transformers.CLIPVisionModelWithProjection(config).eval()


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture()
def hub(tmp_path, monkeypatch, no_network):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = tiny_clip_vision()
    place_in_cache(cache, "tiny-org/tiny-clip", hf.save_pretrained)
    return cache, hf


def test_vision_pretrained_by_hub_id(hub):
    _, hf = hub
    model = sgmn.create_model("clip-meanpool", **{"vision.pretrained": "tiny-org/tiny-clip"})
    ours = model.backbone.vision_model.state_dict()
    for name, tensor in hf.vision_model.state_dict().items():
        assert torch.equal(ours[name], tensor), name
    assert torch.equal(model.backbone.proj.weight, hf.visual_projection.weight)


def test_unknown_id_offline_is_one_clear_error(hub):
    with pytest.raises(DataError, match=r"vision.pretrained = 'tiny-org/absent'.*HF_HUB_OFFLINE.*cache"):
        sgmn.create_model("clip-meanpool", **{"vision.pretrained": "tiny-org/absent"})
    with pytest.raises(DataError, match=r"no such file or folder"):
        resolve_pretrained("/nowhere/ViT-B-32.pt", "vision.pretrained")


def test_text_pretrained_by_sentence_transformers_id(hub, monkeypatch):
    from sgmn.model.config import TextConfig
    from sgmn.text.encoders import make_text_encoder, minilm_path

    cache, _ = hub
    # the MiniLM shipped in the pip package, placed in the cache under its Hub id
    place_in_cache(cache, "sentence-transformers/all-MiniLM-L6-v2",
                   lambda folder: folder.rmdir() or folder.symlink_to(minilm_path(), target_is_directory=True))
    by_id = make_text_encoder(TextConfig(pretrained="sentence-transformers/all-MiniLM-L6-v2"))
    default = make_text_encoder(TextConfig())
    texts = ["red silk dress", None, "the striped mug"]
    a, has_a = by_id.encode(texts)
    b, has_b = default.encode(texts)
    assert np.allclose(a, b, atol=1e-6) and list(has_a) == list(has_b) == [True, False, True]


def test_train_precheck_accepts_a_cached_id(hub):
    from sgmn.train.cli import check_model_request

    config = check_model_request("sgmn-tiny", {"vision.pretrained": "tiny-org/tiny-clip"})
    assert config.vision.pretrained == "tiny-org/tiny-clip"


# ---- item 11: zero-shot export --------------------------------------------------------------
def _img(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))


def test_export_then_index_query_serve(hub, tmp_path):
    from fastapi.testclient import TestClient

    from sgmn.retrieval import Retriever
    from sgmn.serve.app import create_app

    _, hf = hub
    out = tmp_path / "zero-shot"
    runner = CliRunner()
    res = runner.invoke(app, ["export", "--model", "clip-meanpool", "--set", "model.vision.pretrained=tiny-org/tiny-clip",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and json.loads((out / "config.json").read_text())["name"] == "clip-meanpool"
    model = sgmn.load_model(out)
    assert torch.equal(model.backbone.proj.weight, hf.visual_projection.weight)  # the CLIP weights, untrained
    for name, tensor in hf.vision_model.state_dict().items():
        assert torch.equal(model.backbone.vision_model.state_dict()[name], tensor), name

    shop = tmp_path / "shop"
    shop.mkdir()
    for i in range(3):
        _img(i).save(shop / f"p{i}.jpg")
    store = tmp_path / "store"
    res = runner.invoke(app, ["index", "--checkpoint", str(out), "--store", str(store), "--room", "r", "--shop", str(shop)])
    assert res.exit_code == 0 and "3 added" in res.output, res.output
    # the clip shows product p1: a zero-shot CLIP ranks it first
    clip = write_mp4(tmp_path / "clip.mp4", [np.asarray(_img(1))] * 4, rate=4, codec="libx264",
                     options={"crf": "0"})
    res = runner.invoke(app, ["query", "--store", str(store), "--room", "r", "--clip", str(clip), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["hits"][0]["product_id"] == "p1"
    with Retriever.open(store, model=out) as r, TestClient(create_app(r)) as client:
        assert client.get("/health").json()["model"]["name"] == "clip-meanpool"

    # a second export into the same folder is refused; a random model is refused too
    res = runner.invoke(app, ["export", "--model", "clip-meanpool", "--set", "model.vision.pretrained=tiny-org/tiny-clip",
                              "--out", str(out)])
    assert res.exit_code == 2 and "already holds a saved model" in res.output
    res = runner.invoke(app, ["export", "--model", "clip-meanpool", "--out", str(tmp_path / "random")])
    assert res.exit_code == 2 and "vision.pretrained" in res.output


def test_export_sgmn_lists_its_untrained_parts(hub, tmp_path):
    res = CliRunner().invoke(app, ["export", "--model", "sgmn-tiny", "--set", "model.vision.pretrained=tiny-org/tiny-clip",
                                   "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "not pretrained" in res.output and "fc_asr" in res.output
