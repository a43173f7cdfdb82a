"""The Milvus backend: a store whose vectors live in a Milvus collection (``pymilvus``).

Metadata (rooms, products, titles, image names, the model's fingerprint and checkpoint) and
the product images stay in the store folder exactly as in :class:`GalleryStore`, which this
class extends; only where the vectors live and how the whole catalogue is searched change:

* one collection per store (its name is kept in the store's meta); one row per product image:
  ``id`` (int64, allocated from a counter in the store), ``room`` (the partition key, so a room's
  rows sit together), ``product``, ``image`` (0 = main image), ``vec = [p, t]`` (image and title
  embeddings; ``t`` is zeros without a title). A product row references its ids (``milvus:first:n``).
* per-room queries fetch the room's rows by id and rank them exactly (the Retriever's matmul),
  whatever index the collection has; the catalogue search is a Milvus ANN search with the
  query ``[v, λ·a]`` (the same score ``v·p + λ·a·t`` the FAISS rows ``[p, λ·t]`` give).
* crash safety as with files: new rows are inserted before the SQLite commit and old rows
  deleted after it; the ids of both are logged in the meta table (``milvus_pending/...``) before
  the insert, so the check at the next open deletes whichever of them no committed product
  references.

Milvus Lite (a ``.db`` path, embedded in this process) admits one process per file; several
processes (``uvicorn --workers``, a CLI beside the server) need a Milvus server URI.
"""

from __future__ import annotations

import fcntl
import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Optional, Union

import numpy as np

from sgmn.errors import DataError
from sgmn.retrieval.catalogue import Catalogue, best_products
from sgmn.retrieval.errors import NotFound, StoreBusy, StoreCorrupt
from sgmn.retrieval.store import GalleryStore, ProductRecord, ProductVectors

LITE_NAME = "milvus.db"  # Milvus Lite's data folder inside the store folder
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT")
MAX_LIMIT = 16_384  # Milvus's largest search / query limit
_GET_CHUNK = 1_000

_log = logging.getLogger("sgmn.retrieval")

_lite_users: dict[str, int] = {}  # Milvus Lite data folder -> open MilvusStores in this process
_lite_lock = threading.Lock()


class MilvusStore(GalleryStore):
    """A :class:`GalleryStore` whose vectors live in Milvus (see the module docstring)."""

    backend = "milvus"

    def __init__(
        self,
        root: Union[str, Path],
        server: Optional[str] = None,
        create: bool = True,
        read_only: bool = False,
        index_type: str = "HNSW",
        token: Optional[str] = None,
        db_name: Optional[str] = None,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 200,
        hnsw_ef: int = 256,
        ivf_nlist: int = 1024,
        ivf_nprobe: int = 64,
    ):
        if index_type not in INDEX_TYPES:
            raise DataError(f"Milvus index must be one of {INDEX_TYPES}, got {index_type!r}", key="--store")
        self.server = server
        self.index_type = index_type
        self._token, self._db_name = token, db_name
        self._params = dict(M=hnsw_m, efConstruction=hnsw_ef_construction, ef=hnsw_ef, nlist=ivf_nlist, nprobe=ivf_nprobe)
        self._client = None
        self._lite_path: Optional[str] = None
        self._client_lock = threading.Lock()
        self._pending_keys: list[str] = []
        super().__init__(root, create=create, read_only=read_only)

    # ---- connection ------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return self.server or str(self.root / LITE_NAME)

    def client(self):
        with self._client_lock:
            if self._client is None:
                try:
                    from pymilvus import MilvusClient
                except ImportError:
                    raise DataError(
                        "the Milvus backend needs pymilvus and milvus-lite: pip install 'sgmn[milvus]'", file=self.root
                    ) from None

                if self.server is None:
                    self._lite_path = self._claim_lite()
                try:
                    self._client = MilvusClient(self.uri, token=self._token or "", db_name=self._db_name or "")
                    name = self.collection
                    if name is not None:
                        if not self._client.has_collection(name):
                            raise StoreCorrupt(f"Milvus at {self.uri} has no collection {name}, which this store's vectors are in", file=self.root)
                        self._client.load_collection(name)
                except StoreCorrupt:
                    self._close_client()
                    raise
                except Exception as err:  # pymilvus wraps every failure in its own classes
                    self._close_client()
                    raise DataError(f"cannot connect to Milvus at {self.uri} ({err})", file=self.root) from None
            return self._client

    def _close_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None
        self._release_lite()

    def _claim_lite(self) -> str:
        path = str(Path(self.uri).resolve())
        with _lite_lock:
            if _lite_users.get(path, 0) == 0 and Path(path, "LOCK").exists():
                # Milvus Lite holds an flock on its folder while a process has it open
                with open(Path(path, "LOCK"), "a") as probe:
                    try:
                        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        fcntl.flock(probe, fcntl.LOCK_UN)
                    except BlockingIOError:
                        raise StoreBusy(
                            f"the Milvus Lite file {path} is open in another process (a running `sgmn serve`?) "
                            "and Milvus Lite admits one process: send queries to that server (POST "
                            "/rooms/{room}/query) and changes too (POST /rooms/{room}/products), or keep the "
                            "vectors on a Milvus server (--store http://host:19530?root=FOLDER)"
                        ) from None
            _lite_users[path] = _lite_users.get(path, 0) + 1
        return path

    def _release_lite(self) -> None:
        if self._lite_path is None:
            return
        with _lite_lock:
            _lite_users[self._lite_path] -= 1
            last = _lite_users[self._lite_path] == 0
        if last:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self._lite_path)
        self._lite_path = None

    def close(self) -> None:
        with self._client_lock:
            self._close_client()
        super().close()

    # ---- the collection --------------------------------------------------------------------
    @property
    def collection(self) -> Optional[str]:
        return self.get_meta("milvus_collection")

    def _collection_for(self, dim: int) -> str:
        """The store's collection, created at the first write (its dimension is known then)."""
        name = self.collection
        if name is not None:
            stored = int(self.get_meta("milvus_dim"))
            if stored != dim:
                raise ValueError(f"vectors of dimension {dim} do not fit this store's Milvus collection ({stored})")
            return name
        from pymilvus import DataType

        client = self.client()
        name = f"sgmn_{uuid.uuid4().hex[:16]}"
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("room", DataType.VARCHAR, max_length=256, is_partition_key=True)
        schema.add_field("product", DataType.VARCHAR, max_length=256)
        schema.add_field("image", DataType.INT32)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=dim)
        index = client.prepare_index_params()
        params = {}
        if self.index_type == "HNSW":
            params = {"M": self._params["M"], "efConstruction": self._params["efConstruction"]}
        elif self.index_type == "IVF_FLAT":
            params = {"nlist": self._params["nlist"]}
        index.add_index(field_name="vec", index_type=self.index_type, metric_type="IP", params=params)
        client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
        client.load_collection(name)
        self.set_meta("milvus_collection", name)
        self.set_meta("milvus_dim", str(dim))
        self.set_meta("milvus_index", self.index_type)
        return name

    def _allocate_ids(self, n: int) -> list[int]:
        start = int(self.get_meta("milvus_next_id") or 0)
        self.set_meta("milvus_next_id", str(start + n))
        return list(range(start, start + n))

    def _log_pending(self, ids: list[int]) -> None:
        if ids:
            key = f"milvus_pending/{uuid.uuid4().hex}"
            self.set_meta(key, json.dumps(ids))
            self._pending_keys.append(key)

    @staticmethod
    def ids_of(record: ProductRecord) -> list[int]:
        ref = record.vectors_path.name
        if not ref.startswith("milvus:"):
            raise StoreCorrupt(f"product {record.product_id!r} has no Milvus vectors ({ref!r})")
        _, first, n, _ = ref.split(":")
        return list(range(int(first), int(first) + int(n)))

    # ---- writing (hooks of GalleryStore.put_products / remove_product / delete_room) ---------
    def _write_vectors(self, room, product_id, token, vec: ProductVectors, written: list) -> str:
        d = vec.images.shape[1]
        name = self._collection_for(2 * d)
        ids = self._allocate_ids(len(vec.images))
        self._log_pending(ids)  # before the insert: a crash after it leaves a trace to clean
        title = np.asarray(vec.title, np.float32)
        rows = [
            {
                "id": row_id,
                "room": room,
                "product": product_id,
                "image": j,
                "vec": np.concatenate([vec.images[j].astype(np.float32), title]).tolist(),
            }
            for j, row_id in enumerate(ids)
        ]
        self.client().insert(name, rows)
        written.append(_Rows(ids))
        return f"milvus:{ids[0]}:{len(ids)}:{int(vec.has_title)}"

    def _discard(self, written: list) -> None:
        ids = [i for w in written if isinstance(w, _Rows) for i in w.ids]
        super()._discard([w for w in written if not isinstance(w, _Rows)])
        if ids and self.collection is not None:
            self.client().delete(self.collection, ids=ids)
        self._clear_pending()

    def _before_commit(self, room: str, written: list, replaced: list[ProductRecord]) -> None:
        self._log_pending([i for rec in replaced for i in self.ids_of(rec)])

    def _after_commit(self, room: str, removed: list[ProductRecord]) -> None:
        ids = [i for rec in removed for i in self.ids_of(rec)]
        try:
            if ids:
                self.client().delete(self.collection, ids=ids)
        except Exception as err:  # the change is committed: never an error for it
            # the rows stay logged as pending, so the check at the next open deletes them; until
            # then searches skip them (they are not in any committed product's id range)
            _log.warning("could not delete %d Milvus row(s) after commit (%s); the next open removes them", len(ids), err)
            self._pending_keys = []
            return
        self._clear_pending()

    def _clear_pending(self) -> None:
        for key in self._pending_keys:
            self.delete_meta(key)
        self._pending_keys = []

    def _committed_files(self, record: ProductRecord) -> list[Path]:
        return list(record.image_paths)  # the vectors are in Milvus, not in files

    def _check_vectors(self) -> int:
        """Delete logged rows that no committed product references (a crash mid-write)."""
        pending = self.meta_items("milvus_pending/")
        if not pending:
            return 0
        referenced = {i for room in self.list_rooms() for rec in self.list_products(room) for i in self.ids_of(rec)}
        orphans = sorted({i for ids in pending.values() for i in json.loads(ids)} - referenced)
        if orphans and self.collection is not None:
            self.client().delete(self.collection, ids=orphans)
        for key in pending:
            self.delete_meta(key)
        return len(orphans)

    # ---- reading ---------------------------------------------------------------------------
    def _get_rows(self, ids: list[int]) -> dict[int, dict]:
        if not ids:
            return {}
        name = self.collection
        if name is None:
            raise StoreCorrupt("the store has products but no Milvus collection", file=self.root)
        out: dict[int, dict] = {}
        for start in range(0, len(ids), _GET_CHUNK):
            for row in self.client().get(name, ids=ids[start : start + _GET_CHUNK], output_fields=["id", "image", "vec"]):
                out[int(row["id"])] = row
        return out

    def _vectors_of(self, record: ProductRecord, rows: dict[int, dict]) -> ProductVectors:
        ids = self.ids_of(record)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise StoreCorrupt(
                f"Milvus rows {missing[:5]} of committed product {record.product_id!r} (room "
                f"{record.room_id!r}) are missing from collection {self.collection}",
                file=self.root,
            )
        vec = np.asarray([rows[i]["vec"] for i in ids], np.float32)
        d = vec.shape[1] // 2
        has_title = record.vectors_path.name.endswith(":1")
        return ProductVectors(np.ascontiguousarray(vec[:, :d]), vec[0, d:].copy(), has_title)

    def load_vectors(self, record: ProductRecord) -> ProductVectors:
        return self._vectors_of(record, self._get_rows(self.ids_of(record)))

    def _load_room(self, room: str, records: list[ProductRecord]) -> list[ProductVectors]:
        rows = self._get_rows([i for rec in records for i in self.ids_of(rec)])
        return [self._vectors_of(rec, rows) for rec in records]

    def catalogue(self, config) -> "MilvusCatalogue":
        return MilvusCatalogue(self)


class _Rows:
    """Milvus rows written by a ``put_products`` that has not committed yet."""

    def __init__(self, ids: list[int]):
        self.ids = ids


class MilvusCatalogue(Catalogue):
    """The catalogue search, run by Milvus over the store's collection (always current)."""

    def __init__(self, store: MilvusStore):
        self.store = store

    def search(self, query, k, text_weight, main_image_only, fingerprint):
        name = self.store.collection
        if name is None or self.store.count_products() == 0:
            return []
        q = np.asarray(query, np.float32)[0].copy()
        d = q.shape[0] // 2
        q[d:] *= np.float32(text_weight)  # [v, λ·a]·[p, t] = v·p + λ·a·t
        params = {}
        if self.store.index_type == "HNSW":
            params = {"ef": max(self.store._params["ef"], 4 * k)}
        elif self.store.index_type == "IVF_FLAT":
            params = {"nprobe": self.store._params["nprobe"]}
        limit = min(MAX_LIMIT, 4 * k)
        records: dict[tuple[str, str], Optional[ProductRecord]] = {}

        def record_of(row_id: int) -> ProductRecord:
            return by_id[row_id]

        while True:
            if "ef" in params:
                params["ef"] = max(params["ef"], limit)
            result = self.store.client().search(
                name,
                data=[q.tolist()],
                limit=limit,
                filter="image == 0" if main_image_only else "",
                output_fields=["room", "product"],
                search_params={"metric_type": "IP", "params": params},
            )[0]
            by_id: dict[int, ProductRecord] = {}
            scores, ids = [], []
            for hit in result:
                row_id = int(hit["id"])
                entity = hit.get("entity", {})
                key = (entity["room"], entity["product"])
                if key not in records:
                    try:
                        records[key] = self.store.get_product(*key)
                    except NotFound:
                        records[key] = None  # removed after the search saw it
                rec = records[key]
                # rows of a replaced version (deleted right after the commit) are not the product's
                if rec is None or row_id not in set(MilvusStore.ids_of(rec)):
                    continue
                by_id[row_id] = rec
                scores.append(hit["distance"])
                ids.append(row_id)
            hits, found = best_products((scores, ids), k, record_of)
            if found >= k or len(result) < limit or limit >= MAX_LIMIT:
                return hits
            limit = min(MAX_LIMIT, limit * 4)
