"""Plain-folders reader: a shop folder with optional titles, clips as mp4 or frame folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sgmn.data.readers import read_dataset
from sgmn.data.readers.folders import read, read_clip, read_shop
from sgmn.errors import DataError
from helpers import write_mp4  # noqa: E402


def jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10, 8), (0, 90, 180)).save(path, "JPEG")
    return path


def mp4(path: Path, frames: int = 4, size: int = 32) -> Path:
    return write_mp4(path, [np.full((size, size, 3), 40 * i, np.uint8) for i in range(frames)], rate=2)


def write_folders(root: Path) -> None:
    shop = root / "shop"
    jpeg(shop / "sku-1.jpg")
    jpeg(shop / "sku-2.png")
    jpeg(shop / "sku-3" / "b.jpg")  # a product with two images, in name order
    jpeg(shop / "sku-3" / "a.jpg")
    (shop / ".DS_Store").write_bytes(b"hidden")
    (shop / "titles.tsv").write_text("sku-1\tRed silk dress\nsku-3\tWool scarf\n")
    clips = root / "clips"
    mp4(clips / "live-a.mp4")
    (clips / "live-a.txt").write_text("  this red dress is silk \n")
    for i in (2, 0, 1):
        jpeg(clips / "live-b" / f"frame_{i:03d}.jpg")
    (clips / "live-b" / "asr.txt").write_text("")
    (clips / "notes.docx").write_bytes(b"not a clip")


def test_reads_shop_and_clips(tmp_path):
    write_folders(tmp_path)
    data = read_dataset(tmp_path, "folders")
    assert data.source == "folders"
    assert data.rooms["shop"].product_ids == ["sku-1", "sku-2", "sku-3"]
    assert data.products["sku-1"].title == "Red silk dress"
    assert data.products["sku-2"].title is None
    assert data.products["sku-3"].image_paths == [tmp_path / "shop/sku-3/a.jpg", tmp_path / "shop/sku-3/b.jpg"]
    assert data.splits["test"] == ["live-a", "live-b"]
    a, b = data.clips["live-a"], data.clips["live-b"]
    assert a.video_path == tmp_path / "clips/live-a.mp4" and a.frame_paths == []
    assert a.asr == "this red dress is silk" and a.product_ids == [] and a.room_id == "shop"
    assert b.frame_paths == [tmp_path / f"clips/live-b/frame_{i:03d}.jpg" for i in range(3)]
    assert b.asr is None  # an empty asr.txt is no text
    assert data.skipped == {"unsupported_file": 1}  # notes.docx; the hidden file is ignored


def test_titles_json_and_unknown_title(tmp_path):
    write_folders(tmp_path)
    (tmp_path / "shop/titles.tsv").unlink()
    (tmp_path / "shop/titles.json").write_text(json.dumps({"sku-2": "Leather bag"}))
    assert {p.product_id: p.title for p in read_shop(tmp_path / "shop")} == {
        "sku-1": None, "sku-2": "Leather bag", "sku-3": None}

    (tmp_path / "shop/titles.json").write_text(json.dumps({"sku-2": "Leather bag", "sku-9": "Ghost"}))
    with pytest.raises(DataError, match=r"titles\.json, key 'sku-9'.*without an image"):
        read_shop(tmp_path / "shop")
    bad = tmp_path / "bad_titles.txt"
    bad.write_text("sku-1\tok\nsku-2 no tab here\n")
    with pytest.raises(DataError, match=r"bad_titles\.txt, line 2.*columns"):
        read_shop(tmp_path / "shop", titles=bad)


def test_read_clip_directly(tmp_path):
    write_folders(tmp_path)
    clip = read_clip(tmp_path / "clips/live-a.mp4", asr="given text")
    assert clip.asr == "given text" and clip.clip_id == "live-a"
    assert read_clip(tmp_path / "clips/live-a.mp4").asr == "this red dress is silk"
    with pytest.raises(DataError, match=r"notes\.docx.*video .* or a folder of frames"):
        read_clip(tmp_path / "clips/notes.docx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*no frame image"):
        read_clip(tmp_path / "empty")
    with pytest.warns(UserWarning, match="1 unsupported file"):
        (tmp_path / "clips/live-b/readme.md").write_text("x")
        assert len(read_clip(tmp_path / "clips/live-b").frame_paths) == 3


def test_bad_clip_raises_or_is_counted(tmp_path):
    write_folders(tmp_path)
    (tmp_path / "clips/live-c").mkdir()
    with pytest.raises(DataError, match=r"live-c.*no frame image"):
        read(tmp_path)
    data = read(tmp_path, on_error="skip")
    assert data.splits["test"] == ["live-a", "live-b"]
    assert data.skipped == {"bad_clip": 1, "unsupported_file": 1}
    # A single clip path and a shop elsewhere.
    data = read(tmp_path / "nowhere", shop=tmp_path / "shop", clips=tmp_path / "clips/live-b")
    assert data.splits["test"] == ["live-b"] and len(data.products) == 3
