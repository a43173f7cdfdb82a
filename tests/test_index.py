"""Search: the concatenated inner product is the SGMN score; FAISS indexes agree with exact search."""

import numpy as np
import pytest

from sgmn.retrieval.index import (
    IndexConfig,
    ProbeRecall,
    VectorIndex,
    best_per_product,
    exact_search,
    gallery_matrix,
    query_matrix,
)
from sgmn.retrieval.store import ProductRecord, ProductVectors, stack_vectors


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _record(pid):
    return ProductRecord("r", pid, None, [], [], None, "fp", 0.0)


def test_concatenated_inner_product_is_the_sgmn_score():
    rng = np.random.default_rng(1)
    d, lam = 8, 0.5
    # product 0: two images with a title; product 1: one image, no title
    p0 = _unit(rng.standard_normal((2, d)))
    t0 = _unit(rng.standard_normal(d))
    p1 = _unit(rng.standard_normal((1, d)))
    vecs = [ProductVectors(p0, t0, True), ProductVectors(p1, np.zeros(d, np.float32), False)]
    room = stack_vectors([_record("a"), _record("b")], vecs)
    gallery, product_of_row = gallery_matrix(room, lam)
    assert product_of_row.tolist() == [0, 0, 1]

    v = _unit(rng.standard_normal((1, d)))
    a = _unit(rng.standard_normal((1, d)))
    scores = best_per_product(query_matrix(v, a) @ gallery.T, product_of_row, 2)[0]
    expected0 = max(float(v[0] @ p0[i] + lam * a[0] @ t0) for i in range(2))
    expected1 = float(v[0] @ p1[0])  # no title: no text term
    assert scores == pytest.approx([expected0, expected1], abs=1e-5)

    # a clip without ASR (a = 0) scores on the visual term only
    no_text = best_per_product(query_matrix(v, np.zeros_like(a)) @ gallery.T, product_of_row, 2)[0]
    assert no_text[0] == pytest.approx(max(float(v[0] @ p0[i]) for i in range(2)), abs=1e-5)

    # main image only ignores the second image of product 0
    main, main_rows = gallery_matrix(room, lam, main_image_only=True)
    assert main_rows.tolist() == [0, 1]
    s_main = (query_matrix(v, a) @ main.T)[0]
    assert s_main[0] == pytest.approx(float(v[0] @ p0[0] + lam * a[0] @ t0), abs=1e-5)


def test_index_kind_follows_size_thresholds_and_override():
    cfg = IndexConfig(flat_below=100)
    assert [cfg.choose_kind(n) for n in (99, 100, 10**6)] == ["flat", "ivfpq", "ivfpq"]
    assert IndexConfig(flat_below=100, large_kind="hnsw").choose_kind(1000) == "hnsw"
    assert IndexConfig(kind="hnsw").choose_kind(10) == "hnsw"
    with pytest.raises(ValueError, match="index kind"):
        IndexConfig(kind="lsh").choose_kind(10)
    with pytest.raises(ValueError, match="large_kind"):
        IndexConfig(large_kind="flat").choose_kind(10**6)
    assert IndexConfig().choose_kind(20_000) == "flat"
    # measured (benchmarks/scale.py): the large-catalogue default that meets < 10 ms at recall 0.95 on 1M rows
    assert IndexConfig().choose_kind(200_000) == "ivfpq"
    assert IndexConfig().choose_kind(2_000_000) == "ivfpq"


def test_pq_code_count_divides_the_dimension():
    cfg = IndexConfig()
    assert cfg.pq_codes_for(512) == 128 and cfg.pq_codes_for(1024) == 256 and cfg.pq_codes_for(8) == 2
    for d in (30, 7, 1, 100):
        m = cfg.pq_codes_for(d)
        assert d % m == 0 and m >= 1


def test_flat_index_equals_exact_search():
    rng = np.random.default_rng(2)
    g = rng.standard_normal((500, 16)).astype(np.float32)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    ex_scores, ex_rows = exact_search(q, g, 7)
    idx = VectorIndex.build(g, IndexConfig(kind="flat"))
    scores, rows = idx.search(q, 7)
    assert idx.kind == "flat"
    np.testing.assert_array_equal(rows, ex_rows)
    np.testing.assert_allclose(scores, ex_scores, rtol=1e-5, atol=1e-5)


def _recall_at_10(exact_rows, approx_rows):
    return float(np.mean([len(set(e) & set(a)) / 10 for e, a in zip(exact_rows, approx_rows)]))


def test_ivf_and_hnsw_recall_at_10_against_exact_on_20k_vectors(capsys):
    # Embeddings of real products are clustered (categories, shops), so the catalogue is a
    # mixture of 200 clusters in 64 dimensions plus noise; queries come from the same mixture.
    rng = np.random.default_rng(0)
    d, n, nq = 64, 20_000, 200
    centres = _unit(rng.standard_normal((200, d)))
    gallery = _unit(centres[rng.integers(0, 200, n)] + 0.19 * rng.standard_normal((n, d)))
    queries = _unit(centres[rng.integers(0, 200, nq)] + 0.19 * rng.standard_normal((nq, d)))
    _, exact = exact_search(queries, gallery, 10)
    recalls = {}
    for kind in ("ivf", "hnsw"):
        idx = VectorIndex.build(gallery, IndexConfig(kind=kind))
        assert idx.kind == kind and idx.size == n
        _, rows = idx.search(queries, 10)
        recalls[kind] = _recall_at_10(exact, rows)
    # HNSW also on structureless uniform random vectors (the hard case for graph search).
    uniform = _unit(rng.standard_normal((n, d)))
    uq = _unit(rng.standard_normal((nq, d)))
    _, exact_u = exact_search(uq, uniform, 10)
    _, rows_u = VectorIndex.build(uniform, IndexConfig(kind="hnsw")).search(uq, 10)
    recalls["hnsw-uniform"] = _recall_at_10(exact_u, rows_u)
    with capsys.disabled():
        print(f"\nrecall@10 vs exact on {n} vectors: " + ", ".join(f"{k}={v:.3f}" for k, v in recalls.items()))
    assert recalls["ivf"] >= 0.9
    assert recalls["hnsw"] >= 0.9
    assert recalls["hnsw-uniform"] >= 0.9


def test_index_round_trips_through_a_file(tmp_path):
    rng = np.random.default_rng(3)
    g = rng.standard_normal((3000, 8)).astype(np.float32)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    idx = VectorIndex.build(g, IndexConfig(kind="ivf", ivf_nlist=16))
    idx.save(tmp_path / "x.faiss")
    back = VectorIndex.load(tmp_path / "x.faiss", "ivf", idx.config)
    np.testing.assert_array_equal(back.search(q, 5)[1], idx.search(q, 5)[1])


def test_empty_gallery_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="non-empty"):
        VectorIndex.build(np.zeros((0, 4), np.float32))


def test_calibration_raises_probing_until_the_target_recall_and_survives_a_reload(tmp_path):
    # Structureless vectors: the fixed default nprobe misses many neighbours; calibration
    # must find a setting that reaches the target on *new* queries too.
    rng = np.random.default_rng(5)
    d, n, nq = 32, 20_000, 200
    gallery = _unit(rng.standard_normal((n, d)))
    queries = _unit(rng.standard_normal((nq, d)))
    _, exact = exact_search(queries, gallery, 10)
    fixed = VectorIndex.build(gallery, IndexConfig(kind="ivf", ivf_nprobe=4, target_recall=None))
    calibrated = VectorIndex.build(gallery, IndexConfig(kind="ivf", ivf_nprobe=4, target_recall=0.95))
    assert fixed.search_setting["nprobe"] == 4 and fixed.recall is None
    assert calibrated.search_setting["nprobe"] > 4 and calibrated.recall >= 0.95
    r_fixed = _recall_at_10(exact, fixed.search(queries, 10)[1])
    r_cal = _recall_at_10(exact, calibrated.search(queries, 10)[1])
    assert r_fixed < 0.8 <= 0.9 <= r_cal
    calibrated.save(tmp_path / "ivf.faiss")
    back = VectorIndex.load(tmp_path / "ivf.faiss", "ivf", calibrated.config)
    assert back.search_setting == calibrated.search_setting
    np.testing.assert_array_equal(back.search(queries, 10)[1], calibrated.search(queries, 10)[1])


def _low_rank(rng, n, d=64, rank=8, noise=0.3):
    basis = np.linalg.qr(rng.standard_normal((d, rank)))[0].T
    x = rng.standard_normal((n, rank)) @ basis + rng.standard_normal((n, d)) * noise * np.sqrt(rank / d)
    return _unit(x)


def test_ivfpq_reranks_exactly_reaches_calibrated_recall_updates_and_round_trips(tmp_path):
    rng = np.random.default_rng(7)
    data = _low_rank(rng, 8_200)
    gallery, queries = data[:8_000], data[8_000:]
    _, exact = exact_search(queries, gallery, 10)
    ids = np.arange(len(gallery), dtype=np.int64) * 2 + 1  # ids are not row numbers
    idx = VectorIndex.build(gallery, IndexConfig(kind="ivfpq", ivf_nprobe=2), ids=ids)
    setting = idx.search_setting
    assert idx.kind == "ivfpq" and setting["PQ"] == "16x4" and setting["nlist"] == IndexConfig().nlist_for(8_000)
    assert idx.recall >= 0.95 and setting["nprobe"] > 2
    scores, found = idx.search(queries, 10)
    assert _recall_at_10(exact, (found - 1) // 2) >= 0.9  # held-out queries
    # scores are re-ranked from the full vectors: exact inner products, not PQ estimates
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, gallery[(found - 1) // 2]), atol=1e-5)
    # added rows are found at once; rows cannot be removed (the catalogue masks them)
    idx.add(queries[:2], np.array([10**9, 10**9 + 1]))
    assert idx.search(queries[:2], 1)[1][:, 0].tolist() == [10**9, 10**9 + 1]
    assert not idx.can_remove
    with pytest.raises(ValueError, match="cannot remove"):
        idx.remove(np.array([1]))
    idx.save(tmp_path / "pq.faiss")
    back = VectorIndex.load(tmp_path / "pq.faiss", "ivfpq", idx.config)
    assert back.search_setting == setting
    np.testing.assert_array_equal(back.search(queries, 10)[1], idx.search(queries, 10)[1])


def test_ivfpq_calibration_lengthens_the_reranked_list_where_pq_codes_rank_badly():
    # structureless vectors: 4-bit PQ codes rank poorly, so even every list scanned misses
    # neighbours until more candidates are re-ranked exactly
    rng = np.random.default_rng(8)
    gallery = _unit(rng.standard_normal((6_000, 32)))
    fixed = VectorIndex.build(gallery, IndexConfig(kind="ivfpq", ivf_nprobe=10**6, target_recall=None))
    calibrated = VectorIndex.build(gallery, IndexConfig(kind="ivfpq", target_recall=0.95))
    assert fixed.search_setting["nprobe"] == fixed.search_setting["nlist"]  # the coarse stage misses nothing
    assert fixed.probe_recall(gallery).mean < 0.95
    assert calibrated.recall >= 0.95 and float(calibrated.search_setting["re-rank"][:-1]) > 16


def test_calibration_settles_on_the_cheapest_nprobe_that_reaches_the_target():
    rng = np.random.default_rng(5)
    gallery = _unit(rng.standard_normal((20_000, 32)))
    idx = VectorIndex.build(gallery, IndexConfig(kind="ivf", ivf_nprobe=4, target_recall=0.95))
    best = idx.search_setting["nprobe"]
    reached = idx.probe_recall(gallery)
    # the aim: 0.95 plus two standard errors of the mean over the probe queries
    assert reached.mean == pytest.approx(idx.recall) and reached.mean >= 0.95 + 2 * reached.standard_error > 0.95
    # one bisection step lower misses it: doubling alone would have stopped at a power of two
    idx.index.nprobe = best - max(1, best // 8)
    assert not idx.probe_recall(gallery).reaches(0.95)


def test_probe_recall_margin_is_two_standard_errors_over_queries():
    # the same mean of 0.96 is enough when every query reaches it, not when queries disagree
    assert ProbeRecall(np.full(1024, 0.96)).reaches(0.95)
    spread = ProbeRecall(np.r_[np.ones(96), np.full(4, 0.6)])  # mean 0.984, SE 0.0079
    assert spread.mean == pytest.approx(0.984) and spread.standard_error == pytest.approx(0.0079, abs=1e-4)
    assert spread.reaches(0.968) and not spread.reaches(0.969)
    assert ProbeRecall(np.ones(3)).reaches(1.0) and not ProbeRecall(np.r_[np.ones(9), 0.5]).reaches(0.9)
