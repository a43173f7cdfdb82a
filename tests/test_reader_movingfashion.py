"""MovingFashion reader on a tiny archive in the real layout (real mp4 files written with PyAV)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from sgmn.data.readers import read_dataset
from sgmn.data.readers.movingfashion import read
from sgmn.errors import DataError
from helpers import write_mp4  # noqa: E402


def mp4(path: Path, frames: int = 8, size: int = 64) -> Path:
    return write_mp4(path, [np.full((size, size, 3), i * 30, dtype=np.uint8) for i in range(frames)], rate=4)


def jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 12), (90, 10, 200)).save(path, "JPEG")
    return path


def write_movingfashion(root: Path) -> None:
    for name in ("v_train1", "v_t1", "v_t2", "v_shared"):
        mp4(root / "videos" / f"{name}.mp4")
    for name in ("p_train", "p1", "p2", "p3"):
        jpeg(root / "imgs" / f"{name}.jpg")
    (root / "train.json").write_text(json.dumps({
        "p_train": {"img_path": "imgs/p_train.jpg", "video_paths": ["videos/v_train1.mp4"], "source": 1},
    }))
    (root / "test.json").write_text(json.dumps({
        "p1": {"img_path": "imgs/p1.jpg", "video_paths": ["videos/v_t1.mp4", "videos/v_shared.mp4"], "source": 1,
               "tracklets": [{"0": [1, 2, 30, 40], "3": [0, 0, 0, 0], "2": [5, 5, 20, 20]}, {"1": [0, 1, 2, 3]}]},
        "p2": {"img_path": "imgs/p2.jpg", "video_paths": ["videos/v_t2.mp4"], "source": 2},
        # A second correct image for v_shared.
        "p3": {"img_path": "imgs/p3.jpg", "video_paths": ["videos/v_shared.mp4"], "source": 0},
    }))


def test_reads_clips_per_video_with_all_correct_products(tmp_path):
    write_movingfashion(tmp_path)
    data = read_dataset(tmp_path, "movingfashion")
    assert data.splits == {"train": ["v_train1"], "test": ["v_t1", "v_shared", "v_t2"]}
    assert not data.skipped

    t1 = data.clips["v_t1"]
    assert t1.video_path == tmp_path / "videos" / "v_t1.mp4" and t1.frame_paths == []
    assert t1.asr is None and t1.asr_vector is None
    assert t1.product_ids == ["p1"] and t1.room_id == "all" and t1.group == "regular"
    assert t1.video_boxes == {0: (1.0, 2.0, 30.0, 40.0), 2: (5.0, 5.0, 20.0, 20.0)}  # all-zero box dropped
    shared = data.clips["v_shared"]
    assert shared.product_ids == ["p1", "p3"]
    assert shared.video_boxes == {1: (0.0, 1.0, 2.0, 3.0)}
    assert data.clips["v_t2"].group == "hard" and data.clips["v_t2"].video_boxes is None

    assert data.rooms["all"].product_ids == ["p1", "p2", "p3"]
    assert data.rooms["train"].product_ids == ["p_train"]
    assert data.clips["v_train1"].room_id == "train" and data.clips["v_train1"].product_ids == ["p_train"]
    groups = {p.product_id: p.group for p in data.room_gallery("all")}
    assert groups == {"p1": "regular", "p2": "hard", "p3": "hard"}
    assert data.products["p2"].image_paths == [tmp_path / "imgs" / "p2.jpg"]
    # The written mp4 is real: PyAV can open it (decoding itself is sgmn.data.media's job).
    with av.open(str(t1.video_path)) as container:
        assert container.streams.video[0].codec_context.width == 64


def test_missing_video_raises_or_is_counted(tmp_path):
    write_movingfashion(tmp_path)
    (tmp_path / "videos" / "v_t2.mp4").unlink()
    with pytest.raises(DataError, match=r"test\.json, key 'v_t2'.*'videos/v_t2\.mp4' not found"):
        read(tmp_path)
    data = read(tmp_path, on_error="skip")
    assert data.splits["test"] == ["v_t1", "v_shared"]
    assert data.skipped == {"missing_video": 1}
    assert "p2" in data.rooms["all"].product_ids  # the product is still a gallery item


def test_missing_image_skips_its_clips(tmp_path):
    write_movingfashion(tmp_path)
    (tmp_path / "imgs" / "p3.jpg").unlink()
    with pytest.raises(DataError, match=r"test\.json, key 'p3'.*not found"):
        read(tmp_path, splits=["test"])
    data = read(tmp_path, splits=["test"], on_error="skip")
    # v_shared had p3 as one of its answers: skipped, not scored against p1 alone.
    assert data.splits["test"] == ["v_t1", "v_t2"]
    assert data.skipped == {"missing_image": 1, "missing_gt_image": 1}
    assert data.rooms["all"].product_ids == ["p1", "p2"]


def test_malformed_entries(tmp_path):
    write_movingfashion(tmp_path)
    test = json.loads((tmp_path / "test.json").read_text())
    test["p2"]["tracklets"] = [{"x": [1, 2, 3, 4]}]
    (tmp_path / "test.json").write_text(json.dumps(test))
    with pytest.raises(DataError, match=r"test\.json, key 'p2'.*frame index 'x'"):
        read(tmp_path, splits=["test"])
    test["p2"] = {"img_path": "imgs/p2.jpg", "source": 1}
    (tmp_path / "test.json").write_text(json.dumps(test))
    with pytest.raises(DataError, match=r"key 'p2'.*missing field\(s\) \['video_paths'\]"):
        read(tmp_path, splits=["test"])
    data = read(tmp_path, splits=["test"], on_error="skip")
    assert data.skipped == {"malformed_row": 1} and data.splits["test"] == ["v_t1", "v_shared"]
