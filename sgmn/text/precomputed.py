"""Text vectors that come with the data instead of being computed here.

The published SGMN code ships its ASR and title embeddings as JSON files
(``{clip_id or item_id: [512 floats]}``) of unstated origin; the original text is not released.
``load_vector_json`` validates such a file; ``PrecomputedTextVectors`` is the encoder used when
the model config says ``text.encoder = "precomputed"``: it looks a key up in a table and cannot
embed new text.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from sgmn.errors import DataError
from sgmn.text.base import encode_present


def vector_from_json(value, *, file: Union[str, Path], key: str, dim: Optional[int]) -> np.ndarray:
    """One JSON list of numbers -> float32 vector; DataError naming file and key otherwise."""
    if not isinstance(value, list):
        raise DataError(f"vector must be a list of numbers, got {type(value).__name__}", file=file, key=key)
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in value):
        raise DataError("vector has a non-numeric entry", file=file, key=key)
    if not all(math.isfinite(x) for x in value):
        raise DataError("vector has a NaN or infinite entry", file=file, key=key)
    if dim is not None and len(value) != dim:
        raise DataError(f"vector has length {len(value)}, expected {dim}", file=file, key=key)
    if not value:
        raise DataError("vector is empty", file=file, key=key)
    return np.asarray(value, dtype=np.float32)


def load_vector_json(
    path: Union[str, Path], dim: Optional[int] = None, on_bad=None
) -> dict[str, np.ndarray]:
    """Read ``{key: [floats]}``. Every vector must have length ``dim`` (or, when ``dim`` is None,
    the length of the first one). ``on_bad(err)`` is called for a bad entry (it may raise or count
    the skip); without it the first bad entry raises ``DataError``."""
    from sgmn.data.readers.common import parse_json_strict

    path = Path(path)
    try:
        raw = parse_json_strict(path.read_text(encoding="utf-8"), path)  # a repeated key is an error
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read vector file: {e}", file=path) from e
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg}", file=path, line=e.lineno) from e
    if not isinstance(raw, dict):
        raise DataError(f"expected a JSON object {{key: [floats]}}, got {type(raw).__name__}", file=path)
    out: dict[str, np.ndarray] = {}
    for key, value in raw.items():
        try:
            vec = vector_from_json(value, file=path, key=key, dim=dim)
        except DataError as err:
            if on_bad is None:
                raise
            on_bad(err)
            continue
        dim = len(vec) if dim is None else dim
        out[key] = vec
    return out


class PrecomputedTextVectors:
    """A table ``key -> vector`` behind the encoder protocol.

    ``encode`` treats each text as a key. Missing text gives zeros + False as with every encoder;
    a key that is not in the table is an error (new text cannot be embedded by a table).
    """

    def __init__(self, vectors: Mapping[str, np.ndarray], dim: Optional[int] = None, name: str = "precomputed"):
        self.vectors = dict(vectors)
        if dim is None:
            if not self.vectors:
                raise ValueError("PrecomputedTextVectors needs dim when the table is empty")
            dim = len(next(iter(self.vectors.values())))
        self.dim = int(dim)
        self.name = name
        for key, vec in self.vectors.items():
            if np.shape(vec) != (self.dim,):
                raise ValueError(f"precomputed vector {key!r} has shape {np.shape(vec)}, expected ({self.dim},)")

    @classmethod
    def from_json(cls, path: Union[str, Path], dim: Optional[int] = None) -> "PrecomputedTextVectors":
        return cls(load_vector_json(path, dim), dim=dim, name=f"precomputed:{Path(path).name}")

    def _lookup(self, keys: Sequence[str]) -> np.ndarray:
        missing = [k for k in keys if k not in self.vectors]
        if missing:
            raise KeyError(
                f"no precomputed text vector for {missing[0]!r} ({len(missing)} missing); the "
                "'precomputed' text encoder cannot embed new text - pass vectors, or use "
                "text.encoder='minilm' / 'clip-text'"
            )
        return np.stack([self.vectors[k] for k in keys])

    def encode(self, texts):
        return encode_present(texts, self.dim, self._lookup)
