"""Image geometry, CLIP normalisation, and the box -> patch mask rule.

Two geometries are offered because the two public codebases differ:
- ``"squash"``: resize straight to S x S, aspect ratio not kept (the published SGMN code);
- ``"resize-crop"``: resize to round(S * 256 / 224) square, then centre-crop S (RICE).
A box goes through exactly the same mapping as the pixels, so a transformed box still frames the
same object; the part of a box cut off by the crop is clipped away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sgmn.data.records import Box

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Geometry = Literal["squash", "resize-crop"]
ImageLike = Union[Image.Image, np.ndarray]  # an RGB PIL image or an HxWx3 uint8 array
GEOMETRIES = ("squash", "resize-crop")

# The minimum IoU between a patch cell and the product box for the patch to stay visible
# (the published SGMN code's rule).
PATCH_IOU_THRESHOLD = 0.02


# (x / 255 - mean) / std == x * _SCALE - _SHIFT: one multiply-subtract over a whole clip
_SCALE = torch.tensor([1.0 / (255.0 * s) for s in CLIP_STD], dtype=torch.float32).view(3, 1, 1)
_SHIFT = torch.tensor([m / s for m, s in zip(CLIP_MEAN, CLIP_STD)], dtype=torch.float32).view(3, 1, 1)


def normalise_uint8(pixels: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """uint8 RGB (..., 3, H, W) -> float32 with CLIP mean/std normalisation, in one vectorised
    pass (a whole clip at once: per-frame tensor set-up costs more than the arithmetic).
    ``out``: a float32 tensor of the same shape to write into."""
    if out is None:
        out = torch.empty(pixels.shape, dtype=torch.float32)
    out.copy_(pixels)
    return out.mul_(_SCALE).sub_(_SHIFT)


def to_normalised_tensor(img: Image.Image) -> torch.Tensor:
    """RGB ``PIL.Image`` -> float32 (3, H, W) with CLIP mean/std normalisation."""
    return normalise_uint8(_pixels_chw(img))


def _pixels_chw(img: ImageLike) -> torch.Tensor:
    """The pixels of an image as a uint8 (3, H, W) tensor (a channels-last view)."""
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"an array image must be HxWx3 uint8, got shape {img.shape} dtype {img.dtype}")
        if not img.flags.writeable:  # torch wants writable memory (nothing here writes to it)
            img = img.copy()
        return torch.from_numpy(img).permute(2, 0, 1)
    if img.mode != "RGB":
        img = img.convert("RGB")
    # np.array copies (Pillow hands out read-only bytes); the tensor then owns writable memory
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def image_wh(img: ImageLike) -> tuple[int, int]:
    """(width, height) of a PIL image or an HxWx3 array."""
    if isinstance(img, np.ndarray):
        return img.shape[1], img.shape[0]
    return img.size


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
        self, img: ImageLike, box: Optional[Box] = None
    ) -> tuple[torch.Tensor, Optional[Box]]:
        """Normalised float32 (3, S, S) pixels and the box mapped onto them."""
        return normalise_uint8(self.pixels(img)), self.transform_box(box, *image_wh(img))

    def pixels(self, img: ImageLike) -> torch.Tensor:
        """The resized (+ cropped) image as uint8 (3, S, S), before normalisation.

        Bicubic with antialiasing, as CLIP's own preprocessing (PIL's BICUBIC), computed by
        torch's uint8 kernel: the same pixels as ``img.resize(..., Image.BICUBIC)`` within one
        grey level (tests/test_transforms.py checks it), about 4x faster.
        """
        side, offset, size = self.resize_size, self.crop_offset, self.image_size
        chw = _pixels_chw(img)
        if chw.shape[1:] != (side, side):
            chw = F.interpolate(chw.unsqueeze(0), size=(side, side), mode="bicubic", antialias=True)[0]
        if offset or side != size:
            chw = chw[:, offset:offset + size, offset:offset + size]
        return chw

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
