"""A new user's first hour on the CLI (issue 12): one-line errors with exit code 2, a data set
indexed room by room, one JSON schema for `query --json` and the HTTP API, a readable table."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import sgmn
from sgmn.cli import app
from sgmn.data.synthetic import SynthConfig, generate
from helpers import write_mp4  # noqa: E402

TINY = SynthConfig(rooms=2, products_per_room=3, clips_per_product=1, test_clips_per_product=1,
                   frames_per_clip=2, image_size=48, seed=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    generate(root, TINY, progress=False)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return sgmn.create_model("sgmn-tiny").save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


def _one_line_error(res, *words):
    """Exit code 2, no traceback, the error on one line naming what was wrong."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, Exception) or isinstance(
        res.exception, SystemExit), res.exception
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


# ---- item 5: errors ---------------------------------------------------------------------------
def test_train_mistakes_are_one_line_exit_2(tmp_path, data):
    runner = CliRunner()
    base = ["train", "--data", str(data), "--format", "lpr4m", "--epochs", "1"]
    _one_line_error(runner.invoke(app, base + ["--model", "sgmn-huge", "--out", str(tmp_path / "a")]),
                    "sgmn-huge", "sgmn-tiny")
    _one_line_error(runner.invoke(app, base + ["--model", "sgmn-tiny", "--out", str(tmp_path / "a"),
                                               "--set", "model.vision.nope=2"]), "vision.nope")
    _one_line_error(runner.invoke(app, base + ["--model", "sgmn-tiny", "--out", str(tmp_path / "a"),
                                               "--set", "train.nope=2"]), "nope")
    _one_line_error(runner.invoke(app, base + ["--model", "sgmn-tiny", "--out", str(tmp_path / "a"),
                                               "--set", f"model.vision.pretrained={tmp_path}/missing.pt"]),
                    "model.vision.pretrained", "missing.pt")
    _one_line_error(runner.invoke(app, base + ["--resume", str(data)]), str(data))
    assert not (tmp_path / "a").exists()  # nothing was written for any of these


def test_train_refuses_a_used_run_folder_before_reading_data(tmp_path):
    # The data folder is empty: reading it would fail with another message, so the run-folder
    # message proves the check comes first.
    empty = tmp_path / "empty"
    empty.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("{}\n")
    res = CliRunner().invoke(app, ["train", "--data", str(empty), "--format", "lpr4m", "--model", "sgmn-tiny",
                                   "--out", str(run)])
    _one_line_error(res, "already holds a training run", "--resume")


def test_eval_text_weight_ranks_with_the_given_lambda_and_records_it(tmp_path, data, checkpoint):
    from sgmn.data.readers import read_dataset
    from sgmn.eval.protocol import evaluate

    runner = CliRunner()
    base = ["eval", "--data", str(data), "--checkpoint", str(checkpoint), "--no-mechanism"]
    rankings = {}
    for weight in (0.0, 50.0):
        out = tmp_path / f"w{weight}"
        res = runner.invoke(app, base + ["--out", str(out), "--text-weight", str(weight)])
        assert res.exit_code == 0, res.output
        assert json.loads((out / "metrics.json").read_text())["model"]["text_weight"] == weight
        rankings[weight] = json.loads((out / "rankings.json").read_text())
        model = sgmn.load_model(checkpoint)
        model.config.text_weight = weight
        expected = evaluate(model, read_dataset(data, "lpr4m"), progress=False).rankings
        order = lambda ranked: {q: [product for product, _ in r] for q, r in ranked.items()}  # noqa: E731
        assert order(expected) == order(rankings[weight])
    assert order(rankings[0.0]) != order(rankings[50.0])  # the text term really moves the ranking
    _one_line_error(runner.invoke(app, base + ["--out", str(tmp_path / "e"), "--text-weight", "-1"]),
                    "--text-weight", "≥ 0")
    meanpool = sgmn.create_model("clip-meanpool").save_pretrained(tmp_path / "meanpool")
    _one_line_error(runner.invoke(app, ["eval", "--data", str(data), "--checkpoint", str(meanpool), "--out",
                                        str(tmp_path / "e"), "--text-weight", "1"]), "--text-weight", "no text branch")
    assert not (tmp_path / "e").exists()


def test_eval_and_serve_on_a_wrong_checkpoint(tmp_path, data):
    runner = CliRunner()
    _one_line_error(runner.invoke(app, ["eval", "--data", str(data), "--checkpoint", str(data),
                                        "--out", str(tmp_path / "e")]), "not a saved model")
    jpg = tmp_path / "some.jpg"
    Image.new("RGB", (8, 8)).save(jpg)
    line = _one_line_error(runner.invoke(app, ["eval", "--data", str(data), "--checkpoint", str(jpg),
                                               "--out", str(tmp_path / "e")]), "some.jpg", "not a PyTorch checkpoint")
    assert "weights_only" not in line
    # a pickle that is not a plain state dict: refused without torch's "weights_only=False" advice
    evil = tmp_path / "model.bin"
    import argparse
    import pickle

    evil.write_bytes(pickle.dumps({"x": argparse.Namespace(a=1)}, protocol=2))
    line = _one_line_error(runner.invoke(app, ["eval", "--data", str(data), "--checkpoint", str(evil),
                                               "--out", str(tmp_path / "e")]), "model.bin")
    assert "weights_only=False" not in line
    assert not (tmp_path / "e").exists()

    store = tmp_path / "store"
    res = runner.invoke(app, ["serve", "--checkpoint", str(data), "--store", str(store)])
    assert res.exit_code == 2 and "not a saved model" in res.output, res.output
    assert not store.exists()  # failing on the checkpoint leaves no store folder behind


def test_subprocess_shows_no_traceback(tmp_path):
    """The real entry point (not CliRunner): stderr is one line."""
    proc = subprocess.run([sys.executable, "-m", "sgmn.cli", "train", "--data", str(tmp_path), "--model", "nope",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: --model 'nope'"), proc.stderr


def test_inspect_folders_counts_corrupt_images_as_skipped(tmp_path):
    shop = tmp_path / "shop"
    shop.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(shop / "good.jpg")
    (shop / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (shop / "half").mkdir()
    Image.new("RGB", (8, 8)).save(shop / "half" / "a.jpg")
    (shop / "half" / "b.jpg").write_bytes(b"junk")
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", "--data", str(tmp_path), "--format", "folders", "--on-error", "skip", "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output)
    assert shown["products"] == 2  # good, half (with its one readable image)
    assert shown["skipped"] == {"bad_image": 2, "product_without_image": 1}
    _one_line_error(runner.invoke(app, ["inspect", "--data", str(tmp_path), "--format", "folders"]), "corrupt.jpg")


# ---- item 3: a data set into a store ------------------------------------------------------------
def test_index_every_room_of_a_data_set(tmp_path, data, checkpoint):
    from sgmn.data.readers import read_dataset
    from sgmn.retrieval import Retriever

    dataset = read_dataset(data, "lpr4m")
    store = tmp_path / "store"
    res = CliRunner().invoke(app, ["index", "--checkpoint", str(checkpoint), "--store", str(store),
                                   "--data", str(data), "--format", "lpr4m"])
    assert res.exit_code == 0, res.output
    assert f"{len(dataset.rooms)} rooms:" in res.output
    with Retriever.open(store) as r:
        assert sorted(r.list_rooms()) == sorted(dataset.rooms)
        for room in dataset.rooms:
            stored = {p.product_id: p.title for p in r.list_products(room)}
            assert stored == {p.product_id: p.title for p in dataset.room_gallery(room)}
            assert any(stored.values())  # titles came along

    # one room only, and a split filter
    one = sorted(dataset.rooms)[0]
    res = CliRunner().invoke(app, ["index", "--checkpoint", str(checkpoint), "--store", str(tmp_path / "s1"),
                                   "--data", str(data), "--room", one])
    assert res.exit_code == 0 and f"room {one}:" in res.output, res.output
    _one_line_error(CliRunner().invoke(app, ["index", "--checkpoint", str(checkpoint), "--store", str(tmp_path / "s2"),
                                             "--data", str(data), "--room", "nowhere"]), "nowhere")


def test_index_every_room_of_the_folders_layout(tmp_path, checkpoint):
    shop = tmp_path / "d" / "shop"
    shop.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(shop / f"sku{i}.jpg")
    (shop / "titles.tsv").write_text("sku0\tred mug\n")
    res = CliRunner().invoke(app, ["index", "--checkpoint", str(checkpoint), "--store", str(tmp_path / "s"),
                                   "--data", str(tmp_path / "d"), "--format", "folders"])
    assert res.exit_code == 0 and "room shop: 2 added" in res.output, res.output


def test_shop_folder_of_a_data_set_is_refused(tmp_path, data, checkpoint):
    shop_dir = next(p for p in data.iterdir() if p.is_dir() and any(p.glob("*.jpg")))
    res = CliRunner().invoke(app, ["index", "--checkpoint", str(checkpoint), "--store", str(tmp_path / "s"),
                                   "--room", "r", "--shop", str(shop_dir)])
    _one_line_error(res, "lpr4m data set", "--data")
    assert not (tmp_path / "s").exists()
    _one_line_error(CliRunner().invoke(app, ["index", "--store", str(tmp_path / "s"), "--shop", str(shop_dir)]),
                    "--room")


# ---- item 4: query output -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def store_with_siblings(tmp_path_factory, checkpoint):
    from sgmn.retrieval import Retriever

    root = tmp_path_factory.mktemp("siblings")
    rng = np.random.default_rng(0)
    long = "organic cotton crew-neck t-shirt with embroidered logo, relaxed fit, size "
    items = [(f"{i:08d}-aaaa-bbbb-cccc-{i:012d}", [Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))],
              long + size) for i, size in enumerate(["S", "M", "XL"])]
    items.append(("p1", [Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))], "mug"))
    with Retriever.open(root / "store", model=checkpoint) as r:
        r.add_products("room", items, create_room=True)
    clip = write_mp4(root / "clip.mp4", [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(4)], rate=4)
    return root / "store", clip, items


def test_table_columns_align_and_titles_are_whole(store_with_siblings):
    from sgmn.retrieval.cli import format_hits
    from sgmn.retrieval import Retriever

    store, clip, items = store_with_siblings
    with Retriever.open(store) as r:
        hits = r.query("room", clip, asr="t-shirt", top_k=4).hits
    for width in (120, 60):  # a narrow terminal wraps the title instead of cutting it
        lines = format_hits(hits, width=width).splitlines()
        header = lines[0]
        starts = [header.index(name) for name in ("product", "title", "image")]
        for hit in hits:
            i = next(i for i, line in enumerate(lines) if hit.product_id in line)
            row = lines[i]
            assert row.index(hit.product_id) == starts[0]  # 36-character ids line up under the header
            assert row.index(str(hit.image_path)) == starts[2]
            pieces = [row[starts[1]:starts[2]].strip()]
            for line in lines[i + 1:]:
                if line[:starts[1]].strip():  # the next ranked row
                    break
                pieces.append(line.strip())
            assert " ".join(pieces) == " ".join((hit.title or "").split())  # the whole title, size included
    assert {h.title for h in hits} == {t for _, _, t in items}


def test_cli_json_and_http_json_have_one_schema(store_with_siblings, checkpoint):
    from fastapi.testclient import TestClient

    from sgmn.retrieval import Retriever
    from sgmn.serve.app import create_app

    store, clip, _ = store_with_siblings
    res = CliRunner().invoke(app, ["query", "--store", str(store), "--room", "room", "--clip", str(clip),
                                   "--asr", "t-shirt", "--top-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    cli = json.loads(res.output)
    with Retriever.open(store) as r, TestClient(create_app(r)) as client:
        with open(clip, "rb") as f:
            http = client.post("/rooms/room/query", files={"clip": ("clip.mp4", f, "video/mp4")},
                               data={"asr": "t-shirt", "top_k": "3"}).json()

    def shape(obj):
        if isinstance(obj, dict):
            return {k: shape(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [shape(obj[0])] if obj and isinstance(obj[0], dict) else "list"
        return "value"

    assert shape(cli) == shape(http)  # the same keys at every level
    assert [h["product_id"] for h in cli["hits"]] == [h["product_id"] for h in http["hits"]]
    assert [h["score"] for h in cli["hits"]] == pytest.approx([h["score"] for h in http["hits"]], abs=1e-5)
    assert cli["hits"][0]["image_url"].startswith("file://") and http["hits"][0]["image_url"].startswith("/rooms/")
    assert [f["index"] for f in cli["frames"]] == [f["index"] for f in http["frames"]]


# ---- item 7: start-up -----------------------------------------------------------------------------
def test_query_latency_benchmark_smoke_and_no_progress_bars(tmp_path, capsys):
    """The benchmark runs the real `sgmn query` in fresh processes; it fails (exit 1) when stderr
    shows a "Loading weights" bar. Its timing table names every phase."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import query_latency

    assert query_latency.main(["--smoke", "--cache", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "| progress bars on stderr |" in out.replace("wall s (median) | wall s (min..max) | CPU s (median) ", "")
    for phase in ("import torch", "load the model", "load the text encoder", "score and rank", "total"):
        assert phase in out


HEAVY_MODULES = ("transformers", "sentence_transformers", "sklearn", "scipy", "sympy")


def test_query_imports_no_heavy_library(store_with_siblings):
    """`sgmn query` runs the CLIP tower and MiniLM in plain torch (sgmn/model/vit.py,
    sgmn/text/bert.py): importing transformers' modeling code alone cost ~3 s per query."""
    store, clip, _ = store_with_siblings
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "sgmn.cli", "query", "--store", str(store),
                           "--room", "room", "--clip", str(clip), "--asr", "t-shirt", "--top-k", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rank" in done.stdout and "-X importtime" not in done.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "tokenizers" in imported  # the parse works
    assert not {m for m in imported if m.split(".")[0] in HEAVY_MODULES}


def test_query_answers_exactly_as_the_transformers_models(store_with_siblings, monkeypatch):
    """The same query through the regular models (transformers' CLIPVisionModel with the same
    weights for the frames, transformers' tokenizer + BertModel for the ASR) ranks the same
    products with the same scores."""
    import transformers

    from sgmn.model.backbone import _hf_vision_config, _innermost_vision
    from sgmn.retrieval import Retriever
    from sgmn.text import encoders

    store, clip, _ = store_with_siblings
    with Retriever.open(store) as r:
        fast = r.query("room", clip, asr="organic t-shirt, size XL", top_k=4)
        assert r.model.text_encoder.model.backend == "torch"
    monkeypatch.setattr(encoders, "_load_sentence_model",
                        lambda path, device: encoders._PooledSentenceModel(Path(path), device, backend="transformers"))
    with Retriever.open(store) as r:
        backbone = r.model.backbone
        hf = transformers.CLIPVisionModel(_hf_vision_config(backbone.config)).eval()
        tower = _innermost_vision(hf)
        tower.load_state_dict(backbone.vision_model.state_dict())

        def transformers_forward(pixels, keep_mask=None, guide=None, guide_layers=1):
            assert keep_mask is None or bool(keep_mask.all())
            assert guide_layers == 1  # the default: the guide biases the last layer only
            if guide is None:
                return backbone.proj(tower.post_layernorm(hf(pixel_values=pixels).last_hidden_state))
            # text-guided attention (tga_mode attention_bias): transformers' last layer with the
            # guide's bias on the CLS query's patch keys
            hidden = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
            bias, attention = guide(hidden)
            n = hidden.shape[1]
            mask = torch.zeros(hidden.shape[0], 1, n, n)
            mask[:, 0, 0, 1:] = bias
            last = tower.encoder.layers[-1]
            kwargs = {"causal_attention_mask": None} if "causal_attention_mask" in inspect.signature(last.forward).parameters else {}
            out = last(hidden, mask, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            return backbone.proj(tower.post_layernorm(out)), attention

        monkeypatch.setattr(backbone, "forward", transformers_forward)
        regular = r.query("room", clip, asr="organic t-shirt, size XL", top_k=4)
        assert r.model.text_encoder.model.backend == "transformers"
    assert [h.product_id for h in fast.hits] == [h.product_id for h in regular.hits]
    assert [h.score for h in fast.hits] == pytest.approx([h.score for h in regular.hits], abs=1e-6, rel=0)
    assert len({round(h.score, 6) for h in fast.hits}) > 1  # a real ranking, not ties


def test_index_shows_progress_per_product(tmp_path, checkpoint):
    shop = tmp_path / "shop"
    shop.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (80 * i, 0, 0)).save(shop / f"sku{i}.jpg")
    res = CliRunner().invoke(app, ["index", "--checkpoint", str(checkpoint), "--store", str(tmp_path / "s"),
                                   "--room", "r", "--shop", str(shop)])
    assert res.exit_code == 0, res.output
    assert "/3 [" in res.output and "product/s" in res.output  # tqdm bar, counted in products


@pytest.mark.parametrize("fmt", ["lpr750k", "sgmn", "movingfashion"])
def test_index_every_room_for_the_other_readers(tmp_path, checkpoint, fmt):
    """The readers' own test fixtures, indexed room by room: every room with its whole gallery."""
    from sgmn.data.readers import read_dataset
    from sgmn.retrieval import Retriever

    if fmt == "lpr750k":
        from test_reader_lpr750k import write_lpr750k as write
    elif fmt == "sgmn":
        import test_reader_sgmn_code as fixture

        def write(root):  # the real files hold 512 floats, what the reader expects without options
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(fixture, "vec", lambda seed: [float(seed)] * 512)
                fixture.write_layout(root)
    else:
        from test_reader_movingfashion import write_movingfashion as write
    root = tmp_path / "data"
    root.mkdir()
    write(root)
    dataset = read_dataset(root, fmt)
    res = CliRunner().invoke(app, ["index", "--checkpoint", str(checkpoint), "--store", str(tmp_path / "s"),
                                   "--data", str(root), "--format", fmt, "--on-error", "raise"])
    assert res.exit_code == 0, res.output
    with Retriever.open(tmp_path / "s") as r:
        assert sorted(r.list_rooms()) == sorted(dataset.rooms)
        for room in dataset.rooms:
            stored = {p.product_id: p.title for p in r.list_products(room)}
            assert stored == {p.product_id: p.title for p in dataset.room_gallery(room)}


def test_cli_start_imports_neither_torch_nor_sentence_transformers():
    """Every command module is imported to build the CLI: none may pull in torch (seconds)."""
    code = "import sys, sgmn.cli; print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
