"""A self-contained HTML report of an evaluation: sample queries with their frames and the
text-guided attention overlaid, the ASR, the top-5 products (images, titles, scores, hit/miss),
plus plots of the training losses and of R@k. Images are embedded as base64 PNG/JPEG so the
file can be mailed or opened anywhere."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sgmn.data.records import LPRData  # noqa: E402


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumb(path: Path, size: int = 96) -> str:
    img = Image.open(path).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def read_log(log_path: Path) -> list[dict]:
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]


def loss_plot(records: list[dict]) -> Optional[str]:
    """Every logged loss term against the step."""
    series: dict[str, tuple[list, list]] = {}
    for r in records:
        step = r.get("step")
        if step is None or r.get("kind", "step") != "step":  # epoch rows repeat the averages
            continue
        terms = dict(r.get("losses") or {})
        if "loss" in r and isinstance(r["loss"], (int, float)):
            terms.setdefault("total", r["loss"])
        for name, value in terms.items():
            if isinstance(value, (int, float)) and np.isfinite(value):
                xs, ys = series.setdefault(name, ([], []))
                xs.append(step)
                ys.append(value)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, (xs, ys) in sorted(series.items()):
        ax.plot(xs, ys, label=name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (unweighted terms)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("training losses")
    return _png(fig)


def recall_plot(metrics: dict) -> str:
    ks = sorted(int(k[2:]) for k in metrics if k.startswith("R@"))
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(ks, [metrics[f"R@{k}"] for k in ks], marker="o", label="model")
    if "chance_R@1" in metrics and np.isfinite(metrics["chance_R@1"]):
        ax.plot(ks, [min(100.0, metrics["chance_R@1"] * k) for k in ks], ls="--", color="grey", label="chance (approx.)")
    ax.set_xlabel("k")
    ax.set_ylabel("R@k (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(ks)
    ax.legend(fontsize=8)
    ax.set_title("recall at k")
    return _png(fig)


def attention_strip(frames: list[Image.Image], attention: Optional[np.ndarray]) -> str:
    """Frames in a row, each with its TGA map (g x g, upsampled) overlaid as a heat map."""
    n = len(frames)
    fig, axes = plt.subplots(1, n, figsize=(1.3 * n, 1.45))
    axes = np.atleast_1d(axes)
    for t, (ax, frame) in enumerate(zip(axes, frames)):
        arr = np.asarray(frame.convert("RGB"))
        ax.imshow(arr)
        if attention is not None and t < len(attention):
            a = np.asarray(attention[t], dtype=np.float32)
            if a.max() > 0:
                ax.imshow(a / a.max(), cmap="jet", alpha=0.45, extent=(0, arr.shape[1], arr.shape[0], 0),
                          interpolation="bilinear")
        ax.axis("off")
    fig.subplots_adjust(wspace=0.03)
    return _png(fig)


def write_report(
    out_path: Path,
    data: LPRData,
    metrics: dict,
    rankings: dict[str, list[tuple[str, float]]],
    attention: dict[str, np.ndarray],
    num_frames: int,
    log_path: Optional[Path] = None,
    num_queries: int = 8,
    top_k: int = 5,
    title: str = "sgmn demo report",
) -> Path:
    from sgmn.data.media import sample_indices

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    queries = [q for q in sorted(rankings) if q in data.clips][:num_queries]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:20px;max-width:1300px}"
        ".q{border:1px solid #ccc;border-radius:6px;padding:10px;margin:12px 0}"
        ".prods{display:flex;gap:10px}.p{width:130px;font-size:11px;text-align:center;padding:4px;border-radius:4px}"
        ".hit{background:#d4f7d4;border:2px solid #2a2}.miss{background:#fff;border:1px solid #ddd}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    proto = metrics.get("protocol", {})
    parts.append(
        f"<p>Data: {html.escape(str(metrics.get('data', {}).get('source')))}, split {html.escape(str(proto.get('split')))}, "
        f"mode {html.escape(str(proto.get('mode')))}, gallery {html.escape(str(proto.get('gallery')))} — "
        f"{metrics.get('num_queries')} queries in {proto.get('rooms')} rooms; model "
        f"{html.escape(str(metrics.get('model', {}).get('name')))}.</p>"
    )
    ks = sorted(int(k[2:]) for k in metrics if k.startswith("R@"))
    parts.append("<table><tr>" + "".join(f"<th>R@{k}</th>" for k in ks) + "<th>median rank</th><th>chance R@1</th></tr><tr>"
                 + "".join(f"<td>{metrics[f'R@{k}']:.2f}</td>" for k in ks)
                 + f"<td>{metrics['median_rank']:.1f}</td><td>{metrics.get('chance_R@1', float('nan')):.2f}</td></tr></table>")
    plots = [recall_plot(metrics)]
    if log_path is not None:
        lp = loss_plot(read_log(Path(log_path)))
        if lp:
            plots.insert(0, lp)
    parts.append("<div>" + "".join(f"<img src='{p}'>" for p in plots) + "</div>")
    parts.append(f"<h2>Sample queries (top {top_k}; green = correct product)</h2>")
    for qid in queries:
        clip = data.clips[qid]
        gts = set(clip.product_ids)
        idx = sample_indices(len(clip.frame_paths), num_frames) if clip.frame_paths else []
        frames = [Image.open(clip.frame_paths[i]) for i in idx]
        att = attention.get(qid)
        ranking = rankings[qid]
        hit = any(p in gts for p, _ in ranking[:1])
        parts.append(f"<div class='q'><b>{html.escape(qid)}</b> — {'HIT@1' if hit else 'miss@1'}<br>")
        if frames:
            parts.append(f"<img src='{attention_strip(frames, att)}'><br>")
        parts.append(f"<i>ASR:</i> {html.escape(clip.asr or '(none)')}<div class='prods'>")
        for rank, (pid, score) in enumerate(ranking[:top_k], 1):
            prod = data.products[pid]
            img = f"<img src='{_thumb(prod.image_paths[0])}'><br>" if prod.image_paths else ""
            cls = "hit" if pid in gts else "miss"
            parts.append(f"<div class='p {cls}'>{img}#{rank} score {score:.3f}<br>{html.escape(prod.title or pid)}</div>")
        parts.append("</div></div>")
    parts.append("</body></html>")
    out_path.write_text("".join(parts))
    return out_path
