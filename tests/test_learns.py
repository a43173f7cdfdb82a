"""The whole chain learns: synthetic `easy` data -> `train` sgmn-tiny -> per-room evaluation on the
held-out test clips reaches R@1 >= 3x chance (chance = mean over queries of #gt / gallery size).

Budget: about 1 minute on 2 busy CPU cores. The tiny model starts from random weights, so the
backbone trains at the full learning rate (backbone_lr_factor=1; the paper's 1e-3 is for a
pretrained CLIP), and two vision layers and 4 frames keep the steps cheap.
"""

from __future__ import annotations

import time

import pytest
import torch

import sgmn
from sgmn.data.readers import read_dataset
from sgmn.data.synthetic import generate, preset
from sgmn.eval.protocol import evaluate
from sgmn.train import TrainConfig, train


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sgmn_tiny_learns_the_easy_preset(tmp_path):
    torch.set_num_threads(2)
    start = time.perf_counter()
    root = tmp_path / "data"
    generate(root, preset("easy", seed=0), progress=False)  # 4 rooms x 8 products; 96 train / 32 test clips

    config = TrainConfig(
        epochs=4, batch_size=16, lr=1e-3, backbone_lr_factor=1.0, warmup_ratio=0.05,
        num_workers=0, log_every=5, val_fraction=0.0, seed=0, text_cache_dir=str(tmp_path / "text-cache"),
    )
    result = train(root, "lpr4m", "sgmn-tiny", tmp_path / "run", config,
                   model_overrides={"num_frames": 4, "vision.layers": 2})
    trained_at = time.perf_counter()
    assert result.epochs_completed == 4 and not result.stopped_early

    data = read_dataset(root, "lpr4m")
    model = sgmn.load_model(tmp_path / "run")  # the run folder -> last/ (no validation, no best/)
    metrics = evaluate(model, data, split="test", progress=False).metrics

    test_clips = [c for c in data.split_clips("test") if c.product_ids]
    chance = 100.0 * sum(len(c.product_ids) / len(data.rooms[c.room_id].product_ids) for c in test_clips) / len(test_clips)
    print(
        f"\nR@1 {metrics['R@1']:.1f}  R@5 {metrics['R@5']:.1f}  chance R@1 {chance:.1f}  queries {metrics['num_queries']}  "
        f"train {trained_at - start:.0f} s, total {time.perf_counter() - start:.0f} s"
    )
    assert metrics["num_queries"] == len(test_clips) == 32
    assert metrics["chance_R@1"] == pytest.approx(chance)
    assert metrics["R@1"] >= 3 * chance
