"""Helpers every reader needs: literal lists, boxes, annotation files and a media index.

Real downloads are messy: list columns are written as Python or JSON literals, annotation
file names carry counts (``test_videoid_asr_20079.txt``), and images sit either as plain
``<id>.jpg`` files or inside img2dataset shards (``00000/000000001.jpg`` plus a ``.json``
sidecar whose ``url`` holds the original name). These helpers turn all of that into plain
Python values, and every failure names the file, line and field it came from.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional, Sequence, Union
from urllib.parse import unquote, urlparse

from tqdm import tqdm

from sgmn.data.records import Box, Clip, LPRData, Product, Room
from sgmn.errors import DataError, ErrorPolicy

PathLike = Union[str, Path]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")

# A frame id is its clip id plus a 4-digit frame index (LPR4M / LPR750K naming).
_FRAME_ID = re.compile(r"^(?P<clip>.+)-(?P<index>\d{4})$")


def parse_list(text: str, *, file: Optional[PathLike] = None, line: Optional[int] = None, column=None) -> list:
    """Parse a list column written as a JSON or a Python literal (``["a", 'b']``, ``[[0, 1]]``)."""
    key = f"column {column}" if column is not None else None
    stripped = text.strip()
    if not stripped:
        raise DataError("empty field where a list was expected", file=file, line=line, key=key)
    try:
        value = json.loads(stripped)
    except ValueError:
        try:
            value = ast.literal_eval(stripped)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            shown = stripped if len(stripped) <= 80 else stripped[:77] + "..."
            raise DataError(
                f"cannot parse list {shown!r} as a JSON or Python literal ({type(exc).__name__})",
                file=file,
                line=line,
                key=key,
            ) from None
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise DataError(f"expected a list, got {type(value).__name__}", file=file, line=line, key=key)
    return value


def parse_box(value, *, file: Optional[PathLike] = None, line: Optional[int] = None, key=None) -> Optional[Box]:
    """``[x1, y1, x2, y2]`` in pixels -> a Box; all zeros (the sources' "no box") -> None."""
    key = str(key) if key is not None else None
    if isinstance(value, str):
        value = parse_list(value, file=file, line=line, column=key)
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise DataError(f"a box must be [x1, y1, x2, y2], got {value!r}", file=file, line=line, key=key)
    numbers = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise DataError(f"box has a non-numeric value {v!r}: {value!r}", file=file, line=line, key=key)
        if not math.isfinite(v):
            raise DataError(f"box has a non-finite value: {value!r}", file=file, line=line, key=key)
        numbers.append(float(v))
    if all(v == 0 for v in numbers):
        return None
    x1, y1, x2, y2 = numbers
    if x2 < x1 or y2 < y1:
        raise DataError(f"box corners are reversed (need x1<=x2, y1<=y2): {value!r}", file=file, line=line, key=key)
    return (x1, y1, x2, y2)


def parse_hw_size(value: str, *, file: Optional[PathLike] = None, line: Optional[int] = None, key=None) -> tuple[int, int]:
    """The published SGMN code writes frame sizes as ``"H\\x01W"``; return ``(H, W)``."""
    key = str(key) if key is not None else None
    parts = value.split("\x01") if isinstance(value, str) else []
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise DataError(f"frame size must be 'H\\x01W' (two integers joined by \\x01), got {value!r}",
                        file=file, line=line, key=key)
    height, width = (int(p) for p in parts)
    if height <= 0 or width <= 0:
        raise DataError(f"frame size must be positive, got {value!r}", file=file, line=line, key=key)
    return height, width


def live_id_of(clip_id: str, *, file: Optional[PathLike] = None, line: Optional[int] = None) -> str:
    """The live room (a UUID, 5 dash groups) an LPR4M / LPR750K clip or frame id starts with."""
    groups = clip_id.split("-")
    if len(groups) < 5 or not all(groups[:5]):
        raise DataError(f"id {clip_id!r} does not start with a live id (5 dash-separated groups)",
                        file=file, line=line)
    return "-".join(groups[:5])


def read_tsv_rows(
    path: PathLike,
    min_columns: int,
    *,
    max_columns: Optional[int] = None,
    policy: Optional[ErrorPolicy] = None,
    desc: Optional[str] = None,
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_no, columns)`` of a UTF-8 tab-separated file, 1-based line numbers.

    Blank lines are ignored. A row with too few (or, given ``max_columns``, too many) columns
    or undecodable bytes raises :class:`DataError`; with a ``policy`` it is handed to the
    policy instead (kind ``"malformed_row"``), so a skip policy keeps reading.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        lines = tqdm(handle, desc=desc, unit=" rows", disable=None) if desc else handle
        for line_no, raw in enumerate(lines, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                _reject(DataError(f"not valid UTF-8 ({exc.reason})", file=path, line=line_no), policy)
                continue
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            columns = text.split("\t")
            if len(columns) < min_columns or (max_columns is not None and len(columns) > max_columns):
                expected = f"{min_columns}" if max_columns == min_columns else f"at least {min_columns}"
                if max_columns is not None and max_columns != min_columns:
                    expected = f"{min_columns}..{max_columns}"
                _reject(DataError(f"expected {expected} tab-separated columns, found {len(columns)}",
                                  file=path, line=line_no), policy)
                continue
            yield line_no, columns


def _reject(err: DataError, policy: Optional[ErrorPolicy]) -> None:
    if policy is None:
        raise err
    policy.handle(err, "malformed_row")


def find_annotation(root: PathLike, pattern: str, *, required: bool = True, max_depth: int = 2) -> Optional[Path]:
    """The one file under ``root`` (up to ``max_depth`` folders down) matching a glob pattern.

    Annotation names carry counts (``training_videoinfo_full_*.txt``), so they are matched by
    pattern. None found -> DataError (or None when not ``required``); several -> DataError.
    The search stops at a shallow depth so that a tree of millions of frames is not walked.
    """
    root = Path(root)
    matches: list[Path] = []
    for depth in range(max_depth + 1):
        matches.extend(p for p in root.glob("/".join(["*"] * depth + [pattern])) if p.is_file())
    if not matches:
        if required:
            raise DataError(f"no annotation file matching {pattern!r} under {root}", file=root)
        return None
    if len(matches) > 1:
        names = ", ".join(str(m) for m in sorted(matches))
        raise DataError(f"several files match {pattern!r}: {names}; keep only one", file=root)
    return matches[0]


class MediaIndex:
    """Map a media id (file stem: frame id, shop image UUID) to its file, anywhere under a root.

    Plain files count by their stem. img2dataset shards (a numbered image with a ``.json``
    sidecar) count by the basename of the sidecar's ``url``, without extension; their numeric
    stems are not ids. Two different files claiming one id is an error.
    """

    def __init__(self, paths: dict[str, Path], root: Optional[Path] = None):
        self.root = root
        self._paths = paths
        self._frames: Optional[dict[str, list[tuple[int, str, Path]]]] = None

    @classmethod
    def build(
        cls,
        root: PathLike,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        *,
        follow_symlinks: bool = True,
        desc: Optional[str] = "indexing media",
    ) -> "MediaIndex":
        root = Path(root)
        if not root.is_dir():
            raise DataError("data root is not a folder", file=root)
        paths: dict[str, Path] = {}
        walker = os.walk(root, followlinks=follow_symlinks)
        bar = tqdm(desc=desc, unit=" files", disable=None) if desc else None
        for folder, _dirs, names in walker:
            name_set = set(names)
            for name in names:
                stem, ext = os.path.splitext(name)
                if ext.lower() not in extensions:
                    continue
                path = Path(folder) / name
                sidecar = stem + ".json"
                media_id = _id_from_sidecar(Path(folder) / sidecar) if sidecar in name_set and stem.isdigit() else stem
                _add(paths, media_id, path)
                if bar is not None:
                    bar.update()
        if bar is not None:
            bar.close()
        return cls(paths, root)

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, media_id: str) -> bool:
        return media_id in self._paths

    def ids(self) -> list[str]:
        return list(self._paths)

    def get(self, media_id: str) -> Optional[Path]:
        return self._paths.get(media_id)

    def require(self, media_id: str, *, file: Optional[PathLike] = None, line: Optional[int] = None, key=None) -> Path:
        path = self._paths.get(media_id)
        if path is None:
            where = f" under {self.root}" if self.root is not None else ""
            raise DataError(f"missing file for id {media_id!r}{where}", file=file, line=line, key=key)
        return path

    def frames_of(self, clip_id: str) -> list[Path]:
        """Frame files ``<clip_id>-NNNN`` of a clip, in frame-index order (empty if none)."""
        return [path for _, path in self.frame_entries(clip_id)]

    def frame_entries(self, clip_id: str) -> list[tuple[str, Path]]:
        """``(frame_id, path)`` of the frames ``<clip_id>-NNNN`` of a clip, in frame-index order.

        The frame id matters because a shard file's own name (``000000001.jpg``) is not it.
        """
        if self._frames is None:
            frames: dict[str, list[tuple[int, str, Path]]] = defaultdict(list)
            for media_id, path in self._paths.items():
                match = _FRAME_ID.match(media_id)
                if match:
                    frames[match["clip"]].append((int(match["index"]), media_id, path))
            self._frames = dict(frames)
        return [(media_id, path) for _, media_id, path in sorted(self._frames.get(clip_id, []))]


def _id_from_sidecar(sidecar: Path) -> str:
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read img2dataset sidecar ({exc})", file=sidecar) from None
    url = meta.get("url") if isinstance(meta, dict) else None
    if not isinstance(url, str) or not url:
        raise DataError("img2dataset sidecar has no 'url' naming the original file", file=sidecar, key="url")
    name = PurePosixPath(unquote(urlparse(url).path or url).replace("\\", "/")).name
    stem, _ext = os.path.splitext(name)
    if not stem:
        raise DataError(f"cannot take a file name from url {url!r}", file=sidecar, key="url")
    return stem


def _add(paths: dict[str, Path], media_id: str, path: Path) -> None:
    known = paths.get(media_id)
    if known is None:
        paths[media_id] = path
    elif known != path and os.path.realpath(known) != os.path.realpath(path):
        raise DataError(f"id {media_id!r} names two different files: {known} and {path}", file=path)


def merge_training_row(data: LPRData, split: list[str], clip: Clip, product: Product, *,
                       file: PathLike, line: int) -> None:
    """Add one (clip, product) training row to ``data``; rows of one clip id merge into one clip.

    Training files list one row per (clip, product) pair. Rows of the same clip must agree on its
    frames and ASR (otherwise which one is right cannot be told: DataError, nothing is merged);
    their boxes may differ, as each row boxes its own product: boxes differing from the clip's
    first row are kept in ``Clip.product_boxes`` instead of being dropped.
    """
    known = data.clips.get(clip.clip_id)
    if known is not None:
        for field_name in ("frame_paths", "asr"):
            if getattr(known, field_name) != getattr(clip, field_name):
                raise DataError(f"clip {clip.clip_id!r} was listed on an earlier row with other "
                                f"{field_name}", file=file, line=line, key=field_name)
        if product.product_id in known.product_ids and known.boxes_for(product.product_id) != clip.boxes:
            raise DataError(f"clip {clip.clip_id!r} and product {product.product_id!r} were listed on an "
                            "earlier row with other boxes", file=file, line=line, key="boxes")
    if known is None:
        data.clips[clip.clip_id] = known = clip
        split.append(clip.clip_id)
    elif product.product_id not in known.product_ids and clip.boxes != known.boxes:
        known.product_boxes[product.product_id] = clip.boxes
    if product.product_id not in known.product_ids:
        known.product_ids.append(product.product_id)
    data.products.setdefault(product.product_id, product)
    room = data.rooms.setdefault(clip.room_id, Room(clip.room_id))
    if product.product_id not in room.product_ids:
        room.product_ids.append(product.product_id)


# ---------------------------------------------------------------- appended for the LPR750K / SGMN-code readers
def parse_json_strict(text: str, path: PathLike):
    """``json.loads`` that refuses a key repeated within one object (plain ``json`` keeps the
    last one silently; which one the annotator meant cannot be told), naming key and line."""
    repeated: list[str] = []

    def pairs_hook(pairs):
        obj = {}
        for key, value in pairs:
            if key in obj:
                repeated.append(key)
            obj[key] = value
        return obj

    value = json.loads(text, object_pairs_hook=pairs_hook)
    if repeated:
        key = repeated[0]
        raise DataError(f"key {key!r} appears more than once (which value is meant cannot be told)",
                        file=path, line=_second_key_line(text, key), key=key)
    return value


def _second_key_line(text: str, key: str) -> Optional[int]:
    for spelled in dict.fromkeys((json.dumps(key, ensure_ascii=False), json.dumps(key))):
        hits = [m.start() for m in re.finditer(re.escape(spelled) + r"\s*:", text)]
        if len(hits) > 1:
            return text.count("\n", 0, hits[1]) + 1
    return None


def load_json_object(path: PathLike) -> dict:
    """A JSON file that must hold an object; DataError naming the file otherwise (also for a key
    repeated in any object of it, see :func:`parse_json_strict`)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            value = parse_json_strict(handle.read(), path)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg})", file=path, line=exc.lineno) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read JSON ({exc})", file=path) from None
    if not isinstance(value, dict):
        raise DataError(f"expected a JSON object, got {type(value).__name__}", file=path)
    return value


class PathResolver:
    """Find a file named by a relative path that the source wrote against *some* base folder.

    Annotation files of LPR750K and of the published SGMN code name media relative to the data
    root, to one of several download folders (``training_video_00`` .. ``_07``), or with the
    authors' absolute prefix. Each path is tried against every base in turn (the base that
    answered last first, as rows of one folder come together), also from each component that
    names a base folder; not found -> DataError.
    """

    def __init__(self, bases: list[Path]):
        self.bases = [Path(b) for b in dict.fromkeys(bases) if Path(b).is_dir()]
        self._names = {b.name for b in self.bases}
        self._last = 0

    def resolve(self, written: str, *, file: Optional[PathLike] = None, line: Optional[int] = None, key=None) -> Path:
        if not isinstance(written, str) or not written.strip():
            raise DataError(f"expected a file path, got {written!r}", file=file, line=line, key=key)
        posix = PurePosixPath(written.strip().replace("\\", "/"))
        if posix.is_absolute() and Path(posix).is_file():
            return Path(posix)
        parts = [p for p in posix.parts if p not in ("/", ".")]
        tails = [parts] + [parts[i + 1:] for i, p in enumerate(parts) if p in self._names and i + 1 < len(parts)]
        order = [self._last] + [i for i in range(len(self.bases)) if i != self._last]
        for tail in tails:
            for i in order:
                if i >= len(self.bases):
                    continue
                candidate = self.bases[i].joinpath(*tail)
                if candidate.is_file():
                    self._last = i
                    return candidate
        names = ", ".join(str(b) for b in self.bases) or "(no base folder exists)"
        raise DataError(f"file {written!r} not found under any of: {names}", file=file, line=line, key=key)


def check_splits(splits: Iterable[str], known: Sequence[str], layout: str) -> tuple[str, ...]:
    """The requested splits as a tuple; an unknown name is a clear error naming the layout."""
    splits = tuple(splits)
    unknown = [s for s in splits if s not in known]
    if unknown:
        raise ValueError(f"unknown {layout} split(s) {unknown}; choose from {tuple(known)}")
    return splits
