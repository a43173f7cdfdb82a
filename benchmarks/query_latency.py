"""How long one `sgmn query` takes from the shell, on a room of 1,000 products, and where the time goes.

Target (issue 12): an answer within 3 s wall time on a quiet 2-core machine. This script

1. builds (once, cached under ``benchmarks/out/query-latency/``) a store with one room of
   ``--products`` products (random 64 px images, titles) indexed by a ``sgmn-tiny`` model;
2. runs the real command ``python -m sgmn.cli query --store ... --room ... --clip clip.mp4 --asr ...``
   ``--repeats`` times in fresh processes, recording wall time and CPU seconds (user + sys of the
   child) and checking that stderr holds no "Loading weights" progress bar;
3. times the phases of the same query in one fresh process (imports, model load, store open,
   text encoder load, clip decoding + encoding, search) to show what costs what;
4. writes the ``query-latency`` section of docs/benchmarks.md with the machine and its load.

On a busy machine wall time measures the queue for the CPU, not the command; CPU seconds are
given beside it (a quiet machine cannot answer faster than its CPU seconds divided by the
threads it keeps busy). The verdict against the 3 s target is printed only for a quiet machine
(1-minute load average below the usable cores).

    python benchmarks/query_latency.py                    # 1,000 products, 5 runs, writes the doc section
    python benchmarks/query_latency.py --smoke            # 8 products, 1 run, prints only (the tests run this)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TARGET_S = 3.0
ROOM = "room"
ASR = "the red mug with the striped handle, only today"

# Libraries that cost seconds to import and that a query does not need (issue 12, item 7): the
# phase run fails the benchmark when one of them is imported.
HEAVY = ("transformers", "sentence_transformers", "sklearn", "scipy", "sympy")

_PHASES = r"""
import json, resource, sys, time
HEAVY = %r
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
rows, last = [], (time.perf_counter(), cpu())
def mark(name):
    global last
    now = (time.perf_counter(), cpu())
    rows.append({"phase": name, "wall_s": now[0] - last[0], "cpu_s": now[1] - last[1]})
    last = now
import sgmn.cli; mark("python + CLI start (typer, no torch)")
import torch; mark("import torch")
import sgmn.model.sgmn, sgmn.model.vit, sgmn.text.bert, sgmn.retrieval.retriever; mark("import sgmn's model and store code")
import sgmn
model = sgmn.load_model(sys.argv[1]); mark("load the model (config + safetensors)")
from sgmn.retrieval import Retriever
retriever = Retriever.open(sys.argv[2], model=model); mark("open the store (+ model fingerprint)")
model.text_encoder.encode(["warm-up"]); mark("load the text encoder (MiniLM)")
q = retriever.encode_clip(sys.argv[3], sys.argv[4]); mark("decode + encode the clip and ASR")
retriever.check_model(); retriever.store.room_vectors(sys.argv[5]); mark("read the room's vectors")
hits = retriever._rank_room(retriever.store.room_vectors(sys.argv[5]), q.query, 10); mark("score and rank")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({"rows": rows, "heavy": heavy}))
"""


def build_store(folder: Path, products: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """(model, store, clip) under ``folder``; reused when a complete copy is there."""
    import numpy as np
    import torch
    from PIL import Image

    import sgmn
    from sgmn.retrieval import Retriever

    model_dir, store, clip = folder / "model", folder / "store", folder / "clip.mp4"
    done = folder / "complete.json"
    if done.is_file() and json.loads(done.read_text()) == {"products": products, "seed": seed}:
        return model_dir, store, clip
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    sgmn.create_model("sgmn-tiny").save_pretrained(model_dir)
    rng = np.random.default_rng(seed)
    items = [(f"p{i:04d}", [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))],
              f"product {i}: ceramic mug, {['red', 'blue', 'green', 'white'][i % 4]}, size {i % 7}")
             for i in range(products)]
    from tqdm import tqdm

    with Retriever.open(store, model=model_dir) as r, tqdm(total=products, desc="indexing", unit="product") as bar:
        r.add_products(ROOM, items, create_room=True, progress=bar.update)
    import av

    with av.open(str(clip), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for _ in range(24):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    done.write_text(json.dumps({"products": products, "seed": seed}))
    return model_dir, store, clip


def _env() -> dict:
    repo = str(common.REPO)
    return dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""),
                HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def run_query(store: Path, clip: Path) -> dict:
    """One `sgmn query` in a fresh process: wall, the child's CPU seconds, its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sgmn.cli", "query", "--store", str(store), "--room", ROOM,
                           "--clip", str(clip), "--asr", ASR, "--top-k", "5"],
                          capture_output=True, text=True, env=_env(), timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"sgmn query failed ({done.returncode}): {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "stderr": done.stderr, "stdout": done.stdout}


def phases(model: Path, store: Path, clip: Path) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", _PHASES % (HEAVY,), str(model), str(store), str(clip), ASR, ROOM],
                          capture_output=True, text=True, env=_env(), timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"phase timing failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["heavy"]:
        raise RuntimeError(f"the query imported {', '.join(result['heavy'][:8])} (none of {HEAVY} is needed)")
    return result["rows"]


def render(runs: list[dict], rows: list[dict], info: dict, products: int, command: str, load_end) -> str:
    walls = sorted(r["wall_s"] for r in runs)
    cpus = sorted(r["cpu_s"] for r in runs)
    median = lambda xs: xs[len(xs) // 2]  # noqa: E731
    quiet = info["load_average"] and info["load_average"][0] < info["cores_usable"]
    verdict = (f"**{'within' if median(walls) <= TARGET_S else 'over'} the {TARGET_S:.0f} s target** (quiet machine)"
               if quiet else
               f"not judged against the {TARGET_S:.0f} s target: the machine was busy (load average above its "
               f"{info['cores_usable']} cores), so wall time measures the wait for a CPU; CPU seconds are the "
               "closer estimate of a quiet machine's wall time")
    lines = [
        "## Query latency: one `sgmn query` from the shell",
        "",
        f"Command: `{command}` (built a store of one room with {products} products indexed by `sgmn-tiny`, then ran "
        f"`sgmn query --store S --room room --clip clip.mp4 --asr ...` {len(runs)} times, each in a fresh process).",
        "",
        common.machine_markdown(info) + f"\n\nLoad average at the end: {', '.join(str(x) for x in load_end)}.",
        "",
        common.markdown_table(
            ["products in the room", "runs", "wall s (median)", "wall s (min..max)", "CPU s (median)",
             "progress bars on stderr"],
            [[products, len(runs), f"{median(walls):.2f}", f"{walls[0]:.2f}..{walls[-1]:.2f}", f"{median(cpus):.2f}",
              "none" if not any("Loading weights" in r["stderr"] for r in runs) else "yes"]],
        ),
        "",
        f"Verdict: {verdict}.",
        "",
        "Where the time goes (one fresh process, the same query, phase by phase):",
        "",
        common.markdown_table(["phase", "wall s", "CPU s"],
                              [[r["phase"], f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}"] for r in rows]
                              + [["total", f"{sum(r['wall_s'] for r in rows):.2f}",
                                  f"{sum(r['cpu_s'] for r in rows):.2f}"]]),
        "",
        "Importing torch is now most of the cost. The CLIP vision tower (sgmn/model/vit.py) and the MiniLM "
        "text encoder (sgmn/text/bert.py, tokenizer through the `tokenizers` library) run in plain torch with "
        "the same weights and the same outputs as transformers' models (tests/test_backbone.py, "
        "tests/test_text.py, tests/test_cli_user.py compare them), so a query imports none of "
        f"{', '.join(HEAVY)} (the phase run checks it); importing transformers' CLIP modeling code alone "
        "took 2.81 s of the 5.89 s measured before (git 9f5e3ae).",
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="8 products, 1 run, nothing written (used by the tests)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--cache", type=Path, default=common.OUT_DIR / "query-latency")
    parser.add_argument("--doc", type=Path, default=common.DOC)
    args = parser.parse_args(argv)
    if args.smoke:
        args.products, args.repeats, args.no_write = 8, 1, True
        args.cache = args.cache.with_name(args.cache.name + "-smoke")

    info = common.machine_info()
    model, store, clip = build_store(args.cache / f"{args.products}", args.products)
    runs = [run_query(store, clip) for _ in range(args.repeats)]
    rows = phases(model, store, clip)
    load_end = [round(x, 2) for x in os.getloadavg()]
    body = render(runs, rows, info, args.products, common.command_line(), load_end)
    print(body)
    if any("Loading weights" in r["stderr"] for r in runs):
        print("error: `sgmn query` printed a 'Loading weights' progress bar", file=sys.stderr)
        return 1
    if not args.no_write:
        common.write_section("query-latency", body, args.doc)
        print(f"wrote the query-latency section of {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
