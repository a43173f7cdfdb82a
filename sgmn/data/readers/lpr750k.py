"""Reader of LPR750K, the public subset of LPR4M shipped with the RICE code.

Layout (spec: data-formats.md §2), annotation names matched by pattern under ``annotations/``::

    annotations/training_videoinfo_*.txt        10 tab-separated columns, see TRAIN_COLUMNS
    annotations/query_tenframes.json            {video_id: {"frames": [10 paths under query/], "gt": ...}}
    annotations/test_videoid_to_gtimage_*.json  {video_id: [gt image ids]} (optional when
                                                query_tenframes.json carries "gt")
    annotations/gallery_main.txt                one "live_id/image_file" per line, under gallery/
    query/  gallery/<live_id>/  training_image/  training_video_00 .. training_video_07/

- A clip selling several products has several training rows; they merge into one clip (each
  row's boxes kept for its own product, see ``merge_training_row``).
- Training frame paths are relative to the root or to one of the ``training_video_*`` folders
  (shop images: to the root or ``training_image/``); each is looked up in all of them.
- Image id of a gallery file = the first 5 dash groups of its name; live id of a clip = the first
  5 dash groups of its video id. A test query is ranked against the gallery of its live id.
- The box column is not used by RICE: rows whose boxes cannot be read keep ``boxes=None`` and
  are counted in ``LPRData.skipped["unusable_boxes"]`` (the row itself is kept).
- A ``"gt"`` entry, ``"asr"`` text in ``query_tenframes.json`` is used when present.

Skip kinds: malformed_row, missing_frame, missing_image, no_gallery, missing_gt_image,
duplicate_clip, conflicting_row (a row of a clip with other frames or ASR than its first row).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional, Union

from sgmn.data.readers.common import (
    check_splits,
    PathResolver,
    find_annotation,
    live_id_of,
    load_json_object,
    merge_training_row,
    parse_box,
    parse_list,
    read_tsv_rows,
)
from sgmn.data.records import Box, Clip, LPRData, Product, Room
from sgmn.errors import DataError, ErrorPolicy, OnError

TRAIN_COLUMNS = (
    "video_id", "frame_paths", "boxes", "image_id", "image_path", "title",
    "category_id", "category", "spu_id", "asr",
)
COL = {name: i for i, name in enumerate(TRAIN_COLUMNS)}
TRAIN_PATTERN = "training_videoinfo_*.txt"
QUERY_FILE = "query_tenframes.json"
GT_PATTERN = "test_videoid_to_gtimage_*.json"
GALLERY_FILE = "gallery_main.txt"
SPLITS = ("train", "test")


class _Skip(DataError):
    """A DataError carrying the skip-count kind it belongs to."""

    def __init__(self, kind: str, err: DataError):
        super().__init__(err.reason, file=err.file, line=err.line, key=err.key)
        self.kind = kind


def read(root: Union[str, Path], on_error: OnError = "raise", splits: Iterable[str] = SPLITS) -> LPRData:
    root = Path(root)
    splits = check_splits(splits, SPLITS, "LPR750K")
    annotations = root / "annotations"
    if not annotations.is_dir():
        raise DataError("LPR750K root has no annotations/ folder", file=root)
    policy = ErrorPolicy(on_error)
    data = LPRData(source="lpr750k", root=root)
    if "train" in splits:
        _read_train(root, annotations, data, policy)
    if "test" in splits:
        _read_test(root, annotations, data, policy)
    data.skipped.update(policy.skipped)
    return data


def image_id_of(file_name: str) -> str:
    """Gallery image id: the first 5 dash groups of the file name (without extension)."""
    stem = os.path.splitext(PurePosixPath(file_name).name)[0]
    return "-".join(stem.split("-")[:5])


# ---------------------------------------------------------------- training
def _read_train(root: Path, annotations: Path, data: LPRData, policy: ErrorPolicy) -> None:
    path = find_annotation(annotations, TRAIN_PATTERN)
    video_dirs = sorted(p for p in root.glob("training_video_*") if p.is_dir())
    frames = PathResolver([root, *video_dirs])
    images = PathResolver([root, root / "training_image"])
    split: list[str] = []
    rows = read_tsv_rows(path, len(TRAIN_COLUMNS), max_columns=len(TRAIN_COLUMNS), policy=policy,
                         desc=f"reading {path.name}")
    for line_no, cols in rows:
        try:
            clip, product = _train_row(path, line_no, cols, frames, images, data)
        except _Skip as err:
            policy.handle(err, err.kind)
            continue
        try:
            merge_training_row(data, split, clip, product, file=path, line=line_no)
        except DataError as err:
            policy.handle(err, "conflicting_row")
    data.splits["train"] = split


def _train_row(path, line_no, cols, frames: PathResolver, images: PathResolver, data: LPRData):
    where = {"file": path, "line": line_no}
    try:
        video_id = cols[COL["video_id"]].strip()
        if not video_id:
            raise DataError("empty video_id", key="video_id", **where)
        room_id = live_id_of(video_id, **where)
        written = parse_list(cols[COL["frame_paths"]], column="frame_paths", **where)
        if not written:
            raise DataError("empty frame path list", key="frame_paths", **where)
        image_id = cols[COL["image_id"]].strip()
        if not image_id:
            raise DataError("empty image_id", key="image_id", **where)
    except DataError as err:
        raise _Skip("malformed_row", err) from None
    try:
        frame_paths = [frames.resolve(f, key="frame_paths", **where) for f in written]
    except DataError as err:
        raise _Skip("missing_frame", err) from None
    try:
        image_paths = [images.resolve(cols[COL["image_path"]], key="image_path", **where)]
    except DataError as err:
        raise _Skip("missing_image", err) from None

    boxes = _optional_boxes(cols[COL["boxes"]], len(frame_paths), where, data)
    category = cols[COL["category"]].strip() or None
    spu_id = cols[COL["spu_id"]].strip() or None
    clip = Clip(
        clip_id=video_id,
        room_id=room_id,
        frame_paths=frame_paths,
        boxes=boxes,
        asr=cols[COL["asr"]].strip() or None,
        category=category,
    )
    product = Product(
        product_id=image_id,
        image_paths=image_paths,
        title=cols[COL["title"]].strip() or None,
        room_id=room_id,
        category=category,
        attributes={k: v for k, v in (("category_id", cols[COL["category_id"]].strip()), ("spu_id", spu_id)) if v},
        group=spu_id,
    )
    return clip, product


def _optional_boxes(text: str, n_frames: int, where: dict, data: LPRData) -> Optional[list[Optional[Box]]]:
    """Per-frame boxes when the column holds one readable box per frame; otherwise None.

    RICE ignores this column, so a bad value does not cost the row; it is counted instead.
    """
    if not text.strip() or text.strip() in ("[]", "None"):
        return None
    try:
        raw = parse_list(text, column="boxes", **where)
        if len(raw) != n_frames:
            raise DataError(f"{len(raw)} boxes for {n_frames} frames", key="boxes", **where)
        return [parse_box(b, key="boxes", **where) for b in raw]
    except DataError:
        data.skipped["unusable_boxes"] += 1
        return None


# ---------------------------------------------------------------- test
def _read_test(root: Path, annotations: Path, data: LPRData, policy: ErrorPolicy) -> None:
    query_file = annotations / QUERY_FILE
    gallery_file = annotations / GALLERY_FILE
    for f in (query_file, gallery_file):
        if not f.is_file():
            raise DataError("LPR750K test annotation file is missing", file=f)
    gt_file = find_annotation(annotations, GT_PATTERN, required=False)
    queries = load_json_object(query_file)
    gt = _read_gt(gt_file) if gt_file is not None else {}

    _read_gallery(root, gallery_file, data, policy)

    query_frames = PathResolver([root / "query", root])  # paths are under query/, some carry the prefix
    split: list[str] = []
    for video_id, entry in queries.items():
        try:
            clip = _test_clip(query_frames, query_file, video_id, entry, gt, data, gt_file)
        except _Skip as err:
            policy.handle(err, err.kind)
            continue
        data.clips[video_id] = clip
        split.append(video_id)
    data.splits["test"] = split


def _read_gallery(root: Path, gallery_file: Path, data: LPRData, policy: ErrorPolicy) -> None:
    gallery_dir = root / "gallery"
    for line_no, cols in read_tsv_rows(gallery_file, 1, max_columns=1, policy=policy):
        entry = cols[0].strip()
        where = {"file": gallery_file, "line": line_no}
        parts = PurePosixPath(entry.replace("\\", "/")).parts
        if len(parts) != 2:
            policy.handle(DataError(f"expected 'live_id/image_file', got {entry!r}", **where), "malformed_row")
            continue
        live_id, file_name = parts
        image_path = gallery_dir / live_id / file_name
        if not image_path.is_file():
            policy.handle(DataError(f"gallery image {image_path} does not exist", **where), "missing_image")
            continue
        product_id = image_id_of(file_name)
        room = data.rooms.setdefault(live_id, Room(live_id))
        product = data.products.get(product_id)
        if product is None:
            data.products[product_id] = Product(product_id, [image_path], room_id=live_id)
        elif image_path not in product.image_paths:  # another image of the same product
            product.image_paths.append(image_path)
        if product_id not in room.product_ids:
            room.product_ids.append(product_id)


def _read_gt(path: Path) -> dict[str, list[str]]:
    out = {}
    for video_id, value in load_json_object(path).items():
        out[video_id] = _gt_ids(value, path, video_id)
    return out


def _gt_ids(value, path: Path, video_id: str) -> list[str]:
    """A gt value: an id, a file name or a list of those -> list of image ids."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
        raise DataError(f"expected a list of image ids, got {value!r}", file=path, key=video_id)
    return list(dict.fromkeys(image_id_of(v.strip()) for v in values))


def _test_clip(query_frames: PathResolver, query_file, video_id, entry, gt, data: LPRData, gt_file=None) -> Clip:
    where = {"file": query_file, "key": video_id}
    if video_id in data.clips:
        raise _Skip("duplicate_clip", DataError("test video id is also a training clip", **where))
    try:
        if not isinstance(entry, dict) or not isinstance(entry.get("frames"), list) or not entry["frames"]:
            raise DataError('expected {"frames": [paths under query/], ...}', **where)
        if not all(isinstance(f, str) and f.strip() for f in entry["frames"]):
            raise DataError(f"frame paths must be non-empty strings: {entry['frames']!r}", **where)
        room_id = live_id_of(video_id, file=query_file)
        if video_id in gt:
            product_ids = gt[video_id]
        elif entry.get("gt") is not None:
            product_ids = _gt_ids(entry["gt"], query_file, video_id)
        else:
            product_ids = []
        asr = entry.get("asr")
        if asr is not None and not isinstance(asr, str):
            raise DataError(f"asr must be a string, got {type(asr).__name__}", **where)
    except DataError as err:
        raise _Skip("malformed_row", err) from None
    if room_id not in data.rooms or not data.rooms[room_id].product_ids:
        raise _Skip("no_gallery", DataError(f"live room {room_id!r} has no images in {GALLERY_FILE}", **where))
    lost = [p for p in product_ids if p not in data.products]
    if lost:
        # named against the file the ground truth came from
        gt_where = {"file": gt_file, "key": video_id} if video_id in gt else where
        raise _Skip("missing_gt_image", DataError(f"ground-truth image(s) {lost} are not in the gallery", **gt_where))
    try:
        frame_paths = [query_frames.resolve(f, **where) for f in entry["frames"]]
    except DataError as err:
        raise _Skip("missing_frame", err) from None
    return Clip(
        clip_id=video_id,
        room_id=room_id,
        frame_paths=frame_paths,
        asr=(asr.strip() or None) if asr else None,
        product_ids=list(product_ids),
    )
