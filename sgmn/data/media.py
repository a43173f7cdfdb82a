"""Reading pixels: images (Pillow), videos (PyAV) and the frames of a clip.

Every failure to read a file becomes a :class:`~sgmn.errors.MediaError` that names the file and
the reason, so a bad frame surfaces as one clear line instead of a decoder traceback deep inside a
DataLoader worker. Nothing here substitutes another frame or image for one that cannot be read.

Frame sampling follows the evaluation protocol: ``num_frames`` indices from
``floor(linspace(0, n, num_frames, endpoint=False))``. A clip shorter than ``num_frames`` yields
each of its frames once (no duplicates); the torch datasets pad the rest and mark it in
``frame_mask``.

Untrusted media is bounded before heavy work: images are opened only in the formats of
:data:`IMAGE_FORMATS`; a video's size, frame count, duration and decoding work are checked
against :class:`VideoLimits` from its metadata and packet table before a frame is decoded, and
only the sampled frames are decoded (seeking to the keyframe before each). Only what the model
uses is decoded: JPEG frames at a reduced k/8 scale and video frames scaled in the decoder when
a ``decode_size`` is given.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import av
import numpy as np
import simplejpeg
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


# Formats read by Pillow here: what photos and frames come as. Anything else (EPS, which runs
# Ghostscript, PSD, ICNS, ...) is refused before a decoder is chosen. (Pillow's JPEG opener
# also reads MPO, the JPEG variant many phones write.)
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# Uploads to the service: the same minus TIFF (a container of many codecs nobody uploads).
UPLOAD_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")


def load_image(path: PathLike, draft_size: Optional[tuple[int, int]] = None) -> Image.Image:
    """Open an image file as a fully decoded RGB ``PIL.Image``.

    The pixels are decoded here (not lazily), so a truncated or corrupt file fails now, with
    its name, rather than later inside a transform. ``draft_size`` (w, h): a JPEG is decoded
    at the smallest scale k/8 (k = 1..4) that is still at least that size (libjpeg-turbo's
    scaled IDCT: far less work when a 720p frame only feeds a 224 px model); other formats,
    and JPEGs less than twice that size, are decoded in full. ``info["source_size"]`` keeps the
    file's size for mapping boxes.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError("image file not found" if not path.exists() else "not a file", file=path)
    return decode_image(path, name=path, draft_size=draft_size)


def _load_frame(path: Path, draft_size: Optional[tuple[int, int]], as_array: bool):
    """:func:`load_image` as a PIL image or (``as_array``) a writable HxWx3 uint8 array, plus the
    file's size (w, h). Each decoder's own output is handed on as it is when it is what was asked
    for (no round trip through the other type)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError("image file not found" if not path.exists() else "not a file", file=path)
    pixels, source_size = _decode(path, path, None, IMAGE_FORMATS, draft_size)
    if as_array and not isinstance(pixels, np.ndarray):
        pixels = np.array(pixels, dtype=np.uint8)
    elif not as_array and isinstance(pixels, np.ndarray):
        pixels = Image.fromarray(pixels)
    return pixels, source_size


def decode_image(
    source,
    name: PathLike,
    max_pixels: Optional[int] = None,
    formats: tuple[str, ...] = IMAGE_FORMATS,
    draft_size: Optional[tuple[int, int]] = None,
) -> Image.Image:
    """Decode an image (a path or a binary file object) completely to RGB; errors name ``name``.

    With ``max_pixels`` the size is checked from the header, before decoding, so a small file
    cannot expand into a huge bitmap. Only ``formats`` are tried (others are refused unread).
    The returned image's ``info["source_size"]`` is the size before any draft scaling.
    """
    pixels, source_size = _decode(source, name, max_pixels, formats, draft_size)
    out = Image.fromarray(pixels) if isinstance(pixels, np.ndarray) else pixels
    out.info["source_size"] = source_size
    return out


def _decode(source, name, max_pixels, formats, draft_size):
    """``(RGB pixels: a PIL image or an HxWx3 uint8 array, size of the file (w, h))``."""
    try:
        with Image.open(source, formats=list(formats)) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise MediaError(
                    f"image is {img.width}x{img.height} pixels, more than the limit of {max_pixels}", file=name
                )
            source_size = img.size  # before draft mode changes it
            if draft_size is not None and img.format in ("JPEG", "MPO"):
                return _decode_jpeg_scaled(img, draft_size), source_size
            img.load()
            return img.convert("RGB"), source_size  # a copy: never a memory map of a file that may change
    except UnidentifiedImageError:
        raise MediaError(
            f"not a readable image in an accepted format ({', '.join(formats)}), or corrupt", file=name
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # Pillow reports truncated / broken data as OSError ("image file is truncated ...")
        raise MediaError(f"cannot decode image: {err}", file=name) from None


def _decode_jpeg_scaled(img, size: tuple[int, int]) -> Union[Image.Image, np.ndarray]:
    """An opened JPEG decoded at the smallest scale k/8, k <= 4, that keeps both sides >= ``size``
    (in full when even 1/2 is too small).

    libjpeg-turbo (through simplejpeg) scales inside the IDCT at any k/8; Pillow's draft mode
    offers only 1/2, 1/4, 1/8, so a 1280x720 frame for a 224 px model would be decoded at
    640x360 where 480x270 (3/8) suffices: less decoding and 45% fewer pixels to resize. Scales
    above 1/2 (5/8 .. 7/8) are not used: they save little work, and an image that only needs them
    stays decoded exactly as without ``draft_size``. CMYK / YCCK JPEGs (which the scaled decoder
    cannot convert) take Pillow's draft mode.
    """
    width, height = img.size  # the file's size (draft below changes img.size)
    eighths = next((k for k in (1, 2, 3, 4) if -(-width * k // 8) >= size[0] and -(-height * k // 8) >= size[1]), 8)
    if eighths == 8 or img.mode not in ("RGB", "L"):
        img.draft("RGB", size)  # Pillow: 1/2, 1/4 or 1/8 when they fit, else the full image
        img.load()
        return img.convert("RGB")
    img.fp.seek(0)
    data = img.fp.read()
    # simplejpeg takes the smallest scale whose output is at least min_width x min_height: k/8
    # here. strict: a corrupt or truncated file raises (ValueError), not decoded as grey blocks
    return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, min_width=-(-width * eighths // 8),
                                  min_height=-(-height * eighths // 8))


@dataclass(frozen=True)
class VideoLimits:
    """Bounds checked from the container / stream metadata *before* any frame is decoded, so a
    small hostile file (a huge resolution, a million tiny P-frames) is refused in milliseconds.

    ``max_decode_frames`` / ``max_decode_pixels`` bound the work of one call: the frames that
    must be decoded to reach the sampled ones (from the keyframe before each, see
    :func:`decode_video`), times their size. ``None`` switches a check off.
    """

    max_pixels: Optional[int] = 4096 * 2160  # one frame, width x height (DCI 4K)
    max_frames: Optional[int] = 108_000  # frames in the clip (one hour at 30 fps)
    max_duration_s: Optional[float] = 3600.0
    max_decode_frames: Optional[int] = 2_000
    max_decode_pixels: Optional[int] = 2_000_000_000  # about 1,000 1080p or 2,200 720p frames


DEFAULT_VIDEO_LIMITS = VideoLimits()
NO_VIDEO_LIMITS = VideoLimits(None, None, None, None, None)


def _video_stream(
    container: av.container.InputContainer, path: Path, threads: Optional[int] = None
) -> av.video.VideoStream:
    if not container.streams.video:
        raise MediaError("file has no video stream", file=path)
    stream = container.streams.video[0]
    if threads is None:
        threads = 1 if _in_dataloader_worker() else 0
    if threads == 1:
        # one thread per worker process: decoder threads cost CPU time to coordinate and, with
        # frame threading, decode frames ahead that each seek throws away
        stream.thread_type = "NONE"
    else:
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads  # 0: FFmpeg picks from the cores
    return stream


def _in_dataloader_worker() -> bool:
    data = sys.modules.get("torch.utils.data")  # not imported: certainly no DataLoader worker
    return data is not None and data.get_worker_info() is not None


def _check_header(container, stream, path: Path, limits: VideoLimits) -> tuple[int, int]:
    """Refuse what the metadata already shows to be too large; returns (width, height)."""
    width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
    _check_size(width, height, path, limits)
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    if limits.max_duration_s is not None and duration is not None and duration > limits.max_duration_s:
        raise MediaError(f"video lasts {duration:.0f} s, more than the limit of {limits.max_duration_s:g} s", file=path)
    if limits.max_frames is not None and stream.frames and stream.frames > limits.max_frames:
        raise MediaError(f"video has {stream.frames} frames, more than the limit of {limits.max_frames}", file=path)
    return width, height


def _check_size(width: int, height: int, path: Path, limits: VideoLimits) -> None:
    if limits.max_pixels is not None and width * height > limits.max_pixels:
        raise MediaError(
            f"video is {width}x{height} pixels, more than the limit of {limits.max_pixels} per frame", file=path
        )


def _frame_table(container, stream, path: Path, limits: VideoLimits):
    """``(pts in presentation order, keyframe flags, width, height, time_base, rate)`` from the
    packets alone (demuxing reads no pixels); pts is None when a packet has no timestamp."""
    width, height = _check_header(container, stream, path, limits)
    entries = []
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        entries.append((packet.pts, bool(packet.is_keyframe)))
        if limits.max_frames is not None and len(entries) > limits.max_frames:
            raise MediaError(f"video has more than the limit of {limits.max_frames} frames", file=path)
    rate = float(stream.average_rate) if stream.average_rate else None
    time_base = stream.time_base
    if any(pts is None for pts, _ in entries) or len({pts for pts, _ in entries}) != len(entries):
        return None, None, width, height, time_base, rate
    entries.sort()
    return [p for p, _ in entries], [k for _, k in entries], width, height, time_base, rate


def _thin_by_fps(times: list[float], fps: float) -> list[int]:
    """Positions of the first frame at or after each multiple of ``1/fps`` seconds."""
    keep, next_time = [], 0.0
    start = times[0] if times else 0.0
    for i, time in enumerate(times):
        # small tolerance: timestamps are rounded to the stream's time base
        if time - start + 1e-6 < next_time:
            continue
        keep.append(i)
        while next_time <= time - start + 1e-6:
            next_time += 1.0 / fps
    return keep


def _decode_plan(wanted: list[int], keyframes: list[bool]) -> tuple[list[tuple[int, int]], int]:
    """Segments ``(start, end)`` of presentation positions to decode, and their total length.

    Each wanted frame is reached from the keyframe before it, unless decoding on from the
    previous segment is no longer (then the segments merge): every frame is decoded at most once.
    """
    last_key, key_before = 0, []
    for i, key in enumerate(keyframes):
        if key:
            last_key = i
        key_before.append(last_key)
    segments: list[list[int]] = []
    for i in sorted(wanted):
        start = key_before[i]
        if segments and start <= segments[-1][1] + 1:
            segments[-1][1] = i
        else:
            segments.append([start, i])
    return [(s, e) for s, e in segments], sum(e - s + 1 for s, e in segments)


def _check_work(frames: int, width: int, height: int, path: Path, limits: VideoLimits, why: str) -> None:
    if limits.max_decode_frames is not None and frames > limits.max_decode_frames:
        raise MediaError(
            f"{why} needs decoding {frames} frames, more than the limit of {limits.max_decode_frames} "
            f"(too few keyframes or too many frames)", file=path
        )
    if limits.max_decode_pixels is not None and frames * width * height > limits.max_decode_pixels:
        raise MediaError(
            f"{why} needs decoding {frames} frames of {width}x{height}, more than the limit of "
            f"{limits.max_decode_pixels} pixels", file=path
        )


def _to_array(frame, min_side: Optional[int]) -> np.ndarray:
    """RGB array of a decoded frame; with ``min_side``, scaled down (by swscale, keeping the
    aspect ratio) so its shorter side is ``min_side`` (never scaled up)."""
    w, h = frame.width, frame.height
    if min_side is not None and min(w, h) > min_side:
        scale = min_side / min(w, h)
        return frame.to_ndarray(width=max(1, round(w * scale)), height=max(1, round(h * scale)), format="rgb24")
    return frame.to_ndarray(format="rgb24")


def _decode_seeking(container, stream, path, pts, segments, wanted, width, height, limits, min_side):
    """Decode ``segments`` (seeking to each one's keyframe); returns ``{position: array}``.

    Packets of frames that were not asked for are decoded with ``skip_frame = NONREF``: a
    frame no other frame references (most B-frames) is then dropped unread, which cannot
    change the frames that are kept (that is what "not referenced" means); the sampled
    frames themselves are always decoded in full. Once the last sampled packet of a segment
    has been sent, the decoder is drained instead of fed the packets after it (which it
    would otherwise decode just to fill its reordering delay).
    """
    position_of = {p: i for i, p in enumerate(pts)}
    wanted_pts = {pts[i] for i in wanted}
    found: dict[int, np.ndarray] = {}
    budget = _runtime_budget(sum(e - s + 1 for s, e in segments), width, height, limits)
    decoded = 0
    codec = stream.codec_context
    for start, end in segments:
        # the frame table's demuxing left the file at its end: always seek for the first segment
        container.seek(pts[start], stream=stream, backward=True, any_frame=False)
        unsent = {pts[i] for i in wanted if start <= i <= end}
        done = False
        for packet in container.demux(stream):
            codec.skip_frame = "DEFAULT" if packet.pts in wanted_pts else "NONREF"
            unsent.discard(packet.pts)
            frames = codec.decode(packet)
            if not unsent:  # every sampled frame of the segment is in the decoder: drain it
                frames += codec.decode(None)
                done = True
            for frame in frames:
                decoded += 1
                if decoded > budget:
                    raise MediaError("video needs more decoding than its metadata said (limit reached)", file=path)
                _check_size(frame.width, frame.height, path, limits)
                position = position_of.get(frame.pts)
                if position is None:
                    continue
                if frame.pts in wanted_pts and position not in found:
                    found[position] = _to_array(frame, min_side)
                if position >= end:
                    done = True
                    break
            if done:
                break
    codec.skip_frame = "DEFAULT"
    return found


def _runtime_budget(planned: int, width: int, height: int, limits: VideoLimits) -> int:
    """Frames a decoding pass may really decode: the plan plus slack for reordered frames,
    never more than twice the limits (so a file whose metadata lies is still bounded)."""
    caps = [planned * 2 + 64]
    if limits.max_decode_frames is not None:
        caps.append(2 * limits.max_decode_frames)
    if limits.max_decode_pixels is not None and width * height > 0:
        caps.append(2 * limits.max_decode_pixels // (width * height))
    return max(1, min(caps))


def decode_video(
    path: PathLike,
    num_frames: Optional[int] = None,
    fps: Optional[float] = None,
    rng: Optional[np.random.Generator] = None,
    *,
    limits: VideoLimits = DEFAULT_VIDEO_LIMITS,
    min_side: Optional[int] = None,
    threads: Optional[int] = None,
) -> tuple[list[np.ndarray], list[int]]:
    """Decode frames of a video file: ``(HxWx3 uint8 RGB arrays, their frame indices)``.

    ``fps`` first thins the video to that many frames per second (by timestamp); ``num_frames``
    then samples uniformly (see :func:`sample_indices`) from all frames, or from the thinned ones.
    Indices are positions in the video's presentation order (what per-frame annotations such as
    MovingFashion tracklets are keyed by). ``min_side`` scales the frames down (in the decoder's
    scaler, aspect ratio kept) so their shorter side is that many pixels. ``threads``: decoder
    threads; ``None`` = one inside a DataLoader worker (the workers are the parallelism, and one
    thread spends the least CPU per frame), else as many as FFmpeg chooses (lowest latency).

    Only what is used is decoded: the frame table comes from the packets (no pixels), the
    metadata is checked against ``limits`` first, and each sampled frame is reached by seeking
    to the keyframe before it. Files without timestamps are decoded from the start, within the
    same limits.
    """
    arrays, positions, _ = _decode_video(path, num_frames, fps, rng, limits, min_side, threads)
    return arrays, positions


def _decode_video(path, num_frames, fps, rng, limits, min_side, threads=None):
    """:func:`decode_video` plus the stream's frame size ``(h, w)`` (what boxes refer to)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError("video file not found" if not path.exists() else "not a file", file=path)
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    try:
        # one open for the packet table and the decoding (opening probes the stream: not free)
        with av.open(str(path)) as container:
            stream = _video_stream(container, path, threads)
            pts, keyframes, width, height, time_base, rate = _frame_table(container, stream, path, limits)
            if pts is not None and pts:
                if fps is not None:
                    candidates = _thin_by_fps([float(p * time_base) for p in pts], fps)
                else:
                    candidates = list(range(len(pts)))
                wanted = [candidates[i] for i in sample_indices(len(candidates), num_frames, rng)]
                segments, work = _decode_plan(wanted, keyframes)
                _check_work(work, width, height, path, limits, f"sampling {len(wanted)} frames")
                found = _decode_seeking(container, stream, path, pts, segments, wanted, width, height, limits,
                                        min_side)
                if len(found) == len(wanted):
                    return [found[i] for i in wanted], wanted, (height, width)
            # some frames in the table do not decode (a damaged file): sample again below from
            # what really decodes, so the frames still spread over the whole clip
        arrays, positions = _decode_sequential_sampled(path, width, height, limits, num_frames, fps, rng, rate,
                                                       min_side, threads)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as err:
        raise MediaError(f"cannot decode video: {err}", file=path) from None
    if not arrays:
        raise MediaError("no decodable video frames", file=path)
    return arrays, positions, (height, width)


def _decode_sequential_sampled(path, width, height, limits, num_frames, fps, rng, rate, min_side, threads):
    """The fallback: a first pass finds what really decodes (and when), a second keeps the
    sampled frames; only those are ever held in memory."""
    budget = _sequential_budget(width, height, limits)

    def frames(container):
        stream = _video_stream(container, path, threads)
        for position, frame in enumerate(container.decode(stream)):
            if position >= budget:
                raise MediaError(f"video has more frames than can be decoded within the limits ({budget})", file=path)
            _check_size(frame.width, frame.height, path, limits)
            yield position, frame

    times: list[float] = []
    with av.open(str(path)) as container:
        for position, frame in frames(container):
            time = frame.time
            if time is None:
                if fps is not None and rate is None:
                    raise MediaError("video has neither timestamps nor a frame rate", file=path)
                time = position / rate if rate else float(position)
            times.append(time)
    candidates = _thin_by_fps(times, fps) if fps is not None else list(range(len(times)))
    chosen = [candidates[i] for i in sample_indices(len(candidates), num_frames, rng)]
    wanted = set(chosen)
    arrays: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        for position, frame in frames(container):
            if position in wanted:
                arrays[position] = _to_array(frame, min_side)
            if position >= (chosen[-1] if chosen else -1):
                break
    chosen = [p for p in chosen if p in arrays]
    return [arrays[p] for p in chosen], chosen


def _sequential_budget(width: int, height: int, limits: VideoLimits) -> int:
    caps = []
    if limits.max_decode_frames is not None:
        caps.append(limits.max_decode_frames)
    if limits.max_decode_pixels is not None and width * height > 0:
        caps.append(limits.max_decode_pixels // (width * height))
    return max(1, min(caps)) if caps else 10**12


def _rescale_box(box: Box, source_hw: tuple[int, int], target_hw: tuple[int, int]) -> Box:
    """Map a box given in the source's frame size onto the frame actually read (size ``target_hw``)."""
    src_h, src_w = source_hw
    height, width = target_hw
    if src_h <= 0 or src_w <= 0 or (height, width) == (src_h, src_w):
        return box
    sx, sy = width / src_w, height / src_h
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
    decode_size: Optional[int] = None,
    video_limits: VideoLimits = DEFAULT_VIDEO_LIMITS,
    decoder_threads: Optional[int] = None,
    as_arrays: bool = False,
) -> tuple[list[Union[Image.Image, np.ndarray]], list[Optional[Box]], list[int]]:
    """Sampled frames of a clip as RGB images, with their boxes and frame indices.

    Frame-folder clips sample from ``clip.frame_paths`` (boxes of the ground-truth product
    ``product_id`` from ``clip.boxes_for``, rescaled when ``clip.frame_sizes`` says the annotated
    frame had another size than the file). Video clips are
    decoded (optionally thinned to ``video_fps`` first); their boxes come from
    ``clip.video_boxes`` by frame index. ``keep_first`` keeps only that many of the sampled frames
    (training-time temporal truncation), without reading the others. ``decode_size``: the
    frames are only needed at that size (a model input side): JPEG frames are decoded at a
    reduced scale and video frames scaled in the decoder so both sides stay >= ``decode_size``;
    boxes are mapped onto the smaller frames. ``decoder_threads``: see :func:`decode_video`.
    ``as_arrays``: HxWx3 uint8 arrays instead of PIL images (what the decoders produce: the
    torch datasets take them without a copy through PIL).
    """
    draft = (decode_size, decode_size) if decode_size is not None else None
    if clip.frame_paths:
        indices = sample_indices(len(clip.frame_paths), num_frames, rng)
        if keep_first is not None:
            indices = indices[:keep_first]
        frames, boxes = [], []
        clip_boxes = clip.boxes_for(product_id)
        for i in indices:
            pixels, (w, h) = _load_frame(clip.frame_paths[i], draft, as_arrays)
            box = clip_boxes[i] if clip_boxes is not None and i < len(clip_boxes) else None
            if box is not None:
                # boxes are in the annotated frame's pixels (the file's unless frame_sizes says
                # otherwise); a reduced-scale decode shrinks the frame further
                sizes = clip.frame_sizes
                source_hw = sizes[i] if sizes is not None and i < len(sizes) else (h, w)
                read_hw = pixels.shape[:2] if as_arrays else (pixels.height, pixels.width)
                box = _rescale_box(box, source_hw, read_hw)
            frames.append(pixels)
            boxes.append(box)
        return frames, boxes, indices
    if clip.video_path is not None:
        arrays, indices, source_hw = _decode_clip_video(
            clip, num_frames, video_fps, rng, decode_size, video_limits, decoder_threads
        )
        if keep_first is not None:
            arrays, indices = arrays[:keep_first], indices[:keep_first]
        video_boxes = clip.video_boxes or {}
        boxes = [video_boxes.get(i) for i in indices]
        boxes = [None if b is None else _rescale_box(b, source_hw, a.shape[:2]) for b, a in zip(boxes, arrays)]
        return (arrays if as_arrays else [Image.fromarray(a) for a in arrays]), boxes, indices
    raise MediaError(f"clip {clip.clip_id!r} has neither frame files nor a video", key=clip.clip_id)


def _decode_clip_video(clip: Clip, num_frames, video_fps, rng, decode_size, limits, threads):
    """decode_video plus the source frame size (h, w) the boxes refer to."""
    arrays, indices, source_hw = _decode_video(
        clip.video_path, num_frames, video_fps, rng, limits, decode_size, threads
    )
    if decode_size is None or 0 in source_hw:  # no header size: the decoded frames are full size
        source_hw = (arrays[0].shape[0], arrays[0].shape[1])
    return arrays, indices, source_hw
