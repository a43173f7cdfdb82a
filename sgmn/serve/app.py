"""The HTTP service: rooms, products and queries of a :class:`~sgmn.retrieval.Retriever`, plus
the web page at ``/``.

    app = create_app(Retriever.open("store", model="runs/demo"), ServeSettings(max_upload_mb=50))

Endpoints are plain ``def`` functions, so FastAPI runs them in its thread pool; the Retriever is
thread-safe (store lock + model lock), which is what makes parallel queries and additions safe.
Errors are JSON ``{"detail": "..."}`` naming the file or id at fault: 404 unknown room/product,
409 already exists, 413 upload too large, 415 wrong content type, 422 bad id / unreadable media.
"""

from __future__ import annotations

import mimetypes
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi_offline import FastAPIOffline
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware
from pydantic import BaseModel, Field

import sgmn
from sgmn.errors import DataError, MediaError
from sgmn.retrieval import AlreadyExists, InvalidId, ModelMismatch, NoModel, NotFound, Retriever, validate_id
from sgmn.retrieval.errors import MAX_ID_LENGTH
from sgmn.retrieval.schema import FrameView, QueryResponse, query_response
from sgmn.serve import previews, uploads
from sgmn.serve.limits import BodySizeLimit
from sgmn.serve.security import RequestGuard, StrictFormText, default_allowed_hosts

STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class ServeSettings:
    max_upload_mb: float = 50.0  # whole request body; larger uploads get a 413
    max_files: int = 64  # product images or query frames in one request
    max_image_pixels: int = 40_000_000  # refused before decoding (decompression bombs)
    max_asr_chars: int = 10_000
    max_title_chars: int = 1_000
    max_top_k: int = 100
    preview_size: int = 256  # longest side of the frame thumbnails sent back with a query
    # deployment (sgmn.serve.security): the CLI fills these in from its options
    token: Optional[str] = None  # bearer token; None = no authentication
    auth: str = "writes"  # with a token: "writes" need it, or "all" requests (but the page shell)
    bind_host: Optional[str] = None  # where the server listens; loopback => loopback Host names only
    allowed_hosts: Optional[list[str]] = None  # accepted Host headers (default: from bind_host)
    allowed_origins: list[str] = field(default_factory=list)  # other sites allowed to POST/DELETE

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


# ---- response schemas (they are also the OpenAPI documentation) -----------------------------
class ErrorDetail(BaseModel):
    detail: str = Field(description="what was wrong, naming the file, id or field",
                        examples=["unknown room 'live-9'"])


class ModelInfo(BaseModel):
    name: str = Field(examples=["sgmn-tiny"])
    fingerprint: str = Field(description="sha256 of the model's config and weights",
                             examples=["3f1c9a0e5b7d2c4f6a8e0b1d3c5e7f9a1b3d5f7e9c1a3b5d7f9e1c3a5b7d9f1e"])


class StoreStats(BaseModel):
    rooms: int = Field(examples=[12])
    products: int = Field(examples=[192])


class Health(BaseModel):
    status: str
    version: str
    model: ModelInfo
    store: StoreStats


class RoomInfo(BaseModel):
    room_id: str = Field(examples=["live-1"])
    products: int = Field(examples=[16])


class NewRoom(BaseModel):
    room_id: str = Field(description=f"letters, digits, '.', '_', '-'; not starting with '.'; at most {MAX_ID_LENGTH}",
                         examples=["live-1"])


class RoomDeleted(BaseModel):
    room_id: str
    products_removed: int


class ProductInfo(BaseModel):
    room_id: str = Field(examples=["live-1"])
    product_id: str = Field(examples=["p0042"])
    title: Optional[str] = Field(examples=["striped ceramic mug, blue"])
    image_url: str = Field(description="the main image", examples=["/rooms/live-1/products/p0042/image"])
    image_urls: list[str] = Field(examples=[["/rooms/live-1/products/p0042/image",
                                             "/rooms/live-1/products/p0042/image?index=1"]])


class ProductDeleted(BaseModel):
    room_id: str
    product_id: str


# The query answer (QueryResponse, HitInfo, FrameView) is shared with `sgmn query --json`:
# sgmn/retrieval/schema.py.


NOT_FOUND = {404: {"model": ErrorDetail, "description": "unknown room or product"}}
CONFLICT = {409: {"model": ErrorDetail, "description": "already exists"}}


# ---- helpers ------------------------------------------------------------------------------
def _error(status: int, store_root: Path):
    # messages from the store name its folder (useful on the command line); the server's
    # paths are none of a client's business
    roots = sorted({str(store_root), str(store_root.resolve())}, key=len, reverse=True)

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        detail = str(exc)
        for root in roots:
            detail = detail.replace(f"store {root}", "the store").replace(root, "<store>")
        return JSONResponse(status_code=status, content={"detail": detail})

    return handler


def _image_urls(request: Request, room: str, product_id: str, n: int) -> list[str]:
    base = f"{request.scope.get('root_path', '')}/rooms/{room}/products/{product_id}/image"
    return [base if i == 0 else f"{base}?index={i}" for i in range(n)]


def _product_info(request: Request, record) -> ProductInfo:
    urls = _image_urls(request, record.room_id, record.product_id, len(record.image_paths))
    return ProductInfo(
        room_id=record.room_id, product_id=record.product_id, title=record.title, image_url=urls[0], image_urls=urls
    )


def _check_count(files: list[UploadFile], what: str, settings: ServeSettings) -> None:
    if len(files) > settings.max_files:
        raise HTTPException(422, f"{what}: {len(files)} files, more than the limit of {settings.max_files}")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def create_app(retriever: Retriever, settings: Optional[ServeSettings] = None) -> FastAPI:
    """The FastAPI application serving ``retriever`` (which the caller opens and closes)."""
    settings = settings or ServeSettings()
    # FastAPI's own Swagger UI (/docs, with try-it-out) and ReDoc (/redoc), their scripts served from
    # the fastapi-offline package instead of a CDN; no validator badge (it would call swagger.io)
    app: FastAPI = FastAPIOffline(
        title="sgmn",
        version=sgmn.__version__,
        description="Livestreaming product retrieval: find the product a live-commerce clip is selling "
        "among the products of the live room's shop.",
        swagger_ui_parameters={"validatorUrl": None, "tryItOutEnabled": True},
        responses={422: {"model": ErrorDetail, "description": "a bad id, field or unreadable media, named"}},
    )
    # added last = runs first: Host, then Origin/token, then the body limits, before any work
    app.add_middleware(StrictFormText)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestGuard, token=settings.token, auth=settings.auth,
                       allowed_origins=settings.allowed_origins)
    hosts = settings.allowed_hosts if settings.allowed_hosts else default_allowed_hosts(settings.bind_host)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    app.state.retriever = retriever
    app.state.settings = settings

    # most specific class first is not needed: Starlette picks the handler by the error's MRO
    app.add_exception_handler(NotFound, _error(404, retriever.store.root))
    app.add_exception_handler(InvalidId, _error(422, retriever.store.root))
    app.add_exception_handler(MediaError, _error(422, retriever.store.root))
    app.add_exception_handler(DataError, _error(422, retriever.store.root))
    app.add_exception_handler(AlreadyExists, _error(409, retriever.store.root))
    app.add_exception_handler(ModelMismatch, _error(409, retriever.store.root))
    app.add_exception_handler(NoModel, _error(503, retriever.store.root))

    def require_room(room: str) -> str:
        validate_id(room, "room id")
        if not retriever.store.has_room(room):
            raise NotFound(f"unknown room {room!r}")
        return room

    # ---- page and health ----------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> Health:
        model = retriever.model
        return Health(
            status="ok",
            version=sgmn.__version__,
            model=ModelInfo(name=str(getattr(model.config, "name", type(model).__name__)), fingerprint=retriever.fingerprint),
            store=StoreStats(rooms=len(retriever.list_rooms()), products=retriever.store.count_products()),
        )

    # ---- rooms --------------------------------------------------------------------------
    @app.get("/rooms", response_model=list[RoomInfo], tags=["rooms"])
    def list_rooms() -> list[RoomInfo]:
        return [RoomInfo(room_id=r, products=retriever.store.count_products(r)) for r in retriever.list_rooms()]

    @app.post("/rooms", response_model=RoomInfo, status_code=201, tags=["rooms"], responses=CONFLICT)
    def create_room(body: NewRoom) -> RoomInfo:
        retriever.create_room(validate_id(body.room_id, "room id"))
        return RoomInfo(room_id=body.room_id, products=0)

    @app.delete("/rooms/{room}", response_model=RoomDeleted, tags=["rooms"], responses=NOT_FOUND)
    def delete_room(room: str) -> RoomDeleted:
        removed = retriever.delete_room(require_room(room))
        return RoomDeleted(room_id=room, products_removed=removed)

    # ---- products -----------------------------------------------------------------------
    @app.get("/rooms/{room}/products", response_model=list[ProductInfo], tags=["products"], responses=NOT_FOUND)
    def list_products(room: str, request: Request) -> list[ProductInfo]:
        return [_product_info(request, rec) for rec in retriever.list_products(require_room(room))]

    @app.post("/rooms/{room}/products", response_model=ProductInfo, status_code=201, tags=["products"],
              responses={**NOT_FOUND, **CONFLICT})
    def add_product(
        room: str,
        request: Request,
        product_id: str = Form(..., description="id of the new product (same rule as room ids)"),
        images: list[UploadFile] = File(..., description="one or more images; the first is the main image"),
        title: Optional[str] = Form(None, description="the product's title (optional)"),
    ) -> ProductInfo:
        require_room(room)
        validate_id(product_id, "product id")
        if title is not None and len(title) > settings.max_title_chars:
            raise HTTPException(422, f"title is longer than {settings.max_title_chars} characters")
        _check_count(images, "images", settings)
        decoded = [uploads.read_image(u, settings.max_image_pixels) for u in images]
        retriever.add_products(room, [(product_id, decoded, title or None)])
        return _product_info(request, retriever.get_product(room, product_id))

    @app.delete("/rooms/{room}/products/{product}", response_model=ProductDeleted, tags=["products"], responses=NOT_FOUND)
    def delete_product(room: str, product: str) -> ProductDeleted:
        retriever.remove_product(require_room(room), validate_id(product, "product id"))
        return ProductDeleted(room_id=room, product_id=product)

    @app.get(
        "/rooms/{room}/products/{product}/image",
        response_class=FileResponse,
        tags=["products"],
        responses={200: {"content": {"image/*": {}}, "description": "the stored image"}},
    )
    def product_image(room: str, product: str, index: int = 0) -> FileResponse:
        record = retriever.get_product(require_room(room), validate_id(product, "product id"))
        if not 0 <= index < len(record.image_paths):
            raise NotFound(f"product {product!r} has {len(record.image_paths)} images, no index {index}")
        path = record.image_paths[index]
        if not _inside(path, retriever.store.root):  # the store builds these paths; never serve outside it
            raise HTTPException(500, "stored image path is outside the store")
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type)

    # ---- query --------------------------------------------------------------------------
    @app.post("/rooms/{room}/query", response_model=QueryResponse, tags=["query"], responses=NOT_FOUND)
    def query(
        room: str,
        request: Request,
        clip: Optional[UploadFile] = File(None, description="the live clip as a video (mp4)"),
        frames: Optional[list[UploadFile]] = File(None, description="or: the clip's frames as images, in time order"),
        asr: Optional[str] = Form(None, description="what the salesperson says (ASR text); optional"),
        top_k: int = Form(10, ge=1, le=settings.max_top_k),
    ) -> QueryResponse:
        require_room(room)
        frames = frames or []
        if (clip is None) == (not frames):
            raise HTTPException(422, "send exactly one of: 'clip' (a video) or 'frames' (one or more images)")
        if asr is not None and len(asr) > settings.max_asr_chars:
            raise HTTPException(422, f"asr is longer than {settings.max_asr_chars} characters")
        _check_count(frames, "frames", settings)
        with tempfile.TemporaryDirectory(prefix="sgmn-serve-") as tmp:
            if clip is not None:
                source, name = uploads.save_video(clip, Path(tmp))
            else:
                source, name = uploads.read_frames(frames, settings.max_image_pixels), None
            try:
                result = retriever.query(room, clip=source, asr=asr, top_k=top_k)
            except MediaError as err:
                if name is None:
                    raise
                # the decoder names our temporary file (also inside its reason); the client
                # knows its own file name, and our paths are none of its business
                reason = err.reason.replace(str(source), name).replace(tmp, "<upload>")
                raise MediaError(reason, file=name) from None
        return _query_response(request, room, result, retriever, settings)

    return app


def _query_response(request: Request, room: str, result, retriever: Retriever, settings: ServeSettings) -> QueryResponse:
    def frame_view(index: int, frame, attention) -> FrameView:
        thumb = previews.thumbnail(frame, settings.preview_size)
        return FrameView(
            index=index,
            image=previews.frame_data_url(thumb),
            width=thumb.width,
            height=thumb.height,
            heatmap=None if attention is None else previews.heatmap_data_url(attention, thumb.size),
            attention=None if attention is None else attention.tolist(),
        )

    model_name = str(getattr(retriever.model.config, "name", type(retriever.model).__name__))
    return query_response(
        result, room, model_name,
        image_url=lambda hit: _image_urls(request, room, hit.product_id, 1)[0],
        frame_view=frame_view,
    )
