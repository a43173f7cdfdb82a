"""`sgmn index` / `sgmn query` end to end with a tiny saved model, images and an mp4."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import sgmn
from sgmn.cli import app
from helpers import write_mp4  # noqa: E402


def _img(seed, size=(40, 32)):
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 255, 3) + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return sgmn.create_model("sgmn-tiny").save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture()
def shop(tmp_path):
    shop = tmp_path / "shop"
    shop.mkdir()
    for i in range(3):
        Image.fromarray(_img(i)).save(shop / f"p{i}.jpg")
    (shop / "p3").mkdir()  # a product with two images
    Image.fromarray(_img(3)).save(shop / "p3" / "a.png")
    Image.fromarray(_img(4)).save(shop / "p3" / "b.png")
    (shop / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (shop / "bad id.jpg").write_bytes((shop / "p0.jpg").read_bytes())
    titles = tmp_path / "titles.tsv"
    titles.write_text("p0\tred silk dress\np3\twhite sneakers\n")
    return shop, titles


def Retriever_rooms(store):
    from sgmn.retrieval import Retriever

    with Retriever.open(store) as r:
        return r.list_rooms()


def _video(path, n=5):
    return write_mp4(path, [_img(50 + i, (48, 32)) for i in range(n)], rate=5, codec="libx264")


def test_index_then_query_table_and_json(tmp_path, store_at, checkpoint, shop):
    shop_dir, titles = shop
    store = store_at("store")  # each backend: a store folder, and Milvus Lite
    runner = CliRunner()
    args = ["index", "--checkpoint", str(checkpoint), "--store", str(store), "--room", "live-1",
            "--shop", str(shop_dir), "--titles", str(titles)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "room live-1: 4 added, 0 updated, 0 removed, 2 skipped; 4 product(s) in the room" in res.output
    assert "broken.jpg" in res.output and "bad id" in res.output  # bad items reported by name

    clip = _video(tmp_path / "clip.mp4")
    res = runner.invoke(app, ["query", "--checkpoint", str(checkpoint), "--store", str(store), "--room", "live-1",
                              "--clip", str(clip), "--asr", "red silk dress", "--top-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["asr"] == "red silk dress" and len(out["hits"]) == 3
    scores = [h["score"] for h in out["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert {h["product_id"] for h in out["hits"]} <= {"p0", "p1", "p2", "p3"}

    # the same query through the Python API gives the same ranking
    from sgmn.retrieval import Retriever

    with Retriever.open(store) as r:
        direct = r.query("live-1", clip, asr="red silk dress", top_k=3)
    assert [h["product_id"] for h in out["hits"]] == [h.product_id for h in direct.hits]

    # table output; the checkpoint is remembered by the store
    res = runner.invoke(app, ["query", "--store", str(store), "--room", "live-1", "--clip", str(clip)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "ASR: (none)" in lines[0] and len(lines) == 2 + 4
    assert "white sneakers" in res.output

    # re-indexing updates; --prune removes products no longer in the folder
    (shop_dir / "p1.jpg").unlink()
    res = runner.invoke(app, args + ["--prune"])
    assert res.exit_code == 0, res.output
    assert "0 added, 3 updated, 1 removed" in res.output and "3 product(s)" in res.output


def test_cli_errors_are_one_clear_line(tmp_path, checkpoint, shop):
    shop_dir, titles = shop
    store = tmp_path / "store"
    runner = CliRunner()
    res = runner.invoke(app, ["index", "--checkpoint", str(checkpoint), "--store", str(store), "--room", "../x",
                              "--shop", str(shop_dir)])
    assert res.exit_code == 2 and "room id" in res.output and not (tmp_path / "x").exists()
    res = runner.invoke(app, ["index", "--checkpoint", str(checkpoint), "--store", str(store), "--room", "r",
                              "--shop", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing" in res.output
    res = runner.invoke(app, ["index", "--checkpoint", str(checkpoint), "--store", str(store), "--room", "r",
                              "--shop", str(shop_dir), "--on-error", "raise"])
    assert res.exit_code == 2 and "'bad id'" in res.output  # the first bad product (sorted ids)
    (shop_dir / "bad id.jpg").unlink()
    res = runner.invoke(app, ["index", "--checkpoint", str(checkpoint), "--store", str(store), "--room", "r",
                              "--shop", str(shop_dir), "--on-error", "raise"])
    assert res.exit_code == 2 and "broken.jpg" in res.output and "r" not in Retriever_rooms(store)
    runner.invoke(app, ["index", "--checkpoint", str(checkpoint), "--store", str(store), "--room", "r",
                        "--shop", str(shop_dir)])
    res = runner.invoke(app, ["query", "--store", str(store), "--room", "nope", "--clip", str(shop_dir / "p0.jpg")])
    assert res.exit_code == 2 and "error:" in res.output
    res = runner.invoke(app, ["query", "--store", str(store), "--room", "nope", "--clip", str(_video(tmp_path / "c.mp4"))])
    assert res.exit_code == 2 and "unknown room 'nope'" in res.output
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 64)
    res = runner.invoke(app, ["query", "--store", str(store), "--room", "r", "--clip", str(bad)])
    assert res.exit_code == 2 and "bad.mp4" in res.output


def test_query_a_frame_folder_in_time_order_with_its_asr_file(tmp_path, checkpoint, shop):
    """`--clip DIR`: frames named as `ffmpeg ... frame_%d.jpg` writes them (frame_2 before
    frame_10) and the folder's asr.txt; the same ranking as the Python API on the frames in order."""
    shop_dir, titles = shop
    store = tmp_path / "store"
    runner = CliRunner()
    res = runner.invoke(app, ["index", "--checkpoint", str(checkpoint), "--store", str(store), "--room", "r",
                              "--shop", str(shop_dir), "--titles", str(titles)])
    assert res.exit_code == 0, res.output
    frames = [_img(200 + i, (48, 32)) for i in range(12)]
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, f in enumerate(frames, 1):
        Image.fromarray(f).save(folder / f"frame_{i}.png")
    (folder / "asr.txt").write_text("white sneakers\n")
    res = runner.invoke(app, ["query", "--store", str(store), "--room", "r", "--clip", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    from sgmn.retrieval import Retriever

    with Retriever.open(store) as r:
        direct = r.query("r", frames, asr="white sneakers", top_k=10)
        by_folder = r.query("r", folder, asr="white sneakers", top_k=10)
    assert out["asr"] == "white sneakers" and [f["index"] for f in out["frames"]] == direct.frame_indices
    expected = [h.product_id for h in direct.hits]
    assert [h["product_id"] for h in out["hits"]] == expected == [h.product_id for h in by_folder.hits]
    scores = [h.score for h in direct.hits]
    assert [h["score"] for h in out["hits"]] == pytest.approx(scores, abs=1e-5)
    assert [h.score for h in by_folder.hits] == pytest.approx(scores, abs=1e-5)


def test_query_beside_a_writer_and_on_a_corrupt_store_and_busy_writes(tmp_path, checkpoint, shop, monkeypatch):
    """Issues 11.4 and 12.6: `sgmn query` opens the store read-only (no lock, no file created)
    and answers while another process holds the write lock; a write that must wait says so and
    names the HTTP endpoint; a corrupt database is one line, no traceback."""
    from sgmn.retrieval import store as store_module
    from sgmn.retrieval.store import GalleryStore

    shop_dir, titles = shop
    store = tmp_path / "store"
    runner = CliRunner()
    index = ["index", "--checkpoint", str(checkpoint), "--store", str(store), "--room", "r", "--shop", str(shop_dir)]
    assert runner.invoke(app, index).exit_code == 0
    clip = _video(tmp_path / "c.mp4")
    (store / ".lock").unlink()
    before = sorted(p.name for p in store.iterdir() if not p.name.startswith("store.sqlite-"))
    monkeypatch.setattr(store_module, "WRITE_WAIT_S", 0.5)
    with GalleryStore(store) as writer, writer.write_lock():  # another process writing right now
        res = runner.invoke(app, ["query", "--store", str(store), "--room", "r", "--clip", str(clip)])
        assert res.exit_code == 0, res.output
        assert sorted(p.name for p in store.iterdir() if not p.name.startswith("store.sqlite-")) == sorted(before + [".lock"])
        res = runner.invoke(app, index)
        assert res.exit_code == 2 and "POST /rooms/{room}/products" in res.output and "Traceback" not in res.output
    (store / "store.sqlite").write_bytes(b"\x00garbage" * 1000)
    for name in ("store.sqlite-wal", "store.sqlite-shm"):
        (store / name).unlink(missing_ok=True)
    res = runner.invoke(app, ["query", "--store", str(store), "--room", "r", "--clip", str(clip)])
    assert res.exit_code == 2 and "not a readable SQLite store database" in res.output
    assert len(res.output.strip().splitlines()) == 1 and isinstance(res.exception, SystemExit)


_HOLD_LITE = """
import sys, time
from sgmn.retrieval.backend import open_store
store = open_store(sys.argv[1])
store.client()
print("holding", flush=True)
time.sleep(120)
"""


def test_query_on_a_milvus_lite_store_held_by_a_server_names_the_http_endpoint(tmp_path, checkpoint, shop):
    """Milvus Lite admits one process: beside a server holding the .db, `sgmn query` says to ask
    the server over HTTP (or use a Milvus server) in one line."""
    import subprocess
    import sys

    shop_dir, titles = shop
    store = tmp_path / "store.db"
    runner = CliRunner()
    res = runner.invoke(app, ["index", "--checkpoint", str(checkpoint), "--store", str(store), "--room", "r",
                              "--shop", str(shop_dir)])
    assert res.exit_code == 0, res.output
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LITE, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        res = runner.invoke(app, ["query", "--store", str(store), "--room", "r", "--clip", str(_video(tmp_path / "c.mp4"))])
        assert res.exit_code == 2, res.output
        assert "open in another process" in res.output and "POST /rooms/{room}/query" in res.output
        assert "http://host:19530" in res.output and len(res.output.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
