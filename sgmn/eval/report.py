"""A self-contained HTML report of an evaluation.

- R@k, chance, and (when given) baseline rows trained on the same data and budget, with what the
  model adds over each;
- the mechanism metrics (TGA influence / pointing, SMF accuracy) when measured;
- the per-category breakdown (other facets folded below it);
- the training losses, each term explained in one line, L_pair beside its chance level;
- sample queries spread over the rooms: frames with the text-guided attention overlaid (colour
  bar in multiples of a uniform map; a visible note when there is no ASR, so no overlay), the
  ASR, the top-5 products, hit/miss, and on a miss the correct product with its rank.

Images are embedded as base64 PNG/JPEG so the file can be mailed or opened anywhere."""

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
    pair_chance = None
    for r in records:
        step = r.get("step")
        if step is None or r.get("kind", "step") != "step":  # epoch rows repeat the averages
            continue
        if isinstance(r.get("pair_chance"), (int, float)):
            pair_chance = r["pair_chance"]
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
    colours = {}
    for name, (xs, ys) in sorted(series.items()):
        colours[name] = ax.plot(xs, ys, label=name, lw=1.2, marker="o" if len(xs) < 3 else None, ms=3)[0].get_color()
    if pair_chance is not None and "pair" in series:
        ax.axhline(pair_chance, ls="--", lw=1, color=colours["pair"], label=f"pair chance ln(1+k) = {pair_chance:.3f}")
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


def attention_strip(frames: list[Image.Image], attention: Optional[np.ndarray], boxes: Optional[list] = None) -> str:
    """Frames in a row, each with its TGA map (g x g, upsampled) overlaid as a heat map.

    The colour is the attention on a patch in multiples of a uniform map's (1 = uniform, the same
    scale for every frame of the clip), explained by a colour bar; a uniform wash reads as 1
    everywhere. ``boxes``: the product box of each frame in that frame's pixels, drawn when known.
    """
    n = len(frames)
    overlay = attention is not None and len(attention) > 0 and float(np.max(attention)) > 0
    fig, axes = plt.subplots(1, n, figsize=(1.3 * n + (0.9 if overlay else 0), 1.45))
    axes = np.atleast_1d(axes)
    vmax = 1.0
    if overlay:
        a_all = np.asarray(attention, dtype=np.float32)
        P = a_all[0].size
        vmax = max(2.0, float(a_all.max() * P))
    image = None
    for t, (ax, frame) in enumerate(zip(axes, frames)):
        arr = np.asarray(frame.convert("RGB"))
        ax.imshow(arr)
        if overlay and t < len(attention):
            a = np.asarray(attention[t], dtype=np.float32)
            if a.max() > 0:
                image = ax.imshow(a * a.size, cmap="jet", alpha=0.45, vmin=0.0, vmax=vmax,
                                  extent=(0, arr.shape[1], arr.shape[0], 0), interpolation="bilinear")
        if boxes is not None and t < len(boxes) and boxes[t] is not None:
            x1, y1, x2, y2 = boxes[t]
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", lw=1.0, ls="--"))
        ax.axis("off")
    fig.subplots_adjust(wspace=0.03)
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes), fraction=0.025, pad=0.01)
        bar.set_label("× uniform", fontsize=6)
        bar.ax.tick_params(labelsize=6)
    return _png(fig)


# One line per loss term (the names in log.jsonl); shown for the terms the run logged.
LOSS_TERMS = {
    "txt": "L_txt: InfoNCE aligning each clip's ASR with its product's title (the text branch).",
    "base": "L_base: triplet loss on v·p, the clip and product embeddings retrieval ranks with.",
    "gnn": "L_gnn (GCI): triplet losses on the graph-refined embeddings ṽ, p̃ against p, v and each other.",
    "reg": "L_reg (GCI): KL between the graph's learned relevance and exp(−distance) of the current v, p. "
           "It starts near 0 because at random init every v and p look alike (both distributions are flat); "
           "as training separates the embeddings the target sharpens and the graph must follow, so a rise "
           "(even 100×) is the target moving, not divergence.",
    "pair": "L_pair (SMF): (1+k)-way cross-entropy of the cross encoder picking the true clip among k mined "
            "hard negatives; chance is ln(1+k) (dashed line).",
    "vi": "L_vi: InfoNCE on the full score S = v·p + λ·a·t.",
    "box": "L_box: −log of the TGA attention mass inside the product box (optional box supervision).",
    "ce": "L_ce: cross-entropy (test/toy models).",
    "total": "total: the weighted sum that is optimised (weights in the run's config.json).",
}


def _loss_notes(records: list[dict]) -> str:
    names: set[str] = set()
    for r in records:
        names |= set((r.get("losses") or {}).keys())
        if "loss" in r:
            names.add("total")
    rows = [f"<li><b>{html.escape(n)}</b> — {html.escape(LOSS_TERMS.get(n, 'a model-specific term'))}</li>"
            for n in sorted(names)]
    return f"<ul class='notes'>{''.join(rows)}</ul>" if rows else ""


def _spread_over_rooms(query_ids: list[str], data: LPRData, n: int) -> list[str]:
    """Up to ``n`` queries taking turns across rooms (sorted), so the sample shows several rooms."""
    by_room: dict[str, list[str]] = {}
    for q in sorted(query_ids):
        by_room.setdefault(data.clips[q].room_id, []).append(q)
    out: list[str] = []
    queues = [list(v) for _, v in sorted(by_room.items())]
    while len(out) < n and any(queues):
        for queue in queues:
            if queue and len(out) < n:
                out.append(queue.pop(0))
    return out


def _fmt(x, spec: str = ".2f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and np.isfinite(x) else "–"


def _comparison_table(name: str, metrics: dict, baselines: dict[str, dict], ks: list[int]) -> str:
    head = "<tr><th>model</th>" + "".join(f"<th>R@{k}</th>" for k in ks) + "<th>median rank</th><th>chance R@1</th></tr>"
    rows = [(name, metrics, "")] + [(b, m, "baseline") for b, m in baselines.items()]
    body = "".join(
        f"<tr class='{cls}'><td>{html.escape(n)}</td>" + "".join(f"<td>{_fmt(m.get(f'R@{k}'))}</td>" for k in ks)
        + f"<td>{_fmt(m.get('median_rank'), '.1f')}</td><td>{_fmt(m.get('chance_R@1'))}</td></tr>"
        for n, m, cls in rows
    )
    for b, m in baselines.items():
        body += (f"<tr class='delta'><td>{html.escape(name)} − {html.escape(b)}</td>"
                 + "".join(f"<td>{_fmt(metrics[f'R@{k}'] - m[f'R@{k}'], '+.2f')}</td>" for k in ks) + "<td></td><td></td></tr>")
    return f"<table>{head}{body}</table>"


def _mechanism_section(mech: Optional[dict]) -> str:
    if not mech:
        return ("<h2>Mechanisms</h2><p>Not measured (this model has neither TGA nor a cross encoder, or the "
                "evaluation ran with <code>--no-mechanism</code>).</p>")
    rows = []
    if "tga_influence" in mech:
        c = mech["tga_influence"]
        rows.append(("TGA influence", f"mean cos(v with ASR, v without ASR) = {_fmt(c['mean_cos'], '.4f')}"
                     if c["mean_cos"] is not None else "not measurable: no query has ASR",
                     f"{c['clips']} clips with ASR; 1.0 = the ASR changes nothing"))
    if "tga_pointing" in mech:
        p = mech["tga_pointing"]
        if p["mass_ratio"] is None:
            rows.append(("TGA pointing", "not measurable: no frame has both a product box and ASR", "boxes come from the data"))
        else:
            rows.append(("TGA pointing", f"{_fmt(p['mass_ratio'])}× a uniform map's mass in the product box",
                         f"{p['frames']} frames with a box and ASR; 1.0 = no better than uniform"))
    if "smf_accuracy" in mech:
        a = mech["smf_accuracy"]
        acc = _fmt(100 * a["accuracy"], ".1f") if a["accuracy"] is not None else "–"
        chance = _fmt(100 * a["chance"], ".1f") if a["chance"] is not None else "–"
        rows.append(("SMF accuracy", f"{acc}% (chance {chance}%)",
                     f"true product vs its k={a['k']} hardest others, {a['queries']} queries"))
    body = "".join(f"<tr><td>{html.escape(n)}</td><td>{html.escape(v)}</td><td>{html.escape(d)}</td></tr>" for n, v, d in rows)
    return (f"<h2>Mechanisms</h2><table><tr><th>component</th><th>measure</th><th>over</th></tr>{body}</table>"
            f"<p class='small'>{mech.get('queries')} test queries (at most {mech.get('max_queries')}).</p>")


def _breakdown_section(metrics: dict, baselines: Optional[dict[str, dict]] = None) -> str:
    """Per category (with each baseline's R@1 in the same group), other facets folded below."""
    breakdown = metrics.get("breakdown") or {}
    baselines = baselines or {}
    if not breakdown:
        return ""

    def table(facet: str, groups: dict) -> str:
        extra = [(b, (m.get("breakdown") or {}).get(facet) or {}) for b, m in baselines.items()]
        head = ("<tr><th>group</th><th>queries</th><th>R@1</th><th>R@5</th><th>median rank</th>"
                + "".join(f"<th>R@1 {html.escape(b)}</th>" for b, _ in extra) + "</tr>")
        body = "".join(
            f"<tr><td>{html.escape(g)}</td><td>{m.get('num_queries')}</td><td>{_fmt(m.get('R@1'))}</td>"
            f"<td>{_fmt(m.get('R@5'))}</td><td>{_fmt(m.get('median_rank'), '.1f')}</td>"
            + "".join(f"<td>{_fmt((groups_b.get(g) or {}).get('R@1'))}</td>" for _, groups_b in extra) + "</tr>"
            for g, m in groups.items()
        )
        return f"<table>{head}{body}</table>"

    parts = ["<h2>Per category</h2>"]
    if "category" in breakdown:
        parts.append(table("category", breakdown["category"]))
    for facet, groups in breakdown.items():
        if facet != "category":
            parts.append(f"<details><summary>by {html.escape(facet)}</summary>{table(facet, groups)}</details>")
    return "".join(parts)


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
    baselines: Optional[dict[str, dict]] = None,
    has_attention: Optional[bool] = None,
) -> Path:
    """Write the report. ``baselines``: {model name: metrics} of models trained on the same data
    and budget, shown beside this one with the differences. ``has_attention``: whether the model
    has TGA at all (default: whether ``attention`` holds any map), to say why a clip has no overlay."""
    from sgmn.data.media import sample_indices

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    baselines = baselines or {}
    if has_attention is None:
        has_attention = bool(attention) or "tga_influence" in (metrics.get("mechanism") or {})
    queries = _spread_over_rooms([q for q in rankings if q in data.clips], data, num_queries)
    model_name = str(metrics.get("model", {}).get("name"))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:20px;max-width:1300px}"
        ".q{border:1px solid #ccc;border-radius:6px;padding:10px;margin:12px 0}"
        ".prods{display:flex;gap:10px;align-items:flex-start}.p{width:130px;font-size:11px;text-align:center;padding:4px;border-radius:4px}"
        ".hit{background:#d4f7d4;border:2px solid #2a2}.miss{background:#fff;border:1px solid #ddd}"
        ".truth{background:#fff4d6;border:2px dashed #c80;margin-left:18px}"
        ".note{display:inline-block;background:#fff4d6;border:1px solid #c80;border-radius:4px;padding:2px 6px;font-size:12px}"
        ".small,.notes{font-size:12px;color:#333}tr.baseline td{color:#555}tr.delta td{font-weight:bold}"
        "table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    proto = metrics.get("protocol", {})
    sample_rooms = len({data.clips[q].room_id for q in queries})
    parts.append(
        f"<p>Data: {html.escape(str(metrics.get('data', {}).get('source')))}, split {html.escape(str(proto.get('split')))}, "
        f"mode {html.escape(str(proto.get('mode')))}, gallery {html.escape(str(proto.get('gallery')))} — "
        f"{metrics.get('num_queries')} queries in {proto.get('rooms')} rooms; model {html.escape(model_name)}.</p>"
    )
    ks = sorted(int(k[2:]) for k in metrics if k.startswith("R@"))
    parts.append("<h2>Retrieval</h2>" + _comparison_table(model_name, metrics, baselines, ks))
    if baselines:
        parts.append("<p class='small'>Baselines trained on the same data with the same budget; the bold rows are "
                     "what this model adds (R@k points).</p>")
    parts.append(_mechanism_section(metrics.get("mechanism")))
    parts.append(_breakdown_section(metrics, baselines))
    plots = [recall_plot(metrics)]
    records = read_log(Path(log_path)) if log_path is not None else []
    lp = loss_plot(records)
    if lp:
        plots.insert(0, lp)
    parts.append("<h2>Training</h2><div>" + "".join(f"<img src='{p}'>" for p in plots) + "</div>")
    parts.append(_loss_notes(records))
    parts.append(f"<h2>Sample queries from {sample_rooms} rooms (top {top_k}; green = correct product; "
                 "on a miss the correct product follows, dashed)</h2>")
    for qid in queries:
        clip = data.clips[qid]
        gts = set(clip.product_ids)
        idx = sample_indices(len(clip.frame_paths), num_frames) if clip.frame_paths else []
        frames = [Image.open(clip.frame_paths[i]) for i in idx]
        boxes = [clip.boxes[i] if i < len(clip.boxes) else None for i in idx] if clip.boxes else None
        att = attention.get(qid)
        ranking = rankings[qid]
        hit = any(p in gts for p, _ in ranking[:1])
        parts.append(f"<div class='q'><b>{html.escape(qid)}</b> — {'HIT@1' if hit else 'miss@1'}"
                     f" <span class='small'>room {html.escape(clip.room_id)}</span><br>")
        if frames:
            parts.append(f"<img src='{attention_strip(frames, att, boxes)}'><br>")
        if not has_attention:
            parts.append("<span class='note'>no text-guided attention map for this model: frames shown without overlay</span><br>")
        elif not clip.asr:
            parts.append("<span class='note'>no ASR for this clip: TGA has no text to follow, so there is no attention overlay</span><br>")
        parts.append(f"<i>ASR:</i> {html.escape(clip.asr or '(none)')}<div class='prods'>")
        shown = set()
        for rank, (pid, score) in enumerate(ranking[:top_k], 1):
            parts.append(_product_card(data, pid, f"#{rank} score {score:.3f}", "hit" if pid in gts else "miss"))
            shown.add(pid)
        if not hit:  # the correct product, wherever it ranked
            position = {pid: (r, sc) for r, (pid, sc) in enumerate(ranking, 1)}
            for pid in clip.product_ids:
                if pid in shown or pid not in data.products:
                    continue
                where = f"ranked #{position[pid][0]}, score {position[pid][1]:.3f}" if pid in position else "not ranked"
                parts.append(_product_card(data, pid, f"correct product: {where}", "truth"))
        parts.append("</div></div>")
    parts.append("</body></html>")
    out_path.write_text("".join(parts))
    return out_path


def _product_card(data: LPRData, pid: str, caption: str, cls: str) -> str:
    prod = data.products[pid]
    img = f"<img src='{_thumb(prod.image_paths[0])}'><br>" if prod.image_paths else ""
    return f"<div class='p {cls}'>{img}{html.escape(caption)}<br>{html.escape(prod.title or pid)}</div>"
