"""Does TGA do anything? Two numbers for a trained model on a data set's query clips.

* influence: mean cos(v with the clip's ASR, v of the same frames without ASR), over clips that
  have ASR. 1.0 means the ASR leaves the clip embedding unchanged.
* pointing: the TGA attention mass inside the product's box divided by the mass a uniform map
  over the same kept patches would put there (ratio of the means over every real frame that has
  a box and ASR). 1.0 = no better than uniform; the box patches follow the IoU >= 0.02 rule of
  the patch mask.

Usage (e.g. after ``sgmn demo --out /tmp/demo``)::

    python benchmarks/tga_probe.py --run /tmp/demo/run --data /tmp/demo/data [--split test]

Prints one JSON object (``--check``: exit 1 unless cos < 0.99 and the box ratio >= 1.5, the
issue-9 goals for the demo model). ``--init-model``/``--init-seed`` also report how far a few
modules' weights moved from their initial values. ``sgmn eval`` reports its own versions of the
two metrics; this script is the quick check used while working on the model (issue 9).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader


@torch.no_grad()
def probe(model, data, split: str = "test", batch_size: int = 16, max_clips: int | None = None) -> dict:
    from sgmn.data.dataset import QueryClips, collate
    from sgmn.data.transforms import box_to_patch_mask
    from sgmn.eval.protocol import _dataset_kwargs, _make_text_vectors

    model.eval()
    cfg = model.config
    detector = bool(getattr(cfg, "detector_boxes", False))
    text = _make_text_vectors(model, data, split)
    kw = _dataset_kwargs(model)
    kw.pop("use_boxes", None)
    ds = QueryClips(data, split, text=text, use_boxes=detector, **kw)
    if max_clips is not None:
        ds.clips = ds.clips[:max_clips]
    size, patch = cfg.vision.image_size, cfg.vision.patch_size
    cos, mass, uniform = [], [], []
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate):
        if not batch.get("clip_ids"):
            continue
        common = dict(frame_mask=batch["frame_mask"], patch_mask=batch["patch_mask"] if detector else None)
        with_asr = model.encode_clips(batch["frames"], asr=batch["asr_vec"], asr_mask=batch["asr_mask"],
                                      return_attention=True, **common)
        without = model.encode_clips(batch["frames"], asr=batch["asr_vec"],
                                     asr_mask=torch.zeros_like(batch["asr_mask"]), **common)
        has_asr = batch["asr_mask"].bool()
        cos.extend((with_asr.embedding * without.embedding).sum(-1)[has_asr].tolist())
        if with_asr.attention is None:
            continue
        att = with_asr.attention.flatten(2)  # (B, T, P)
        valid = batch["box_mask"].bool() & batch["frame_mask"].bool() & has_asr[:, None]
        for b, t in valid.nonzero().tolist():
            target = box_to_patch_mask(tuple(batch["boxes"][b, t].tolist()), size, patch)[1:]
            kept = batch["patch_mask"][b, t, 1:].bool() if detector else torch.ones_like(target)
            if float(att[b, t].sum()) <= 0:
                continue
            mass.append(float((att[b, t] * target).sum()))
            uniform.append(float((target & kept).sum()) / max(int(kept.sum()), 1))
    out = {
        "clips_with_asr": len(cos),
        "mean_cos_v_with_vs_without_asr": sum(cos) / len(cos) if cos else None,
        "frames_with_box": len(mass),
        "box_mass": sum(mass) / len(mass) if mass else None,
        "uniform_box_mass": sum(uniform) / len(uniform) if uniform else None,
    }
    out["box_mass_vs_uniform"] = out["box_mass"] / out["uniform_box_mass"] if mass and out["uniform_box_mass"] else None
    return out


WATCHED = ("tga.query.weight", "tga.key.weight", "tga.gate", "fusion.attn.in_proj_weight", "fusion.gate",
           "cross.cross_blocks.0.attn.in_proj_weight", "graph.relevance_clip_to_product.0.weight",
           "temporal.frame_position_embeddings.weight", "backbone.vision_model.encoder.layers.1.self_attn.q_proj.weight")


def weight_changes(model, init_name: str, seed: int) -> dict:
    """||W_trained - W_init|| / ||W_init|| for a few watched tensors; the initial weights are
    rebuilt as ``sgmn train`` builds them (``seed_everything(seed)`` then ``create_model``)."""
    import sgmn
    from sgmn.train.loop import seed_everything

    seed_everything(seed)
    init = sgmn.create_model(init_name).state_dict()
    trained = model.state_dict()
    out = {}
    for name in WATCHED:
        if name in trained and name in init:
            before = init[name].float()
            out[name] = float((trained[name].float() - before).norm() / before.norm().clamp(min=1e-12))
    if "tga.mix_logit" in trained:
        out["tga.mix (alpha)"] = float(torch.sigmoid(trained["tga.mix_logit"]))
    if "tga.strength" in trained:  # tga_mode = "attention_bias"
        out["tga.strength (beta)"] = float(trained["tga.strength"])
    if "tga.gate" in trained:  # the first TGA design
        out["tga.gate mean |g|"] = float(trained["tga.gate"].abs().mean())
    if "fusion.gate" in trained:
        out["fusion.gate mean |g|"] = float(trained["fusion.gate"].abs().mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="trained model folder or run folder")
    parser.add_argument("--data", type=Path, required=True, help="data set folder (LPR4M layout)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-clips", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--init-model", default=None,
                        help="registered model the run started from (e.g. sgmn-tiny): also report weight changes")
    parser.add_argument("--init-seed", type=int, default=0, help="the run's train seed (sgmn demo: its --seed)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless the issue-9 goals hold: cos < 0.99 and box mass >= 1.5x uniform")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import sgmn
    from sgmn.data.readers import read_dataset

    model = sgmn.load_model(args.run)
    data = read_dataset(args.data, "lpr4m")
    result = probe(model, data, args.split, max_clips=args.max_clips)
    if args.init_model:
        result["relative_weight_change"] = weight_changes(model, args.init_model, args.init_seed)
    print(json.dumps(result, indent=2))
    if args.check:
        cos, ratio = result["mean_cos_v_with_vs_without_asr"], result["box_mass_vs_uniform"]
        failed = [msg for ok, msg in ((cos is not None and cos < 0.99, f"mean cos {cos} is not < 0.99"),
                                      (ratio is not None and ratio >= 1.5, f"box mass ratio {ratio} is not >= 1.5"))
                  if not ok]
        if failed:
            raise SystemExit("goal not met: " + "; ".join(failed))


if __name__ == "__main__":
    main()
