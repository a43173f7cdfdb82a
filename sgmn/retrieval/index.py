"""Search over product vectors: exact (a matmul) for a room, FAISS for a global catalogue.

The SGMN score of a clip against a product image is ``v·p + λ·a·t`` (v, a: the clip's visual and
ASR embeddings; p, t: the product's image and title embeddings; a or t are zero vectors when the
text is missing). Concatenating ``[p, λ·t]`` on the gallery side and ``[v, a]`` on the query side
turns it into one inner product, so exact search and every FAISS index (inner-product metric)
compute exactly the model's score. A product with several images scores as its best image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

import faiss
import numpy as np

from sgmn.retrieval.store import RoomVectors

IndexKind = Literal["flat", "ivf", "hnsw"]


@dataclass
class IndexConfig:
    """Which FAISS index a global catalogue gets, and its search-time settings."""

    kind: Optional[IndexKind] = None  # None: chosen by catalogue size with the thresholds below
    flat_below: int = 50_000  # fewer rows than this: exact flat index
    ivf_below: int = 1_000_000  # fewer rows than this: IVF-Flat; otherwise HNSW
    ivf_nlist: Optional[int] = None  # None: about 4·sqrt(rows), at least 1, at most rows / 39
    ivf_nprobe: int = 64  # lists scanned per query (the starting point when calibrating)
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128  # candidate list per query (the starting point when calibrating)
    # Approximate indexes are calibrated when built: nprobe / efSearch double until recall@10
    # against exact search, on gallery rows used as probe queries, reaches this (None: keep the
    # values above as they are). Structureless vectors need far more probing than embeddings,
    # so a fixed setting cannot suit every gallery.
    target_recall: Optional[float] = 0.95
    calibration_queries: int = 256
    max_ivf_nprobe: int = 1024
    max_hnsw_ef_search: int = 2048
    seed: int = 0

    def choose_kind(self, rows: int) -> IndexKind:
        if self.kind is not None:
            if self.kind not in ("flat", "ivf", "hnsw"):
                raise ValueError(f"index kind must be flat, ivf or hnsw, got {self.kind!r}")
            return self.kind
        if rows < self.flat_below:
            return "flat"
        if rows < self.ivf_below:
            return "ivf"
        return "hnsw"

    def nlist_for(self, rows: int) -> int:
        if self.ivf_nlist is not None:
            return max(1, min(self.ivf_nlist, rows))
        # FAISS wants ~39 training points per centroid; sqrt scaling keeps lists balanced.
        return max(1, min(int(4 * math.sqrt(rows)), rows // 39 or 1))


def gallery_matrix(room: RoomVectors, text_weight: float, main_image_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[p, λ·t]`` for search, and the product index of each row."""
    rows = room.main_rows if main_image_only else np.arange(len(room.row_product))
    product_of_row = room.row_product[rows]
    if len(rows) == 0:
        return np.zeros((0, 0), np.float32), product_of_row
    titles = room.titles[product_of_row] * np.float32(text_weight)
    return np.ascontiguousarray(np.concatenate([room.images[rows], titles], axis=1), np.float32), product_of_row


def query_matrix(visual: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Rows ``[v, a]`` (``a`` is zeros for a clip without ASR)."""
    return np.ascontiguousarray(np.concatenate([visual, text], axis=1), np.float32)


def best_per_product(scores: np.ndarray, product_of_row: np.ndarray, n_products: int) -> np.ndarray:
    """(B, rows) image scores -> (B, n_products) product scores (max over a product's images)."""
    out = np.full((scores.shape[0], n_products), -np.inf, np.float32)
    np.maximum.at(out, (slice(None), product_of_row), scores)
    return out


def exact_search(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product, sorted by score (ties broken by row order); (scores, rows)."""
    scores = queries @ gallery.T
    k = min(k, gallery.shape[0])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


class VectorIndex:
    """A FAISS inner-product index over gallery rows (flat, IVF-Flat or HNSW-Flat)."""

    def __init__(self, index: faiss.Index, kind: IndexKind, config: IndexConfig):
        self.index = index
        self.kind = kind
        self.config = config
        self.recall: Optional[float] = None  # calibration recall@10, when calibrated at build

    @classmethod
    def build(
        cls, vectors: np.ndarray, config: Optional[IndexConfig] = None, ids: Optional[np.ndarray] = None
    ) -> "VectorIndex":
        """Build (and calibrate) an index. With ``ids`` (int64, one per row) search returns those
        ids instead of row numbers, and :meth:`add` / :meth:`remove` update it in place."""
        config = config or IndexConfig()
        vectors = np.ascontiguousarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise ValueError(f"need a non-empty (rows, dim) matrix to index, got shape {vectors.shape}")
        n, dim = vectors.shape
        kind = config.choose_kind(n)
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, config.nlist_for(n), faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = config.seed
            index.train(vectors)
        else:
            index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.hnsw_ef_construction
        if ids is not None and kind != "ivf":
            # IVF lists store ids themselves (and remove them); flat and HNSW need an id map
            index = faiss.IndexIDMap2(index)
        built = cls(index, kind, config)
        if ids is None:
            index.add(vectors)
        else:
            built.add(vectors, ids)
        if kind == "ivf":
            index.nprobe = min(config.ivf_nprobe, index.nlist)
        elif kind == "hnsw":
            built._inner.hnsw.efSearch = config.hnsw_ef_search
        if kind != "flat" and config.target_recall is not None:
            built.recall = built.calibrate(vectors, config.target_recall, row_ids=ids)
        return built

    @property
    def _inner(self) -> faiss.Index:
        """The index under an id map (or the index itself)."""
        if isinstance(self.index, faiss.IndexIDMap2):
            return faiss.downcast_index(self.index.index)
        return self.index

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add rows with their int64 ids (no rebuild; an IVF keeps its trained centroids)."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, np.int64))

    @property
    def can_remove(self) -> bool:
        """HNSW graphs cannot drop nodes: callers keep a delete map and rebuild now and then."""
        return self.kind != "hnsw"

    def remove(self, ids: np.ndarray) -> int:
        """Remove rows by id (flat and IVF only); returns how many were removed."""
        if not self.can_remove:
            raise ValueError("an HNSW index cannot remove vectors (keep a delete map and rebuild)")
        return int(self.index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, np.int64))))

    def calibrate(self, vectors: np.ndarray, target: float, k: int = 10, row_ids: Optional[np.ndarray] = None) -> float:
        """Double nprobe (IVF) or efSearch (HNSW) until recall@k on probe queries reaches
        ``target`` or the configured maximum; returns the recall reached.

        Probe queries are gallery rows; each row itself is left out of both result lists so
        that finding itself does not inflate the recall. FAISS stores both settings in the index
        file, so a reloaded index keeps its calibration.
        """
        n = vectors.shape[0]
        rng = np.random.default_rng(self.config.seed)
        probe_rows = rng.choice(n, size=min(self.config.calibration_queries, n), replace=False)
        queries = vectors[probe_rows]
        kk = min(k + 1, n)
        _, exact = exact_search(queries, vectors, kk)

        position = None
        if row_ids is not None and not np.array_equal(row_ids, np.arange(n)):
            position = {int(i): r for r, i in enumerate(row_ids)}  # ids back to row numbers

        def recall() -> float:
            _, found = self.index.search(queries, kk)
            if position is not None:
                found = np.vectorize(lambda i: position.get(int(i), -1), otypes=[np.int64])(found)
            hits = total = 0
            for row, want, got in zip(probe_rows, exact, found):
                want = set(want.tolist()) - {int(row)}
                got = set(got.tolist()) - {int(row), -1}
                hits += len(want & got)
                total += len(want)
            return hits / max(total, 1)

        reached = recall()
        while reached < target:
            if self.kind == "ivf":
                if self.index.nprobe >= min(self.index.nlist, self.config.max_ivf_nprobe):
                    break
                self.index.nprobe = min(2 * self.index.nprobe, self.index.nlist, self.config.max_ivf_nprobe)
            else:
                hnsw = self._inner.hnsw
                if hnsw.efSearch >= self.config.max_hnsw_ef_search:
                    break
                hnsw.efSearch = min(2 * hnsw.efSearch, self.config.max_hnsw_ef_search)
            reached = recall()
        return reached

    @property
    def search_setting(self) -> dict:
        """The search-time parameter in force (after calibration), for reports."""
        if self.kind == "ivf":
            return {"nlist": self.index.nlist, "nprobe": self.index.nprobe}
        if self.kind == "hnsw":
            return {"M": self.config.hnsw_m, "efSearch": self._inner.hnsw.efSearch}
        return {}

    @property
    def size(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (B, k); rows are -1 where the index found fewer than k."""
        queries = np.ascontiguousarray(queries, np.float32)
        k = max(1, min(k, self.size))
        if self.kind == "hnsw" and self._inner.hnsw.efSearch < k:
            self._inner.hnsw.efSearch = k  # HNSW cannot return more than efSearch results
        return self.index.search(queries, k)

    def save(self, path: Union[str, Path]) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Union[str, Path], kind: IndexKind, config: IndexConfig) -> "VectorIndex":
        return cls(faiss.read_index(str(path)), kind, config)
