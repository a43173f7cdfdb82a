"""Small pictures for the web page: frame thumbnails and attention heatmaps as data URLs."""

from __future__ import annotations

import base64
from io import BytesIO

import numpy as np
from PIL import Image


def _data_url(img: Image.Image, fmt: str) -> str:
    buf = BytesIO()
    img.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail(frame: np.ndarray, max_side: int) -> Image.Image:
    img = Image.fromarray(frame)
    img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return img


def frame_data_url(img: Image.Image) -> str:
    return _data_url(img, "JPEG")


def normalise(attention: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] per map; a flat map (no preference) becomes all zeros."""
    a = attention.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("the model returned a non-finite attention map")
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def heatmap_data_url(attention: np.ndarray, size: tuple[int, int]) -> str:
    """A (g, g) attention map as an RGBA PNG of ``size`` (w, h): jet colours, and transparent
    where attention is low so the frame stays visible under the overlay."""
    from matplotlib import colormaps

    norm = normalise(attention)
    rgba = colormaps["jet"](norm)
    rgba[..., 3] = 0.15 + 0.7 * norm
    img = Image.fromarray((rgba * 255).round().astype(np.uint8), mode="RGBA")
    return _data_url(img.resize(size, Image.Resampling.BILINEAR), "PNG")
