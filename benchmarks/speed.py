"""Speed, memory and scaling of sgmn: encoders, gallery search, evaluation, training steps.

    python benchmarks/speed.py --quick     # a few minutes on a small CPU machine
    python benchmarks/speed.py             # full sizes (1M-product gallery, more batch sizes)
    python benchmarks/speed.py --smoke     # seconds; what tests/test_benchmarks.py runs

Measures, and writes into the ``speed`` section of docs/benchmarks.md:

1. clip- and product-encoding throughput against batch size for ``sgmn-tiny`` and
   ``sgmn-vitb32`` (random weights: speed does not depend on the values);
2. scoring throughput against gallery size: exact (torch matmul + top-k, numpy matmul +
   argpartition) vs FAISS flat / IVF / HNSW from ``sgmn.retrieval``, with build time, recall@10
   of the approximate indexes against exact search, bytes of the vectors and of the index, and
   process RSS;
3. evaluation wall time per 1,000 queries with product embeddings computed once (sgmn's protocol)
   vs re-encoding the room's gallery for every query (the published evaluation script), same
   model, same data, same run — and a check that both give the same scores;
4. training step time and peak memory per batch size (CPU: sampled RSS above the level before the
   step; CUDA: ``torch.cuda.max_memory_allocated``);
5. on CUDA also bf16 autocast numbers and the achieved fraction of the GPU's peak matrix throughput
   for the ViT forward (FLOPs counted analytically, see :func:`vit_forward_flops`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


# ---------------------------------------------------------------- configuration
@dataclass
class SpeedConfig:
    mode: str = "full"
    models: tuple[str, ...] = ("sgmn-tiny", "sgmn-vitb32")
    # Encoding throughput: batch sizes per model (a ViT-B/32 clip is 10 full images).
    encode_batch_sizes: dict = field(default_factory=lambda: {"sgmn-tiny": (1, 8, 32, 128), "sgmn-vitb32": (1, 4, 16, 64)})
    # Gallery search
    gallery_sizes: tuple[int, ...] = (100, 1_000, 10_000, 100_000, 1_000_000)
    ann_max_rows: int = 1_000_000  # IVF / HNSW are built only up to this many rows (build cost)
    dim: int = 512
    search_queries: int = 256
    top_k: int = 10
    # Evaluation: cached gallery vs re-encoding per query
    eval_models: tuple[str, ...] = ("sgmn-tiny", "sgmn-vitb32")
    eval_rooms: int = 4
    eval_products_per_room: int = 30
    eval_queries_per_room: int = 16
    eval_query_batch: int = 16
    # Training step
    train_batch_sizes: dict = field(default_factory=lambda: {"sgmn-tiny": (4, 16, 64), "sgmn-vitb32": (4, 16, 32)})
    repeats: int = 3
    seed: int = 0


def mode_config(mode: str) -> SpeedConfig:
    if mode == "full":
        return SpeedConfig()
    if mode == "quick":
        return SpeedConfig(
            mode="quick",
            encode_batch_sizes={"sgmn-tiny": (1, 8, 32), "sgmn-vitb32": (1, 4)},
            gallery_sizes=(100, 1_000, 10_000, 50_000, 100_000, 200_000),
            ann_max_rows=50_000,
            search_queries=128,
            eval_models=("sgmn-tiny",),
            eval_rooms=2, eval_products_per_room=20, eval_queries_per_room=16,
            train_batch_sizes={"sgmn-tiny": (4, 16, 32), "sgmn-vitb32": (2,)},
            repeats=2,
        )
    if mode == "smoke":
        return SpeedConfig(
            mode="smoke",
            models=("sgmn-tiny",),
            encode_batch_sizes={"sgmn-tiny": (1, 4)},
            gallery_sizes=(100, 2_000),
            ann_max_rows=2_000,
            dim=64,
            search_queries=16,
            eval_models=("sgmn-tiny",),
            eval_rooms=2, eval_products_per_room=5, eval_queries_per_room=3, eval_query_batch=2,
            train_batch_sizes={"sgmn-tiny": (4,)},
            repeats=1,
        )
    raise ValueError(f"unknown mode {mode!r}; choose smoke, quick or full")


# ---------------------------------------------------------------- FLOPs and GPU peaks
def vit_forward_flops(vision, embed_dim: int) -> int:
    """FLOPs (2 per multiply-add) of one image through the ViT tower + per-token projection.

    Counted from the matrix products only: patch embedding (a conv = matmul over 3·p² inputs),
    per layer the QKV, output and MLP projections (2·N·D²·(4 + 2·mlp_ratio)) and the two
    attention products (2 · 2·N²·D), and the final ``proj`` on every token. Layer norms, softmax,
    GELU and additions are left out (< 1% here). ViT-B/32 at 224 px gives 8.86 GFLOPs
    (= the 4.4 GMACs usually quoted).
    """
    n_tokens, d = vision.num_tokens, vision.width
    patches = vision.grid ** 2
    patch_embed = 2 * patches * (3 * vision.patch_size ** 2) * d
    per_layer = 2 * n_tokens * d * d * (4 + 2 * vision.mlp_ratio) + 4 * n_tokens * n_tokens * d
    proj = 2 * n_tokens * d * embed_dim
    return int(patch_embed + vision.layers * per_layer + proj)


# Dense peak TFLOP/s (no sparsity): (fp32 without tensor cores, bf16 tensor cores), keyed by a
# substring of torch.cuda.get_device_name(). Vendor datasheet numbers (SXM parts where it matters).
GPU_PEAK_TFLOPS = {
    "H200": (67.0, 989.0),
    "H100 PCIe": (51.0, 756.0),
    "H100": (67.0, 989.0),
    "A100": (19.5, 312.0),
    "A10G": (31.2, 70.0),
    "A10": (31.2, 125.0),
    "L40S": (91.6, 362.0),
    "L4": (30.3, 121.0),
    "RTX 4090": (82.6, 165.0),
    "RTX 3090": (35.6, 71.0),
    "V100": (15.7, 125.0),  # no bf16: the fp16 tensor-core peak
    "T4": (8.1, 65.0),  # no bf16: the fp16 tensor-core peak
}


def gpu_peak_tflops(device_name: str, precision: str, override: Optional[float] = None) -> Optional[float]:
    """Peak TFLOP/s of a GPU for ``precision`` ("fp32" or "bf16"); None when unknown."""
    if override:
        return float(override)
    for key, (fp32, bf16) in GPU_PEAK_TFLOPS.items():  # longer, more specific keys come first
        if key.lower() in device_name.lower():
            return fp32 if precision == "fp32" else bf16
    return None


# ---------------------------------------------------------------- helpers
def _sync(device: torch.device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _precisions(device: torch.device) -> list[str]:
    return ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]


def make_model(name: str, device: torch.device):
    import sgmn

    torch.manual_seed(0)
    return sgmn.create_model(name).to(device).eval()


def random_clips(config, batch: int, device: torch.device, gen: torch.Generator):
    T, S, Dt = config.num_frames, config.vision.image_size, config.text.dim
    frames = torch.randn(batch, T, 3, S, S, generator=gen).to(device)
    asr = torch.randn(batch, Dt, generator=gen).to(device)
    return frames, asr, torch.ones(batch, dtype=torch.bool, device=device)


def random_products(config, batch: int, device: torch.device, gen: torch.Generator):
    S, Dt = config.vision.image_size, config.text.dim
    pixels = torch.randn(batch, 3, S, S, generator=gen).to(device)
    titles = torch.randn(batch, Dt, generator=gen).to(device)
    return pixels, titles, torch.ones(batch, dtype=torch.bool, device=device)


def random_train_batch(config, batch: int, device: torch.device, gen: torch.Generator) -> dict:
    """A training batch as ``collate`` builds it (docs/architecture.md), with random content."""
    T, S, N, Dt = config.num_frames, config.vision.image_size, config.vision.num_tokens, config.text.dim
    frames, asr, asr_mask = random_clips(config, batch, device, gen)
    pixels, titles, title_mask = random_products(config, batch, device, gen)
    return {
        "frames": frames,
        "frame_mask": torch.ones(batch, T, dtype=torch.bool, device=device),
        "patch_mask": torch.ones(batch, T, N, dtype=torch.bool, device=device),
        "boxes": torch.zeros(batch, T, 4, device=device),
        "box_mask": torch.zeros(batch, T, dtype=torch.bool, device=device),
        "asr_vec": asr, "asr_mask": asr_mask,
        "product_pixels": pixels, "title_vec": titles, "title_mask": title_mask,
        "labels": torch.arange(batch, device=device),
        "clip_ids": [f"c{i}" for i in range(batch)], "product_ids": [f"p{i}" for i in range(batch)],
    }


# ---------------------------------------------------------------- 1. encoding throughput
def bench_encoding(cfg: SpeedConfig, device: torch.device, peak_override: Optional[float]) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(cfg.seed)
    for name in cfg.models:
        model = make_model(name, device)
        mc = model.config
        flops_per_image = vit_forward_flops(mc.vision, mc.embed_dim)
        for precision in _precisions(device):
            for bs in cfg.encode_batch_sizes.get(name, ()):
                frames, asr, asr_mask = random_clips(mc, bs, device, gen)
                pixels, titles, title_mask = random_products(mc, bs, device, gen)
                with _autocast(device, precision):
                    t_clip = common.time_call(lambda: model.encode_clips(frames, asr=asr, asr_mask=asr_mask),
                                              repeats=cfg.repeats, sync=_sync(device))
                    t_prod = common.time_call(lambda: model.encode_products(pixels, titles=titles, title_mask=title_mask),
                                              repeats=cfg.repeats, sync=_sync(device))
                    with torch.no_grad():
                        t_vit = common.time_call(lambda: model.backbone(pixels), repeats=cfg.repeats, sync=_sync(device))
                row = {
                    "model": name, "device": device.type, "precision": precision, "batch": bs,
                    "frames_per_clip": mc.num_frames, "image_size": mc.vision.image_size,
                    "clips_per_s": bs / t_clip, "products_per_s": bs / t_prod,
                    "vit_gflops_per_image": flops_per_image / 1e9,
                    "vit_achieved_tflops": bs * flops_per_image / t_vit / 1e12,
                }
                if device.type == "cuda":
                    peak = gpu_peak_tflops(torch.cuda.get_device_name(device), precision, peak_override)
                    row["vit_peak_fraction"] = row["vit_achieved_tflops"] / peak if peak else None
                rows.append(row)
                print(f"[encode] {name} {device.type}/{precision} batch {bs}: {row['clips_per_s']:.2f} clips/s, "
                      f"{row['products_per_s']:.1f} products/s, ViT {row['vit_achieved_tflops']:.3f} TFLOP/s", flush=True)
        del model
        gc.collect()
    return rows


# ---------------------------------------------------------------- 2. gallery search
def unit_vectors(n: int, dim: int, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """Random unit vectors, drawn in chunks so a 1M x 512 gallery never needs float64 copies."""
    out = np.empty((n, dim), np.float32)
    for lo in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - lo), dim), dtype=np.float32)
        out[lo:lo + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


LOW_RANK = 32  # intrinsic dimension of the "low-rank" gallery


def low_rank_vectors(n: int, dim: int, rng: np.random.Generator, basis: np.ndarray, noise: float = 0.3,
                     chunk: int = 100_000) -> np.ndarray:
    """Unit vectors near a random ``len(basis)``-dimensional subspace (``z @ basis`` plus isotropic
    noise of ``noise`` times the signal's norm). Learned embeddings sit near low-dimensional
    structure, which IVF and HNSW exploit; isotropic vectors are their worst case."""
    k = basis.shape[0]
    out = np.empty((n, dim), np.float32)
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        block = rng.standard_normal((m, k), dtype=np.float32) @ basis
        block += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(noise * np.sqrt(k / dim))
        out[lo:lo + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_torch(queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int = 64):
    """Exact top-k by inner product; queries in chunks so the score matrix stays small."""
    scores, rows = [], []
    for lo in range(0, len(queries), chunk):
        s, r = (queries[lo:lo + chunk] @ gallery.T).topk(min(k, len(gallery)), dim=1)
        scores.append(s)
        rows.append(r)
    return torch.cat(scores), torch.cat(rows)


def exact_numpy(queries: np.ndarray, gallery: np.ndarray, k: int, chunk: int = 64) -> np.ndarray:
    """numpy matmul + argpartition in query chunks: the catalogue's own exact top-k (calibration)."""
    from sgmn.retrieval.index import top_rows

    return top_rows(queries, gallery, k, chunk)


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Share of the exact top-k that the approximate top-k found."""
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx_rows, exact_rows))
    return hits / exact_rows.size


def bench_search(cfg: SpeedConfig) -> list[dict]:
    """Exact and FAISS search on isotropic random vectors; IVF / HNSW also on low-rank ones.

    Exact and flat search cost the same whatever the vectors are; approximate indexes do not, so
    they are measured on both distributions (recall against exact search on the same vectors).
    """
    import faiss

    from sgmn.retrieval.index import IndexConfig, VectorIndex

    faiss.omp_set_num_threads(torch.get_num_threads())
    rows = []
    rng = np.random.default_rng(cfg.seed)
    basis = np.linalg.qr(rng.standard_normal((cfg.dim, LOW_RANK)))[0].T.astype(np.float32)  # orthonormal rows
    draw = {"isotropic": lambda n: unit_vectors(n, cfg.dim, rng),
            f"low-rank ({LOW_RANK}-d)": lambda n: low_rank_vectors(n, cfg.dim, rng, basis)}
    for n in cfg.gallery_sizes:
        for data, sample in draw.items():
            isotropic = data == "isotropic"
            if not isotropic and n > cfg.ann_max_rows:
                continue
            gallery, queries = sample(n), sample(cfg.search_queries)
            g_torch, q_torch = torch.from_numpy(gallery), torch.from_numpy(queries)
            base = {"gallery": n, "dim": cfg.dim, "data": data, "vector_bytes": gallery.nbytes}
            _, exact_rows = exact_torch(q_torch, g_torch, cfg.top_k)
            exact_rows = exact_rows.numpy()
            if isotropic:
                t = common.time_call(lambda: exact_torch(q_torch, g_torch, cfg.top_k), repeats=cfg.repeats)
                rows.append({**base, "method": "exact torch", "build_s": 0.0, "queries_per_s": len(queries) / t,
                             "recall@10": 1.0, "index_bytes": gallery.nbytes, "rss_bytes": common.rss_bytes()})
                t = common.time_call(lambda: exact_numpy(queries, gallery, cfg.top_k), repeats=cfg.repeats)
                rows.append({**base, "method": "exact numpy", "build_s": 0.0, "queries_per_s": len(queries) / t,
                             "recall@10": recall_at_k(exact_numpy(queries, gallery, cfg.top_k), exact_rows),
                             "index_bytes": gallery.nbytes, "rss_bytes": common.rss_bytes()})
            kinds = [k for k in ("flat", "ivf", "hnsw") if (k == "flat") == isotropic or
                     (isotropic and n <= cfg.ann_max_rows)]
            for kind in kinds:
                t0 = time.perf_counter()
                index = VectorIndex.build(gallery, IndexConfig(kind=kind, seed=cfg.seed))
                build_s = time.perf_counter() - t0
                t = common.time_call(lambda: index.search(queries, cfg.top_k), repeats=cfg.repeats)
                _, found = index.search(queries, cfg.top_k)
                index_bytes = faiss.serialize_index(index.index).nbytes
                setting = ", ".join(f"{k} {v}" for k, v in index.search_setting.items()) or "—"
                rows.append({**base, "method": f"faiss {kind}", "build_s": build_s, "setting": setting,
                             "queries_per_s": len(queries) / t, "recall@10": recall_at_k(found, exact_rows),
                             "index_bytes": index_bytes, "rss_bytes": common.rss_bytes()})
                del index
            del gallery, g_torch
            gc.collect()
        for r in (x for x in rows if x["gallery"] == n):
            print(f"[search] {n:>8} x {cfg.dim} {r['data']:<15}: {r['method']:<12} {r['queries_per_s']:10.1f} q/s "
                  f"build {r['build_s']:.2f} s recall@10 {r['recall@10']:.3f}", flush=True)
    return rows


# ---------------------------------------------------------------- 3. evaluation: cached vs re-encoded gallery
def bench_eval(cfg: SpeedConfig, device: torch.device) -> list[dict]:
    """Per-room ranking of every query, two ways, on the same in-memory tensors.

    Media decoding is left out on purpose (it costs the same both ways); query clips are encoded
    in batches of ``eval_query_batch`` in both modes, so the only difference is the gallery:
    encoded once per product (cached) or once per query for its whole room (re-encoded).
    """
    rows = []
    for name in cfg.eval_models:
        model = make_model(name, device)
        mc = model.config
        gen = torch.Generator().manual_seed(cfg.seed)
        rooms = []
        for _ in range(cfg.eval_rooms):
            rooms.append({
                "products": random_products(mc, cfg.eval_products_per_room, device, gen),
                "queries": random_clips(mc, cfg.eval_queries_per_room, device, gen),
            })
        n_queries = cfg.eval_rooms * cfg.eval_queries_per_room
        sync = _sync(device)

        def cached():
            scores = []
            galleries = [model.encode_products(*r["products"]) for r in rooms]
            for room, gallery in zip(rooms, galleries):
                for lo in range(0, cfg.eval_queries_per_room, cfg.eval_query_batch):
                    clips = model.encode_clips(*_clip_args(room["queries"], lo, lo + cfg.eval_query_batch))
                    scores.append(model.score(clips, gallery))
            return torch.cat(scores)

        def reencoded():
            scores = []
            for room in rooms:
                for lo in range(0, cfg.eval_queries_per_room, cfg.eval_query_batch):
                    clips = model.encode_clips(*_clip_args(room["queries"], lo, lo + cfg.eval_query_batch))
                    for i in range(clips.embedding.shape[0]):
                        gallery = model.encode_products(*room["products"])
                        one = dataclasses.replace(clips, **{f: getattr(clips, f)[i:i + 1] for f in
                                                            ("embedding", "text_embedding", "text_mask")})
                        scores.append(model.score(one, gallery))
            return torch.cat(scores)

        for precision in _precisions(device):
            with _autocast(device, precision):
                t_cached = common.time_call(cached, repeats=cfg.repeats, sync=sync)
                t_reenc = common.time_call(reencoded, repeats=cfg.repeats, sync=sync)
                max_diff = float((cached().float() - reencoded().float()).abs().max())
            row = {
                "model": name, "device": device.type, "precision": precision,
                "rooms": cfg.eval_rooms, "products_per_room": cfg.eval_products_per_room, "queries": n_queries,
                "cached_s_per_1000": t_cached / n_queries * 1000,
                "reencoded_s_per_1000": t_reenc / n_queries * 1000,
                "speedup": t_reenc / t_cached, "max_score_difference": max_diff,
            }
            rows.append(row)
            print(f"[eval] {name} {device.type}/{precision}: cached {row['cached_s_per_1000']:.1f} s / 1000 queries, "
                  f"re-encoded {row['reencoded_s_per_1000']:.1f} s / 1000 queries ({row['speedup']:.1f}x), "
                  f"max score difference {max_diff:.2e}", flush=True)
        del model
        gc.collect()
    return rows


def _clip_args(queries, lo, hi):
    frames, asr, mask = queries
    return frames[lo:hi], None, None, asr[lo:hi], mask[lo:hi]


# ---------------------------------------------------------------- 4. training step
def _train_step_fn(name: str, batch_size: int, precision: str, device: torch.device, seed: int):
    """(step function, model) for one optimiser step of ``name`` on a fixed random batch."""
    model = make_model(name, device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = random_train_batch(model.config, batch_size, device, torch.Generator().manual_seed(seed))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        if not torch.isfinite(loss):
            raise RuntimeError(f"{name} batch {batch_size}: the training loss is not finite ({loss.item()})")

    return step, model


def train_step_probe(name: str, batch_size: int, repeats: int, seed: int) -> dict:
    """CPU step time and peak memory, measured in *this* process (meant to be a fresh one).

    Peak = the process's peak RSS during the steps (VmHWM, reset just before them) minus its RSS
    just before the first step, so it holds the activations, the gradients and the AdamW state that
    the steps allocate. A fresh process is needed because a warm allocator reuses freed memory and
    hides the peak.
    """
    step, model = _train_step_fn(name, batch_size, "fp32", torch.device("cpu"), seed)
    gc.collect()
    common.reset_peak_rss()
    before = common.rss_bytes()
    step()  # warm-up: allocates gradients and optimiser state
    t = common.time_call(step, repeats=repeats, warmup=0)
    peak = common.peak_rss_bytes()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"step_s": t, "peak_bytes": max(0, peak - before), "param_bytes": params}


def _probe_in_subprocess(name: str, batch_size: int, repeats: int, seed: int) -> dict:
    import subprocess

    spec = json.dumps({"name": name, "batch_size": batch_size, "repeats": repeats, "seed": seed})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(torch.get_num_threads()),
           "--train-step-probe", spec]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"training-step probe {spec} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_train(cfg: SpeedConfig, device: torch.device) -> list[dict]:
    rows = []
    for name in cfg.models:
        for precision in _precisions(device):
            for bs in cfg.train_batch_sizes.get(name, ()):
                if device.type == "cpu":
                    probe = _probe_in_subprocess(name, bs, cfg.repeats, cfg.seed)
                    t, peak, params = probe["step_s"], probe["peak_bytes"], probe["param_bytes"]
                    peak_how = "peak RSS (VmHWM) of a fresh process above its RSS before the first step"
                else:
                    step, model = _train_step_fn(name, bs, precision, device, cfg.seed)
                    params = sum(p.numel() * p.element_size() for p in model.parameters())
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    step()  # the first step allocates gradients and optimiser state: part of the peak
                    t = common.time_call(step, repeats=cfg.repeats, warmup=0, sync=_sync(device))
                    peak = torch.cuda.max_memory_allocated(device)
                    peak_how = "torch.cuda.max_memory_allocated"
                    del step, model
                    gc.collect()
                    torch.cuda.empty_cache()
                rows.append({"model": name, "device": device.type, "precision": precision, "batch": bs,
                             "step_s": t, "clips_per_s": bs / t, "peak_bytes": peak, "param_bytes": params,
                             "peak_measure": peak_how})
                print(f"[train] {name} {device.type}/{precision} batch {bs}: {t:.3f} s/step, "
                      f"peak {common.human_bytes(peak)}", flush=True)
    return rows


# ---------------------------------------------------------------- report
def _fmt(x, digits=1):
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def render(results: dict, cfg: SpeedConfig, info: dict, command: str, seconds: float) -> str:
    from sgmn.retrieval.index import IndexConfig

    out = [f"## Speed, memory and scaling ({cfg.mode} mode)", "",
           f"Command: `{command}` — finished in {seconds / 60:.1f} min.", "", common.machine_markdown(info), ""]
    out += ["Models have **random weights** (throughput does not depend on the values). Inputs are random "
            "tensors already on the device, so media decoding and resizing are not included.", ""]

    enc = results["encoding"]
    out += ["### Encoding throughput against batch size", "",
            "A clip is `num_frames` frames (sgmn-tiny: 6 × 64 px; sgmn-vitb32: 10 × 224 px) with an ASR vector; "
            "a product is one shop image with a title vector. ViT TFLOP/s: the backbone alone on the product "
            "images, FLOPs counted analytically (matrix products only, 2 per multiply-add: "
            f"{_fmt(vit_forward_flops(_vitb32_vision(), 512) / 1e9, 2)} GFLOPs per 224 px image for ViT-B/32).", ""]
    headers = ["model", "device", "precision", "batch", "clips/s", "products/s", "ViT TFLOP/s"]
    if any("vit_peak_fraction" in r for r in enc):
        headers.append("share of GPU peak")
    table = []
    for r in enc:
        row = [r["model"], r["device"], r["precision"], r["batch"], _fmt(r["clips_per_s"], 2),
               _fmt(r["products_per_s"], 1), _fmt(r["vit_achieved_tflops"], 3)]
        if "share of GPU peak" in headers:
            row.append(f"{r['vit_peak_fraction']:.1%}" if r.get("vit_peak_fraction") is not None else "unknown GPU")
        table.append(row)
    out += [common.markdown_table(headers, table), ""]
    if info.get("cuda") is None:
        out += ["No CUDA device on this machine: GPU fp32 / bf16 numbers and the share of the GPU's peak are "
                "produced only where `torch.cuda.is_available()` (peak from a table of known GPUs, or "
                "`--peak-tflops`).", ""]

    srch = results["search"]
    out += ["### Scoring against gallery size", "",
            f"{cfg.search_queries} queries, top-{cfg.top_k}, unit vectors of d = {cfg.dim} (float32). "
            "Exact: torch matmul + `topk`, numpy matmul + `argpartition` (queries in chunks of 64). "
            "FAISS indexes from `sgmn.retrieval.VectorIndex` with its default settings (IVF: ~4·√n lists; HNSW: "
            "M 32, efConstruction 80), calibrated at build time: nprobe (from 64) or efSearch (from 128) doubles, "
            f"then bisects back to the cheapest setting whose recall@10 on {IndexConfig.calibration_queries} gallery "
            "rows used as probe queries reaches 0.95 plus two standard errors of the mean over those probes "
            "(`IndexConfig.target_recall`, `ProbeRecall.reaches`); "
            "the build time includes the calibration and the *setting* column shows what it chose. "
            "Recall@10 = share of the exact top-10 found, on separate queries. "
            "Vectors: *isotropic* random (no structure at all: the worst case for IVF / HNSW) and, for IVF / HNSW, "
            f"*low-rank*: random points of a {LOW_RANK}-d subspace plus isotropic noise at 30% of their norm, with "
            "queries from the same distribution (closer to learned embeddings; exact and flat search cost the same on "
            "any vectors, so they are run on the isotropic ones only). "
            "RSS = the whole benchmark process after the build.", ""]
    if cfg.ann_max_rows < max(cfg.gallery_sizes):
        out += [f"IVF and HNSW are built up to {cfg.ann_max_rows:,} rows in this mode (their build time grows "
                "fastest); exact and flat search go to the largest gallery.", ""]
    out += [common.markdown_table(
        ["gallery", "method", "vectors", "setting", "queries/s", "build (s)", "recall@10", "vector bytes",
         "index bytes", "process RSS"],
        [[f"{r['gallery']:,}", r["method"], r["data"], r.get("setting", "—"), _fmt(r["queries_per_s"], 1),
          _fmt(r["build_s"], 2),
          f"{r['recall@10']:.3f}", common.human_bytes(r["vector_bytes"]), common.human_bytes(r["index_bytes"]),
          common.human_bytes(r["rss_bytes"])] for r in srch]), ""]
    if results.get("search_plot"):
        out += [f"![queries per second against gallery size]({results['search_plot']})", ""]

    ev = results["eval"]
    out += ["### Evaluation: cached gallery vs re-encoding the room's gallery per query", "",
            "The same model and the same random tensors, in the same run. Cached: every product of a room is "
            "encoded once and reused by all its queries (sgmn's protocol). Re-encoded: the room's gallery is "
            "encoded again for every query (what the published evaluation script does). Queries are encoded in "
            f"batches of {cfg.eval_query_batch} both ways; decoding is not included. Times are scaled to 1,000 "
            "queries from the measured count; the last column checks both ways rank with the same scores.", ""]
    out += [common.markdown_table(
        ["model", "device", "precision", "rooms × products", "queries measured", "cached s / 1000 q",
         "re-encoded s / 1000 q", "speed-up", "max score diff"],
        [[r["model"], r["device"], r["precision"], f"{r['rooms']} × {r['products_per_room']}", r["queries"],
          _fmt(r["cached_s_per_1000"], 2), _fmt(r["reencoded_s_per_1000"], 2), f"{r['speedup']:.1f}×",
          f"{r['max_score_difference']:.1e}"] for r in ev]), ""]

    tr = results["train"]
    out += ["### Training step time and peak memory", "",
            "One optimiser step (forward with every loss term of the variant, backward, AdamW) on a random batch "
            "of clip–product pairs; median of the timed steps after one warm-up step. Peak memory covers the "
            "warm-up step too, so it holds activations, gradients and AdamW state (on top of the weights). CPU: "
            "each row runs in a fresh process, peak = its peak RSS (VmHWM, reset just before the steps) minus its RSS "
            "just before the first step. CUDA: `torch.cuda.max_memory_allocated` (weights included).", ""]
    out += [common.markdown_table(
        ["model", "device", "precision", "batch", "s / step", "clips / s", "peak memory", "weights"],
        [[r["model"], r["device"], r["precision"], r["batch"], _fmt(r["step_s"], 3), _fmt(r["clips_per_s"], 2),
          common.human_bytes(r["peak_bytes"]), common.human_bytes(r["param_bytes"])] for r in tr]), ""]
    out += [f"Mode settings: `{json.dumps(dataclasses.asdict(cfg))}`"]
    return "\n".join(out)


def _vitb32_vision():
    from sgmn.model.registry import get_config

    return get_config("sgmn-vitb32").vision


def plot_search(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    for method, data in dict.fromkeys((r["method"], r["data"]) for r in rows):
        pts = [(r["gallery"], r["queries_per_s"]) for r in rows if (r["method"], r["data"]) == (method, data)]
        isotropic = data == "isotropic"
        ax.plot(*zip(*pts), marker="o" if isotropic else "x", linestyle="-" if isotropic else "--",
                label=method if isotropic else f"{method}, {data}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gallery size (products)")
    ax.set_ylabel("queries / s")
    ax.set_title(f"top-10 search, d = {rows[0]['dim']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- main
def run(cfg: SpeedConfig, doc: Path, img_dir: Path, out_dir: Path, peak_tflops: Optional[float] = None,
        command: Optional[str] = None) -> dict:
    started = time.perf_counter()
    info = common.machine_info()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results: dict = {"encoding": [], "eval": [], "train": []}
    for device in devices:
        results["encoding"] += bench_encoding(cfg, device, peak_tflops)
    results["search"] = bench_search(cfg)
    for device in devices:
        results["eval"] += bench_eval(cfg, device)
        results["train"] += bench_train(cfg, device)
    plot = img_dir / f"speed-search-{cfg.mode}.png"
    plot_search(results["search"], plot)
    results["search_plot"] = Path(_relative(plot, doc.parent)).as_posix()
    seconds = time.perf_counter() - started
    command = command or common.command_line()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"speed-{cfg.mode}.json").write_text(json.dumps(
        {"command": command, "machine": info, "config": dataclasses.asdict(cfg), "seconds": seconds, **results},
        indent=1, default=str))
    body = render(results, cfg, info, command, seconds)
    common.write_section("speed", body, doc)
    print(body)
    return results


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="a few minutes on a small CPU machine")
    group.add_argument("--smoke", action="store_true", help="seconds; for the test suite")
    parser.add_argument("--threads", type=int, default=None, help="torch / FAISS threads (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU peak TFLOP/s when not in the table")
    parser.add_argument("--doc", type=Path, default=common.DOC, help="markdown file to write the section into")
    parser.add_argument("--img-dir", type=Path, default=common.IMG_DIR)
    parser.add_argument("--out", type=Path, default=common.OUT_DIR, help="raw JSON results")
    parser.add_argument("--train-step-probe", default=None, help=argparse.SUPPRESS)  # internal: one fresh-process row
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train_step_probe:
        spec = json.loads(args.train_step_probe)
        print(json.dumps(train_step_probe(spec["name"], spec["batch_size"], spec["repeats"], spec["seed"])))
        return
    mode = "quick" if args.quick else "smoke" if args.smoke else "full"
    run(mode_config(mode), args.doc, args.img_dir, args.out, args.peak_tflops,
        command=common.command_line() if argv is None else "python benchmarks/speed.py " + " ".join(argv))


if __name__ == "__main__":
    main()
