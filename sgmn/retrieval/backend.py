"""The retrieval-backend interface, and the URI that picks an implementation.

Two backends implement :class:`RetrievalBackend`:

* ``GalleryStore`` (``sgmn.retrieval.store``), the embedded default: a folder with SQLite
  metadata, copied images, one ``.npz`` of vectors per product, and an in-process FAISS
  catalogue index (``sgmn.retrieval.catalogue``).
* ``MilvusStore`` (``sgmn.retrieval.milvus``): the same folder for metadata and images, but the
  vectors live in a Milvus collection (rooms separated by a partition key) and the catalogue
  search runs in Milvus: embedded Milvus Lite for a ``.db`` path, a Milvus server or cluster for
  ``http(s)://host:port``.

``open_store`` reads the URI:

==================================  ===================================================
``shop-store`` (any other path)     GalleryStore in that folder
``shop-store.db``                   MilvusStore in that folder, Milvus Lite inside it
``http://host:19530?root=FOLDER``   MilvusStore in FOLDER, vectors on the Milvus server
==================================  ===================================================

Extra Milvus settings go in the query string: ``index=FLAT|HNSW|IVF_FLAT`` (catalogue index,
fixed when the collection is created; default HNSW), ``token=user:password``, ``db=NAME``.
The Retriever, the CLI (``--store``), the service and live sessions only use the methods below,
so they work unchanged on either backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol, Union, runtime_checkable
from urllib.parse import parse_qs, urlsplit

from sgmn.errors import DataError


@runtime_checkable
class RetrievalBackend(Protocol):
    """Rooms and products with their vectors, and search over them (see the module docstring)."""

    root: Path  # local folder: metadata and the product images (the service serves them from here)
    read_only: bool
    backend: str  # "faiss" or "milvus"

    # meta (the model's checkpoint and fingerprint checks) and change counters
    def get_meta(self, key: str) -> Optional[str]: ...
    def set_meta(self, key: str, value: str) -> None: ...
    @property
    def generation(self) -> int: ...
    def room_generations(self) -> dict[str, int]: ...

    # rooms and products
    def list_rooms(self) -> list[str]: ...
    def has_room(self, room: str) -> bool: ...
    def create_room(self, room: str, exist_ok: bool = False) -> bool: ...
    def delete_room(self, room: str) -> int: ...
    def count_products(self, room: Optional[str] = None) -> int: ...
    def list_products(self, room: str) -> list: ...
    def has_product(self, room: str, product_id: str) -> bool: ...
    def get_product(self, room: str, product_id: str): ...
    def fingerprints(self) -> dict[str, int]: ...
    def put_products(self, room: str, products: list, fingerprint: str, replace: bool = False) -> tuple: ...
    def remove_product(self, room: str, product_id: str) -> None: ...

    # vectors and search
    def load_vectors(self, record): ...
    def room_vectors(self, room: str): ...  # exact per-room search runs on these
    def catalogue(self, config): ...  # a sgmn.retrieval.catalogue.Catalogue over every room

    # writing and lifecycle
    def write_lock(self, wait_s: Optional[float] = None): ...
    def close(self) -> None: ...


def is_local_store(uri: Union[str, Path]) -> bool:
    """Whether ``uri`` names a store folder on this machine (not a Milvus server URI)."""
    return not str(uri).startswith(("http://", "https://", "tcp://"))


def open_store(uri: Union[str, Path], create: bool = True, read_only: bool = False) -> RetrievalBackend:
    """The backend a ``--store`` value names (see the module docstring)."""
    text = str(uri)
    if text.startswith(("http://", "https://", "tcp://")):
        parts = urlsplit(text)
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        root = options.pop("root", None)
        if not root:
            raise DataError(
                "a Milvus server store needs a local folder for its metadata and images: "
                f"{parts.scheme}://{parts.netloc}?root=FOLDER",
                key="--store",
            )
        from sgmn.retrieval.milvus import MilvusStore

        server = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        return MilvusStore(root, server, create=create, read_only=read_only, **_milvus_options(options))
    path, _, query = text.partition("?")
    if Path(path).suffix == ".db":
        from sgmn.retrieval.milvus import MilvusStore

        options = {k: v[-1] for k, v in parse_qs(query).items()}
        return MilvusStore(path, None, create=create, read_only=read_only, **_milvus_options(options))
    from sgmn.retrieval.store import GalleryStore

    return GalleryStore(uri, create=create, read_only=read_only)


def _milvus_options(options: dict[str, str]) -> dict:
    known = {"index", "token", "db"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise DataError(f"unknown Milvus store option(s) {unknown}; known: {sorted(known)}", key="--store")
    out = {}
    if "index" in options:
        out["index_type"] = options["index"].upper()
    if "token" in options:
        out["token"] = options["token"]
    if "db" in options:
        out["db_name"] = options["db"]
    return out
