"""On-disk cache of text embeddings, keyed by content.

The key of a text is ``sha256(encoder.name + "\\0" + text)``, so changing the encoder (its name
identifies the weights) never returns stale vectors, and the same ASR/title seen in another run,
split or process is read back instead of re-encoded. One small ``.npy`` file per text, written
atomically, so concurrent processes (e.g. DDP ranks) can share a cache folder.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from sgmn.text.base import has_text


def text_key(encoder_name: str, text: str) -> str:
    return hashlib.sha256(f"{encoder_name}\0{text}".encode("utf-8")).hexdigest()


class CachedTextEncoder:
    """Wraps an encoder; only texts not found in ``cache_dir`` reach the wrapped encoder."""

    def __init__(self, encoder, cache_dir: Union[str, Path]):
        self.encoder = encoder
        self.cache_dir = Path(cache_dir)
        self.name = encoder.name
        self.dim = encoder.dim
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.npy"

    def _read(self, path: Path) -> Optional[np.ndarray]:
        try:
            vec = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # absent, or a torn file from a killed writer: recompute
            return None
        if vec.shape != (self.dim,) or vec.dtype != np.float32 or not np.isfinite(vec).all():
            return None
        return vec

    def _write(self, path: Path, vec: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, vec.astype(np.float32))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def encode(self, texts: Sequence[Optional[str]]) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        mask = np.array([has_text(t) for t in texts], dtype=bool)
        todo: dict[str, list[int]] = {}  # text -> rows, so a repeated text is encoded once
        for i, text in enumerate(texts):
            if not mask[i]:
                continue
            vec = self._read(self._path(text_key(self.name, text)))
            if vec is None:
                todo.setdefault(text, []).append(i)
            else:
                out[i] = vec
                self.hits += 1
        if todo:
            new_texts = list(todo)
            vecs, new_mask = self.encoder.encode(new_texts)
            self.misses += len(new_texts)
            for text, vec, ok in zip(new_texts, vecs, new_mask):
                if not ok:  # cannot happen for a present text, but never cache a fake zero vector
                    continue
                self._write(self._path(text_key(self.name, text)), vec)
                out[todo[text]] = vec
        return out, mask
