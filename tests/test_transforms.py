"""Geometry, normalisation and the box -> patch mask rule, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sgmn.data.transforms import CLIP_MEAN, CLIP_STD, ImageTransform, box_to_patch_mask, normalise_uint8


def denormalise(pixels: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (pixels * std + mean).permute(1, 2, 0).numpy()


def test_uniform_image_is_normalised_with_clip_statistics():
    out, box = ImageTransform(32)(Image.new("RGB", (50, 20), color=(255, 0, 128)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and box is None
    expected = [(1.0 - CLIP_MEAN[0]) / CLIP_STD[0], (0.0 - CLIP_MEAN[1]) / CLIP_STD[1],
                (128 / 255 - CLIP_MEAN[2]) / CLIP_STD[2]]
    for channel in range(3):
        assert torch.allclose(out[channel], torch.full((32, 32), expected[channel]), atol=1e-5)


def test_squash_scales_each_axis_on_its_own():
    transform = ImageTransform(64, "squash")
    _, box = transform(Image.new("RGB", (100, 50)), (10, 5, 60, 25))
    # x * 64/100, y * 64/50
    assert box == pytest.approx((6.4, 6.4, 38.4, 32.0))


def test_resize_crop_resizes_to_256_then_crops_the_centre_224():
    transform = ImageTransform(224, "resize-crop")
    assert transform.resize_size == 256 and transform.crop_offset == 16
    # 512x256 -> 256x256 (x * 0.5, y * 1.0), then shift by -16
    _, box = transform(Image.new("RGB", (512, 256)), (32, 32, 288, 128))
    assert box == pytest.approx((0.0, 16.0, 128.0, 112.0))
    # partly cut by the crop: clipped to the image
    _, box = transform(Image.new("RGB", (512, 256)), (20, 0, 100, 300))
    assert box == pytest.approx((0.0, 0.0, 34.0, 224.0))
    # entirely in the cropped-away margin
    _, box = transform(Image.new("RGB", (512, 256)), (0, 0, 20, 256))
    assert box is None


def test_unknown_geometry_is_rejected():
    with pytest.raises(ValueError, match="geometry"):
        ImageTransform(224, "letterbox")


@pytest.mark.parametrize("geometry", ["squash", "resize-crop"])
@pytest.mark.parametrize("rect", [(30, 10, 70, 50), (2, 40, 30, 78)])
def test_transformed_box_frames_the_transformed_pixels(geometry, rect):
    """Draw a red rectangle, transform image and box together: the box must frame the red pixels."""
    image = Image.new("RGB", (120, 80), "white")
    x1, y1, x2, y2 = rect
    ImageDraw.Draw(image).rectangle([x1, y1, x2 - 1, y2 - 1], fill=(255, 0, 0))
    pixels, box = ImageTransform(64, geometry)(image, rect)
    rgb = denormalise(pixels)
    red = (rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    assert red.any() and box is not None
    rows, cols = np.nonzero(red)
    red_box = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    # resampling blurs the edges by about a pixel
    assert box == pytest.approx(red_box, abs=1.5)
    # and nothing red lies outside the box
    bx1, by1, bx2, by2 = box
    assert cols.min() >= bx1 - 1 and cols.max() + 1 <= bx2 + 1
    assert rows.min() >= by1 - 1 and rows.max() + 1 <= by2 + 1


def _kept_tokens(mask: torch.Tensor) -> list[int]:
    return torch.nonzero(mask).flatten().tolist()


def test_box_exactly_covering_one_cell_keeps_that_cell_only():
    # 224 px, 32 px patches: 7x7 grid; cell (row 2, col 3) spans x 96..128, y 64..96 and is
    # token 1 + 2*7 + 3 = 18. Edge neighbours only touch the box: intersection 0, IoU 0.
    mask = box_to_patch_mask((96, 64, 128, 96), 224, 32)
    assert mask.shape == (50,) and mask.dtype == torch.bool
    assert _kept_tokens(mask) == [0, 18]


def test_partial_overlaps_use_the_iou_threshold():
    # Box 0..40 square: cell (0,0) IoU 1024/1600; (0,1) and (1,0): 256/2368 = 0.108;
    # (1,1): 8*8 = 64 / (1600 + 1024 - 64) = 0.025 >= 0.02 -> kept.
    assert _kept_tokens(box_to_patch_mask((0, 0, 40, 40), 224, 32)) == [0, 1, 2, 8, 9]
    # Box 0..36 square: (1,1): 16 / (1296 + 1024 - 16) = 0.0069 < 0.02 -> dropped;
    # (0,1): 128 / (1296 + 1024 - 128) = 0.058 -> kept.
    assert _kept_tokens(box_to_patch_mask((0, 0, 36, 36), 224, 32)) == [0, 1, 2, 8]


def test_no_qualifying_patch_or_no_box_keeps_everything():
    # a 1-pixel box: IoU with its cell is 1/1024 < 0.02
    assert box_to_patch_mask((100, 70, 101, 71), 224, 32).all()
    assert box_to_patch_mask(None, 224, 32).all()
    assert box_to_patch_mask((300, 300, 400, 400), 224, 32).all()


def test_cls_is_kept_and_grid_follows_image_and_patch_size():
    mask = box_to_patch_mask((0, 0, 16, 16), 64, 16)  # 4x4 grid, box = cell (0,0)
    assert mask.shape == (17,)
    assert _kept_tokens(mask) == [0, 1]


@pytest.mark.parametrize("geometry", ["squash", "resize-crop"])
@pytest.mark.parametrize("size", [(640, 360), (1280, 720), (100, 50), (224, 224), (300, 500)])
def test_resize_gives_pils_bicubic_pixels_within_a_grey_level(geometry, size):
    """The uint8 torch kernel stands in for PIL's BICUBIC (CLIP's preprocessing): same pixels
    up to rounding, downscaling and upscaling, on noise (the hardest case for a filter)."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    transform = ImageTransform(224, geometry)
    side, off = transform.resize_size, transform.crop_offset
    reference = np.asarray(image.resize((side, side), Image.BICUBIC).crop((off, off, off + 224, off + 224)))
    got = transform.pixels(image).permute(1, 2, 0).numpy()
    diff = np.abs(got.astype(int) - reference.astype(int))
    assert got.dtype == np.uint8 and got.shape == (224, 224, 3)
    assert diff.max() <= 2 and diff.mean() < 0.02


def test_grey_and_palette_images_are_taken_as_rgb():
    for mode in ("L", "P", "RGBA"):
        out, _ = ImageTransform(32)(Image.new(mode, (40, 40)))
        assert out.shape == (3, 32, 32)


def test_clip_normalisation_in_one_pass_equals_the_formula():
    pixels = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    expected = (pixels.float() / 255 - mean) / std
    assert torch.allclose(normalise_uint8(pixels), expected, atol=1e-5)
    out = torch.full((4, 3, 8, 8), float("nan"))
    assert normalise_uint8(pixels, out=out) is out and torch.allclose(out, expected, atol=1e-5)


def test_an_array_image_transforms_like_the_pil_image():
    array = np.random.default_rng(1).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    transform = ImageTransform(32)
    from_pil, box_pil = transform(Image.fromarray(array), (10, 10, 80, 60))
    from_array, box_array = transform(array, (10, 10, 80, 60))
    assert torch.equal(from_pil, from_array) and box_pil == box_array
    read_only = array.copy()
    read_only.flags.writeable = False
    assert torch.equal(transform(read_only)[0], from_array)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        transform(array.astype(np.float32))
