"""Search over every room of a store at once (the "catalogue"), kept up to date incrementally.

A backend hands the Retriever a catalogue searcher (:meth:`GalleryStore.catalogue`); both
implement :class:`Catalogue`. :class:`FaissCatalogue` is the embedded one: a FAISS index over
every product image row ``[p, λ·t]``, held in the process's memory. Adding, replacing or
removing products does not rebuild it: each room's generation (bumped by every committed
change, by any process) says which rooms changed, and only their products are diffed by the
version of their vectors; new rows are added with fresh ids (IVF keeps its trained centroids,
flat and HNSW sit under an id map) and old rows are removed (flat, IVF) or masked by a delete
map (HNSW cannot drop graph nodes) until masked rows exceed :attr:`FaissCatalogue.rebuild_masked`
of the index, when it is rebuilt. A catalogue that outgrows the size its index kind was chosen
for is rebuilt with the kind its new size calls for.

A full build is saved under ``index/`` with the row ids it used, so that another process (or a
restart) loads it and applies only the changes made since.
"""

from __future__ import annotations

import hashlib
import json
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from sgmn.retrieval.index import IndexConfig, VectorIndex, gallery_matrix
from sgmn.retrieval.store import ProductRecord


class Catalogue(ABC):
    """What the Retriever needs for a search over all rooms."""

    @abstractmethod
    def search(
        self, query: np.ndarray, k: int, text_weight: float, main_image_only: bool, fingerprint: str
    ) -> list[tuple[float, ProductRecord]]:
        """Best ``k`` products (a product scores as its best image) for one ``[v, a]`` query row."""


def best_products(found, k: int, record_of, skip=frozenset()) -> tuple[list[tuple[float, ProductRecord]], int]:
    """(scores, ids) of one query, sorted -> the best ``k`` distinct products, and rows seen."""
    best: dict[tuple[str, str], tuple[float, ProductRecord]] = {}
    scores, ids = found
    for s, i in zip(scores, ids):
        i = int(i)
        if i < 0 or i in skip:
            continue
        rec = record_of(i)
        key = (rec.room_id, rec.product_id)
        if key not in best:  # results come sorted, so the first is the product's best image
            best[key] = (float(s), rec)
    return sorted(best.values(), key=lambda h: -h[0])[:k], len(best)


class FaissCatalogue(Catalogue):
    rebuild_masked = 0.2  # HNSW: rebuild once this fraction of its rows is masked as deleted
    rebuild_growth = 2.0  # rebuild when the index grew this much and its size calls for another kind

    def __init__(self, store, config: IndexConfig):
        self.store = store
        self.config = config
        self._lock = threading.Lock()
        self._key: Optional[tuple] = None
        self._index: Optional[VectorIndex] = None
        self._built_size = 0
        self._generations: dict[str, int] = {}  # room -> the generation folded into the index
        self._products: dict[str, dict[str, tuple[str, list[int]]]] = {}  # room -> pid -> (vectors, ids)
        self._records: dict[int, ProductRecord] = {}
        self._masked: set[int] = set()
        self._next_id = 0
        self.stats = {"builds": 0, "loads": 0, "rows_added": 0, "rows_removed": 0}

    # ---- searching -------------------------------------------------------------------------
    def search(self, query, k, text_weight, main_image_only, fingerprint):
        with self._lock:  # FAISS may not be searched while it is being changed
            self.refresh(text_weight, main_image_only, fingerprint)
            index = self._index
            if index is None:
                return []
            # masked rows are skipped below and the list widened while too few products remain;
            # not widened up front by the number masked, which reaches 20% of a large index
            # (HNSW, IVF-PQ) before a rebuild and would make every search scan that many
            kk = min(index.size, k * 4)
            while True:
                scores, ids = index.search(query, kk)
                hits, found = best_products((scores[0], ids[0]), k, self._records.__getitem__, self._masked)
                if found >= k or kk >= index.size:
                    return hits
                kk = min(index.size, kk * 4)

    @property
    def index(self) -> Optional[VectorIndex]:
        return self._index

    @property
    def masked(self) -> int:
        return len(self._masked)

    # ---- keeping up with the store ---------------------------------------------------------
    def refresh(self, text_weight: float, main_image_only: bool, fingerprint: str) -> None:
        """Fold every committed change since the last call into the index (see module doc)."""
        key = (fingerprint, float(text_weight), bool(main_image_only), json.dumps(asdict(self.config), sort_keys=True))
        generations = self.store.room_generations()
        if key != self._key:
            self._reset(key)
            if not self._load(generations):
                self._build(generations)
                return
        changed = sorted(r for r in set(generations) | set(self._generations) if generations.get(r) != self._generations.get(r))
        if not changed:
            return
        if self._index is None:
            self._build(generations)
            return
        add_rows, add_ids, remove = [], [], []
        for room in changed:
            old = self._products.pop(room, {})
            new: dict[str, tuple[str, list[int]]] = {}
            if room in generations:
                rv = self.store.room_vectors(room)
                if rv.product_ids:
                    gallery, product_of_row = gallery_matrix(rv, text_weight, main_image_only)
                    for i, rec in enumerate(rv.records):
                        version = rec.vectors_path.name
                        prev = old.pop(rec.product_id, None)
                        if prev is not None and prev[0] == version:
                            new[rec.product_id] = prev
                            continue
                        if prev is not None:
                            old[rec.product_id] = prev  # replaced: its old rows go
                        rows = np.flatnonzero(product_of_row == i)
                        ids = list(range(self._next_id, self._next_id + len(rows)))
                        self._next_id += len(rows)
                        add_rows.append(gallery[rows])
                        add_ids += ids
                        for row_id in ids:
                            self._records[row_id] = rec
                        new[rec.product_id] = (version, ids)
                self._products[room] = new
            for _, ids in old.values():
                remove += ids
            self._generations.pop(room, None)
            if room in generations:
                self._generations[room] = generations[room]
        if add_rows:
            self._index.add(np.concatenate(add_rows), np.asarray(add_ids, np.int64))
            self.stats["rows_added"] += len(add_ids)
        if remove:
            if self._index.can_remove:
                self._index.remove(np.asarray(remove, np.int64))
            else:
                self._masked.update(remove)
            for row_id in remove:
                self._records.pop(row_id, None)
            self.stats["rows_removed"] += len(remove)
        live = self._index.size - len(self._masked)
        if (
            live == 0
            or len(self._masked) > self.rebuild_masked * self._index.size
            or (
                self._index.size > self.rebuild_growth * self._built_size
                and self.config.choose_kind(live) != self._index.kind
            )
        ):
            self._build(generations)

    def _reset(self, key) -> None:
        self._key = key
        self._index = None
        self._generations, self._products, self._records, self._masked = {}, {}, {}, set()
        self._next_id = 0

    def _build(self, generations: dict[str, int]) -> None:
        """Index every room from scratch (and save it for other processes and restarts)."""
        _, text_weight, main_image_only, _ = self._key
        self._reset(self._key)
        matrices, ids = [], []
        for room, generation in generations.items():
            rv = self.store.room_vectors(room)
            self._generations[room] = generation
            self._products[room] = {}
            if not rv.product_ids:
                continue
            gallery, product_of_row = gallery_matrix(rv, text_weight, main_image_only)
            matrices.append(gallery)
            for i, rec in enumerate(rv.records):
                rows = np.flatnonzero(product_of_row == i)
                row_ids = list(range(self._next_id, self._next_id + len(rows)))
                self._next_id += len(rows)
                ids += row_ids
                for row_id in row_ids:
                    self._records[row_id] = rec
                self._products[room][rec.product_id] = (rec.vectors_path.name, row_ids)
        self._index = None
        self._built_size = len(ids)
        if matrices:
            # rows are stacked in id order, so the ids of a fresh build are 0..n-1
            self._index = VectorIndex.build(np.concatenate(matrices), self.config, ids=np.asarray(ids, np.int64))
            self._save()
        self.stats["builds"] += 1

    # ---- persistence -----------------------------------------------------------------------
    def _paths(self) -> tuple[Path, Path]:
        name = hashlib.sha256(repr(self._key).encode()).hexdigest()[:16]
        folder = self.store.root / "index"
        return folder / f"catalogue-{name}.faiss", folder / f"catalogue-{name}.json"

    def _save(self) -> None:
        if self.store.read_only:
            return
        index_path, state_path = self._paths()
        if not index_path.parent.is_dir():
            return
        for old in [*index_path.parent.glob("catalogue-*"), *index_path.parent.glob("global-*.faiss")]:
            old.unlink(missing_ok=True)  # other settings' builds, and indexes of sgmn before the catalogue
        state = {
            "generations": self._generations,
            "products": self._products,
            "next_id": self._next_id,
            "kind": self._index.kind,
        }
        # unique temporary names: several processes may save at once; the rename is atomic
        token = f".{threading.get_ident()}.{id(self)}.tmp"
        self._index.save(index_path.with_name(index_path.name + token))
        state_path.with_name(state_path.name + token).write_text(json.dumps(state))
        index_path.with_name(index_path.name + token).replace(index_path)
        state_path.with_name(state_path.name + token).replace(state_path)

    def _load(self, generations: dict[str, int]) -> bool:
        """Load a saved build (then :meth:`refresh` applies the changes made since)."""
        index_path, state_path = self._paths()
        try:
            state = json.loads(state_path.read_text())
            index = VectorIndex.load(index_path, state["kind"], self.config)
        except (OSError, ValueError, KeyError, RuntimeError):
            return False
        products = {room: {pid: (v, list(ids)) for pid, (v, ids) in by_pid.items()} for room, by_pid in state["products"].items()}
        if index.size != sum(len(ids) for by_pid in products.values() for _, ids in by_pid.values()):
            return False  # the two files of different saves: build afresh
        # records of unchanged rooms come from the store as it is now
        records: dict[int, ProductRecord] = {}
        saved_generations = {room: int(g) for room, g in state["generations"].items()}
        for room, by_pid in products.items():
            if generations.get(room) != saved_generations.get(room):
                continue  # refresh() re-reads this room anyway
            current = {r.product_id: r for r in self.store.room_vectors(room).records}
            for pid, (version, ids) in by_pid.items():
                rec = current.get(pid)
                if rec is None or rec.vectors_path.name != version:
                    return False
                for row_id in ids:
                    records[row_id] = rec
        # a changed room keeps its old rows' records until refresh() removes them
        for room, by_pid in products.items():
            if generations.get(room) == saved_generations.get(room):
                continue
            for pid, (version, ids) in by_pid.items():
                placeholder = ProductRecord(room, pid, None, [], [], Path(version), "", 0.0)
                for row_id in ids:
                    records[row_id] = placeholder
        self._index, self._products, self._records = index, products, records
        self._generations, self._next_id = saved_generations, int(state["next_id"])
        self._built_size = index.size
        self.stats["loads"] += 1
        return True
