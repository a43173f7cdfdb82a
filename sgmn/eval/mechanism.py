"""Mechanism metrics: does each SGMN component do what it is there for, on the evaluation's queries?

Recall says whether the model retrieves; these say *why* (issue 9). Each is computed only for a
model that has the component; otherwise it is absent from ``metrics["mechanism"]`` (never a fake
value).

- **TGA influence** (``tga_influence``): mean cosine between a clip's embedding v with its ASR and
  v of the same frames with the ASR masked out, over the clips that have ASR. 1.0 means the text
  changes nothing. Needs TGA and the text branch.
- **TGA pointing** (``tga_pointing``): per frame that is real, has a product box and whose clip has
  ASR, the TGA attention mass on the in-box patches divided by the mass a uniform map over the
  kept patches would put there (``|in box ∩ kept| / |kept|``); averaged over such frames.
  1.0 = no better than uniform; a map entirely inside the box gives ``|kept| / |in box|``. The
  in-box patches follow :func:`sgmn.data.transforms.box_to_patch_mask` (IoU ≥ 0.02). A frame
  whose in-box patches are all kept patches (box over the whole frame, or too small to cover
  any patch) carries no information and is counted under ``uninformative_frames``.
- **SMF accuracy** (``smf_accuracy``): per query, its ground-truth product (the best-ranked one
  when it has several) against the ``k`` (``config.smf_k``) highest-ranked other products of its
  gallery by the model's retrieval score — the hard candidates the cross encoder exists for. A
  query counts as correct when the cross encoder scores the true product strictly above every
  candidate (ties count against it). ``chance`` is the mean of ``1 / (1 + k_q)`` (a room with
  fewer than ``k`` other products offers fewer candidates).

The metrics use at most ``max_queries`` queries, spread evenly over the sorted query ids (they
re-encode each query, so this bounds their cost on a large test split); ``queries`` says how
many were used.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_MAX_QUERIES = 256


# ---------------------------------------------------------------------------- the computations
def embedding_cosines(v_with: torch.Tensor, v_without: torch.Tensor) -> torch.Tensor:
    """(B, d), (B, d) -> (B,) cosine of each row pair."""
    return F.cosine_similarity(v_with.float(), v_without.float(), dim=-1, eps=1e-12)


def in_box_patches(boxes: torch.Tensor, image_size: int, patch_size: int) -> torch.Tensor:
    """(n, 4) boxes in model-input pixels -> (n, P) bool: the patches the box covers (IoU ≥ 0.02),
    exactly those :func:`box_to_patch_mask` keeps. A box covering no patch gives an all-True row
    (the mask's fallback), which :func:`pointing_ratios` counts as uninformative."""
    from sgmn.data.transforms import box_to_patch_mask

    if boxes.shape[0] == 0:
        g = image_size // patch_size
        return torch.zeros(0, g * g, dtype=torch.bool)
    return torch.stack([box_to_patch_mask(tuple(float(v) for v in b), image_size, patch_size)[1:] for b in boxes])


def pointing_ratios(attention: torch.Tensor, in_box: torch.Tensor, kept: Optional[torch.Tensor] = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mass in the box relative to a uniform map over the kept patches, per frame.

    attention (n, P) (rows sum to 1 over kept patches); in_box, kept (n, P) bool (kept None = all).
    Returns (ratios (n,), informative (n,) bool). A frame is informative when its in-box kept
    patches are a non-empty strict subset of its kept patches and its map is not all zero.
    """
    attention = attention.float()
    if kept is None:
        kept = torch.ones_like(in_box, dtype=torch.bool)
    inside = in_box.bool() & kept.bool()
    n_inside, n_kept = inside.sum(-1), kept.sum(-1)
    informative = (n_inside > 0) & (n_inside < n_kept) & (attention.sum(-1) > 0)
    uniform_mass = n_inside.float() / n_kept.clamp(min=1).float()
    mass = (attention * inside.float()).sum(-1)
    ratios = torch.where(informative, mass / uniform_mass.clamp(min=1e-12), torch.zeros_like(mass))
    return ratios, informative


def smf_candidates(ranking: list[tuple[str, float]], ground_truth: set[str], k: int
                   ) -> Optional[list[str]]:
    """[true product, then its k hardest other products] from a ranking (best first), or None when
    the ranking holds no ground-truth product or no other product."""
    positive = next((p for p, _ in ranking if p in ground_truth), None)
    negatives = [p for p, _ in ranking if p not in ground_truth][:k]
    if positive is None or not negatives:
        return None
    return [positive] + negatives


def cross_encoder_correct(scores: torch.Tensor) -> bool:
    """scores (1 + k,) with the true product first: correct when it beats every candidate strictly."""
    return bool(scores.numel() > 1 and bool((scores[0] > scores[1:]).all()))


def has_tga(model) -> bool:
    return getattr(model, "tga", None) is not None and getattr(model, "uses_text", False)


def has_cross_encoder(model) -> bool:
    return getattr(model, "cross", None) is not None and hasattr(model, "_fuse_for_cross_encoder")


def applies(model) -> bool:
    return has_tga(model) or has_cross_encoder(model)


def sample_queries(query_ids: list[str], max_queries: int) -> list[str]:
    """At most ``max_queries`` ids, evenly spread over the sorted ids (so every room is visited)."""
    ids = sorted(query_ids)
    if len(ids) <= max_queries:
        return ids
    return [ids[(i * len(ids)) // max_queries] for i in range(max_queries)]


# ---------------------------------------------------------------------------- per-query records
@torch.no_grad()
def cross_encoder_scores(model, clip_emb, product_emb) -> torch.Tensor:
    """The SMF cross encoder's score of one clip (embedding batch of 1, with tokens) against each
    product of ``product_emb`` (with tokens) -> (M,)."""
    from sgmn.model.matching import rerank

    clip_tokens, keep, product_tokens = model._fuse_for_cross_encoder(
        clip_emb.tokens, clip_emb.frame_mask, clip_emb.patch_mask, clip_emb.text_vector, clip_emb.text_mask,
        product_emb.tokens, product_emb.text_vector, product_emb.text_mask,
    )
    return rerank(model.cross, product_tokens, clip_tokens, keep)[0]


@torch.no_grad()
def batch_records(model, batch: dict, *, rankings: dict, ground_truth: dict, encode_products, device) -> dict:
    """Per-query mechanism records of one query batch (``QueryClips`` + ``collate``).

    ``encode_products(ids)`` -> ProductEmbeddings with tokens for those product ids (main image).
    Record fields: ``cos`` (float, clips with ASR, TGA models), ``ratios`` / ``uninformative``
    (per informative frame / count, TGA models), ``smf`` (``[correct, k_q]``, cross-encoder models).
    """
    tga, cross = has_tga(model), has_cross_encoder(model)
    frames, frame_mask = batch["frames"].to(device), batch["frame_mask"].to(device)
    asr = batch["asr_vec"].to(device) if "asr_vec" in batch else None
    asr_mask = batch["asr_mask"].to(device) if "asr_mask" in batch else None
    # A detector-assisted model masks the patches outside a query's box, as evaluation does.
    detector = bool(getattr(model.config, "detector_boxes", False)) and "patch_mask" in batch
    patch_mask = batch["patch_mask"].to(device) if detector else None
    emb = model.encode_clips(frames, frame_mask=frame_mask, patch_mask=patch_mask, asr=asr, asr_mask=asr_mask,
                             return_attention=tga, keep_tokens=cross)
    ids = list(batch["clip_ids"])
    records: dict[str, dict] = {q: {} for q in ids}
    if tga:
        has_asr = emb.text_mask.bool().cpu()
        # The same frames with the ASR masked out: only the text differs.
        plain = model.encode_clips(frames, frame_mask=frame_mask, patch_mask=patch_mask, asr=None)
        cos = embedding_cosines(emb.embedding.cpu(), plain.embedding.cpu())
        vcfg = model.config.vision
        att = emb.attention.flatten(-2).float().cpu() if emb.attention is not None else None  # (B,T,P)
        boxes, box_mask = batch.get("boxes"), batch.get("box_mask")
        for i, q in enumerate(ids):
            if not bool(has_asr[i]):
                continue
            records[q]["cos"] = float(cos[i])
            records[q]["ratios"], records[q]["uninformative"] = [], 0
            if att is None or boxes is None or box_mask is None:
                continue
            frames_with_box = (box_mask[i].bool() & batch["frame_mask"][i].bool()).nonzero().flatten()
            if frames_with_box.numel() == 0:
                continue
            in_box = in_box_patches(boxes[i, frames_with_box], vcfg.image_size, vcfg.patch_size)
            # Uniform over the patches the query kept: all of them unless the model is detector-assisted.
            kept = patch_mask[i, frames_with_box, 1:].cpu() if patch_mask is not None else None
            ratios, informative = pointing_ratios(att[i, frames_with_box], in_box, kept)
            records[q]["ratios"] = [float(r) for r in ratios[informative]]
            records[q]["uninformative"] = int((~informative).sum())
    if cross:
        k = int(model.config.smf_k)
        from sgmn.eval.protocol import _take

        for i, q in enumerate(ids):
            candidates = smf_candidates(rankings.get(q) or [], set(ground_truth.get(q) or []), k)
            if candidates is None:
                continue
            products = encode_products(candidates)
            scores = cross_encoder_scores(model, _take(emb, [i]), products).float().cpu()
            records[q]["smf"] = [cross_encoder_correct(scores), len(candidates) - 1]
    return records


def summarise(records: dict[str, dict], model, *, max_queries: int) -> dict:
    """Aggregate per-query records (from any number of ranks) into ``metrics["mechanism"]``."""
    out: dict = {"queries": len(records), "max_queries": max_queries}
    ordered = [records[q] for q in sorted(records)]
    if has_tga(model):
        cos = [r["cos"] for r in ordered if "cos" in r]
        out["tga_influence"] = {"mean_cos": float(np.mean(cos)) if cos else None, "clips": len(cos)}
        ratios = [x for r in ordered for x in r.get("ratios", [])]
        out["tga_pointing"] = {
            "mass_ratio": float(np.mean(ratios)) if ratios else None,  # None: no frame with a box and ASR
            "frames": len(ratios),
            "clips": sum(1 for r in ordered if r.get("ratios")),
            "uninformative_frames": sum(r.get("uninformative", 0) for r in ordered),
        }
    if has_cross_encoder(model):
        smf = [r["smf"] for r in ordered if "smf" in r]
        out["smf_accuracy"] = {
            "accuracy": float(np.mean([c for c, _ in smf])) if smf else None,
            "chance": float(np.mean([1.0 / (1 + kq) for _, kq in smf])) if smf else None,
            "k": int(model.config.smf_k),
            "queries": len(smf),
        }
    return out


def format_mechanism(mech: Optional[dict]) -> str:
    """One line per metric, for the CLI and the demo."""
    if not mech:
        return ""
    lines = []
    if "tga_influence" in mech:
        c = mech["tga_influence"]["mean_cos"]
        lines.append(f"TGA influence: mean cos(v with ASR, v without) = {c:.4f}" if c is not None
                     else "TGA influence: no query has ASR")
    if "tga_pointing" in mech:
        p = mech["tga_pointing"]
        lines.append(f"TGA pointing: {p['mass_ratio']:.2f}x a uniform map's mass in the product box ({p['frames']} frames)"
                     if p["mass_ratio"] is not None else "TGA pointing: no frame with a product box and ASR")
    if "smf_accuracy" in mech:
        s = mech["smf_accuracy"]
        lines.append(f"SMF accuracy: {100 * s['accuracy']:.1f}% on mined candidates (chance {100 * s['chance']:.1f}%, "
                     f"k={s['k']}, {s['queries']} queries)" if s["accuracy"] is not None
                     else "SMF accuracy: no query with a ground-truth product and a candidate")
    return "\n".join(lines)
