"""Reader of the layout the published SGMN code trains and evaluates on.

Training (spec: data-formats.md §3)::

    *_training_data.txt         tab-separated, >= 13 columns; used: [0] clip_id, [1] literal list
                                of frame paths, [2] literal list of "H\\x01W" frame sizes, [3]
                                literal list of per-frame boxes (all zeros = whole frame -> None),
                                [7] shop image path, [12] spu_id, [-8] item_id
    training_seg2emb_*.json     {clip_id: [512 floats]}  -> Clip.asr_vector
    training_item2emb_*.json    {item_id: [512 floats]}  -> Product.title_vector

Test::

    <query_dir>/<clip_id>/*.jpg                    frames, in sorted file-name order
    <gallery_dir>/<live_id>/shelf/<item_id>_<k>.jpg shop images; _0 is the main image
    <gt_file>                                      {clip_id: [item ids]}
    eval_asr2emb_*.json / eval_item2emb_*.json     test text vectors

The published code hard-codes its paths, so they are options of :func:`read`:

- ``train_file``: default the one ``*_training_data.txt`` under root (2 folders deep).
- ``media_root``: extra folder the training frame / shop image paths are relative to
  (default: they are looked up under ``root``, and absolute paths are used when they exist).
- ``query_dir``: default the folder (up to 2 levels under root) holding a subfolder named after
  a clip id of the ground truth.
- ``gallery_dir``: default ``root``.
- ``gt_file``: default the one ``*gt*.json`` under root.
- ``vector_dim``: length every precomputed vector must have (default 512; None = any, equal).

Live id of a clip = its id before the first ``"_"``; the gallery of a test clip is the shelf of
its live id. Training rows of one clip id merge into one clip with several products.
A test clip folder without a ground-truth entry is kept with no ground truth (queryable, not
scored). ``*_test_data.txt`` is not read: the published evaluation takes test frames from the
query folder. The vector files are optional (no file = no text); a bad vector (wrong length,
non-numeric) is a DataError naming file and key, or under ``on_error="skip"`` a counted
``bad_vector`` whose record is kept without a vector.

Skip kinds: malformed_row, missing_frame, missing_image, bad_vector, no_gallery,
missing_gt_image, unsupported_file, conflicting_row (a row of a clip with other frames than its
first row).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Union

from sgmn.data.readers.common import (
    check_splits,
    IMAGE_EXTENSIONS,
    PathResolver,
    find_annotation,
    load_json_object,
    merge_training_row,
    parse_box,
    parse_hw_size,
    parse_list,
    read_tsv_rows,
)
from sgmn.data.records import Clip, LPRData, Product, Room
from sgmn.errors import DataError, ErrorPolicy, OnError
from sgmn.text.precomputed import load_vector_json

MIN_COLUMNS = 13
COL_CLIP, COL_FRAMES, COL_SIZES, COL_BOXES, COL_IMAGE, COL_SPU, COL_ITEM = 0, 1, 2, 3, 7, 12, -8
SPLITS = ("train", "test")
VECTOR_PATTERNS = {
    "train": ("training_seg2emb_*.json", "training_item2emb_*.json"),
    "test": ("eval_asr2emb_*.json", "eval_item2emb_*.json"),
}


class _Skip(DataError):
    def __init__(self, kind: str, err: DataError):
        super().__init__(err.reason, file=err.file, line=err.line, key=err.key)
        self.kind = kind


def live_id_of(clip_id: str) -> str:
    return clip_id.split("_", 1)[0]


def read(
    root: Union[str, Path],
    on_error: OnError = "raise",
    splits: Iterable[str] = SPLITS,
    train_file: Optional[Union[str, Path]] = None,
    media_root: Optional[Union[str, Path]] = None,
    query_dir: Optional[Union[str, Path]] = None,
    gallery_dir: Optional[Union[str, Path]] = None,
    gt_file: Optional[Union[str, Path]] = None,
    vector_dim: Optional[int] = 512,
) -> LPRData:
    root = Path(root)
    splits = check_splits(splits, SPLITS, "SGMN-code")
    policy = ErrorPolicy(on_error)
    data = LPRData(source="sgmn", root=root)
    if "train" in splits:
        path = Path(train_file) if train_file else find_annotation(root, "*_training_data.txt")
        bases = [root] + ([Path(media_root)] if media_root else [])
        asr, titles = _vectors(root, "train", vector_dim, policy)
        _read_train(path, PathResolver(bases), asr, titles, data, policy)
    if "test" in splits:
        gt_path = Path(gt_file) if gt_file else find_annotation(root, "*gt*.json")
        gt = _read_gt(gt_path)
        q_dir = Path(query_dir) if query_dir else _find_query_dir(root, gt, gt_path)
        asr, titles = _vectors(root, "test", vector_dim, policy)
        _read_test(q_dir, Path(gallery_dir) if gallery_dir else root, gt, gt_path, asr, titles, data, policy)
    data.skipped.update(policy.skipped)
    return data


# ---------------------------------------------------------------- vectors
def _vectors(root: Path, split: str, dim: Optional[int], policy: ErrorPolicy):
    out = []
    for pattern in VECTOR_PATTERNS[split]:
        path = find_annotation(root, pattern, required=False)
        out.append({} if path is None else load_vector_json(path, dim, on_bad=lambda e: policy.handle(e, "bad_vector")))
    return out


# ---------------------------------------------------------------- training
def _read_train(path: Path, resolver: PathResolver, asr: dict, titles: dict, data: LPRData, policy: ErrorPolicy):
    split: list[str] = []
    for line_no, cols in read_tsv_rows(path, MIN_COLUMNS, policy=policy, desc=f"reading {path.name}"):
        try:
            clip, product = _train_row(path, line_no, cols, resolver)
        except _Skip as err:
            policy.handle(err, err.kind)
            continue
        clip.asr_vector = asr.get(clip.clip_id)
        product.title_vector = titles.get(product.product_id)
        try:
            merge_training_row(data, split, clip, product, file=path, line=line_no)
        except DataError as err:
            policy.handle(err, "conflicting_row")
    data.splits["train"] = split


def _train_row(path: Path, line_no: int, cols: list[str], resolver: PathResolver) -> tuple[Clip, Product]:
    where = {"file": path, "line": line_no}
    try:
        clip_id = cols[COL_CLIP].strip()
        item_id = cols[COL_ITEM].strip()
        if not clip_id or not item_id:
            raise DataError("empty clip_id (column 0) or item_id (column -8)", **where)
        written = parse_list(cols[COL_FRAMES], column=COL_FRAMES, **where)
        sizes = [parse_hw_size(s, key=f"column {COL_SIZES}", **where)
                 for s in parse_list(cols[COL_SIZES], column=COL_SIZES, **where)]
        boxes = [parse_box(b, key=f"column {COL_BOXES}", **where)
                 for b in parse_list(cols[COL_BOXES], column=COL_BOXES, **where)]
        if not written:
            raise DataError("empty frame list", key=f"column {COL_FRAMES}", **where)
        if not len(written) == len(sizes) == len(boxes):
            raise DataError(f"{len(written)} frames, {len(sizes)} sizes and {len(boxes)} boxes: need one of each "
                            "per frame", **where)
    except DataError as err:
        raise _Skip("malformed_row", err) from None
    try:
        frame_paths = [resolver.resolve(f, key=f"column {COL_FRAMES}", **where) for f in written]
    except DataError as err:
        raise _Skip("missing_frame", err) from None
    try:
        image_path = resolver.resolve(cols[COL_IMAGE], key=f"column {COL_IMAGE}", **where)
    except DataError as err:
        raise _Skip("missing_image", err) from None
    room_id = live_id_of(clip_id)
    spu = cols[COL_SPU].strip() or None
    clip = Clip(clip_id=clip_id, room_id=room_id, frame_paths=frame_paths, boxes=boxes, frame_sizes=sizes)
    product = Product(product_id=item_id, image_paths=[image_path], room_id=room_id, group=spu,
                      attributes={"spu_id": spu} if spu else {})
    return clip, product


# ---------------------------------------------------------------- test
def _read_gt(path: Path) -> dict[str, list[str]]:
    out = {}
    for clip_id, value in load_json_object(path).items():
        ids = [value] if isinstance(value, (str, int)) else value
        if not isinstance(ids, list) or not ids or not all(isinstance(i, (str, int)) and str(i).strip() for i in ids):
            raise DataError(f"expected a list of item ids, got {value!r}", file=path, key=clip_id)
        out[clip_id] = list(dict.fromkeys(str(i).strip() for i in ids))
    return out


def _find_query_dir(root: Path, gt: dict, gt_path: Path) -> Path:
    candidates = [root] + [d for d in root.iterdir() if d.is_dir()]
    candidates += [d for c in candidates[1:] for d in c.iterdir() if d.is_dir()]
    for clip_id in list(gt)[:20]:
        for folder in candidates:
            if (folder / clip_id).is_dir():
                return folder
    raise DataError(f"no folder under {root} holds a frame folder named after a clip of the ground truth; "
                    "pass query_dir", file=gt_path)


def _read_test(q_dir: Path, gallery_dir: Path, gt: dict, gt_path: Path, asr: dict, titles: dict,
               data: LPRData, policy: ErrorPolicy) -> None:
    if not q_dir.is_dir():
        raise DataError("query folder does not exist", file=q_dir)
    folders = sorted(d.name for d in q_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    clip_ids = folders + [c for c in gt if c not in set(folders)]
    split: list[str] = []
    for clip_id in clip_ids:
        try:
            clip = _test_clip(clip_id, q_dir, gallery_dir, gt, gt_path, data, titles, policy)
        except _Skip as err:
            policy.handle(err, err.kind)
            continue
        clip.asr_vector = asr.get(clip_id)
        data.clips[clip_id] = clip
        split.append(clip_id)
    data.splits["test"] = split


def _test_clip(clip_id, q_dir, gallery_dir, gt, gt_path, data, titles, policy) -> Clip:
    folder = q_dir / clip_id
    where = {"file": gt_path if clip_id in gt else folder, "key": clip_id}
    if clip_id in data.clips:
        raise _Skip("malformed_row", DataError("test clip id is also a training clip", **where))
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
    if not frames:
        raise _Skip("missing_frame", DataError(f"no frame images in {folder}", **where))
    room_id = live_id_of(clip_id)
    if room_id not in data.rooms:
        _read_shelf(gallery_dir, room_id, data, titles, policy)
    if not data.rooms.get(room_id, Room(room_id)).product_ids:
        raise _Skip("no_gallery", DataError(f"live room {room_id!r} has no shelf images in "
                                            f"{gallery_dir / room_id / 'shelf'}", **where))
    product_ids = gt.get(clip_id, [])
    lost = [p for p in product_ids if p not in data.rooms[room_id].product_ids]
    if lost:
        raise _Skip("missing_gt_image", DataError(f"ground-truth item(s) {lost} not on the shelf of {room_id}", **where))
    return Clip(clip_id=clip_id, room_id=room_id, frame_paths=frames, product_ids=list(product_ids))


def _read_shelf(gallery_dir: Path, room_id: str, data: LPRData, titles: dict, policy: ErrorPolicy) -> None:
    """``<live_id>/shelf/<item_id>_<k>.jpg`` -> products with the ``_0`` image first."""
    room = data.rooms.setdefault(room_id, Room(room_id))
    shelf = gallery_dir / room_id / "shelf"
    if not shelf.is_dir():
        return
    images: dict[str, dict[int, Path]] = {}
    for path in sorted(shelf.iterdir()):
        if path.name.startswith("."):
            continue
        item_id, _, k = path.stem.rpartition("_")
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not item_id or not k.isdigit():
            policy.handle(DataError("shelf file is not an image named <item_id>_<k>.jpg", file=path),
                          "unsupported_file")
            continue
        images.setdefault(item_id, {})[int(k)] = path
    for item_id, by_k in images.items():
        if 0 not in by_k:
            policy.handle(DataError(f"item {item_id!r} has no main image {item_id}_0.jpg", file=shelf, key=item_id),
                          "missing_image")
            continue
        if item_id not in data.products:
            data.products[item_id] = Product(
                product_id=item_id,
                image_paths=[by_k[k] for k in sorted(by_k)],
                room_id=room_id,
                title_vector=titles.get(item_id),
            )
        room.product_ids.append(item_id)
