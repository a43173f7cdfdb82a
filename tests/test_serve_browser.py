"""End to end in a real browser: Debian's chromium (never a downloaded one) driven by Playwright
against `sgmn serve`'s app running under uvicorn on a free local port."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.slow

if not CHROMIUM.exists():
    pytest.skip(
        "chromium not installed: /usr/bin/chromium is missing (`apt-get install chromium`; `make test` tries it)",
        allow_module_level=True,
    )

import uvicorn  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

import sgmn  # noqa: E402
from sgmn.retrieval import Retriever  # noqa: E402
from sgmn.serve import ServeSettings, create_app  # noqa: E402
from helpers import write_mp4  # noqa: E402

PRODUCTS = {"red-dress": ((220, 30, 30), "red silk dress"), "green-bag": ((30, 200, 60), "green bag"), "blue-hat": ((30, 60, 220), None)}


def write_clip(path: Path, rgb, n=8, size=(48, 64)) -> None:
    frames = []
    for i in range(n):
        f = np.zeros((*size, 3), np.uint8)
        f[:] = rgb
        f[10:26, 4 * i : 4 * i + 16] = 255
        frames.append(f)
    write_mp4(path, frames, rate=8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    retriever = Retriever.open(root / "store", model=sgmn.create_model("sgmn-tiny"))
    retriever.create_room("shop-1")
    retriever.create_room("shop-2")
    retriever.add_products(
        "shop-1", [(pid, [Image.new("RGB", (48, 48), rgb)], title) for pid, (rgb, title) in PRODUCTS.items()]
    )
    port = free_port()
    config = uvicorn.Config(create_app(retriever, ServeSettings()), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", retriever, root
    server.should_exit = True
    thread.join(timeout=10)
    retriever.close()


@pytest.fixture(scope="module")
def page():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        yield page
        browser.close()


def test_search_a_clip_in_the_browser(server, page, tmp_path):
    url, retriever, _ = server
    clip = tmp_path / "live-clip.mp4"
    write_clip(clip, PRODUCTS["red-dress"][0])
    asr = "look at this red silk dress"
    expected = retriever.query("shop-1", clip=clip, asr=asr, top_k=3).hits

    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((url, "data:")) else None)
    page.goto(url + "/")
    expect(page.locator("#health")).to_contain_text("sgmn-tiny")
    expect(page.locator("#room option")).to_have_count(2)
    page.select_option("#room", "shop-1")
    expect(page.locator("#products li")).to_have_count(3)
    page.set_input_files("#clip", str(clip))
    page.fill("#asr", asr)
    page.fill("#topk", "3")
    page.click("#search")

    hits = page.locator("#results .hit")
    expect(hits).to_have_count(3)
    first = hits.nth(0)
    expect(first.locator(".pid")).to_have_text(expected[0].product_id)
    expect(first.locator(".title")).to_have_text(expected[0].title or "(no title)")
    for i, hit in enumerate(expected):
        expect(hits.nth(i).locator(".score")).to_have_text(f"score {hit.score:.4f}")
    # product images loaded from the server
    assert first.locator("img").evaluate("img => img.complete && img.naturalWidth") == 48
    # one figure per sampled frame, each with its heatmap overlaid on the frame
    frames = page.locator("#frames figure")
    expect(frames).to_have_count(8 if retriever.model.config.num_frames >= 8 else retriever.model.config.num_frames)
    assert frames.nth(0).locator("img").nth(0).evaluate("img => img.naturalWidth") == 64
    heat = frames.nth(0).locator("img.heat")
    expect(heat).to_have_count(1)
    frame_box = frames.nth(0).locator("img").nth(0).bounding_box()
    heat_box = heat.bounding_box()
    assert heat_box == pytest.approx(frame_box, abs=1)
    assert float(heat.evaluate("img => getComputedStyle(img).opacity")) == pytest.approx(0.6)
    expect(page.locator("#search-error")).to_be_hidden()
    expect(page.locator("#products li")).to_have_count(3)  # overlapping room loads never duplicate

    shot = tmp_path / "results.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("SGMN_SCREENSHOT"):  # to look at the page by hand
        Path(os.environ["SGMN_SCREENSHOT"]).write_bytes(shot.read_bytes())
    assert outside == [], f"the page fetched something outside the server: {outside}"


def test_errors_are_shown_on_the_page(server, page, tmp_path):
    url, _, _ = server
    broken = tmp_path / "broken-clip.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    page.goto(url + "/")
    expect(page.locator("#room option")).to_have_count(2)
    page.select_option("#room", "shop-1")
    page.set_input_files("#clip", str(broken))
    page.click("#search")
    error = page.locator("#search-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("422")
    expect(error).to_contain_text("broken-clip.mp4")

    page.fill("#new-room", "shop-1")
    page.click("#create-room")
    expect(page.locator("#manage-error")).to_contain_text("409")
    expect(page.locator("#manage-error")).to_contain_text("already exists")


def test_create_a_room_and_add_a_product_from_the_page(server, page, tmp_path):
    url, retriever, _ = server
    image = tmp_path / "scarf.png"
    Image.new("RGB", (40, 40), (250, 200, 0)).save(image)
    page.goto(url + "/")
    expect(page.locator("#room option")).to_have_count(2)
    page.fill("#new-room", "evening-show")
    page.click("#create-room")
    expect(page.locator("#manage-ok")).to_contain_text("created room evening-show")
    expect(page.locator("#room")).to_have_value("evening-show")

    page.fill("#product-id", "scarf-9")
    page.fill("#product-title", "yellow scarf")
    page.set_input_files("#product-images", str(image))
    page.click("#add-product")
    expect(page.locator("#manage-ok")).to_contain_text("added scarf-9 to evening-show")
    expect(page.locator("#products li")).to_have_count(1)
    expect(page.locator("#products li")).to_contain_text("yellow scarf")
    assert [p.product_id for p in retriever.list_products("evening-show")] == ["scarf-9"]

    page.fill("#product-id", "../escape")
    page.set_input_files("#product-images", str(image))
    page.click("#add-product")
    expect(page.locator("#manage-error")).to_contain_text("422")
    assert [p.product_id for p in retriever.list_products("evening-show")] == ["scarf-9"]


def test_api_docs_render_offline(server, page):
    url, _, _ = server
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((url, "data:")) else None)
    page.goto(url + "/docs")
    # FastAPI's Swagger UI: the query operation is listed, and opening it shows its form fields
    operation = page.locator(".opblock-post", has=page.locator('[data-path="/rooms/{room}/query"]'))
    expect(operation).to_have_count(1)
    operation.locator(".opblock-summary").click()
    expect(operation).to_contain_text("top_k")
    expect(operation.locator("button.try-out__btn").first).to_be_visible()  # try-it-out is there
    expect(operation.locator("button.execute")).to_be_visible()  # and ready to send a request
    assert outside == [], f"/docs fetched something outside the server: {outside}"
