"""Baselines on the same backbone as SGMN, with the same inference API and forward contract.

- ``clip-meanpool`` (CLIP4Clip "meanP"): v = l2n(masked mean of l2n(frame CLS)), p = l2n(image
  CLS), symmetric InfoNCE where row i's only positive is column i (batch-index positives).
- ``rice-icl`` (RICE, ICCV 2023, instance-level contrastive learning): the same encoders, but the
  InfoNCE positives are decided by product id (the instance): two clips of the same product in a
  batch are both positives of that product, in both directions.

Neither has a text branch: ``text_embedding`` is zeros and ``text_mask`` False, so the score is
v·p. Their one loss term is logged as ``icl`` and weighted by ``config.losses.icl``.
"""

from __future__ import annotations

from typing import Any

import torch

from sgmn.model.backbone import VisionBackbone
from sgmn.model.base import RetrievalModel, l2n, masked_mean
from sgmn.model.config import SGMNConfig
from sgmn.model.losses import symmetric_infonce
from sgmn.model.sgmn import LogitScale, run_backbone_on_real_frames
from sgmn.distributed import all_gather_no_grad, all_gather_with_grad


class _MeanPoolBase(RetrievalModel):
    # Whether InfoNCE positives follow product labels (RICE) or the batch index (CLIP4Clip).
    label_positives: bool = False

    def __init__(self, config: SGMNConfig):
        super().__init__(config)
        self.backbone = VisionBackbone(config.vision, config.embed_dim)
        self.logit_scale = LogitScale(config.logit_scale, config.learnable_logit_scale)

    def _encode_clip_tensors(self, frames, frame_mask, patch_mask, asr_vec, asr_mask) -> dict[str, Any]:
        tokens = run_backbone_on_real_frames(self.backbone, frames, frame_mask, patch_mask)
        v = l2n(masked_mean(l2n(tokens[:, :, 0]), frame_mask))
        no_text = torch.zeros(v.shape[0], dtype=torch.bool, device=v.device)
        return {"v": v, "a": torch.zeros_like(v), "a_mask": no_text, "a_raw": None, "attention": None, "tokens": tokens}

    def _encode_product_tensors(self, pixels, title_vec, title_mask) -> dict[str, Any]:
        tokens = self.backbone(pixels, None)
        p = l2n(tokens[:, 0])
        no_text = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
        return {"p": p, "t": torch.zeros_like(p), "t_mask": no_text, "t_raw": None, "tokens": tokens, "attention": None}

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        frame_mask = batch["frame_mask"].bool()
        dummy_vec = torch.zeros(frame_mask.shape[0], self.config.text.dim, device=frame_mask.device)
        dummy_mask = torch.zeros(frame_mask.shape[0], dtype=torch.bool, device=frame_mask.device)
        clip = self._encode_clip_tensors(batch["frames"], frame_mask, batch.get("patch_mask"), dummy_vec, dummy_mask)
        prod = self._encode_product_tensors(batch["product_pixels"], dummy_vec, dummy_mask)
        v, p = all_gather_with_grad(clip["v"]), all_gather_with_grad(prod["p"])
        labels = all_gather_no_grad(batch["labels"]) if self.label_positives else None
        losses = {}
        if self.config.losses.icl > 0:
            losses["icl"] = symmetric_infonce(v, p, labels, self.logit_scale())
        total = sum(getattr(self.config.losses, k) * val for k, val in losses.items())
        return {"loss": total, "losses": losses}


class CLIPMeanPool(_MeanPoolBase):
    """``clip-meanpool``: mean-pooled frame CLS, symmetric InfoNCE with batch-index positives."""

    label_positives = False


class RICEInstanceContrast(_MeanPoolBase):
    """``rice-icl``: RICE's instance-level contrastive learning (positives by product id)."""

    label_positives = True
