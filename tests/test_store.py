"""The gallery store on disk: persistence, crash safety (SIGKILL), consistency, safe ids, several
processes over one store, read-only and corrupt stores. The generic tests run on each backend
(``store_at``: the FAISS/SQLite folder and Milvus Lite)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sgmn.retrieval import AlreadyExists, GalleryStore, InvalidId, NotFound, StoreCorrupt, validate_id
from sgmn.retrieval import store as store_module
from sgmn.retrieval.backend import open_store
from sgmn.retrieval.errors import ReadOnlyStore, StoreBusy
from sgmn.retrieval.store import NewProduct, ProductVectors

D = 4


def _vectors(seed: int, n_images: int = 1, title: bool = True) -> ProductVectors:
    rng = np.random.default_rng(seed)
    t = rng.standard_normal(D).astype(np.float32) if title else np.zeros(D, np.float32)
    return ProductVectors(rng.standard_normal((n_images, D)).astype(np.float32), t, title)


def _image(tmp_path: Path, name: str, colour=(200, 10, 10)) -> Path:
    path = tmp_path / name
    Image.new("RGB", (8, 6), colour).save(path)
    return path


def _stored_vector_rows(store) -> set:
    """Every vector the backend holds: file paths (FAISS store) or Milvus row ids."""
    if store.backend == "faiss":
        return {p for p in (store.root / "vectors").rglob("*") if p.is_file()}
    if store.collection is None:
        return set()
    rows = store.client().query(store.collection, filter="id >= 0", output_fields=["id"], limit=16_384)
    return {int(r["id"]) for r in rows}


def _referenced_vector_rows(store, records) -> set:
    if store.backend == "faiss":
        return {r.vectors_path for r in records}
    return {i for r in records for i in store.ids_of(r)}


def test_products_survive_reopen_with_vectors_titles_and_copied_images(tmp_path, store_at):
    src = _image(tmp_path, "red.jpg")
    with open_store(store_at("store")) as store:
        store.create_room("live-1")
        added, replaced = store.put_products(
            "live-1",
            [
                NewProduct("p1", "red dress", [src, Image.new("RGB", (5, 5), (0, 0, 255))], _vectors(1, 2)),
                NewProduct("p2", None, [src], _vectors(2, title=False)),
            ],
            fingerprint="fp-a",
        )
        assert (added, replaced) == (["p1", "p2"], [])
    src.unlink()  # the store keeps its own copies

    with open_store(store_at("store"), create=False) as store:
        assert store.list_rooms() == ["live-1"]
        p1, p2 = store.list_products("live-1")
        assert (p1.product_id, p1.title, p2.title) == ("p1", "red dress", None)
        assert p1.source_names == ["red.jpg", "image-1.jpg"]  # decoded images are stored as JPEG
        assert all(p.is_file() and store.root in p.parents for p in p1.image_paths)
        assert np.abs(np.subtract(Image.open(p1.image_paths[1]).getpixel((0, 0)), (0, 0, 255))).max() <= 3
        v = store.load_vectors(p1)
        np.testing.assert_array_equal(v.images, _vectors(1, 2).images)
        np.testing.assert_array_equal(v.title, _vectors(1, 2).title)
        assert v.has_title and not store.load_vectors(p2).has_title
        rv = store.room_vectors("live-1")
        assert rv.product_ids == ["p1", "p2"] and rv.row_product.tolist() == [0, 0, 1]
        assert store.fingerprints() == {"fp-a": 2}


def test_replace_and_remove_delete_old_files_and_refuse_duplicates(tmp_path, store_at):
    src = _image(tmp_path, "a.png")
    with open_store(store_at("s")) as store:
        store.create_room("r")
        store.put_products("r", [NewProduct("p", "old", [src], _vectors(1))], "fp")
        old = store.get_product("r", "p")
        gen = store.generation
        with pytest.raises(AlreadyExists, match="'p'"):
            store.put_products("r", [NewProduct("p", "new", [src], _vectors(2))], "fp")
        assert store.get_product("r", "p").title == "old"  # nothing changed
        store.put_products("r", [NewProduct("p", "new", [src], _vectors(2))], "fp", replace=True)
        new = store.get_product("r", "p")
        assert new.title == "new" and store.generation > gen
        assert not old.vectors_path.exists() and not old.image_paths[0].exists()
        assert _stored_vector_rows(store) == _referenced_vector_rows(store, [new])  # old vectors gone
        np.testing.assert_array_equal(store.room_vectors("r").images, _vectors(2).images)
        store.remove_product("r", "p")
        assert not new.vectors_path.exists() and _stored_vector_rows(store) == set()
        with pytest.raises(NotFound, match="unknown product 'p'"):
            store.get_product("r", "p")
        assert store.room_vectors("r").product_ids == []


def test_delete_room_and_unknown_room_errors(tmp_path, store_at):
    with open_store(store_at("s")) as store:
        store.create_room("a")
        store.put_products("a", [NewProduct("p", None, [_image(tmp_path, "x.png")], _vectors(0))], "fp")
        with pytest.raises(AlreadyExists):
            store.create_room("a")
        assert store.create_room("a", exist_ok=True) is False
        assert store.delete_room("a") == 1
        assert not (store.root / "images" / "a").exists() and _stored_vector_rows(store) == set()
        for call in (lambda: store.list_products("a"), lambda: store.delete_room("a")):
            with pytest.raises(KeyError, match="unknown room 'a'"):  # NotFound is a KeyError
                call()


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".", "..", ".hidden", "a b", "a\\b", "x" * 129, "é", None])
def test_hostile_ids_are_refused_and_nothing_escapes_the_store(tmp_path, bad):
    with pytest.raises(InvalidId):
        validate_id(bad, "room id")
    with GalleryStore(tmp_path / "s") as store:
        with pytest.raises(InvalidId):
            store.create_room(bad)
        store.create_room("ok")
        with pytest.raises(InvalidId):
            store.put_products("ok", [NewProduct(bad, None, [_image(tmp_path, "i.png")], _vectors(0))], "fp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.png", "s"]
    assert validate_id("Live_01.a-b") == "Live_01.a-b"


def test_missing_vector_file_is_reported_not_ignored(tmp_path):
    with GalleryStore(tmp_path / "s") as store:
        store.create_room("r")
        store.put_products("r", [NewProduct("p", None, [_image(tmp_path, "i.png")], _vectors(0))], "fp")
        path = store.get_product("r", "p").vectors_path
    path.unlink()
    with pytest.raises(StoreCorrupt, match="p.*missing") as err:
        GalleryStore(tmp_path / "s")
    assert str(path) in str(err.value)


def test_two_opens_share_a_store_reads_run_while_a_write_holds_the_lock(tmp_path, monkeypatch):
    """Two openers (as two processes would: each has its own lock file handle) see each other's
    commits; reads never wait for the write lock; a write that waits too long says who to ask."""
    monkeypatch.setattr(store_module, "WRITE_WAIT_S", 0.3)
    with GalleryStore(tmp_path / "s") as a, GalleryStore(tmp_path / "s") as b:
        a.create_room("r")
        a.put_products("r", [NewProduct("p", "t", [_image(tmp_path, "i.png")], _vectors(1))], "fp")
        assert b.list_rooms() == ["r"] and b.room_vectors("r").product_ids == ["p"]
        with a.write_lock():
            assert b.list_products("r")[0].title == "t"  # reading while the other writes
            start = time.monotonic()
            with pytest.raises(StoreBusy, match=r"another process.*POST /rooms/\{room\}/products"):
                b.create_room("other")
            assert time.monotonic() - start < 5
        b.put_products("r", [NewProduct("p", "new", [_image(tmp_path, "i.png")], _vectors(2))], "fp", replace=True)
        # a's cached room vectors are stale: the room's generation says so
        np.testing.assert_array_equal(a.room_vectors("r").images, _vectors(2).images)
        assert a.get_product("r", "p").title == "new"


_PARALLEL_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from PIL import Image
    from sgmn.retrieval.store import GalleryStore, NewProduct, ProductVectors
    store = GalleryStore(sys.argv[1])
    store.create_room("live", exist_ok=True)
    name = sys.argv[2]
    for i in range(25):
        vec = ProductVectors(np.full((1, 4), i, np.float32), np.zeros(4, np.float32), False)
        store.put_products("live", [NewProduct(f"{name}-{i}", None, [Image.new("RGB", (8, 8))], vec)], "fp")
        # both processes also rewrite one shared product: serialised, so one whole version wins
        store.put_products("live", [NewProduct("shared", name, [Image.new("RGB", (8, 8))], vec)], "fp", replace=True)
        print(i, flush=True)
    """
)


def test_two_writer_processes_lose_no_acknowledged_write(tmp_path):
    store_dir = tmp_path / "store"
    GalleryStore(store_dir).close()
    procs = [
        subprocess.Popen([sys.executable, "-c", _PARALLEL_WRITER, str(store_dir), name], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        for name in ("a", "b")
    ]
    with GalleryStore(store_dir) as reader:  # a third opener reads while both write
        counts = []
        while any(p.poll() is None for p in procs):
            if reader.has_room("live"):
                counts.append(reader.count_products("live"))
            time.sleep(0.05)
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert counts == sorted(counts)  # never saw a product vanish
    with GalleryStore(store_dir) as store:
        ids = {r.product_id for r in store.list_products("live")}
        assert ids == {f"{n}-{i}" for n in "ab" for i in range(25)} | {"shared"}
        assert store.check().orphans_removed == 0
        files = {p for p in (store_dir / "vectors").rglob("*") if p.is_file()}
        assert files == {r.vectors_path for r in store.list_products("live")}


def _store_with_one_product(tmp_path) -> Path:
    with GalleryStore(tmp_path / "s") as store:
        store.create_room("r")
        store.put_products("r", [NewProduct("p", "t", [_image(tmp_path, "i.png")], _vectors(3))], "fp")
    return tmp_path / "s"


def test_read_only_open_creates_nothing_and_refuses_writes_in_one_line(tmp_path):
    root = _store_with_one_product(tmp_path)
    (root / ".lock").unlink()
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with GalleryStore(root, read_only=True) as store:
        assert store.room_vectors("r").product_ids == ["p"] and store.check_report is None
        for write in (lambda: store.create_room("x"), lambda: store.remove_product("r", "p"),
                      lambda: store.set_meta("k", "v")):
            with pytest.raises(ReadOnlyStore, match="open read-only"):
                write()
    after = sorted(p.relative_to(root) for p in root.rglob("*") if not p.name.endswith(("-shm", "-wal")))
    assert after == [p for p in before if not p.name.endswith(("-shm", "-wal"))] and not (root / ".lock").exists()
    with pytest.raises(NotFound, match="does not exist"):
        GalleryStore(tmp_path / "missing", read_only=True)
    assert not (tmp_path / "missing").exists()


_READ_ONLY_USER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from sgmn.retrieval.errors import ReadOnlyStore
    from sgmn.retrieval.store import GalleryStore
    from sgmn.retrieval.index import IndexConfig

    def read():
        with GalleryStore(sys.argv[1], read_only=True) as store:
            rv = store.room_vectors("r")
            found = store.catalogue(IndexConfig()).search(np.ones((1, 8), np.float32), 1, 1.0, False, "fp")
            return f"read {rv.product_ids} {[rec.product_id for _, rec in found]}"

    if os.geteuid() == 0:  # root writes anywhere: drop to nobody so that the permissions bite,
        read()  # after one read as root has imported every module lazily (nobody cannot read them)
        os.setgid(65534); os.setuid(65534)
    print(read())
    try:
        GalleryStore(sys.argv[1])
    except ReadOnlyStore as err:
        print("write", err)
    """
)


def test_store_on_a_read_only_folder_answers_queries_and_refuses_writes(tmp_path):
    """Issue 11.4: a store the process may not write (permissions): reads and catalogue search
    work, opening for writing gives one clear line."""
    import shutil
    import stat
    import tempfile

    src = _store_with_one_product(tmp_path)
    with GalleryStore(src) as store:  # fold the WAL into the database, as a finished writer leaves it
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    base = Path(tempfile.mkdtemp(prefix="sgmn-ro-"))
    try:
        root = base / "s"
        shutil.copytree(src, root)
        for p in [*root.rglob("*"), root, base]:
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH if p.is_dir() else 0))
        proc = subprocess.run([sys.executable, "-c", _READ_ONLY_USER, str(root)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0] == "read ['p'] ['p']"
        assert lines[1].startswith("write store ") and "cannot be written" in lines[1] and "read-only" in lines[1]
        assert len(lines) == 2 and "Traceback" not in proc.stderr
    finally:
        for p in [base, *base.rglob("*")]:
            p.chmod(0o700)
        shutil.rmtree(base)


@pytest.mark.parametrize("read_only", [False, True])
def test_a_corrupt_database_file_is_one_clear_error(tmp_path, read_only):
    root = _store_with_one_product(tmp_path)
    for name in ("store.sqlite-wal", "store.sqlite-shm"):
        (root / name).unlink(missing_ok=True)
    (root / "store.sqlite").write_bytes(np.random.default_rng(0).bytes(8192))
    with pytest.raises(StoreCorrupt, match="not a readable SQLite store database") as err:
        GalleryStore(root, read_only=read_only)
    assert str(root / "store.sqlite") in str(err.value) and "\n" not in str(err.value)


_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from PIL import Image
    from sgmn.retrieval.backend import open_store
    from sgmn.retrieval.store import NewProduct, ProductVectors
    store = open_store(sys.argv[1])
    store.create_room("live", exist_ok=True)
    img = Image.new("RGB", (32, 32), (1, 2, 3))
    for i in range(100000):
        rng = np.random.default_rng(i)
        vec = ProductVectors(rng.standard_normal((2, 4)).astype(np.float32),
                             rng.standard_normal(4).astype(np.float32), True)
        # the first products are rewritten again and again (replace), the rest are new
        pid = f"p{i % 40}"
        store.put_products("live", [NewProduct(pid, f"title {i}", [img, img], vec)], "fp", replace=True)
        print(pid, i, flush=True)
    """
)


def test_sigkill_mid_writing_loses_nothing_committed(tmp_path, store_at):
    store_dir = store_at("store")
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(store_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    committed: dict[str, int] = {}
    deadline = time.time() + 60
    try:
        while len(committed) < 40 or max(committed.values()) < 60:
            line = proc.stdout.readline()
            assert line, "writer exited early"
            pid, i = line.split()
            committed[pid] = int(i)
            assert time.time() < deadline
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-way: it is writing the next product right now
        proc.wait()
    # Lines the writer printed after we stopped reading were committed too: read them as well.
    for line in proc.stdout.read().splitlines():
        pid, i = line.split()
        committed[pid] = int(i)

    with open_store(store_dir) as store:  # reopening runs the consistency check
        records = {r.product_id: r for r in store.list_products("live")}
        assert set(committed) <= set(records)
        for pid, i in committed.items():
            rec = records[pid]
            # the last committed version, or the one the writer committed after its last print
            version = int(rec.title.split()[1])
            assert version in (i, i + 40), (pid, version, i)
            rng = np.random.default_rng(version)
            v = store.load_vectors(rec)
            np.testing.assert_array_equal(v.images, rng.standard_normal((2, 4)).astype(np.float32))
            assert all(p.is_file() for p in rec.image_paths)
        # every file and vector belongs to a committed product (crash leftovers were removed)
        on_disk = {p for p in (store_dir / "images").rglob("*") if p.is_file()}
        assert on_disk == {p for r in records.values() for p in r.image_paths}
        assert _stored_vector_rows(store) == _referenced_vector_rows(store, records.values())
        assert store.check().orphans_removed == 0


_CRASH_AT = textwrap.dedent(
    """
    import os, signal, sys, numpy as np
    from PIL import Image
    from sgmn.retrieval.backend import open_store
    from sgmn.retrieval.store import NewProduct, ProductVectors

    def vectors(seed):
        rng = np.random.default_rng(seed)
        return ProductVectors(rng.standard_normal((1, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32), True)

    store = open_store(sys.argv[1])
    store.create_room("live")
    store.put_products("live", [NewProduct("p", "old", [Image.new("RGB", (8, 8), (255, 0, 0))], vectors(1))], "fp")
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    # before-commit: the new files are written, the transaction is about to start;
    # after-commit: the new row is committed, the old files are about to be deleted
    setattr(store, "_transaction" if sys.argv[2] == "before-commit" else "_delete_files", die)
    store.put_products("live", [NewProduct("p", "new", [Image.new("RGB", (8, 8), (0, 0, 255))], vectors(2))], "fp", replace=True)
    print("not killed")
    """
)


@pytest.mark.parametrize("point,title,colour,seed", [("before-commit", "old", (255, 0, 0), 1), ("after-commit", "new", (0, 0, 255), 2)])
def test_sigkill_at_each_step_of_a_replace_leaves_one_whole_version(tmp_path, store_at, point, title, colour, seed):
    """Killed between writing new files and committing, or between committing and deleting the
    old files: reopening shows exactly one complete version and removes the other's files
    (and, on Milvus, the other's vector rows)."""
    store_dir = store_at("store")
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_AT, str(store_dir), point],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    leftovers = [p for p in (store_dir / "images").rglob("*") if p.is_file()]
    assert len(leftovers) == 2  # both versions' images (and vectors) are kept at the crash
    with open_store(store_dir) as store:
        assert store.check_report.orphans_removed == 2
        (record,) = store.list_products("live")
        assert record.title == title
        pixel = Image.open(record.main_image).convert("RGB").getpixel((0, 0))
        assert np.abs(np.subtract(pixel, colour)).max() <= 3  # a JPEG copy of a flat colour
        expected = np.random.default_rng(seed).standard_normal((1, 4)).astype(np.float32)
        np.testing.assert_array_equal(store.load_vectors(record).images, expected)
        on_disk = {p for p in (store_dir / "images").rglob("*") if p.is_file()}
        assert on_disk == set(record.image_paths)
        assert _stored_vector_rows(store) == _referenced_vector_rows(store, [record])
