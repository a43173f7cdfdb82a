"""Plain folders: what a new user has - a shop folder of product images and some clips.

Default layout under ``root`` (both paths can be given instead)::

    shop/<product_id>.jpg            one image per product (id = file stem), or
    shop/<product_id>/*.jpg          several images of one product (sorted; the first is the main one)
    shop/titles.tsv | titles.txt     optional "product_id<TAB>title" lines, or titles.json {id: title}
    clips/<clip>.mp4                 a clip as a video file, or
    clips/<clip>/*.jpg               a clip as a folder of frames (natural name order: 2 before 10)
    clips/<clip>.txt                 optional ASR text of a clip (or asr.txt inside a frame folder)

All products form one room ``"shop"``; every clip belongs to it and has no ground truth (split
``"test"``). A title for a product that has no image is an error; a product without a title is
fine. Hidden files are ignored; any other file that is neither an image, a video, a titles file
nor an ASR text is reported: counted in ``LPRData.skipped["unsupported_file"]`` (and listed in a
warning by :func:`read_shop` / :func:`read_clip` when no counter is passed), never silently dropped.

The retrieval CLI and the server call :func:`read_shop` and :func:`read_clip` directly.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Optional, Union

from sgmn.data.readers.common import IMAGE_EXTENSIONS, parse_json_strict, read_tsv_rows
from sgmn.data.records import Clip, LPRData, Product, Room
from sgmn.errors import DataError, ErrorPolicy, OnError

PathLike = Union[str, Path]
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
TITLE_FILES = ("titles.tsv", "titles.txt", "titles.json")
ROOM_ID = "shop"


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def _report(unsupported: list[Path], skipped: Optional[Counter], what: str) -> None:
    if not unsupported:
        return
    if skipped is not None:
        skipped["unsupported_file"] += len(unsupported)
    else:
        names = ", ".join(str(p) for p in unsupported[:5]) + (" ..." if len(unsupported) > 5 else "")
        warnings.warn(f"{len(unsupported)} unsupported file(s) in {what} not read: {names}", stacklevel=3)


# ---------------------------------------------------------------- shop
def read_titles(path: PathLike) -> dict[str, str]:
    """``titles.json`` ({id: title}) or a tab-separated ``id<TAB>title`` file -> {id: title}."""
    path = Path(path)
    titles: dict[str, str] = {}
    if path.suffix.lower() == ".json":
        try:
            raw = parse_json_strict(path.read_text(encoding="utf-8"), path)  # a repeated id is an error
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read titles JSON ({exc})", file=path) from None
        if not isinstance(raw, dict):
            raise DataError("titles JSON must be an object {product_id: title}", file=path)
        for key, title in raw.items():
            if not isinstance(title, str):
                raise DataError(f"title must be a string, got {type(title).__name__}", file=path, key=key)
            if title.strip():
                titles[key] = title.strip()
        return titles
    for line_no, cols in read_tsv_rows(path, 2, max_columns=2):
        product_id, title = cols[0].strip(), cols[1].strip()
        if not product_id:
            raise DataError("empty product id", file=path, line=line_no)
        if product_id in titles:
            raise DataError(f"second title for product {product_id!r}", file=path, line=line_no)
        if title:
            titles[product_id] = title
    return titles


def _find_titles_file(shop_dir: Path) -> Optional[Path]:
    found = [shop_dir / name for name in TITLE_FILES if (shop_dir / name).is_file()]
    if len(found) > 1:
        raise DataError(f"several titles files: {[p.name for p in found]}; keep one", file=shop_dir)
    return found[0] if found else None


def read_shop(shop_dir: PathLike, titles: Optional[PathLike] = None, *, skipped: Optional[Counter] = None) -> list[Product]:
    """Products of a shop folder, sorted by id. ``titles``: a titles file (default: the one
    ``titles.tsv`` / ``titles.txt`` / ``titles.json`` inside the folder, if any)."""
    shop_dir = Path(shop_dir)
    if not shop_dir.is_dir():
        raise DataError("shop folder does not exist", file=shop_dir)
    titles_path = Path(titles) if titles is not None else _find_titles_file(shop_dir)
    if titles_path is not None and not titles_path.is_file():
        raise DataError("titles file does not exist", file=titles_path)

    images: dict[str, list[Path]] = {}
    unsupported: list[Path] = []
    for entry in _visible(shop_dir):
        if titles_path is not None and entry.resolve() == titles_path.resolve():
            continue
        if _is_image(entry):
            product_id, paths = entry.stem, [entry]
        elif entry.is_dir():
            paths = [p for p in _visible(entry) if _is_image(p)]
            unsupported += [p for p in _visible(entry) if not _is_image(p)]
            if not paths:
                raise DataError("product folder holds no image", file=entry)
            product_id = entry.name
        else:
            unsupported.append(entry)
            continue
        if product_id in images:
            raise DataError(f"two entries for product {product_id!r}: {images[product_id][0]} and {entry}", file=entry)
        images[product_id] = paths
    _report(unsupported, skipped, f"shop folder {shop_dir}")
    if not images:
        raise DataError("shop folder holds no product image", file=shop_dir)

    title_of = read_titles(titles_path) if titles_path is not None else {}
    unknown = sorted(set(title_of) - set(images))
    if unknown:
        raise DataError(f"title(s) for product(s) without an image in {shop_dir}: {unknown[:5]}",
                        file=titles_path, key=unknown[0])
    return [Product(product_id=pid, image_paths=images[pid], title=title_of.get(pid), room_id=ROOM_ID)
            for pid in sorted(images)]


# ---------------------------------------------------------------- clips
def _asr_file(path: Path) -> Optional[Path]:
    candidates = [path.parent / f"{path.name}.txt", path.with_suffix(".txt")]
    if path.is_dir():
        candidates.append(path / "asr.txt")
    found = [c for c in dict.fromkeys(candidates) if c.is_file() and c != path]
    if len(found) > 1:
        raise DataError(f"several ASR files for one clip: {[str(p) for p in found]}", file=path)
    return found[0] if found else None


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def clip_frames(folder: PathLike, *, skipped: Optional[Counter] = None) -> list[Path]:
    """The frame images of a clip folder in time order: natural name order, so that unpadded
    numbers (``frame_2`` before ``frame_10``, as ``ffmpeg -i x.mp4 frame_%d.jpg`` writes them)
    keep their order. ``asr.txt`` is the clip's text; any other non-image file is reported."""
    folder = Path(folder)
    entries = [p for p in _visible(folder) if p.name != "asr.txt"]
    _report([p for p in entries if not _is_image(p)], skipped, f"frame folder {folder}")
    frames = sorted((p for p in entries if _is_image(p)), key=_natural_key)
    if not frames:
        raise DataError("clip folder holds no frame image", file=folder)
    return frames


def read_clip(path: PathLike, asr: Optional[str] = None, *, skipped: Optional[Counter] = None) -> Clip:
    """One clip: a video file or a folder of frames. ``asr`` given -> used as is; otherwise read
    from ``<clip>.txt`` beside it or ``asr.txt`` inside a frame folder (empty text = no ASR)."""
    path = Path(path)
    if _is_video(path):
        clip = Clip(clip_id=path.stem, room_id=ROOM_ID, video_path=path)
    elif path.is_dir():
        clip = Clip(clip_id=path.name, room_id=ROOM_ID, frame_paths=clip_frames(path, skipped=skipped))
    elif path.exists():
        raise DataError(f"a clip must be a video ({', '.join(VIDEO_EXTENSIONS)}) or a folder of frames", file=path)
    else:
        raise DataError("clip does not exist", file=path)
    if asr is not None:
        try:
            asr.encode("utf-8")
        except UnicodeEncodeError:
            # bytes that were not UTF-8 arrive from the command line as lone surrogates
            # (Python's surrogateescape); they would crash the tokenizer much later
            raise DataError(
                "the ASR text (--asr) is not valid UTF-8; convert it first (e.g. iconv -f gbk -t utf-8)"
            ) from None
    if asr is None:
        asr_path = _asr_file(path)
        if asr_path is not None:
            try:
                asr = asr_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"cannot read ASR text ({exc})", file=asr_path) from None
    clip.asr = (asr.strip() or None) if asr is not None else None
    return clip


def _clip_paths(clips_dir: Path, skipped: Counter) -> list[Path]:
    """Entries of a clips folder that are clips; ASR sidecars are consumed, other files reported."""
    if any(_is_image(p) for p in _visible(clips_dir)):
        return [clips_dir]  # the folder itself is one clip's frames
    paths, unsupported = [], []
    for entry in _visible(clips_dir):
        if _is_video(entry) or entry.is_dir():
            paths.append(entry)
        elif entry.suffix.lower() != ".txt":
            unsupported.append(entry)
    stems = {p.name if p.is_dir() else p.stem for p in paths}
    unsupported += [p for p in _visible(clips_dir) if p.suffix.lower() == ".txt" and p.stem not in stems
                    and Path(p.stem).stem not in stems]  # a .txt that belongs to no clip
    _report(unsupported, skipped, f"clips folder {clips_dir}")
    return paths


def _readable_products(products: list[Product], policy: ErrorPolicy) -> list[Product]:
    """Decode every shop image once: a corrupt file is a skipped image (``bad_image``), and a
    product none of whose images decode is a skipped product, never a product of the gallery."""
    from sgmn.data.media import load_image

    kept = []
    for product in products:
        good = []
        for path in product.image_paths:
            try:
                load_image(path)
                good.append(path)
            except DataError as err:
                policy.handle(err, "bad_image")
        if not good:
            policy.handle(DataError("no readable image", file=product.image_paths[0].parent, key=product.product_id),
                          "product_without_image")
            continue
        product.image_paths = good
        kept.append(product)
    return kept


def read(
    root: PathLike,
    on_error: OnError = "raise",
    shop: Optional[PathLike] = None,
    clips: Optional[PathLike] = None,
    titles: Optional[PathLike] = None,
) -> LPRData:
    """``shop`` default ``root/shop``; ``clips`` default ``root/clips`` (optional when absent):
    a folder of clips, one frame folder, or one video file."""
    root = Path(root)
    policy = ErrorPolicy(on_error)
    data = LPRData(source="folders", root=root)
    products = _readable_products(
        read_shop(Path(shop) if shop is not None else root / "shop", titles, skipped=policy.skipped), policy
    )
    data.products = {p.product_id: p for p in products}
    data.rooms[ROOM_ID] = Room(ROOM_ID, [p.product_id for p in products])

    clips_path = Path(clips) if clips is not None else root / "clips"
    split: list[str] = []
    if clips is not None or clips_path.exists():
        if not clips_path.exists():
            raise DataError("clips path does not exist", file=clips_path)
        paths = [clips_path] if clips_path.is_file() else _clip_paths(clips_path, policy.skipped)
        for path in paths:
            try:
                clip = read_clip(path, skipped=policy.skipped)
                if clip.clip_id in data.clips:
                    raise DataError(f"two clips named {clip.clip_id!r}", file=path)
            except DataError as err:
                policy.handle(err, "bad_clip")
                continue
            data.clips[clip.clip_id] = clip
            split.append(clip.clip_id)
    data.splits["test"] = split
    data.skipped.update(policy.skipped)
    return data
