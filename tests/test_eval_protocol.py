"""The per-room protocol on a tiny synthetic set with the real tiny model."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sgmn
from sgmn.data.readers import read_dataset
from sgmn.data.synthetic import generate, preset
from sgmn.eval.protocol import evaluate, frame_mode_queries


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, preset("easy", rooms=2, products_per_room=4, clips_per_product=1, frames_per_clip=4), progress=False)
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sgmn.create_model("sgmn-tiny").eval()


def test_rankings_are_per_room_sorted_and_gallery_encoded_once(synth, model, monkeypatch):
    data = read_dataset(synth, "lpr4m")
    calls = []
    original = model.encode_products

    def counting(images, *a, **k):
        calls.append(len(images))
        return original(images, *a, **k)

    monkeypatch.setattr(model, "encode_products", counting)
    result = evaluate(model, data, "test", batch_size=3, progress=False, return_attention=True)
    test_clips = data.split_clips("test")
    # every product of the queried rooms is encoded exactly once, however many queries there are
    rooms = {c.room_id for c in test_clips}
    assert sum(calls) == sum(len(data.rooms[r].product_ids) for r in rooms)
    assert set(result.rankings) == {c.clip_id for c in test_clips}
    for clip in test_clips:
        ranking = result.rankings[clip.clip_id]
        assert [p for p, _ in ranking] != []
        assert {p for p, _ in ranking} == set(data.rooms[clip.room_id].product_ids)  # own room only
        scores = [s for _, s in ranking]
        assert scores == sorted(scores, reverse=True)
    m = result.metrics
    assert m["num_queries"] == len(test_clips)
    assert m["protocol"]["gallery_products"] == sum(calls)
    assert 0.0 <= m["R@1"] <= m["R@3"] <= m["R@5"] <= 100.0
    # per category and per attribute column (the synthetic clips carry LPR4M's three), every query counted once
    assert {"category", "scale", "duration", "num_products"} <= set(m["breakdown"])
    for facet, groups in m["breakdown"].items():
        assert sum(g["num_queries"] for g in groups.values()) == len(test_clips), facet
    # the text-guided attention map of every query (what the demo report overlays on the frames)
    g = model.config.vision.image_size // model.config.vision.patch_size
    assert set(result.attention) == set(result.rankings)
    for att in result.attention.values():
        assert att.shape == (model.config.num_frames, g, g) and np.isfinite(att).all() and att.sum() > 0


def test_frame_mode_scores_each_causal_window_as_a_clip_of_its_frames(synth, model):
    data = read_dataset(synth, "lpr4m")
    clips = data.split_clips("test")
    result = evaluate(model, data, "test", mode="frame", window=3, progress=False)
    expected = {f"{c.clip_id}@{t:04d}" for c in clips for t in range(len(c.frame_paths))}
    assert set(result.rankings) == expected
    assert result.metrics["num_queries"] == len(expected) and result.metrics["protocol"]["window"] == 3
    clip = clips[0]
    last = len(clip.frame_paths) - 1
    assert last >= 3  # the window then starts after the clip's first frame
    query = f"{clip.clip_id}@{last:04d}"
    assert result.ground_truth[query] == clip.product_ids
    # the same scores as video mode on a clip holding only the window's frames (t-2..t, nothing later)
    data.clips[clip.clip_id] = dataclasses.replace(
        clip,
        frame_paths=clip.frame_paths[last - 2 :],
        boxes=clip.boxes[last - 2 :] if clip.boxes else None,
        frame_sizes=clip.frame_sizes[last - 2 :] if clip.frame_sizes else None,
    )
    video = dict(evaluate(model, data, "test", progress=False).rankings[clip.clip_id])
    got = dict(result.rankings[query])
    assert got.keys() == video.keys()
    for pid, score in video.items():
        assert got[pid] == pytest.approx(score, abs=1e-5)


def test_scores_equal_the_model_score_of_the_clip_and_product(synth, model):
    data = read_dataset(synth, "lpr4m")
    result = evaluate(model, data, "test", progress=False)
    clip = data.split_clips("test")[0]
    # recompute one query by hand through the public inference API
    from sgmn.data.media import load_clip_frames
    from sgmn.text import MiniLMEncoder

    frames, _, _ = load_clip_frames(clip, model.config.num_frames)
    products = data.room_gallery(clip.room_id)
    enc = MiniLMEncoder()
    asr_vec, asr_mask = enc.encode([clip.asr])
    title_vec, title_mask = enc.encode([p.title for p in products])
    from sgmn.data.media import load_image

    c = model.encode_clips([frames], asr=torch.from_numpy(asr_vec), asr_mask=torch.from_numpy(asr_mask))
    p = model.encode_products([load_image(x.image_paths[0]) for x in products],
                              titles=torch.from_numpy(title_vec), title_mask=torch.from_numpy(title_mask))
    expected = dict(zip([x.product_id for x in products], model.score(c, p)[0].tolist()))
    got = dict(result.rankings[clip.clip_id])
    for pid, score in expected.items():
        assert got[pid] == pytest.approx(score, abs=1e-4)


def test_all_images_gallery_scores_a_product_by_its_best_image(synth, model):
    data = read_dataset(synth, "lpr4m")
    clip = data.split_clips("test")[0]
    room = data.rooms[clip.room_id]
    p0, p1 = room.product_ids[0], room.product_ids[1]
    own, other = data.products[p0].image_paths[0], data.products[p1].image_paths[0]
    first = evaluate(model, data, "test", gallery="main", progress=False)  # p0 shown by its own image
    data.products[p0].image_paths = [other]
    second = evaluate(model, data, "test", gallery="main", progress=False)  # p0 shown by the other image
    data.products[p0].image_paths = [own, other]
    every = evaluate(model, data, "test", gallery="all", progress=False)
    assert every.metrics["protocol"]["gallery_images"] == first.metrics["protocol"]["gallery_images"] + 1
    checked = 0
    for q, ranking in every.rankings.items():
        if data.clips[q].room_id != clip.room_id:
            continue
        a, m1, m2 = dict(ranking), dict(first.rankings[q]), dict(second.rankings[q])
        assert a[p0] == pytest.approx(max(m1[p0], m2[p0]), abs=1e-5)  # best image counts
        assert a[p1] == pytest.approx(m1[p1], abs=1e-5)  # single-image products unchanged
        checked += 1
    assert checked >= 1


def test_frame_mode_windows_are_causal(synth):
    data = read_dataset(synth, "lpr4m")
    clip = data.split_clips("test")[0]
    queries, alias = frame_mode_queries([clip], window=3)
    assert len(queries) == len(clip.frame_paths)
    for t, q in enumerate(queries):
        assert q.frame_paths == clip.frame_paths[max(0, t - 2): t + 1]  # never a later frame
        assert alias[q.clip_id] == clip.clip_id
        assert q.product_ids == clip.product_ids


def test_unreadable_query_is_a_counted_miss(synth, model, tmp_path):
    data = read_dataset(synth, "lpr4m")
    clip = data.split_clips("test")[0]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    clip.frame_paths = [bad] * len(clip.frame_paths)
    with pytest.raises(Exception) as err:
        evaluate(model, data, "test", progress=False)
    assert "broken.jpg" in str(err.value)
    result = evaluate(model, data, "test", on_error="skip", progress=False)
    assert clip.clip_id not in result.rankings
    assert result.metrics["num_missing_predictions"] == 1
    assert result.metrics["num_skipped_unreadable"] == 1
    assert result.metrics["num_queries"] == len(data.split_clips("test"))


def test_eval_cli_writes_metrics_and_rankings(synth, model, tmp_path):
    from sgmn.cli import app

    ckpt = tmp_path / "model"
    model.save_pretrained(ckpt)
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["eval", "--data", str(synth), "--format", "lpr4m", "--checkpoint", str(ckpt),
                                   "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    rankings = json.loads((out / "rankings.json").read_text())
    assert metrics["protocol"]["mode"] == "video" and metrics["protocol"]["gallery"] == "main"
    assert len(metrics["model"]["fingerprint"]) == 16 and len(metrics["data"]["fingerprint"]) == 16
    assert metrics["num_queries"] == len(rankings)
    for ranking in rankings.values():
        scores = [s for _, s in ranking]
        assert scores == sorted(scores, reverse=True)
    assert "R@1" in res.output
    # the mechanism metrics of issue 9 are measured by default, and printed
    mech = metrics["mechanism"]
    assert mech["queries"] == len(rankings)
    assert 0.0 < mech["tga_influence"]["mean_cos"] <= 1.0 + 1e-6 and mech["tga_pointing"]["frames"] > 0
    assert 0.0 <= mech["smf_accuracy"]["accuracy"] <= 1.0 and mech["smf_accuracy"]["chance"] == 0.25
    assert "TGA influence" in res.output and "SMF accuracy" in res.output


def test_written_files_are_strict_json_with_null_for_undefined_values(tmp_path):
    from sgmn.eval.metrics import recall_summary
    from sgmn.eval.protocol import EvalResult

    # every query missed: no first-hit rank exists, so the median and mean ranks are undefined
    metrics = recall_summary({"q1": [("p2", 0.5)]}, {"q1": ["p1"], "q2": ["p1"]})
    metrics["breakdown"] = {"category": {"mug": dict(metrics)}}
    EvalResult(metrics=metrics, rankings={"q1": [("p2", 0.5)]}).write(tmp_path)

    def refuse(token):
        raise AssertionError(f"{token} in a JSON file")

    written = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert written["median_rank"] is None and written["mean_rank"] is None
    assert written["breakdown"]["category"]["mug"]["median_rank"] is None
    assert written["R@1"] == 0.0 and written["num_missing_predictions"] == 1 and written["num_gt_not_ranked"] == 1
    assert json.loads((tmp_path / "rankings.json").read_text(), parse_constant=refuse) == {"q1": [["p2", 0.5]]}


@pytest.mark.parametrize("option, value", [("--format", "lpr5m"), ("--mode", "frames"), ("--gallery", "every"), ("--on-error", "ignore")])
def test_eval_cli_rejects_bad_choices_naming_the_option(synth, tmp_path, option, value):
    from sgmn.cli import app

    res = CliRunner().invoke(app, ["eval", "--data", str(synth), "--checkpoint", str(tmp_path / "none"),
                                   "--out", str(tmp_path / "eval"), option, value])
    assert res.exit_code == 2 and not isinstance(res.exception, ValueError)
    assert option in res.output and repr(value) in res.output
    assert not (tmp_path / "eval").exists()


def test_rerank_top_k_in_the_config_reorders_each_querys_top_k(synth, model, monkeypatch):
    data = read_dataset(synth, "lpr4m")
    plain = evaluate(model, data, "test", progress=False)
    k = 3
    monkeypatch.setattr(model.config, "rerank_top_k", k)
    calls = []

    def reverse_top_k(clips, products, scores=None, top_k=None):  # a stand-in re-ranker with a known order
        calls.append(scores.shape)
        values, idx = scores.topk(k, dim=1)
        out = scores.clone()
        out.scatter_(1, idx.flip(1), values)
        return out

    monkeypatch.setattr(model, "rerank_scores", reverse_top_k)
    reranked = evaluate(model, data, "test", progress=False)
    assert calls and reranked.metrics["protocol"]["rerank_top_k"] == k
    for q, ranking in plain.rankings.items():
        ids = [p for p, _ in ranking]
        new_ids = [p for p, _ in reranked.rankings[q]]
        assert new_ids[:k] == ids[:k][::-1]  # the re-ranker's order decides the top K
        assert new_ids[k:] == ids[k:]  # everything below is untouched


def test_real_rerank_runs_in_evaluation(synth):
    torch.manual_seed(0)
    model = sgmn.create_model("sgmn-tiny", rerank_top_k=3).eval()
    data = read_dataset(synth, "lpr4m")
    result = evaluate(model, data, "test", progress=False)
    model.config.rerank_top_k = 0
    plain = evaluate(model, data, "test", progress=False)
    for q, ranking in result.rankings.items():
        top = sorted(s for _, s in ranking[:3])
        assert top == pytest.approx(sorted(s for _, s in plain.rankings[q][:3]), abs=1e-5)  # same K values
        assert {p for p, _ in ranking[:3]} == {p for p, _ in plain.rankings[q][:3]}  # same top-K set


def test_innersource_ranks_only_products_of_the_querys_source_group(synth, model):
    data = read_dataset(synth, "lpr4m")
    # MovingFashion-style groups: half of each room's products (and their clips) are "hard"
    for room in data.rooms.values():
        for i, pid in enumerate(room.product_ids):
            data.products[pid].group = "hard" if i % 2 else "regular"
    for clip in data.clips.values():
        clip.group = data.products[clip.product_ids[0]].group
    allsource = evaluate(model, data, "test", progress=False)
    inner = evaluate(model, data, "test", same_group_only=True, progress=False)
    assert inner.metrics["protocol"]["gallery_scope"].startswith("same source group")
    for q, ranking in inner.rankings.items():
        group = data.clips[q].group
        assert {data.products[p].group for p, _ in ranking} == {group}
        # the same scores as in the all-source ranking, restricted to the group
        full = dict(allsource.rankings[q])
        for p, s in ranking:
            assert s == pytest.approx(full[p], abs=1e-5)
        assert len(ranking) < len(full)
    assert set(inner.metrics["breakdown"]["group"]) == {"regular", "hard"}  # reported separately


def test_unreadable_gallery_image_is_a_counted_skip_not_a_crash(synth, model, tmp_path):
    """A 0-byte shop image: an error naming it by default, a counted skip under on_error='skip'
    (the product has no row, so its queries are misses)."""
    data = read_dataset(synth, "lpr4m")
    query = data.split_clips("test")[0]
    product = data.products[query.product_ids[0]]
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    product.image_paths = [empty]
    with pytest.raises(Exception, match="empty.jpg"):
        evaluate(model, data, "test", progress=False)
    result = evaluate(model, data, "test", on_error="skip", progress=False)
    assert result.metrics["num_skipped_gallery_images"] == 1
    ranked = {pid for ranking in result.rankings.values() for pid, _ in ranking}
    assert product.product_id not in ranked and ranked
    assert result.metrics["num_queries"] == len(data.split_clips("test"))
