"""`sgmn serve --workers 2`: two real server processes over one store (issue 13.4), and the CLI
beside a running server (issue 12.6).

Reads run in both workers at once, writes are serialised across the processes (one id added
at once by four clients is added once), and every acknowledged write is in the store after
the server stops. Requests are bounded loops against a subprocess on 127.0.0.1.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import sgmn
from sgmn.retrieval import Retriever

ROOT = Path(__file__).resolve().parents[1]


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return sgmn.create_model("sgmn-tiny").save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    """One 2-worker server for the module (starting workers is slow on a busy machine); the
    CLI test runs first, the workers test last (it stops the server to reopen the store)."""
    tmp_path = tmp_path_factory.mktemp("served")
    store = tmp_path / "store"
    with Retriever.open(store, model=checkpoint) as r:
        r.add_products("live", [(f"seed-{i}", [Image.open(io.BytesIO(_png(i)))], f"seed {i}") for i in range(3)],
                       create_room=True)
    port = _free_port()
    log_path = tmp_path / "server.log"
    log = open(log_path, "w")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgmn.cli", "serve", "--checkpoint", str(checkpoint), "--store", str(store),
         "--port", str(port), "--workers", "2"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        pids: set[str] = set()
        # both workers are up once both have answered (they share the listening socket; a new
        # connection per request, since a kept-alive one stays with one worker)
        while len(pids) < 2:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "workers did not start: " + log_path.read_text()[-3000:]
            try:
                with ThreadPoolExecutor(max_workers=4) as pool:
                    pids.update(pool.map(lambda _: httpx.get(base + "/health", timeout=30).headers["X-SGMN-Worker"], range(4)))
            except httpx.TransportError:
                time.sleep(0.5)
        yield base, store, proc, tmp_path / "server.log"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_cli_query_and_index_work_beside_a_running_server(server, checkpoint, tmp_path):
    """Issue 12.6: `sgmn query` opens the store read-only and answers while the server runs;
    `sgmn index` writes between the server's writes, and the server sees its products."""
    from sgmn.cli import app

    base, store, proc, log = server
    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(3):
        (clip / f"frame_{i}.png").write_bytes(_png(7 + i))
    res = CliRunner().invoke(app, ["query", "--store", str(store), "--room", "live", "--clip", str(clip), "--json"])
    assert res.exit_code == 0, res.output
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "from-cli.png").write_bytes(_png(8))
    res = CliRunner().invoke(app, ["index", "--store", str(store), "--room", "live", "--shop", str(shop)])
    assert res.exit_code == 0, res.output
    for _ in range(4):  # whichever worker answers (a new connection each time)
        assert "from-cli" in {p["product_id"] for p in httpx.get(base + "/rooms/live/products", timeout=60).json()}


def test_two_workers_read_in_parallel_serialise_writes_and_lose_no_acknowledged_write(server):
    base, store, proc, log = server
    n_add, n_query, n_dup = 16, 16, 4
    before = {p["product_id"] for p in httpx.get(base + "/rooms/live/products", timeout=60).json()}
    assert {"seed-0", "seed-1", "seed-2"} <= before

    def add(i):
        pid = f"new-{i:02d}"
        return "add", pid, lambda c: c.post("/rooms/live/products", data={"product_id": pid, "title": f"t {i}"},
                                            files={"images": (f"{pid}.png", _png(100 + i), "image/png")})

    def dup(i):
        return "dup", "same", lambda c: c.post("/rooms/live/products", data={"product_id": "same", "title": f"d {i}"},
                                               files={"images": ("same.png", _png(200 + i), "image/png")})

    def query(i):
        return "query", None, lambda c: c.post("/rooms/live/query", data={"asr": f"item {i}", "top_k": "50"},
                                               files=[("frames", (f"f{j}.png", _png(300 + i + j), "image/png")) for j in range(2)])

    jobs = [dup(i) for i in range(n_dup)]
    for i in range(max(n_add, n_query)):
        jobs += [query(i), add(i)]

    def run(job):
        kind, pid, call = job
        with httpx.Client(base_url=base, timeout=120) as client:
            start = time.monotonic()
            response = call(client)
            return kind, pid, response, start, time.monotonic()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, jobs))

    statuses = {}
    for kind, pid, response, *_ in results:
        statuses.setdefault(kind, []).append(response.status_code)
    assert statuses["add"] == [201] * n_add, [r.text for k, _, r, *_ in results if k == "add" and r.status_code != 201]
    assert sorted(statuses["dup"]) == [201] + [409] * (n_dup - 1)  # serialised across processes
    assert statuses["query"] == [200] * n_query
    # both processes answered, and requests served by different processes overlapped in time
    spans = [(r.headers["X-SGMN-Worker"], start, end) for _, _, r, start, end in results]
    assert len({w for w, _, _ in spans}) == 2
    assert any(w1 != w2 and s1 < e2 and s2 < e1 for w1, s1, e1 in spans for w2, s2, e2 in spans)
    # every query saw the seed products and only products that exist
    acknowledged = {pid for kind, pid, r, *_ in results if kind in ("add", "dup") and r.status_code == 201}
    for kind, _, r, *_ in results:
        if kind == "query":
            ids = {h["product_id"] for h in r.json()["hits"]}
            assert {"seed-0", "seed-1", "seed-2"} <= ids <= acknowledged | before

    # each worker lists every acknowledged product (the other's writes included)
    for _ in range(8):
        r = httpx.get(base + "/rooms/live/products", timeout=60)
        assert {p["product_id"] for p in r.json()} == acknowledged | before

    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    with Retriever.open(store) as r:
        assert {p.product_id for p in r.list_products("live")} == acknowledged | before
        assert r.store.check_report.orphans_removed == 0


def test_several_workers_on_a_milvus_lite_store_are_refused_in_one_line(tmp_path, checkpoint, monkeypatch):
    import uvicorn

    from sgmn.cli import app

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("must not start"))
    res = CliRunner().invoke(app, ["serve", "--checkpoint", str(checkpoint), "--store", str(tmp_path / "s.db"),
                                   "--workers", "2"])
    assert res.exit_code == 2 and "Milvus Lite store (.db) admits one process" in res.output
