"""Store faults and what a deployer needs (issue 11): a refused model changes nothing, a failed
file delete after a commit, the bearer token, Origin / Host checks, no server paths in answers,
and text encodings on the command line and over HTTP."""

from __future__ import annotations

import io
import os
import stat

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sgmn  # noqa: E402
from sgmn.cli import app as cli_app  # noqa: E402
from sgmn.retrieval import ModelMismatch, Retriever  # noqa: E402
from sgmn.serve import ServeSettings, create_app  # noqa: E402
from helpers import write_mp4  # noqa: E402


def _tiny(seed):
    torch.manual_seed(seed)
    return sgmn.create_model("sgmn-tiny").eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return _tiny(0).save_pretrained(root / "a"), _tiny(1).save_pretrained(root / "b")


def _png(colour, size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _products(n=3):
    return [(f"p{i}", [Image.new("RGB", (32, 32), (40 * i, 90, 200 - 40 * i))], f"item {i}") for i in range(n)]


# ---- item 2: a refused model must not change the store ------------------------------------------
def test_a_refused_model_leaves_the_store_recording_its_own_checkpoint(tmp_path, checkpoints, monkeypatch):
    a, b = checkpoints
    store = tmp_path / "store"
    with Retriever.open(store, model=a) as r:
        r.add_products("shop", _products(), create_room=True)
        assert r.store.get_meta("checkpoint") == str(a.resolve())

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("a refused model was served"))
    result = CliRunner().invoke(cli_app, ["serve", "--checkpoint", str(b), "--store", str(store)])
    assert result.exit_code == 2 and "another model" in result.output

    with Retriever.open(store) as r:  # no model given: the store's own is used, and agrees
        assert r.store.get_meta("checkpoint") == str(a.resolve())
        r.check_model()
        assert r.query("shop", [np.zeros((32, 32, 3), np.uint8)], top_k=3).hits

    # an explicit reindex with the other model is a deliberate choice, and then it is recorded
    with Retriever.open(store, model=b) as r:
        with pytest.raises(ModelMismatch):
            r.check_model()
        assert r.store.get_meta("checkpoint") == str(a.resolve())
        assert r.reindex() == 3
        assert r.store.get_meta("checkpoint") == str(b.resolve())


# ---- item 3: a file delete that fails after the commit ------------------------------------------
@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_a_failed_file_delete_after_commit_is_not_an_error_and_the_store_reopens(tmp_path):
    _failed_delete_scenario(tmp_path, make_unwritable=_chmod_read_only)


def test_a_failed_file_delete_after_commit_is_not_an_error_and_the_store_reopens_simulated(tmp_path, monkeypatch):
    """The same, with unlink failing as it does in a read-only folder (works as root too)."""
    import pathlib

    real_unlink = pathlib.Path.unlink
    blocked: set = set()

    def unlink(self, missing_ok=False):
        if self.parent in blocked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    _failed_delete_scenario(tmp_path, make_unwritable=lambda folder: blocked.add(folder), restore=blocked.clear)


def _chmod_read_only(folder):
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)


def _failed_delete_scenario(tmp_path, make_unwritable, restore=None):
    model = _tiny(0)
    store = tmp_path / "store"
    r = Retriever.open(store, model=model)
    r.add_products("shop", _products(), create_room=True)
    frames = [np.zeros((32, 32, 3), np.uint8)]
    assert len(r.query("shop", frames, top_k=10).hits) == 3
    images = r.get_product("shop", "p1").image_paths[0].parent
    make_unwritable(images)
    try:
        with TestClient(create_app(r)) as client:
            response = client.delete("/rooms/shop/products/p1")
            assert response.status_code == 200, response.text  # the delete happened
            hits = client.post("/rooms/shop/query", files={"frames": ("f.png", _png((0, 0, 0)), "image/png")}).json()
        assert sorted(h["product_id"] for h in hits["hits"]) == ["p0", "p2"]  # the index agrees
        assert r.store.count_products("shop") == 2
        r.close()
        # the server restarts: the file that could not be deleted is an orphan, reported
        with Retriever.open(store, model=model) as r2:
            assert r2.store.check_report.orphans_left >= 1
            assert sorted(h.product_id for h in r2.query("shop", frames, top_k=10).hits) == ["p0", "p2"]
    finally:
        images.chmod(0o755)
        if restore:
            restore()
    with Retriever.open(store, model=model) as r3:  # writable again: the orphan is collected
        assert r3.store.check_report.orphans_removed >= 1 and r3.store.check_report.orphans_left == 0


# ---- item 5: deployment --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    r = Retriever.open(tmp_path_factory.mktemp("deploy") / "store", model=_tiny(0))
    r.create_room("shop")
    yield r
    r.close()


def _add(client, pid, **kwargs):
    return client.post("/rooms/shop/products", data={"product_id": pid},
                       files={"images": ("a.png", _png((200, 10, 10)), "image/png")}, **kwargs)


def test_bearer_token_guards_writes_or_everything(retriever):
    settings = ServeSettings(token="s3cret-token")
    with TestClient(create_app(retriever, settings)) as client:
        refused = _add(client, "t1")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert _add(client, "t1", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert not retriever.store.has_product("shop", "t1")
        assert client.get("/rooms").status_code == 200  # reads stay open under auth="writes"
        assert _add(client, "t1", headers={"Authorization": "Bearer s3cret-token"}).status_code == 201
        assert client.delete("/rooms/shop/products/t1").status_code == 401
        assert client.delete("/rooms/shop/products/t1", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    with TestClient(create_app(retriever, ServeSettings(token="s3cret-token", auth="all"))) as client:
        assert client.get("/rooms").status_code == 401
        assert client.get("/health").status_code == 401
        assert client.get("/").status_code == 200  # the page shell holds no data
        assert client.get("/rooms", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200


def test_cross_origin_writes_are_refused_same_origin_and_listed_ones_pass(retriever):
    settings = ServeSettings(allowed_origins=["https://ops.example.com"])
    with TestClient(create_app(retriever, settings)) as client:
        # a form on another site posting multipart (no preflight): CSRF
        evil = _add(client, "csrf", headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403 and "cross-origin" in evil.json()["detail"]
        assert client.delete("/rooms/shop", headers={"Origin": "null"}).status_code == 403
        assert _add(client, "csrf2", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert not retriever.store.has_product("shop", "csrf") and retriever.store.has_room("shop")
        # the server's own page, a listed origin, and non-browser clients (no Origin)
        assert _add(client, "own", headers={"Origin": "http://testserver"}).status_code == 201
        assert _add(client, "ops", headers={"Origin": "https://ops.example.com"}).status_code == 201
        assert _add(client, "curl").status_code == 201
        assert client.get("/rooms", headers={"Origin": "https://evil.example"}).status_code == 200  # no CORS: unreadable
        for pid in ("own", "ops", "curl"):
            retriever.remove_product("shop", pid)


def test_host_header_allow_list_stops_dns_rebinding(retriever):
    loopback = ServeSettings(bind_host="127.0.0.1")
    with TestClient(create_app(retriever, loopback), base_url="http://127.0.0.1:8000") as client:
        assert client.get("/rooms").status_code == 200
        assert client.get("/rooms", headers={"Host": "localhost:8000"}).status_code == 200
        assert client.get("/rooms", headers={"Host": "attacker.example:8000"}).status_code == 400
    named = ServeSettings(bind_host="0.0.0.0", allowed_hosts=["sgmn.example.com"])
    with TestClient(create_app(retriever, named), base_url="http://sgmn.example.com") as client:
        assert client.get("/rooms").status_code == 200
        assert client.get("/rooms", headers={"Host": "127.0.0.1"}).status_code == 400


def test_serve_command_reads_the_token_from_a_file_and_keeps_loopback_hosts(tmp_path, checkpoints, monkeypatch):
    import uvicorn

    token = tmp_path / "token"
    token.write_text("from-a-file\n")
    seen = {}

    def fake_run(application, host, port, **kwargs):
        with TestClient(application, base_url=f"http://127.0.0.1:{port}") as client:
            seen["anonymous"] = client.post("/rooms", json={"room_id": "x"}).status_code
            seen["with token"] = client.post(
                "/rooms", json={"room_id": "x"}, headers={"Authorization": "Bearer from-a-file"}).status_code
            seen["rebound"] = client.get("/rooms", headers={"Host": "evil.example"}).status_code

    monkeypatch.setattr(uvicorn, "run", fake_run)
    result = CliRunner().invoke(cli_app, ["serve", "--checkpoint", str(checkpoints[0]), "--store",
                                          str(tmp_path / "s"), "--token-file", str(token)])
    assert result.exit_code == 0, result.output
    assert seen == {"anonymous": 401, "with token": 201, "rebound": 400}


def test_responses_never_show_the_servers_paths(retriever):
    root = str(retriever.store.root)
    with TestClient(create_app(retriever)) as client:
        answers = [
            client.post("/rooms", json={"room_id": "shop"}),  # 409
            client.get("/rooms/nope/products"),  # 404
            client.post("/rooms/nope/products", data={"product_id": "x"},
                        files={"images": ("a.png", _png((1, 2, 3)), "image/png")}),
        ]
    for response in answers:
        assert response.status_code in (404, 409), response.text
        detail = response.json()["detail"]
        assert root not in detail and str(retriever.store.root.resolve()) not in detail and "/tmp" not in detail


# ---- item 9: text encodings ---------------------------------------------------------------------
ASR = "这件红色连衣裙今天特价"


def test_gbk_asr_over_http_is_refused_unless_its_charset_is_declared(retriever):
    def multipart(charset=None):
        boundary = "sgmnboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"asr\"\r\n\r\n").encode() + ASR.encode("gbk")
        body += (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"frames\"; filename=\"f.png\"\r\n"
                 f"Content-Type: image/png\r\n\r\n").encode() + _png((9, 9, 9)) + f"\r\n--{boundary}--\r\n".encode()
        ctype = f"multipart/form-data; boundary={boundary}" + (f"; charset={charset}" if charset else "")
        return body, {"Content-Type": ctype}

    with TestClient(create_app(retriever)) as client:
        body, headers = multipart()
        refused = client.post("/rooms/shop/query", content=body, headers=headers)
        assert refused.status_code == 422 and "'asr' is not valid utf-8" in refused.json()["detail"]
        body, headers = multipart("gbk")
        declared = client.post("/rooms/shop/query", content=body, headers=headers)
        assert declared.status_code == 200, declared.text
        assert declared.json()["asr"] == ASR  # decoded correctly, not as Latin-1
        utf8 = client.post("/rooms/shop/query", data={"asr": ASR},
                           files={"frames": ("f.png", _png((9, 9, 9)), "image/png")})
        assert utf8.status_code == 200 and utf8.json()["asr"] == ASR


def test_non_utf8_asr_on_the_command_line_is_one_clear_line(tmp_path, checkpoints):
    store, shop = tmp_path / "store", tmp_path / "shop"
    shop.mkdir()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(shop / "p0.jpg")
    runner = CliRunner()
    assert runner.invoke(cli_app, ["index", "--checkpoint", str(checkpoints[0]), "--store", str(store),
                                   "--room", "r", "--shop", str(shop)]).exit_code == 0
    clip = write_mp4(tmp_path / "clip.mp4", [np.zeros((32, 32, 3), np.uint8)] * 4)
    gbk_as_argv = ASR.encode("gbk").decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    result = runner.invoke(cli_app, ["query", "--store", str(store), "--room", "r", "--clip", str(clip),
                                     "--asr", gbk_as_argv])
    assert result.exit_code != 0 and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "not valid UTF-8" in lines[0] and "Traceback" not in result.output
