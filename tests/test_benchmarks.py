"""Smoke runs of the benchmark scripts (their ``--smoke`` modes) and checks of their helpers.

The scripts live in benchmarks/ (a folder of scripts, not a package), so it is put on sys.path.
Every run writes into tmp_path: the repository's docs/benchmarks.md is never touched here.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import accuracy  # noqa: E402
import common  # noqa: E402
import speed  # noqa: E402


# ---------------------------------------------------------------- common
def test_sections_are_replaced_independently(tmp_path):
    doc = tmp_path / "bench.md"
    common.write_section("speed", "speed v1", doc)
    common.write_section("accuracy", "accuracy v1", doc)
    common.write_section("speed", "speed v2", doc)
    text = doc.read_text()
    assert "speed v1" not in text and "speed v2" in text and "accuracy v1" in text
    assert text.count("<!-- speed:start -->") == 1 and text.count("<!-- accuracy:end -->") == 1
    assert text.index("speed v2") < text.index("accuracy v1")  # a section keeps its place


def test_unpaired_markers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unpaired"):
        common.replace_section("<!-- speed:start -->\nold\n", "speed", "new")


def test_markdown_table_escapes_pipes():
    table = common.markdown_table(["a", "b"], [["x|y", 1]])
    assert table.splitlines()[2] == "| x\\|y | 1 |"


# ---------------------------------------------------------------- speed helpers
def test_vit_b32_flops_match_the_published_count():
    from sgmn.model.registry import get_config

    c = get_config("sgmn-vitb32")
    gflops = speed.vit_forward_flops(c.vision, c.embed_dim) / 1e9
    assert 8.7 < gflops < 9.0  # ViT-B/32 at 224 px: 4.4 GMACs = 8.8 GFLOPs, + the token projection


def test_gpu_peak_lookup():
    assert speed.gpu_peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert speed.gpu_peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert speed.gpu_peak_tflops("NVIDIA A100-SXM4-40GB", "fp32") == 19.5
    assert speed.gpu_peak_tflops("Some Future GPU", "bf16") is None
    assert speed.gpu_peak_tflops("Some Future GPU", "bf16", override=123.0) == 123.0


def test_exact_search_paths_agree_and_recall_counts_overlap():
    rng = np.random.default_rng(0)
    gallery = speed.unit_vectors(500, 16, rng)
    queries = speed.unit_vectors(70, 16, rng)  # more than one chunk of 64
    import torch

    _, rows_torch = speed.exact_torch(torch.from_numpy(queries), torch.from_numpy(gallery), 10)
    rows_numpy = speed.exact_numpy(queries, gallery, 10)
    np.testing.assert_array_equal(rows_torch.numpy(), rows_numpy)
    brute = np.argsort(-(queries @ gallery.T), axis=1)[:, :10]
    np.testing.assert_array_equal(rows_numpy, brute)
    assert speed.recall_at_k(rows_numpy, brute) == 1.0
    half = brute.copy()
    half[:, 5:] = -1
    assert speed.recall_at_k(half, brute) == 0.5


def test_low_rank_vectors_are_unit_and_near_their_subspace():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((64, 8)))[0].T.astype(np.float32)
    x = speed.low_rank_vectors(300, 64, rng, basis, noise=0.3, chunk=128)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    inside = np.linalg.norm(x @ basis.T, axis=1)  # length of the projection onto the subspace
    assert inside.mean() > 0.9  # noise at 30% of the signal's norm
    iso = speed.unit_vectors(300, 64, rng)
    assert np.linalg.norm(iso @ basis.T, axis=1).mean() < 0.5  # ~ sqrt(8/64) for isotropic vectors


# ---------------------------------------------------------------- smoke runs
def test_speed_smoke_writes_its_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# B\n\n<!-- accuracy:start -->\nkept\n<!-- accuracy:end -->\n")
    results = speed.run(speed.mode_config("smoke"), doc, tmp_path / "img", tmp_path / "out", command="speed --smoke")
    text = doc.read_text()
    assert "kept" in text and "<!-- speed:start -->" in text and "speed --smoke" in text
    assert (tmp_path / "img" / "speed-search-smoke.png").stat().st_size > 1000
    raw = json.loads((tmp_path / "out" / "speed-smoke.json").read_text())
    assert raw["machine"]["cores"] >= 1
    # exact and flat search are exact; the eval comparison ranks with the same scores both ways
    assert all(r["recall@10"] == 1.0 for r in results["search"] if r["method"] in ("exact torch", "exact numpy", "faiss flat"))
    assert all(r["max_score_difference"] < 1e-4 for r in results["eval"])
    assert all(r["reencoded_s_per_1000"] > 0 and r["cached_s_per_1000"] > 0 for r in results["eval"])
    assert all(r["clips_per_s"] > 0 and r["products_per_s"] > 0 for r in results["encoding"])
    assert all(r["step_s"] > 0 and r["peak_bytes"] > 0 and r["param_bytes"] > 0 for r in results["train"])


def test_accuracy_smoke_trains_every_model_and_writes_its_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    out = tmp_path / "out"
    cfg = accuracy.mode_config("smoke")
    results = accuracy.run(cfg, doc, tmp_path / "img", out, command="accuracy --smoke")
    rows = results["main"]
    assert {r["model"] for r in rows} == {m.label for m in cfg.models}
    assert {r["seed"] for r in rows} == set(cfg.seeds)
    for r in rows:
        assert 0.0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 100.0
        assert r["num_missing_predictions"] == 0 and r["steps"] >= 1
    # the same data and budget for every model of a seed
    for seed in cfg.seeds:
        assert len({(r["data"], r["steps"]) for r in rows if r["seed"] == seed}) == 1
    # a knob value equal to the preset's reuses the preset's data
    preset_data = {r["data"] for r in rows}
    assert {r["data"] for r in results["knobs"] if r["value"] == 0.1} <= preset_data
    text = doc.read_text()
    assert "<!-- accuracy:start -->" in text and "accuracy --smoke" in text and " ± " in text
    assert (tmp_path / "img" / "accuracy-smoke-models.png").exists()
    # each synthetic set is generated once and reused: a second run trains nothing new
    n_sets = len(list((out / "data").iterdir()))
    again = accuracy.run(cfg, doc, tmp_path / "img", out, command="accuracy --smoke")
    assert len(list((out / "data").iterdir())) == n_sets
    assert [r["R@1"] for r in again["main"]] == [r["R@1"] for r in rows]
    assert all(r["from_cache"] for r in again["main"]) and not any(r["from_cache"] for r in rows)
    assert "runs were read from the results cache" in doc.read_text()


def test_memory_smoke_measures_both_modes_and_fits(tmp_path):
    import memory

    assert memory.main(["--smoke", "--out", str(tmp_path), "--threads", "1"]) == 0
    result = json.loads((tmp_path / "memory.json").read_text())
    modes = {(r["mode"], r["G"]) for r in result["rows"]}
    assert modes == {(m, g) for m in ("sharded", "replicated") for g in (4, 8, 16)}
    assert all(r["peak_bytes"] >= 0 and math.isfinite(r["loss"]) for r in result["rows"])
    # the sharded mode really computes only this rank's rows
    assert {r["rows"] for r in result["rows"] if r["mode"] == "sharded"} == {4}
    assert {r["rows"] for r in result["rows"] if r["mode"] == "replicated"} == {4, 8, 16}
    assert set(result["fits"]) == {"sharded", "replicated"}


def test_largest_g_solves_the_fitted_budget():
    import memory

    # peak = 1 GB + 0.5 GB per clip: 80 GB allows G = 158 -> 156 in steps of 4
    points = [(g, 1e9 + 0.5e9 * g) for g in (4, 8, 16, 32)]
    g, coef = memory.largest_g(points, 80e9, 4)
    assert g == 156 and abs(coef[1] - 0.5e9) < 1e3
