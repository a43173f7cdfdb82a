"""One in-memory model of live-commerce retrieval data, whatever layout it was read from.

Every reader (LPR4M, LPR750K, the published SGMN code's layout, MovingFashion, plain folders)
and the synthetic generator produce a :class:`LPRData`. Everything downstream (torch datasets,
training, evaluation, the retrieval index) consumes only these records.

Conventions
- Boxes are ``(x1, y1, x2, y2)`` in pixels of the *original* frame. A frame without a box
  (the source wrote all zeros, or nothing) has ``None``.
- ``Clip.frame_paths`` and ``Clip.boxes`` are aligned (one box entry per frame) when both exist.
  ``Clip.boxes`` frame the first ground-truth product; a source that gives boxes per (clip,
  product) row keeps those of another product in ``Clip.product_boxes`` when they differ
  (``Clip.boxes_for(product_id)`` picks the right list).
- A clip may have several correct products (``Clip.product_ids``); an empty list means the clip
  has no ground truth (it can still be queried, but is not counted by the protocol).
- ``Room.product_ids`` is the gallery a query of that room is ranked against.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

Box = tuple[float, float, float, float]


@dataclass(slots=True)
class Product:
    product_id: str
    image_paths: list[Path]  # first one is the main image
    title: Optional[str] = None
    room_id: Optional[str] = None
    category: Optional[str] = None
    attributes: dict[str, str] = field(default_factory=dict)
    title_vector: Optional[np.ndarray] = None  # precomputed text vector (published SGMN layout)
    group: Optional[str] = None  # e.g. MovingFashion source group ("regular" / "hard"), spu id


@dataclass(slots=True)
class Clip:
    clip_id: str
    room_id: str
    frame_paths: list[Path] = field(default_factory=list)  # empty when the clip is a video file
    video_path: Optional[Path] = None
    boxes: Optional[list[Optional[Box]]] = None  # per frame (or per sampled video frame index)
    frame_sizes: Optional[list[tuple[int, int]]] = None  # per frame (H, W) when the source says
    asr: Optional[str] = None
    asr_vector: Optional[np.ndarray] = None  # precomputed text vector (published SGMN layout)
    category: Optional[str] = None
    attributes: dict[str, str] = field(default_factory=dict)
    product_ids: list[str] = field(default_factory=list)  # ground truth, possibly several
    video_boxes: Optional[dict[int, Box]] = None  # MovingFashion tracklet: frame index -> box
    group: Optional[str] = None  # MovingFashion source group
    # per-frame boxes of a ground-truth product other than the first, when they differ from boxes
    product_boxes: dict[str, list[Optional[Box]]] = field(default_factory=dict)

    def boxes_for(self, product_id: Optional[str]) -> Optional[list[Optional[Box]]]:
        """Per-frame boxes of one ground-truth product (``boxes`` unless it has its own)."""
        return self.product_boxes.get(product_id, self.boxes) if product_id is not None else self.boxes


@dataclass(slots=True)
class Room:
    room_id: str
    product_ids: list[str] = field(default_factory=list)


@dataclass
class LPRData:
    """Rooms, products and clips of one data set, with named splits of clip ids."""

    source: str  # reader name, e.g. "lpr4m"
    root: Optional[Path] = None
    rooms: dict[str, Room] = field(default_factory=dict)
    products: dict[str, Product] = field(default_factory=dict)
    clips: dict[str, Clip] = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=dict)  # split name -> clip ids
    skipped: Counter = field(default_factory=Counter)  # reason -> count (skip policy only)

    def split_clips(self, split: str) -> list[Clip]:
        if split not in self.splits:
            raise KeyError(f"split {split!r} not in data set (has: {sorted(self.splits)})")
        return [self.clips[c] for c in self.splits[split]]

    def room_gallery(self, room_id: str) -> list[Product]:
        return [self.products[p] for p in self.rooms[room_id].product_ids]

    def summary(self) -> dict:
        """Counts a person wants to see after loading (the demo prints this)."""
        out: dict = {
            "source": self.source,
            "rooms": len(self.rooms),
            "products": len(self.products),
            "clips": len(self.clips),
            "splits": {k: len(v) for k, v in self.splits.items()},
            "frames": sum(len(c.frame_paths) for c in self.clips.values()),
            "boxes": sum(sum(b is not None for b in (c.boxes or [])) for c in self.clips.values()),
            "clips_with_asr": sum(bool(c.asr) or c.asr_vector is not None for c in self.clips.values()),
            "products_with_title": sum(
                bool(p.title) or p.title_vector is not None for p in self.products.values()
            ),
        }
        if self.skipped:
            out["skipped"] = dict(self.skipped)
        return out
