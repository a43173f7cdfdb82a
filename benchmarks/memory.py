"""Peak memory per rank of SGMN's batch-wide heads (GCI and SMF) against the global batch G.

Measures, on the CPU, one training step (forward + backward) of the two heads alone, at
``sgmn-vitb32`` sizes (d = 512, T = 10 frames, N = 50 tokens per image, 16 GCI heads, a 1-layer
cross encoder with k = 3 mined negatives), as ONE RANK of a job with a per-rank batch B = 32 and
G = 32 x ranks sees it. L_pair has both directions of the default (``smf_clip_rows``): a row per
product of this rank over the gathered clips, and a row per clip of this rank over the gathered
products. The inputs the rank holds for the heads are counted too: the all-gathered
product tokens (G, N, d) and fused clip tokens (G, T*N, d), their gradients, and the (G, d)
embeddings. The backbone is not part of it (its memory depends on B only).

Two implementations are compared, in separate processes (peak RSS above the process's baseline,
reset before each step):

* ``sharded`` (the code): this rank's relevance rows only (B clips x G products), frame-level
  matching in checkpointed chunks, the cross encoder on this rank's B products and B clips;
* ``replicated`` (before issue 10): every rank computes all G relevance rows at once (one
  (G, G, T, N) block) and the cross encoder on all G products and G clips.

The largest G that fits in 80 GB is extrapolated from a quadratic fit a + bG + cG² of the
measured peaks (the graph layer's attention over the 2G nodes is G²; the rest is linear in G).
Numbers are fp32 (a CPU); under bf16 autocast on a GPU most activations take half.

    python benchmarks/memory.py            # G up to 1024 (sharded) / 128 (replicated: it grows quadratically); ~15 min on 2 cores
    python benchmarks/memory.py --smoke    # tiny sizes, seconds (tests/test_benchmarks.py)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the sgmn package
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

PER_RANK = 32
BUDGET_BYTES = 80e9  # an 80 GB GPU


def heads_sizes(smoke: bool) -> dict:
    if smoke:
        return {"model": "sgmn-tiny", "overrides": {"num_frames": 3}, "per_rank": 4}
    return {"model": "sgmn-vitb32", "overrides": {}, "per_rank": PER_RANK}


def measure_one(G: int, mode: str, smoke: bool, threads: int) -> dict:
    """One heads step of one rank at global batch G; returns peak bytes above the baseline."""
    import torch

    import sgmn.model.graph as graph_module
    from sgmn.model.graph import CrossDomainGraph
    from sgmn.model.matching import CrossEncoder
    from sgmn.model.registry import get_config

    torch.set_num_threads(threads)
    sizes = heads_sizes(smoke)
    cfg = get_config(sizes["model"], **sizes["overrides"])
    d = cfg.embed_dim
    B = min(sizes["per_rank"], G)
    rows = B if mode == "sharded" else G
    if mode == "replicated":
        graph_module.MATCHING_BLOCK_ELEMENTS = 2**62  # one block, as before issue 10
    torch.manual_seed(0)
    graph = CrossDomainGraph(cfg)
    cross = CrossEncoder(d, cfg.cross_heads, cfg.cross_layers)
    for p in (*graph.parameters(), *cross.parameters()):
        p.grad = torch.zeros_like(p)  # gradient buffers exist before the step, as in training
    step(graph, cross, cfg, min(G, B), min(G, B))  # warm-up: thread pools, kernels, allocator
    common.reset_peak_rss()
    base = common.rss_bytes()
    loss = step(graph, cross, cfg, G, rows)
    peak = common.peak_rss_bytes() - base
    return {"G": G, "mode": mode, "peak_bytes": int(peak), "rows": rows, "loss": loss}


def step(graph, cross, cfg, G: int, rows: int) -> float:
    import torch
    import torch.nn.functional as F

    from sgmn.model.matching import mine_hard_negatives, pairwise_matching_loss

    d, T, N = cfg.embed_dim, cfg.num_frames, cfg.vision.num_tokens
    # What this rank holds for the heads: its own rows, plus the all-gathered tensors.
    frame_feats = torch.randn(rows, T, d, requires_grad=True)
    frame_mask = torch.ones(G, T, dtype=torch.bool)
    product_tokens = torch.randn(G, N, d, requires_grad=True)
    clip_tokens = torch.randn(G, T * N, d, requires_grad=True)  # fused, gathered
    keep = torch.ones(G, T * N, dtype=torch.bool)
    v = F.normalize(torch.randn(G, d), dim=-1).requires_grad_()
    p = F.normalize(torch.randn(G, d), dim=-1).requires_grad_()
    labels = torch.arange(G) // 2  # two clips per product

    relevance = graph.relevances_and_means(frame_feats, frame_mask[:rows], product_tokens)
    if rows < G:  # the other ranks' rows arrive through the all-gather
        relevance = tuple(torch.cat([r, torch.randn(G - rows, G)]) for r in relevance)
    out = graph(v, p, None, frame_mask, product_tokens, relevances=relevance)
    terms = graph.losses(out, labels)
    scores = v.detach() @ p.detach().t()  # (G clips, G products)
    negatives = mine_hard_negatives(scores, labels, labels, cfg.smf_k)  # per product: its k hardest clips
    pair = pairwise_matching_loss(
        cross, product_tokens[:rows], clip_tokens, keep, torch.arange(rows), negatives.indices[:rows],
        negatives.valid[:rows], num_rows=negatives.valid.any(dim=1).sum(),
    )
    if cfg.smf_clip_rows:  # this rank's clips against the gathered products, as SGMN._pair_loss
        negatives = mine_hard_negatives(scores.t(), labels, labels, cfg.smf_k)
        pair = (pair + pairwise_matching_loss(
            cross, product_tokens, clip_tokens[:rows], keep[:rows], torch.arange(rows), negatives.indices[:rows],
            negatives.valid[:rows], num_rows=negatives.valid.any(dim=1).sum(), rows="clip",
        )) / 2
    loss = terms["gnn"] + 10 * terms["reg"] + pair
    loss.backward()
    return float(loss.detach())


def run_in_subprocess(G: int, mode: str, smoke: bool, threads: int) -> dict:
    if smoke:  # tiny sizes: in this process (the numbers are not meant to be read, only the logic)
        import sgmn.model.graph as graph_module

        block = graph_module.MATCHING_BLOCK_ELEMENTS
        try:
            return measure_one(G, mode, smoke, threads)
        finally:
            graph_module.MATCHING_BLOCK_ELEMENTS = block
    cmd = [sys.executable, __file__, "--one", str(G), mode, "--threads", str(threads)] + (["--smoke"] if smoke else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"G={G} {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def largest_g(points: list[tuple[int, int]], budget: float, per_rank: int) -> tuple[Optional[int], list[float]]:
    """Largest multiple of ``per_rank`` whose fitted peak stays within budget.

    The fit is a + bG + cG² (memory cannot shrink as G grows: a negative c, which three noisy
    points can give, falls back to the linear fit a + bG). None when the fit does not grow."""
    G = np.array([g for g, _ in points], dtype=float)
    y = np.array([b for _, b in points], dtype=float)
    coef = np.polyfit(G, y, 2)[::-1].tolist() if len(points) >= 3 else [0.0, 0.0, -1.0]
    if coef[2] < 0:
        coef = np.polyfit(G, y, 1)[::-1].tolist()  # a, b
    if all(c <= 0 for c in coef[1:]):
        return None, coef
    g = per_rank
    while sum(c * (g + per_rank) ** i for i, c in enumerate(coef)) <= budget:
        g += per_rank
    return g, coef


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sharded", type=int, nargs="*", default=None, help="global batch sizes, sharded mode")
    ap.add_argument("--replicated", type=int, nargs="*", default=None, help="global batch sizes, replicated mode")
    ap.add_argument("--doc", type=Path, default=common.DOC)
    ap.add_argument("--out", type=Path, default=common.OUT_DIR)
    ap.add_argument("--from-json", type=Path, default=None, help="re-fit and re-render an earlier run's memory.json")
    ap.add_argument("--one", nargs=2, metavar=("G", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(int(args.one[0]), args.one[1], args.smoke, args.threads)))
        return 0
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        result["fits"] = fit_all(result["rows"], result["per_rank"])
        args.from_json.write_text(json.dumps(result, indent=2))
        common.write_section("memory", render(result), args.doc)
        return 0

    per_rank = heads_sizes(args.smoke)["per_rank"]
    sharded = args.sharded or ([4, 8, 16] if args.smoke else [32, 128, 512, 1024])
    replicated = args.replicated or ([4, 8, 16] if args.smoke else [32, 64, 128])
    rows = []
    for mode, sizes in (("sharded", sharded), ("replicated", replicated)):
        for G in sizes:
            r = run_in_subprocess(G, mode, args.smoke, args.threads)
            print(f"[memory] {mode:10s} G={G:5d}: peak {common.human_bytes(r['peak_bytes'])} per rank", flush=True)
            rows.append(r)
    fits = fit_all(rows, per_rank)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "fits": fits, "per_rank": per_rank, "smoke": args.smoke, "machine": common.machine_info(),
              "command": common.command_line()}
    (args.out / "memory.json").write_text(json.dumps(result, indent=2))
    if not args.smoke:
        common.write_section("memory", render(result), args.doc)
    return 0


def fit_all(rows: list[dict], per_rank: int) -> dict:
    fits = {}
    for mode in ("sharded", "replicated"):
        pts = [(r["G"], r["peak_bytes"]) for r in rows if r["mode"] == mode]
        g, coef = largest_g(pts, BUDGET_BYTES, per_rank)
        fits[mode] = {"largest_G_in_80GB": g, "fit_a_b_c": coef}
        print(f"[memory] {mode}: largest G in 80 GB ({'a + bG + cG^2' if len(coef) > 2 else 'a + bG'}) = {g}")
    return fits


def render(result: dict) -> str:
    by = {(r["mode"], r["G"]): r["peak_bytes"] for r in result["rows"]}
    Gs = sorted({r["G"] for r in result["rows"]})
    table = common.markdown_table(
        ["global batch G", "ranks (B = 32)", "sharded (this code)", "replicated (before)"],
        [[G, max(1, G // result["per_rank"]),
          common.human_bytes(by[("sharded", G)]) if ("sharded", G) in by else "–",
          common.human_bytes(by[("replicated", G)]) if ("replicated", G) in by else "–"] for G in Gs],
    )
    fs, fr = result["fits"]["sharded"], result["fits"]["replicated"]

    def per_g(coef):
        return f"{common.human_bytes(coef[0])} + {common.human_bytes(coef[1])} x G" + (
            f" + {coef[2]:.0f} B x G²" if len(coef) > 2 else " (linear: the fitted G² term came out negative)"
        )

    sharded_points = sorted((G, b) for (mode, G), b in by.items() if mode == "sharded")
    growth = ", ".join(f"{common.human_bytes((b1 - b0) / (g1 - g0))} per clip from G = {g0} to {g1}"
                       for (g0, b0), (g1, b1) in zip(sharded_points, sharded_points[1:]))
    command = result.get("command") or "python benchmarks/memory.py --threads 2"
    return f"""## Memory of the GCI and SMF heads per rank vs the global batch

Command: `{command}`

{common.machine_markdown(result["machine"])}

Peak memory (RSS above the baseline, fp32, CPU) of one forward + backward of the two batch-wide
heads alone, at `sgmn-vitb32` sizes (d = 512, T = 10, N = 50), as one rank of a job with 32
clips per rank sees them, including the all-gathered tokens it holds and their gradients.
*sharded*: the code (this rank's relevance rows in checkpointed chunks, the cross encoder on
its own 32 products and 32 clips, L_pair's two directions); *replicated*: every rank computing
all G rows in one block, as before.

{table}

Fits: sharded {per_g(fs["fit_a_b_c"])}; replicated {per_g(fr["fit_a_b_c"])}.
**Largest global batch whose heads fit in 80 GB per rank** (extrapolated from the fit, fp32):
sharded G ≈ {fs["largest_G_in_80GB"]}, replicated G ≈ {fr["largest_G_in_80GB"]}. The replicated
figure is optimistic: up to G = 128 its cost is dominated by the cross encoder on all G products and clips
(linear), while its (G, G, T, N) matching blocks grow with G² beyond what was measured (the
replicated run stops at 128 to stay within this machine's memory). The sharded peak grows by
{growth}. What grows with G is the gathered tokens (T·N·d floats per clip: 1 MiB in fp32) and
their gradients, then the graph layer's attention over the 2G nodes (heads x 2G x 2G) and the
G x G relevance and loss matrices; with four points the fit's split between its G and G² terms
is loose. The cross encoder on this rank's own rows is the part that does not grow. bf16
autocast halves most of it.
"""


if __name__ == "__main__":
    sys.exit(main())
