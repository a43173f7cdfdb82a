"""Reader of MovingFashion (SEAM Match-RCNN): street videos of a garment and its shop image.

Layout (spec: data-formats.md §4)::

    videos/*.mp4   imgs/...   train.json   test.json

Each json is ``{product_id: {"img_path": ..., "video_paths": [mp4, ...], "source": 1 | other,
"tracklets": [{frame_index: [x1, y1, x2, y2]}, ...] (optional, one per video)}}``. Paths are
relative to the root (or to ``videos/`` / ``imgs/``).

- One clip per video and split: clip id = the video file stem, ``video_path`` set, no frame
  paths and no text (MovingFashion has none). Its ground truth is every product of the split
  whose ``video_paths`` lists the video (a few test videos have several correct images); its
  ``video_boxes`` is the tracklet given with the first such product (all-zero boxes dropped).
- Groups: ``source == 1`` -> ``"regular"``, else ``"hard"``, on products and clips, so that the
  "innersource" gallery (same group only) can be built; rooms: all test products form one room
  ``"all"`` (the "allsource" gallery), all training products the room ``"train"``.
- Videos are not decoded here (``sgmn.data.media`` does that) but must exist. A missing video
  (one is missing from the real archive) is an error, or a counted ``missing_video`` skip of
  that clip; a product whose image is missing is a ``missing_image`` skip, and then every clip
  that had it as ground truth is skipped as ``missing_gt_image`` (never answered with fewer).

Skip kinds: malformed_row, missing_image, missing_video, missing_gt_image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Union

from sgmn.data.readers.common import check_splits, PathResolver, load_json_object, parse_box
from sgmn.data.records import Box, Clip, LPRData, Product, Room
from sgmn.errors import DataError, ErrorPolicy, OnError

SPLITS = ("train", "test")
ROOM_OF_SPLIT = {"train": "train", "test": "all"}


def group_of(source) -> str:
    # The released json writes the source as an int; tolerate "1" from re-exported files.
    return "regular" if str(source).strip() == "1" else "hard"


def read(root: Union[str, Path], on_error: OnError = "raise", splits: Iterable[str] = SPLITS) -> LPRData:
    root = Path(root)
    splits = check_splits(splits, SPLITS, "MovingFashion")
    policy = ErrorPolicy(on_error)
    data = LPRData(source="movingfashion", root=root)
    images = PathResolver([root, root / "imgs"])
    videos = PathResolver([root, root / "videos"])
    for split in splits:
        _read_split(root / f"{split}.json", split, images, videos, data, policy)
    data.skipped.update(policy.skipped)
    return data


def _read_split(path: Path, split: str, images: PathResolver, videos: PathResolver,
                data: LPRData, policy: ErrorPolicy) -> None:
    if not path.is_file():
        raise DataError(f"MovingFashion {split} annotation file is missing", file=path)
    room = data.rooms.setdefault(ROOM_OF_SPLIT[split], Room(ROOM_OF_SPLIT[split]))
    clips: dict[str, Clip] = {}
    dropped: set[str] = set()  # products whose image is missing: their clips cannot be scored
    for product_id, entry in load_json_object(path).items():
        try:
            product, video_list, tracklets = _product(path, product_id, entry, images, room.room_id)
        except DataError as err:
            policy.handle(err, getattr(err, "kind", "malformed_row"))
            if getattr(err, "kind", None) == "missing_image":
                dropped.add(product_id)
                video_list = _video_list_or_empty(entry)
                tracklets = None
            else:
                continue
        else:
            if product_id in data.products:
                raise DataError("product id appears in more than one split", file=path, key=product_id)
            data.products[product_id] = product
            room.product_ids.append(product_id)
        for i, written in enumerate(video_list):
            stem = Path(written.replace("\\", "/")).stem
            clip = clips.get(stem)
            if clip is None:
                clip = clips[stem] = Clip(clip_id=stem, room_id=room.room_id, group=group_of(entry.get("source")),
                                          attributes={"video": written})
                clip.video_boxes = tracklets[i] if tracklets else None
            elif clip.attributes["video"] != written:
                raise DataError(f"two different videos share the clip id {stem!r}: "
                                f"{clip.attributes['video']!r} and {written!r}", file=path, key=product_id)
            if product_id not in clip.product_ids:
                clip.product_ids.append(product_id)

    split_ids: list[str] = []
    for clip_id, clip in clips.items():
        written = clip.attributes.pop("video")
        where = {"file": path, "key": clip_id}
        lost = [p for p in clip.product_ids if p in dropped]
        if lost:
            policy.handle(DataError(f"ground-truth product(s) {lost} have no image", **where), "missing_gt_image")
            continue
        try:
            clip.video_path = videos.resolve(written, **where)
        except DataError as err:
            policy.handle(err, "missing_video")
            continue
        if clip_id in data.clips:
            raise DataError("video is used in more than one split", **where)
        data.clips[clip_id] = clip
        split_ids.append(clip_id)
    data.splits[split] = split_ids


class _KindError(DataError):
    def __init__(self, kind: str, err: DataError):
        super().__init__(err.reason, file=err.file, line=err.line, key=err.key)
        self.kind = kind


def _video_list_or_empty(entry) -> list[str]:
    paths = entry.get("video_paths") if isinstance(entry, dict) else None
    return [p for p in paths if isinstance(p, str) and p.strip()] if isinstance(paths, list) else []


def _product(path: Path, product_id: str, entry, images: PathResolver, room_id: str):
    where = {"file": path, "key": product_id}
    try:
        if not isinstance(entry, dict):
            raise DataError(f"expected an object, got {type(entry).__name__}", **where)
        missing = [k for k in ("img_path", "video_paths", "source") if k not in entry]
        if missing:
            raise DataError(f"missing field(s) {missing}", **where)
        video_list = entry["video_paths"]
        if not isinstance(video_list, list) or not video_list or \
                not all(isinstance(v, str) and v.strip() for v in video_list):
            raise DataError(f"video_paths must be a non-empty list of paths, got {video_list!r}", **where)
        if isinstance(entry["source"], bool) or not isinstance(entry["source"], (int, str)):
            raise DataError(f"source must be an integer, got {entry['source']!r}", **where)
        tracklets = _tracklets(entry.get("tracklets"), len(video_list), where)
    except DataError as err:
        raise _KindError("malformed_row", err) from None
    try:
        image = images.resolve(entry["img_path"], **where)
    except DataError as err:
        raise _KindError("missing_image", err) from None
    product = Product(product_id=product_id, image_paths=[image], room_id=room_id, group=group_of(entry["source"]))
    return product, [v.strip() for v in video_list], tracklets


def _tracklets(value, n_videos: int, where: dict) -> Optional[list[Optional[dict[int, Box]]]]:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n_videos:
        raise DataError(f"tracklets must be a list with one entry per video ({n_videos})", **where)
    out = []
    for track in value:
        if track is None:
            out.append(None)
            continue
        if not isinstance(track, dict):
            raise DataError(f"a tracklet must be {{frame_index: box}}, got {type(track).__name__}", **where)
        boxes: dict[int, Box] = {}
        seen: set[int] = set()
        for frame, raw in track.items():
            if not str(frame).strip().isdigit():
                raise DataError(f"tracklet frame index {frame!r} is not a non-negative integer", **where)
            if int(frame) in seen:  # "3" and "03" name one frame: which box is meant cannot be told
                raise DataError(f"tracklet lists frame {int(frame)} twice ({frame!r})", **where)
            seen.add(int(frame))
            box = parse_box(raw, file=where["file"], key=where["key"])
            if box is not None:
                boxes[int(frame)] = box
        out.append(dict(sorted(boxes.items())))
    return out
