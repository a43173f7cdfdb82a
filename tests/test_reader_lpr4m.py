"""LPR4M full-release reader and the shared reader utilities, on files in the real layout."""

import json
from pathlib import Path

import pytest

from sgmn.data.readers import read_dataset
from sgmn.data.readers.common import (
    MediaIndex,
    find_annotation,
    live_id_of,
    parse_box,
    parse_hw_size,
    parse_list,
    read_tsv_rows,
)
from sgmn.data.readers.lpr4m import read
from sgmn.errors import DataError, ErrorPolicy

LIVE_A = "0a1b2c3d-aaaa-4bbb-8ccc-111111111111"
LIVE_B = "9f8e7d6c-bbbb-4ccc-8ddd-222222222222"
IMG_1 = "11111111-0000-4000-8000-000000000001"
IMG_2 = "11111111-0000-4000-8000-000000000002"
IMG_3 = "11111111-0000-4000-8000-000000000003"
IMG_4 = "11111111-0000-4000-8000-000000000004"
CLIP_1 = f"{LIVE_A}-1000-9000"
CLIP_2 = f"{LIVE_B}-2000-5000"
TEST_1 = f"{LIVE_A}-30000-60000"
TEST_2 = f"{LIVE_B}-70000-90000"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8 not decoded by the reader")
    return path


def _shard(folder: Path, key: int, original_id: str) -> Path:
    """An img2dataset ``--output_format files`` entry: numbered image + json sidecar with the url."""
    image = _touch(folder / f"{key:09d}.jpg")
    (folder / f"{key:09d}.json").write_text(json.dumps({"url": f"https://cdn.example.com/x/{original_id}.jpg",
                                                        "key": f"{key:09d}", "status": "success"}))
    return image


def _train_row(*cols) -> str:
    assert len(cols) == 11
    return "\t".join(cols)


def write_lpr4m(root: Path) -> dict:
    """A tiny LPR4M download: two rooms, three training rows (one clip sells two products), two tests."""
    ann = root / "annotations"
    ann.mkdir(parents=True)
    frames1 = [f"{CLIP_1}-{i:04d}" for i in range(3)]
    frames2 = [f"{CLIP_2}-{i:04d}" for i in range(2)]
    rows = [
        # Python-literal lists, one all-zero box
        _train_row(CLIP_1, repr(frames1), "[[10, 20, 110, 220], [0, 0, 0, 0], [12.5, 20, 100, 200]]",
                   IMG_1, "red striped bottle", "3", "bottles", "look at this red bottle", "large", "long", "single"),
        # same clip, second product; JSON lists
        _train_row(CLIP_1, json.dumps(frames1), json.dumps([[0, 0, 0, 0]] * 3), IMG_2, "blue mug", "4", "mugs",
                   "look at this red bottle", "small", "long", "multiple"),
        _train_row(CLIP_2, json.dumps(frames2), json.dumps([[1, 1, 5, 5], [2, 2, 6, 6]]), IMG_3, "green shoe", "5",
                   "shoes", "", "medium", "short", "single"),
    ]
    (ann / "training_videoinfo_full_3.txt").write_text("\n".join(rows) + "\n\n", encoding="utf-8")
    (ann / "test_videoid_asr_2.txt").write_text(f"{TEST_1}\tthe blue mug is back\n{TEST_2}\t\n")
    (ann / "test_image_title_3.txt").write_text(f"{IMG_1}\tred striped bottle\n{IMG_2}\tblue mug\n{IMG_4}\tplain box\n")
    # TEST_1 has two correct products.
    (ann / "test_videoid_to_gtimage_2.json").write_text(json.dumps({TEST_1: [IMG_2, IMG_1], TEST_2: [IMG_4]}))
    (ann / "test_frameid2gtbox_4.json").write_text(json.dumps({
        f"{TEST_1}-0000": [5, 6, 50, 60],
        f"{TEST_1}-0001": [[0, 0, 0, 0], [7, 8, 70, 80]],
        f"{TEST_2}-0000": [0, 0, 0, 0],
    }))
    (ann / "test_liveid_to_gallery_2.json").write_text(json.dumps({LIVE_A: [IMG_1, IMG_2], LIVE_B: [IMG_4]}))

    # Media: training frames as plain files, shop images in img2dataset shards, test frames mixed.
    for f in frames1 + frames2:
        _touch(root / "train_frames" / f"{f}.jpg")
    shop = root / "shop_images" / "00000"
    for key, image_id in enumerate([IMG_1, IMG_2, IMG_3, IMG_4]):
        _shard(shop, key, image_id)
    # Test frames out of order on disk: index order must come from the id.
    _touch(root / "test_frames" / "b" / f"{TEST_1}-0002.jpg")
    _touch(root / "test_frames" / "a" / f"{TEST_1}-0000.jpg")
    _shard(root / "test_frames" / "00000", 0, f"{TEST_1}-0001")
    _touch(root / "test_frames" / "a" / f"{TEST_2}-0000.png")
    return {"ann": ann, "frames1": frames1, "frames2": frames2}


def test_reads_training_and_test_splits(tmp_path):
    write_lpr4m(tmp_path)
    data = read_dataset(tmp_path, "lpr4m")

    assert data.splits == {"train": [CLIP_1, CLIP_2], "test": [TEST_1, TEST_2]}
    clip = data.clips[CLIP_1]
    assert clip.room_id == LIVE_A
    assert clip.product_ids == [IMG_1, IMG_2]  # two rows merged into one clip
    assert [p.stem for p in clip.frame_paths] == [f"{CLIP_1}-{i:04d}" for i in range(3)]
    assert clip.boxes == [(10.0, 20.0, 110.0, 220.0), None, (12.5, 20.0, 100.0, 200.0)]
    # each row boxes its own product: IMG_2's all-zero boxes are not replaced by IMG_1's
    assert clip.boxes_for(IMG_1) == clip.boxes and clip.boxes_for(IMG_2) == [None, None, None]
    assert clip.asr == "look at this red bottle"
    assert clip.attributes == {"scale": "large", "duration": "long", "num_products": "single"}
    assert clip.category == "bottles"
    assert data.clips[CLIP_2].asr is None  # empty ASR is "no text", not ""

    p1 = data.products[IMG_1]
    assert p1.title == "red striped bottle" and p1.category == "bottles"
    assert p1.attributes == {"category_id": "3"}
    assert p1.image_paths[0].name == "000000000.jpg"  # found through the img2dataset sidecar
    assert data.products[IMG_4].image_paths[0].name == "000000003.jpg"
    # Training room gallery = products referenced by its clips, in first-seen order.
    assert data.rooms[LIVE_A].product_ids == [IMG_1, IMG_2]

    test1 = data.clips[TEST_1]
    assert test1.product_ids == [IMG_2, IMG_1]
    assert [p.name for p in test1.frame_paths] == [f"{TEST_1}-0000.jpg", "000000000.jpg", f"{TEST_1}-0002.jpg"]
    assert test1.boxes == [(5.0, 6.0, 50.0, 60.0), (7.0, 8.0, 70.0, 80.0), None]
    assert test1.asr == "the blue mug is back"
    test2 = data.clips[TEST_2]
    assert test2.asr is None and test2.boxes == [None] and test2.product_ids == [IMG_4]
    assert data.rooms[LIVE_B].product_ids == [IMG_3, IMG_4]
    assert data.products[IMG_4].title == "plain box"
    assert "skipped" not in data.summary()


def test_split_selection_and_missing_split_files(tmp_path):
    paths = write_lpr4m(tmp_path)
    (paths["ann"] / "test_liveid_to_gallery_2.json").unlink()
    train_only = read(tmp_path, splits=("train",))
    assert list(train_only.splits) == ["train"]
    with pytest.raises(DataError, match="test_liveid_to_gallery"):
        read(tmp_path)


def test_annotations_only_mode_needs_no_media(tmp_path):
    write_lpr4m(tmp_path)
    for f in (tmp_path / "train_frames").iterdir():
        f.unlink()
    data = read(tmp_path, splits=("train",), require_media=False)
    assert data.clips[CLIP_1].frame_paths == [] and data.clips[CLIP_1].product_ids == [IMG_1, IMG_2]
    with pytest.raises(DataError, match="missing file for id"):
        read(tmp_path, splits=("train",))


BAD_ROWS = {
    "columns": (lambda r: r.rsplit("\t", 1)[0], "expected 11 tab-separated columns, found 10"),
    "list": (lambda r: r.replace("[\"", "[\"unterminated", 1).replace("\"]", "", 1), "cannot parse list"),
    "box_count": (lambda r: r.replace("[1, 1, 5, 5], ", "", 1), "1 boxes for 2 frame ids"),
    "box_values": (lambda r: r.replace("[1, 1, 5, 5]", "[5, 1, 1, 5]", 1), "box corners are reversed"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_malformed_row_names_file_and_line_or_is_skipped(tmp_path, kind):
    paths = write_lpr4m(tmp_path)
    train_file = paths["ann"] / "training_videoinfo_full_3.txt"
    lines = train_file.read_text().split("\n")
    mutate, message = BAD_ROWS[kind]
    lines[2] = mutate(lines[2])  # the CLIP_2 row, line 3
    train_file.write_text("\n".join(lines))

    with pytest.raises(DataError) as info:
        read(tmp_path, splits=("train",))
    assert info.value.file == str(train_file) and info.value.line == 3
    assert message in str(info.value)

    data = read(tmp_path, splits=("train",), on_error="skip")
    assert data.splits["train"] == [CLIP_1]  # the good rows are all read
    assert data.clips[CLIP_1].product_ids == [IMG_1, IMG_2]
    assert IMG_3 not in data.products  # nothing of the bad row leaks in
    assert data.skipped == {"malformed_row": 1}
    assert data.summary()["skipped"] == {"malformed_row": 1}


@pytest.mark.parametrize("column, value", [(1, "frame_paths"), (7, "asr")])
def test_rows_of_one_clip_that_disagree_are_an_error_or_a_counted_skip(tmp_path, column, value):
    paths = write_lpr4m(tmp_path)
    train_file = paths["ann"] / "training_videoinfo_full_3.txt"
    lines = train_file.read_text().split("\n")
    cols = lines[1].split("\t")  # CLIP_1's second row (IMG_2)
    cols[column] = repr(paths["frames1"][:2]) if column == 1 else "another speech"
    cols[2] = repr([[0, 0, 0, 0]] * (2 if column == 1 else 3))
    lines[1] = "\t".join(cols)
    train_file.write_text("\n".join(lines))

    with pytest.raises(DataError, match=f"earlier row with other {value}") as info:
        read(tmp_path, splits=("train",))
    assert info.value.file == str(train_file) and info.value.line == 2

    data = read(tmp_path, splits=("train",), on_error="skip")
    assert data.skipped == {"conflicting_row": 1}
    clip = data.clips[CLIP_1]  # the first row stands, nothing of the conflicting one is merged
    assert clip.product_ids == [IMG_1] and len(clip.frame_paths) == 3 and clip.asr == "look at this red bottle"
    assert IMG_2 not in data.products and data.rooms[LIVE_A].product_ids == [IMG_1]


def test_missing_media_is_an_error_or_a_counted_skip(tmp_path):
    write_lpr4m(tmp_path)
    (tmp_path / "train_frames" / f"{CLIP_2}-0001.jpg").unlink()
    (tmp_path / "test_frames" / "a" / f"{TEST_2}-0000.png").unlink()
    with pytest.raises(DataError, match=f"missing file for id '{CLIP_2}-0001'") as info:
        read(tmp_path)
    assert info.value.line == 3

    data = read(tmp_path, on_error="skip")
    assert data.splits == {"train": [CLIP_1], "test": [TEST_1]}
    assert data.skipped == {"missing_frame": 2}


def test_missing_gallery_image_drops_product_and_its_queries(tmp_path):
    write_lpr4m(tmp_path)
    for f in (tmp_path / "shop_images" / "00000").glob("000000003.*"):
        f.unlink()  # IMG_4, the only gallery image of LIVE_B and TEST_2's ground truth
    with pytest.raises(DataError, match=IMG_4):
        read(tmp_path, splits=("test",))
    data = read(tmp_path, splits=("test",), on_error="skip")
    assert data.splits["test"] == [TEST_1]
    assert data.rooms[LIVE_B].product_ids == []
    assert data.skipped == {"missing_image": 1, "missing_gt_image": 1}


# ---------------------------------------------------------------- shared utilities
def test_parse_list_accepts_python_and_json_and_locates_errors():
    assert parse_list("['a-1', 'b']") == parse_list('["a-1", "b"]') == ["a-1", "b"]
    assert parse_list("(1, 2)") == [1, 2]
    with pytest.raises(DataError) as info:
        parse_list("[1, 2", file="f.txt", line=7, column="boxes")
    assert "f.txt" in str(info.value) and "line 7" in str(info.value) and "boxes" in str(info.value)
    with pytest.raises(DataError, match="expected a list"):
        parse_list("{'a': 1}", file="f.txt", line=1, column=2)


def test_parse_box_and_sizes():
    assert parse_box([0, 0, 0, 0]) is None
    assert parse_box("[1, 2, 3.5, 4]") == (1.0, 2.0, 3.5, 4.0)
    for bad in ([1, 2, 3], [1, "x", 3, 4], [1, 2, float("nan"), 4], [5, 0, 1, 4], [True, 0, 1, 1]):
        with pytest.raises(DataError):
            parse_box(bad, file="f", line=1, key="boxes")
    assert parse_hw_size("720\x01405") == (720, 405)
    for bad in ("720x405", "720\x01", "0\x01405", 720):
        with pytest.raises(DataError, match="frame size"):
            parse_hw_size(bad, file="f", line=2)


def test_live_id_and_annotation_lookup(tmp_path):
    assert live_id_of(CLIP_1) == LIVE_A and live_id_of(f"{CLIP_1}-0003") == LIVE_A
    with pytest.raises(DataError, match="5 dash"):
        live_id_of("room_clip_1")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "test_videoid_asr_20079.txt").write_text("x\n")
    assert find_annotation(tmp_path, "test_videoid_asr_*.txt").name == "test_videoid_asr_20079.txt"
    assert find_annotation(tmp_path, "nothing_*.txt", required=False) is None
    with pytest.raises(DataError, match="no annotation file"):
        find_annotation(tmp_path, "nothing_*.txt")
    (tmp_path / "test_videoid_asr_5.txt").write_text("x\n")
    with pytest.raises(DataError, match="several files"):
        find_annotation(tmp_path, "test_videoid_asr_*.txt")


def test_read_tsv_rows_tolerates_blank_lines_and_reports_short_rows(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("a\tb\tc\n\nd\te\n\xe9t\xe9\tx\ty\n".encode("utf-8") + b"\xff\tq\tr\n")
    with pytest.raises(DataError) as info:
        list(read_tsv_rows(path, 3))
    assert info.value.line == 3 and "found 2" in str(info.value)
    policy = ErrorPolicy("skip")
    rows = list(read_tsv_rows(path, 3, policy=policy))
    assert rows == [(1, ["a", "b", "c"]), (4, ["\u00e9t\u00e9", "x", "y"])]
    assert policy.skipped == {"malformed_row": 2}  # the short row and the non-UTF-8 row


def test_media_index_duplicates_and_require(tmp_path):
    _touch(tmp_path / "x" / "abc.jpg")
    _shard(tmp_path / "s" / "00000", 4, "def")
    index = MediaIndex.build(tmp_path)
    assert sorted(index.ids()) == ["abc", "def"]  # shard numbers are not ids
    with pytest.raises(DataError, match="missing file for id 'zzz'") as info:
        index.require("zzz", file="ann.txt", line=9)
    assert info.value.line == 9
    _touch(tmp_path / "y" / "abc.png")
    with pytest.raises(DataError, match="two different files"):
        MediaIndex.build(tmp_path)
    (tmp_path / "s" / "00000" / "000000004.json").write_text(json.dumps({"status": "success"}))
    (tmp_path / "y" / "abc.png").unlink()
    with pytest.raises(DataError, match="url"):
        MediaIndex.build(tmp_path)
