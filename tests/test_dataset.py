"""Torch datasets and collate: the batch contract, truncation, text masks, workers, bad media."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sgmn.data.dataset import GalleryProducts, QueryClips, TrainPairs, collate
from sgmn.data.records import Clip, LPRData, Product, Room
from sgmn.data.transforms import CLIP_MEAN, CLIP_STD
from sgmn.errors import DataError, MediaError
from helpers import write_mp4  # noqa: E402

S, P, T = 32, 16, 4  # image size, patch size (2x2 grid -> 5 tokens), frames per clip
TOKENS = 1 + (S // P) ** 2


class StandInText:
    """The ``sgmn.text.TextVectors`` interface over fixed vectors (None = no text)."""

    dim = 3

    def __init__(self, clips: dict, products: dict):
        self.clips, self.products = clips, products

    def _get(self, table, key):
        vector = table.get(key)
        if vector is None:
            return np.zeros(self.dim, np.float32), False
        return np.asarray(vector, np.float32), True

    def clip(self, clip_id):
        return self._get(self.clips, clip_id)

    def product(self, product_id):
        return self._get(self.products, product_id)


def red_level(pixels: torch.Tensor) -> float:
    """Mean red value in 0..255 of a normalised (3,S,S) image."""
    return float((pixels[0] * CLIP_STD[0] + CLIP_MEAN[0]).mean() * 255)


def write_frames(folder: Path, count: int) -> list[Path]:
    """Frames whose red channel is 20 * frame index (so content identifies the frame)."""
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.png"
        Image.new("RGB", (S, S), color=(20 * i, 0, 0)).save(path)
        paths.append(path)
    return paths


def write_video(path: Path, count: int) -> Path:
    frames = [np.full((S, S, 3), 20 * i, dtype=np.uint8) for i in range(count)]
    return write_mp4(path, frames, rate=10, options={"qscale": "2"})


@pytest.fixture
def data(tmp_path) -> LPRData:
    products = {}
    for pid, colour in [("p-b", (0, 200, 0)), ("p-a", (0, 0, 200)), ("p-c", (90, 90, 90))]:
        images = []
        for k in range(2):
            path = tmp_path / "shop" / f"{pid}_{k}.png"
            path.parent.mkdir(exist_ok=True)
            Image.new("RGB", (40, 24), color=tuple(c + 30 * k for c in colour)).save(path)
            images.append(path)
        products[pid] = Product(pid, images, title=f"title {pid}", room_id="r1")
    top_left = (0.0, 0.0, S / 2, S / 2)  # exactly patch (0,0)
    clips = {
        # 12 frames, boxes on every other frame
        "c-long": Clip("c-long", "r1", frame_paths=write_frames(tmp_path / "c-long", 12),
                       boxes=[top_left if i % 2 == 0 else None for i in range(12)],
                       product_ids=["p-b"]),
        # 2 frames (shorter than T), no ASR, two correct products
        "c-short": Clip("c-short", "r1", frame_paths=write_frames(tmp_path / "c-short", 2),
                        product_ids=["p-c", "p-a"]),
        "c-video": Clip("c-video", "r2", video_path=write_video(tmp_path / "v.mp4", 8),
                        video_boxes={2: top_left}, product_ids=["p-a"]),
        # no ground truth: a query, never a training pair
        "c-none": Clip("c-none", "r2", frame_paths=write_frames(tmp_path / "c-none", 3)),
    }
    return LPRData(
        source="test",
        rooms={"r1": Room("r1", ["p-a", "p-b", "p-c"]), "r2": Room("r2", ["p-a"])},
        products=products,
        clips=clips,
        splits={"train": list(clips)},
    )


@pytest.fixture
def text() -> StandInText:
    return StandInText(
        clips={"c-long": [1, 2, 3], "c-video": [0, 1, 0], "c-none": [5, 5, 5]},
        products={"p-a": [0.5, 0, 0], "p-b": [0, 0.5, 0]},  # p-c has no title
    )


def make_pairs(data, text, **kw) -> TrainPairs:
    kw.setdefault("train", False)
    return TrainPairs(data, "train", num_frames=T, image_size=S, patch_size=P, text=text, **kw)


def by_pair(batch) -> dict:
    return {(c, p): i for i, (c, p) in enumerate(zip(batch["clip_ids"], batch["product_ids"]))}


def test_training_batch_has_exactly_the_documented_keys_types_and_shapes(data, text):
    pairs = make_pairs(data, text)
    batch = collate([pairs[i] for i in range(len(pairs))])
    B = len(pairs)
    expected = {
        "frames": (torch.float32, (B, T, 3, S, S)),
        "frame_mask": (torch.bool, (B, T)),
        "patch_mask": (torch.bool, (B, T, TOKENS)),
        "boxes": (torch.float32, (B, T, 4)),
        "box_mask": (torch.bool, (B, T)),
        "asr_vec": (torch.float32, (B, 3)),
        "asr_mask": (torch.bool, (B,)),
        "product_pixels": (torch.float32, (B, 3, S, S)),
        "title_vec": (torch.float32, (B, 3)),
        "title_mask": (torch.bool, (B,)),
        "labels": (torch.long, (B,)),
    }
    for key, (dtype, shape) in expected.items():
        assert batch[key].dtype == dtype, key
        assert tuple(batch[key].shape) == shape, key
    assert isinstance(batch["clip_ids"], list) and isinstance(batch["product_ids"], list)
    assert batch["skipped"] == 0 and batch["skip_reasons"] == []


def test_one_sample_per_clip_product_pair_with_sorted_labels(data, text):
    pairs = make_pairs(data, text)
    assert sorted(pairs.pairs) == sorted(
        [("c-long", "p-b"), ("c-short", "p-c"), ("c-short", "p-a"), ("c-video", "p-a")]
    )
    assert pairs.clips_without_products == 1
    batch = collate([pairs[i] for i in range(len(pairs))])
    labels = dict(zip(batch["product_ids"], batch["labels"].tolist()))
    assert labels == {"p-a": 0, "p-b": 1, "p-c": 2}
    # another process listing the clips in another order gives the same labels
    data.splits["train"] = list(reversed(data.splits["train"]))
    assert make_pairs(data, text).label_of == pairs.label_of


def test_frames_are_the_sampled_ones_padded_and_masked(data, text):
    pairs = make_pairs(data, text)
    batch = collate([pairs[i] for i in range(len(pairs))])
    row = by_pair(batch)
    long_ = row[("c-long", "p-b")]
    # 12 frames, 4 sampled: indices 0, 3, 6, 9 -> red 0, 60, 120, 180
    assert [round(red_level(f)) for f in batch["frames"][long_]] == [0, 60, 120, 180]
    assert batch["frame_mask"][long_].all()
    short = row[("c-short", "p-a")]
    assert batch["frame_mask"][short].tolist() == [True, True, False, False]
    assert round(red_level(batch["frames"][short][1])) == 20
    assert (batch["frames"][short][2:] == 0).all()


def test_training_pairs_carry_no_box_patch_mask_by_default(data, text):
    # training input must match a query's (which has no box): boxes only feed the box loss
    pairs = make_pairs(data, text)
    batch = collate([pairs[i] for i in range(len(pairs))])
    long_ = by_pair(batch)[("c-long", "p-b")]
    assert batch["patch_mask"].all()
    assert batch["box_mask"][long_].tolist() == [True, False, True, False]
    assert batch["boxes"][long_][0].tolist() == [0, 0, S / 2, S / 2]


def test_patch_mask_and_boxes_follow_the_transformed_boxes(data, text):
    pairs = make_pairs(data, text, use_boxes=True)  # the detector-assisted mode
    batch = collate([pairs[i] for i in range(len(pairs))])
    row = by_pair(batch)
    long_ = row[("c-long", "p-b")]
    # sampled frames 0, 3, 6, 9: boxes on even frames only (0 and 6)
    assert batch["box_mask"][long_].tolist() == [True, False, True, False]
    assert batch["boxes"][long_][0].tolist() == [0, 0, S / 2, S / 2]
    assert batch["patch_mask"][long_][0].tolist() == [True, True, False, False, False]
    assert batch["patch_mask"][long_][1].all()
    # padded frames keep every token
    assert batch["patch_mask"][row[("c-short", "p-a")]][3].all()
    video = row[("c-video", "p-a")]
    # 8 video frames, 4 sampled: 0, 2, 4, 6; tracklet box on frame 2
    assert batch["box_mask"][video].tolist() == [False, True, False, False]
    assert batch["patch_mask"][video][1].tolist() == [True, True, False, False, False]
    assert [round(red_level(f) / 20) for f in batch["frames"][video]] == [0, 2, 4, 6]


def test_each_pair_gets_the_boxes_of_its_own_product(data, text):
    clip = data.clips["c-long"]
    clip.product_ids = ["p-b", "p-a"]
    clip.product_boxes = {"p-a": [None] * 6 + [(S / 2, S / 2, S, S)] * 6}  # p-a: bottom-right patch, late
    pairs = make_pairs(data, text, use_boxes=True)
    batch = collate([pairs[i] for i in range(len(pairs))])
    row = by_pair(batch)
    b, a = row[("c-long", "p-b")], row[("c-long", "p-a")]
    # sampled frames 0, 3, 6, 9
    assert batch["box_mask"][b].tolist() == [True, False, True, False]
    assert batch["box_mask"][a].tolist() == [False, False, True, True]
    assert batch["patch_mask"][a][2].tolist() == [True, False, False, False, True]
    assert batch["patch_mask"][a][0].all()


def test_text_vectors_and_masks_missing_text_is_zero_and_false(data, text):
    pairs = make_pairs(data, text)
    batch = collate([pairs[i] for i in range(len(pairs))])
    row = by_pair(batch)
    long_, short = row[("c-long", "p-b")], row[("c-short", "p-c")]
    assert batch["asr_vec"][long_].tolist() == [1, 2, 3] and batch["asr_mask"][long_]
    assert batch["title_vec"][long_].tolist() == [0, 0.5, 0] and batch["title_mask"][long_]
    assert not batch["asr_mask"][short] and (batch["asr_vec"][short] == 0).all()
    assert not batch["title_mask"][short] and (batch["title_vec"][short] == 0).all()
    assert torch.isfinite(batch["asr_vec"]).all() and torch.isfinite(batch["title_vec"]).all()


def test_text_without_vectors_and_no_text_source_is_refused_not_dropped(data):
    with pytest.raises(ValueError, match="have text but no precomputed vector"):
        make_pairs(data, None)


def test_precomputed_record_vectors_are_used_without_a_text_encoder(data):
    for product in data.products.values():
        product.title = None
    data.clips["c-long"].asr_vector = np.array([1.0, 0.0], np.float32)
    data.products["p-b"].title_vector = np.array([0.0, 2.0], np.float32)
    pairs = make_pairs(data, None)
    batch = collate([pairs[i] for i in range(len(pairs))])
    row = by_pair(batch)
    assert batch["asr_vec"].shape[1] == 2
    assert batch["asr_vec"][row[("c-long", "p-b")]].tolist() == [1, 0]
    assert batch["title_vec"][row[("c-long", "p-b")]].tolist() == [0, 2]
    assert not batch["asr_mask"][row[("c-video", "p-a")]]


def test_nan_text_vector_is_refused(data, text):
    text.clips["c-long"] = [np.nan, 0, 0]
    pairs = make_pairs(data, text)
    index = pairs.pairs.index(("c-long", "p-b"))
    with pytest.raises(DataError, match="c-long.*NaN"):
        pairs[index]


def test_truncation_keeps_a_prefix_of_the_sampled_frames(data, text):
    pairs = make_pairs(data, text, train=True, truncation_p=1.0, seed=7)
    index = pairs.pairs.index(("c-long", "p-b"))
    full = [round(red_level(f)) for f in make_pairs(data, text)[index]["frames"]]
    counts = set()
    for epoch in range(12):
        pairs.set_epoch(epoch)
        sample = pairs[index]
        kept = int(sample["frame_mask"].sum())
        # n = 4: 4 - floor(4 * rho) for rho in {0, .1, ..., .9}
        assert kept in {4, 3, 2, 1}
        assert sample["frame_mask"].tolist() == [True] * kept + [False] * (4 - kept)
        assert [round(red_level(f)) for f in sample["frames"][:kept]] == full[:kept]
        assert (sample["frames"][kept:] == 0).all()
        counts.add(kept)
    assert len(counts) > 1


def test_truncation_draw_is_reproducible_and_depends_on_epoch(data, text):
    a = make_pairs(data, text, train=True, seed=1)
    b = make_pairs(data, text, train=True, seed=1)
    draws_a = [a.truncation_keep(i, 10) for i in range(300)]
    assert draws_a == [b.truncation_keep(i, 10) for i in range(300)]
    a.set_epoch(1)
    assert [a.truncation_keep(i, 10) for i in range(300)] != draws_a
    # p = 0.5 and rho = 0 one time in ten: about 45% of samples lose frames
    truncated = sum(k < 10 for k in draws_a) / len(draws_a)
    assert 0.33 < truncated < 0.57
    assert set(draws_a) <= {10 - r for r in range(10)}
    assert all(k == 10 for k in (make_pairs(data, text, train=True, truncation_p=0.0).truncation_keep(i, 10)
                                 for i in range(50)))
    assert all(make_pairs(data, text).truncation_keep(i, 10) == 10 for i in range(50))


def test_dataloader_with_two_workers_matches_single_process(data, text):
    pairs = make_pairs(data, text, train=True, truncation_p=1.0)
    pairs.set_epoch(3)
    single = collate([pairs[i] for i in range(len(pairs))])
    loader = DataLoader(pairs, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert sum(len(b["clip_ids"]) for b in batches) == len(pairs)
    frames = torch.cat([b["frames"] for b in batches])
    assert torch.equal(frames, single["frames"])
    assert torch.equal(torch.cat([b["frame_mask"] for b in batches]), single["frame_mask"])
    assert [c for b in batches for c in b["clip_ids"]] == single["clip_ids"]


def test_bad_media_in_a_worker_raises_media_error_naming_the_file(data, text):
    bad = data.clips["c-long"].frame_paths[0]
    bad.write_bytes(bad.read_bytes()[:20])
    loader = DataLoader(make_pairs(data, text), batch_size=2, num_workers=2, collate_fn=collate)
    with pytest.raises(MediaError) as info:
        list(loader)
    assert str(bad) in str(info.value)


def test_skip_policy_drops_and_counts_never_substitutes(data, text):
    bad = data.products["p-a"].image_paths[0]
    bad.write_text("not an image")
    pairs = make_pairs(data, text, on_error="skip")
    loader = DataLoader(pairs, batch_size=4, num_workers=2, collate_fn=collate)
    batches = list(loader)
    got = [(c, p) for b in batches for c, p in zip(b.get("clip_ids", []), b.get("product_ids", []))]
    assert sorted(got) == sorted([("c-long", "p-b"), ("c-short", "p-c")])
    assert sum(b["skipped"] for b in batches) == 2
    reasons = [r for b in batches for r in b["skip_reasons"]]
    assert all(bad.name in r for r in reasons)
    for b in batches:
        if b["clip_ids"]:
            assert b["frames"].shape[0] == len(b["clip_ids"])
    # in-process use also counts on the dataset itself
    [pairs[i] for i in range(len(pairs))]
    assert pairs.skipped["unreadable media"] == 2


def test_all_skipped_batch_carries_only_the_skip_fields(data, text):
    for product in data.products.values():
        product.image_paths[0].write_text("broken")
    pairs = make_pairs(data, text, on_error="skip")
    batch = collate([pairs[i] for i in range(len(pairs))])
    assert batch == {"skipped": 4, "skip_reasons": batch["skip_reasons"]}
    assert len(batch["skip_reasons"]) == 4


def test_unknown_ground_truth_product_is_a_data_error(data, text):
    data.clips["c-long"].product_ids = ["p-missing"]
    with pytest.raises(DataError, match="c-long.*p-missing"):
        make_pairs(data, text)


def test_query_clips_one_per_clip_without_boxes_by_default(data, text):
    queries = QueryClips(data, "train", num_frames=T, image_size=S, patch_size=P, text=text)
    batch = collate([queries[i] for i in range(len(queries))])
    assert batch["clip_ids"] == ["c-long", "c-short", "c-video", "c-none"]
    assert batch["room_ids"] == ["r1", "r1", "r2", "r2"]
    assert batch["gt_product_ids"] == [["p-b"], ["p-c", "p-a"], ["p-a"], []]
    assert batch["frames"].shape == (4, T, 3, S, S)
    assert batch["frame_mask"].sum(1).tolist() == [4, 2, 4, 3]
    assert batch["patch_mask"].all()
    assert batch["box_mask"][0].tolist() == [True, False, True, False]
    assert batch["asr_mask"].tolist() == [True, False, True, True]
    assert "labels" not in batch and "product_pixels" not in batch
    with_boxes = QueryClips(data, "train", num_frames=T, image_size=S, patch_size=P, text=text,
                            use_boxes=True)
    assert with_boxes[0]["patch_mask"][0].tolist() == [True, True, False, False, False]


def test_gallery_products_main_image_or_all_images(data, text):
    products = [data.products[p] for p in ("p-a", "p-b", "p-c")]
    gallery = GalleryProducts(products, image_size=S, text=text)
    batch = collate([gallery[i] for i in range(len(gallery))])
    assert batch["product_ids"] == ["p-a", "p-b", "p-c"]
    assert batch["product_pixels"].shape == (3, 3, S, S)
    # main image of p-c is (90, 90, 90)
    assert round(red_level(batch["product_pixels"][2])) == 90
    assert batch["title_mask"].tolist() == [True, True, False]
    every = GalleryProducts(products, image_size=S, text=text, all_images=True)
    batch = collate([every[i] for i in range(len(every))])
    assert batch["product_ids"] == ["p-a", "p-a", "p-b", "p-b", "p-c", "p-c"]
    assert batch["image_index"] == [0, 1, 0, 1, 0, 1]
    assert round(red_level(batch["product_pixels"][5])) == 120
