"""Readers never give silently wrong data (issue 11, item 7): repeated keys, id-only ASR lines,
missing boxed frames and ground truth named against the right file are errors naming the file,
line and key, or counted skips under on_error="skip"."""

from __future__ import annotations

import json

import pytest

from sgmn.data.readers import read_dataset
from sgmn.data.readers.common import load_json_object
from sgmn.data.readers.folders import read_titles
from sgmn.data.readers.lpr4m import read
from sgmn.errors import DataError
from sgmn.text.precomputed import load_vector_json
from test_reader_lpr4m import IMG_1, IMG_2, IMG_4, TEST_1, TEST_2, write_lpr4m


def _append_key(text: str, entry: str) -> str:
    """A JSON object's text with one more ``"key": value`` before its closing brace."""
    end = text.rstrip().rfind("}")
    return text[:end] + ", " + entry + "}"


def _rewrite(path, text):
    path.write_text(text, encoding="utf-8")


def test_repeated_keys_in_any_json_file_are_an_error_naming_key_and_line(tmp_path):
    path = tmp_path / "gt.json"
    _rewrite(path, '{\n  "a": ["x"],\n  "b": ["y"],\n  "a": ["z"]\n}\n')
    with pytest.raises(DataError) as info:
        load_json_object(path)
    assert info.value.key == "a" and info.value.line == 4 and "more than once" in str(info.value)
    nested = tmp_path / "nested.json"
    _rewrite(nested, '{"v1": {"frames": ["f"], "frames": ["g"]}}')
    with pytest.raises(DataError, match="'frames' appears more than once"):
        load_json_object(nested)
    vectors = tmp_path / "asr_vectors.json"
    _rewrite(vectors, '{"c1": [0.1, 0.2], "c1": [0.3, 0.4]}')
    with pytest.raises(DataError, match="'c1' appears more than once"):
        load_vector_json(vectors)
    titles = tmp_path / "titles.json"
    _rewrite(titles, '{"p1": "red dress", "p1": "blue dress"}')
    with pytest.raises(DataError, match="'p1' appears more than once"):
        read_titles(titles)


def test_lpr4m_repeated_ground_truth_key_is_an_error(tmp_path):
    info = write_lpr4m(tmp_path)
    gt = info["ann"] / "test_videoid_to_gtimage_2.json"
    _rewrite(gt, f'{{"{TEST_1}": ["{IMG_2}"],\n"{TEST_2}": ["{IMG_4}"],\n"{TEST_1}": ["{IMG_1}"]}}')
    with pytest.raises(DataError) as err:
        read(tmp_path, splits=("test",))
    assert err.value.file == str(gt) and err.value.key == TEST_1 and err.value.line == 3


@pytest.mark.parametrize("which", ["asr", "title"])
def test_lpr4m_id_listed_twice_in_asr_or_title_file(tmp_path, which):
    info = write_lpr4m(tmp_path)
    if which == "asr":
        path = info["ann"] / "test_videoid_asr_2.txt"
        _rewrite(path, f"{TEST_1}\tthe blue mug is back\n{TEST_2}\t\n{TEST_1}\tthe red bottle\n")
        key, line = TEST_1, 3
    else:
        path = info["ann"] / "test_image_title_3.txt"
        _rewrite(path, f"{IMG_1}\tred striped bottle\n{IMG_2}\tblue mug\n{IMG_4}\tplain box\n{IMG_4}\tbox\n")
        key, line = IMG_4, 4
    with pytest.raises(DataError, match="listed again") as err:
        read(tmp_path, splits=("test",))
    assert (err.value.file, err.value.line, err.value.key) == (str(path), line, key)
    data = read(tmp_path, splits=("test",), on_error="skip")
    assert data.skipped["duplicate_key"] == 1
    # nothing is read with a guessed text: the clip (or the product, and so its query) is dropped
    gone = TEST_1 if which == "asr" else TEST_2
    assert gone not in data.splits["test"] and len(data.splits["test"]) == 1


def test_lpr4m_asr_line_holding_only_the_id_is_not_read_as_no_asr(tmp_path):
    info = write_lpr4m(tmp_path)
    path = info["ann"] / "test_videoid_asr_2.txt"
    _rewrite(path, f"{TEST_1}\n{TEST_2}\t\n")  # TEST_2's empty text (after a tab) stays legal
    with pytest.raises(DataError, match="holds only the video_id") as err:
        read(tmp_path, splits=("test",))
    assert (err.value.file, err.value.line, err.value.key) == (str(path), 1, TEST_1)
    data = read(tmp_path, splits=("test",), on_error="skip")
    assert data.splits["test"] == [TEST_2] and data.clips[TEST_2].asr is None
    assert data.skipped["malformed_row"] == 1


def test_lpr4m_missing_test_frame_with_a_box_is_not_dropped_silently(tmp_path):
    info = write_lpr4m(tmp_path)
    (tmp_path / "test_frames" / "a" / f"{TEST_1}-0000.jpg").unlink()  # it has a box
    boxes = info["ann"] / "test_frameid2gtbox_4.json"
    with pytest.raises(DataError, match="has a box in test_frameid2gtbox_4.json but no file") as err:
        read(tmp_path, splits=("test",))
    assert err.value.file == str(boxes) and err.value.key == f"{TEST_1}-0000"
    data = read(tmp_path, splits=("test",), on_error="skip")
    assert data.splits["test"] == [TEST_2] and data.skipped["missing_frame"] == 1


def test_lpr4m_unknown_ground_truth_product_is_reported_against_the_ground_truth_file(tmp_path):
    info = write_lpr4m(tmp_path)
    gt = info["ann"] / "test_videoid_to_gtimage_2.json"
    gt.write_text(json.dumps({TEST_1: [IMG_2, "not-in-any-gallery"], TEST_2: [IMG_4]}))
    with pytest.raises(DataError, match="not-in-any-gallery") as err:
        read(tmp_path, splits=("test",))
    assert err.value.file == str(gt) and err.value.key == TEST_1


def test_lpr750k_unknown_ground_truth_is_reported_against_the_gt_file(tmp_path):
    from test_reader_lpr750k import GAL_1, TEST_1 as Q1, TEST_2 as Q2, write_lpr750k

    info = write_lpr750k(tmp_path)
    gt = tmp_path / "annotations" / "test_videoid_to_gtimage_2.json"
    gt.write_text(json.dumps({Q1: [GAL_1, "ffffffff-0000-0000-0000-000000000000"]}))
    with pytest.raises(DataError, match="not in the gallery") as err:
        read_dataset(tmp_path, "lpr750k", splits=("test",))
    assert err.value.file == str(gt) and err.value.key == Q1
    assert info["q1"]
    # a repeated key in the query file is an error naming it
    queries = tmp_path / "annotations" / "query_tenframes.json"
    text = queries.read_text()
    queries.write_text(_append_key(text, f'"{Q2}": {{"frames": ["x.jpg"]}}'))
    with pytest.raises(DataError, match="appears more than once") as err:
        read_dataset(tmp_path, "lpr750k", splits=("test",))
    assert err.value.key == Q2 and err.value.file == str(queries)


def test_movingfashion_repeated_product_or_tracklet_frame_is_an_error(tmp_path):
    from test_reader_movingfashion import write_movingfashion

    write_movingfashion(tmp_path)
    test = tmp_path / "test.json"
    text = test.read_text()
    test.write_text(_append_key(text, '"p2": {"img_path": "imgs/p1.jpg", "video_paths": []}'))
    with pytest.raises(DataError, match="'p2' appears more than once"):
        read_dataset(tmp_path, "movingfashion")
    write_movingfashion(tmp_path)
    entries = json.loads(test.read_text())
    entries["p1"]["tracklets"][0]["03"] = [1, 1, 2, 2]  # frame 3 is already listed as "3"
    test.write_text(json.dumps(entries))
    with pytest.raises(DataError, match="frame 3 twice"):
        read_dataset(tmp_path, "movingfashion")
