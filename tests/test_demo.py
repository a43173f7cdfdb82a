"""`sgmn demo` end to end with a tiny budget: data, run, metrics, and a report a person can read."""

import json
import re

import torch

from typer.testing import CliRunner

from sgmn.cli import app
from sgmn.data.readers import read_dataset


def test_demo_runs_end_to_end_and_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--preset", "easy", "--epochs", "1", "--max-steps", "2"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    rankings = json.loads((out / "eval" / "rankings.json").read_text())
    assert metrics["num_queries"] == len(rankings) > 0
    assert metrics["protocol"]["mode"] == "video"
    assert "R@1" in res.output and "chance R@1" in res.output  # the table is printed
    assert (out / "run" / "last" / "model.safetensors").exists()
    # the clip-meanpool baseline trained on the same data with the same budget, printed beside SGMN
    baseline = json.loads((out / "eval" / "clip-meanpool" / "metrics.json").read_text())
    assert baseline["model"]["name"] == "clip-meanpool" and baseline["num_queries"] == metrics["num_queries"]
    steps_done = [torch.load(out / run / "last" / "train_state.pt", weights_only=False)["step"]
                  for run in ("run", "run-clip-meanpool")]
    assert steps_done == [2, 2]  # the same budget
    assert re.search(r"^clip-meanpool\s+\d", res.output, re.M) and re.search(r"^sgmn-tiny\s+\d", res.output, re.M)
    assert "sgmn-tiny - clip-meanpool: R@1" in res.output
    # SGMN's mechanism metrics measured and printed; the baseline has none
    assert {"tga_influence", "tga_pointing", "smf_accuracy"} <= set(metrics["mechanism"]) and "mechanism" not in baseline
    assert "TGA influence" in res.output
    html = (out / "report.html").read_text()
    assert "<td>clip-meanpool</td>" in html and "sgmn-tiny − clip-meanpool" in html
    assert "<h2>Per category</h2>" in html and "<h2>Mechanisms</h2>" in html and "not divergence" in html
    queries = re.findall(r"<div class='q'>", html)
    assert len(queries) == min(8, len(rankings))
    shown_rooms = {data_room for data_room in re.findall(r"<span class='small'>room ([^<]+)</span>", html)}
    assert len(shown_rooms) == min(len(queries), metrics["protocol"]["rooms"]) > 1  # the sample spans the rooms
    # each query shows its frames with attention, its ASR and five ranked products, hit or miss marked
    assert html.count("HIT@1") + html.count("miss@1") == len(queries)
    assert html.count("<i>ASR:</i>") == len(queries)
    assert len(re.findall(r"class='p (?:hit|miss)'", html)) == 5 * len(queries)
    assert html.count("data:image/png;base64,") >= 2 + len(queries)  # loss + R@k plots + one strip per query
    # the hit/miss marks agree with the rankings file and the ground truth
    data = read_dataset(out / "data", "lpr4m")
    # the synthetic set is summarised first: rooms, products, clips, frames, boxes
    summary = data.summary()
    assert summary["rooms"] > 0 and summary["frames"] > 0 and summary["boxes"] > 0
    assert json.dumps(summary, indent=2) in res.output
    for qid, mark in re.findall(r"<div class='q'><b>([^<]+)</b> — (HIT|miss)@1", html):
        top = rankings[qid][0][0]
        assert (top in data.clips[qid].product_ids) == (mark == "HIT")

    # a second demo into the same folder reuses the data and replaces the run (its log is not appended to)
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--preset", "easy", "--epochs", "1", "--max-steps", "1",
                                     "--baseline", "none"])
    assert again.exit_code == 0, again.output
    assert "reusing the synthetic 'easy' data" in again.output
    steps = [json.loads(line)["step"] for line in (out / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1]
    assert "clip-meanpool" not in again.output  # --baseline none: no baseline trained or printed
    assert not (out / "eval" / "clip-meanpool").exists()  # nor a stale one left beside the new results


def test_two_demo_processes_give_bit_identical_results_and_record_their_conditions(tmp_path):
    """The README's claim: for a seed, runs are bit-identical (same code, torch, CPU kind and
    thread count), with the demo's data-loader workers on. Each run records what its numbers
    depend on and what it cost (run-info.json and its last line)."""
    import hashlib
    import os
    import shutil
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    args = ["--preset", "easy", "--epochs", "1", "--max-steps", "3", "--threads", "2", "--baseline", "none"]
    outs = []
    for i in range(2):
        out = tmp_path / f"demo{i}"
        if i == 1:  # the same data (the demo reuses it): only training and evaluation run again
            shutil.copytree(tmp_path / "demo0" / "data", out / "data")
        done = subprocess.run([sys.executable, "-m", "sgmn.cli", "demo", "--out", str(out), *args],
                              capture_output=True, text=True, env=env, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        outs.append((out, done.stdout))
    digest = [hashlib.sha256((o / "run" / "last" / "model.safetensors").read_bytes()).hexdigest() for o, _ in outs]
    assert digest[0] == digest[1]
    metrics = [json.loads((o / "eval" / "metrics.json").read_text()) for o, _ in outs]
    for m in metrics:
        m["model"].pop("checkpoint", None)  # the paths differ (and the data fingerprint hashes them)
        m["data"].pop("root"), m["data"].pop("fingerprint")
    assert metrics[0] == metrics[1]
    info = json.loads((outs[0][0] / "run-info.json").read_text())
    assert info["torch_threads"] == 2 and info["seed"] == 0 and info["R@1"] == metrics[0]["R@1"]
    for key in ("cpu", "torch", "git", "wall_s", "cpu_s", "load_average_start", "load_average_end"):
        assert info[key] is not None, key
    last = outs[0][1].strip().splitlines()[-1]
    assert last.startswith("took ") and "CPU-s" in last and "load average" in last and "2 torch threads" in last
