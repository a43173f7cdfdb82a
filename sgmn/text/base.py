"""The text-encoder protocol shared by every encoder, and the "has text" rule.

An encoder turns a batch of optional strings into an ``(n, dim)`` float32 matrix and an ``(n,)``
bool mask. Missing text (None, empty, whitespace only) is a normal case: its row is all zeros and
its mask entry is False, so nothing downstream normalises a zero vector into NaN.
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class TextEncoder(Protocol):
    name: str  # identifies the model (and so the vectors) - also the cache key prefix
    dim: int

    def encode(self, texts: Sequence[Optional[str]]) -> tuple[np.ndarray, np.ndarray]: ...


def has_text(text: Optional[str]) -> bool:
    return text is not None and bool(text.strip())


def encode_present(
    texts: Sequence[Optional[str]], dim: int, encode_strings
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``encode_strings(list[str]) -> (k, dim)`` on the texts that exist; zeros elsewhere.

    Every encoder goes through here so that the missing-text rule and the output dtype/shape
    checks live in one place.
    """
    mask = np.array([has_text(t) for t in texts], dtype=bool)
    out = np.zeros((len(texts), dim), dtype=np.float32)
    present = [t for t, keep in zip(texts, mask) if keep]
    if present:
        vecs = np.asarray(encode_strings(present), dtype=np.float32)
        if vecs.shape != (len(present), dim):
            raise ValueError(f"text encoder returned shape {vecs.shape}, expected {(len(present), dim)}")
        if not np.isfinite(vecs).all():
            raise ValueError("text encoder returned non-finite values")
        out[mask] = vecs
    return out, mask


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    # A zero row stays zero instead of becoming NaN.
    return np.where(norms > 0, x / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
