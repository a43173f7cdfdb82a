"""`sgmn pretrain`: CLIP-style image-title contrastive pretraining of a model's vision tower and
text projection on synthetic shops, so that fine-tuning starts from pretrained weights as the
paper's does (it fine-tunes OpenAI CLIP; no CLIP weights can be downloaded here).

Data. ``shops`` synthetic shops are drawn by the generator of ``sgmn.data.synthetic`` with seed
``PRETRAIN_SEED_BASE + seed`` (1e9 + seed). The benchmarks, the demo and the tests draw their
rooms with seeds below 1e6, and every room, product id and image of a set is drawn from its seed,
so no benchmark room, product or image is reused (the attribute vocabulary -- categories, colours,
patterns, ... -- is shared, as a web-scale CLIP's vocabulary covers any shop's). The difficulty
knobs are the ``default`` preset's. Each product gives its shop image and the frames of its live
clips (the stream side: pose, light, blur, hands, clutter, other products in view), each paired
with the product's title. The last ``val_shops`` shops are held out for the zero-shot score.

Training. ``VisionBackbone`` (CLS token after post-LN and projection, as the models use it) and a
text projection ``Linear(text.dim, embed_dim)`` on the model's frozen sentence vectors, symmetric
InfoNCE with product-id positives and a learnable temperature (CLIP's init 1/0.07), AdamW with the
project's parameter groups and warm-up + cosine schedule. Augmentation: random resized crops,
flips and brightness / contrast jitter, drawn from a generator seeded by (seed, epoch).

Deterministic: one process, deterministic kernels, every random draw seeded, so the same config
gives bit-identical weights (on the same machine and torch thread count). Cached: the output
folder is keyed by the config and a hash of the code that shapes the result; a second call with
the same config returns the folder as it is, without computing anything.

Output (see ``sgmn.model.pretrained``): a Hugging Face ``CLIPVisionModelWithProjection`` folder
plus ``text_projection.safetensors`` and ``pretrain.json``. Fine-tune any model from it with
``sgmn train --model M --set model.vision.pretrained=FOLDER``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PRETRAIN_SEED_BASE = 10**9  # synthetic seeds of pretraining shops; benchmark / demo / test seeds stay below 1e6
FORMAT = "sgmn-pretrain/1"
COMPLETE = ".complete"


@dataclass(frozen=True)
class PretrainConfig:
    model: str = "sgmn-tiny"  # registered variant: its vision tower, embed_dim, text encoder and geometry
    seed: int = 0
    # Synthetic shops (default-preset difficulty); each product: 1 shop image + clips x frames stream views.
    shops: int = 40
    products_per_shop: int = 16
    clips_per_product: int = 1  # + 1 more (the generator's test clip): 2 live clips per product
    frames_per_clip: int = 3
    image_size: int = 96  # rendered size; images are resized to the model's input size
    val_shops: int = 4  # held out: zero-shot image -> title retrieval within a shop
    # Optimisation
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.2
    warmup_ratio: float = 0.1
    init_logit_scale: float = 1 / 0.07  # learnable, clamped at 100 (CLIP)
    augment: bool = True

    def __post_init__(self):
        for name in ("shops", "products_per_shop", "clips_per_product", "frames_per_clip", "epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"pretrain config field {name!r}: must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.val_shops < self.shops:
            raise ValueError(f"pretrain config field 'val_shops': must be in [0, shops), got {self.val_shops}")
        if not 0 <= self.seed < 10**9:
            raise ValueError(f"pretrain config field 'seed': must be in [0, 1e9), got {self.seed}")
        if self.lr <= 0:
            raise ValueError(f"pretrain config field 'lr': must be > 0, got {self.lr}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> "PretrainConfig":
        known = {f.name: f for f in dataclasses.fields(self)}
        d = self.to_dict()
        for key, value in overrides.items():
            if key not in known:
                raise ValueError(f"unknown pretrain config field {key!r}; known: {sorted(known)}")
            want = type(d[key])
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ValueError(f"pretrain config field {key!r}: expected {want.__name__}, got {value!r}")
            d[key] = value
        return PretrainConfig(**d)

    def synth_config(self):
        from sgmn.data.synthetic import preset

        return preset("default", rooms=self.shops, products_per_room=self.products_per_shop,
                      clips_per_product=self.clips_per_product, test_clips_per_product=1,
                      frames_per_clip=self.frames_per_clip, image_size=self.image_size,
                      seed=PRETRAIN_SEED_BASE + self.seed)


@dataclass
class PretrainResult:
    path: Path
    cached: bool  # True: the folder already held this config's weights; nothing was computed
    info: dict  # pretrain.json


# ---------------------------------------------------------------- cache key
# The code that shapes the weights: a change in any of these makes a new key.
_KEY_SOURCES = ("sgmn/train/pretrain.py", "sgmn/data/synthetic.py", "sgmn/data/transforms.py",
                "sgmn/model/backbone.py", "sgmn/model/losses.py", "sgmn/model/pretrained.py",
                "sgmn/train/optim.py", "sgmn/text/encoders.py")


def code_hash() -> str:
    import transformers

    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha1()
    for rel in _KEY_SOURCES:
        h.update(rel.encode())
        h.update((root / rel).read_bytes())
    h.update(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    return h.hexdigest()[:12]


def pretrain_key(config: PretrainConfig) -> str:
    from sgmn.model.registry import get_config

    model = get_config(config.model)
    shape = {"vision": dataclasses.asdict(model.vision), "embed_dim": model.embed_dim,
             "text": {k: getattr(model.text, k) for k in ("encoder", "dim", "pretrained")}, "geometry": model.geometry}
    blob = json.dumps([config.to_dict(), shape, code_hash()], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def default_cache_root() -> Path:
    base = os.environ.get("SGMN_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "sgmn")
    return Path(base) / "pretrain"


def read_info(folder: Union[str, Path]) -> Optional[dict]:
    """``pretrain.json`` of a finished pretrain folder, else None."""
    from sgmn.model.pretrained import PRETRAIN_INFO_FILE

    folder = Path(folder)
    if not (folder / COMPLETE).is_file():
        return None
    try:
        return json.loads((folder / PRETRAIN_INFO_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------- the model being pretrained
class ImageTitleModel(nn.Module):
    """The part of a retrieval model that pretraining shapes: vision tower + text projection."""

    def __init__(self, model_config, init_logit_scale: float):
        super().__init__()
        from sgmn.model.backbone import VisionBackbone

        self.backbone = VisionBackbone(model_config.vision, model_config.embed_dim)
        self.text_proj = nn.Linear(model_config.text.dim, model_config.embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_logit_scale)))

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(pixels)[:, 0], dim=-1)

    def encode_titles(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(vectors), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)


# ---------------------------------------------------------------- data
@dataclass
class _Views:
    pixels: torch.Tensor  # (N, 3, S, S) uint8
    product: torch.Tensor  # (N,) index into titles
    stream: torch.Tensor  # (N,) bool: a live frame (else the shop image)
    shop: torch.Tensor  # (N,) shop index


def _load_views(data, shop_ids: list[str], product_index: dict[str, int], size: int, geometry: str) -> _Views:
    from PIL import Image

    from sgmn.data.media import load_image
    from sgmn.data.transforms import ImageTransform

    transform = ImageTransform(size, geometry)
    pixels, product, stream, shop = [], [], [], []

    def add(path: Path, pid: str, is_stream: bool, s: int):
        img = load_image(path)
        side, off = transform.resize_size, transform.crop_offset
        img = img.resize((side, side), Image.BICUBIC)
        if off or side != size:
            img = img.crop((off, off, off + size, off + size))
        pixels.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))
        product.append(product_index[pid])
        stream.append(is_stream)
        shop.append(s)

    shop_of = {r: i for i, r in enumerate(shop_ids)}
    for room_id in shop_ids:
        for pid in data.rooms[room_id].product_ids:
            add(data.products[pid].image_paths[0], pid, False, shop_of[room_id])
    for clip in sorted(data.clips.values(), key=lambda c: c.clip_id):
        if clip.room_id in shop_of and clip.product_ids:
            for path in clip.frame_paths:
                add(path, clip.product_ids[0], True, shop_of[clip.room_id])
    return _Views(torch.stack(pixels), torch.tensor(product), torch.tensor(stream), torch.tensor(shop))


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) pixel values in 0..255 (uint8 or float) -> CLIP-normalised float."""
    from sgmn.data.transforms import CLIP_MEAN, CLIP_STD

    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _augment(u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random resized crop (scale 0.5-1, aspect 3/4-4/3), horizontal flip, brightness / contrast
    jitter (+-30%): the shop image reframed and relit as a live frame would show it."""
    n, _, s, _ = u8.shape
    out = torch.empty(n, 3, s, s)
    draws = torch.rand(n, 7, generator=gen)
    x = u8.float()
    for i in range(n):
        scale, log_ratio, fx, fy, flip, contrast, brightness = draws[i].tolist()
        area = (0.5 + 0.5 * scale) * s * s
        ratio = math.exp((log_ratio - 0.5) * 2 * math.log(4 / 3))
        w = int(round(min(s, math.sqrt(area * ratio))))
        h = int(round(min(s, math.sqrt(area / ratio))))
        x0, y0 = int(fx * (s - w + 1)), int(fy * (s - h + 1))
        crop = x[i : i + 1, :, y0 : y0 + h, x0 : x0 + w]
        crop = F.interpolate(crop, size=(s, s), mode="bilinear", align_corners=False)[0]
        if flip < 0.5:
            crop = crop.flip(-1)
        mean = crop.mean()
        crop = (crop - mean) * (0.7 + 0.6 * contrast) + mean * (0.7 + 0.6 * brightness)
        out[i] = crop.clamp(0, 255)
    return out


# ---------------------------------------------------------------- zero-shot score
@torch.no_grad()
def zero_shot(model: ImageTitleModel, views: _Views, titles: torch.Tensor, batch_size: int = 256) -> dict:
    """Image -> title R@1 within each shop (the shop's titles are the gallery), for live frames
    and shop images; chance = 1 / products per shop."""
    model.eval()
    emb = torch.cat([model.encode_images(_normalise(views.pixels[i : i + batch_size]))
                     for i in range(0, len(views.pixels), batch_size)])
    title_emb = model.encode_titles(titles)
    out = {}
    for name, which in (("frame_to_title_R@1", views.stream), ("shop_image_to_title_R@1", ~views.stream)):
        hits, total, chance = 0, 0, 0.0
        for s in views.shop.unique().tolist():
            rows = which & (views.shop == s)
            gallery = views.product[(views.shop == s)].unique()
            if not rows.any():
                continue
            scores = emb[rows] @ title_emb[gallery].t()
            best = gallery[scores.argmax(1)]
            hits += int((best == views.product[rows]).sum())
            total += int(rows.sum())
            chance += float(rows.sum()) / len(gallery)
        out[name] = 100.0 * hits / max(total, 1)
        out["chance_R@1"] = 100.0 * chance / max(total, 1)
    model.train()
    return out


# ---------------------------------------------------------------- the run
def pretrain(config: PretrainConfig = PretrainConfig(), out: Optional[Union[str, Path]] = None,
             cache_root: Optional[Union[str, Path]] = None, text_cache_dir: Optional[Union[str, Path]] = None,
             progress: bool = True, log=print) -> PretrainResult:
    """Pretrain (or find cached) weights; returns the output folder.

    ``out`` defaults to ``cache_root / pretrain_key(config)`` (``cache_root`` defaults to
    ``$SGMN_CACHE_DIR/pretrain`` or ``~/.cache/sgmn/pretrain``). A folder that already holds this
    key is returned at once; one that holds another key, or anything else, is refused.
    """
    from sgmn.model.pretrained import PRETRAIN_INFO_FILE

    key = pretrain_key(config)
    out = Path(out) if out is not None else Path(cache_root or default_cache_root()) / key
    info = read_info(out)
    if info is not None:
        if info.get("key") != key:
            raise FileExistsError(
                f"{out} holds pretrained weights of another config or code (key {info.get('key')}, wanted {key}); "
                "give another --out, or remove it")
        return PretrainResult(out, True, info)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no finished pretrain run; give another --out")

    work = out.parent / f".{out.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        info = _run(config, key, work, text_cache_dir, progress, log)
        (work / PRETRAIN_INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
        (work / COMPLETE).write_text(key + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return PretrainResult(out, False, info)


def _run(config: PretrainConfig, key: str, work: Path, text_cache_dir, progress: bool, log) -> dict:
    from tqdm import tqdm

    from sgmn.data.readers import read_dataset
    from sgmn.data.synthetic import generate
    from sgmn.model.losses import symmetric_infonce
    from sgmn.model.pretrained import save_text_projection
    from sgmn.model.registry import get_config
    from sgmn.text import CachedTextEncoder, make_text_encoder
    from sgmn.train.config import TrainConfig
    from sgmn.train.loop import make_deterministic, seed_everything
    from sgmn.train.optim import build_optimizer, build_scheduler

    started, cpu_started = time.perf_counter(), time.process_time()
    model_config = get_config(config.model)
    if model_config.vision.kind != "clip":
        raise ValueError(f"sgmn pretrain writes CLIP vision folders; {config.model} has vision.kind "
                         f"{model_config.vision.kind!r}")
    make_deterministic(True)

    # 1. synthetic shops, disjoint from every benchmark room (their own seed range)
    synth = config.synth_config()
    data_dir = work / "data"
    summary = generate(data_dir, synth, progress=progress)
    data = read_dataset(data_dir, "lpr4m")
    shops = list(data.rooms)  # generation order
    train_shops, val_shops = shops[: len(shops) - config.val_shops], shops[len(shops) - config.val_shops :]
    product_ids = [pid for r in shops for pid in data.rooms[r].product_ids]
    product_index = {pid: i for i, pid in enumerate(product_ids)}
    log(f"[sgmn pretrain] {len(shops)} synthetic shops (seed {synth.seed}), {len(product_ids)} products "
        f"({summary['seconds']} s to draw)")

    # 2. titles through the model's own (frozen) sentence encoder
    encoder = make_text_encoder(model_config.text)
    if text_cache_dir is not None and model_config.text.encoder != "precomputed" and not model_config.text.cache_dir:
        encoder = CachedTextEncoder(encoder, text_cache_dir)
    vecs, mask = encoder.encode([data.products[p].title for p in product_ids])
    if not mask.all():
        raise ValueError("a synthetic product has no title")
    titles = torch.from_numpy(np.asarray(vecs, dtype=np.float32))

    size, geometry = model_config.vision.image_size, model_config.geometry
    train_views = _load_views(data, train_shops, product_index, size, geometry)
    val_views = _load_views(data, val_shops, product_index, size, geometry) if val_shops else None
    shutil.rmtree(data_dir)  # rendered images are no longer needed

    prepared_s = time.perf_counter() - started

    # 3. contrastive training
    seed_everything(config.seed)
    model = ImageTitleModel(model_config, config.init_logit_scale)
    before = zero_shot(model, val_views, titles) if val_views is not None else {}
    opt_config = TrainConfig(lr=config.lr, backbone_lr_factor=1.0, weight_decay=config.weight_decay,
                             warmup_ratio=config.warmup_ratio)
    n = len(train_views.pixels)
    steps_per_epoch = n // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{n} training images are fewer than batch_size {config.batch_size}")
    total = steps_per_epoch * config.epochs
    optimizer = build_optimizer(model, opt_config)
    scheduler = build_scheduler(optimizer, total, config.warmup_ratio)
    history = []
    gen = torch.Generator()
    model.train()
    bar = tqdm(total=total, desc="pretrain", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    for epoch in range(config.epochs):
        gen.manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen)
        losses = []
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            u8 = train_views.pixels[idx]
            pixels = _normalise(_augment(u8, gen) if config.augment else u8)
            labels = train_views.product[idx]
            loss = symmetric_infonce(model.encode_images(pixels), model.encode_titles(titles[labels]), labels,
                                     model.scale())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretrain loss is {float(loss)} at epoch {epoch + 1}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "logit_scale": float(model.scale().detach())}
        if val_views is not None:
            row.update(zero_shot(model, val_views, titles))
        history.append(row)
        log(f"[sgmn pretrain] epoch {epoch + 1}/{config.epochs}: " + ", ".join(
            f"{k} {v:.3f}" if k == "loss" else f"{k} {v:.1f}" for k, v in row.items() if k != "epoch"))
    bar.close()

    # 4. write: a Hugging Face CLIP vision folder (+ projection) and the text projection
    _save_hf_vision(model.backbone, model_config, work)
    save_text_projection(work, model.text_proj, model_config.text)
    return {
        "format": FORMAT,
        "key": key,
        "code_hash": code_hash(),
        "config": config.to_dict(),
        "model": {"variant": config.model, "vision": dataclasses.asdict(model_config.vision),
                  "embed_dim": model_config.embed_dim, "text": dataclasses.asdict(model_config.text)},
        "synthetic": {**dataclasses.asdict(synth), "train_shops": len(train_shops), "val_shops": len(val_shops),
                      "train_images": n, "products": len(product_ids)},
        "zero_shot_before": before,
        "zero_shot": history[-1] if val_views is not None else {},
        "history": history,
        "steps": total,
        "seconds": round(time.perf_counter() - started, 1),
        "data_and_text_seconds": round(prepared_s, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "torch_threads": torch.get_num_threads(),
    }


def _save_hf_vision(backbone, model_config, folder: Path) -> None:
    """Save the tower + projection as ``CLIPVisionModelWithProjection`` (what load_hf_pretrained reads)."""
    import transformers

    from sgmn.model.backbone import _hf_vision_config

    hf_config = _hf_vision_config(model_config.vision)
    hf_config.projection_dim = model_config.embed_dim
    hf = transformers.CLIPVisionModelWithProjection(hf_config)
    inner = hf.vision_model
    while hasattr(inner, "vision_model"):
        inner = inner.vision_model
    inner.load_state_dict(backbone.vision_model.state_dict(), strict=True)
    with torch.no_grad():
        hf.visual_projection.weight.copy_(backbone.proj.weight)
    hf.save_pretrained(folder, safe_serialization=True)
