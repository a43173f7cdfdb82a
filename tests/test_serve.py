"""The HTTP API of `sgmn serve`, through FastAPI's TestClient, with a tiny model."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sgmn  # noqa: E402
from sgmn.data.media import decode_video  # noqa: E402
from sgmn.retrieval import Retriever  # noqa: E402
from sgmn.serve import ServeSettings, create_app  # noqa: E402
from helpers import write_mp4  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220)}


def png_bytes(colour, size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def striped_frames(colour, n=8, size=(48, 64)) -> list[np.ndarray]:
    """Frames with a bright moving square so they differ in time (and in attention)."""
    frames = []
    for i in range(n):
        f = np.zeros((*size, 3), np.uint8)
        f[:] = colour
        x = 4 * i
        f[8:24, x : x + 16] = 255
        frames.append(f)
    return frames


def decode_data_url(url: str, mime: str) -> Image.Image:
    prefix = f"data:{mime};base64,"
    assert url.startswith(prefix), url[:40]
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)  # the same tiny model (and attention maps) on every run
    return sgmn.create_model("sgmn-tiny")


@pytest.fixture(scope="module", params=["faiss", "milvus"])
def served(request, model, tmp_path_factory):
    """A store with room 'shop' (three coloured products) behind a TestClient, on each retrieval
    backend (a store folder, and Milvus Lite)."""
    root = tmp_path_factory.mktemp("serve")
    retriever = Retriever.open(root / ("store.db" if request.param == "milvus" else "store"), model=model)
    retriever.create_room("shop")
    retriever.add_products(
        "shop",
        [
            (name, [Image.new("RGB", (40, 40), rgb)], f"{name} silk dress" if name != "green" else None)
            for name, rgb in COLOURS.items()
        ],
    )
    with TestClient(create_app(retriever, ServeSettings(max_upload_mb=2))) as client:
        yield client, retriever, root
    retriever.close()


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "red.mp4"
    write_mp4(path, striped_frames(COLOURS["red"]))
    return path


def files_outside_store(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.relative_to(root).parts[0].startswith("store"))


# ---- service, rooms ---------------------------------------------------------------------
def test_health_names_the_model_and_counts_the_store(served):
    client, retriever, _ = served
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["model"] == {"name": "sgmn-tiny", "fingerprint": retriever.fingerprint}
    assert len(body["model"]["fingerprint"]) == 64
    assert body["store"]["rooms"] == len(retriever.list_rooms())
    assert body["store"]["products"] == retriever.store.count_products()


def test_openapi_schema_and_docs_cover_every_endpoint(served):
    client, _, _ = served
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/rooms"]) == {"get", "post"}
    assert set(paths["/rooms/{room}/products"]) == {"get", "post"}
    assert "delete" in paths["/rooms/{room}"] and "delete" in paths["/rooms/{room}/products/{product}"]
    assert "get" in paths["/rooms/{room}/products/{product}/image"]
    query_form = paths["/rooms/{room}/query"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in query_form
    # /docs is FastAPI's Swagger UI, its assets served by this server (fastapi-offline), no CDN
    import re

    docs = client.get("/docs")
    assert docs.status_code == 200 and "SwaggerUIBundle" in docs.text and "/openapi.json" in docs.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), asset  # local, never a CDN
        assert client.get(asset).status_code == 200, asset
    assert "https://" not in docs.text.replace('"validatorUrl": null', "")
    assert '"validatorUrl": null' in docs.text  # no badge fetched from swagger.io
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and all(a.startswith("/") for a in re.findall(r'src="([^"]+)"', redoc.text))


def test_openapi_has_response_schemas_and_examples(served):
    client, _, _ = served
    spec = client.get("/openapi.json").json()
    query = spec["paths"]["/rooms/{room}/query"]["post"]["responses"]
    assert query["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/QueryResponse")
    assert query["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorDetail")
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            ok = op["responses"].get("200") or op["responses"].get("201")
            assert ok is not None and "content" in ok, (method, path)
    schemas = spec["components"]["schemas"]
    hit = schemas["HitInfo"]["properties"]
    assert set(hit) == {"rank", "product_id", "title", "score", "image_url"}
    assert hit["product_id"]["examples"] and schemas["RoomInfo"]["properties"]["room_id"]["examples"]


def test_page_and_its_assets_are_served_locally(served):
    client, _, _ = served
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        assert client.get(asset).status_code == 200
    # nothing may come from the internet (no CDN)
    assert "http://" not in page.text and "https://" not in page.text


def test_room_lifecycle(served):
    client, retriever, _ = served
    assert client.post("/rooms", json={"room_id": "live-7"}).status_code == 201
    assert client.post("/rooms", json={"room_id": "live-7"}).status_code == 409
    rooms = {r["room_id"]: r["products"] for r in client.get("/rooms").json()}
    assert rooms["live-7"] == 0 and rooms["shop"] == 3
    added = client.post(
        "/rooms/live-7/products", data={"product_id": "p1"}, files={"images": ("a.png", png_bytes((9, 9, 9)), "image/png")}
    )
    assert added.status_code == 201, added.text
    deleted = client.delete("/rooms/live-7")
    assert deleted.json() == {"room_id": "live-7", "products_removed": 1}
    assert "live-7" not in retriever.list_rooms()
    assert client.get("/rooms/live-7/products").status_code == 404


# ---- products ---------------------------------------------------------------------------
def test_add_product_stores_every_image_and_serves_them_back(served):
    client, retriever, root = served
    client.post("/rooms", json={"room_id": "gallery"})
    before = files_outside_store(root)
    response = client.post(
        "/rooms/gallery/products",
        data={"product_id": "hat-1", "title": "straw hat"},
        files=[
            ("images", ("../../evil.png", png_bytes((200, 180, 20)), "image/png")),
            ("images", ("side view.png", png_bytes((10, 20, 250), size=(30, 50)), "image/png")),
        ],
    )
    assert response.status_code == 201, response.text
    info = response.json()
    assert info["product_id"] == "hat-1" and info["title"] == "straw hat"
    assert len(info["image_urls"]) == 2
    listed = client.get("/rooms/gallery/products").json()
    assert [p["product_id"] for p in listed] == ["hat-1"]

    # stored copies are JPEG (quality 90): the same picture, within JPEG's rounding
    main = Image.open(io.BytesIO(client.get(info["image_url"]).content)).convert("RGB")
    assert main.size == (40, 40) and np.abs(np.subtract(main.getpixel((5, 5)), (200, 180, 20))).max() <= 8
    side = Image.open(io.BytesIO(client.get(info["image_urls"][1]).content)).convert("RGB")
    assert side.size == (30, 50) and np.abs(np.subtract(side.getpixel((5, 5)), (10, 20, 250))).max() <= 8
    assert client.get(info["image_url"] + "?index=2").status_code == 404

    # the client's file name is never a path: nothing appears outside the store, and no stored
    # file carries the client's name
    assert files_outside_store(root) == before
    record = retriever.get_product("gallery", "hat-1")
    assert all(p.resolve().is_relative_to(retriever.store.root.resolve()) for p in record.image_paths)
    assert not any("evil" in p.name for p in retriever.store.root.rglob("*"))

    assert client.post(
        "/rooms/gallery/products", data={"product_id": "hat-1"}, files={"images": ("x.png", png_bytes((1, 2, 3)), "image/png")}
    ).status_code == 409
    assert client.delete("/rooms/gallery/products/hat-1").json() == {"room_id": "gallery", "product_id": "hat-1"}
    assert client.get("/rooms/gallery/products").json() == []
    assert client.delete("/rooms/gallery/products/hat-1").status_code == 404


def test_untyped_uploads_are_judged_by_their_content(served):
    """application/octet-stream (a client that does not know the type) passes the type check and
    is then decoded like any other upload."""
    client, retriever, _ = served
    r = client.post(
        "/rooms/shop/products",
        data={"product_id": "untyped"},
        files={"images": ("photo", png_bytes((7, 7, 7)), "application/octet-stream")},
    )
    assert r.status_code == 201, r.text
    assert client.delete("/rooms/shop/products/untyped").status_code == 200
    r = client.post(
        "/rooms/shop/products",
        data={"product_id": "untyped"},
        files={"images": ("photo", b"\x00" * 64, "application/octet-stream")},
    )
    assert r.status_code == 422 and "photo" in r.json()["detail"]
    assert not retriever.store.has_product("shop", "untyped")


def test_corrupt_or_mistyped_product_images_are_refused_by_name(served):
    client, retriever, _ = served
    truncated = png_bytes((1, 200, 1))[:60]
    r = client.post(
        "/rooms/shop/products",
        data={"product_id": "broken"},
        files=[
            ("images", ("good.png", png_bytes((5, 5, 5)), "image/png")),
            ("images", ("half.png", truncated, "image/png")),
        ],
    )
    assert r.status_code == 422 and "half.png" in r.json()["detail"]
    r = client.post(
        "/rooms/shop/products", data={"product_id": "broken"}, files={"images": ("notes.txt", b"hello", "text/plain")}
    )
    assert r.status_code == 415
    assert "notes.txt" in r.json()["detail"] and "text/plain" in r.json()["detail"]
    r = client.post(
        "/rooms/shop/products", data={"product_id": "broken"}, files={"images": ("fake.png", b"not a png", "image/png")}
    )
    assert r.status_code == 422 and "fake.png" in r.json()["detail"]
    assert not retriever.store.has_product("shop", "broken")


# ---- queries ----------------------------------------------------------------------------
def test_query_with_a_clip_returns_the_retrievers_ranking_frames_and_heatmaps(served, clip_file):
    client, retriever, _ = served
    with open(clip_file, "rb") as f:
        r = client.post(
            "/rooms/shop/query",
            files={"clip": ("red.mp4", f, "video/mp4")},
            data={"asr": "this red silk dress", "top_k": "2"},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    expected = retriever.query("shop", clip=clip_file, asr="this red silk dress", top_k=2)
    assert [h["product_id"] for h in body["hits"]] == [h.product_id for h in expected.hits]
    assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in expected.hits], abs=1e-5)
    assert [h["rank"] for h in body["hits"]] == [1, 2]
    assert body["hits"][0]["score"] >= body["hits"][1]["score"]
    titles = {"red": "red silk dress", "green": None, "blue": "blue silk dress"}
    assert all(h["title"] == titles[h["product_id"]] for h in body["hits"])
    assert client.get(body["hits"][0]["image_url"]).status_code == 200
    assert body["asr"] == "this red silk dress" and body["model"] == "sgmn-tiny"

    num_frames = retriever.model.config.num_frames
    assert [f["index"] for f in body["frames"]] == expected.frame_indices
    assert len(body["frames"]) == min(num_frames, 8)
    for frame, original in zip(body["frames"], expected.frames):
        thumb = decode_data_url(frame["image"], "image/jpeg").convert("RGB")
        assert thumb.size == (frame["width"], frame["height"]) == (original.shape[1], original.shape[0])
        heat = decode_data_url(frame["heatmap"], "image/png")
        assert heat.mode == "RGBA" and heat.size == thumb.size
        att = np.array(frame["attention"])
        assert np.isfinite(att).all() and att.shape[0] == att.shape[1]


def test_heatmap_is_most_opaque_where_attention_is_highest(served, clip_file):
    client, _, _ = served
    with open(clip_file, "rb") as f:
        body = client.post("/rooms/shop/query", files={"clip": ("c.mp4", f, "video/mp4")}, data={"asr": "red"}).json()
    checked = 0
    for frame in body["frames"]:
        att = np.array(frame["attention"])
        if att.max() - att.min() < 1e-3:  # a flat map has no place to point at
            continue
        checked += 1
        g = att.shape[0]
        alpha = np.asarray(decode_data_url(frame["heatmap"], "image/png"))[..., 3].astype(float)
        h, w = alpha.shape
        # alpha at the centre of every attention cell: the mean of the 2x2 pixels around it.
        # Bilinear upsampling mixes into those pixels a little of the neighbouring cells, at most
        # 1/(2·cell size) of the difference per axis, so a centre can be off its cell's own value
        # by up to `blend` (plus 8-bit rounding); comparisons allow for exactly that much.
        rows = (np.arange(g) + 0.5) * h / g
        cols = (np.arange(g) + 0.5) * w / g
        rows, cols = np.floor(rows - 0.5).astype(int), np.floor(cols - 0.5).astype(int)
        centres = sum(alpha[rows + dy][:, cols + dx] for dy in (0, 1) for dx in (0, 1)) / 4
        span = alpha.max() - alpha.min()  # opacity range of the overlay
        blend = span * (0.5 * g / h + 0.5 * g / w) + 1.0
        # the most attended cell is (within the blend) the most opaque one
        assert centres[np.unravel_index(att.argmax(), att.shape)] >= centres.max() - blend
        # any two cells whose attention differs by more than the blend can hide keep their order
        level = (att - att.min()) / (att.max() - att.min()) * span
        a, b = level.ravel(), centres.ravel()
        clearly_higher = a[:, None] - a[None, :] > 2 * blend
        assert clearly_higher.any() and (b[:, None] > b[None, :])[clearly_higher].all()
        assert np.corrcoef(b, a)[0, 1] > 0.9
    assert checked > 0


def test_query_with_frame_images_equals_the_retriever_on_the_same_frames(served):
    client, retriever, _ = served
    frames = striped_frames(COLOURS["blue"], n=4)
    files = []
    for i, f in enumerate(frames):
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG")
        files.append(("frames", (f"frame-{i}.png", buf.getvalue(), "image/png")))
    r = client.post("/rooms/shop/query", files=files, data={"top_k": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = retriever.query("shop", clip=frames, asr=None, top_k=3)
    assert [h["product_id"] for h in body["hits"]] == [h.product_id for h in expected.hits]
    assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in expected.hits], abs=1e-5)
    assert body["asr"] is None
    assert [f["index"] for f in body["frames"]] == [0, 1, 2, 3]
    assert sorted(h["product_id"] for h in body["hits"]) == sorted(COLOURS)


def test_query_input_errors(served, clip_file, tmp_path):
    client, _, _ = served
    mp4 = clip_file.read_bytes()
    png = png_bytes((1, 1, 1))

    r = client.post("/rooms/shop/query", files={"clip": ("broken.mp4", mp4[: len(mp4) // 3] + b"\0" * 50, "video/mp4")})
    assert r.status_code == 422 and "broken.mp4" in r.json()["detail"]
    assert "sgmn-serve-" not in r.json()["detail"]  # our temporary file name never leaks
    r = client.post("/rooms/shop/query", files={"clip": ("garbage.mp4", b"GARBAGE" * 100, "video/mp4")})
    assert r.status_code == 422 and "garbage.mp4" in r.json()["detail"]
    r = client.post("/rooms/shop/query", files={"clip": ("clip.png", png, "image/png")})
    assert r.status_code == 415 and "clip.png" in r.json()["detail"]
    r = client.post("/rooms/shop/query", files={"frames": ("f.mp4", mp4, "video/mp4")})
    assert r.status_code == 415 and "f.mp4" in r.json()["detail"]
    r = client.post("/rooms/shop/query", files={"frames": ("f0.jpg", b"\xff\xd8\xff garbage", "image/jpeg")})
    assert r.status_code == 422 and "f0.jpg" in r.json()["detail"]

    both = client.post(
        "/rooms/shop/query", files=[("clip", ("c.mp4", mp4, "video/mp4")), ("frames", ("f.png", png, "image/png"))]
    )
    assert both.status_code == 422 and "exactly one" in both.json()["detail"]
    neither = client.post("/rooms/shop/query", data={"asr": "hello"})
    assert neither.status_code == 422 and "exactly one" in neither.json()["detail"]
    for bad_k in ("0", "1000", "two"):
        r = client.post("/rooms/shop/query", files={"clip": ("c.mp4", mp4, "video/mp4")}, data={"top_k": bad_k})
        assert r.status_code == 422, bad_k

    r = client.post("/rooms/nowhere/query", files={"clip": ("c.mp4", mp4, "video/mp4")})
    assert r.status_code == 404 and "nowhere" in r.json()["detail"]


def test_unknown_rooms_and_products_are_404(served):
    client, _, _ = served
    png = png_bytes((1, 1, 1))
    assert client.get("/rooms/nowhere/products").status_code == 404
    assert client.delete("/rooms/nowhere").status_code == 404
    r = client.post("/rooms/nowhere/products", data={"product_id": "p"}, files={"images": ("a.png", png, "image/png")})
    assert r.status_code == 404
    assert client.get("/rooms/shop/products/ghost/image").status_code == 404
    r = client.delete("/rooms/shop/products/ghost")
    assert r.status_code == 404 and "ghost" in r.json()["detail"]


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "x" * 200, ".hidden", "..", "a b", "caf\u00e9", "a\\b"])
def test_hostile_ids_are_422_and_write_nothing(served, bad):
    client, retriever, root = served
    before = files_outside_store(root)
    rooms_before = retriever.list_rooms()
    r = client.post("/rooms", json={"room_id": bad})
    assert r.status_code == 422, (bad, r.text)
    r = client.post(
        "/rooms/shop/products", data={"product_id": bad}, files={"images": ("a.png", png_bytes((3, 3, 3)), "image/png")}
    )
    assert r.status_code == 422, (bad, r.text)
    assert retriever.list_rooms() == rooms_before
    assert [p.product_id for p in retriever.list_products("shop")] == ["blue", "green", "red"]
    assert files_outside_store(root) == before


@pytest.mark.parametrize("bad", ["..x", ".hidden", "x" * 200, "a%20b", "%2e%2e"])
def test_hostile_ids_in_paths_are_refused(served, bad):
    client, _, _ = served
    for method, url in [
        ("GET", f"/rooms/{bad}/products"),
        ("DELETE", f"/rooms/{bad}"),
        ("GET", f"/rooms/shop/products/{bad}/image"),
        ("DELETE", f"/rooms/shop/products/{bad}"),
    ]:
        r = client.request(method, url)
        # 422 for an id that reaches us; 404 only when the URL no longer matches a route
        # (a decoded '/' or '..' changes the path itself), and never a 2xx
        assert r.status_code in (422, 404), (method, url, r.status_code)
        if "/" not in bad and "%2e" not in bad:
            assert r.status_code == 422, (method, url, r.text)


# ---- upload limits ----------------------------------------------------------------------
def test_per_request_limits_files_pixels_and_text_are_422_and_add_nothing(model, tmp_path):
    settings = ServeSettings(max_files=2, max_image_pixels=30 * 30, max_asr_chars=20, max_title_chars=10)
    with Retriever.open(tmp_path / "store", model=model) as retriever:
        retriever.create_room("r")
        client = TestClient(create_app(retriever, settings))

        def add(pid, images, title=None):
            files = [("images", (f"{pid}-{i}.png", png_bytes((9, 9, 9), size), "image/png")) for i, size in enumerate(images)]
            return client.post("/rooms/r/products", data={"product_id": pid, **({"title": title} if title else {})}, files=files)

        r = add("many", [(20, 20)] * 3)
        assert r.status_code == 422 and "3 files, more than the limit of 2" in r.json()["detail"]
        r = add("huge", [(20, 20), (31, 30)])  # 930 pixels: one too many rows of 30
        assert r.status_code == 422
        assert "huge-1.png" in r.json()["detail"] and "31x30 pixels" in r.json()["detail"]
        r = add("wordy", [(20, 20)], title="x" * 11)
        assert r.status_code == 422 and "title is longer than 10" in r.json()["detail"]
        assert retriever.list_products("r") == []
        assert add("fits", [(30, 30), (30, 30)], title="x" * 10).status_code == 201  # exactly at every limit

        frames = [("frames", (f"f{i}.png", png_bytes((5, 5, 5), (20, 20)), "image/png")) for i in range(3)]
        r = client.post("/rooms/r/query", files=frames)
        assert r.status_code == 422 and "frames: 3 files" in r.json()["detail"]
        r = client.post("/rooms/r/query", files=frames[:2], data={"asr": "y" * 21})
        assert r.status_code == 422 and "asr is longer than 20" in r.json()["detail"]
        r = client.post("/rooms/r/query", files=frames[:2], data={"asr": "y" * 20})
        assert r.status_code == 200 and [h["product_id"] for h in r.json()["hits"]] == ["fits"]
        assert [p.product_id for p in retriever.list_products("r")] == ["fits"]


def test_oversized_uploads_get_a_clear_413_and_nothing_is_added(model, tmp_path):
    with Retriever.open(tmp_path / "store", model=model) as retriever:
        retriever.create_room("r")
        client = TestClient(create_app(retriever, ServeSettings(max_upload_mb=0.05)))  # 52 KB
        noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, format="PNG")  # ~120 KB: incompressible
        r = client.post("/rooms/r/products", data={"product_id": "big"}, files={"images": ("big.png", buf.getvalue(), "image/png")})
        assert r.status_code == 413
        assert "0.05 MB" in r.json()["detail"] and "--max-upload-mb" in r.json()["detail"]
        assert retriever.list_products("r") == []
        small = client.post(
            "/rooms/r/products", data={"product_id": "small"}, files={"images": ("s.png", png_bytes((1, 1, 1)), "image/png")}
        )
        assert small.status_code == 201


def test_body_limit_stops_reading_a_stream_without_content_length(model, tmp_path):
    """Drive the ASGI app directly with a chunked body: reading must stop past the limit."""
    import anyio

    with Retriever.open(tmp_path / "store", model=model) as retriever:
        retriever.create_room("r")
        app = create_app(retriever, ServeSettings(max_upload_mb=0.01))  # 10 KB
        chunk = b"x" * 4096
        head = (
            b"--BOUNDARY\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n"
        )
        pulled = 0
        sent: list[dict] = []

        async def receive():
            nonlocal pulled
            pulled += 1
            # a well-formed multipart start, then an endless file part
            body = head + chunk if pulled == 1 else chunk
            return {"type": "http.request", "body": body, "more_body": pulled < 1000}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/rooms/r/products",
            "raw_path": b"/rooms/r/products",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-type", b"multipart/form-data; boundary=BOUNDARY")],  # no content-length
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        anyio.run(app, scope, receive, send)
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
        assert pulled <= 4  # 10 KB / 4 KB chunks: stopped at the first chunk past the limit, not 1000
        assert b"upload limit" in b"".join(m.get("body", b"") for m in sent[1:])


# ---- the command ------------------------------------------------------------------------
def test_serve_command_opens_the_checkpoint_and_store(model, tmp_path, monkeypatch):
    """`sgmn serve` wires a saved checkpoint and a store into the app it hands to uvicorn."""
    import uvicorn
    from typer.testing import CliRunner

    from sgmn.cli import app as cli_app

    model.save_pretrained(tmp_path / "ckpt")
    seen = {}

    def fake_run(application, host, port, **kwargs):
        seen.update(host=host, port=port)
        # bound to loopback, the app accepts loopback Host names only (TestClient's default
        # "testserver" would be refused: see test_hardening.py)
        with TestClient(application, base_url=f"http://127.0.0.1:{port}") as client:
            seen["health"] = client.get("/health").json()
            seen["upload_limit"] = client.app.state.settings.max_upload_mb

    monkeypatch.setattr(uvicorn, "run", fake_run)
    result = CliRunner().invoke(
        cli_app,
        ["serve", "--checkpoint", str(tmp_path / "ckpt"), "--store", str(tmp_path / "store"), "--port", "8123", "--max-upload-mb", "7"],
    )
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123 and seen["upload_limit"] == 7
    assert seen["health"]["model"]["name"] == "sgmn-tiny"
    assert seen["health"]["store"] == {"rooms": 0, "products": 0}
    assert (tmp_path / "store" / "store.sqlite").is_file()

    missing = CliRunner().invoke(cli_app, ["serve", "--checkpoint", str(tmp_path / "nope"), "--store", str(tmp_path / "s2")])
    assert missing.exit_code != 0 and "does not exist" in missing.output

