"""Reader of the LPR4M full release (RICE dataset card) and of the synthetic data set.

Layout (docs: /work/shared/spec/data-formats.md §1), annotation names matched by pattern:

- ``training_videoinfo_full_*.txt``: 11 tab-separated columns, see :data:`TRAIN_COLUMNS`.
  A clip selling several products appears on several rows; they merge into one clip (each
  row's boxes kept for its own product; rows disagreeing on frames or ASR: ``conflicting_row``).
- ``test_videoid_asr_*.txt`` (video_id, ASR), ``test_image_title_*.txt`` (image_id, title),
  ``test_videoid_to_gtimage_*.json``, ``test_frameid2gtbox_*.json`` (optional),
  ``test_liveid_to_gallery_*.json``.
- Optional ``test_videoid_attributes_*.txt`` (video_id, category id, category name, scale,
  duration, number of products): not in the real release; the synthetic generator writes it so
  that test breakdowns by category and attribute work.

Frames and shop images are found by id anywhere under the root (:class:`MediaIndex`); test
frames are the files named ``<clip_id>-NNNN``; a frame the boxes file boxes must exist (``missing_frame``).

Strictness: a key repeated in a JSON file, an id listed twice in the ASR or title file
(``duplicate_key``) and an ASR / title line holding only the id (``malformed_row``) are errors
naming file, line and key, or counted skips that drop what they belong to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Union

from sgmn.data.readers.common import (
    _FRAME_ID,
    check_splits,
    IMAGE_EXTENSIONS,
    MediaIndex,
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
    "video_id", "frame_ids", "boxes", "image_id", "title", "category_id", "category",
    "asr", "scale", "duration", "num_products",
)
# Attribute columns of the training file -> Clip.attributes keys (the evaluation breakdowns).
ATTRIBUTE_COLUMNS = {"scale": 8, "duration": 9, "num_products": 10}

TRAIN_PATTERN = "training_videoinfo_full_*.txt"
TEST_PATTERNS = {
    "asr": "test_videoid_asr_*.txt",
    "titles": "test_image_title_*.txt",
    "gt": "test_videoid_to_gtimage_*.json",
    "boxes": "test_frameid2gtbox_*.json",
    "gallery": "test_liveid_to_gallery_*.json",
    "attributes": "test_videoid_attributes_*.txt",
}
SPLITS = ("train", "test")


class _Skip(DataError):
    """A DataError carrying the skip-count kind it belongs to."""

    def __init__(self, kind: str, err: DataError):
        super().__init__(err.reason, file=err.file, line=err.line, key=err.key)
        self.kind = kind


def read(
    root: Union[str, Path],
    on_error: OnError = "raise",
    splits: Iterable[str] = SPLITS,
    require_media: bool = True,
    media: Optional[MediaIndex] = None,
) -> LPRData:
    """Read LPR4M annotations and locate their media.

    ``require_media=False`` reads annotations only: no media index is built, clips get no frame
    paths and products no image paths (quick counts of a huge download). With media required,
    a missing frame or image is an error (or a counted skip under ``on_error="skip"``).
    """
    root = Path(root)
    splits = check_splits(splits, SPLITS, "LPR4M")
    policy = ErrorPolicy(on_error)
    if require_media and media is None:
        media = MediaIndex.build(root)
    elif not require_media:
        media = None

    data = LPRData(source="lpr4m", root=root)
    if "train" in splits:
        _read_train(root, data, media, policy)
    if "test" in splits:
        _read_test(root, data, media, policy)
    data.skipped.update(policy.skipped)
    return data


# ---------------------------------------------------------------- training file
def _read_train(root: Path, data: LPRData, media: Optional[MediaIndex], policy: ErrorPolicy) -> None:
    path = find_annotation(root, TRAIN_PATTERN)
    split: list[str] = []
    rows = read_tsv_rows(path, len(TRAIN_COLUMNS), max_columns=len(TRAIN_COLUMNS), policy=policy,
                         desc=f"reading {path.name}")
    for line_no, cols in rows:
        try:
            clip, product = _train_row(path, line_no, cols, media)
        except _Skip as err:
            policy.handle(err, err.kind)
            continue
        try:
            merge_training_row(data, split, clip, product, file=path, line=line_no)
        except DataError as err:
            policy.handle(err, "conflicting_row")
    data.splits["train"] = split


def _train_row(path: Path, line_no: int, cols: list[str], media: Optional[MediaIndex]) -> tuple[Clip, Product]:
    """One training row -> (clip with this row's product, product); raises _Skip with its kind."""
    try:
        video_id = cols[0].strip()
        if not video_id:
            raise DataError("empty video_id", file=path, line=line_no, key="video_id")
        room_id = live_id_of(video_id, file=path, line=line_no)
        frame_ids = [_media_id(f, path, line_no) for f in parse_list(cols[1], file=path, line=line_no, column="frame_ids")]
        raw_boxes = parse_list(cols[2], file=path, line=line_no, column="boxes")
        if len(raw_boxes) != len(frame_ids):
            raise DataError(f"{len(raw_boxes)} boxes for {len(frame_ids)} frame ids (need one box per frame)",
                            file=path, line=line_no, key="boxes")
        boxes = [parse_box(b, file=path, line=line_no, key="boxes") for b in raw_boxes]
        image_id = cols[3].strip()
        if not image_id:
            raise DataError("empty image_id", file=path, line=line_no, key="image_id")
    except DataError as err:
        raise _Skip("malformed_row", err) from None

    frame_paths: list[Path] = []
    image_paths: list[Path] = []
    if media is not None:
        try:
            frame_paths = [media.require(f, file=path, line=line_no, key="frame_ids") for f in frame_ids]
        except DataError as err:
            raise _Skip("missing_frame", err) from None
        try:
            image_paths = [media.require(image_id, file=path, line=line_no, key="image_id")]
        except DataError as err:
            raise _Skip("missing_image", err) from None

    category = cols[6].strip() or None
    attributes = {name: cols[i].strip() for name, i in ATTRIBUTE_COLUMNS.items() if cols[i].strip()}
    clip = Clip(
        clip_id=video_id,
        room_id=room_id,
        frame_paths=frame_paths,
        boxes=boxes,
        asr=cols[7].strip() or None,
        category=category,
        attributes=attributes,
    )
    product = Product(
        product_id=image_id,
        image_paths=image_paths,
        title=cols[4].strip() or None,
        room_id=room_id,
        category=category,
        attributes={"category_id": cols[5].strip()} if cols[5].strip() else {},
    )
    return clip, product


def _media_id(value, path: Path, line_no: int) -> str:
    """A frame id as written in a list: tolerate a file name (``<id>.jpg``) or a path."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"frame id must be a non-empty string, got {value!r}", file=path, line=line_no, key="frame_ids")
    name = os.path.basename(value.strip())
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in IMAGE_EXTENSIONS else name


# ---------------------------------------------------------------- test files
def _read_test(root: Path, data: LPRData, media: Optional[MediaIndex], policy: ErrorPolicy) -> None:
    files = {name: find_annotation(root, pattern, required=name not in ("boxes", "attributes"))
             for name, pattern in TEST_PATTERNS.items()}
    asr, bad_asr = _read_two_columns(files["asr"], policy, "video_id", "asr")
    titles, bad_titles = _read_two_columns(files["titles"], policy, "image_id", "title")
    gt = _read_id_lists(files["gt"], "video_id")
    galleries = _read_id_lists(files["gallery"], "live_id")
    frame_boxes = _read_frame_boxes(files["boxes"], policy) if files["boxes"] is not None else {}
    attributes = _read_test_attributes(files["attributes"], policy) if files["attributes"] is not None else {}

    # Gallery products first: a clip is only usable if every ground truth of it was read.
    dropped: set[str] = set()
    for live_id, image_ids in galleries.items():
        room = data.rooms.setdefault(live_id, Room(live_id))
        for image_id in image_ids:
            if image_id in bad_titles:  # its title row was refused (counted): not read without it
                dropped.add(image_id)
                continue
            product = _test_product(image_id, live_id, titles, media, files["gallery"], data, policy)
            if product is None:
                dropped.add(image_id)
                continue
            if image_id not in room.product_ids:
                room.product_ids.append(image_id)

    split: list[str] = []
    clip_ids = list(asr) + [c for c in gt if c not in asr]
    boxed_frames = _frames_by_clip(frame_boxes)
    for clip_id in clip_ids:
        if clip_id in bad_asr:  # its ASR row was refused (counted): not read as "no ASR"
            continue
        try:
            clip = _test_clip(clip_id, asr, gt, attributes, frame_boxes, boxed_frames, galleries, dropped,
                              media, files, data)
        except _Skip as err:
            policy.handle(err, err.kind)
            continue
        data.clips[clip_id] = clip
        split.append(clip_id)
    data.splits["test"] = split


def _test_product(image_id, live_id, titles, media, gallery_file, data, policy) -> Optional[Product]:
    known = data.products.get(image_id)
    if known is not None:
        return known
    image_paths: list[Path] = []
    if media is not None:
        try:
            image_paths = [media.require(image_id, file=gallery_file, key=live_id)]
        except DataError as err:
            policy.handle(err, "missing_image")
            return None
    product = Product(product_id=image_id, image_paths=image_paths, title=titles.get(image_id), room_id=live_id)
    data.products[image_id] = product
    return product


def _frames_by_clip(frame_boxes: dict) -> dict[str, list[str]]:
    """Frame ids of the boxes file grouped by clip id (``<clip>-NNNN``)."""
    out: dict[str, list[str]] = {}
    for frame_id in frame_boxes:
        match = _FRAME_ID.match(frame_id)
        if match:
            out.setdefault(match["clip"], []).append(frame_id)
    return out


def _test_clip(clip_id, asr, gt, attributes, frame_boxes, boxed_frames, galleries, dropped, media, files,
               data) -> Clip:
    where = {"file": files["asr"] if clip_id in asr else files["gt"], "key": clip_id}
    if clip_id in data.clips:
        raise _Skip("duplicate_clip", DataError("clip id is also a training clip", **where))
    try:
        room_id = live_id_of(clip_id, file=where["file"])
    except DataError as err:
        raise _Skip("malformed_row", err) from None
    if room_id not in galleries:
        raise _Skip("no_gallery", DataError(f"live room {room_id!r} has no gallery in {files['gallery']}", **where))
    product_ids = list(gt.get(clip_id, []))
    lost = [p for p in product_ids if p in dropped or p not in data.products]
    if lost:
        # named against the ground-truth file, which is where these ids come from
        raise _Skip("missing_gt_image", DataError(
            f"ground-truth product(s) {lost} are not readable gallery products of {files['gallery'].name}",
            file=files["gt"], key=clip_id))

    frame_paths: list[Path] = []
    boxes: Optional[list[Optional[Box]]] = None
    if media is not None:
        entries = media.frame_entries(clip_id)
        frame_paths = [path for _, path in entries]
        if not entries:
            raise _Skip("missing_frame", DataError(f"no frame files named {clip_id}-NNNN under {media.root}", **where))
        if files["boxes"] is not None:
            present = {frame_id for frame_id, _ in entries}
            missing = sorted(f for f in boxed_frames.get(clip_id, ()) if f not in present)
            if missing:  # the clip would lose this frame and its box without a word
                raise _Skip("missing_frame", DataError(
                    f"frame {missing[0]!r} has a box in {files['boxes'].name} but no file under {media.root}"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                    file=files["boxes"], key=missing[0]))
            boxes = [frame_boxes.get(frame_id) for frame_id, _ in entries]
    category, clip_attributes = attributes.get(clip_id, (None, {}))
    return Clip(
        clip_id=clip_id,
        room_id=room_id,
        frame_paths=frame_paths,
        boxes=boxes,
        asr=asr.get(clip_id),
        category=category,
        attributes=dict(clip_attributes),
        product_ids=product_ids,
    )


def _read_two_columns(path: Path, policy: ErrorPolicy, id_name: str,
                      value_name: str) -> tuple[dict[str, Optional[str]], set[str]]:
    """``id \\t text`` rows (an empty text after the tab = none) -> ({id: text or None}, refused ids).

    A line holding only the id (no tab: a truncated or mis-split row, not an empty text) and an
    id listed twice are errors, or under the skip policy counted skips whose id is returned in
    the refused set (the caller drops what it belongs to, never reads it without its text).
    """
    out: dict[str, Optional[str]] = {}
    first_line: dict[str, int] = {}
    refused: set[str] = set()
    for line_no, cols in read_tsv_rows(path, 1, max_columns=2, policy=policy, desc=f"reading {path.name}"):
        key = cols[0].strip()
        if not key:
            policy.handle(DataError(f"empty {id_name}", file=path, line=line_no, key=id_name), "malformed_row")
            continue
        try:
            if len(cols) == 1:
                raise DataError(f"line holds only the {id_name}, no tab and no {value_name} (write "
                                f"'<id><TAB>' for an empty {value_name})", file=path, line=line_no, key=key)
            if key in first_line:
                raise DataError(f"{id_name} listed again (first on line {first_line[key]}); which "
                                f"{value_name} is meant cannot be told", file=path, line=line_no, key=key)
        except DataError as err:
            refused.add(key)
            out.pop(key, None)
            policy.handle(err, "malformed_row" if len(cols) == 1 else "duplicate_key")
            continue
        first_line[key] = line_no
        if key not in refused:
            out[key] = cols[1].strip() or None
    return out, refused


def _read_id_lists(path: Path, key_name: str) -> dict[str, list[str]]:
    """{key: [ids]} (a lone string counts as a one-id list); anything else is an error."""
    out: dict[str, list[str]] = {}
    for key, value in load_json_object(path).items():
        ids = [value] if isinstance(value, str) else value
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise DataError(f"{key_name} {key!r}: expected a list of id strings, got {value!r}", file=path, key=key)
        out[key] = list(dict.fromkeys(ids))
    return out


def _read_frame_boxes(path: Path, policy: ErrorPolicy) -> dict[str, Optional[Box]]:
    """{frame_id: box or [box, ...]} -> {frame_id: first real box or None}.

    A malformed entry is an error, or under the skip policy a counted ``malformed_box`` whose
    frame is left without a box.
    """
    out: dict[str, Optional[Box]] = {}
    for frame_id, value in load_json_object(path).items():
        try:
            out[frame_id] = _frame_box(path, frame_id, value)
        except DataError as err:
            policy.handle(err, "malformed_box")
    return out


def _frame_box(path: Path, frame_id: str, value) -> Optional[Box]:
    if isinstance(value, list) and value and isinstance(value[0], (list, tuple)):
        # Several boxes in one frame: the gt product is the first real one the file lists.
        boxes = [parse_box(b, file=path, key=frame_id) for b in value]
        return next((b for b in boxes if b is not None), None)
    if isinstance(value, list) and not value:
        return None
    return parse_box(value, file=path, key=frame_id)


def _read_test_attributes(path: Path, policy: ErrorPolicy) -> dict[str, tuple[Optional[str], dict[str, str]]]:
    names = ("scale", "duration", "num_products")
    out = {}
    for _line_no, cols in read_tsv_rows(path, 6, max_columns=6, policy=policy):
        attributes = {n: v.strip() for n, v in zip(names, cols[3:6]) if v.strip()}
        out[cols[0].strip()] = (cols[2].strip() or None, attributes)
    return out
