"""Torch datasets over :class:`~sgmn.data.records.LPRData` and the collate that builds batches.

- :class:`TrainPairs`: one sample per (clip, ground-truth product) pair, for training;
- :class:`QueryClips`: one sample per clip, for encoding queries at evaluation;
- :class:`GalleryProducts`: one sample per product image, for encoding galleries.

:func:`collate` turns their samples into the batch dict of ``docs/architecture.md``.

Text comes as vectors from a ``TextVectors``-like object (``clip(clip_id)``, ``product(product_id)``
-> ``(vector, has_text)``, ``dim``); without one, the vectors the data set itself carries
(``Clip.asr_vector`` / ``Product.title_vector``, the published SGMN layout) are used, and text
strings without a vector are refused rather than dropped. Missing text is a zero vector with mask
False.

Bad media: with ``on_error="raise"`` a sample that cannot be read raises
:class:`~sgmn.errors.MediaError` naming the file; with ``on_error="skip"`` the sample comes back as a
:class:`SkippedSample`, which :func:`collate` drops and counts in the batch's ``skipped`` field
(a worker's copy of the dataset cannot report to the main process any other way). A skipped
sample is never replaced by another one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sgmn.data.media import load_clip_frames, load_image
from sgmn.data.records import Box, Clip, LPRData, Product
from sgmn.data.transforms import ImageTransform, box_to_patch_mask, image_wh, normalise_uint8
from sgmn.errors import DataError, ErrorPolicy, MediaError, OnError


class TextVectorSource(Protocol):
    """What the datasets need from a text encoder (``sgmn.text.TextVectors`` provides it)."""

    dim: int

    def clip(self, clip_id: str) -> tuple[np.ndarray, bool]: ...

    def product(self, product_id: str) -> tuple[np.ndarray, bool]: ...


@dataclass
class SkippedSample:
    """Placeholder for a sample whose media could not be read (``on_error="skip"``)."""

    index: int
    reason: str


class NoTextVectors:
    """An explicit "ignore the text" source, for models without a text branch (the baselines,
    ablations with ``use_text=False``): every clip and product reads as having no text."""

    def __init__(self, dim: int):
        self.dim = int(dim)

    def clip(self, clip_id: str) -> tuple[np.ndarray, bool]:
        return np.zeros(self.dim, dtype=np.float32), False

    def product(self, product_id: str) -> tuple[np.ndarray, bool]:
        return np.zeros(self.dim, dtype=np.float32), False


class _RecordVectors:
    """Text vectors stored in the records themselves (or none at all)."""

    def __init__(self, clips: Sequence[Clip], products: Sequence[Product]):
        # text without a vector would silently become "no text": refuse instead
        unvectored = [c.clip_id for c in clips if c.asr and c.asr_vector is None]
        unvectored += [p.product_id for p in products if p.title and p.title_vector is None]
        if unvectored:
            raise ValueError(
                f"{len(unvectored)} clips/products (e.g. {unvectored[0]!r}) have text but no "
                "precomputed vector: pass text=sgmn.text.TextVectors(...) to the dataset"
            )
        self._clips = {c.clip_id: c.asr_vector for c in clips if c.asr_vector is not None}
        self._products = {p.product_id: p.title_vector for p in products if p.title_vector is not None}
        first = next(iter(self._clips.values()), None)
        if first is None:
            first = next(iter(self._products.values()), None)
        self.dim = 0 if first is None else int(np.asarray(first).shape[-1])

    def _lookup(self, table: dict, key: str) -> tuple[np.ndarray, bool]:
        vector = table.get(key)
        if vector is None:
            return np.zeros(self.dim, dtype=np.float32), False
        return np.asarray(vector, dtype=np.float32), True

    def clip(self, clip_id: str) -> tuple[np.ndarray, bool]:
        return self._lookup(self._clips, clip_id)

    def product(self, product_id: str) -> tuple[np.ndarray, bool]:
        return self._lookup(self._products, product_id)


def _text_tensors(vector: np.ndarray, has_text: bool, dim: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a text vector and turn it into (float (dim,), bool ()) tensors; zeros when missing."""
    if not has_text:
        return torch.zeros(dim, dtype=torch.float32), torch.tensor(False)
    vector = np.asarray(vector, dtype=np.float32)
    if vector.shape != (dim,):
        raise DataError(f"text vector has shape {vector.shape}, expected ({dim},)", key=what)
    if not np.isfinite(vector).all():
        raise DataError("text vector contains NaN or inf", key=what)
    return torch.from_numpy(vector.copy()), torch.tensor(True)


class _ClipFrames:
    """Shared frame pipeline: sample, load, transform, pad to T, masks from boxes."""

    def __init__(self, num_frames: int, image_size: int, patch_size: int, geometry: str,
                 video_fps: Optional[float]):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.num_frames = num_frames
        self.patch_size = patch_size
        self.transform = ImageTransform(image_size, geometry)
        self.video_fps = video_fps

    def __call__(
        self, clip: Clip, truncate: Optional[Callable[[int], int]] = None, use_boxes: bool = False,
        product_id: Optional[str] = None,
    ) -> dict[str, Any]:
        """``truncate(n)``: how many of the ``n`` sampled frames to keep (all when ``None``);
        ``product_id``: whose boxes to use when the clip has boxes per ground-truth product."""
        keep_first = None
        if truncate is not None and clip.frame_paths:
            # the sampled count is known before reading: skip reading the frames cut off
            keep_first = truncate(min(len(clip.frame_paths), self.num_frames))
        images, boxes, indices = load_clip_frames(
            clip, self.num_frames, video_fps=self.video_fps, keep_first=keep_first, product_id=product_id,
            decode_size=self.transform.resize_size,  # decode no more pixels than the model uses
            as_arrays=True,  # the decoders' arrays, without a copy through PIL
        )
        if truncate is not None and not clip.frame_paths:
            # a video's frame count is known only after decoding
            keep = truncate(len(images))
            images, boxes, indices = images[:keep], boxes[:keep], indices[:keep]
        size, T = self.transform.image_size, self.num_frames
        tokens = 1 + (size // self.patch_size) ** 2
        frames = torch.zeros(T, 3, size, size)
        frame_mask = torch.zeros(T, dtype=torch.bool)
        # padded frames keep every token, so attention never sees an all-masked row
        patch_mask = torch.ones(T, tokens, dtype=torch.bool)
        box_tensor = torch.zeros(T, 4)
        box_mask = torch.zeros(T, dtype=torch.bool)
        raw = torch.empty(len(images), 3, size, size, dtype=torch.uint8)
        for t, (image, box) in enumerate(zip(images, boxes)):
            raw[t] = self.transform.pixels(image)
            out_box = self.transform.transform_box(box, *image_wh(image))
            frame_mask[t] = True
            if out_box is not None:
                box_tensor[t] = torch.tensor(out_box)
                box_mask[t] = True
                if use_boxes:
                    patch_mask[t] = box_to_patch_mask(out_box, size, self.patch_size)
        normalise_uint8(raw, out=frames[: len(images)])  # the whole clip in one pass
        return {
            "frames": frames,
            "frame_mask": frame_mask,
            "patch_mask": patch_mask,
            "boxes": box_tensor,
            "box_mask": box_mask,
            "frame_indices": indices,
        }


class _SkippingDataset(Dataset):
    """``__getitem__`` = ``_load``, with the raise / skip policy for unreadable media."""

    def __init__(self, on_error: OnError):
        self.policy = ErrorPolicy(on_error)

    @property
    def skipped(self) -> Counter:
        """Skips seen by THIS process's copy (batches carry the counts from workers)."""
        return self.policy.skipped

    def _load(self, index: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int):
        if index < 0 or index >= len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of {len(self)}")
        try:
            return self._load(index)
        except MediaError as err:
            self.policy.handle(err, "unreadable media")
            return SkippedSample(index, str(err))


class TrainPairs(_SkippingDataset):
    """One sample per (clip, ground-truth product) pair of a split.

    ``labels`` number the split's product ids in sorted order, so every rank (and every run on
    the same data) gives the same product the same label. With ``train=True``, temporal
    truncation (method.md): with probability ``truncation_p`` only the first
    ``n - floor(n * rho)`` of the ``n`` sampled frames are kept, rho uniform in {0, .1, ..., .9}.
    The draw uses a generator seeded from ``(seed, epoch, index)``: reproducible, and the same
    whichever DataLoader worker loads the sample. Call :meth:`set_epoch` before each epoch (with
    non-persistent workers, which copy the dataset when iteration starts).

    ``use_boxes``: turn the product's boxes into ``patch_mask`` (the detector-assisted mode,
    ``SGMNConfig.detector_boxes``). Off by default, so that training sees what a query without
    boxes looks like at inference; ``boxes``/``box_mask`` are returned either way (box loss).
    """

    def __init__(
        self,
        data: LPRData,
        split: str,
        *,
        num_frames: int = 10,
        image_size: int = 224,
        patch_size: int = 32,
        geometry: str = "squash",
        text: Optional[TextVectorSource] = None,
        train: bool = True,
        truncation_p: float = 0.5,
        seed: int = 0,
        on_error: OnError = "raise",
        video_fps: Optional[float] = None,
        use_boxes: bool = False,
    ):
        super().__init__(on_error)
        if not 0.0 <= truncation_p <= 1.0:
            raise ValueError(f"truncation_p must be in [0, 1], got {truncation_p}")
        self.data = data
        self.split = split
        self.frames = _ClipFrames(num_frames, image_size, patch_size, geometry, video_fps)
        self.train = train
        self.truncation_p = truncation_p
        self.use_boxes = use_boxes
        self.seed = seed
        self.epoch = 0
        self.pairs: list[tuple[str, str]] = []
        self.clips_without_products = 0
        for clip in data.split_clips(split):
            if not clip.product_ids:
                self.clips_without_products += 1
            for product_id in clip.product_ids:
                if product_id not in data.products:
                    raise DataError(f"ground-truth product {product_id!r} is not in the data set",
                                    key=clip.clip_id)
                if not data.products[product_id].image_paths:
                    raise DataError("product has no image", key=product_id)
                self.pairs.append((clip.clip_id, product_id))
        self.product_ids = sorted({p for _, p in self.pairs})
        self.label_of = {p: i for i, p in enumerate(self.product_ids)}
        self.text = text if text is not None else _RecordVectors(
            data.split_clips(split), [data.products[p] for p in self.product_ids]
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def truncation_keep(self, index: int, n: int) -> int:
        """How many of ``n`` sampled frames sample ``index`` keeps this epoch."""
        if not self.train or n == 0:
            return n
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if rng.random() >= self.truncation_p:
            return n
        tenths = int(rng.integers(0, 10))  # rho = tenths / 10
        return n - (n * tenths) // 10

    def _load(self, index: int) -> dict[str, Any]:
        clip_id, product_id = self.pairs[index]
        clip, product = self.data.clips[clip_id], self.data.products[product_id]
        truncate = (lambda n: self.truncation_keep(index, n)) if self.train else None
        sample = self.frames(clip, truncate=truncate, use_boxes=self.use_boxes, product_id=product_id)
        side = self.frames.transform.resize_size  # decode no more pixels than the model uses
        sample["product_pixels"], _ = self.frames.transform(load_image(product.image_paths[0], draft_size=(side, side)))
        dim = self.text.dim
        sample["asr_vec"], sample["asr_mask"] = _text_tensors(*self.text.clip(clip_id), dim, clip_id)
        sample["title_vec"], sample["title_mask"] = _text_tensors(
            *self.text.product(product_id), dim, product_id
        )
        sample["labels"] = torch.tensor(self.label_of[product_id], dtype=torch.long)
        sample["clip_ids"] = clip_id
        sample["product_ids"] = product_id
        return sample


class QueryClips(_SkippingDataset):
    """One sample per clip of a split, for encoding queries (no product, no truncation).

    Boxes are returned (``boxes``/``box_mask``) but turned into ``patch_mask`` only with
    ``use_boxes=True``: a real query has no box, so evaluation keeps every patch by default.
    """

    def __init__(
        self,
        data: LPRData,
        split: str,
        *,
        num_frames: int = 10,
        image_size: int = 224,
        patch_size: int = 32,
        geometry: str = "squash",
        text: Optional[TextVectorSource] = None,
        use_boxes: bool = False,
        on_error: OnError = "raise",
        video_fps: Optional[float] = None,
    ):
        super().__init__(on_error)
        self.data = data
        self.split = split
        self.clips = data.split_clips(split)
        self.frames = _ClipFrames(num_frames, image_size, patch_size, geometry, video_fps)
        self.use_boxes = use_boxes
        self.text = text if text is not None else _RecordVectors(self.clips, [])

    def __len__(self) -> int:
        return len(self.clips)

    def _load(self, index: int) -> dict[str, Any]:
        clip = self.clips[index]
        sample = self.frames(clip, use_boxes=self.use_boxes)
        sample["asr_vec"], sample["asr_mask"] = _text_tensors(
            *self.text.clip(clip.clip_id), self.text.dim, clip.clip_id
        )
        sample["clip_ids"] = clip.clip_id
        sample["room_ids"] = clip.room_id
        sample["gt_product_ids"] = list(clip.product_ids)
        return sample


class GalleryProducts(_SkippingDataset):
    """Product images and titles for encoding a gallery.

    One sample per product (its main image) or, with ``all_images=True``, one per image of every
    product (the RICE "all images" gallery; ``image_index`` says which).
    """

    def __init__(
        self,
        products: Sequence[Product],
        *,
        image_size: int = 224,
        geometry: str = "squash",
        text: Optional[TextVectorSource] = None,
        all_images: bool = False,
        on_error: OnError = "raise",
    ):
        super().__init__(on_error)
        self.products = list(products)
        self.transform = ImageTransform(image_size, geometry)
        self.text = text if text is not None else _RecordVectors([], self.products)
        self.items: list[tuple[int, int]] = []  # (product position, image index)
        for position, product in enumerate(self.products):
            if not product.image_paths:
                raise DataError("product has no image", key=product.product_id)
            count = len(product.image_paths) if all_images else 1
            self.items.extend((position, k) for k in range(count))

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> dict[str, Any]:
        position, image_index = self.items[index]
        product = self.products[position]
        pixels, _ = self.transform(load_image(product.image_paths[image_index]))
        title_vec, title_mask = _text_tensors(
            *self.text.product(product.product_id), self.text.dim, product.product_id
        )
        return {
            "product_pixels": pixels,
            "title_vec": title_vec,
            "title_mask": title_mask,
            "product_ids": product.product_id,
            "image_index": image_index,
        }


def collate(samples: Sequence[Any]) -> dict[str, Any]:
    """Stack the tensors of the samples and list everything else, key by key.

    :class:`SkippedSample` entries are dropped; the batch says how many in ``skipped`` and why in
    ``skip_reasons``. A batch in which every sample was skipped holds only those two fields.
    """
    kept = [s for s in samples if not isinstance(s, SkippedSample)]
    skipped = [s for s in samples if isinstance(s, SkippedSample)]
    batch: dict[str, Any] = {}
    if kept:
        for key in kept[0]:
            values = [s[key] for s in kept]
            batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    batch["skipped"] = len(skipped)
    batch["skip_reasons"] = [s.reason for s in skipped]
    return batch
