"""`sgmn pretrain` (issue 9 point 3): synthetic shops disjoint from the benchmark rooms, deterministic,
cached, and a start every model can fine-tune from that really carries image-title knowledge."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import sgmn
from sgmn.data.synthetic import KIND_ROOM, PRESETS, _rng, _uuid
from sgmn.train.pretrain import PRETRAIN_SEED_BASE, PretrainConfig, pretrain, pretrain_key

TINY = dict(shops=3, products_per_shop=4, frames_per_clip=2, epochs=1, batch_size=16, val_shops=1)


def _room_ids(seed, rooms):
    return {_uuid(_rng(seed, KIND_ROOM, r)) for r in range(rooms)}


def test_pretrain_shops_are_disjoint_from_benchmark_rooms():
    cfg = PretrainConfig()
    synth = cfg.synth_config()
    assert synth.seed == PRETRAIN_SEED_BASE + cfg.seed
    pretrain_rooms = _room_ids(synth.seed, synth.rooms)
    benchmark_rooms = set()
    for seed in range(50):  # every seed the benchmark, demo and tests use is far below
        benchmark_rooms |= _room_ids(seed, max(p.rooms for p in PRESETS.values()))
    assert len(pretrain_rooms) == synth.rooms and not pretrain_rooms & benchmark_rooms
    with pytest.raises(ValueError, match="seed"):
        PretrainConfig(seed=PRETRAIN_SEED_BASE)


def test_pretrain_is_deterministic_cached_and_refuses_another_config(tmp_path):
    torch.set_num_threads(2)
    cfg = PretrainConfig(**TINY)
    res = CliRunner().invoke(sgmn_app(), ["pretrain", "--out", str(tmp_path / "a"), "--epochs", "1",
                                          *[f"--set={k}={v}" for k, v in TINY.items() if k != "epochs"]])
    assert res.exit_code == 0, res.output
    assert "fine-tune from it: sgmn train --model sgmn-tiny --set model.vision.pretrained=" in res.output
    b = pretrain(cfg, out=tmp_path / "b", progress=False)
    assert not b.cached and b.info["key"] == pretrain_key(cfg)
    a_info = json.loads((tmp_path / "a" / "pretrain.json").read_text())
    assert a_info["key"] == b.info["key"]
    for name in ("model.safetensors", "text_projection.safetensors"):
        wa, wb = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name

    # the same config again: the cached folder, untouched, at once
    mtime = (tmp_path / "a" / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = pretrain(cfg, out=tmp_path / "a", progress=False)
    assert again.cached and time.perf_counter() - t0 < 2.0
    assert (tmp_path / "a" / "model.safetensors").stat().st_mtime_ns == mtime
    res = CliRunner().invoke(sgmn_app(), ["pretrain", "--out", str(tmp_path / "a"), "--epochs", "1",
                                          *[f"--set={k}={v}" for k, v in TINY.items() if k != "epochs"]])
    assert res.exit_code == 0 and "cached: " in res.output
    # another config into the same folder is refused with one line (exit 2), nothing overwritten
    res = CliRunner().invoke(sgmn_app(), ["pretrain", "--out", str(tmp_path / "a"), "--epochs", "2",
                                          *[f"--set={k}={v}" for k, v in TINY.items() if k != "epochs"]])
    assert res.exit_code == 2 and "another config" in res.output
    assert (tmp_path / "a" / "model.safetensors").stat().st_mtime_ns == mtime
    # the default output folder is the cache, keyed by config + code
    cached = pretrain(cfg, cache_root=tmp_path / "cache", progress=False)
    assert cached.path == tmp_path / "cache" / pretrain_key(cfg)
    assert pretrain_key(PretrainConfig(**{**TINY, "seed": 1})) != pretrain_key(cfg)


def sgmn_app():
    from sgmn.cli import app

    return app


# ---------------------------------------------------------------- the pretrained start
LEARNING = dict(shops=14, products_per_shop=8, frames_per_clip=2, epochs=10, batch_size=64, val_shops=2)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.set_num_threads(2)
    return pretrain(PretrainConfig(**LEARNING), out=tmp_path_factory.mktemp("pretrain") / "p", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("variant, overrides", [
    ("sgmn-tiny", {}), ("sgmn-tiny", {"use_text": False}), ("sgmn-tiny", {"use_tga": False, "use_smf": False}),
    ("clip-meanpool", {}), ("rice-icl", {})])
def test_every_model_starts_from_the_pretrained_weights(pretrained, variant, overrides):
    from sgmn.train.config import TrainConfig, starts_pretrained

    torch.manual_seed(0)
    scratch = sgmn.create_model(variant, **overrides)
    torch.manual_seed(0)
    model = sgmn.create_model(variant, **overrides, **{"vision.pretrained": str(pretrained.path)})
    saved = load_file(str(pretrained.path / "model.safetensors"))
    ours = model.backbone.state_dict()
    assert torch.equal(ours["proj.weight"], saved["visual_projection.weight"])
    changed = 0
    for k, v in ours.items():
        if k.startswith("vision_model."):
            assert torch.equal(v, saved[k]), k
            changed += not torch.equal(v, scratch.backbone.state_dict()[k])
    assert changed >= len(ours) // 2  # the weights really moved away from the random init
    text = load_file(str(pretrained.path / "text_projection.safetensors"))
    for head in ("fc_asr", "fc_title"):
        if getattr(model, head, None) is not None:
            assert torch.equal(getattr(model, head).weight, text["weight"]), head
    # and `sgmn train` then picks the paper's fine-tuning recipe
    assert starts_pretrained(model) and TrainConfig().resolve_recipe(starts_pretrained(model))[0].recipe == "paper"


@pytest.mark.slow
def test_pretrained_start_retrieves_titles_zero_shot(pretrained, tmp_path):
    """On a tiny benchmark-like set (seed 0, never seen in pretraining): shop image -> title R@1
    within each room, from the model's own p and t, is above chance and above a random start."""
    from sgmn.data.readers import read_dataset
    from sgmn.data.synthetic import generate, preset

    info = pretrained.info
    assert info["zero_shot"]["shop_image_to_title_R@1"] > info["zero_shot"]["chance_R@1"]
    generate(tmp_path / "d", preset("easy", seed=0, clips_per_product=1, frames_per_clip=1), progress=False)
    data = read_dataset(tmp_path / "d", "lpr4m")

    def r_at_1(model):
        hits = total = 0
        for room in data.rooms.values():
            products = [data.products[p] for p in room.product_ids]
            emb = model.encode_products([p.image_paths[0] for p in products], titles=[p.title for p in products])
            best = (emb.embedding @ emb.text_embedding.t()).argmax(1)
            hits += int((best == torch.arange(len(products))).sum())
            total += len(products)
        return 100.0 * hits / total

    torch.manual_seed(0)
    start = r_at_1(sgmn.create_model("sgmn-tiny", **{"vision.pretrained": str(pretrained.path)}))
    torch.manual_seed(0)
    random = r_at_1(sgmn.create_model("sgmn-tiny"))
    chance = 100.0 / len(next(iter(data.rooms.values())).product_ids)
    print(f"\nzero-shot image->title R@1: pretrained {start:.1f}, random {random:.1f}, chance {chance:.1f}; "
          f"pretrain val {info['zero_shot']}")
    assert start >= 2 * chance and start > random
