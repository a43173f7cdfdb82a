"""The gallery store on disk: persistence, crash safety (SIGKILL), consistency, safe ids."""

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

from sgmn.errors import DataError
from sgmn.retrieval import AlreadyExists, GalleryStore, InvalidId, NotFound, StoreCorrupt, validate_id
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


def test_products_survive_reopen_with_vectors_titles_and_copied_images(tmp_path):
    src = _image(tmp_path, "red.jpg")
    with GalleryStore(tmp_path / "store") as store:
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

    with GalleryStore(tmp_path / "store", create=False) as store:
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


def test_replace_and_remove_delete_old_files_and_refuse_duplicates(tmp_path):
    src = _image(tmp_path, "a.png")
    with GalleryStore(tmp_path / "s") as store:
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
        np.testing.assert_array_equal(store.room_vectors("r").images, _vectors(2).images)
        store.remove_product("r", "p")
        assert not new.vectors_path.exists()
        with pytest.raises(NotFound, match="unknown product 'p'"):
            store.get_product("r", "p")
        assert store.room_vectors("r").product_ids == []


def test_delete_room_and_unknown_room_errors(tmp_path):
    with GalleryStore(tmp_path / "s") as store:
        store.create_room("a")
        store.put_products("a", [NewProduct("p", None, [_image(tmp_path, "x.png")], _vectors(0))], "fp")
        with pytest.raises(AlreadyExists):
            store.create_room("a")
        assert store.create_room("a", exist_ok=True) is False
        assert store.delete_room("a") == 1
        assert not (store.root / "images" / "a").exists()
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


def test_second_open_of_the_same_store_is_refused(tmp_path):
    with GalleryStore(tmp_path / "s"):
        with pytest.raises(DataError, match="open in another process"):
            GalleryStore(tmp_path / "s")
    GalleryStore(tmp_path / "s").close()  # free again after close


_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from PIL import Image
    from sgmn.retrieval.store import GalleryStore, NewProduct, ProductVectors
    store = GalleryStore(sys.argv[1])
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


def test_sigkill_mid_writing_loses_nothing_committed(tmp_path):
    store_dir = tmp_path / "store"
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

    with GalleryStore(store_dir) as store:  # reopening runs the consistency check
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
        # every file on disk belongs to a committed product (crash leftovers were removed)
        on_disk = {p for sub in ("images", "vectors") for p in (store_dir / sub).rglob("*") if p.is_file()}
        referenced = {p for r in records.values() for p in [*r.image_paths, r.vectors_path]}
        assert on_disk == referenced
        assert store.check().orphans_removed == 0


_CRASH_AT = textwrap.dedent(
    """
    import os, signal, sys, numpy as np
    from PIL import Image
    from sgmn.retrieval.store import GalleryStore, NewProduct, ProductVectors

    def vectors(seed):
        rng = np.random.default_rng(seed)
        return ProductVectors(rng.standard_normal((1, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32), True)

    store = GalleryStore(sys.argv[1])
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
def test_sigkill_at_each_step_of_a_replace_leaves_one_whole_version(tmp_path, point, title, colour, seed):
    """Killed between writing new files and committing, or between committing and deleting the
    old files: reopening shows exactly one complete version and removes the other's files."""
    store_dir = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_AT, str(store_dir), point],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    leftovers = [p for sub in ("images", "vectors") for p in (store_dir / sub).rglob("*") if p.is_file()]
    assert len(leftovers) == 4  # both versions' image + vector files are on disk at the crash
    with GalleryStore(store_dir) as store:
        assert store.check_report.orphans_removed == 2
        (record,) = store.list_products("live")
        assert record.title == title
        pixel = Image.open(record.main_image).convert("RGB").getpixel((0, 0))
        assert np.abs(np.subtract(pixel, colour)).max() <= 3  # a JPEG copy of a flat colour
        expected = np.random.default_rng(seed).standard_normal((1, 4)).astype(np.float32)
        np.testing.assert_array_equal(store.load_vectors(record).images, expected)
        on_disk = {p for sub in ("images", "vectors") for p in (store_dir / sub).rglob("*") if p.is_file()}
        assert on_disk == {*record.image_paths, record.vectors_path}
