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

IndexKind = Literal["flat", "ivf", "ivfpq", "hnsw"]
INDEX_KINDS = ("flat", "ivf", "ivfpq", "hnsw")


@dataclass
class IndexConfig:
    """Which FAISS index a global catalogue gets, and its search-time settings."""

    # None: chosen by catalogue size: exact flat below ``flat_below`` rows, ``large_kind`` above.
    # Kinds: "flat" (exact), "ivf" (IVF-Flat), "ivfpq" (IVF with an HNSW coarse quantizer, 4-bit
    # PQ fast-scan codes and exact re-ranking of a short list), "hnsw" (HNSW-Flat).
    kind: Optional[IndexKind] = None
    flat_below: int = 50_000  # fewer rows than this: exact flat index
    # Above flat_below: IVF-PQ + re-ranking. Measured (docs/benchmarks.md, "Scale"): under 10 ms per
    # query (p50) at recall@10 >= 0.95 on 1M rows; IVF-Flat scans a fifth of its lists for that
    # (11 ms at 200k rows already), HNSW builds 3x fewer rows per second (at 200k rows; slower as
    # the graph grows) and cannot remove rows.
    large_kind: IndexKind = "ivfpq"
    ivf_nlist: Optional[int] = None  # None: about 4·sqrt(rows), at least 1, at most rows / 39
    ivf_nprobe: int = 64  # lists scanned per query (the starting point when calibrating)
    # IVF-PQ: k-means trains on at most this many rows per list (FAISS wants >= 39); training on
    # every row of a 1M catalogue would cost minutes and gain nothing
    ivf_train_per_list: int = 40
    pq_dims_per_code: int = 4  # IVF-PQ: dimensions per 4-bit sub-quantizer (512-d: 128 codes, 64 bytes)
    refine_factor: int = 16  # IVF-PQ: candidates re-ranked exactly per result wanted
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128  # candidate list per query (the starting point when calibrating)
    # Approximate indexes are calibrated when built: nprobe / efSearch double until recall@10
    # against exact search, on gallery rows used as probe queries, reaches this (None: keep the
    # values above as they are). Structureless vectors need far more probing than embeddings,
    # so a fixed setting cannot suit every gallery.
    target_recall: Optional[float] = 0.95
    # probe queries for calibration: the margin above the target shrinks as 1/sqrt(this)
    calibration_queries: int = 1024
    max_ivf_nprobe: int = 1024
    max_hnsw_ef_search: int = 2048
    max_refine_factor: int = 256
    seed: int = 0

    def choose_kind(self, rows: int) -> IndexKind:
        if self.kind is not None:
            if self.kind not in INDEX_KINDS:
                raise ValueError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got {self.kind!r}")
            return self.kind
        if rows < self.flat_below:
            return "flat"
        if self.large_kind not in INDEX_KINDS or self.large_kind == "flat":
            raise ValueError(f"large_kind must be ivf, ivfpq or hnsw, got {self.large_kind!r}")
        return self.large_kind

    def nlist_for(self, rows: int) -> int:
        if self.ivf_nlist is not None:
            return max(1, min(self.ivf_nlist, rows))
        # FAISS wants ~39 training points per centroid; sqrt scaling keeps lists balanced.
        return max(1, min(int(4 * math.sqrt(rows)), rows // 39 or 1))

    def pq_codes_for(self, dim: int) -> int:
        """Sub-quantizers of an IVF-PQ index: about ``dim / pq_dims_per_code``, dividing ``dim``."""
        want = max(1, dim // max(1, self.pq_dims_per_code))
        return min((m for m in range(1, dim + 1) if dim % m == 0), key=lambda m: (abs(m - want), -m))


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


def top_rows(queries: np.ndarray, gallery: np.ndarray, k: int, chunk: int = 64) -> np.ndarray:
    """Exact top-k rows by inner product, sorted, in query chunks (no full sort of a 1M-row
    score matrix; ties in any order): what calibration compares an index against."""
    k = min(k, len(gallery))
    out = []
    for lo in range(0, len(queries), chunk):
        s = queries[lo:lo + chunk] @ gallery.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
        out.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(out)


def exact_search(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product, sorted by score (ties broken by row order); (scores, rows)."""
    scores = queries @ gallery.T
    k = min(k, gallery.shape[0])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@dataclass(frozen=True)
class ProbeRecall:
    """Recall@k of each probe query at one search setting."""

    per_query: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.per_query.mean())

    @property
    def standard_error(self) -> float:
        n = len(self.per_query)
        return float(self.per_query.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0

    def reaches(self, target: float) -> bool:
        """Whether the mean is at least ``target`` plus two standard errors: a setting chosen
        where the mean only touches the target misses it on new queries about half the time.
        The error is taken over queries, not over their k neighbours: a query's neighbours are
        found or missed together, so counting them as independent draws understates it."""
        return self.mean >= min(1.0, target + 2 * self.standard_error)


class VectorIndex:
    """A FAISS inner-product index over gallery rows (flat, IVF-Flat, IVF-PQ + re-ranking or HNSW-Flat)."""

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
        elif kind == "ivfpq":
            nlist = config.nlist_for(n)
            # the HNSW coarse quantizer finds the nprobe nearest of thousands of centroids in far
            # less time than a flat scan of them; fast-scan PQ codes are scanned in SIMD registers;
            # RFlat keeps the full vectors and re-ranks refine_factor·k candidates exactly
            key = f"IVF{nlist}_HNSW32,PQ{config.pq_codes_for(dim)}x4fs,RFlat"
            index = faiss.index_factory(dim, key, faiss.METRIC_INNER_PRODUCT)
            ivf = faiss.downcast_index(faiss.downcast_index(index).base_index)
            ivf.cp.seed = config.seed
            # k-means assigns with an exact flat index (by default it would rebuild and search
            # the HNSW quantizer every iteration: slower, and approximate)
            clustering = faiss.IndexFlatIP(dim)
            ivf.clustering_index = clustering
            train_rows = min(n, max(config.ivf_train_per_list * nlist, 256))
            sample = vectors if train_rows >= n else vectors[
                np.sort(np.random.default_rng(config.seed).choice(n, train_rows, replace=False))]
            index.train(sample)
            ivf.clustering_index = None  # owned by Python: not left dangling in the index
            del clustering
            faiss.downcast_index(index).k_factor = config.refine_factor
        else:
            index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.hnsw_ef_construction
        if ids is not None and kind != "ivf":
            # IVF lists store ids themselves (and remove them); flat, HNSW and the re-ranking
            # layer of IVF-PQ (which finds full vectors by position) need an id map
            index = faiss.IndexIDMap2(index)
        built = cls(index, kind, config)
        if ids is None:
            index.add(vectors)
        else:
            built.add(vectors, ids)
        if kind in ("ivf", "ivfpq"):
            built._set_nprobe(config.ivf_nprobe)
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

    @property
    def _ivf(self) -> faiss.IndexIVF:
        """The inverted-file index (IVF kinds): under the id map and, for IVF-PQ, the re-ranking."""
        inner = self._inner
        if self.kind == "ivfpq":
            return faiss.downcast_index(faiss.downcast_index(inner).base_index)
        return inner

    def _set_nprobe(self, nprobe: int) -> None:
        ivf = self._ivf
        ivf.nprobe = max(1, min(nprobe, ivf.nlist))
        if self.kind == "ivfpq":
            # an HNSW quantizer returns only as good a shortlist as its candidate list allows
            faiss.downcast_index(ivf.quantizer).hnsw.efSearch = max(64, 2 * ivf.nprobe)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add rows with their int64 ids (no rebuild; an IVF keeps its trained centroids)."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, np.int64))

    @property
    def can_remove(self) -> bool:
        """HNSW graphs cannot drop nodes, and IVF-PQ's re-ranking layer stores vectors by position:
        callers keep a delete map and rebuild now and then."""
        return self.kind not in ("hnsw", "ivfpq")

    def remove(self, ids: np.ndarray) -> int:
        """Remove rows by id (flat and IVF only); returns how many were removed."""
        if not self.can_remove:
            raise ValueError(f"an {self.kind} index cannot remove vectors (keep a delete map and rebuild)")
        return int(self.index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, np.int64))))

    def calibrate(self, vectors: np.ndarray, target: float, k: int = 10, row_ids: Optional[np.ndarray] = None) -> float:
        """Double nprobe (IVF kinds) or efSearch (HNSW) until recall@k on probe queries reaches
        ``target`` with confidence (see ``ProbeRecall.reaches``) or the configured maximum, then
        bisect back down between the last setting that missed and the first that reached it (the
        cheapest setting that reaches it, to within an eighth of the step); returns the mean
        recall reached on the probes.

        Probe queries are gallery rows; each row itself is left out of both result lists so
        that finding itself does not inflate the recall (measured at 1M rows: held-out probes
        and in-graph probes reach the same recall). FAISS stores both settings in the index
        file, so a reloaded index keeps its calibration.
        """
        recall = self._recall_probe(vectors, k, row_ids)
        if self.kind in ("ivf", "ivfpq"):
            ceiling = min(self._ivf.nlist, self.config.max_ivf_nprobe)
            get = lambda: self._ivf.nprobe  # noqa: E731
            put = self._set_nprobe
        else:
            ceiling = self.config.max_hnsw_ef_search
            get = lambda: self._inner.hnsw.efSearch  # noqa: E731

            def put(value: int) -> None:
                self._inner.hnsw.efSearch = value

        if self.kind == "ivfpq":
            self._calibrate_refine(recall, target)
        reached, missed = recall(), None
        while not reached.reaches(target) and get() < ceiling:
            missed = get()
            put(min(2 * get(), ceiling))
            reached = recall()
        if missed is not None and reached.reaches(target):
            good, good_recall = get(), reached
            while good - missed > max(1, good // 8):
                middle = (missed + good) // 2
                put(middle)
                r = recall()
                if r.reaches(target):
                    good, good_recall = middle, r
                else:
                    missed = middle
            put(good)
            reached = good_recall
        return reached.mean

    def probe_recall(self, vectors: np.ndarray, k: int = 10, row_ids: Optional[np.ndarray] = None) -> ProbeRecall:
        """Recall@k at the current settings on the probe queries calibration uses (gallery rows,
        each left out of both result lists)."""
        return self._recall_probe(vectors, k, row_ids)()

    def _recall_probe(self, vectors: np.ndarray, k: int, row_ids: Optional[np.ndarray]):
        n = vectors.shape[0]
        rng = np.random.default_rng(self.config.seed)
        probe_rows = rng.choice(n, size=min(self.config.calibration_queries, n), replace=False)
        queries = vectors[probe_rows]
        kk = min(k + 1, n)
        exact = top_rows(queries, vectors, kk)

        position = None
        if row_ids is not None and not np.array_equal(row_ids, np.arange(n)):
            position = {int(i): r for r, i in enumerate(row_ids)}  # ids back to row numbers

        def recall() -> ProbeRecall:
            _, found = self.index.search(queries, kk)
            if position is not None:
                found = np.vectorize(lambda i: position.get(int(i), -1), otypes=[np.int64])(found)
            per_query = []
            for row, want, got in zip(probe_rows, exact, found):
                want = set(want.tolist()) - {int(row)}
                got = set(got.tolist()) - {int(row), -1}
                per_query.append(len(want & got) / max(len(want), 1))
            return ProbeRecall(np.asarray(per_query))

        return recall

    def _calibrate_refine(self, recall, target: float) -> None:
        """IVF-PQ: with the widest probing allowed, double the re-ranked share while the recall
        is short of ``target`` and still rises (PQ codes rank badly on structureless vectors;
        no nprobe makes up for too short a list to re-rank). nprobe is calibrated after this."""
        refine = faiss.downcast_index(self._inner)
        start = self._ivf.nprobe
        self._set_nprobe(min(self._ivf.nlist, self.config.max_ivf_nprobe))
        reached = recall()
        while not reached.reaches(target) and refine.k_factor < self.config.max_refine_factor:
            refine.k_factor = min(2 * refine.k_factor, self.config.max_refine_factor)
            before, reached = reached, recall()
            if reached.mean < before.mean + 0.002:
                refine.k_factor /= 2  # the short list is not what misses: probing is
                break
        self._set_nprobe(start)

    @property
    def search_setting(self) -> dict:
        """The search-time parameter in force (after calibration), for reports."""
        if self.kind == "ivf":
            return {"nlist": self.index.nlist, "nprobe": self.index.nprobe}
        if self.kind == "ivfpq":
            ivf = self._ivf
            return {"nlist": ivf.nlist, "nprobe": ivf.nprobe, "PQ": f"{ivf.pq.M}x4",
                    "re-rank": f"{faiss.downcast_index(self._inner).k_factor:g}k"}
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
