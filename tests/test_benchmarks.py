"""Smoke runs of the benchmark scripts (their ``--smoke`` modes) and checks of their helpers.

The scripts live in benchmarks/ (a folder of scripts, not a package), so it is put on sys.path.
Every run writes into tmp_path: the repository's docs/benchmarks.md is never touched here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
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


# ---------------------------------------------------------------- accuracy statistics
def _hits(rng, p, n=150, seeds=5):
    return [(rng.random(n) < p).astype(float) for _ in range(seeds)]


def test_bootstrap_ci_finds_a_known_effect_and_covers_no_effect():
    """Over many simulated benchmarks (5 seeds x 150 queries of paired hits): a true +20-point
    effect gives a CI above 0 that brackets it; no effect gives a CI that covers 0 (>= 95% of the time)."""
    rng = np.random.default_rng(0)
    excluded = bracketed = covered = 0
    trials = 40
    for t in range(trials):
        strong, weak, same = _hits(rng, 0.55), _hits(rng, 0.35), _hits(rng, 0.55)
        mean, lo, hi = accuracy.bootstrap_ci([a - b for a, b in zip(strong, weak)], n_boot=500, seed=t)
        excluded += lo > 0
        bracketed += lo < 0.2 < hi
        mean, lo, hi = accuracy.bootstrap_ci([a - b for a, b in zip(strong, same)], n_boot=500, seed=t)
        covered += lo < 0 < hi
    assert excluded == trials and bracketed >= 0.9 * trials
    assert covered >= 0.95 * trials
    # one model's recall: CI around the mean, inside [0, 1]
    strong = _hits(rng, 0.55)
    mean, lo, hi = accuracy.bootstrap_ci(strong, n_boot=2000)
    assert 0 <= lo < mean < hi <= 1 and abs(mean - 0.55) < 0.06
    # deterministic for a seed; identical paired hits give exactly [0, 0]
    assert accuracy.bootstrap_ci(strong, n_boot=500) == accuracy.bootstrap_ci(strong, n_boot=500)
    assert accuracy.bootstrap_ci([a - a for a in strong], n_boot=500) == (0.0, 0.0, 0.0)


def test_bootstrap_resamples_seeds_too():
    """Seeds that disagree widen the CI beyond what the queries alone would give."""
    rng = np.random.default_rng(1)
    consistent = [(rng.random(400) < 0.5).astype(float) for _ in range(5)]
    spread = [(rng.random(400) < p).astype(float) for p in (0.2, 0.35, 0.5, 0.65, 0.8)]
    w1 = np.subtract(*accuracy.bootstrap_ci(consistent, n_boot=2000)[2:0:-1])
    w2 = np.subtract(*accuracy.bootstrap_ci(spread, n_boot=2000)[2:0:-1])
    assert w2 > 2 * w1


def test_paired_effect_refuses_unpaired_runs():
    rows = [{"preset": "easy", "model": m, "seed": 0, "data": "d", "queries": q, "hits@1": [1, 0]}
            for m, q in (("A", ["q1", "q2"]), ("B", ["q1", "q3"]))]
    with pytest.raises(ValueError, match="same queries"):
        accuracy.paired_effect(rows, "easy", "A", "B", 100)


@pytest.mark.timeout(1800)  # a few minutes on a quiet 2-core machine; far more when 8 engineers share it
def test_accuracy_smoke_trains_every_model_and_writes_its_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    out = tmp_path / "out"
    json_path = tmp_path / "accuracy.json"
    cfg = accuracy.mode_config("smoke")
    results = accuracy.run(cfg, doc, tmp_path / "img", out, command="accuracy --smoke", json_path=json_path)
    rows = results["main"]
    assert {r["model"] for r in rows} == {m.label for m in cfg.models}
    assert {r["seed"] for r in rows} == set(cfg.seeds)
    for r in rows:
        assert 0.0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 100.0
        assert r["num_missing_predictions"] == 0 and r["steps"] >= 1
        assert len(r["hits@1"]) == len(r["queries"]) == r["num_queries"]
        assert [p["epoch"] for p in r["curve"]] == [1, 2] and r["curve"][-1]["R@1"] == r["R@1"]
        # fine-tuned from the pretrain checkpoint with the paper's recipe, or from scratch with its own
        assert r["recipe"]["recipe"] == ("scratch" if r["start"] == "scratch" else "paper")
        # ... with the backbone factor recipe_selection.py selected
        assert r["recipe"]["backbone_lr_factor"] == (
            1.0 if r["start"] == "scratch" else accuracy.FINETUNE["backbone_lr_factor"])
    assert {r["start"] for r in rows} == {"pretrain", "scratch"}
    # the final models' mechanism metrics: TGA and the cross encoder where the model has them
    for r in rows:
        mech = r["mechanism"]
        if r["model"] == "clip-meanpool":
            assert mech == {}
        if r["model"] == "SGMN":
            assert set(mech) == {"tga_cos", "tga_pointing", "smf_accuracy", "smf_chance"}
            assert -1 <= mech["tga_cos"] <= 1 and mech["tga_pointing"] > 0 and 0 < mech["smf_chance"] < 1
    # the same data, queries and budget for every model of a seed (paired comparisons)
    for seed in cfg.seeds:
        assert len({(r["data"], r["steps"], tuple(r["queries"])) for r in rows if r["seed"] == seed}) == 1

    # docs/benchmarks/accuracy.json: exactly the schema
    doc_json = json.loads(json_path.read_text())
    assert set(doc_json) == {"presets", "effects"}
    assert set(doc_json["presets"]) == set(cfg.presets) == set(doc_json["effects"])

    def check_ci(cell):
        assert set(cell) == {"mean", "ci95"} and len(cell["ci95"]) == 2
        assert cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1]

    for p, body in doc_json["presets"].items():
        assert set(body) == {"models"} and set(body["models"]) == {m.label for m in cfg.models}
        for m, cell in body["models"].items():
            assert set(cell) == {"R@1", "R@5"}
            check_ci(cell["R@1"]), check_ci(cell["R@5"])
            assert 0 <= cell["R@1"]["ci95"][0] and cell["R@5"]["ci95"][1] <= 100
            runs = [r["R@1"] for r in rows if r["preset"] == p and r["model"] == m]
            assert cell["R@1"]["mean"] == pytest.approx(sum(runs) / len(runs))
    allowed = {"TGA", "TDB", "GCI", "SMF", "text", "vs_clip_meanpool"}
    for p, effects in doc_json["effects"].items():
        assert set(effects) == {"vs_clip_meanpool"} <= allowed  # the smoke mode's models
        for cell in effects.values():
            check_ci(cell)
        sgmn = [r["R@1"] for r in rows if r["preset"] == p and r["model"] == "SGMN"]
        base = [r["R@1"] for r in rows if r["preset"] == p and r["model"] == "clip-meanpool"]
        assert effects["vs_clip_meanpool"]["mean"] == pytest.approx((sum(sgmn) - sum(base)) / len(sgmn))

    text = doc.read_text()
    assert "<!-- accuracy:start -->" in text and "accuracy --smoke" in text
    assert "### Goals (issue 9, point 5)" in text and "not measured" in text
    assert "### Mechanism metrics of the final models" in text
    sgmn_mech = [r["mechanism"] for r in rows if r["model"] == "SGMN" and r["preset"] == cfg.presets[0]]
    row = next(line for line in text.splitlines() if line.startswith(f"| {cfg.presets[0]} | SGMN |"))
    assert f"{sum(m['tga_cos'] for m in sgmn_mech) / len(sgmn_mech):.3f}" in row
    for name in ("models", "curves"):
        assert (tmp_path / "img" / f"accuracy-smoke-{name}.png").stat().st_size > 1000
    # each synthetic set and the pretraining are done once: a second run trains nothing new
    n_sets = len(list((out / "data").iterdir()))
    again = accuracy.run(cfg, doc, tmp_path / "img", out, command="accuracy --smoke", json_path=json_path)
    assert len(list((out / "data").iterdir())) == n_sets and again["pretrain"]["cached"]
    assert [r["hits@1"] for r in again["main"]] == [r["hits@1"] for r in rows]
    assert all(r["from_cache"] for r in again["main"]) and not any(r["from_cache"] for r in rows)
    assert "runs were read from the results cache" in doc.read_text()
    # a cached run read under another label (another script's name for the same training) takes that label
    synth = accuracy.synth_config(cfg, cfg.presets[0], cfg.seeds[0])
    renamed = dataclasses.replace(accuracy.FULL, label="full SGMN, another name")
    row = accuracy.run_one(cfg, renamed, synth, out, accuracy.ensure_pretrain(cfg, out))
    assert row["from_cache"] and row["model"] == "full SGMN, another name"
    assert row["hits@1"] == next(r["hits@1"] for r in rows if r["model"] == "SGMN" and r["seed"] == cfg.seeds[0])

    # the breakdown by kind of query reads these results; its re-test trains SGMN and the ablation
    # of a lead on fresh seeds, the way this benchmark does
    import accuracy_breakdown as bd

    bd_json = tmp_path / "breakdown.json"
    first = bd.run(out / "smoke-results.json", doc, bd_json, n_boot=200)
    assert first["leads"] == {} and first["confirmation"] is None  # the smoke mode trains no ablation
    groups = first["first_pass"]["easy"]["asr"]
    assert sum(g["queries"] for g in groups.values()) == sum(len(r["queries"]) for r in rows if r["model"] == "SGMN")
    assert "<!-- accuracy-breakdown:start -->" in doc.read_text() and json.loads(bd_json.read_text()) == first
    source = json.loads((out / "smoke-results.json").read_text())
    confirmed = bd.confirm(source, {"easy": ["TGA"]}, (7,), out, jobs=1, n_boot=200)
    assert confirmed["seeds"] == [7] and confirmed["tested"] == {"easy": ["TGA"]}
    one = confirmed["overall"]["easy"]["TGA"]  # one seed: the paired difference of the two runs' R@1
    assert set(confirmed["overall"]) == {"easy"} and one["ci95"][0] <= one["mean"] <= one["ci95"][1]
    cells = [g for k in confirmed["breakdown"]["easy"].values() for g in k.values() if g["queries"]]
    assert cells and all(set(g["effects"]) == {"TGA"} for g in cells)
    assert any(p.name.startswith("seed7-") for p in (out / "data").iterdir())


def test_memory_smoke_measures_both_modes_and_fits(tmp_path, monkeypatch):
    import memory

    import sgmn.model.matching as matching

    directions, loss_fn = [], matching.pairwise_matching_loss

    def recording_loss(*args, **kwargs):
        directions.append(kwargs.get("rows", "product"))
        return loss_fn(*args, **kwargs)

    monkeypatch.setattr(matching, "pairwise_matching_loss", recording_loss)
    assert memory.main(["--smoke", "--out", str(tmp_path), "--threads", "1"]) == 0
    # L_pair as the default trains it: both directions in every step
    assert directions and directions.count("product") == directions.count("clip")
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


@pytest.mark.timeout(1200)
def test_recipe_selection_picks_the_best_sgmn_mean_and_writes_its_section(tmp_path):
    import recipe_selection

    doc, json_path = tmp_path / "benchmarks.md", tmp_path / "recipe_selection.json"
    recipe_selection.main(["--smoke", "--doc", str(doc), "--json", str(json_path), "--out", str(tmp_path / "out")])
    result = json.loads(json_path.read_text())
    means = {name: cells["SGMN mean over presets"] for name, cells in result["R@1"].items()}
    assert set(means) == {"paper (1e-3)", "1"} and result["selected"] == max(means, key=means.get)
    assert result["finetune"] == recipe_selection.CANDIDATES[result["selected"]]
    for cells in result["R@1"].values():
        for m in ("SGMN", "clip-meanpool"):
            assert len(cells["easy"][m]["per_seed"]) == 1  # the smoke mode: one selection seed, one preset
    assert "<!-- recipe-selection:start -->" in doc.read_text() and "--smoke" in doc.read_text()
    # the selection seeds are never the accuracy benchmark's
    assert not set(recipe_selection.SELECTION_SEEDS) & set(accuracy.mode_config("standard").seeds)


def _design_table(effects: dict, vs_published: dict) -> dict:
    presets = ("easy", "hard")
    return {name: {**{p: {"vs_without_gci": {"mean": e[i]}, "vs_published": None if name == "published" else
                          {"mean": vs_published[name][i]}} for i, p in enumerate(presets)},
                   "mean effect over presets": sum(e) / len(e)} for name, e in effects.items()}


def test_gci_design_rule_replaces_the_published_design_only_when_it_earns_and_wins_everywhere():
    import gci_design

    presets = ("easy", "hard")
    # the best design earns on average and beats the published one on every preset: it is adopted
    table = _design_table({"published": (-1.0, -2.0), "refined": (0.5, 0.5), "both": (0.2, 0.0)},
                          {"refined": (1.5, 2.5), "both": (1.2, 2.0)})
    assert gci_design.verdict(table, presets) == ("refined", "refined")
    # the best is still a cost on average: the default stays as published
    table = _design_table({"published": (-1.0, -2.0), "refined": (0.5, -1.0)}, {"refined": (1.5, 1.0)})
    assert gci_design.verdict(table, presets) == ("refined", "published")
    # it earns on average but loses to the published design on one preset
    table = _design_table({"published": (0.0, 1.0), "refined": (2.0, 0.5)}, {"refined": (2.0, -0.5)})
    assert gci_design.verdict(table, presets) == ("refined", "published")
    # the published design is the best
    table = _design_table({"published": (1.0, 1.0), "refined": (0.5, 0.5)}, {"refined": (-0.5, -0.5)})
    assert gci_design.verdict(table, presets) == ("published", "published")


@pytest.mark.timeout(1200)
def test_gci_design_trains_every_design_against_no_gci_and_writes_its_section(tmp_path):
    import gci_design

    doc, json_path = tmp_path / "benchmarks.md", tmp_path / "gci_design.json"
    gci_design.main(["--smoke", "--doc", str(doc), "--json", str(json_path), "--out", str(tmp_path / "out")])
    result = json.loads(json_path.read_text())
    assert set(result["effects"]) == set(gci_design.DESIGNS)
    assert result["designs"]["both"] == {**result["designs"]["messages detached"],
                                         **result["designs"]["refined triplet only"]}
    # five models per (preset, seed): the four designs and SGMN without GCI
    assert result["runs"] == 5 and set(result["without_gci_R@1"]) == {"easy"}
    for name, cells in result["effects"].items():
        assert cells["easy"]["vs_without_gci"] is not None
        assert (cells["easy"]["vs_published"] is None) == (name == "published")
    best, default = gci_design.verdict(result["effects"], ["easy"])
    assert (result["best"], result["default"]) == (best, default)
    assert "<!-- gci-design:start -->" in doc.read_text() and "--smoke" in doc.read_text()
    assert not set(gci_design.SELECTION_SEEDS) & set(accuracy.mode_config("standard").seeds)


@pytest.mark.timeout(1200)
def test_text_weight_selection_picks_the_best_sgmn_mean_and_writes_its_section(tmp_path):
    import text_weight

    doc, json_path = tmp_path / "benchmarks.md", tmp_path / "text_weight.json"
    text_weight.main(["--smoke", "--doc", str(doc), "--json", str(json_path), "--out", str(tmp_path / "out")])
    result = json.loads(json_path.read_text())
    means = {name: cells["SGMN mean over presets"] for name, cells in result["R@1"].items()}
    assert set(means) == {"0.5", "2"} and result["selected"] == float(max(means, key=means.get))
    assert result["runs"] == 3  # two candidates and clip-meanpool on one (preset, seed)
    # every candidate sets λ itself, so the selection does not depend on the default it selects
    assert text_weight.candidate_model(0.5).overrides_dict() == {"text_weight": 0.5}
    assert "<!-- text-weight:start -->" in doc.read_text() and "--smoke" in doc.read_text()
    assert not set(text_weight.SELECTION_SEEDS) & set(accuracy.mode_config("standard").seeds)


def test_sgmn_ranks_with_the_selected_text_weight():
    import text_weight

    from sgmn.model.config import SGMNConfig

    selection = json.loads(text_weight.JSON_PATH.read_text())
    assert selection["selected"] in text_weight.CANDIDATES
    assert SGMNConfig().text_weight == selection["selected"]


def test_goals_only_trains_exactly_the_models_the_goals_and_effects_compare(monkeypatch):
    seen = []
    monkeypatch.setattr(accuracy, "run", lambda cfg, *a, **k: seen.append(cfg))
    accuracy.main(["--standard", "--goals-only"])
    accuracy.main(["--standard"])
    goals, everything = ({m.label for m in cfg.models} for cfg in seen)
    # every effect's comparison model, full SGMN and the from-scratch row (issue 9, point 3)
    assert goals == {*accuracy.EFFECTS.values(), accuracy.FULL.label, accuracy.SCRATCH.label}
    assert goals < everything and accuracy.ORACLE.label in everything - goals
    assert seen[0].seeds == seen[1].seeds and seen[0].train == seen[1].train  # the same runs, fewer of them


def test_oracle_boxes_hide_part_of_each_query_frame(tmp_path):
    from sgmn.data.synthetic import preset

    synth = preset("hard", rooms=1, products_per_room=4, clips_per_product=1, test_clips_per_product=1,
                   frames_per_clip=2, image_size=64, seed=5)
    share = accuracy.oracle_patch_share([accuracy.ensure_data(synth, tmp_path / "data")])
    # the product's box is only part of the frame: the oracle keeps some patches and hides others
    assert 0.0 < share < 1.0
    from sgmn.model.registry import get_config

    vision = get_config(accuracy.ORACLE.variant).vision
    assert share * (vision.image_size // vision.patch_size) ** 2 >= 1.0  # at least one patch per frame stays


def test_accuracy_benchmark_fine_tunes_with_the_selected_recipe():
    import recipe_selection

    selection = json.loads(recipe_selection.JSON_PATH.read_text())
    assert accuracy.FINETUNE == selection["finetune"] == recipe_selection.CANDIDATES[selection["selected"]]
    assert accuracy.mode_config("standard").finetune == accuracy.FINETUNE


def test_each_diagnostic_pair_differs_in_its_component_alone_and_builds():
    from sgmn.model.config import SGMNConfig
    from sgmn.model.registry import create_model

    standard = {m.label for m in accuracy.mode_config("standard").models}
    for name, (with_it, without_it) in accuracy.DIAGNOSTICS.items():
        assert {with_it.label, without_it.label} <= standard, name
        a, b = with_it.overrides_dict(), without_it.overrides_dict()
        differ = {k for k in a.keys() | b.keys() if a.get(k, "unset") != b.get(k, "unset")}
        assert len(differ) == 1, name  # one config field apart
        assert with_it.train == without_it.train, name  # the same budget for both of a pair
        assert with_it.start == without_it.start, name  # and the same starting point
        (field,) = differ
        assert field in SGMNConfig.__dataclass_fields__, name
        # a switch: on in the model with the component, off (set or by default) in the other
        assert getattr(create_model(with_it.variant, **a).config, field) is True, name
        assert getattr(create_model(without_it.variant, **b).config, field) is False, name
    # the no-text-term pair: TGA still reads the ASR, but no text term reaches the score or the loss
    with_it, without_it = accuracy.DIAGNOSTICS["TGA where the score has no text term"]
    model = create_model(with_it.variant, **with_it.overrides_dict())
    assert model.tga is not None and model.config.text_weight == 0.0 and model.config.losses.txt == 0.0
    assert create_model(without_it.variant, **without_it.overrides_dict()).tga is None


def test_gci_probe_pairs_each_variant_against_no_gci_and_writes_its_section(tmp_path):
    import gci_probe

    # the full probe: every variant trains with the diagnostic pair's budget and differs from full GCI
    # in config only, on seeds the accuracy benchmark never reports
    assert not set(gci_probe.SELECTION_SEEDS) & set(accuracy.mode_config("standard").seeds)
    assert all(spec.train == gci_probe.WITHOUT.train == accuracy.BATCH_32 for spec, _ in gci_probe.VARIANTS.values())
    doc, json_path = tmp_path / "benchmarks.md", tmp_path / "gci_probe.json"
    gci_probe.main(["--smoke", "--doc", str(doc), "--json", str(json_path), "--out", str(tmp_path / "out")])
    result = json.loads(json_path.read_text())
    assert set(result["variants"]) == {"full GCI", "L_reg alone"}
    base = result["baseline"]
    assert base["model"] == gci_probe.WITHOUT.label and len(base["per_seed"]) == 1
    for v in result["variants"].values():
        # one seed: the paired difference is the difference of the two runs' R@1 on the same queries
        assert v["vs_no_gci"]["mean"] == pytest.approx(v["per_seed"][0] - base["per_seed"][0])
        lo, hi = v["vs_no_gci"]["ci95"]
        assert lo <= v["vs_no_gci"]["mean"] <= hi
    # the curve's last epoch is the run's final score, which the table reports
    for v in [base, *result["variants"].values()]:
        assert len(v["curve"]) == len(result["curve_epochs"]) and v["curve"][-1] == pytest.approx(v["R@1"])
    # the sizes differ in training clips alone; the smoke sets' own size repeats the runs above
    small, large = result["by_size"]["sizes"]
    assert (small["clips_per_product"], large["clips_per_product"]) == (2, 3)
    assert large["training_clips"] * 2 == small["training_clips"] * 3 and large["steps"] > small["steps"]
    assert set(small["vs_no_gci"]) == {"full GCI"}
    assert small["vs_no_gci"]["full GCI"] == result["variants"]["full GCI"]["vs_no_gci"]
    assert small["baseline_R@1"] == pytest.approx(base["R@1"])
    # GCI's losses for the first epoch only: the resumed run trains the whole budget without them, and
    # the control (no GCI stopped and resumed unchanged) scores exactly as no GCI trained without a stop
    switch = result["switch"]["plans"]
    early, control = switch["GCI for the first 1 epochs"], switch["no GCI, stopped and resumed (control)"]
    assert "gnn" not in early["last_losses"] and "reg" not in early["last_losses"] and "base" in early["last_losses"]
    assert early["steps"] == control["steps"] and control["per_seed"] == base["per_seed"]
    assert control["vs_no_gci"]["mean"] == 0.0
    reset, reset_control = (switch["GCI for the first 1 epochs, optimiser moments reset"],
                            switch["no GCI, stopped and resumed, optimiser moments reset"])
    assert reset["reset"] and reset_control["reset"] and not early["reset"]
    assert reset["vs_reset_control"]["mean"] == pytest.approx(reset["per_seed"][0] - reset_control["per_seed"][0])
    # gradient alignment: every scored epoch of both models; L_gnn's cosines only where there is a graph
    gci, no_gci = result["alignment"]["models"]["full GCI"], result["alignment"]["models"]["no GCI"]
    assert [r["epoch"] for r in gci] == [r["epoch"] for r in no_gci] == result["curve_epochs"]
    for r in gci:
        assert all(-1.0 <= r[k] <= 1.0 for k in ("cos_gnn_test", "cos_gnn_train", "cos_base_test", "cos_base_train"))
    assert all("cos_gnn_test" not in r and -1.0 <= r["cos_base_test"] <= 1.0 for r in no_gci)
    assert all(math.isfinite(r["L_S_test"]) and r["L_S_train"] > 0 for r in gci + no_gci)
    text = doc.read_text()
    assert "<!-- gci-probe:start -->" in text and "--smoke" in text and "L_reg alone" in text
    assert f"epoch {result['curve_epochs'][-1]}" in text and "training clips per product" in text
    assert "cos(∇L_gnn, ∇L_S test)" in text


def test_gci_probe_mean_gradient_is_the_descent_direction_of_the_batches_mean_loss():
    import gci_probe
    import torch
    from test_model import make_batch, tiny

    model = tiny(**{"losses.vi": 1.0}).eval()
    batches = [make_batch(B=4, seed=s) for s in (0, 1)]

    def mean_loss():
        with torch.no_grad():
            return sum(float(model(b)["losses"]["vi"]) for b in batches) / len(batches)

    g = gci_probe.mean_gradient(model, batches, "vi")
    params = [p for p in model.parameters() if p.requires_grad]
    assert g.numel() == sum(p.numel() for p in params) and g.norm() > 0
    before = mean_loss()
    step = 1e-4 / float(g.norm())
    with torch.no_grad():  # a short step down the returned vector lowers the mean loss by about step * |g|^2
        offset = 0
        for p in params:
            p -= step * g[offset: offset + p.numel()].view_as(p)
            offset += p.numel()
    drop = before - mean_loss()
    assert drop == pytest.approx(step * float(g @ g), rel=0.2)
    # a loss the model does not reach through some parameters leaves zeros there, not an error
    g_base = gci_probe.mean_gradient(model, batches, "base")
    assert g_base.shape == g.shape and (g_base == 0).any()


def test_smf_probe_trains_only_the_cross_encoder_and_writes_its_section(tmp_path):
    import smf_probe

    doc = tmp_path / "benchmarks.md"
    cfg = smf_probe.smoke_config()
    rows = smf_probe.run(cfg, doc=doc, out=tmp_path / "out")
    assert [r["seed"] for r in rows] == list(cfg.seeds)
    for r in rows:
        assert [s for s, _ in r["curve"]] == [0, 2, 4] and r["curve"][0][1] == r["joint_accuracy"]
        assert r["probe_accuracy"] == r["curve"][-1][1] and 0 < r["chance"] < 1 and r["k"] == 3
        assert 0 < r["trained_params"] and np.isfinite(r["pair_first"]) and np.isfinite(r["pair_last"])
        assert r["lr"] == pytest.approx(cfg.lr_factor * 3e-4)  # the recipe's lr for new modules, times the factor
        assert r["trained_moved"] > 0 and r["frozen_moved"] == 0.0  # only the cross encoder and fusion train
    text = doc.read_text()
    assert "<!-- smf-probe:start -->" in text and "Can SMF's cross encoder learn" in text


def test_smf_rows_trains_the_clip_rows_in_one_variant_only_and_pairs_the_runs(tmp_path, monkeypatch):
    import smf_rows

    import sgmn.model.matching as matching

    directions = []
    loss_fn = matching.pairwise_matching_loss

    def recording_loss(*args, **kwargs):
        directions.append(kwargs.get("rows", "product"))
        return loss_fn(*args, **kwargs)

    monkeypatch.setattr(matching, "pairwise_matching_loss", recording_loss)
    doc = tmp_path / "benchmarks.md"
    rows = smf_rows.run(smf_rows.smoke_config(), doc=doc, out=tmp_path / "out")
    # both variants train the same steps; only the clip-rows one adds a clip row per product row
    assert directions.count("product") == 2 * directions.count("clip") > 0
    models = {r["model"] for r in rows}
    assert models == {"SGMN, published rows", "SGMN, published rows, re-ranked",
                      "SGMN, with clip rows", "SGMN, with clip rows, re-ranked"}
    assert len({(r["data"], tuple(r["queries"])) for r in rows}) == 1  # paired: the same data and queries
    assert all(0 < r["chance"] < 1 and 0 <= r["smf"] <= 1 for r in rows if "smf" in r)
    assert all(e is not None for _, e in smf_rows.effects(rows, "easy", 100))
    text = doc.read_text()
    assert "<!-- smf-rows:start -->" in text and "clip rows and re-ranking against the published default" in text


# ---------------------------------------------------------------- accuracy breakdown by kind of query
def _breakdown_set(root: Path, seed: int, **knobs) -> Path:
    from sgmn.data.synthetic import SynthConfig, generate

    cfg = SynthConfig(rooms=2, products_per_room=4, clips_per_product=1, test_clips_per_product=2, frames_per_clip=4,
                      image_size=48, seed=seed, asr_missing=0.0, **knobs)
    generate(root / f"seed{seed}", cfg, progress=False)
    return root / f"seed{seed}"


def test_breakdown_sorts_queries_by_what_the_clip_shows(tmp_path):
    import accuracy_breakdown as bd

    from sgmn.data.readers import read_dataset
    from sgmn.data.synthetic import ATTRIBUTE_WORDS

    K = bd.KINDS
    # every knob at its extreme: each kind falls entirely into one group
    busy = bd.query_kinds(_breakdown_set(tmp_path, 0, asr_informativeness=1.0, distractors=1.0, domain_gap=0.0,
                                         fine_grained=1.0))
    assert busy and all(k == {"asr": K["asr"][0], "distractors": K["distractors"][0], "visibility": K["visibility"][1],
                              "sibling": K["sibling"][0]} for k in busy.values())
    quiet_dir = _breakdown_set(tmp_path, 1, asr_informativeness=0.0, distractors=0.0, domain_gap=1.0, fine_grained=0.0)
    quiet = bd.query_kinds(quiet_dir)
    assert all(k["asr"] == K["asr"][1] and k["distractors"] == K["distractors"][1] for k in quiet.values())
    # out of frame: exactly the clips the reader gives a frame without a box; with domain gap 1 some are
    data = read_dataset(quiet_dir, "lpr4m")
    clips = {c.clip_id: c for c in data.split_clips("test")}
    assert set(clips) == set(quiet)
    hidden = {q for q, c in clips.items() if any(b is None for b in c.boxes)}
    assert hidden and hidden != set(clips)
    assert {q for q, k in quiet.items() if k["visibility"] == K["visibility"][0]} == hidden
    for q, c in clips.items():
        assert (quiet[q]["asr"] == K["asr"][0]) == bool(set(re.findall(r"[a-z]+", (c.asr or "").lower())) & ATTRIBUTE_WORDS)


def test_breakdown_effects_are_the_paired_effects_within_each_group(tmp_path):
    import accuracy_breakdown as bd

    kinds, rows = {}, []
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        d = _breakdown_set(tmp_path, seed, asr_informativeness=0.5, distractors=0.5, domain_gap=0.8, fine_grained=0.5)
        key = d.name
        kinds[key] = bd.query_kinds(d)
        queries = sorted(kinds[key])
        for model in ("SGMN", "SGMN − TGA", "clip-meanpool"):
            hits = [int(x) for x in rng.random(len(queries)) < 0.5]
            rows.append({"preset": "p", "model": model, "seed": seed, "data": key, "queries": queries,
                         "hits@1": hits, "hits@5": hits})
    doc = bd.breakdown(rows, kinds, n_boot=200)
    by = {(r["model"], r["seed"]): r for r in rows}
    for kind, groups in bd.KINDS.items():
        cells = doc["p"][kind]
        assert set(cells) == set(groups)
        assert sum(cells[g]["queries"] for g in groups) == 2 * 16  # the groups split every query once
        for group in groups:
            cell = cells[group]
            assert set(cell["effects"]) == ({"TGA", "vs_clip_meanpool"} if cell["queries"] else set())
            if not cell["queries"]:
                continue
            # the mean over seeds (that have the group) of the per-seed mean hit difference in the group
            per_seed = []
            for seed in (0, 1):
                a, b = by[("SGMN", seed)], by[("SGMN − TGA", seed)]
                idx = [i for i, q in enumerate(a["queries"]) if kinds[a["data"]][q][kind] == group]
                if idx:
                    per_seed.append(np.mean([a["hits@1"][i] - b["hits@1"][i] for i in idx]))
            tga = cell["effects"]["TGA"]
            assert tga["mean"] == pytest.approx(100 * np.mean(per_seed))
            assert tga["ci95"][0] <= tga["mean"] <= tga["ci95"][1]


def test_breakdown_leads_are_components_with_a_ci_above_zero_on_a_group_they_are_for():
    import accuracy_breakdown as bd

    def cell(lo):
        return {"mean": lo + 1, "ci95": [lo, lo + 2]}

    doc = {"p": {kind: {g: {"queries": 5, "effects": {}} for g in groups} for kind, groups in bd.KINDS.items()}}
    doc["p"]["visibility"][bd.KINDS["visibility"][0]]["effects"]["TDB"] = cell(0.5)  # TDB's own group: a lead
    doc["p"]["visibility"][bd.KINDS["visibility"][1]]["effects"]["TDB"] = cell(0.5)  # the other group: not
    doc["p"]["sibling"][bd.KINDS["sibling"][1]]["effects"]["GCI"] = cell(1.0)  # not GCI's group
    doc["p"]["asr"][bd.KINDS["asr"][0]]["effects"]["TGA"] = cell(-0.5)  # covers 0
    doc["p"]["asr"][bd.KINDS["asr"][0]]["effects"]["text"] = cell(3.0)  # text is no component to re-test
    assert bd.leads(doc) == {"p": ["TDB"]}


def test_near_goal_re_tests_a_component_at_the_goal_size_whose_ci_does_not_clear_zero(monkeypatch):
    import accuracy_breakdown as bd

    # component -> (preset-wide effect, lower CI bound)
    effects = {"GCI": (2.8, -0.1), "TDB": (1.6, -0.2), "TGA": (2.5, 0.3), "SMF": (-0.1, -1.4), "text": (6.0, -1.0)}
    component = {spec.label: c for c, spec in accuracy.ABLATIONS.items()}
    monkeypatch.setattr(accuracy, "paired_effect", lambda rows, p, a, b, n: {
        "mean": effects[component[b]][0], "ci95": [effects[component[b]][1], 9.0]})
    rows = [{"preset": "hard", "model": m} for m in [accuracy.FULL.label, *component]]
    # GCI: at the goal's size, CI touching 0. TGA already meets the goal, TDB is short of its size,
    # SMF costs nothing, and the text branch is no component the goals name.
    assert bd.near_goal(rows, 100) == {"hard": ["GCI"]}
    assert bd._merge({"hard": ["TDB"]}, bd.near_goal(rows, 100)) == {"hard": ["TDB", "GCI"]}
    assert bd.near_goal([r for r in rows if r["model"] != "SGMN − GCI"], 100) == {}  # no ablation, nothing to test


def test_localisation_scale_pairs_each_size_with_its_oracle_and_writes_its_section(tmp_path):
    import localisation_scale as ls
    from sgmn.model.registry import create_model

    # the pair differs in the oracle alone, and the tower really takes the size's frames
    for size in ls.SIZES:
        full, oracle = ls.specs(size)
        assert dict(oracle.overrides) == {**dict(full.overrides), "detector_boxes": True}
        assert full.start == oracle.start == "scratch"
        assert create_model(full.variant, **full.overrides_dict()).config.vision.image_size == size
    assert not set(ls.SEEDS) & set(accuracy.mode_config("standard").seeds)
    doc, json_path = tmp_path / "benchmarks.md", tmp_path / "ls.json"
    ls.main(["--smoke", "--doc", str(doc), "--json", str(json_path), "--out", str(tmp_path / "out")])
    result = json.loads(json_path.read_text())
    assert result["runs"] == 4 and set(result["sizes"]) == {"32", "64"}
    coarse, fine = result["sizes"]["32"], result["sizes"]["64"]
    # one seed: the paired difference is the difference of the two runs' R@1
    for cell in (coarse, fine):
        full, oracle = cell["R@1"].values()
        assert cell["oracle_minus_sgmn"]["mean"] == pytest.approx(oracle - full)
    # a finer grid lets the same boxes hide more of the frame
    assert 0 < fine["oracle_patch_share"] < coarse["oracle_patch_share"] <= 1
    assert "<!-- localisation-scale:start -->" in doc.read_text() and "--smoke" in doc.read_text()


def test_resolution_pretrains_and_fine_tunes_each_size_and_writes_its_section(tmp_path):
    import resolution as res
    from sgmn.model.registry import create_model
    from sgmn.train.pretrain import PretrainConfig

    # at the base size the models are the accuracy benchmark's own (its cache is shared); at another
    # size each differs from them in the tower's input size alone
    assert res.models(res.BASE_SIZE) == [accuracy.FULL, *res.COMPARED.values(), accuracy.ORACLE, res.TGA_EVERY_LAYER]
    for base, spec in zip(res.models(res.BASE_SIZE), res.models(128)):
        assert dict(spec.overrides) == {**dict(base.overrides), "vision.image_size": 128}
        assert spec.start == base.start == "pretrain" and spec.variant == base.variant
        assert create_model(spec.variant, **spec.overrides_dict()).config.vision.image_size == 128
    # the 128 px pretraining builds a 128 px tower, its shops rendered at the default's ratio
    over = res.pretrain_overrides(128, {})
    assert over["image_size"] == PretrainConfig.image_size * 2
    assert create_model(over["model"]).config.vision.image_size == 128
    assert res.pretrain_overrides(res.BASE_SIZE, {"epochs": 1}) == {"epochs": 1}
    assert not set(res.SEEDS) & set(accuracy.mode_config("standard").seeds)

    doc, json_path = tmp_path / "benchmarks.md", tmp_path / "res.json"
    res.main(["--smoke", "--doc", str(doc), "--json", str(json_path), "--out", str(tmp_path / "out")])
    result = json.loads(json_path.read_text())
    assert result["runs"] == 16 and set(result["sizes"]) == {"64", "96"}
    assert result["sizes"]["64"]["pretrain"]["key"] != result["sizes"]["96"]["pretrain"]["key"]
    for size, cell in result["sizes"].items():
        r1 = cell["R@1"]
        full = res.sized(accuracy.FULL, int(size)).label
        # one seed: each paired difference is the difference of the two runs' R@1
        for name, spec in res.COMPARED.items():
            assert cell["effects"][name]["mean"] == pytest.approx(r1[full] - r1[res.sized(spec, int(size)).label])
        for key, spec in (("oracle_minus_sgmn", accuracy.ORACLE), ("tga_every_layer_minus_sgmn", res.TGA_EVERY_LAYER)):
            assert cell[key]["mean"] == pytest.approx(r1[res.sized(spec, int(size)).label] - r1[full])
        for tga in cell["tga"].values():
            assert 0 < tga["cos"] <= 1 + 1e-6 and tga["pointing"] > 0
    assert "<!-- resolution:start -->" in doc.read_text() and "--smoke" in doc.read_text()

    # --report: the goal models alone, on the accuracy benchmark's report seeds, into their own
    # section and JSON; the selection seeds' section stays
    report_json = tmp_path / "report.json"
    res.main(["--smoke", "--report", "--doc", str(doc), "--json", str(report_json), "--out", str(tmp_path / "out")])
    report = json.loads(report_json.read_text())
    assert report["seeds"] == [accuracy.AccuracyConfig().seeds[0]] and not report["diagnostics"]
    assert report["runs"] == 12 and all("oracle_minus_sgmn" not in c for c in report["sizes"].values())
    text = doc.read_text()
    assert "<!-- resolution-report:start -->" in text and "<!-- resolution:start -->" in text


def test_provenance_says_which_runs_trained_and_which_came_from_the_cache():
    line = accuracy.provenance("python x.py", 90.0, {"runs": 12, "fresh_runs": 5, "cpu_s": 600.0})
    assert line.startswith("Command: `python x.py` — finished in 1.5 min wall (5 of 12 training runs trained here, "
                           "the others read from the accuracy benchmark's results cache)")
    assert line.endswith("adds up to 10.0 CPU-min.")
    assert accuracy.runs_provenance({"runs": 12, "fresh_runs": 12}) == "all 12 training runs trained here"
    assert accuracy.runs_provenance({"runs": 12, "fresh_runs": 0}).startswith("all 12 training runs read from")
