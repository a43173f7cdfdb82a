"""Sharded evaluation (issue 13): 2 gloo ranks split the queries and the gallery, encode every
product once in all, and merge rankings and metrics identical to one process."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sgmn
from sgmn.data.readers import read_dataset
from sgmn.data.synthetic import generate, preset
from sgmn.eval.protocol import evaluate

WORLD = 2
KW = dict(split="test", batch_size=2, progress=False, mechanism=True, return_attention=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _counting(model):
    """Count the rows each encoder sees in this process."""
    counts = {"products": 0, "clips": 0}
    enc_p, enc_c = model.encode_products, model.encode_clips

    def products(images, *a, keep_tokens=None, **k):
        if not keep_tokens:  # the gallery (the mechanism metrics re-encode a few candidates with tokens)
            counts["products"] += len(images)
        return enc_p(images, *a, keep_tokens=keep_tokens, **k)

    def clips(frames, *a, **k):
        if "keep_tokens" not in k and "asr_mask" in k:  # the ranked pass (not the mechanism metrics' reruns)
            counts["clips"] += len(frames)
        return enc_c(frames, *a, **k)

    model.encode_products, model.encode_clips = products, clips
    return counts


def _rank_main(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = sgmn.load_model(Path(tmp) / "model").eval()
        counts = _counting(model)
        result = evaluate(model, read_dataset(Path(tmp) / "data", "lpr4m"), distributed=True, **KW)
        torch.save({"metrics": result.metrics, "rankings": result.rankings, "attention": result.attention,
                    "counts": counts}, Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(400)
def test_two_ranks_give_the_rankings_and_metrics_of_one_process(tmp_path):
    torch.set_num_threads(1)
    # 3 rooms (one more than ranks), 3 products each, batches of 2: rooms and batches split unevenly
    generate(tmp_path / "data", preset("easy", rooms=3, products_per_room=3, clips_per_product=1, frames_per_clip=4),
             progress=False)
    torch.manual_seed(0)
    sgmn.create_model("sgmn-tiny", **{"vision.layers": 1, "num_frames": 4}).save_pretrained(tmp_path / "model")
    data = read_dataset(tmp_path / "data", "lpr4m")
    model = sgmn.load_model(tmp_path / "model").eval()
    counts = _counting(model)
    reference = evaluate(model, data, **KW)

    mp.spawn(_rank_main, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    test = data.split_clips("test")
    gallery = sum(len(data.rooms[r].product_ids) for r in {c.room_id for c in test})
    assert counts == {"products": gallery, "clips": len(test)}
    # the work is split: every product and every query encoded once across the ranks, by both ranks
    assert sum(r["counts"]["products"] for r in ranks) == gallery
    assert sum(r["counts"]["clips"] for r in ranks) == len(test)
    assert all(0 < r["counts"]["clips"] < len(test) for r in ranks)
    for r in ranks:
        # identical, not close: the same batches, merged in one process's order
        assert list(r["rankings"]) == list(reference.rankings)
        assert r["rankings"] == reference.rankings
        assert json.dumps(r["metrics"], sort_keys=False) == json.dumps(reference.metrics, sort_keys=False)
        assert r["attention"].keys() == reference.attention.keys()
        assert all((r["attention"][q] == reference.attention[q]).all() for q in reference.attention)
    assert reference.metrics["mechanism"]["queries"] == len(test)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_torchrun_eval_cli_writes_the_files_of_one_process(tmp_path):
    """`torchrun --nproc_per_node=2 -m sgmn.cli eval` (gloo): rank 0 writes metrics.json and
    rankings.json equal to a one-process `sgmn eval`'s."""
    import subprocess
    import sys

    generate(tmp_path / "data", preset("easy", rooms=3, products_per_room=3, clips_per_product=1, frames_per_clip=4),
             progress=False)
    torch.manual_seed(0)
    sgmn.create_model("sgmn-tiny", **{"vision.layers": 1, "num_frames": 4}).save_pretrained(tmp_path / "model")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = ["-m", "sgmn.cli", "eval", "--data", str(tmp_path / "data"), "--format", "lpr4m",
            "--checkpoint", str(tmp_path / "model"), "--batch-size", "2", "--device", "cpu"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=500)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=500)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 alone writes and prints
    assert (tmp_path / "two" / "rankings.json").read_text() == (tmp_path / "one" / "rankings.json").read_text()
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m2["protocol"].pop("ranks") == 2
    assert m1 == m2 and "mechanism" in m1
