"""Checking uploaded files: the declared content type first, then the content itself.

A client's file name is only ever shown in messages (sanitised); files are written under names
the server chooses, in a temporary folder of its own.
"""

from __future__ import annotations

import shutil
import unicodedata
from io import BytesIO
from pathlib import Path

import numpy as np
from fastapi import HTTPException, UploadFile
from PIL import Image

from sgmn.data.media import UPLOAD_IMAGE_FORMATS, decode_image
from sgmn.errors import MediaError

COPY_CHUNK = 1 << 20


class UnsupportedMediaType(HTTPException):
    """415: the declared content type is not the kind of file this field takes."""

    def __init__(self, name: str, expected: str, got: str):
        super().__init__(
            status_code=415,
            detail=f"{name}: expected {expected}, got content type {got or 'none'!r}",
        )


def display_name(upload: UploadFile, fallback: str = "upload") -> str:
    """The client's file name, fit for an error message (never for a path)."""
    raw = upload.filename or fallback
    clean = "".join(ch for ch in raw if unicodedata.category(ch)[0] != "C")[:100]
    return repr(clean or fallback)


def _content_type(upload: UploadFile) -> str:
    return (upload.content_type or "").split(";")[0].strip().lower()


# Clients that do not know a file's type (curl for an .mp4, say) send this one; the content
# check that follows still decides.
UNDECLARED = "application/octet-stream"


def require_type(upload: UploadFile, major: str, expected: str) -> str:
    """Raise :class:`UnsupportedMediaType` unless the part declares ``major/*`` (or no particular
    type, :data:`UNDECLARED`); return its display name."""
    name = display_name(upload)
    ctype = _content_type(upload)
    if not (ctype.startswith(major + "/") or ctype == UNDECLARED):
        raise UnsupportedMediaType(name, expected, ctype)
    return name


def read_image(upload: UploadFile, max_pixels: int) -> Image.Image:
    """Decode an uploaded image completely (a corrupt or truncated file fails here, by name)."""
    name = require_type(upload, "image", "an image (image/*)")
    data = upload.file.read()
    if not data:
        raise MediaError("the file is empty", file=name)
    return decode_image(BytesIO(data), name=name, max_pixels=max_pixels, formats=UPLOAD_IMAGE_FORMATS)


def read_frames(uploads: list[UploadFile], max_pixels: int) -> list[np.ndarray]:
    """Frame images in upload order as HxWx3 uint8 arrays."""
    return [np.asarray(read_image(u, max_pixels)) for u in uploads]


def save_video(upload: UploadFile, folder: Path) -> tuple[Path, str]:
    """Copy an uploaded video into ``folder`` under a fixed name; returns (path, display name).

    The content is checked by decoding it later (``sgmn.data.media.decode_video``), whose
    :class:`MediaError` the caller relabels with the display name.
    """
    name = require_type(upload, "video", "a video (video/*, e.g. an mp4 clip)")
    path = folder / "clip.mp4"
    with open(path, "wb") as out:
        shutil.copyfileobj(upload.file, out, COPY_CHUNK)
    if path.stat().st_size == 0:
        raise MediaError("the file is empty", file=name)
    return path, name
