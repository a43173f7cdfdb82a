"""The inference API every retrieval model shares (SGMN and the baselines).

A model only says how to turn *tensors* into embeddings (``_encode_clip_tensors`` /
``_encode_product_tensors``) and how to score them; this base class accepts what callers actually
have — ready CLIP-normalised tensors or PIL images / uint8 arrays / image paths, strings or
precomputed text vectors — converts them, runs the model in eval mode without gradients, and
handles saving and loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sgmn.model.config import SGMNConfig


@dataclass
class ClipEmbeddings:
    """What ``encode_clips`` returns.

    ``embedding`` (B,d) L2-normalised v; ``text_embedding`` (B,d) normalised a (zeros where no
    text); ``text_mask`` (B,) bool; ``attention`` (B,T,g,g) TGA map or None. ``tokens`` /
    ``frame_mask`` / ``text_vector`` / ``patch_mask`` are kept only for re-ranking
    (``keep_tokens=True``): frame tokens (B,T,N,d) (final frame feature at CLS), real frames
    (B,T), fc_asr output (B,d), kept patches (B,T,N) or None.
    """

    embedding: torch.Tensor
    text_embedding: torch.Tensor
    text_mask: torch.Tensor
    attention: Optional[torch.Tensor] = None
    tokens: Optional[torch.Tensor] = None
    frame_mask: Optional[torch.Tensor] = None
    text_vector: Optional[torch.Tensor] = None
    patch_mask: Optional[torch.Tensor] = None


@dataclass
class ProductEmbeddings:
    """What ``encode_products`` returns: ``embedding`` (M,d), ``text_embedding`` (M,d) (zeros where
    no title), ``text_mask`` (M,); ``tokens`` (M,N,d) / ``text_vector`` (M,d) with ``keep_tokens``."""

    embedding: torch.Tensor
    text_embedding: torch.Tensor
    text_mask: torch.Tensor
    attention: Optional[torch.Tensor] = None
    tokens: Optional[torch.Tensor] = None
    text_vector: Optional[torch.Tensor] = None


ImageLike = Union["PIL.Image.Image", np.ndarray, str, Path]  # noqa: F821
TextInput = Union[Sequence[Optional[str]], torch.Tensor, np.ndarray, None]


def l2n(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last axis; a zero vector stays zero (never NaN)."""
    # In float32: under fp16 autocast eps = 1e-12 rounds to 0 (a zero row would give 0/0).
    return F.normalize(x.float(), dim=-1, eps=1e-12).to(x.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B,T,d) over the real positions of mask (B,T)."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


class RetrievalModel(nn.Module):
    """Base of every model: inference API, scores, save/load, device."""

    def __init__(self, config: SGMNConfig):
        super().__init__()
        self.config = config
        self._text_encoder = None  # created on first use of a string; not part of the state

    # ---- what subclasses provide ----------------------------------------------------------
    def _encode_clip_tensors(
        self,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
        patch_mask: Optional[torch.Tensor],
        asr_vec: torch.Tensor,
        asr_mask: torch.Tensor,
    ) -> dict[str, Any]:
        """-> dict with ``v`` (B,d), ``a`` (B,d), ``a_mask`` (B,), ``attention`` (B,T,P)|None,
        ``tokens`` (B,T,N,d), ``a_raw`` (B,d)|None."""
        raise NotImplementedError

    def _encode_product_tensors(
        self, pixels: torch.Tensor, title_vec: torch.Tensor, title_mask: torch.Tensor
    ) -> dict[str, Any]:
        """-> dict with ``p`` (M,d), ``t`` (M,d), ``t_mask`` (M,), ``tokens`` (M,N,d),
        ``t_raw`` (M,d)|None, ``attention`` (M,P)|None."""
        raise NotImplementedError

    @property
    def uses_text(self) -> bool:
        return False

    # ---- small shared pieces -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            from sgmn.text.encoders import make_text_encoder

            self._text_encoder = make_text_encoder(self.config.text)
        return self._text_encoder

    def _image_transform(self):
        from sgmn.data.transforms import ImageTransform

        return ImageTransform(self.config.vision.image_size, self.config.geometry)

    def _to_pixels(self, image: ImageLike, transform, where: str) -> torch.Tensor:
        from PIL import Image

        if isinstance(image, (str, Path)):
            from sgmn.data.media import load_image

            image = load_image(image)
        elif isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"{where}: an array image must be HxWx3 uint8, got shape {image.shape} dtype {image.dtype}"
                )
            image = Image.fromarray(image)
        elif not isinstance(image, Image.Image):
            raise TypeError(f"{where}: expected a PIL image, an HxWx3 uint8 array or a path, got {type(image).__name__}")
        pixels, _ = transform(image)
        return pixels

    def _check_pixels(self, pixels: torch.Tensor, what: str) -> torch.Tensor:
        S = self.config.vision.image_size
        if pixels.shape[-3:] != (3, S, S):
            raise ValueError(
                f"{what}: expected CLIP-normalised pixels (...,3,{S},{S}), got {tuple(pixels.shape)}"
            )
        if not torch.is_floating_point(pixels):
            raise ValueError(f"{what}: pixels must be a float tensor (CLIP-normalised), got {pixels.dtype}")
        return pixels.to(self.device, torch.float32)

    def _text_inputs(
        self, text: TextInput, mask: Optional[torch.Tensor], n: int, what: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Strings (encoded), precomputed vectors (n,Dt) or None -> (vectors, has-text mask).

        For precomputed vectors without a mask, an all-zero row means "no text" (the batch
        convention: zeros where missing).
        """
        dim = self.config.text.dim
        dev = self.device
        if text is None:
            return torch.zeros(n, dim, device=dev), torch.zeros(n, dtype=torch.bool, device=dev)
        if isinstance(text, (torch.Tensor, np.ndarray)):
            vec = torch.as_tensor(text, dtype=torch.float32).to(dev)
            if vec.ndim != 2 or vec.shape != (n, dim):
                raise ValueError(f"{what}: expected text vectors of shape ({n}, {dim}), got {tuple(vec.shape)}")
            if mask is None:
                mask = vec.abs().sum(-1) > 0
            mask = self._text_mask(mask, n, what)
            if not torch.isfinite(vec[mask.to(dev)]).all():
                raise ValueError(f"{what}: text vectors contain NaN or inf")
            vec = torch.where(mask.to(dev).unsqueeze(-1), vec, torch.zeros_like(vec))
            return vec, mask.to(dev, torch.bool)
        texts = list(text)
        if len(texts) != n:
            raise ValueError(f"{what}: got {len(texts)} texts for {n} items")
        if not all(t is None or isinstance(t, str) for t in texts):
            raise TypeError(f"{what}: texts must be strings or None")
        vecs, has = self.text_encoder.encode(texts)
        has = torch.as_tensor(np.asarray(has), dtype=torch.bool)
        if mask is not None:
            has = has & self._text_mask(mask, n, what).cpu()
        vec = torch.as_tensor(np.asarray(vecs), dtype=torch.float32) * has.unsqueeze(-1)
        return vec.to(dev), has.to(dev)

    @staticmethod
    def _text_mask(mask, n: int, what: str) -> torch.Tensor:
        mask = torch.as_tensor(mask)
        if mask.shape != (n,):
            raise ValueError(f"{what}_mask: expected shape ({n},), got {tuple(mask.shape)}")
        return mask.bool()

    @staticmethod
    def _check_finite(pixels: torch.Tensor, what: str) -> None:
        """NaN / inf pixels would turn the whole embedding into NaN: refuse them by index."""
        bad = ~torch.isfinite(pixels).flatten(pixels.ndim - 3).all(dim=-1)
        if bool(bad.any()):
            where = [tuple(i) if len(i) > 1 else i[0] for i in bad.nonzero().tolist()][:8]
            raise ValueError(f"{what}: pixels of {where} contain NaN or inf")

    def _clip_inputs(self, frames, frame_mask, patch_mask):
        """Frames as a tensor (B,T,3,S,S) or a list of per-clip lists of images -> padded tensors."""
        if isinstance(frames, torch.Tensor):
            if frames.ndim != 5:
                raise ValueError(f"frames: expected (B,T,3,S,S), got {tuple(frames.shape)}")
            frames = self._check_pixels(frames, "frames")
            B, T = frames.shape[:2]
            if frame_mask is None:
                frame_mask = torch.ones(B, T, dtype=torch.bool)
        else:
            transform = self._image_transform()
            clips = []
            for i, clip in enumerate(frames):
                clip = list(clip)
                if not clip:
                    raise ValueError(f"frames: clip {i} has no frames")
                clips.append(torch.stack([self._to_pixels(im, transform, f"frames[{i}][{j}]") for j, im in enumerate(clip)]))
            if not clips:
                raise ValueError("frames: no clips given")
            B, T = len(clips), max(len(c) for c in clips)
            S = self.config.vision.image_size
            padded = torch.zeros(B, T, 3, S, S)
            given_mask = torch.zeros(B, T, dtype=torch.bool)
            for i, c in enumerate(clips):
                padded[i, : len(c)] = c
                given_mask[i, : len(c)] = True
            frames = padded.to(self.device)
            frame_mask = given_mask if frame_mask is None else torch.as_tensor(frame_mask).bool() & given_mask
        frame_mask = torch.as_tensor(frame_mask, dtype=torch.bool).to(self.device)
        if frame_mask.shape != (B, T):
            raise ValueError(f"frame_mask: expected ({B}, {T}), got {tuple(frame_mask.shape)}")
        if not frame_mask.any(dim=1).all():
            bad = (~frame_mask.any(dim=1)).nonzero().flatten().tolist()
            raise ValueError(f"frame_mask: clips {bad} have no real frame")
        if patch_mask is not None:
            N = self.config.vision.num_tokens
            patch_mask = torch.as_tensor(patch_mask, dtype=torch.bool).to(self.device)
            if patch_mask.shape != (B, T, N):
                raise ValueError(f"patch_mask: expected ({B}, {T}, {N}), got {tuple(patch_mask.shape)}")
        # Padded frames may hold anything: they never reach the embedding, except on the published
        # path (``temporal_published_mask``), which feeds the first padded frame into the TDB.
        if not self.config.temporal_published_mask:
            frames_used = torch.where(frame_mask[:, :, None, None, None], frames, 0.0)
        else:
            frames_used = frames
        self._check_finite(frames_used, "frames (clip, frame)")
        return frames, frame_mask, patch_mask

    def _product_inputs(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            if images.ndim != 4:
                raise ValueError(f"images: expected (M,3,S,S), got {tuple(images.shape)}")
            pixels = self._check_pixels(images, "images")
            self._check_finite(pixels, "images")
            return pixels
        transform = self._image_transform()
        images = list(images)
        if not images:
            raise ValueError("images: no images given")
        return torch.stack([self._to_pixels(im, transform, f"images[{i}]") for i, im in enumerate(images)]).to(self.device)

    # ---- inference API --------------------------------------------------------------------
    @torch.no_grad()
    def encode_clips(
        self,
        frames,
        frame_mask: Optional[torch.Tensor] = None,
        patch_mask: Optional[torch.Tensor] = None,
        asr: TextInput = None,
        asr_mask: Optional[torch.Tensor] = None,
        return_attention: bool = False,
        keep_tokens: Optional[bool] = None,
    ) -> ClipEmbeddings:
        """Embed clips; see the module docstring for the accepted inputs. ``keep_tokens`` (default:
        whether ``config.rerank_top_k > 0``) keeps what ``rerank_scores`` needs."""
        if keep_tokens is None:
            keep_tokens = self.config.rerank_top_k > 0
        frames, frame_mask, patch_mask = self._clip_inputs(frames, frame_mask, patch_mask)
        B = frames.shape[0]
        if self.uses_text:
            asr_vec, asr_mask = self._text_inputs(asr, asr_mask, B, "asr")
        else:
            asr_vec = torch.zeros(B, self.config.text.dim, device=self.device)
            asr_mask = torch.zeros(B, dtype=torch.bool, device=self.device)
        was_training = self.training
        self.eval()
        try:
            out = self._encode_clip_tensors(frames, frame_mask, patch_mask, asr_vec, asr_mask)
        finally:
            self.train(was_training)
        attention = None
        if return_attention and out.get("attention") is not None:
            from sgmn.model.tga import attention_grid

            attention = attention_grid(out["attention"])
        return ClipEmbeddings(
            embedding=out["v"],
            text_embedding=out["a"],
            text_mask=out["a_mask"],
            attention=attention,
            tokens=out["tokens"] if keep_tokens else None,
            frame_mask=frame_mask if keep_tokens else None,
            text_vector=out.get("a_raw") if keep_tokens else None,
            patch_mask=patch_mask if keep_tokens else None,
        )

    @torch.no_grad()
    def encode_products(
        self,
        images,
        titles: TextInput = None,
        title_mask: Optional[torch.Tensor] = None,
        keep_tokens: Optional[bool] = None,
    ) -> ProductEmbeddings:
        """Embed shop images (one per product) and titles; ``keep_tokens`` as in ``encode_clips``."""
        if keep_tokens is None:
            keep_tokens = self.config.rerank_top_k > 0
        pixels = self._product_inputs(images)
        M = pixels.shape[0]
        if self.uses_text:
            title_vec, title_mask = self._text_inputs(titles, title_mask, M, "titles")
        else:
            title_vec = torch.zeros(M, self.config.text.dim, device=self.device)
            title_mask = torch.zeros(M, dtype=torch.bool, device=self.device)
        was_training = self.training
        self.eval()
        try:
            out = self._encode_product_tensors(pixels, title_vec, title_mask)
        finally:
            self.train(was_training)
        return ProductEmbeddings(
            embedding=out["p"],
            text_embedding=out["t"],
            text_mask=out["t_mask"],
            attention=out.get("attention"),
            tokens=out["tokens"] if keep_tokens else None,
            text_vector=out.get("t_raw") if keep_tokens else None,
        )

    def score(self, clips: ClipEmbeddings, products: ProductEmbeddings) -> torch.Tensor:
        """(B,M) = v·p + λ·a·t, the text term only where both the clip and the product have text."""
        return self.score_tensors(
            clips.embedding, products.embedding, clips.text_embedding, products.text_embedding,
            clips.text_mask, products.text_mask,
        )

    def score_tensors(self, v, p, a=None, t=None, a_mask=None, t_mask=None) -> torch.Tensor:
        s = v @ p.t()
        if self.uses_text and a is not None and t is not None:
            both = a_mask.unsqueeze(1) & t_mask.unsqueeze(0)
            s = s + self.config.text_weight * (a @ t.t()) * both.to(s.dtype)
        return s

    # ---- save / load ----------------------------------------------------------------------
    def save_pretrained(self, directory: Union[str, Path]) -> Path:
        from sgmn.model.checkpoint import save_model

        directory = Path(directory)
        save_model(self, self.config, directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: Union[str, Path], map_location: Union[str, torch.device] = "cpu"):
        """Rebuild the model saved in ``directory`` (its class follows ``config.architecture``)."""
        from sgmn.model.backbone import saved_weights_follow
        from sgmn.model.checkpoint import load_state
        from sgmn.model.registry import model_class

        config_dict, state = load_state(Path(directory))
        config = SGMNConfig.from_dict(config_dict)
        # The saved weights replace any pretrained initialisation: do not load it again (its
        # file may not even exist on this machine).
        # ... nor draw a random init for the vision tower that the load replaces (backbone.py).
        with saved_weights_follow():
            model = model_class(config.architecture)(config.replace(**{"vision.pretrained": None}))
        model.config = config
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{directory}: weights do not match the config "
                f"(missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]})"
            )
        return model.to(map_location)
