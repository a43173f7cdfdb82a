"""One reader per on-disk layout, all producing :class:`sgmn.data.records.LPRData`.

``read_dataset(root, format, on_error="raise")`` dispatches on ``format``. Each reader module
exposes ``read(root, on_error="raise", **options) -> LPRData``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional, Union

from sgmn.data.records import LPRData
from sgmn.errors import OnError

READERS = {
    "lpr4m": "sgmn.data.readers.lpr4m",  # LPR4M full release (and the synthetic data set)
    "lpr750k": "sgmn.data.readers.lpr750k",  # the public subset shipped with the RICE code
    "sgmn": "sgmn.data.readers.sgmn_code",  # the published SGMN code's layout
    "movingfashion": "sgmn.data.readers.movingfashion",
    "folders": "sgmn.data.readers.folders",  # a shop folder + clips (what a new user has)
}


def read_dataset(root: Union[str, Path], format: str, on_error: OnError = "raise", **options) -> LPRData:
    if format not in READERS:
        raise ValueError(f"unknown data format {format!r}; choose one of {sorted(READERS)}")
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data root {root} does not exist")
    module = importlib.import_module(READERS[format])
    return module.read(root, on_error=on_error, **options)


# Files that only a multi-room data set has, per layout (matched in a folder and its annotations/).
_DATASET_MARKERS = {
    "lpr4m": ("training_videoinfo_full_*.txt", "test_liveid_to_gallery_*.json"),
    "lpr750k": ("query_tenframes.json", "gallery_main.txt"),
    "sgmn": ("*_training_data.txt", "eval_item2emb_*.json"),
    "movingfashion": ("train.json",),
}


def enclosing_dataset(path: Union[str, Path], levels: int = 2) -> Optional[tuple[Path, str]]:
    """``(root, format)`` when ``path`` is (inside) a multi-room data set of a known layout, e.g.
    the ``shop_images/`` folder of an LPR4M copy; None otherwise. Looks at ``path`` and up to
    ``levels`` parents, each with its ``annotations/`` sub-folder."""
    folder = Path(path).resolve()
    for candidate in [folder, *list(folder.parents)[:levels]]:
        for fmt, patterns in _DATASET_MARKERS.items():
            for where in (candidate, candidate / "annotations"):
                if where.is_dir() and any(next(where.glob(p), None) is not None for p in patterns):
                    if fmt == "movingfashion" and not (candidate / "test.json").is_file():
                        continue
                    return candidate, fmt
    return None
