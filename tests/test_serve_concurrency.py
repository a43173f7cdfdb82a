"""Parallel queries and product additions against one server: every answer well-formed,
nothing lost, and the store intact after reopening."""

from __future__ import annotations

import io
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sgmn  # noqa: E402
from sgmn.retrieval import Retriever  # noqa: E402
from sgmn.serve import ServeSettings, create_app  # noqa: E402

N_QUERIES = 40
N_ADDITIONS = 20


def png_bytes(rgb, size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, tuple(int(c) for c in rgb)).save(buf, format="PNG")
    return buf.getvalue()


def colour(i: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(i)
    return tuple(int(c) for c in rng.integers(0, 256, 3))


@pytest.fixture(scope="module")
def model():
    return sgmn.create_model("sgmn-tiny")


def test_parallel_queries_and_additions(model, tmp_path):
    store_dir = tmp_path / "store"
    initial = ["seed-0", "seed-1", "seed-2"]
    retriever = Retriever.open(store_dir, model=model)
    retriever.create_room("live")
    retriever.add_products("live", [(pid, [Image.new("RGB", (32, 32), colour(100 + i))], pid) for i, pid in enumerate(initial)])
    added_ids = [f"new-{i:02d}" for i in range(N_ADDITIONS)]

    def query(i: int):
        frames = [("frames", (f"f{j}.png", png_bytes(colour(1000 + i + j), (24, 24)), "image/png")) for j in range(2)]
        return "query", client.post("/rooms/live/query", files=frames, data={"asr": f"item {i}", "top_k": "50"})

    def add(i: int):
        pid = added_ids[i]
        return "add", client.post(
            "/rooms/live/products",
            data={"product_id": pid, "title": f"title {i}"},
            files={"images": (f"{pid}.png", png_bytes(colour(i)), "image/png")},
        )

    def timed(job):
        start = time.monotonic()
        kind, response = job[0](job[1])
        return kind, response, start, time.monotonic()

    # interleave: two queries, one addition, ...
    jobs = []
    for i in range(N_QUERIES):
        jobs.append((query, i))
        if i % 2 == 1:
            jobs.append((add, i // 2))
    assert sum(1 for f, _ in jobs if f is add) == N_ADDITIONS

    with TestClient(create_app(retriever, ServeSettings())) as client:
        with ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(timed, jobs))
        # the requests really overlapped (else this test would prove nothing about thread safety)
        events = sorted([(start, 1) for *_, start, _ in results] + [(end, -1) for *_, end in results])
        in_flight = np.cumsum([step for _, step in events])
        assert in_flight.max() >= 4
        results = [(kind, response) for kind, response, _, _ in results]

        every_id = set(initial) | set(added_ids)
        seen_sizes = []
        for kind, response in results:
            assert response.status_code == (200 if kind == "query" else 201), response.text
            body = response.json()
            if kind == "add":
                assert body["product_id"] in added_ids and body["image_url"].endswith("/image")
                continue
            hits = body["hits"]
            ids = [h["product_id"] for h in hits]
            scores = [h["score"] for h in hits]
            # a query sees the room as it was at some moment: the seeds plus some of the new ones
            assert set(initial) <= set(ids) <= every_id and len(ids) == len(set(ids))
            assert all(math.isfinite(s) for s in scores) and scores == sorted(scores, reverse=True)
            assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
            assert len(body["frames"]) == 2 and all(f["heatmap"].startswith("data:image/png") for f in body["frames"])
            seen_sizes.append(len(ids))
        assert min(seen_sizes) >= len(initial) and max(seen_sizes) <= len(every_id)

        listed = {p["product_id"]: p["title"] for p in client.get("/rooms/live/products").json()}
        assert set(listed) == every_id
        assert all(listed[f"new-{i:02d}"] == f"title {i}" for i in range(N_ADDITIONS))
        final = client.post(
            "/rooms/live/query", files={"frames": ("f.png", png_bytes((1, 2, 3)), "image/png")}, data={"top_k": "50"}
        ).json()
        assert {h["product_id"] for h in final["hits"]} == every_id
    retriever.close()

    # reopening runs the store's consistency check: no missing files, no half-written orphans
    with Retriever.open(store_dir, model=model) as reopened:
        assert reopened.store.check_report.orphans_removed == 0
        assert {p.product_id for p in reopened.list_products("live")} == every_id
        for pid in added_ids:
            record = reopened.get_product("live", pid)
            i = added_ids.index(pid)
            pixel = Image.open(record.main_image).convert("RGB").getpixel((0, 0))
            assert max(abs(a - b) for a, b in zip(pixel, colour(i))) <= 3  # stored as a JPEG copy
        hits = reopened.query("live", clip=[np.zeros((24, 24, 3), np.uint8)], top_k=50).hits
        assert {h.product_id for h in hits} == every_id


def test_the_same_product_added_at_once_is_added_once(model, tmp_path):
    with Retriever.open(tmp_path / "store", model=model) as retriever:
        retriever.create_room("live")
        with TestClient(create_app(retriever, ServeSettings())) as client:

            def add(i: int):
                return client.post(
                    "/rooms/live/products",
                    data={"product_id": "twin", "title": f"version {i}"},
                    files={"images": ("t.png", png_bytes(colour(i)), "image/png")},
                )

            with ThreadPoolExecutor(max_workers=6) as pool:
                codes = sorted(r.status_code for r in pool.map(add, range(6)))
        assert codes == [201, 409, 409, 409, 409, 409]
        assert [p.product_id for p in retriever.list_products("live")] == ["twin"]
