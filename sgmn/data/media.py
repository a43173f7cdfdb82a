"""Reading pixels: images (Pillow), videos (PyAV) and the frames of a clip.

Every failure to read a file becomes a :class:`~sgmn.errors.MediaError` that names the file and
the reason, so a bad frame surfaces as one clear line instead of a decoder traceback deep inside a
DataLoader worker. Nothing here substitutes another frame or image for one that cannot be read.

Frame sampling follows the evaluation protocol: ``num_frames`` indices from
``floor(linspace(0, n, num_frames, endpoint=False))``. A clip shorter than ``num_frames`` yields
each of its frames once (no duplicates); the torch datasets pad the rest and mark it in
``frame_mask``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from sgmn.data.records import Box, Clip
from sgmn.errors import MediaError

PathLike = Union[str, Path]


def sample_indices(
    n: int, num_frames: Optional[int], rng: Optional[np.random.Generator] = None
) -> list[int]:
    """Indices of ``num_frames`` frames spread uniformly over ``n`` (all of them when ``None``).

    Without ``rng`` the first frame of each of ``num_frames`` equal segments is taken (the
    protocol's ``floor(linspace(0, n, num_frames, endpoint=False))``). With ``rng`` a random
    frame inside each segment is taken instead (a sampling jitter for training).
    """
    if n < 0:
        raise ValueError(f"frame count must be >= 0, got {n}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 or None, got {num_frames}")
    if num_frames is None or n <= num_frames:
        return list(range(n))
    starts = np.linspace(0, n, num_frames, endpoint=False)
    if rng is None:
        return [int(i) for i in np.floor(starts)]
    ends = np.append(starts[1:], n)
    picks = starts + rng.random(num_frames) * (ends - starts)
    # floor of a point inside [start, end) stays within the segment and below n
    return [int(min(i, n - 1)) for i in np.floor(picks)]


def load_image(path: PathLike) -> Image.Image:
    """Open an image file as a fully decoded RGB ``PIL.Image``.

    The pixels are decoded here (not lazily), so a truncated or corrupt file fails now, with
    its name, rather than later inside a transform.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError("image file not found" if not path.exists() else "not a file", file=path)
    return decode_image(path, name=path)


def decode_image(source, name: PathLike, max_pixels: Optional[int] = None) -> Image.Image:
    """Decode an image (a path or a binary file object) completely to RGB; errors name ``name``.

    With ``max_pixels`` the size is checked from the header, before decoding, so a small file
    cannot expand into a huge bitmap.
    """
    try:
        with Image.open(source) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise MediaError(
                    f"image is {img.width}x{img.height} pixels, more than the limit of {max_pixels}", file=name
                )
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise MediaError("not a readable image (unknown or corrupt format)", file=name) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # Pillow reports truncated / broken data as OSError ("image file is truncated ...")
        raise MediaError(f"cannot decode image: {err}", file=name) from None


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.VideoStream:
    if not container.streams.video:
        raise MediaError("file has no video stream", file=path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _count_frames(path: Path) -> int:
    """Frame count from the container header, else by counting the stream's packets."""
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        if stream.frames:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _decode(path: Path, wanted: Optional[set[int]], fps: Optional[float]):
    """One decoding pass: ``(arrays, indices, frames_decoded)``.

    Keeps the frames whose decode-order index is in ``wanted`` (all when ``None``); with ``fps``
    keeps the first frame at or after each multiple of ``1/fps`` seconds instead.
    """
    arrays: list[np.ndarray] = []
    indices: list[int] = []
    decoded = 0
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        rate = float(stream.average_rate) if stream.average_rate else None
        start_time: Optional[float] = None
        next_time = 0.0
        for index, frame in enumerate(container.decode(stream)):
            decoded += 1
            if fps is not None:
                time = frame.time
                if time is None:
                    if rate is None:
                        raise MediaError("video has neither timestamps nor a frame rate", file=path)
                    time = index / rate
                if start_time is None:
                    start_time = time
                # small tolerance: timestamps are rounded to the stream's time base
                if time - start_time + 1e-6 < next_time:
                    continue
                while next_time <= time - start_time + 1e-6:
                    next_time += 1.0 / fps
            elif wanted is not None and index not in wanted:
                continue
            arrays.append(frame.to_ndarray(format="rgb24"))
            indices.append(index)
    return arrays, indices, decoded


def decode_video(
    path: PathLike,
    num_frames: Optional[int] = None,
    fps: Optional[float] = None,
    rng: Optional[np.random.Generator] = None,
) -> tuple[list[np.ndarray], list[int]]:
    """Decode frames of a video file: ``(HxWx3 uint8 RGB arrays, their frame indices)``.

    ``fps`` first thins the video to that many frames per second (by timestamp); ``num_frames``
    then samples uniformly (see :func:`sample_indices`) from all frames, or from the thinned ones.
    Indices are always positions in the video's full decode order (what per-frame annotations
    such as MovingFashion tracklets are keyed by). The whole file is decoded sequentially, which
    is simple and right for the short clips of live-commerce data.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError("video file not found" if not path.exists() else "not a file", file=path)
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    try:
        if fps is not None:
            arrays, indices, _ = _decode(path, None, fps)
            if num_frames is not None:
                keep = sample_indices(len(arrays), num_frames, rng)
                arrays, indices = [arrays[i] for i in keep], [indices[i] for i in keep]
        elif num_frames is None:
            arrays, indices, _ = _decode(path, None, None)
        else:
            expected = _count_frames(path)
            wanted = sample_indices(expected, num_frames, rng)
            arrays, indices, decoded = _decode(path, set(wanted), None)
            if decoded != expected and decoded > 0:
                # the header / packet count was wrong (e.g. a truncated file): sample again
                # from what really decodes so the frames are still spread over the whole clip
                wanted = sample_indices(decoded, num_frames, rng)
                arrays, indices, _ = _decode(path, set(wanted), None)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as err:
        raise MediaError(f"cannot decode video: {err}", file=path) from None
    if not arrays:
        raise MediaError("no decodable video frames", file=path)
    return arrays, indices


def _rescale_box(box: Box, source_hw: tuple[int, int], image: Image.Image) -> Box:
    """Map a box given in the source's frame size onto the frame file actually read."""
    src_h, src_w = source_hw
    if src_h <= 0 or src_w <= 0 or (image.height, image.width) == (src_h, src_w):
        return box
    sx, sy = image.width / src_w, image.height / src_h
    x1, y1, x2, y2 = box
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def load_clip_frames(
    clip: Clip,
    num_frames: Optional[int],
    rng: Optional[np.random.Generator] = None,
    *,
    video_fps: Optional[float] = None,
    keep_first: Optional[int] = None,
    product_id: Optional[str] = None,
) -> tuple[list[Image.Image], list[Optional[Box]], list[int]]:
    """Sampled frames of a clip as RGB images, with their boxes and frame indices.

    Frame-folder clips sample from ``clip.frame_paths`` (boxes of the ground-truth product
    ``product_id`` from ``clip.boxes_for``, rescaled when ``clip.frame_sizes`` says the annotated
    frame had another size than the file). Video clips are
    decoded (optionally thinned to ``video_fps`` first); their boxes come from
    ``clip.video_boxes`` by frame index. ``keep_first`` keeps only that many of the sampled frames
    (training-time temporal truncation), without reading the others.
    """
    if clip.frame_paths:
        indices = sample_indices(len(clip.frame_paths), num_frames, rng)
        if keep_first is not None:
            indices = indices[:keep_first]
        images, boxes = [], []
        clip_boxes = clip.boxes_for(product_id)
        for i in indices:
            image = load_image(clip.frame_paths[i])
            box = clip_boxes[i] if clip_boxes is not None and i < len(clip_boxes) else None
            if box is not None and clip.frame_sizes is not None and i < len(clip.frame_sizes):
                box = _rescale_box(box, clip.frame_sizes[i], image)
            images.append(image)
            boxes.append(box)
        return images, boxes, indices
    if clip.video_path is not None:
        arrays, indices = decode_video(clip.video_path, num_frames, fps=video_fps, rng=rng)
        if keep_first is not None:
            arrays, indices = arrays[:keep_first], indices[:keep_first]
        video_boxes = clip.video_boxes or {}
        boxes = [video_boxes.get(i) for i in indices]
        return [Image.fromarray(a) for a in arrays], boxes, indices
    raise MediaError(f"clip {clip.clip_id!r} has neither frame files nor a video", key=clip.clip_id)
