"""The evaluation protocol of shared/spec/evaluation.md.

- Per-room galleries: each query is ranked only against the products of its own live room.
- Gallery embeddings are computed once per product (shared by every query of its room), never
  per query — this is what makes SGMN a one-stage retriever.
- ``gallery="main"`` uses one image per product (the published SGMN evaluation); ``"all"``
  encodes every image and scores a product by its best image (RICE).
- ``mode="video"``: one prediction per clip from ``num_frames`` frames sampled uniformly.
  ``mode="frame"``: one prediction per frame from a causal window of the last <= ``window`` frames
  (how a live feed is served); query ids are ``<clip_id>@<frame index>``.
- A query that cannot be read under ``on_error="skip"`` has no prediction and counts as a miss.
- ``mechanism=True`` adds ``metrics["mechanism"]`` (TGA influence / pointing, SMF accuracy; see
  :mod:`sgmn.eval.mechanism`).
- ``distributed=True`` (``sgmn eval`` under torchrun; every rank must call it): gallery and query
  batches are split across ranks by batch number (rank r encodes batches r, r+W, ...: the same
  batches as one process, so the same numbers), the embeddings are all-gathered, each rank scores
  its share of the rooms, and the rankings are merged in one process's order. Every rank returns
  the same result, identical to one process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sgmn.data.records import Clip, LPRData, Product
from sgmn.errors import DataError
from sgmn.model.checkpoint import model_fingerprint
from sgmn.eval.metrics import DEFAULT_KS, breakdown, chance_recall_at_1, recall_summary

Mode = Literal["video", "frame"]
Gallery = Literal["main", "all"]


@dataclass
class EvalResult:
    metrics: dict
    rankings: dict[str, list[tuple[str, float]]]
    ground_truth: dict[str, list[str]] = field(default_factory=dict)
    attention: dict[str, np.ndarray] = field(default_factory=dict)  # only when asked for

    def write(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        # Strict JSON (other tools read these files): an undefined value (a median rank with no
        # ranked query, a recall over no query) is written as null, never as NaN.
        metrics = json.dumps(_finite_or_null(self.metrics), indent=2, default=_json_default, allow_nan=False)
        (out / "metrics.json").write_text(metrics)
        rankings = {q: [[p, round(float(s), 6)] for p, s in r] for q, r in self.rankings.items()}
        (out / "rankings.json").write_text(json.dumps(_finite_or_null(rankings), allow_nan=False))


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _finite_or_null(value):
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------- fingerprints
def data_fingerprint(data: LPRData, split: str) -> str:
    """Hash of what the protocol depends on: queries, their ground truth, galleries, media paths."""
    h = hashlib.sha256()
    for clip in data.split_clips(split):
        h.update(clip.clip_id.encode())
        h.update(json.dumps([sorted(clip.product_ids), [str(p) for p in clip.frame_paths], str(clip.video_path), clip.asr]).encode())
        h.update(json.dumps(data.rooms[clip.room_id].product_ids if clip.room_id in data.rooms else []).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- helpers
class _AliasedText:
    """Text vectors looked up under derived query ids (frame-mode windows share their clip's ASR)."""

    def __init__(self, text, alias: dict[str, str]):
        self._text, self._alias, self.dim = text, alias, text.dim

    def clip(self, clip_id: str):
        return self._text.clip(self._alias.get(clip_id, clip_id))

    def product(self, product_id: str):
        return self._text.product(self._alias.get(product_id, product_id))


def frame_mode_queries(clips: list[Clip], window: int) -> tuple[list[Clip], dict[str, str]]:
    """One causal window per frame: the frame and the ``window - 1`` frames before it."""
    out, alias = [], {}
    for clip in clips:
        if not clip.frame_paths:
            raise ValueError(
                f"frame mode needs clips stored as frames; clip {clip.clip_id!r} is a video file "
                "(decode it to frames first, or use mode='video')"
            )
        for t in range(len(clip.frame_paths)):
            lo = max(0, t - window + 1)
            qid = f"{clip.clip_id}@{t:04d}"
            out.append(
                dataclasses.replace(
                    clip,
                    clip_id=qid,
                    frame_paths=clip.frame_paths[lo : t + 1],
                    boxes=clip.boxes[lo : t + 1] if clip.boxes else None,
                    frame_sizes=clip.frame_sizes[lo : t + 1] if clip.frame_sizes else None,
                )
            )
            alias[qid] = clip.clip_id
    return out, alias


def _make_text_vectors(model, data: LPRData, split: str):
    from sgmn.text import TextVectors, make_text_encoder

    from sgmn.data.dataset import NoTextVectors

    config = model.config
    if not getattr(config, "use_text", True) or config.architecture != "sgmn":
        return NoTextVectors(config.text.dim)  # the model ignores text: do not encode it
    if config.text.encoder == "precomputed":
        return TextVectors(data, split, None)
    return TextVectors(data, split, make_text_encoder(config.text))  # cached when text.cache_dir is set


def _dataset_kwargs(model) -> dict:
    c = model.config
    return dict(
        num_frames=c.num_frames,
        image_size=c.vision.image_size,
        patch_size=c.vision.patch_size,
        geometry=c.geometry,
        # detector-assisted models mask the patches outside a query's box, where it has one
        use_boxes=bool(getattr(c, "detector_boxes", False)),
    )


# ---------------------------------------------------------------------------- sharding
Shard = tuple[int, int]  # (rank, world size)


def current_shard() -> Shard:
    """(rank, world) of the initialised process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(obj, shard: Shard) -> list:
    if shard[1] == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * shard[1]
    dist.all_gather_object(out, obj)
    return out


def _shard_loader(ds, batch_size: int, shard: Shard, num_workers: int):
    """A loader over this rank's batches: batches r, r+W, r+2W, ... of the one-process batching,
    each with exactly the items it has in one process. Yields (global batch number, batch)."""
    from sgmn.data.dataset import collate
    from torch.utils.data import Subset

    rank, world = shard
    n_batches = (len(ds) + batch_size - 1) // batch_size
    mine = list(range(rank, n_batches, world))
    items = [i for b in mine for i in range(b * batch_size, min((b + 1) * batch_size, len(ds)))]
    loader = DataLoader(Subset(ds, items) if world > 1 else ds, batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate)
    return _Numbered(mine, loader)


class _Numbered:
    """(batch number, batch) pairs with a length, for tqdm."""

    def __init__(self, numbers: list[int], loader):
        self.numbers, self.loader = numbers, loader

    def __len__(self) -> int:
        return len(self.numbers)

    def __iter__(self):
        return zip(self.numbers, self.loader)


def _merge_batches(local: list, shard: Shard) -> list:
    """[(batch number, payload)] of every rank, in batch order."""
    gathered = [item for part in _all_gather(local, shard) for item in part]
    return [payload for _, payload in sorted(gathered, key=lambda kv: kv[0])]


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def encode_gallery(model, products: list[Product], *, text, gallery: Gallery, batch_size: int,
                   device, num_workers: int = 0, progress: bool = True, shard: Shard = (0, 1),
                   keep_tokens: Optional[bool] = None, on_error: str = "raise",
                   skips: Optional[Counter] = None):
    """Encode every product once. Returns (product ids of rows, ProductEmbeddings on CPU).

    With ``shard=(rank, world)`` each rank encodes its share of the batches and every rank gets
    all of them (collective: every rank must call it). Under ``on_error="skip"`` an unreadable
    image has no row (its product cannot be ranked, so a query of it is a miss) and is counted in
    ``skips["gallery images"]`` (summed over ranks)."""
    from sgmn.data.dataset import GalleryProducts

    kw = _dataset_kwargs(model)
    ds = GalleryProducts(products, image_size=kw["image_size"], geometry=kw["geometry"], text=text,
                         all_images=(gallery == "all"), on_error=on_error)
    local = []
    for number, batch in tqdm(_shard_loader(ds, batch_size, shard, num_workers), desc="gallery",
                              disable=not progress, leave=False):
        skipped = int(batch.get("skipped", 0))
        if not batch.get("product_ids"):
            local.append((number, ([], None, skipped)))  # every image of this batch was unreadable
            continue
        emb = model.encode_products(
            batch["product_pixels"].to(device),
            titles=batch["title_vec"].to(device) if "title_vec" in batch else None,
            title_mask=batch["title_mask"].to(device) if "title_mask" in batch else None,
            keep_tokens=keep_tokens,
        )
        local.append((number, (list(batch["product_ids"]), _to_cpu(emb), skipped)))
    parts = _merge_batches(local, shard)
    if skips is not None:
        skips["gallery images"] += sum(n for _, _, n in parts)
    ids = [pid for batch_ids, _, _ in parts for pid in batch_ids]
    embs = [emb for _, emb, _ in parts if emb is not None]
    return ids, (_cat(embs) if embs else None)


def _query_dataset(model, clips: list[Clip], data: LPRData, text, on_error: str):
    from sgmn.data.dataset import QueryClips

    sub = LPRData(source=data.source, root=data.root, rooms=data.rooms, products=data.products,
                  clips={c.clip_id: c for c in clips}, splits={"queries": [c.clip_id for c in clips]})
    return QueryClips(sub, "queries", text=text, on_error=on_error, **_dataset_kwargs(model))


@torch.no_grad()
def encode_queries(model, clips: list[Clip], data: LPRData, *, text, batch_size: int, device,
                   num_workers: int = 0, on_error: str = "raise", return_attention: bool = False,
                   progress: bool = True, shard: Shard = (0, 1)):
    """-> (query ids, ClipEmbeddings on CPU or None, number skipped); sharded like encode_gallery."""
    ds = _query_dataset(model, clips, data, text, on_error)
    local = []
    for number, batch in tqdm(_shard_loader(ds, batch_size, shard, num_workers), desc="queries",
                              disable=not progress, leave=False):
        skipped = int(batch.get("skipped", 0))
        if not batch.get("clip_ids"):
            local.append((number, ([], None, skipped)))
            continue
        emb = model.encode_clips(
            batch["frames"].to(device),
            frame_mask=batch["frame_mask"].to(device),
            asr=batch["asr_vec"].to(device) if "asr_vec" in batch else None,
            asr_mask=batch["asr_mask"].to(device) if "asr_mask" in batch else None,
            patch_mask=batch["patch_mask"].to(device) if ds.use_boxes else None,
            return_attention=return_attention,
        )
        local.append((number, (list(batch["clip_ids"]), _to_cpu(emb), skipped)))
    parts = _merge_batches(local, shard)
    ids = [q for batch_ids, _, _ in parts for q in batch_ids]
    embs = [emb for _, emb, _ in parts if emb is not None]
    return ids, (_cat(embs) if embs else None), sum(s for _, _, s in parts)


@torch.no_grad()
def mechanism_metrics(model, queries: list[Clip], data: LPRData, *, text, rankings: dict, ground_truth: dict,
                      batch_size: int, device, num_workers: int = 0, on_error: str = "raise",
                      max_queries: int = 256, shard: Shard = (0, 1), progress: bool = True) -> Optional[dict]:
    """``metrics["mechanism"]`` (see :mod:`sgmn.eval.mechanism`) over at most ``max_queries`` of the
    ranked queries; None for a model with neither TGA nor a cross encoder."""
    from sgmn.data.dataset import GalleryProducts, collate
    from sgmn.eval import mechanism as mech

    if not mech.applies(model):
        return None
    chosen = set(mech.sample_queries([q.clip_id for q in queries if rankings.get(q.clip_id)], max_queries))
    sample = [q for q in queries if q.clip_id in chosen]
    kw = _dataset_kwargs(model)

    def encode_products(ids: list[str]):
        ds = GalleryProducts([data.products[p] for p in ids], image_size=kw["image_size"],
                             geometry=kw["geometry"], text=text)
        batch = collate([ds[i] for i in range(len(ds))])
        return model.encode_products(
            batch["product_pixels"].to(device), titles=batch["title_vec"].to(device),
            title_mask=batch["title_mask"].to(device), keep_tokens=True,
        )

    records: dict[str, dict] = {}
    if sample:
        ds = _query_dataset(model, sample, data, text, on_error)
        local = []
        for number, batch in tqdm(_shard_loader(ds, batch_size, shard, num_workers), desc="mechanism",
                                  disable=not progress, leave=False):
            if batch.get("clip_ids"):
                local.append((number, mech.batch_records(model, batch, rankings=rankings, ground_truth=ground_truth,
                                                         encode_products=encode_products, device=device)))
        for part in _merge_batches(local, shard):
            records.update(part)
    return mech.summarise(records, model, max_queries=max_queries)


def _to(emb, device, float32: bool = False):
    """Move every tensor field of an embedding dataclass; masks keep their bool dtype."""
    def move(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to(device)
        return t.float() if float32 and t.is_floating_point() else t

    return dataclasses.replace(
        emb, **{f.name: move(getattr(emb, f.name)) for f in dataclasses.fields(emb)
                if isinstance(getattr(emb, f.name), torch.Tensor)}
    )


def _to_cpu(emb):
    return _to(emb, "cpu", float32=True)


def _cat(parts):
    first = parts[0]
    values = {}
    for f in dataclasses.fields(first):
        vals = [getattr(p, f.name) for p in parts]
        values[f.name] = torch.cat(vals) if isinstance(vals[0], torch.Tensor) else None
    return type(first)(**values)


def _take(emb, index):
    idx = torch.as_tensor(index, dtype=torch.long)
    return dataclasses.replace(
        emb, **{f.name: getattr(emb, f.name)[idx] for f in dataclasses.fields(emb)
                if isinstance(getattr(emb, f.name), torch.Tensor)}
    )


def evaluate(
    model,
    data: LPRData,
    split: str = "test",
    mode: Mode = "video",
    gallery: Gallery = "main",
    batch_size: int = 16,
    device: Optional[str | torch.device] = None,
    text=None,
    num_workers: int = 0,
    on_error: str = "raise",
    window: int = 10,
    same_group_only: bool = False,
    ks=DEFAULT_KS,
    return_attention: bool = False,
    progress: bool = True,
    mechanism: bool = False,
    mechanism_max_queries: int = 256,
    distributed: bool = False,
) -> EvalResult:
    """The per-room protocol (module docstring). ``mechanism``: add ``metrics["mechanism"]``;
    ``distributed``: shard across the ranks of the initialised process group (every rank calls it)."""
    if mode not in ("video", "frame"):
        raise ValueError(f"mode must be 'video' or 'frame', got {mode!r}")
    if gallery not in ("main", "all"):
        raise ValueError(f"gallery must be 'main' or 'all', got {gallery!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    shard = current_shard() if distributed else (0, 1)
    progress = progress and shard[0] == 0
    clips = data.split_clips(split)
    if text is None:
        text = _make_text_vectors(model, data, split)

    # Gallery: every product of every room that has a query, each encoded exactly once.
    room_ids = sorted({c.room_id for c in clips})
    missing_rooms = [r for r in room_ids if r not in data.rooms]
    if missing_rooms:
        raise KeyError(f"queries refer to rooms without a gallery: {missing_rooms[:5]}")
    product_ids = sorted({p for r in room_ids for p in data.rooms[r].product_ids})
    gallery_skips: Counter = Counter()
    row_ids, prod_emb = encode_gallery(
        model, [data.products[p] for p in product_ids], text=text, gallery=gallery,
        batch_size=batch_size, device=device, num_workers=num_workers, progress=progress, shard=shard,
        on_error=on_error, skips=gallery_skips,
    )
    if not row_ids:
        raise DataError("no gallery image could be read (every one was skipped as unreadable)")
    rows_of: dict[str, list[int]] = {}
    for i, pid in enumerate(row_ids):
        rows_of.setdefault(pid, []).append(i)

    if mode == "frame":
        queries, alias = frame_mode_queries(clips, window)
        qtext = _AliasedText(text, alias) if text is not None else None
    else:
        queries, alias, qtext = clips, {}, text
    q_ids, q_emb, skipped = encode_queries(
        model, queries, data, text=qtext, batch_size=batch_size, device=device,
        num_workers=num_workers, on_error=on_error, return_attention=return_attention, progress=progress,
        shard=shard,
    )
    q_index = {q: i for i, q in enumerate(q_ids)}

    rerank = getattr(model.config, "rerank_top_k", 0) > 0 and hasattr(model, "rerank_scores")
    rankings: dict[str, list[tuple[str, float]]] = {}
    ground_truth: dict[str, list[str]] = {}
    gallery_sizes: dict[str, int] = {}
    attention: dict[str, np.ndarray] = {}
    # A gallery is a room's products; with same_group_only (MovingFashion "innersource") only
    # those of the query's own source group.
    by_gallery: dict[tuple[str, Optional[str]], list[Clip]] = {}
    for q in queries:
        by_gallery.setdefault((q.room_id, q.group if same_group_only else None), []).append(q)
    for number, ((room_id, group), room_queries) in enumerate(by_gallery.items()):
        for q in room_queries:
            ground_truth[q.clip_id] = list(q.product_ids)
        if number % shard[1] != shard[0]:  # another rank scores this gallery
            continue
        room_products = [p for p in data.rooms[room_id].product_ids
                         if not same_group_only or data.products[p].group == group]
        rows = [i for p in room_products for i in rows_of.get(p, [])]
        row_owner = [p for p in room_products for _ in rows_of.get(p, [])]
        present = [q for q in room_queries if q.clip_id in q_index]
        for q in room_queries:
            gallery_sizes[q.clip_id] = len(room_products)
        if not present or not rows:
            continue
        qi = [q_index[q.clip_id] for q in present]
        clips_e, prods_e = _take(q_emb, qi), _take(prod_emb, rows)
        scores_t = model.score(clips_e, prods_e)
        if rerank:  # optional SMF re-ranking of each query's top-K (config.rerank_top_k)
            scores_t = model.rerank_scores(_to(clips_e, device), _to(prods_e, device), scores=scores_t.to(device)).cpu()
        scores = scores_t.float().numpy()
        for q, s in zip(present, scores):
            best: dict[str, float] = {}
            for owner, value in zip(row_owner, s.tolist()):  # "all" gallery: a product's best image
                if owner not in best or value > best[owner]:
                    best[owner] = value
            rankings[q.clip_id] = sorted(best.items(), key=lambda kv: -kv[1])
            if return_attention and q_emb.attention is not None:
                attention[q.clip_id] = q_emb.attention[q_index[q.clip_id]].numpy()

    if shard[1] > 1:  # merge the ranks' galleries, in one process's query order
        merged_rankings, merged_sizes, merged_attention = {}, {}, {}
        for part_rankings, part_sizes, part_attention in _all_gather((rankings, gallery_sizes, attention), shard):
            merged_rankings.update(part_rankings)
            merged_sizes.update(part_sizes)
            merged_attention.update(part_attention)
        order = [q.clip_id for room_queries in by_gallery.values() for q in room_queries]
        rankings = {q: merged_rankings[q] for q in order if q in merged_rankings}
        gallery_sizes = {q: merged_sizes[q] for q in order if q in merged_sizes}
        attention = {q: merged_attention[q] for q in order if q in merged_attention}

    metrics = recall_summary(rankings, ground_truth, ks)
    facets: dict[str, dict[str, Optional[str]]] = {"category": {}}
    for q in queries:
        facets["category"][q.clip_id] = q.category
        for k, v in (q.attributes or {}).items():
            facets.setdefault(k, {})[q.clip_id] = v
        if q.group:
            facets.setdefault("group", {})[q.clip_id] = q.group
    metrics = {
        **metrics,
        "chance_R@1": chance_recall_at_1(ground_truth, gallery_sizes),
        "num_skipped_unreadable": skipped,
        "num_skipped_gallery_images": gallery_skips["gallery images"],
        "breakdown": breakdown(rankings, ground_truth, facets, ks),
        "protocol": {
            "split": split, "mode": mode, "gallery": gallery, "window": window if mode == "frame" else None,
            "gallery_scope": "same source group (innersource)" if same_group_only else "room",
            "num_frames": model.config.num_frames, "rooms": len(room_ids),
            "gallery_products": len(product_ids), "gallery_images": len(row_ids),
            "ties": "broken against the ground truth",
            "rerank_top_k": model.config.rerank_top_k if rerank else 0,
        },
        "model": {"name": model.config.name, "fingerprint": model_fingerprint(model)[:16]},
        "data": {"source": data.source, "root": str(data.root) if data.root else None,
                 "fingerprint": data_fingerprint(data, split)},
    }
    if mechanism:
        mech = mechanism_metrics(
            model, queries, data, text=qtext, rankings=rankings, ground_truth=ground_truth, batch_size=batch_size,
            device=device, num_workers=num_workers, on_error=on_error, max_queries=mechanism_max_queries,
            shard=shard, progress=progress,
        )
        if mech is not None:
            metrics["mechanism"] = mech
    if was_training:
        model.train()
    return EvalResult(metrics=metrics, rankings=rankings, ground_truth=ground_truth, attention=attention)


def format_table(metrics: dict, ks=DEFAULT_KS) -> str:
    """A short human-readable metrics table (what `sgmn eval` and the demo print)."""
    head = " | ".join([f"{f'R@{k}':>6}" for k in ks] + ["med rank", "mean rank", "queries", "missing", "chance R@1"])
    vals = " | ".join(
        [f"{metrics[f'R@{k}']:6.2f}" for k in ks]
        + [f"{metrics['median_rank']:8.1f}", f"{metrics['mean_rank']:9.2f}", f"{metrics['num_queries']:7d}",
           f"{metrics['num_missing_predictions']:7d}", f"{metrics.get('chance_R@1', float('nan')):10.2f}"]
    )
    return f"{head}\n{vals}"
