"""Reader of the published SGMN code's layout, on tiny files written in that layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sgmn.data.readers import read_dataset
from sgmn.data.readers.sgmn_code import read
from sgmn.errors import DataError

DIM = 4  # the real files hold 512 floats; the reader is told the length


def jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (10, 120, 40)).save(path, "JPEG")
    return path


def train_row(clip_id, frames, sizes, boxes, image, spu, item) -> str:
    cols = [clip_id, frames, sizes, boxes, "x4", "x5", "x6", image, "x8", "x9", "x10", "x11", spu,
            "y13", "y14", "y15", "y16"]
    cols[-8] = item  # 17 columns: [-8] is column 9
    return "\t".join(cols)


def vec(seed: float) -> list[float]:
    return [seed, seed + 1, seed + 2, seed + 3]


def write_layout(root: Path) -> None:
    f_a = [f"frames/live-1_c1/{i}.jpg" for i in range(3)]
    f_b = [f"frames/live-2_c7/{i}.jpg" for i in range(2)]
    for p in f_a + f_b + ["shop/item-a.jpg", "shop/item-b.jpg", "shop/item-c.jpg"]:
        jpeg(root / p)
    rows = [
        # Python literals, "H\x01W" sizes, one all-zero box
        train_row("live-1_c1", repr(f_a), repr(["720\x011280", "720\x011280", "1080\x01720"]),
                  repr([[1, 2, 30, 40], [0, 0, 0, 0], [5.5, 6, 7, 8]]), "shop/item-a.jpg", "spu-1", "item-a"),
        # the same clip sells a second item
        train_row("live-1_c1", json.dumps(f_a), json.dumps(["720\x011280"] * 3), json.dumps([[0, 0, 0, 0]] * 3),
                  "shop/item-b.jpg", "spu-1", "item-b"),
        train_row("live-2_c7", json.dumps(f_b), json.dumps(["64\x0164"] * 2), json.dumps([[0, 0, 0, 0]] * 2),
                  "shop/item-c.jpg", "", "item-c"),
    ]
    (root / "LPR_training_data.txt").write_text("\n".join(rows) + "\n")
    (root / "training_seg2emb_2.json").write_text(json.dumps({"live-1_c1": vec(1)}))  # live-2_c7 has none
    (root / "training_item2emb_3.json").write_text(json.dumps({"item-a": vec(10), "item-b": vec(20), "item-c": vec(30)}))

    for clip_id, n in (("room9_t1", 3), ("room9_t2", 2)):
        for i in range(n):
            jpeg(root / "q_dir" / clip_id / f"{i:05d}.jpg")
    for name in ("it-1_0", "it-1_2", "it-1_1", "it-2_0", "it-3_0"):
        jpeg(root / "room9" / "shelf" / f"{name}.jpg")
    (root / "test_gt.json").write_text(json.dumps({"room9_t1": ["it-1", "it-3"], "room9_t2": ["it-2"]}))
    (root / "eval_asr2emb_2.json").write_text(json.dumps({"room9_t1": vec(100), "room9_t2": vec(200)}))
    (root / "eval_item2emb_3.json").write_text(json.dumps({"it-1": vec(-1), "it-2": vec(-2), "it-3": vec(-3)}))


def test_reads_training_and_test(tmp_path):
    write_layout(tmp_path)
    data = read_dataset(tmp_path, "sgmn", vector_dim=DIM)
    assert data.splits == {"train": ["live-1_c1", "live-2_c7"], "test": ["room9_t1", "room9_t2"]}
    assert not data.skipped

    c1 = data.clips["live-1_c1"]
    assert c1.room_id == "live-1" and c1.product_ids == ["item-a", "item-b"]
    assert c1.frame_paths == [tmp_path / f"frames/live-1_c1/{i}.jpg" for i in range(3)]
    assert c1.frame_sizes == [(720, 1280), (720, 1280), (1080, 720)]
    assert c1.boxes == [(1.0, 2.0, 30.0, 40.0), None, (5.5, 6.0, 7.0, 8.0)]
    assert c1.boxes_for("item-b") == [None, None, None]  # the second row's own (all-zero) boxes
    assert c1.asr_vector.dtype == np.float32
    np.testing.assert_array_equal(c1.asr_vector, vec(1))
    assert data.clips["live-2_c7"].asr_vector is None
    a = data.products["item-a"]
    assert a.image_paths == [tmp_path / "shop/item-a.jpg"] and a.group == "spu-1"
    np.testing.assert_array_equal(a.title_vector, vec(10))
    assert data.products["item-c"].group is None
    assert data.rooms["live-1"].product_ids == ["item-a", "item-b"]

    t1 = data.clips["room9_t1"]
    assert t1.room_id == "room9" and t1.product_ids == ["it-1", "it-3"]
    assert t1.frame_paths == [tmp_path / "q_dir/room9_t1" / f"{i:05d}.jpg" for i in range(3)]
    np.testing.assert_array_equal(t1.asr_vector, vec(100))
    assert data.rooms["room9"].product_ids == ["it-1", "it-2", "it-3"]
    shelf = tmp_path / "room9" / "shelf"
    assert data.products["it-1"].image_paths == [shelf / "it-1_0.jpg", shelf / "it-1_1.jpg", shelf / "it-1_2.jpg"]
    np.testing.assert_array_equal(data.products["it-3"].title_vector, vec(-3))


def test_explicit_paths_and_query_without_gt(tmp_path):
    write_layout(tmp_path)
    (tmp_path / "q_dir").rename(tmp_path / "elsewhere")
    jpeg(tmp_path / "elsewhere" / "room9_new" / "0.jpg")
    gt = tmp_path / "test_gt.json"
    gt.rename(tmp_path / "answers.json")
    data = read(tmp_path, splits=["test"], query_dir=tmp_path / "elsewhere", gt_file=tmp_path / "answers.json",
                vector_dim=DIM)
    assert data.splits["test"] == ["room9_new", "room9_t1", "room9_t2"]
    assert data.clips["room9_new"].product_ids == []  # queryable, not scored
    assert data.clips["room9_t2"].product_ids == ["it-2"]


def test_bad_vectors_name_file_and_key(tmp_path):
    write_layout(tmp_path)
    (tmp_path / "training_item2emb_3.json").write_text(json.dumps({"item-a": vec(1), "item-b": [1, 2], "item-c": vec(3)}))
    with pytest.raises(DataError, match=r"training_item2emb_3\.json, key 'item-b'.*length 2, expected 4"):
        read(tmp_path, splits=["train"], vector_dim=DIM)
    data = read(tmp_path, splits=["train"], vector_dim=DIM, on_error="skip")
    assert data.skipped == {"bad_vector": 1}
    assert data.products["item-b"].title_vector is None
    np.testing.assert_array_equal(data.products["item-c"].title_vector, vec(3))

    (tmp_path / "eval_asr2emb_2.json").write_text(json.dumps({"room9_t1": [1, "two", 3, 4]}))
    with pytest.raises(DataError, match=r"eval_asr2emb_2\.json, key 'room9_t1'.*non-numeric"):
        read(tmp_path, splits=["test"], vector_dim=DIM)
    # The default length is the published 512.
    with pytest.raises(DataError, match="expected 512"):
        read(tmp_path, splits=["train"])


def test_malformed_rows_and_missing_files(tmp_path):
    write_layout(tmp_path)
    path = tmp_path / "LPR_training_data.txt"
    lines = path.read_text().splitlines()
    assert "64\\u000164" in lines[2]  # json.dumps escapes \x01; the reader must undo that
    bad_size = lines[2].replace("64\\u000164", "64x64")
    path.write_text("\n".join([lines[0], "a\tb\tc", lines[1], bad_size]) + "\n")
    with pytest.raises(DataError, match=r"LPR_training_data\.txt, line 2.*at least 13"):
        read(tmp_path, splits=["train"], vector_dim=DIM)
    data = read(tmp_path, splits=["train"], vector_dim=DIM, on_error="skip")
    assert data.skipped == {"malformed_row": 2}
    assert data.splits["train"] == ["live-1_c1"] and "item-c" not in data.products

    path.write_text("\n".join([lines[0], bad_size]) + "\n")
    with pytest.raises(DataError, match=r"line 2.*H\\x01W"):
        read(tmp_path, splits=["train"], vector_dim=DIM)

    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "frames/live-2_c7/1.jpg").unlink()
    with pytest.raises(DataError, match=r"line 3.*'frames/live-2_c7/1\.jpg' not found"):
        read(tmp_path, splits=["train"], vector_dim=DIM)

    # A ground-truth item missing from the shelf: error, or the clip is skipped (never re-answered).
    (tmp_path / "room9/shelf/it-3_0.jpg").unlink()
    with pytest.raises(DataError, match=r"test_gt\.json, key 'room9_t1'.*\['it-3'\]"):
        read(tmp_path, splits=["test"], vector_dim=DIM)
    data = read(tmp_path, splits=["test"], vector_dim=DIM, on_error="skip")
    assert data.splits["test"] == ["room9_t2"] and data.skipped == {"missing_gt_image": 1}
