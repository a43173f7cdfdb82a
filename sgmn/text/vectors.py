"""Text vectors of every ASR and title of a data split, computed once before training / evaluation.

A record's own precomputed vector (``Clip.asr_vector`` / ``Product.title_vector``, the published
SGMN layout) wins; otherwise its text goes through the encoder. Identical texts are encoded once.
The torch datasets then look vectors up by id with :meth:`TextVectors.clip` /
:meth:`TextVectors.product`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from tqdm import tqdm

from sgmn.data.records import LPRData
from sgmn.errors import DataError
from sgmn.text.base import has_text


class TextVectors:
    """``clip(id)`` / ``product(id)`` -> ``(float32 (dim,), has_text)``; zeros + False without text.

    ``split=None`` covers every clip and product; otherwise the split's clips plus every product a
    query of that split can meet (its ground truth and its room's gallery). ``dim`` is only needed
    when there is neither an encoder nor a precomputed vector to take it from.
    """

    def __init__(
        self,
        data: LPRData,
        split: Optional[str] = None,
        encoder=None,
        *,
        batch_size: int = 256,
        dim: Optional[int] = None,
        progress: bool = True,
    ):
        clips = list(data.clips.values()) if split is None else data.split_clips(split)
        if split is None:
            products = list(data.products.values())
        else:
            wanted: dict[str, None] = {}  # ordered set
            for clip in clips:
                wanted.update(dict.fromkeys(clip.product_ids))
                if clip.room_id in data.rooms:
                    wanted.update(dict.fromkeys(data.rooms[clip.room_id].product_ids))
            missing = [p for p in wanted if p not in data.products]
            if missing:
                raise DataError(f"product {missing[0]!r} is referenced but not in the data set ({len(missing)} missing)")
            products = [data.products[p] for p in wanted]

        self.dim = self._infer_dim(encoder, dim, clips, products)
        self.encoder_name = getattr(encoder, "name", None)
        self._stored: list[np.ndarray] = []  # precomputed vectors, then encoded texts
        self._text_slot: dict[str, int] = {}  # text -> index among texts to encode
        pending: list[tuple[dict, str, int]] = []  # (row map, id, text slot)
        self._clip_row: dict[str, int] = {}
        self._product_row: dict[str, int] = {}

        for kind, items, row_map in (
            ("clip", [(c.clip_id, c.asr_vector, c.asr) for c in clips], self._clip_row),
            ("product", [(p.product_id, p.title_vector, p.title) for p in products], self._product_row),
        ):
            for item_id, vector, text in items:
                if vector is not None:
                    row_map[item_id] = len(self._stored)
                    self._stored.append(self._check_vector(vector, kind, item_id))
                elif has_text(text):
                    if encoder is None:
                        raise ValueError(
                            f"{kind} {item_id!r} has text but no precomputed vector, and no text encoder was given"
                        )
                    slot = self._text_slot.setdefault(text, len(self._text_slot))
                    pending.append((row_map, item_id, slot))
                else:
                    row_map[item_id] = -1  # no text

        encoded = self._encode_all(encoder, list(self._text_slot), batch_size, progress)
        offset = len(self._stored)
        for row_map, item_id, slot in pending:
            row_map[item_id] = offset + slot
        parts = [np.stack(self._stored)] if self._stored else []
        parts.append(encoded)
        self._matrix = np.concatenate(parts).astype(np.float32, copy=False)
        del self._stored, self._text_slot

    # ---- lookups used by the torch datasets -------------------------------------------------
    def clip(self, clip_id: str) -> tuple[np.ndarray, bool]:
        if clip_id not in self._clip_row:
            raise KeyError(f"clip {clip_id!r} is not in these text vectors (wrong split?)")
        return self._row(self._clip_row[clip_id])

    def product(self, product_id: str) -> tuple[np.ndarray, bool]:
        if product_id not in self._product_row:
            raise KeyError(f"product {product_id!r} is not in these text vectors (wrong split?)")
        return self._row(self._product_row[product_id])

    def __len__(self) -> int:
        return len(self._clip_row) + len(self._product_row)

    # ---- helpers ----------------------------------------------------------------------------
    def _row(self, row: int) -> tuple[np.ndarray, bool]:
        if row < 0:
            return np.zeros(self.dim, dtype=np.float32), False
        return self._matrix[row].copy(), True

    @staticmethod
    def _infer_dim(encoder, dim, clips, products) -> int:
        if encoder is not None:
            if dim is not None and dim != encoder.dim:
                raise ValueError(f"dim={dim} but the text encoder gives {encoder.dim}-d vectors")
            return int(encoder.dim)
        if dim is not None:
            return int(dim)
        for vec in [c.asr_vector for c in clips] + [p.title_vector for p in products]:
            if vec is not None:
                return int(np.shape(vec)[-1])
        raise ValueError("cannot tell the text vector size: give a text encoder or dim")

    def _check_vector(self, vector, kind: str, item_id: str) -> np.ndarray:
        vec = np.asarray(vector, dtype=np.float32)
        if vec.shape != (self.dim,):
            raise DataError(f"precomputed {kind} text vector has shape {vec.shape}, expected ({self.dim},)", key=item_id)
        if not np.isfinite(vec).all():
            raise DataError(f"precomputed {kind} text vector has NaN or infinite entries", key=item_id)
        return vec

    def _encode_all(self, encoder, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        with tqdm(total=len(texts), desc="text vectors", unit="text", disable=not progress) as bar:
            for start in range(0, len(texts), batch_size):
                chunk = texts[start : start + batch_size]
                vecs, mask = encoder.encode(chunk)
                if not mask.all():
                    raise ValueError(f"text encoder {encoder.name} reported no text for a non-empty string")
                out[start : start + len(chunk)] = vecs
                bar.update(len(chunk))
        return out
