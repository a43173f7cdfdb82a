"""Image geometry, CLIP normalisation, and the box -> patch mask rule.

Two geometries are offered because the two public codebases differ:
- ``"squash"``: resize straight to S x S, aspect ratio not kept (the published SGMN code);
- ``"resize-crop"``: resize to round(S * 256 / 224) square, then centre-crop S (RICE).
A box goes through exactly the same mapping as the pixels, so a transformed box still frames the
same object; the part of a box cut off by the crop is clipped away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
from PIL import Image

from sgmn.data.records import Box

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Geometry = Literal["squash", "resize-crop"]
GEOMETRIES = ("squash", "resize-crop")

# The minimum IoU between a patch cell and the product box for the patch to stay visible
# (the published SGMN code's rule).
PATCH_IOU_THRESHOLD = 0.02


def to_normalised_tensor(img: Image.Image) -> torch.Tensor:
    """RGB ``PIL.Image`` -> float32 (3, H, W) with CLIP mean/std normalisation."""
    pixels = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)
    pixels = pixels.permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return (pixels - mean) / std


@dataclass
class ImageTransform:
    """Resize (+ crop) an image to S x S, normalise it, and carry a box along."""

    image_size: int = 224
    geometry: Geometry = "squash"

    def __post_init__(self):
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")

    @property
    def resize_size(self) -> int:
        """Side of the square the image is resized to before any crop."""
        if self.geometry == "squash":
            return self.image_size
        return round(self.image_size * 256 / 224)

    @property
    def crop_offset(self) -> int:
        return int(round((self.resize_size - self.image_size) / 2))

    def __call__(
        self, img: Image.Image, box: Optional[Box] = None
    ) -> tuple[torch.Tensor, Optional[Box]]:
        width, height = img.size
        side, offset, size = self.resize_size, self.crop_offset, self.image_size
        # bicubic, as CLIP's own preprocessing
        out = img.convert("RGB").resize((side, side), Image.BICUBIC)
        if offset or side != size:
            out = out.crop((offset, offset, offset + size, offset + size))
        return to_normalised_tensor(out), self.transform_box(box, width, height)

    def transform_box(self, box: Optional[Box], width: int, height: int) -> Optional[Box]:
        """Map a box in a ``width`` x ``height`` image to output pixels; ``None`` if nothing is left."""
        if box is None:
            return None
        side, offset, size = self.resize_size, self.crop_offset, self.image_size
        sx, sy = side / width, side / height
        x1, y1, x2, y2 = box
        mapped = [x1 * sx - offset, y1 * sy - offset, x2 * sx - offset, y2 * sy - offset]
        x1, y1, x2, y2 = (float(min(max(v, 0.0), size)) for v in mapped)
        if x2 <= x1 or y2 <= y1:
            return None
        return (x1, y1, x2, y2)


def box_to_patch_mask(box: Optional[Box], image_size: int, patch_size: int) -> torch.Tensor:
    """Which ViT tokens stay visible for a product box: bool (1 + g*g,), True = keep.

    Token 0 (CLS) is always kept. Patch tokens are in row-major order (row r, column c ->
    1 + r*g + c). A patch is kept when the IoU of its cell with the box is at least 0.02; when
    no patch qualifies, or there is no box, every token is kept (never an all-masked frame).
    """
    grid = image_size // patch_size
    keep = torch.ones(1 + grid * grid, dtype=torch.bool)
    if box is None:
        return keep
    edges = torch.arange(grid, dtype=torch.float64) * patch_size
    cell_y1, cell_x1 = torch.meshgrid(edges, edges, indexing="ij")
    cell_x1, cell_y1 = cell_x1.reshape(-1), cell_y1.reshape(-1)
    cell_x2, cell_y2 = cell_x1 + patch_size, cell_y1 + patch_size
    bx1, by1, bx2, by2 = (float(v) for v in box)
    inter_w = (torch.minimum(cell_x2, torch.tensor(bx2)) - torch.maximum(cell_x1, torch.tensor(bx1))).clamp(min=0)
    inter_h = (torch.minimum(cell_y2, torch.tensor(by2)) - torch.maximum(cell_y1, torch.tensor(by1))).clamp(min=0)
    inter = inter_w * inter_h
    box_area = max(bx2 - bx1, 0.0) * max(by2 - by1, 0.0)
    union = patch_size * patch_size + box_area - inter
    patches = inter / union >= PATCH_IOU_THRESHOLD
    if patches.any():
        keep[1:] = patches
    return keep
