"""The catalogue search over every room, on both backends (issue 13.1, 13.2).

* FAISS: adding, replacing and removing products updates the index in place (no rebuild), for
  flat, IVF and HNSW (a delete map, rebuilt past a threshold), and results stay those of exact
  search; another opener of the store (another process) picks up the changes.
* Milvus: with a FLAT index, the ranking is exactly the exact-search ranking on the same vectors;
  the server URI (``http://...``) works as Milvus Lite does (a Milvus Lite gRPC server on
  127.0.0.1 stands in for a Milvus server: no network).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sgmn.retrieval.backend import open_store
from sgmn.retrieval.index import IndexConfig, exact_search
from sgmn.retrieval.store import GalleryStore, NewProduct, ProductVectors

D = 8
IMG = Image.new("RGB", (4, 4))


def _product(pid: str, rng, n_images: int = 1, title: bool = True) -> NewProduct:
    t = rng.standard_normal(D).astype(np.float32) if title else np.zeros(D, np.float32)
    vec = ProductVectors(rng.standard_normal((n_images, D)).astype(np.float32), t, title)
    return NewProduct(pid, "t" if title else None, [IMG] * n_images, vec)


def _fill(store, rooms=3, per_room=20, seed=0):
    rng = np.random.default_rng(seed)
    for r in range(rooms):
        store.create_room(f"room{r}")
        store.put_products(f"room{r}", [_product(f"p{r}-{i}", rng, 1 + i % 3, title=i % 4 != 0) for i in range(per_room)], "fp")


def _exact(store, query, k, text_weight):
    """Exact ranking: every product of every room, scored as its best image."""
    scored = []
    for room in store.list_rooms():
        rv = store.room_vectors(room)
        for i, rec in enumerate(rv.records):
            rows = rv.images[rv.row_product == i]
            score = float((rows @ query[0, :D] + text_weight * rv.titles[i] @ query[0, D:]).max())
            scored.append((score, rec.room_id, rec.product_id))
    scored.sort(key=lambda s: -s[0])
    return scored[:k]


def _search(store, config, query, k, text_weight=0.7):
    found = store.catalogue(config).search(query, k, text_weight, False, "fp")
    return [(s, rec.room_id, rec.product_id) for s, rec in found]


def _same(found, exact):
    assert [(r, p) for _, r, p in found] == [(r, p) for _, r, p in exact]
    assert [s for s, *_ in found] == pytest.approx([s for s, *_ in exact], abs=1e-4)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_faiss_catalogue_follows_adds_replaces_and_removes_without_rebuilding(tmp_path, kind):
    config = IndexConfig(kind=kind, ivf_nlist=4, ivf_nprobe=4, target_recall=None)
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((5, 2 * D)).astype(np.float32)
    with GalleryStore(tmp_path / "s") as store:
        _fill(store)
        catalogue = store.catalogue(config)
        for q in queries:
            _same(_search(store, config, q[None], 10), _exact(store, q[None], 10, 0.7))
        size = sum(len(store.room_vectors(r).row_product) for r in store.list_rooms())
        assert catalogue.stats["builds"] == 1 and catalogue.index.size == size
        # add, replace (new vectors), remove, a new room: folded in, nothing rebuilt
        store.put_products("room0", [_product("added", rng, 2)], "fp")
        store.put_products("room1", [_product("p1-3", rng, 1)], "fp", replace=True)
        store.remove_product("room2", "p2-5")
        store.create_room("room9")
        store.put_products("room9", [_product("x", rng)], "fp")
        for q in queries:
            _same(_search(store, config, q[None], 10), _exact(store, q[None], 10, 0.7))
        assert catalogue.stats["builds"] == 1
        assert catalogue.stats["rows_added"] == 2 + 1 + 1
        # p1-3 had 1 + 3 % 3 = 1 image, p2-5 had 1 + 5 % 3 = 3
        assert catalogue.stats["rows_removed"] == 1 + 3
        if kind in ("hnsw", "ivfpq"):  # HNSW cannot drop nodes, IVF-PQ's re-ranking rows: masked
            assert catalogue.index.size == size + 4 and catalogue.masked == 4
        else:
            assert catalogue.index.size == size + 4 - 4 and catalogue.masked == 0
        # the replaced and removed products are never returned
        everything = _search(store, config, queries[:1], 1000)
        assert ("room2", "p2-5") not in {(r, p) for _, r, p in everything}
        assert len(everything) == store.count_products()
        store.delete_room("room9")
        assert ("room9", "x") not in {(r, p) for _, r, p in _search(store, config, queries[:1], 1000)}


def test_hnsw_delete_map_is_rebuilt_once_too_much_is_masked(tmp_path):
    config = IndexConfig(kind="hnsw", target_recall=None)
    with GalleryStore(tmp_path / "s") as store:
        _fill(store, rooms=1, per_room=20)
        catalogue = store.catalogue(config)
        q = np.ones((1, 2 * D), np.float32)
        _search(store, config, q, 5)
        for i in range(8):  # 8 products, 1-3 images each: past 20% of the rows
            store.remove_product("room0", f"p0-{i}")
            _same(_search(store, config, q, 5), _exact(store, q, 5, 0.7))
        assert catalogue.stats["builds"] == 2 and catalogue.masked <= catalogue.rebuild_masked * catalogue.index.size


def test_another_opener_loads_the_saved_build_and_applies_only_the_changes(tmp_path):
    config = IndexConfig(kind="ivf", ivf_nlist=4, ivf_nprobe=4, target_recall=None)
    q = np.random.default_rng(3).standard_normal((1, 2 * D)).astype(np.float32)
    with GalleryStore(tmp_path / "s") as a, GalleryStore(tmp_path / "s") as b:
        _fill(a)
        _search(a, config, q, 5)
        a.put_products("room0", [_product("later", np.random.default_rng(9))], "fp")
        found = _search(b, config, q, 5)  # b: the saved build + one product, no rebuild
        assert b.catalogue(config).stats == {"builds": 0, "loads": 1, "rows_added": 1, "rows_removed": 0}
        _same(found, _exact(b, q, 5, 0.7))
        assert found == _search(a, config, q, 5)


def test_milvus_flat_ranks_exactly_as_exact_search_and_follows_changes(tmp_path):
    rng = np.random.default_rng(4)
    queries = rng.standard_normal((5, 2 * D)).astype(np.float32)
    with open_store(f"{tmp_path / 's.db'}?index=FLAT") as store:
        _fill(store)
        for q in queries:
            _same(_search(store, None, q[None], 10), _exact(store, q[None], 10, 0.7))
        store.remove_product("room1", "p1-2")
        store.put_products("room0", [_product("p0-1", rng, 3)], "fp", replace=True)
        for q in queries:
            _same(_search(store, None, q[None], 15), _exact(store, q[None], 15, 0.7))
        # main image only: Milvus filters rows by image index
        found = store.catalogue(None).search(queries[:1], 5, 0.7, True, "fp")
        assert all(len(rec.image_paths) >= 1 for _, rec in found)


def test_milvus_and_faiss_give_the_same_ranking_on_the_same_vectors(tmp_path):
    q = np.random.default_rng(5).standard_normal((1, 2 * D)).astype(np.float32)
    with open_store(f"{tmp_path / 'm.db'}?index=FLAT") as milvus, open_store(tmp_path / "f") as faiss_store:
        _fill(milvus, seed=7)
        _fill(faiss_store, seed=7)
        a = _search(milvus, None, q, 20)
        b = _search(faiss_store, IndexConfig(kind="flat"), q, 20)
        _same(a, b)


def test_milvus_server_uri_serves_a_store_like_milvus_lite(tmp_path):
    """``--store http://host:port?root=FOLDER``: vectors on a server, metadata in FOLDER."""
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    server, db, port = start_server_in_thread(data_dir=str(tmp_path / "server-data"), host="127.0.0.1", port=0)
    try:
        uri = f"http://127.0.0.1:{port}?root={tmp_path / 'meta'}&index=FLAT"
        with open_store(uri) as store:
            assert store.server == f"http://127.0.0.1:{port}" and store.root == tmp_path / "meta"
            _fill(store, rooms=2, per_room=5)
            q = np.ones((1, 2 * D), np.float32)
            expected = _exact(store, q, 5, 0.7)
            _same(_search(store, None, q, 5), expected)
        with open_store(uri) as again:  # reopened: the collection is found again on the server
            _same(_search(again, None, q, 5), expected)
            assert again.room_vectors("room1").product_ids == [f"p1-{i}" for i in range(5)]
        assert not (tmp_path / "meta" / "milvus.db").exists()  # nothing embedded
    finally:
        server.stop(grace=0)
        db.close()


def test_a_store_opens_only_with_the_backend_it_was_made_with(tmp_path):
    from sgmn.errors import DataError

    GalleryStore(tmp_path / "plain").close()
    with pytest.raises(DataError, match="faiss backend.*open it with a folder path"):
        _as_milvus(tmp_path / "plain")
    with open_store(tmp_path / "lite.db"):
        pass
    with pytest.raises(DataError, match="milvus backend.*open it with a .db path or a Milvus server URI"):
        GalleryStore(tmp_path / "lite.db")
    with pytest.raises(DataError, match="needs a local folder"):
        open_store("http://127.0.0.1:1")
    with pytest.raises(DataError, match="unknown Milvus store option"):
        open_store(f"{tmp_path / 'x.db'}?colour=red")


def _as_milvus(path):
    """A FAISS store folder opened as a Milvus store (the class, since its name has no .db)."""
    from sgmn.retrieval.milvus import MilvusStore

    return MilvusStore(path)


def test_both_stores_implement_the_backend_interface(tmp_path):
    from sgmn.retrieval import RetrievalBackend

    for uri in (tmp_path / "folder", tmp_path / "lite.db"):
        with open_store(uri) as store:
            assert isinstance(store, RetrievalBackend)


def test_milvus_delete_failing_after_commit_is_not_an_error_and_is_cleaned_at_reopen(tmp_path, monkeypatch):
    uri = f"{tmp_path / 's.db'}?index=FLAT"
    with open_store(uri) as store:
        _fill(store, rooms=1, per_room=4)
        client = store.client()

        def refuse(*args, **kwargs):
            raise RuntimeError("server went away")

        monkeypatch.setattr(client, "delete", refuse)
        store.remove_product("room0", "p0-1")  # committed: no error for the client
        monkeypatch.undo()
        assert not store.has_product("room0", "p0-1")
        found = _search(store, None, np.ones((1, 2 * D), np.float32), 10)
        assert ("room0", "p0-1") not in {(r, p) for _, r, p in found} and len(found) == 3
    with open_store(uri) as store:
        assert store.check_report.orphans_removed == 2  # p0-1 had 1 + 1 % 3 = 2 image rows
        rows = store.client().query(store.collection, filter="id >= 0", output_fields=["id"], limit=100)
        assert {int(r["id"]) for r in rows} == {i for r in store.list_products("room0") for i in store.ids_of(r)}
