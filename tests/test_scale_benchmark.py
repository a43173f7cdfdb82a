"""`benchmarks/scale.py --smoke`: every backend index is built, measured and rendered (issue 13.3)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import scale  # noqa: E402


def test_scale_smoke_measures_every_backend_and_writes_its_section(tmp_path):
    doc = tmp_path / "bench.md"
    rows = scale.run(scale.smoke_config(), doc=doc)
    methods = [r["method"] for r in rows]
    assert methods == ["FAISS IVF", "FAISS IVF-PQ + re-rank", "FAISS HNSW", "Milvus Lite HNSW", "exact, one room"]
    for r in rows:
        assert 0.9 <= r["recall@10"] <= 1.0  # tiny catalogues: (almost) exact
        assert r["recall_ci95"][0] <= r["recall@10"] <= r["recall_ci95"][1]
        assert 0 < r["p50_ms"] <= r["p99_ms"] and 0 < r["batched_p50_ms"] <= r["batched_p99_ms"]
    for r in rows[:4]:  # one product added and removed without a rebuild: far below the build time
        assert r["build_s"] > 0 and 0 < r["add_ms"] / 1e3 < r["build_s"] and np.isfinite(r["remove_ms"])
    milvus = rows[3]  # measured once every flushed segment has its own HNSW (wait_until_indexed raises otherwise)
    assert milvus["segments"] and sum(milvus["segments"]) == milvus["rows"] and 0 < milvus["insert_s"] < milvus["build_s"]
    text = doc.read_text()
    assert "<!-- scale:start -->" in text and "Milvus Lite HNSW" in text and "add 1 product ms" in text


def test_noise_raises_the_intrinsic_dimension_and_moves_some_neighbours():
    effect = scale.noise_effect(3_000, dim=128, queries=50)
    assert 0.2 < effect["top10_overlap"] < 1.0  # the noise moves some of the top-10, not all
    assert effect["clean"]["lid"] < effect["noisy"]["lid"]
    assert effect["noisy"]["contrast"] > 1.0


def test_goal_line_names_the_indexes_that_miss_it():
    row = {"rows": scale.GOAL_ROWS, "setting": "M 32, ef 64; 3 segments", "p99_ms": 9.0}
    line = scale.goal_line([dict(row, method="FAISS IVF-PQ + re-rank", p50_ms=2.0, **{"recall@10": 0.96, "recall_ci95": [0.955, 0.965]}),
                            dict(row, method="FAISS HNSW", p50_ms=1.5, **{"recall@10": 0.94, "recall_ci95": [0.935, 0.945]}),
                            dict(row, method="Milvus Lite HNSW", p50_ms=600.0, **{"recall@10": 0.99, "recall_ci95": [0.99, 0.99]})])
    met, missed = line.split("Missed by")
    assert "**met** by FAISS IVF-PQ" in met and "HNSW" not in met
    assert "recall 0.960 [0.955, 0.965]" in met
    assert "FAISS HNSW (1.50 ms p50" in missed and "Milvus Lite HNSW, M 32, ef 64 (600.00 ms p50" in missed


def test_recall_interval_is_over_queries_not_neighbours():
    exact = np.arange(40).reshape(4, 10)
    found = exact.copy()
    found[0, :6] += 100  # one query finds 4 of 10, three find all: mean 0.85
    r = scale.recall_ci(found, exact)
    per_query = np.array([0.4, 1, 1, 1])
    half = 1.96 * per_query.std(ddof=1) / 2
    assert r["recall@10"] == 0.85 and np.allclose(r["recall_ci95"], [0.85 - half, 0.85 + half])
