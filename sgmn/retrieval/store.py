"""The gallery store on disk: rooms, products, their copied images and their embedding vectors.

Layout of a store folder::

    store.sqlite            rooms, products (title, image file names, vector file, fingerprint), meta
    images/<room>/<product>-<token>-<i>.<ext>    copies of the product images (the web page shows them)
    vectors/<room>/<product>-<token>.npz         ``images`` (n, d) and ``title`` (d,) float32
    index/                  derived FAISS indexes (rebuilt when missing or stale)
    .lock                   flock()ed by a process only while it writes

Concurrency: any number of processes may open one store. SQLite runs in WAL mode, so readers
never wait for each other or for a writer; writes (and the orphan sweep of :meth:`check`) are
serialised across processes by an exclusive ``flock`` on ``.lock`` held only while writing, and
across threads by a lock. Every committed change bumps a store generation and the room's own
generation, which is how other processes notice it (caches and the catalogue index compare them).
A store opened with ``read_only=True`` never takes the write lock, never creates or deletes a
file, and works on a folder the process may not write; its writes raise :class:`ReadOnlyStore`.

Crash safety: the files of a product are written (and fsynced) *before* the SQLite transaction
that references them commits, and old files are deleted only *after* it commits, under fresh
names every time. A process killed at any point therefore leaves either the old or the new
product, never a mix; files that no committed row references are orphans and are deleted the
next time the store is opened. A referenced file that is missing is reported, not ignored.

The store knows nothing about models: it stores vectors and the fingerprint of whatever model
computed them (``sgmn.retrieval.retriever`` checks it).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from sgmn.errors import DataError
from sgmn.retrieval.errors import AlreadyExists, NotFound, ReadOnlyStore, StoreBusy, StoreCorrupt, validate_id

_log = logging.getLogger("sgmn.retrieval")

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_NAME = "store.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rooms (room_id TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    room_id TEXT NOT NULL REFERENCES rooms(room_id) ON DELETE CASCADE,
    product_id TEXT NOT NULL,
    title TEXT,
    images TEXT NOT NULL,        -- JSON list of file names under images/<room>/
    sources TEXT NOT NULL,       -- JSON list of the original image names (for people)
    vectors TEXT NOT NULL,       -- file name under vectors/<room>/
    fingerprint TEXT NOT NULL,   -- model that computed the vectors
    updated REAL NOT NULL,
    PRIMARY KEY (room_id, product_id)
);
"""

ImageSource = Union[str, Path, "PIL.Image.Image", "EncodedImage"]  # noqa: F821


@dataclass(frozen=True)
class ProductVectors:
    """Embeddings of one product: one row per image, one title vector (zeros without title)."""

    images: np.ndarray  # (n_images, d) float32
    title: np.ndarray  # (d,) float32
    has_title: bool


@dataclass(frozen=True)
class ProductRecord:
    """What the store knows about one product (paths are absolute, inside the store)."""

    room_id: str
    product_id: str
    title: Optional[str]
    image_paths: list[Path]
    source_names: list[str]
    vectors_path: Path
    fingerprint: str
    updated: float

    @property
    def main_image(self) -> Path:
        return self.image_paths[0]


@dataclass(frozen=True)
class NewProduct:
    """A product ready to be written: validated id, decodable images and computed vectors."""

    product_id: str
    title: Optional[str]
    images: list[ImageSource]
    vectors: ProductVectors


@dataclass(frozen=True)
class RoomVectors:
    """All vectors of one room, stacked for exact search (rows = images)."""

    product_ids: list[str]
    row_product: np.ndarray  # (R,) int: product index of each image row
    main_rows: np.ndarray  # (P,) int: row of each product's main image
    images: np.ndarray  # (R, d)
    titles: np.ndarray  # (P, d)
    has_title: np.ndarray  # (P,) bool
    records: tuple[ProductRecord, ...] = ()  # the products, in the order of ``product_ids``


@dataclass(frozen=True)
class CheckReport:
    """Result of the consistency check run when a store is opened."""

    rooms: int
    products: int
    orphans_removed: int
    orphans_left: int = 0  # orphan files that could not be deleted (a read-only folder); harmless


def _fsync_write(path: Path, write) -> None:
    """Write through a temporary file, fsync, then atomically rename onto ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# Decoded images (uploads) are stored as JPEG at this quality with the longest side capped:
# the copy is for people (the web page), the vectors are computed from the full upload, and a
# lossless PNG of a photo can be 20x its JPEG upload.
STORED_IMAGE_QUALITY = 90
STORED_IMAGE_MAX_SIDE = 2048


@dataclass(frozen=True)
class EncodedImage:
    """An image already encoded the way the store keeps it (see :func:`encode_copy`)."""

    data: bytes
    suffix: str = ".jpg"


def encode_copy(image) -> EncodedImage:
    """The stored form of a decoded image: JPEG, longest side capped. Callers that compute
    vectors should decode *this* (as the Retriever does), so a later re-index from the stored
    copy gives the same vectors."""
    import io

    from PIL import Image

    image = image.convert("RGB")
    if max(image.size) > STORED_IMAGE_MAX_SIDE:
        image = image.copy()
        image.thumbnail((STORED_IMAGE_MAX_SIDE, STORED_IMAGE_MAX_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=STORED_IMAGE_QUALITY)
    return EncodedImage(buf.getvalue())


def _source_name(src: ImageSource, i: int) -> str:
    if isinstance(src, (str, Path)):
        return Path(src).name
    return f"image-{i}{src.suffix if isinstance(src, EncodedImage) else '.jpg'}"


def _image_suffix(src: ImageSource) -> str:
    if isinstance(src, (str, Path)):
        suffix = Path(src).suffix.lower()
        if 1 < len(suffix) <= 6 and suffix[1:].isalnum():
            return suffix
        return ".img"
    return src.suffix if isinstance(src, EncodedImage) else ".jpg"


WRITE_WAIT_S = 30.0  # how long a write waits for another process's write before giving up


class GalleryStore:
    """Rooms and products persisted in one folder (SQLite in WAL mode + vector and image files).

    Thread-safe: one instance may be shared by a server's threads. Several processes may open one
    store at once (see the module docstring); ``read_only=True`` opens it for queries only.
    """

    backend = "faiss"

    def __init__(self, root: Union[str, Path], create: bool = True, read_only: bool = False):
        self.root = Path(root)
        self.read_only = read_only
        if not self.root.exists():
            if not create or read_only:
                raise NotFound(f"store {self.root} does not exist")
            self.root.mkdir(parents=True)
        elif not self.root.is_dir():
            raise DataError("store path exists and is not a folder", file=self.root)
        self._lock = threading.RLock()  # the SQLite connection and the caches
        self._writer = threading.RLock()  # one writing thread per process; then the flock
        self._write_depth = 0
        self._lock_file = None
        self._db = None
        db_path = self.root / DB_NAME
        if read_only and not db_path.is_file():
            raise NotFound(f"store {self.root} has no {DB_NAME} (not a store, or never written)")
        try:
            if not read_only:
                for sub in ("images", "vectors", "index"):
                    (self.root / sub).mkdir(exist_ok=True)
                self._lock_file = open(self.root / ".lock", "a+")
            self._db = self._connect(db_path)
            if not read_only:
                with self.write_lock():
                    self._db.executescript(_SCHEMA)
            version = self.get_meta("schema_version")
            if version is None and not read_only:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
            elif version is not None and int(version) != SCHEMA_VERSION:
                raise DataError(f"store schema version {version}, this sgmn reads {SCHEMA_VERSION}", file=self.root)
            self._check_backend()
            self._room_cache: dict[str, tuple[int, RoomVectors]] = {}
            self.check_report = self.check()
        except PermissionError as err:
            self.close()
            raise ReadOnlyStore(
                f"store {self.root} cannot be written by this process ({err.strerror}: {err.filename}); "
                "open it read-only to query it (`sgmn query` does)"
            ) from None
        except sqlite3.DatabaseError as err:
            self.close()
            raise StoreCorrupt(f"not a readable SQLite store database ({err})", file=db_path) from None
        except BaseException:
            self.close()
            raise

    def _connect(self, path: Path) -> sqlite3.Connection:
        if self.read_only:
            # mode=ro never creates the database; a WAL database in a folder this process may not
            # write (no -shm to create) can still be read as immutable, since nobody can write it
            try:
                db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
                db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:
                db = sqlite3.connect(
                    f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False, isolation_level=None
                )
                db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=WRITE_WAIT_S)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _check_backend(self) -> None:
        """A store remembers which backend holds its vectors; another backend must not open it."""
        stored = self.get_meta("backend")
        if stored is None:
            if self.read_only or self.count_products() > 0:
                stored = "faiss"  # stores made before backends existed
            else:  # a new store
                self.set_meta("backend", self.backend)
                stored = self.backend
        if stored != self.backend:
            hint = "a folder path" if stored == "faiss" else "a .db path or a Milvus server URI"
            raise DataError(
                f"this store keeps its vectors in the {stored} backend, not in {self.backend}: "
                f"open it with {hint}, as it was created",
                file=self.root,
            )

    # ---- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    def __enter__(self) -> "GalleryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing across processes ----------------------------------------------------------
    @contextmanager
    def write_lock(self, wait_s: Optional[float] = None):
        """Hold the store's write lock (reentrant): other threads and processes wait to write.

        Readers never wait for it. A write that waits longer than ``wait_s`` (default
        :data:`WRITE_WAIT_S`) raises :class:`StoreBusy`.
        """
        if self.read_only:
            raise ReadOnlyStore(f"store {self.root} is open read-only: it cannot be changed")
        wait_s = WRITE_WAIT_S if wait_s is None else wait_s
        with self._writer:
            if self._write_depth == 0:
                start = time.monotonic()
                said = False
                while True:
                    try:
                        fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if not said and time.monotonic() - start > 1.0:
                            said = True  # say why a write is slow, once
                            _log.warning(
                                "store %s is being written by another process; waiting up to %.0f s "
                                "(a running server takes changes at POST /rooms/{room}/products)", self.root, wait_s
                            )
                        if time.monotonic() - start >= wait_s:
                            raise StoreBusy(
                                f"store {self.root} is being written by another process (a running "
                                f"`sgmn serve` or `sgmn index`) and stayed busy for {wait_s:.0f} s; retry, or "
                                "send the change to the running server (POST /rooms/{room}/products, "
                                "DELETE /rooms/{room}/products/{product})"
                            ) from None
                        time.sleep(0.02)
            self._write_depth += 1
            try:
                yield
            finally:
                self._write_depth -= 1
                if self._write_depth == 0:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    # ---- meta ------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Optional[str]:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.write_lock(), self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def delete_meta(self, key: str) -> None:
        with self.write_lock(), self._lock:
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))

    def meta_items(self, prefix: str) -> dict[str, str]:
        """Meta entries whose key starts with ``prefix`` (a key range: no LIKE escaping)."""
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM meta WHERE key >= ? AND key < ?", (prefix, upper))
            return dict(rows.fetchall())

    @property
    def generation(self) -> int:
        """A counter bumped by every committed change (derived indexes compare against it)."""
        return int(self.get_meta("generation") or 0)

    def room_generations(self) -> dict[str, int]:
        """Room -> a counter bumped by every committed change of that room (0: never changed)."""
        with self._lock:
            gens = {k[len("generation/"):]: int(v) for k, v in self.meta_items("generation/").items()}
            return {room: gens.get(room, 0) for room in self.list_rooms()}

    def _bump_generation(self, room: Optional[str] = None) -> None:
        for key in ("generation",) if room is None else ("generation", f"generation/{room}"):
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, '1') "
                "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
                (key,),
            )

    # ---- rooms -----------------------------------------------------------------------------
    def list_rooms(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT room_id FROM rooms ORDER BY room_id")]

    def has_room(self, room: str) -> bool:
        validate_id(room, "room id")
        with self._lock:
            return self._db.execute("SELECT 1 FROM rooms WHERE room_id = ?", (room,)).fetchone() is not None

    def _require_room(self, room: str) -> None:
        if not self.has_room(room):
            raise NotFound(f"unknown room {room!r} in store {self.root}")

    def create_room(self, room: str, exist_ok: bool = False) -> bool:
        """Create an empty room; returns False when it existed (and ``exist_ok``)."""
        validate_id(room, "room id")
        if exist_ok and self.has_room(room):  # no write lock needed (a read-only store may ask)
            return False
        with self.write_lock(), self._lock:
            if self.has_room(room):
                if exist_ok:
                    return False
                raise AlreadyExists(f"room {room!r} already exists in store {self.root}")
            with self._transaction():
                self._db.execute("INSERT INTO rooms (room_id, created) VALUES (?, ?)", (room, time.time()))
                self._bump_generation(room)
            return True

    def delete_room(self, room: str) -> int:
        """Delete a room with all its products and files; returns the number of products removed."""
        with self.write_lock(), self._lock:
            self._require_room(room)
            records = self.list_products(room)
            self._before_commit(room, [], records)
            with self._transaction():
                self._db.execute("DELETE FROM products WHERE room_id = ?", (room,))
                self._db.execute("DELETE FROM rooms WHERE room_id = ?", (room,))
                self._bump_generation(room)
            shutil.rmtree(self.root / "images" / room, ignore_errors=True)
            shutil.rmtree(self.root / "vectors" / room, ignore_errors=True)
            self._after_commit(room, records)
            self._room_cache.pop(room, None)
            return len(records)

    # ---- products --------------------------------------------------------------------------
    def count_products(self, room: Optional[str] = None) -> int:
        with self._lock:
            if room is None:
                return self._db.execute("SELECT COUNT(*) FROM products").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM products WHERE room_id = ?", (room,)).fetchone()[0]

    def _record(self, row) -> ProductRecord:
        room, pid, title, images, sources, vectors, fingerprint, updated = row
        return ProductRecord(
            room_id=room,
            product_id=pid,
            title=title,
            image_paths=[self.root / "images" / room / name for name in json.loads(images)],
            source_names=json.loads(sources),
            vectors_path=self.root / "vectors" / room / vectors,
            fingerprint=fingerprint,
            updated=updated,
        )

    _COLUMNS = "room_id, product_id, title, images, sources, vectors, fingerprint, updated"

    def list_products(self, room: str) -> list[ProductRecord]:
        with self._lock:
            self._require_room(room)
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM products WHERE room_id = ? ORDER BY product_id", (room,)
            ).fetchall()
            return [self._record(r) for r in rows]

    def has_product(self, room: str, product_id: str) -> bool:
        validate_id(product_id, "product id")
        with self._lock:
            return (
                self._db.execute(
                    "SELECT 1 FROM products WHERE room_id = ? AND product_id = ?", (room, product_id)
                ).fetchone()
                is not None
            )

    def get_product(self, room: str, product_id: str) -> ProductRecord:
        validate_id(product_id, "product id")
        with self._lock:
            self._require_room(room)
            row = self._db.execute(
                f"SELECT {self._COLUMNS} FROM products WHERE room_id = ? AND product_id = ?", (room, product_id)
            ).fetchone()
            if row is None:
                raise NotFound(f"unknown product {product_id!r} in room {room!r}")
            return self._record(row)

    def fingerprints(self) -> dict[str, int]:
        """Model fingerprint -> number of products whose vectors it computed."""
        with self._lock:
            return dict(self._db.execute("SELECT fingerprint, COUNT(*) FROM products GROUP BY fingerprint"))

    def put_products(
        self, room: str, products: list[NewProduct], fingerprint: str, replace: bool = False
    ) -> tuple[list[str], list[str]]:
        """Write products (files first, then one transaction); returns (added ids, replaced ids).

        Without ``replace`` an existing product id raises :class:`AlreadyExists` and nothing is
        written. Ids must be unique within ``products``.
        """
        ids = [validate_id(p.product_id, "product id") for p in products]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise AlreadyExists(f"product ids repeated in one call: {dup}")
        with self.write_lock(), self._lock:
            self._require_room(room)
            existing = {pid: self.get_product(room, pid) for pid in ids if self.has_product(room, pid)}
            if existing and not replace:
                raise AlreadyExists(
                    f"products already in room {room!r}: {sorted(existing)} (update them instead)"
                )
            written: list = []
            rows = []
            try:
                for p in products:
                    rows.append(self._write_files(room, p, fingerprint, written))
                self._before_commit(room, written, list(existing.values()))
                with self._transaction():
                    self._db.executemany(
                        f"INSERT OR REPLACE INTO products ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
                    )
                    self._bump_generation(room)
            except BaseException:
                self._discard(written)
                raise
            self._room_cache.pop(room, None)
            for old in existing.values():
                self._delete_files(old)
            self._after_commit(room, list(existing.values()))
            return [i for i in ids if i not in existing], [i for i in ids if i in existing]

    def remove_product(self, room: str, product_id: str) -> None:
        with self.write_lock(), self._lock:
            old = self.get_product(room, product_id)
            self._before_commit(room, [], [old])
            with self._transaction():
                self._db.execute("DELETE FROM products WHERE room_id = ? AND product_id = ?", (room, product_id))
                self._bump_generation(room)
            # the delete is committed: drop the cache first, then the files (best effort)
            self._room_cache.pop(room, None)
            self._delete_files(old)
            self._after_commit(room, [old])

    def _write_files(self, room: str, p: NewProduct, fingerprint: str, written: list[Path]) -> tuple:
        from PIL import Image

        token = uuid.uuid4().hex[:12]
        image_dir = self.root / "images" / room
        image_dir.mkdir(exist_ok=True)
        if not p.images:
            raise DataError("a product needs at least one image", key=p.product_id)
        vec = p.vectors
        if vec.images.ndim != 2 or vec.images.shape[0] != len(p.images) or vec.title.shape != vec.images.shape[1:]:
            raise ValueError(
                f"product {p.product_id!r}: vectors {vec.images.shape}/{vec.title.shape} do not match "
                f"{len(p.images)} images"
            )
        names = []
        for i, src in enumerate(p.images):
            name = f"{p.product_id}-{token}-{i}{_image_suffix(src)}"
            dest = image_dir / name
            if isinstance(src, EncodedImage):
                _fsync_write(dest, lambda f, e=src: f.write(e.data))
            elif isinstance(src, Image.Image):
                _fsync_write(dest, lambda f, im=src: f.write(encode_copy(im).data))
            else:
                _fsync_write(dest, lambda f, s=src: f.write(Path(s).read_bytes()))
            written.append(dest)
            names.append(name)
        vec_name = self._write_vectors(room, p.product_id, token, vec, written)
        sources = [_source_name(s, i) for i, s in enumerate(p.images)]
        return (room, p.product_id, p.title, json.dumps(names), json.dumps(sources), vec_name, fingerprint, time.time())

    def _write_vectors(self, room: str, product_id: str, token: str, vec: ProductVectors, written: list) -> str:
        """Persist one product's vectors before the commit; returns what the row references."""
        vec_name = f"{product_id}-{token}.npz"
        path = self.root / "vectors" / room / vec_name
        path.parent.mkdir(exist_ok=True)
        _fsync_write(
            path,
            lambda f: np.savez(
                f,
                images=vec.images.astype(np.float32),
                title=vec.title.astype(np.float32),
                has_title=np.array(vec.has_title),
            ),
        )
        written.append(path)
        return vec_name

    def _discard(self, written: list) -> None:
        """Undo the writes of a failed ``put_products`` (nothing references them)."""
        for path in written:
            path.unlink(missing_ok=True)

    def _before_commit(self, room: str, written: list, replaced: list[ProductRecord]) -> None:
        """Hook of vector backends: runs after the new vectors are written, before the commit."""

    def _after_commit(self, room: str, removed: list[ProductRecord]) -> None:
        """Hook of vector backends: the commit no longer references ``removed``'s vectors."""

    def _delete_files(self, record: ProductRecord) -> None:
        """Delete a product's files after its row is gone. The change is already committed, so a
        file that cannot be deleted (a read-only folder, ...) is left as an orphan for
        :meth:`check` to collect, never turned into an error for a change that happened."""
        for path in [*record.image_paths, record.vectors_path]:
            try:
                path.unlink(missing_ok=True)
            except OSError as err:
                logger.warning("could not delete %s after commit (%s); left as an orphan", path.name, err)

    # ---- vectors ---------------------------------------------------------------------------
    def load_vectors(self, record: ProductRecord) -> ProductVectors:
        try:
            with np.load(record.vectors_path) as z:
                return ProductVectors(z["images"], z["title"], bool(z["has_title"]))
        except FileNotFoundError:
            raise StoreCorrupt("vector file of a committed product is missing", file=record.vectors_path)
        except (ValueError, KeyError, OSError) as e:
            raise StoreCorrupt(f"vector file cannot be read ({e})", file=record.vectors_path)

    def room_vectors(self, room: str) -> RoomVectors:
        """The room's vectors stacked for search (cached until the room's generation changes,
        whichever process changed it)."""
        for attempt in range(5):
            with self._lock:
                generation = self.room_generations_of([room])[room]
                cached = self._room_cache.get(room)
                if cached is not None and cached[0] == generation:
                    return cached[1]
                records = self.list_products(room)
            try:
                vectors = self._load_room(room, records)
            except StoreCorrupt:
                # another process may have replaced a product (and deleted its old vectors)
                # between our listing and our reading: that is not corruption, read again
                if attempt < 4 and self.room_generations_of([room])[room] != generation:
                    continue
                raise
            rv = stack_vectors(records, vectors)
            with self._lock:
                self._room_cache[room] = (generation, rv)
            return rv
        raise AssertionError("unreachable")

    def room_generations_of(self, rooms: list[str]) -> dict[str, int]:
        with self._lock:
            out = {}
            for room in rooms:
                value = self.get_meta(f"generation/{room}")
                out[room] = int(value) if value is not None else 0
            return out

    def _load_room(self, room: str, records: list[ProductRecord]) -> list[ProductVectors]:
        return [self.load_vectors(r) for r in records]

    # ---- consistency -----------------------------------------------------------------------
    def check(self) -> Optional[CheckReport]:
        """Delete orphan files (left by a crash) and verify every committed file exists.

        Runs under the write lock, so that no other process is between writing its files and
        committing them. A read-only store is not checked (it may not delete anything, and a
        writer in another process may be replacing files while it looks): ``None``.
        """
        if self.read_only:
            return None
        with self.write_lock(), self._lock:
            referenced: set[Path] = set()
            rooms = self.list_rooms()
            n_products = 0
            for room in rooms:
                for rec in self.list_products(room):
                    n_products += 1
                    for path in self._committed_files(rec):
                        if not path.is_file():
                            raise StoreCorrupt(
                                f"file of committed product {rec.product_id!r} (room {room!r}) is missing",
                                file=path,
                            )
                        referenced.add(path)
            orphans = left = 0
            for sub in ("images", "vectors"):
                for path in sorted((self.root / sub).rglob("*")):
                    if path.is_file() and path not in referenced:
                        try:
                            path.unlink()
                            orphans += 1
                        except OSError:  # unreferenced, so harmless: reported, collected later
                            left += 1
                for d in (self.root / sub).iterdir():
                    if d.is_dir() and d.name not in rooms:
                        shutil.rmtree(d, ignore_errors=True)
            orphans += self._check_vectors()
            if left:
                logger.warning("store %s: %d orphan file(s) could not be deleted", self.root, left)
            return CheckReport(rooms=len(rooms), products=n_products, orphans_removed=orphans, orphans_left=left)

    def _committed_files(self, record: ProductRecord) -> list[Path]:
        return [*record.image_paths, record.vectors_path]

    def _check_vectors(self) -> int:
        """Hook of vector backends: remove vectors no committed product references."""
        return 0

    # ---- catalogue search ------------------------------------------------------------------
    def catalogue(self, config):
        """The searcher over every room's products (FAISS here; see ``sgmn.retrieval.catalogue``)."""
        from sgmn.retrieval.catalogue import FaissCatalogue

        with self._lock:
            if getattr(self, "_catalogue", None) is None or self._catalogue.config != config:
                self._catalogue = FaissCatalogue(self, config)
            return self._catalogue

    # ---- internals -------------------------------------------------------------------------
    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self_):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self_, exc_type, exc, tb):
                db.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()


def stack_vectors(records: list[ProductRecord], vectors: Iterable[ProductVectors]) -> RoomVectors:
    vectors = list(vectors)
    if not vectors:
        empty = np.zeros((0, 0), np.float32)
        return RoomVectors([], np.zeros(0, np.int64), np.zeros(0, np.int64), empty, empty, np.zeros(0, bool))
    counts = [v.images.shape[0] for v in vectors]
    row_product = np.repeat(np.arange(len(vectors)), counts)
    main_rows = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return RoomVectors(
        product_ids=[r.product_id for r in records],
        row_product=row_product,
        main_rows=main_rows,
        images=np.concatenate([v.images for v in vectors]).astype(np.float32),
        titles=np.stack([v.title for v in vectors]).astype(np.float32),
        has_title=np.array([v.has_title for v in vectors], bool),
        records=tuple(records),
    )
