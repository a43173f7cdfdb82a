"""Retriever: scores equal the model's own, persistence, model fingerprint, errors, threads, global search.

Every test runs on each retrieval backend (the ``store_at`` fixture: FAISS/SQLite and Milvus Lite)."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

import sgmn
from sgmn.errors import MediaError
from sgmn.retrieval import (
    KEEP,
    AlreadyExists,
    IndexConfig,
    InvalidId,
    ModelMismatch,
    NoModel,
    NotFound,
    Retriever,
    RetrieverConfig,
)

from helpers import write_mp4  # noqa: E402


def _tiny(seed):
    torch.manual_seed(seed)
    return sgmn.create_model("sgmn-tiny").eval()


@pytest.fixture(scope="module")
def model():
    return _tiny(0)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


def _img(i, size=(40, 32)):
    rng = np.random.default_rng(i)
    base = rng.integers(0, 255, 3)
    arr = np.clip(base + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.fixture()
def shop(tmp_path):
    """Five products; p2 has two images, p4 no title."""
    paths = {}
    for i in range(5):
        files = []
        for j in range(2 if i == 2 else 1):
            f = tmp_path / f"p{i}_{j}.png"
            _img(10 * i + j).save(f)
            files.append(f)
        paths[f"p{i}"] = files
    titles = {"p0": "red silk dress", "p1": "blue denim jeans", "p2": "white sneakers", "p3": "gold necklace", "p4": None}
    return [(pid, paths[pid], titles[pid]) for pid in paths]


def _frames(n, seed=100):
    return [np.asarray(_img(seed + i, (48, 36))) for i in range(n)]


def _expected_scores(model, shop, frames, asr):
    """What the model itself says: max over a product's images of v·p + λ·a·t."""
    clip = model.encode_clips([frames], asr=[asr])
    out = {}
    for pid, files, title in shop:
        prods = model.encode_products([Image.open(f) for f in files], titles=[title] * len(files))
        out[pid] = float(model.score(clip, prods)[0].max())
    return out


def test_query_scores_are_the_models_scores_and_survive_reopen(tmp_path, store_at, model, saved, shop):
    frames = _frames(8)
    asr = "look at this red silk dress"
    with Retriever.open(store_at("store"), model=saved) as r:
        r.create_room("live-1")
        report = r.add_products("live-1", shop)
        assert report.added == [p for p, _, _ in shop] and not report.skipped_products
        result = r.query("live-1", frames, asr=asr, top_k=3)
    expected = _expected_scores(model, shop, [frames[i] for i in result.frame_indices], asr)
    ranked = sorted(expected, key=lambda p: -expected[p])
    assert [h.product_id for h in result.hits] == ranked[:3]
    for h in result.hits:
        assert h.score == pytest.approx(expected[h.product_id], abs=1e-4)
        assert h.title == dict((p, t) for p, _, t in shop)[h.product_id]
        assert h.image_path.is_file() and store_at("store") in h.image_path.parents
    # num_frames of sgmn-tiny is 6: frames are sampled uniformly, attention is per frame
    assert result.frame_indices == [0, 1, 2, 4, 5, 6]
    assert len(result.frames) == 6 and result.attention.shape == (6, 4, 4)
    assert np.isfinite(result.attention).all()

    # after a restart, without naming the model (the store remembers the checkpoint)
    with Retriever.open(store_at("store")) as r:
        again = r.query("live-1", frames, asr=asr, top_k=3)
        assert [(h.product_id, round(h.score, 5)) for h in again.hits] == [
            (h.product_id, round(h.score, 5)) for h in result.hits
        ]
        assert [p.product_id for p in r.list_products("live-1")] == [p for p, _, _ in shop]


def test_clip_inputs_mp4_folder_paths_and_images_agree(tmp_path, store_at, model, shop):
    frames = _frames(4)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):  # natural order: 2 before 10
        Image.fromarray(f).save(folder / f"f{[1, 2, 10, 11][i]}.png")
    video = tmp_path / "clip.mp4"
    write_mp4(video, frames, rate=4, codec="libx264")
    with Retriever.open(store_at("s"), model=model) as r:
        r.add_products("room", shop, create_room=True)
        by_images = r.query("room", [Image.fromarray(f) for f in frames], top_k=5)
        by_folder = r.query("room", folder, top_k=5)
        by_paths = r.query("room", sorted(folder.iterdir(), key=lambda p: int(p.stem[1:])), top_k=5)
        by_video = r.query("room", video, top_k=5)
    scores = [h.score for h in by_images.hits]
    assert [h.score for h in by_folder.hits] == pytest.approx(scores, abs=1e-5)
    assert [h.score for h in by_paths.hits] == pytest.approx(scores, abs=1e-5)
    assert len(by_video.frames) == 4 and by_video.frames[0].shape == (36, 48, 3)
    assert by_video.asr is None and all(np.isfinite(h.score) for h in by_video.hits)


def test_another_model_is_refused_until_reindexed(tmp_path, store_at, model, shop):
    frames = _frames(3)
    with Retriever.open(store_at("s"), model=model) as r:
        r.add_products("room", shop, create_room=True)
    other = _tiny(1)
    with Retriever.open(store_at("s"), model=other) as r:
        with pytest.raises(ModelMismatch, match="5 of 5 products.*reindex"):
            r.query("room", frames)
        with pytest.raises(ModelMismatch):
            r.add_products("room", [("new", [shop[0][1][0]], None)])
        assert r.reindex() == 5
        result = r.query("room", frames, asr="gold necklace", top_k=5)
    expected = _expected_scores(other, shop, frames, "gold necklace")
    assert {h.product_id: h.score for h in result.hits} == pytest.approx(expected, abs=1e-4)


def test_update_remove_and_errors(tmp_path, store_at, model, shop):
    frames = _frames(3)
    asr = "white sneakers on sale"
    with Retriever.open(store_at("s"), model=model) as r:
        with pytest.raises(NotFound):
            r.add_products("nope", shop)
        r.create_room("room")
        r.add_products("room", shop)
        with pytest.raises(AlreadyExists, match="p0"):
            r.add_products("room", shop[:1])
        before = {h.product_id: h.score for h in r.query("room", frames, asr=asr, top_k=5).hits}
        r.update_product("room", "p4", title="white sneakers")  # p4 had no title
        assert r.get_product("room", "p4").title == "white sneakers"
        r.update_product("room", "p4", images=[_img(77)], title=KEEP)
        assert r.get_product("room", "p4").title == "white sneakers"
        assert r.get_product("room", "p4").source_names == ["image-0.jpg"]
        after = {h.product_id: h.score for h in r.query("room", frames, asr=asr, top_k=5).hits}
        expected_p4 = _expected_scores(model, [("p4", [r.get_product("room", "p4").main_image], "white sneakers")], frames, asr)
        assert after["p4"] == pytest.approx(expected_p4["p4"], abs=1e-4) and after["p4"] != pytest.approx(before["p4"])
        assert after["p0"] == pytest.approx(before["p0"], abs=1e-6)
        r.remove_product("room", "p0")
        assert "p0" not in {h.product_id for h in r.query("room", frames, top_k=10).hits}
        for call in (
            lambda: r.query("ghost", frames),
            lambda: r.remove_product("room", "p0"),
            lambda: r.update_product("room", "ghost", title="x"),
        ):
            with pytest.raises(KeyError):
                call()
        for bad in ("../x", "a/b", ""):
            with pytest.raises(InvalidId):
                r.query(bad, frames)
            with pytest.raises(InvalidId):
                r.add_products("room", [(bad, [shop[0][1][0]], None)])
        corrupt = tmp_path / "broken.jpg"
        corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
        with pytest.raises(MediaError, match="broken.jpg"):
            r.add_products("room", [("pc", [corrupt], None)])
        with pytest.raises(MediaError, match="broken.jpg"):
            r.query("room", [corrupt])
        bad_video = tmp_path / "bad.mp4"
        bad_video.write_bytes(b"\x00" * 100)
        with pytest.raises(MediaError, match="bad.mp4"):
            r.query("room", bad_video)
        # the skip policy keeps readable images, skips unreadable products, and says which
        report = r.add_products(
            "room", [("pa", [corrupt, shop[1][1][0]], "a"), ("pb", [corrupt], "b"), ("../x", [corrupt], None)],
            on_error="skip",
        )
        assert report.added == ["pa"] and len(report.skipped_products) == 2
        assert any("broken.jpg" in s for s in report.skipped_images)
        assert len(r.get_product("room", "pa").image_paths) == 1
    with Retriever.open(store_at("empty")) as r:
        r.create_room("x")  # managing rooms needs no model
        with pytest.raises(NoModel):
            r.query("x", frames)


def test_concurrent_queries_and_additions(tmp_path, store_at, model, shop):
    frames = _frames(2)
    r = Retriever.open(store_at("s"), model=model, config=RetrieverConfig(batch_size=1))
    r.add_products("room", shop[:2], create_room=True)
    errors, seen = [], []
    extra = [(f"n{i}", [shop[i % 5][1][0]], f"new {i}") for i in range(6)]

    def add():
        try:
            for item in extra:
                r.add_products("room", [item])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def query():
        try:
            for _ in range(4):
                seen.append({h.product_id for h in r.query("room", frames, top_k=50).hits})
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=add), threading.Thread(target=query), threading.Thread(target=query)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    final = {p.product_id for p in r.list_products("room")}
    assert final == {"p0", "p1", *(e[0] for e in extra)}
    assert all({"p0", "p1"} <= s <= final for s in seen)
    r.close()


def _assert_same_top(hits, exact, k):
    """``hits`` are the top ``k`` of ``exact`` (sorted by score): the same scores, and the same
    products above the k-th score. p0 and q9 of the test are one image and title in two rooms,
    encoded in different batches, so their scores may differ in the last bits and an exact tie at
    the k-th place may come out either way."""
    assert [h.score for h in hits] == pytest.approx([h.score for h in exact[:k]], abs=1e-5)
    boundary = exact[k - 1].score + 1e-5
    above = {(h.room_id, h.product_id) for h in exact if h.score > boundary}
    assert {(h.room_id, h.product_id) for h in hits if h.score > boundary} == above
    tied = {(h.room_id, h.product_id) for h in exact if abs(h.score - exact[k - 1].score) <= 1e-5}
    assert {(h.room_id, h.product_id) for h in hits if h.score <= boundary} <= tied


def test_global_search_matches_exact_per_room_search(tmp_path, store_at, model, shop):
    frames = _frames(3)
    with Retriever.open(store_at("s"), model=model) as r:
        r.add_products("a", shop[:3], create_room=True)
        r.add_products("b", shop[3:] + [("q9", shop[0][1], "red silk dress")], create_room=True)
        exact = r.query("a", frames, top_k=10).hits + r.query("b", frames, top_k=10).hits
        exact = sorted(exact, key=lambda h: -h.score)[:5]
        glob = r.search_global(frames, top_k=4)
        _assert_same_top(glob.hits, exact, 4)
        if r.store.backend == "faiss":  # the built index is saved for restarts and other processes
            assert len(list((r.store.root / "index").glob("catalogue-*.faiss"))) == 1
    # an approximate index over the same rows gives the same top products on this tiny catalogue
    cfg = RetrieverConfig(index=IndexConfig(kind="hnsw"))
    with Retriever.open(store_at("s"), model=model, config=cfg) as r:
        hnsw = r.search_global(frames, top_k=4)
        _assert_same_top(hnsw.hits, exact, 4)
        r.remove_product("a", exact[0].product_id) if exact[0].room_id == "a" else r.remove_product("b", exact[0].product_id)
        assert exact[0].product_id not in [h.product_id for h in r.search_global(frames, top_k=4).hits if h.room_id == exact[0].room_id]


def test_concurrent_additions_of_one_id_add_it_exactly_once(tmp_path, store_at, model, shop):
    from sgmn.retrieval import AlreadyExists

    r = Retriever.open(store_at("s"), model=model)
    r.create_room("room")
    results, barrier = [], threading.Barrier(4)

    def add(i):
        barrier.wait()
        try:
            r.add_products("room", [("same", [shop[i][1][0]], f"title {i}")])
            results.append(("ok", i))
        except AlreadyExists:
            results.append(("exists", i))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(kind for kind, _ in results) == ["exists"] * 3 + ["ok"]
    winner = next(i for kind, i in results if kind == "ok")
    assert r.get_product("room", "same").title == f"title {winner}"  # never silently replaced
    r.close()


def test_non_finite_model_outputs_are_refused_never_stored_or_returned(tmp_path, store_at, shop, monkeypatch):
    model = _tiny(2)
    frames = _frames(3)
    with Retriever.open(store_at("s"), model=model) as r:
        r.add_products("room", shop[:2], create_room=True)
        clean = [(h.product_id, h.score) for h in r.query("room", frames, top_k=5).hits]
        encode_clips, encode_products = model.encode_clips, model.encode_products

        def nan_in_attention(*args, **kwargs):  # embeddings fine, one attention cell NaN
            emb = encode_clips(*args, **kwargs)
            emb.attention[0, 0, 0, 0] = float("nan")
            return emb

        def inf_in_product(*args, **kwargs):
            emb = encode_products(*args, **kwargs)
            emb.embedding[-1, 0] = float("inf")
            return emb

        monkeypatch.setattr(model, "encode_clips", nan_in_attention)
        with pytest.raises(ValueError, match="query clip: the model produced non-finite"):
            r.query("room", frames)
        monkeypatch.setattr(model, "encode_products", inf_in_product)
        with pytest.raises(ValueError, match="product 'p9': the model produced non-finite"):
            r.add_products("room", [("p9", shop[2][1], "white sneakers")])
        monkeypatch.undo()
        assert [p.product_id for p in r.list_products("room")] == ["p0", "p1"]
        assert [(h.product_id, h.score) for h in r.query("room", frames, top_k=5).hits] == clean
