"""The deployable retrieval API: a gallery store plus the model that fills and queries it.

    from sgmn.retrieval import Retriever
    r = Retriever.open("store", model="runs/demo")            # a model, a checkpoint path, or None
    r.create_room("shop1")
    r.add_products("shop1", [("p1", ["p1.jpg"], "red dress"), ("p2", ["p2a.jpg", "p2b.jpg"], None)])
    result = r.query("shop1", clip="clip.mp4", asr="this red dress ...", top_k=5)
    for hit in result.hits: print(hit.product_id, hit.score, hit.title, hit.image_path)

Scores are exactly the model's ``v·p + λ·a·t`` (see ``sgmn.retrieval.index``); a product with
several images scores as its best image (``RetrieverConfig.main_image_only`` uses the first
image only, the published SGMN evaluation). The vectors remember the model fingerprint (a hash
of config + weights); another model is refused until :meth:`Retriever.reindex` recomputes them.

Thread and process safety: one instance may be shared by a server's threads, and several
processes may open one store (``uvicorn --workers``). Writes hold the store's write lock (one
writer at a time across processes, readers never wait); model calls a model lock; image
decoding happens outside both, so queries keep running while products are being added.
``Retriever.open(..., read_only=True)`` never writes (``sgmn query`` opens stores this way).

The store is a backend chosen by its URI (see ``sgmn.retrieval.backend``): a folder is the
embedded FAISS/SQLite store; a ``.db`` path or ``http://host:19530`` keeps vectors in Milvus.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch

from sgmn.data.records import Product
from sgmn.errors import DataError, MediaError
from sgmn.model.checkpoint import model_fingerprint
from sgmn.retrieval.errors import AlreadyExists, ModelMismatch, NoModel, NotFound, validate_id
from sgmn.retrieval.index import IndexConfig, best_per_product, gallery_matrix, query_matrix
from sgmn.retrieval.store import EncodedImage, GalleryStore, NewProduct, ProductRecord, ProductVectors, RoomVectors, encode_copy

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}

ClipInput = Union[str, Path, Sequence[Any]]  # a video file, a frame folder, frame paths, PIL images or arrays


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()  # "leave the title as it is" in update_product


@dataclass
class RetrieverConfig:
    main_image_only: bool = False  # score a product by its first image only (else its best image)
    batch_size: int = 32  # product images encoded (and committed) per step
    index: IndexConfig = field(default_factory=IndexConfig)  # global catalogue index


@dataclass(frozen=True)
class Hit:
    product_id: str
    score: float
    title: Optional[str]
    image_path: Path  # the product's main image, inside the store
    room_id: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_path"] = str(self.image_path)
        return d


@dataclass
class QueryResult:
    """Ranked products of one query, with what the model looked at."""

    hits: list[Hit]
    room_id: Optional[str]  # None for a global search
    frames: list[np.ndarray]  # the sampled frames, HxWx3 uint8
    frame_indices: list[int]  # their positions in the clip
    attention: Optional[np.ndarray]  # (T, g, g) text-guided attention per frame, or None
    asr: Optional[str]

    def to_dict(self) -> dict:
        """JSON-ready summary (frames and attention maps are left to the caller)."""
        return {
            "room_id": self.room_id,
            "asr": self.asr,
            "frame_indices": list(self.frame_indices),
            "hits": [h.to_dict() for h in self.hits],
        }


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    skipped_products: list[str] = field(default_factory=list)  # "id: reason"
    skipped_images: list[str] = field(default_factory=list)  # "file: reason" (product kept)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- reading query clips -------------------------------------------------------------------
def _sample(n: int, num_frames: int) -> list[int]:
    from sgmn.data.media import sample_indices

    return sample_indices(n, num_frames)


def load_query_frames(clip: ClipInput, num_frames: int) -> tuple[list[np.ndarray], list[int]]:
    """A query clip as up to ``num_frames`` uniformly sampled HxWx3 uint8 frames (+ indices).

    ``clip``: a video file, a folder of frame images (natural name order, as ``sgmn query``
    reads it: :func:`sgmn.data.readers.folders.clip_frames`), a list of frame paths, or a list
    of PIL images / arrays (already in time order).
    """
    from PIL import Image

    from sgmn.data.media import decode_video, load_image
    from sgmn.data.readers.folders import clip_frames

    if isinstance(clip, (str, Path)):
        path = Path(clip)
        if path.is_dir():
            clip = clip_frames(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            clip = [path]
        else:
            return decode_video(path, num_frames=num_frames)
    frames = list(clip)
    if not frames:
        raise MediaError("query clip has no frames")
    keep = _sample(len(frames), num_frames)
    out = []
    for i in keep:
        f = frames[i]
        if isinstance(f, (str, Path)):
            f = load_image(f)
        if isinstance(f, Image.Image):
            f = np.asarray(f.convert("RGB"))
        f = np.asarray(f)
        if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            raise DataError(f"frame {i} must be HxWx3 uint8, got shape {f.shape} dtype {f.dtype}")
        out.append(f)
    return out, keep


def _load_product_image(src, where: str):
    from PIL import Image

    from sgmn.data.media import load_image

    if isinstance(src, (str, Path)):
        return load_image(src)
    if isinstance(src, Image.Image):
        return src.convert("RGB")
    arr = np.asarray(src)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DataError(f"image must be a path, a PIL image or HxWx3 uint8, got shape {arr.shape}", key=where)
    return Image.fromarray(arr)


def _decode_copy(copy: EncodedImage):
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(copy.data)) as img:
        return img.convert("RGB")


@dataclass
class _Prepared:
    product_id: str
    title: Optional[str]
    sources: list  # what gets copied into the store (paths or PIL images)
    images: list  # decoded PIL images for the model


@dataclass(frozen=True)
class _ClipVectors:
    query: np.ndarray  # (1, 2d) [v, a]
    frames: list[np.ndarray]
    indices: list[int]
    attention: Optional[np.ndarray]
    asr: Optional[str]


class Retriever:
    """Rooms of products on disk, searched with one model (see the module docstring)."""

    def __init__(self, store: GalleryStore, model=None, config: Optional[RetrieverConfig] = None,
                 checkpoint: Optional[Path] = None):
        self.store = store
        self.config = config or RetrieverConfig()
        self._model_lock = threading.RLock()
        # "already exists?" and the write must be one step, or two threads (or two processes)
        # adding the same id would both pass the check and the second would silently replace
        # the first: the store's write lock, held across both, serialises threads and processes
        self._write_lock = store.write_lock
        self._fp_checked: Optional[tuple[int, str]] = None
        self._model = None
        self._fingerprint: Optional[str] = None
        self._pending_checkpoint: Optional[str] = None
        if model is not None:
            self.set_model(model, checkpoint=checkpoint)

    # ---- opening / model -------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        store_dir: Union[str, Path],
        model=None,
        config: Optional[RetrieverConfig] = None,
        create: bool = True,
        read_only: bool = False,
    ) -> "Retriever":
        """Open (or create) a store. ``store_dir``: a folder, or a Milvus URI (see
        :func:`sgmn.retrieval.backend.open_store`). ``model``: a model, a checkpoint path (run
        folder, saved folder or published .bin; remembered in the store once its vectors agree),
        or None (use the remembered one). ``read_only``: queries only; nothing on disk is created
        or changed."""
        from sgmn.retrieval.backend import open_store

        checkpoint = None
        if isinstance(model, (str, Path)):
            # Load the model before touching the store: a wrong checkpoint must not leave a
            # new, empty store folder behind.
            import sgmn

            checkpoint = Path(model)
            model = sgmn.load_model(checkpoint)
        store = open_store(store_dir, create=create, read_only=read_only)
        try:
            return cls(store, model=model, config=config, checkpoint=checkpoint)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_model(self, model, checkpoint: Optional[Path] = None) -> None:
        """Use ``model`` (or load it from a checkpoint path) from now on; ``checkpoint`` names the
        path a model object was loaded from (remembered in the store as a path model would be)."""
        path = Path(checkpoint) if checkpoint is not None else None
        if isinstance(model, (str, Path)):
            import sgmn

            path = Path(model)
            model = sgmn.load_model(path)
        model.eval()
        with self._model_lock:
            self._model = model
            self._fingerprint = model_fingerprint(model)
            # the store remembers a checkpoint only once its vectors agree with it (now, or after
            # check_model / reindex): a model refused for a mismatch must leave the store as it was
            self._pending_checkpoint = str(path.resolve()) if path is not None else None
        self._fp_checked = None
        if self._pending_checkpoint is not None and not self._other_fingerprints():
            self._remember_checkpoint()

    def _other_fingerprints(self) -> dict[str, int]:
        return {k: v for k, v in self.store.fingerprints().items() if k != self._fingerprint}

    def _remember_checkpoint(self) -> None:
        pending, self._pending_checkpoint = self._pending_checkpoint, None
        if self.store.read_only:  # a read-only opener (`sgmn query`) never writes
            return
        if pending is not None and self.store.get_meta("checkpoint") != pending:
            self.store.set_meta("checkpoint", pending)

    @property
    def model(self):
        with self._model_lock:  # two threads must not both load the remembered checkpoint
            if self._model is None:
                checkpoint = self.store.get_meta("checkpoint")
                if checkpoint is None:
                    raise NoModel(
                        f"store {self.store.root} has no model: open it with model=<checkpoint> to add or query"
                    )
                if not Path(checkpoint).exists():
                    raise NoModel(
                        f"the store's checkpoint {checkpoint} no longer exists: open with model=<checkpoint>"
                    )
                self.set_model(checkpoint)
            return self._model

    @property
    def fingerprint(self) -> str:
        self.model  # noqa: B018 - loads the remembered checkpoint if needed
        return self._fingerprint

    @property
    def text_weight(self) -> float:
        model = self.model
        uses_text = getattr(model, "uses_text", getattr(model.config, "use_text", True))
        return float(model.config.text_weight) if uses_text else 0.0

    def check_model(self) -> None:
        """Raise :class:`ModelMismatch` unless every stored vector came from this model."""
        fp = self.fingerprint
        generation = self.store.generation
        if self._fp_checked == (generation, fp):
            return
        counts = self.store.fingerprints()
        other = {k: v for k, v in counts.items() if k != fp}
        if not other:
            self._remember_checkpoint()
        if other:
            total = sum(counts.values())
            raise ModelMismatch(
                f"store {self.store.root}: {sum(other.values())} of {total} products were indexed with "
                f"another model ({', '.join(k[:12] for k in other)}) than this one ({fp[:12]}); "
                f"call Retriever.reindex() (or `sgmn index`) to recompute them with this model"
            )
        self._fp_checked = (generation, fp)

    # ---- rooms and products ----------------------------------------------------------------
    def create_room(self, room: str, exist_ok: bool = False) -> bool:
        return self.store.create_room(room, exist_ok=exist_ok)

    def delete_room(self, room: str) -> int:
        return self.store.delete_room(room)

    def list_rooms(self) -> list[str]:
        return self.store.list_rooms()

    def list_products(self, room: str) -> list[ProductRecord]:
        return self.store.list_products(room)

    def count_products(self, room: Optional[str] = None) -> int:
        """Products in ``room`` (all rooms when None)."""
        if room is not None and not self.store.has_room(room):
            raise NotFound(f"unknown room {room!r} in store {self.store.root}")
        return self.store.count_products(room)

    def get_product(self, room: str, product_id: str) -> ProductRecord:
        return self.store.get_product(room, product_id)

    def remove_product(self, room: str, product_id: str) -> None:
        with self._write_lock():
            self.store.remove_product(room, product_id)

    def add_products(
        self,
        room: str,
        items: Iterable[Union[tuple, Product]],
        replace: bool = False,
        on_error: str = "raise",
        create_room: bool = False,
        progress: Optional[Any] = None,
    ) -> AddReport:
        """Add products ``(product_id, images, title)`` (or :class:`Product` records) to a room.

        ``images``: one or more paths / PIL images / HxWx3 uint8 arrays; the first is the main
        image. ``replace``: products that exist are updated instead of refused. ``on_error``:
        ``"raise"`` on the first bad id or image, or ``"skip"`` it and list it in the report (a
        product keeps its readable images and is skipped only when none is readable).
        Products are committed ``config.batch_size`` images at a time. ``progress(n)`` (e.g. a
        tqdm's ``update``) is called as products are decoded and encoded.
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        validate_id(room, "room id")
        if not create_room and not self.store.has_room(room):
            raise NotFound(f"unknown room {room!r} in store {self.store.root}")
        report = AddReport()
        # every image is decoded before anything is written: a failure under "raise" leaves
        # the store (and the room list) as it was
        prepared = self._prepare(items, on_error, report)
        with self._write_lock():
            existing = [p.product_id for p in prepared if self.store.has_product(room, p.product_id)]
            if existing and not replace:
                raise AlreadyExists(f"products already in room {room!r}: {existing} (use replace=True or update_product)")
            if create_room:
                self.store.create_room(room, exist_ok=True)
            self._write(room, prepared, report, progress=progress)
        return report

    def update_product(
        self,
        room: str,
        product_id: str,
        images: Optional[Sequence] = None,
        title: Union[str, None, _Keep] = KEEP,
    ) -> None:
        """Replace a product's images and/or title (``None`` removes the title) and re-encode it."""
        with self._write_lock():  # a concurrent remove must not be undone by this write
            old = self.store.get_product(room, product_id)
            new_title = old.title if isinstance(title, _Keep) else title
            new_images = list(images) if images is not None else list(old.image_paths)
            report = AddReport()
            prepared = self._prepare([(product_id, new_images, new_title)], "raise", report)
            self._write(room, prepared, report)

    def reindex(self, progress=None) -> int:
        """Recompute every product's vectors with the current model; returns the count."""
        count = 0
        for room in self.store.list_rooms():
            with self._write_lock():  # one room at a time, so removals and updates interleave safely
                records = self.store.list_products(room)
                todo = [r for r in records if r.fingerprint != self.fingerprint]
                if not todo:
                    continue
                prepared = self._prepare(
                    [(r.product_id, list(r.image_paths), r.title) for r in todo], "raise", AddReport()
                )
                self._write(room, prepared, AddReport(), allow_other_models=True)
            count += len(todo)
            if progress is not None:
                progress(room, len(todo))
        self._fp_checked = None
        if not self._other_fingerprints():
            self._remember_checkpoint()
        return count

    def _prepare(self, items, on_error: str, report: AddReport) -> list[_Prepared]:
        prepared: list[_Prepared] = []
        seen: set[str] = set()
        for item in items:
            try:
                if isinstance(item, Product):
                    pid, images, title = item.product_id, list(item.image_paths), item.title
                else:
                    pid, images, title = item
                    images = [images] if isinstance(images, (str, Path)) else list(images)
                validate_id(pid, "product id")
                if pid in seen:
                    raise DataError("product id given twice", key=pid)
                if title is not None and not isinstance(title, str):
                    raise DataError(f"title must be a string or None, got {type(title).__name__}", key=pid)
                seen.add(pid)
                sources, decoded = [], []
                for i, src in enumerate(images):
                    try:
                        image = _load_product_image(src, f"{pid}[{i}]")
                        if not isinstance(src, (str, Path)):
                            # an image in memory is stored as a bounded JPEG copy; the model
                            # encodes that copy, so re-indexing from the store changes nothing
                            src = encode_copy(image)
                            image = _decode_copy(src)
                        decoded.append(image)
                        sources.append(src)
                    except MediaError as err:
                        if on_error == "raise":
                            raise
                        report.skipped_images.append(str(err))
                if not decoded:
                    raise DataError("no readable image", key=pid)
                prepared.append(_Prepared(pid, title if title and title.strip() else None, sources, decoded))
            except DataError as err:
                if on_error == "raise":
                    raise
                report.skipped_products.append(str(err))
        return prepared

    def _write(
        self, room: str, prepared: list[_Prepared], report: AddReport, allow_other_models: bool = False, progress=None
    ) -> None:
        fp = self.fingerprint
        if not allow_other_models and self.store.count_products() > 0:
            self.check_model()
        # Products are encoded (and committed) together, up to config.batch_size images per
        # forward pass: one image at a time left most of a CPU's time to per-call overhead.
        chunk: list[_Prepared] = []
        n_images = 0
        for p in prepared:
            if chunk and n_images + len(p.images) > self.config.batch_size:
                self._encode_and_commit(room, chunk, fp, report, progress)
                chunk, n_images = [], 0
            chunk.append(p)
            n_images += len(p.images)
        if chunk:
            self._encode_and_commit(room, chunk, fp, report, progress)

    def _encode_and_commit(self, room: str, chunk: list[_Prepared], fp: str, report: AddReport, progress) -> None:
        vectors = self._encode_products(chunk)
        batch = [NewProduct(p.product_id, p.title, p.sources, v) for p, v in zip(chunk, vectors)]
        self._commit(room, batch, fp, report)
        if progress is not None:
            progress(len(chunk))

    def _commit(self, room: str, batch: list[NewProduct], fp: str, report: AddReport) -> None:
        added, updated = self.store.put_products(room, batch, fp, replace=True)
        report.added += added
        report.updated += updated

    def _encode_products(self, chunk: list[_Prepared]) -> list[ProductVectors]:
        """Every image of ``chunk`` in one forward pass (each with its product's title)."""
        images = [im for p in chunk for im in p.images]
        titles = [p.title for p in chunk for _ in p.images]
        with self._model_lock:
            emb = self.model.encode_products(images, titles=titles)
        image_rows = emb.embedding.detach().cpu().float().numpy()
        title_rows = emb.text_embedding.detach().cpu().float().numpy()
        masks = emb.text_mask.detach().cpu().numpy()
        out, start = [], 0
        for p in chunk:
            rows = slice(start, start + len(p.images))
            has_title = bool(masks[start])
            title = title_rows[start] * has_title
            _check_finite(f"product {p.product_id!r}", image_rows[rows], title)
            out.append(ProductVectors(images=image_rows[rows], title=title.astype(np.float32), has_title=has_title))
            start += len(p.images)
        return out

    # ---- queries ---------------------------------------------------------------------------
    def encode_clip(self, clip: ClipInput, asr: Optional[str] = None) -> _ClipVectors:
        """Sample and encode a query clip: the ``[v, a]`` query row, frames and attention."""
        frames, indices = load_query_frames(clip, int(self.model.config.num_frames))
        asr = asr if asr and asr.strip() else None
        with self._model_lock:
            emb = self.model.encode_clips([frames], asr=[asr], return_attention=True)
        v = emb.embedding.detach().cpu().float().numpy()
        a = emb.text_embedding.detach().cpu().float().numpy() * emb.text_mask.cpu().numpy()[:, None]
        attention = None
        if emb.attention is not None:
            attention = emb.attention[0, : len(frames)].detach().cpu().float().numpy()
        _check_finite("query clip", v, a, *([] if attention is None else [attention]))
        return _ClipVectors(query_matrix(v, a), frames, list(indices), attention, asr)

    def query(self, room: str, clip: ClipInput, asr: Optional[str] = None, top_k: int = 10) -> QueryResult:
        """Rank the products of ``room`` for a clip (exact search over the room's vectors)."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        validate_id(room, "room id")
        if not self.store.has_room(room):
            raise NotFound(f"unknown room {room!r} in store {self.store.root}")
        q = self.encode_clip(clip, asr)
        self.check_model()
        rv = self.store.room_vectors(room)
        hits = self._rank_room(rv, q.query, top_k)
        return QueryResult(hits, room, q.frames, q.indices, q.attention, q.asr)

    def _rank_room(self, rv: RoomVectors, query: np.ndarray, top_k: int) -> list[Hit]:
        if not rv.product_ids:
            return []
        gallery, product_of_row = gallery_matrix(rv, self.text_weight, self.config.main_image_only)
        scores = best_per_product(query @ gallery.T, product_of_row, len(rv.product_ids))[0]
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [self._hit(rv, int(i), float(scores[i])) for i in order]

    @staticmethod
    def _hit(rv: RoomVectors, i: int, score: float) -> Hit:
        rec = rv.records[i]
        return Hit(rec.product_id, score, rec.title, rec.main_image, rec.room_id)

    def search_global(
        self, clip: ClipInput, asr: Optional[str] = None, top_k: int = 10
    ) -> QueryResult:
        """Rank the products of every room with the backend's catalogue index (approximate when
        large: FAISS IVF / HNSW, or Milvus), kept up to date without rebuilds."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        q = self.encode_clip(clip, asr)
        self.check_model()
        found = self.catalogue().search(
            q.query, top_k, self.text_weight, self.config.main_image_only, self.fingerprint
        )
        hits = [Hit(rec.product_id, score, rec.title, rec.main_image, rec.room_id) for score, rec in found]
        return QueryResult(hits, None, q.frames, q.indices, q.attention, q.asr)

    def catalogue(self):
        """The backend's searcher over every room (:class:`sgmn.retrieval.catalogue.Catalogue`)."""
        return self.store.catalogue(self.config.index)


def _check_finite(what: str, *arrays: np.ndarray) -> None:
    """NaN / inf from the model must never reach scores, the index or attention maps."""
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError(f"{what}: the model produced non-finite values (embeddings or attention)")
