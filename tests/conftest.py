"""Shared fixtures: the retrieval suites run on every retrieval backend."""

from __future__ import annotations

from pathlib import Path

import pytest

# the embedded FAISS/SQLite store (a folder) and Milvus Lite (a ``.db`` path, in-process, no network)
BACKENDS = ["faiss", "milvus"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture()
def store_at(backend, tmp_path):
    """``store_at("name")``: the ``--store`` path of a new store of this test's backend."""

    def make(name: str = "store") -> Path:
        return tmp_path / (f"{name}.db" if backend == "milvus" else name)

    return make
