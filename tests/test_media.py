"""Frame sampling, image loading and video decoding, on files the tests write themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sgmn.data.media import decode_video, load_clip_frames, load_image, sample_indices
from sgmn.data.records import Clip
from sgmn.errors import MediaError
from helpers import write_mp4  # noqa: E402


def write_gray_video(path: Path, levels: list[int], rate: int = 10, size=(64, 48)) -> Path:
    """An mp4 whose frame i is a flat gray image of brightness ``levels[i]``."""
    width, height = size
    frames = [np.full((height, width, 3), level, dtype=np.uint8) for level in levels]
    return write_mp4(path, frames, rate=rate, options={"qscale": "2"})


def frame_level(array: np.ndarray) -> float:
    return float(array.mean())


# --- sampling -------------------------------------------------------------------------------


def test_sample_indices_follows_the_protocol_linspace():
    # floor of 0, 2.5, 5, 7.5, 10, 12.5, 15, 17.5, 20, 22.5
    assert sample_indices(25, 10) == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22]
    assert sample_indices(30, 3) == [0, 10, 20]


def test_short_clip_gives_each_frame_once_and_none_means_all():
    assert sample_indices(4, 10) == [0, 1, 2, 3]
    assert sample_indices(7, None) == list(range(7))
    assert sample_indices(0, 10) == []


def test_jittered_sampling_stays_inside_each_segment_and_is_reproducible():
    picks = sample_indices(100, 10, np.random.default_rng(3))
    assert picks == sample_indices(100, 10, np.random.default_rng(3))
    for k, index in enumerate(picks):
        assert 10 * k <= index < 10 * (k + 1)
    draws = {tuple(sample_indices(100, 10, np.random.default_rng(s))) for s in range(5)}
    assert len(draws) > 1


def test_sample_indices_rejects_bad_counts():
    with pytest.raises(ValueError):
        sample_indices(10, 0)


# --- images ---------------------------------------------------------------------------------


def test_load_image_returns_rgb_pixels(tmp_path):
    gray = Image.new("L", (5, 4), color=77)
    gray.save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.mode == "RGB" and img.size == (5, 4)
    assert np.asarray(img)[0, 0].tolist() == [77, 77, 77]


def test_truncated_jpeg_raises_media_error_naming_the_file(tmp_path):
    path = tmp_path / "frame-0001.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError) as info:
        load_image(path)
    assert "frame-0001.jpg" in str(info.value)
    assert "truncated" in str(info.value)
    assert info.value.file == str(path)


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth shapes plus noise: compresses and scales like a camera frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([127 + 90 * np.sin(x / (23 + 9 * c) + y / (41 + 5 * c)) for c in range(3)], axis=-1)
    base[(y - height / 2) ** 2 + (x - width / 3) ** 2 < (height / 4) ** 2] = (200, 40, 90)
    base += rng.normal(0, 6, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def test_draft_decoded_jpeg_gives_the_model_the_same_input_as_a_full_decode(tmp_path):
    """Decoding at reduced scale (libjpeg-turbo's scaled IDCT) is a downscale in itself: after
    the 224 px transform the model input differs from the full decode's by a fraction of a
    grey level on average."""
    from sgmn.data.transforms import ImageTransform

    path = tmp_path / "frame.jpg"
    Image.fromarray(photo_like(720, 1280)).save(path, quality=90)
    full, small = load_image(path), load_image(path, draft_size=(224, 224))
    assert full.size == (1280, 720)
    assert small.size == (480, 270)  # 3/8: the smallest k/8 scale keeping both sides >= 224
    assert small.info["source_size"] == (1280, 720)
    for geometry in ("squash", "resize-crop"):
        transform = ImageTransform(224, geometry)
        diff = (transform.pixels(small).float() - transform.pixels(full).float()).abs()
        assert diff.mean() < 1.0 and torch.quantile(diff.flatten()[::7], 0.99) <= 4


def test_draft_mode_keeps_small_grey_and_cmyk_jpegs_right(tmp_path):
    small = tmp_path / "small.jpg"
    Image.fromarray(photo_like(200, 300)).save(small, quality=90)
    assert load_image(small, draft_size=(224, 224)).size == (300, 200)  # never below the request
    grey = tmp_path / "grey.jpg"
    Image.fromarray(photo_like(720, 1280)[..., 0]).save(grey, quality=90)
    img = load_image(grey, draft_size=(224, 224))
    assert img.mode == "RGB" and img.size == (480, 270)
    pixels = np.asarray(img)
    assert (pixels[..., 0] == pixels[..., 1]).all()
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(photo_like(720, 1280)).convert("CMYK").save(cmyk, quality=90)
    img = load_image(cmyk, draft_size=(224, 224))
    assert img.mode == "RGB" and min(img.size) >= 224 and img.size[0] < 1280


def test_truncated_jpeg_in_draft_mode_raises_media_error_naming_the_file(tmp_path):
    path = tmp_path / "frame-0002.jpg"
    Image.fromarray(photo_like(720, 1280)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=r"frame-0002\.jpg.*cannot decode image"):
        load_image(path, draft_size=(224, 224))


def test_not_an_image_and_missing_file_raise_media_error(tmp_path):
    fake = tmp_path / "shop.jpg"
    fake.write_text("this is not a picture")
    with pytest.raises(MediaError, match="shop.jpg.*not a readable image"):
        load_image(fake)
    with pytest.raises(MediaError, match="nowhere.png.*not found"):
        load_image(tmp_path / "nowhere.png")


# --- video ----------------------------------------------------------------------------------


def test_decode_video_samples_uniformly_and_returns_the_right_frames(tmp_path):
    levels = [10 + 12 * i for i in range(20)]
    path = write_gray_video(tmp_path / "clip.mp4", levels)
    arrays, indices = decode_video(path, num_frames=5)
    assert indices == [0, 4, 8, 12, 16]
    assert all(a.shape == (48, 64, 3) and a.dtype == np.uint8 for a in arrays)
    for array, index in zip(arrays, indices):
        assert abs(frame_level(array) - levels[index]) < 4


def test_decode_video_all_frames_and_by_fps(tmp_path):
    levels = [10 + 12 * i for i in range(20)]
    path = write_gray_video(tmp_path / "clip.mp4", levels, rate=10)
    arrays, indices = decode_video(path)
    assert indices == list(range(20)) and len(arrays) == 20
    # 2 s at 10 fps thinned to 2 fps: one frame every 0.5 s
    arrays, indices = decode_video(path, fps=2)
    assert indices == [0, 5, 10, 15]
    for array, index in zip(arrays, indices):
        assert abs(frame_level(array) - levels[index]) < 4
    # thin first, then sample uniformly among the thinned frames
    _, indices = decode_video(path, num_frames=2, fps=2)
    assert indices == [0, 10]


def write_h264_with_b_frames(path: Path, count: int = 48, gop: int = 12, size=(96, 64)) -> Path:
    """H.264 as streams are encoded: B-frames (some unreferenced), a fixed GOP, and moving
    texture, so every frame differs and most are predicted from others."""
    width, height = size
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height, width * 2, 3), dtype=np.uint8)
    frames = [texture[:, 2 * i:2 * i + width] for i in range(count)]
    return write_mp4(path, frames, rate=25, codec="libx264", gop=gop,
                     options={"preset": "veryfast", "crf": "23", "bf": "3", "x264-params": "scenecut=0"})


def every_frame(path: Path) -> list[np.ndarray]:
    """Plain PyAV, decoding every frame from the start: the reference."""
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]


@pytest.mark.parametrize("threads", [None, 1, 2])
def test_seeking_and_skipping_unreferenced_frames_returns_the_frames_of_a_full_decode(tmp_path, threads, monkeypatch):
    """Seeking to the keyframe before each sampled frame, dropping the unreferenced frames
    nobody asked for and draining the decoder after the last sampled packet must give
    bit-identical pixels to decoding the whole clip."""
    from sgmn.data import media

    def no_fallback(*args, **kwargs):
        raise AssertionError("the seeking path missed frames and fell back to sequential decoding")

    monkeypatch.setattr(media, "_decode_sequential_sampled", no_fallback)
    path = write_h264_with_b_frames(tmp_path / "b.mp4")
    reference = every_frame(path)
    assert len(reference) == 48
    rng = np.random.default_rng(3)
    for kwargs in ({"num_frames": 7}, {"num_frames": 5, "rng": rng}, {"num_frames": 5, "rng": rng}, {}):
        arrays, indices = decode_video(path, threads=threads, **kwargs)
        assert any(i % 12 for i in indices)  # frames inside a GOP, not only keyframes
        for array, index in zip(arrays, indices):
            np.testing.assert_array_equal(array, reference[index])


def test_broken_and_missing_videos_raise_media_error(tmp_path):
    good = write_gray_video(tmp_path / "good.mp4", [100] * 10)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(good.read_bytes()[:300])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8).tobytes())
    for path in (broken, garbage):
        with pytest.raises(MediaError) as info:
            decode_video(path, num_frames=4)
        assert path.name in str(info.value)
    with pytest.raises(MediaError, match="missing.mp4.*not found"):
        decode_video(tmp_path / "missing.mp4")


# --- clips ----------------------------------------------------------------------------------


def test_frame_folder_clip_samples_frames_with_their_boxes(tmp_path):
    paths = []
    for i in range(20):
        path = tmp_path / f"f{i:02d}.png"
        Image.new("RGB", (40, 30), color=(i * 10, 0, 0)).save(path)
        paths.append(path)
    boxes = [None if i % 2 else (1.0, 2.0, 11.0 + i, 12.0) for i in range(20)]
    clip = Clip("c", "room", frame_paths=paths, boxes=boxes)
    images, got_boxes, indices = load_clip_frames(clip, 4)
    assert indices == [0, 5, 10, 15]
    assert [np.asarray(im)[0, 0, 0] for im in images] == [0, 50, 100, 150]
    assert got_boxes == [boxes[0], None, boxes[10], None]
    # truncation keeps the first sampled frames only
    images, got_boxes, indices = load_clip_frames(clip, 4, keep_first=2)
    assert indices == [0, 5] and len(images) == 2 and len(got_boxes) == 2


def test_boxes_annotated_on_another_frame_size_are_rescaled(tmp_path):
    path = tmp_path / "f.png"
    Image.new("RGB", (40, 30)).save(path)  # file is half the annotated 80x60 frame
    clip = Clip("c", "room", frame_paths=[path], boxes=[(8.0, 6.0, 40.0, 30.0)], frame_sizes=[(60, 80)])
    _, boxes, _ = load_clip_frames(clip, 10)
    assert boxes == [(4.0, 3.0, 20.0, 15.0)]


def test_video_clip_takes_boxes_from_the_tracklet_by_frame_index(tmp_path):
    path = write_gray_video(tmp_path / "v.mp4", [50] * 12)
    clip = Clip("v", "room", video_path=path, video_boxes={0: (1, 1, 9, 9), 6: (2, 2, 8, 8), 7: (0, 0, 5, 5)})
    images, boxes, indices = load_clip_frames(clip, 4)
    assert indices == [0, 3, 6, 9]
    assert boxes == [(1, 1, 9, 9), None, (2, 2, 8, 8), None]
    assert all(im.mode == "RGB" and im.size == (64, 48) for im in images)


def test_clip_with_unreadable_frame_names_the_frame(tmp_path):
    good = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(good)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"\x89PNG broken")
    clip = Clip("c", "room", frame_paths=[good, bad])
    with pytest.raises(MediaError, match="b.png"):
        load_clip_frames(clip, 10)


def test_clip_without_media_is_an_error():
    with pytest.raises(MediaError, match="neither frame files nor a video"):
        load_clip_frames(Clip("empty", "room"), 10)


class _DecoderThreading:
    """A one-item dataset that reports the decoder threading a DataLoader worker would use."""

    def __init__(self, path):
        self.path = path

    def __len__(self):
        return 1

    def __getitem__(self, index):
        import av

        from sgmn.data.media import _video_stream

        with av.open(str(self.path)) as container:
            return str(_video_stream(container, self.path).thread_type.name)


def test_decoder_runs_one_thread_in_a_dataloader_worker_and_auto_elsewhere(tmp_path):
    """Workers are the parallelism: a decoder thread pool per worker only costs CPU."""
    from torch.utils.data import DataLoader

    path = write_gray_video(tmp_path / "clip.mp4", [100] * 4)
    dataset = _DecoderThreading(path)
    assert dataset[0] == "AUTO"
    assert list(DataLoader(dataset, batch_size=None, num_workers=1)) == ["NONE"]


def test_draft_mode_scales_only_by_half_or_more(tmp_path):
    """5/8 .. 7/8 scales save little: an image under twice the size is decoded exactly in full."""
    path = tmp_path / "f.jpg"
    Image.fromarray(photo_like(96, 128)).save(path, quality=90)
    full = np.asarray(load_image(path))
    assert np.array_equal(np.asarray(load_image(path, draft_size=(64, 64))), full)  # 6/8 would fit
    assert load_image(path, draft_size=(48, 48)).size == (64, 48)  # 1/2
    assert load_image(path, draft_size=(40, 36)).size == (48, 36)  # 3/8
    assert load_image(path, draft_size=(16, 12)).size == (16, 12)  # 1/8


def test_frames_as_arrays_are_the_pil_frames_with_the_same_boxes(tmp_path):
    """The torch datasets take the decoders' arrays directly: same pixels, same boxes."""
    jpegs, pngs = [], []
    for i in range(3):
        frame = Image.fromarray(photo_like(720, 1280, seed=i))
        jpegs.append(tmp_path / f"{i}.jpg")
        frame.save(jpegs[-1], quality=90)
        pngs.append(tmp_path / f"{i}.png")
        frame.resize((320, 180)).save(pngs[-1])
    box = (128.0, 72.0, 640.0, 360.0)
    video = write_gray_video(tmp_path / "v.mp4", [40 * i for i in range(6)], size=(640, 480))
    clips = [Clip("jpeg", "r", frame_paths=jpegs, boxes=[box] * 3),
             Clip("png", "r", frame_paths=pngs, boxes=[box] * 3, frame_sizes=[(720, 1280)] * 3),
             Clip("video", "r", video_path=video, video_boxes={0: box, 3: box})]
    for clip in clips:
        for decode_size in (None, 224):
            images, boxes, indices = load_clip_frames(clip, 3, decode_size=decode_size)
            arrays, array_boxes, array_indices = load_clip_frames(clip, 3, decode_size=decode_size, as_arrays=True)
            assert indices == array_indices and boxes == array_boxes and any(b is not None for b in boxes)
            for image, array in zip(images, arrays):
                assert isinstance(image, Image.Image) and isinstance(array, np.ndarray) and array.flags.writeable
                np.testing.assert_array_equal(np.asarray(image), array)
