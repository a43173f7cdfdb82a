"""Synthetic generator: read back by the LPR4M reader, deterministic, siblings, ASR knob, CLI."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sgmn.cli import app
from sgmn.data.readers import read_dataset
from sgmn.data.synthetic import ATTRIBUTE_WORDS, ATTRIBUTES, CHIT_CHAT, COLOURS, PRESETS, SynthConfig, generate, preset

TINY = SynthConfig(rooms=2, products_per_room=4, clips_per_product=2, test_clips_per_product=1,
                   frames_per_clip=3, image_size=48, distractors=0.5, domain_gap=0.5, fine_grained=0.5,
                   asr_informativeness=0.6, asr_missing=0.0, seed=7)


def _words(text):
    return set(re.findall(r"[a-z]+", (text or "").lower()))


def _annotation_bytes(root: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted((root / "annotations").iterdir())}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "tiny"
    summary = generate(root, TINY, progress=False)
    return root, summary


def test_reader_reads_back_exactly_the_configured_counts(tiny):
    root, summary = tiny
    data = read_dataset(root, "lpr4m")
    n_products = TINY.rooms * TINY.products_per_room
    assert len(data.rooms) == TINY.rooms == summary["rooms"]
    assert len(data.products) == n_products == summary["products"]
    assert len(data.splits["train"]) == n_products * TINY.clips_per_product == summary["train_clips"]
    assert len(data.splits["test"]) == n_products * TINY.test_clips_per_product == summary["test_clips"]
    assert not data.skipped

    meta = json.loads((root / "synth_meta.json").read_text())["products"]
    for clip in data.clips.values():
        assert len(clip.frame_paths) == TINY.frames_per_clip
        assert len(clip.boxes) == TINY.frames_per_clip  # a box entry per frame
        assert any(b is not None for b in clip.boxes)  # the product is on screen in most frames
        for box in clip.boxes:
            if box is not None:
                x1, y1, x2, y2 = box
                assert 0 <= x1 < x2 <= TINY.image_size and 0 <= y1 < y2 <= TINY.image_size
        assert len(clip.product_ids) == 1
        product_id = clip.product_ids[0]
        assert product_id in data.rooms[clip.room_id].product_ids  # ranked against its own shop
        assert meta[product_id]["room_id"] == clip.room_id
        assert clip.category == meta[product_id]["attributes"]["category"]  # breakdown labels, both splits
        assert clip.attributes["scale"] in {"small", "medium", "large"}
        assert clip.attributes["num_products"] in {"single", "multiple"}
        with Image.open(clip.frame_paths[0]) as frame:
            assert frame.size == (TINY.image_size, TINY.image_size)
    for room in data.rooms.values():
        assert len(room.product_ids) == TINY.products_per_room
    for pid, product in data.products.items():
        assert product.title == meta[pid]["title"]
        assert product.image_paths[0].name == f"{pid}.jpg"
    # Ids follow the real scheme: <live uuid>-<start_ms>-<end_ms>, frames <clip>-NNNN.
    clip = data.split_clips("test")[0]
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}-\d+-\d+", clip.clip_id)
    assert clip.frame_paths[1].stem == f"{clip.clip_id}-0001"


def test_boxes_locate_the_product(tmp_path):
    """With no domain gap the box hugs the drawn product: its colour fills the box, not the rest."""
    config = SynthConfig(rooms=1, products_per_room=2, clips_per_product=1, test_clips_per_product=1,
                         frames_per_clip=2, image_size=64, distractors=0.0, domain_gap=0.0, seed=3)
    generate(tmp_path / "d", config, progress=False)
    data = read_dataset(tmp_path / "d", "lpr4m")
    meta = json.loads((tmp_path / "d" / "synth_meta.json").read_text())["products"]
    for clip in data.clips.values():
        rgb = np.array(COLOURS[meta[clip.product_ids[0]]["attributes"]["colour"]], dtype=float)
        for path, box in zip(clip.frame_paths, clip.boxes):
            pixels = np.asarray(Image.open(path).convert("RGB"), dtype=float)
            near = np.linalg.norm(pixels - rgb, axis=2) < 40
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            inside = near[y1:y2, x1:x2].sum()
            assert inside > 0.1 * (x2 - x1) * (y2 - y1)
            assert inside > 0.9 * near.sum() - 2  # nearly all product-coloured pixels are in the box


def test_distractors_come_from_the_same_shop_and_follow_the_knob(tmp_path):
    base = dict(rooms=2, products_per_room=5, clips_per_product=2, test_clips_per_product=1,
                frames_per_clip=1, image_size=32, seed=9)
    generate(tmp_path / "busy", SynthConfig(distractors=1.0, **base), progress=False)
    data = read_dataset(tmp_path / "busy", "lpr4m")
    shown = json.loads((tmp_path / "busy" / "synth_meta.json").read_text())["clips"]
    assert set(shown) == set(data.clips)
    for clip_id, clip in data.clips.items():
        distractors = shown[clip_id]["distractor_ids"]
        assert shown[clip_id]["product_id"] == clip.product_ids[0]
        assert distractors and clip.product_ids[0] not in distractors
        assert set(distractors) <= set(data.rooms[clip.room_id].product_ids)  # other products of its shop
        assert clip.attributes["num_products"] == "multiple"

    generate(tmp_path / "clean", SynthConfig(distractors=0.0, **base), progress=False)
    data = read_dataset(tmp_path / "clean", "lpr4m")
    shown = json.loads((tmp_path / "clean" / "synth_meta.json").read_text())["clips"]
    assert all(not shown[c]["distractor_ids"] for c in data.clips)
    assert {c.attributes["num_products"] for c in data.clips.values()} == {"single"}


def test_intended_product_moves_across_frames(tmp_path):
    # No domain gap: no pose jitter, so only the planned path moves the box.
    config = SynthConfig(rooms=2, products_per_room=3, clips_per_product=2, test_clips_per_product=1,
                         frames_per_clip=4, image_size=64, distractors=0.0, domain_gap=0.0, seed=4)
    generate(tmp_path / "m", config, progress=False)
    data = read_dataset(tmp_path / "m", "lpr4m")
    moved = 0
    for clip in data.clips.values():
        assert all(box is not None for box in clip.boxes)  # without a gap it never leaves the frame
        centres = np.array([((x1 + x2) / 2, (y1 + y2) / 2) for x1, y1, x2, y2 in clip.boxes])
        moved += np.linalg.norm(centres[-1] - centres[0]) >= 2
    assert moved >= 0.75 * len(data.clips)


def test_same_seed_is_byte_identical_and_another_seed_differs(tiny, tmp_path):
    root, _ = tiny
    again = tmp_path / "again"
    generate(again, TINY, progress=False)
    assert _annotation_bytes(again) == _annotation_bytes(root)
    some_frame = sorted((root / "test_frames").rglob("*.jpg"))[0]
    assert (again / some_frame.relative_to(root)).read_bytes() == some_frame.read_bytes()

    other = tmp_path / "other"
    generate(other, SynthConfig(**{**TINY.__dict__, "seed": 8}), progress=False)
    first, second = _annotation_bytes(root), _annotation_bytes(other)
    assert first.keys() == second.keys()  # same counts in the names
    assert all(first[name] != second[name] for name in first)


def test_siblings_differ_in_exactly_one_attribute(tmp_path):
    config = SynthConfig(rooms=2, products_per_room=10, clips_per_product=1, test_clips_per_product=1,
                         frames_per_clip=1, image_size=32, fine_grained=0.8, seed=5)
    generate(tmp_path / "s", config, progress=False)
    products = json.loads((tmp_path / "s" / "synth_meta.json").read_text())["products"]
    siblings = [p for p in products.values() if p["sibling_of"]]
    assert len(siblings) == config.rooms * 8  # round(0.8 * 10) per shop
    for sib in siblings:
        base = products[sib["sibling_of"]]
        assert base["room_id"] == sib["room_id"]
        differing = [k for k in ATTRIBUTES if base["attributes"][k] != sib["attributes"][k]]
        assert differing == [sib["differs_in"]]
        assert _words(base["title"]) != _words(sib["title"])  # the title says which
    for room in {p["room_id"] for p in products.values()}:
        combos = [tuple(p["attributes"].values()) for p in products.values() if p["room_id"] == room]
        assert len(set(combos)) == len(combos)  # no two identical products in a shop

    distinct = tmp_path / "distinct"
    generate(distinct, SynthConfig(**{**config.__dict__, "fine_grained": 0.0}), progress=False)
    products = json.loads((distinct / "synth_meta.json").read_text())["products"]
    assert not any(p["sibling_of"] for p in products.values())


def test_asr_informativeness_knob(tmp_path):
    assert not any(_words(s) & ATTRIBUTE_WORDS for s in CHIT_CHAT)
    base = dict(rooms=2, products_per_room=3, clips_per_product=2, test_clips_per_product=1,
                frames_per_clip=1, image_size=32, asr_missing=0.0, seed=11)
    generate(tmp_path / "mute", SynthConfig(asr_informativeness=0.0, **base), progress=False)
    data = read_dataset(tmp_path / "mute", "lpr4m")
    assert all(c.asr for c in data.clips.values())
    assert not any(_words(c.asr) & ATTRIBUTE_WORDS for c in data.clips.values())

    generate(tmp_path / "talk", SynthConfig(asr_informativeness=1.0, **base), progress=False)
    data = read_dataset(tmp_path / "talk", "lpr4m")
    for clip in data.clips.values():
        own = _words(data.products[clip.product_ids[0]].title)
        mentioned = _words(clip.asr) & ATTRIBUTE_WORDS
        assert mentioned and mentioned <= own  # talks only about the product being sold


def test_presets_and_config_validation():
    assert set(PRESETS) == {"easy", "default", "hard"}
    easy, hard = PRESETS["easy"], PRESETS["hard"]
    assert easy.fine_grained < hard.fine_grained and easy.domain_gap < hard.domain_gap
    assert easy.asr_informativeness > hard.asr_informativeness
    assert preset("easy", rooms=2, seed=4).rooms == 2 and preset("easy", seed=4).seed == 4
    with pytest.raises(ValueError, match="domain_gap"):
        SynthConfig(domain_gap=1.5)
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        preset("medium")


def test_generate_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate(tmp_path, TINY, progress=False)
    assert (tmp_path / "x.txt").read_text() == "keep me"


def test_cli_synth_then_inspect(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["synth", "--preset", "easy", "--out", str(out), "--seed", "2", "--rooms", "2",
                                 "--products-per-room", "3", "--frames-per-clip", "2", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["rooms"] == 2 and summary["products"] == 6 and summary["config"]["seed"] == 2
    assert summary["train_clips"] == 6 * PRESETS["easy"].clips_per_product

    result = runner.invoke(app, ["inspect", "--data", str(out), "--format", "lpr4m", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["rooms"] == 2 and shown["products"] == 6 and shown["skipped"] == {}
    assert shown["splits"] == {"train": summary["train_clips"], "test": summary["test_clips"]}
    assert shown["frames"] == 2 * (summary["train_clips"] + summary["test_clips"])

    # A lost frame: the default policy stops with the file named, skip reads on and counts it.
    next(iter(sorted((out / "train_frames").rglob("*.jpg")))).unlink()
    result = runner.invoke(app, ["inspect", "--data", str(out), "--format", "lpr4m"])
    assert result.exit_code == 2 and "missing file for id" in result.output
    result = runner.invoke(app, ["inspect", "--data", str(out), "--format", "lpr4m", "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert re.search(r"missing_frame\s+1", result.output)
    assert re.search(rf"train\s+{summary['train_clips'] - 1}\b", result.output)

    result = runner.invoke(app, ["synth", "--preset", "easy", "--out", str(out)])
    assert result.exit_code == 2 and "not empty" in result.output
