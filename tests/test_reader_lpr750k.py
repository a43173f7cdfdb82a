"""LPR750K reader (RICE's public subset) on tiny files written in the real layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sgmn.data.readers import read_dataset
from sgmn.data.readers.lpr750k import image_id_of, read
from sgmn.errors import DataError

LIVE_A = "0a1b2c3d-aaaa-4bbb-8ccc-111111111111"
LIVE_B = "9f8e7d6c-bbbb-4ccc-8ddd-222222222222"
LIVE_T = "77777777-cccc-4ddd-8eee-333333333333"
CLIP_1 = f"{LIVE_A}-1000-9000"
CLIP_2 = f"{LIVE_B}-2000-5000"
TEST_1 = f"{LIVE_T}-30000-60000"
TEST_2 = f"{LIVE_T}-70000-90000"
IMG_1, IMG_2, IMG_3 = (f"11111111-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))
GAL_1, GAL_2, GAL_3 = (f"22222222-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))


def jpeg(path: Path, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path, "JPEG")
    return path


def row(*cols) -> str:
    assert len(cols) == 10
    return "\t".join(cols)


def write_lpr750k(root: Path) -> dict:
    ann = root / "annotations"
    ann.mkdir(parents=True)
    # Training frames live in two of the training_video_* folders.
    f1 = [f"{CLIP_1}/{CLIP_1}-{i:04d}.jpg" for i in range(3)]
    f2 = [f"{CLIP_2}/{CLIP_2}-{i:04d}.jpg" for i in range(2)]
    for rel in f1:
        jpeg(root / "training_video_00" / rel)
    for rel in f2:
        jpeg(root / "training_video_05" / rel)
    for img in (IMG_1, IMG_2, IMG_3):
        jpeg(root / "training_image" / f"{img}.jpg")
    rows = [
        # Python-literal lists; one all-zero box; path relative to a training_video_* folder
        row(CLIP_1, repr(f1), "[[10, 20, 110, 220], [0, 0, 0, 0], [12.5, 20, 100, 200]]",
            IMG_1, f"{IMG_1}.jpg", "red silk dress", "3", "women's clothing", "spu-9", "this dress is silk"),
        # The same clip sells a second product (path written with the folder prefix, JSON lists)
        row(CLIP_1, json.dumps(f1), "[]", IMG_2, f"training_image/{IMG_2}.jpg", "blue scarf",
            "3", "women's clothing", "spu-10", "this dress is silk"),
        # JSON lists, paths relative to the root; no ASR, unusable boxes (wrong count)
        row(CLIP_2, json.dumps([f"training_video_05/{p}" for p in f2]), "[[1, 2, 3, 4]]",
            IMG_3, f"{IMG_3}.jpg", "", "7", "shoes", "", ""),
    ]
    (ann / "training_videoinfo_3.txt").write_text("\n".join(rows) + "\n")

    gallery = [f"{LIVE_T}/{GAL_1}-main.jpg", f"{LIVE_T}/{GAL_2}.jpg", f"{LIVE_T}/{GAL_3}.jpg",
               f"{LIVE_T}/{GAL_1}-alt.jpg"]  # a second image of GAL_1
    for rel in gallery:
        jpeg(root / "gallery" / rel)
    (ann / "gallery_main.txt").write_text("\n".join(gallery) + "\n")
    q1 = [f"{TEST_1}/{TEST_1}-{i:04d}.jpg" for i in range(10)]
    q2 = [f"{TEST_2}/{TEST_2}-{i:04d}.jpg" for i in range(10)]
    for rel in q1 + q2:
        jpeg(root / "query" / rel)
    (ann / "query_tenframes.json").write_text(json.dumps({
        TEST_1: {"frames": q1, "gt": GAL_1},
        TEST_2: {"frames": q2, "gt": [GAL_2]},
    }))
    # The gt file wins over the "gt" entries: TEST_1 has two correct images.
    (ann / "test_videoid_to_gtimage_2.json").write_text(json.dumps({TEST_1: [GAL_1, f"{GAL_3}.jpg"]}))
    return {"f1": f1, "f2": f2, "q1": q1}


def test_reads_training_and_test(tmp_path):
    layout = write_lpr750k(tmp_path)
    data = read_dataset(tmp_path, "lpr750k")
    assert data.source == "lpr750k"
    assert data.splits == {"train": [CLIP_1, CLIP_2], "test": [TEST_1, TEST_2]}

    c1 = data.clips[CLIP_1]
    assert c1.room_id == LIVE_A
    assert c1.product_ids == [IMG_1, IMG_2]
    assert c1.frame_paths == [tmp_path / "training_video_00" / p for p in layout["f1"]]
    assert c1.boxes == [(10.0, 20.0, 110.0, 220.0), None, (12.5, 20.0, 100.0, 200.0)]
    assert c1.boxes_for(IMG_1) == c1.boxes and c1.boxes_for(IMG_2) is None  # its row has no boxes
    assert c1.asr == "this dress is silk" and c1.category == "women's clothing"
    c2 = data.clips[CLIP_2]
    assert c2.asr is None and c2.boxes is None
    assert c2.frame_paths[1] == tmp_path / "training_video_05" / layout["f2"][1]
    assert data.skipped == {"unusable_boxes": 1}  # counted, the row itself kept

    p1, p2 = data.products[IMG_1], data.products[IMG_2]
    assert p1.image_paths == [tmp_path / "training_image" / f"{IMG_1}.jpg"]
    assert p2.image_paths == [tmp_path / "training_image" / f"{IMG_2}.jpg"]
    assert (p1.title, p1.group, p1.attributes) == ("red silk dress", "spu-9", {"category_id": "3", "spu_id": "spu-9"})
    assert data.products[IMG_3].title is None
    assert data.rooms[LIVE_A].product_ids == [IMG_1, IMG_2]

    t1, t2 = data.clips[TEST_1], data.clips[TEST_2]
    assert t1.room_id == LIVE_T and t1.product_ids == [GAL_1, GAL_3]
    assert t2.product_ids == [GAL_2]
    assert t1.frame_paths == [tmp_path / "query" / p for p in layout["q1"]]
    assert data.rooms[LIVE_T].product_ids == [GAL_1, GAL_2, GAL_3]
    assert data.products[GAL_1].image_paths == [
        tmp_path / "gallery" / LIVE_T / f"{GAL_1}-main.jpg", tmp_path / "gallery" / LIVE_T / f"{GAL_1}-alt.jpg"]
    assert [p.product_id for p in data.room_gallery(LIVE_T)] == [GAL_1, GAL_2, GAL_3]


def test_image_id_is_first_five_dash_groups():
    assert image_id_of(f"{GAL_1}-main.jpg") == GAL_1
    assert image_id_of(f"x/{GAL_2}.jpg") == GAL_2


def test_missing_frame_names_file_and_line_and_skip_counts(tmp_path):
    layout = write_lpr750k(tmp_path)
    (tmp_path / "training_video_05" / layout["f2"][0]).unlink()
    with pytest.raises(DataError, match=r"training_videoinfo_3\.txt, line 3.*not found"):
        read(tmp_path)
    data = read(tmp_path, on_error="skip")
    assert data.splits["train"] == [CLIP_1]
    assert data.skipped["missing_frame"] == 1
    assert IMG_3 not in data.products  # nothing from the skipped row leaks in


def test_malformed_rows(tmp_path):
    write_lpr750k(tmp_path)
    path = tmp_path / "annotations" / "training_videoinfo_3.txt"
    lines = path.read_text().splitlines()
    bad_literal = lines[2].split("\t")
    bad_literal[1] = "['unterminated"
    path.write_text("\n".join([lines[0], "only\tthree\tcolumns", lines[1], "\t".join(bad_literal)]) + "\n")
    with pytest.raises(DataError, match=r"training_videoinfo_3\.txt, line 2.*expected 10 tab-separated columns, found 3"):
        read(tmp_path)
    data = read(tmp_path, on_error="skip", splits=["train"])
    assert data.skipped["malformed_row"] == 2
    assert data.splits == {"train": [CLIP_1]} and data.clips[CLIP_1].product_ids == [IMG_1, IMG_2]

    path.write_text("\n".join([lines[0], "\t".join(bad_literal)]) + "\n")
    with pytest.raises(DataError, match=r"line 2, key 'column frame_paths'.*cannot parse list"):
        read(tmp_path, splits=["train"])


def test_test_split_errors(tmp_path):
    write_lpr750k(tmp_path)
    ann = tmp_path / "annotations"
    (tmp_path / "gallery" / LIVE_T / f"{GAL_3}.jpg").unlink()
    with pytest.raises(DataError, match=r"gallery_main\.txt, line 3.*does not exist"):
        read(tmp_path, splits=["test"])
    data = read(tmp_path, on_error="skip", splits=["test"])
    # GAL_3 is gone, so TEST_1 (whose gt includes it) is skipped, never answered with another image.
    assert data.splits["test"] == [TEST_2]
    assert data.skipped == {"missing_image": 1, "missing_gt_image": 1}

    jpeg(tmp_path / "gallery" / LIVE_T / f"{GAL_3}.jpg")
    queries = json.loads((ann / "query_tenframes.json").read_text())
    queries["no-room-here-at-all-x-1-2"] = {"frames": ["a.jpg"]}
    (ann / "query_tenframes.json").write_text(json.dumps(queries))
    with pytest.raises(DataError, match=r"query_tenframes\.json, key 'no-room-here-at-all-x-1-2'.*no images"):
        read(tmp_path, splits=["test"])
