"""The HTML report (issue 12 item 8) on hand-made rankings: queries from several rooms, the correct
product on a miss, a colour bar on every attention overlay, a visible note without ASR, the loss
terms explained beside L_pair's chance, the baseline rows and the per-category breakdown."""

import dataclasses
import json
import re

import matplotlib.figure
import numpy as np
import pytest

from sgmn.data.readers import read_dataset
from sgmn.data.synthetic import generate, preset
from sgmn.eval.report import LOSS_TERMS, write_report


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    generate(root, preset("easy", rooms=3, products_per_room=7, clips_per_product=1, frames_per_clip=4), progress=False)
    return read_dataset(root, "lpr4m")


def _rankings(data, miss: str):
    """Each test query ranks its room's products; ``miss`` ranks its true product last."""
    out = {}
    for clip in data.split_clips("test"):
        room = data.rooms[clip.room_id].product_ids
        gt = clip.product_ids[0]
        others = [p for p in room if p != gt]
        order = others + [gt] if clip.clip_id == miss else [gt] + others
        out[clip.clip_id] = [(p, 1.0 - 0.1 * i) for i, p in enumerate(order)]
    return out


def _metrics(r1: float, name: str) -> dict:
    return {"R@1": r1, "R@3": 80.0, "R@5": 100.0, "R@10": 100.0, "median_rank": 1.0, "chance_R@1": 33.3,
            "num_queries": 9, "model": {"name": name}, "protocol": {"rooms": 3, "split": "test"},
            "breakdown": {"category": {"mug": {"num_queries": 5, "R@1": 60.0, "R@5": 100.0, "median_rank": 1.0},
                                       "lamp": {"num_queries": 4, "R@1": 25.0, "R@5": 100.0, "median_rank": 2.0}},
                          "scale": {"small": {"num_queries": 9, "R@1": 44.0, "R@5": 100.0, "median_rank": 1.0}}},
            "mechanism": {"queries": 9, "max_queries": 256,
                          "tga_influence": {"mean_cos": 0.9123, "clips": 8},
                          "tga_pointing": {"mass_ratio": 1.75, "frames": 30, "clips": 8, "uninformative_frames": 0},
                          "smf_accuracy": {"accuracy": 0.5, "chance": 0.25, "k": 3, "queries": 9}}}


def test_report_shows_rooms_truth_on_miss_colour_bars_notes_baseline_and_categories(data, tmp_path, monkeypatch):
    test = data.split_clips("test")
    miss = test[0].clip_id
    no_asr = test[1].clip_id
    # one clip without ASR (the ASR is the record's; the model would have no text to follow)
    data = dataclasses.replace(data, clips={**data.clips, no_asr: dataclasses.replace(data.clips[no_asr], asr="")})
    rankings = _rankings(data, miss)
    attention = {q: np.random.default_rng(0).random((4, 2, 2)).astype(np.float32) for q in rankings if q != no_asr}
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"kind": "step", "step": s, "loss": 3.0 - 0.1 * s, "pair_chance": np.log(4),
                                       "losses": {"pair": 1.39 - 0.01 * s, "reg": 0.001 * s, "base": 0.2}}) + "\n"
                           for s in range(1, 6)))
    bars = []
    original = matplotlib.figure.Figure.colorbar
    monkeypatch.setattr(matplotlib.figure.Figure, "colorbar", lambda self, *a, **k: bars.append(1) or original(self, *a, **k))

    html = write_report(tmp_path / "report.html", data, _metrics(55.6, "sgmn-tiny"), rankings, attention,
                        num_frames=4, log_path=log, num_queries=6,
                        baselines={"clip-meanpool": _metrics(33.3, "clip-meanpool")}, has_attention=True).read_text()

    shown = re.findall(r"<div class='q'><b>([^<]+)</b>", html)
    assert len(shown) == 6 and len({data.clips[q].room_id for q in shown}) == 3  # all three rooms
    assert miss in shown and no_asr in shown
    # on a miss the correct product follows the top 5 with its rank; on a hit no such card
    truth_cards = re.findall(r"<div class='p truth'>.*?correct product: ranked #(\d+)", html)
    assert truth_cards == ["7"]  # the miss ranked its true product last of 7, below the top 5
    assert data.products[data.clips[miss].product_ids[0]].title in html.split(f"<b>{miss}</b>")[1].split("<div class='q'>")[0]
    # a colour bar on every overlay (one per query with a map), none without a map
    assert len(bars) == len([q for q in shown if q in attention])
    assert html.count("no ASR for this clip") == 1
    # baseline row and the difference
    assert "<td>clip-meanpool</td>" in html and "sgmn-tiny − clip-meanpool" in html and "+22.30" in html
    # mechanism metrics, per-category breakdown (other facets folded)
    assert "TGA influence" in html and "0.9123" in html and "1.75× a uniform" in html and "50.0% (chance 25.0%)" in html
    assert "<h2>Per category</h2>" in html and "<td>lamp</td>" in html and "by scale" in html
    assert "<th>R@1 clip-meanpool</th>" in html  # each group beside the baseline's
    # each logged loss term explained, including why reg can rise
    for term in ("pair", "reg", "base", "total"):
        assert LOSS_TERMS[term].split(":")[0] in html
    assert "not divergence" in html and "ln(1+k)" in html


def test_a_model_without_tga_says_so_instead_of_showing_no_overlay(data, tmp_path):
    rankings = _rankings(data, miss="")
    html = write_report(tmp_path / "r.html", data, _metrics(50.0, "clip-meanpool"), rankings, {}, num_frames=4,
                        has_attention=False, num_queries=3).read_text()
    assert html.count("no text-guided attention map for this model") == 3
    assert "no ASR for this clip" not in html and "class='p truth'" not in html  # every query a hit


def test_mechanism_section_says_when_a_metric_cannot_be_measured(data, tmp_path):
    metrics = _metrics(50.0, "sgmn-tiny")
    metrics["mechanism"]["tga_pointing"] = {"mass_ratio": None, "frames": 0, "clips": 0, "uninformative_frames": 0}
    metrics["mechanism"]["tga_influence"] = {"mean_cos": None, "clips": 0}
    html = write_report(tmp_path / "r.html", data, metrics, _rankings(data, miss=""), {}, num_frames=4,
                        num_queries=1).read_text()
    assert "no frame has both a product box and ASR" in html and "no query has ASR" in html
