"""One reader per on-disk layout, all producing :class:`sgmn.data.records.LPRData`.

``read_dataset(root, format, on_error="raise")`` dispatches on ``format``. Each reader module
exposes ``read(root, on_error="raise", **options) -> LPRData``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Union

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
