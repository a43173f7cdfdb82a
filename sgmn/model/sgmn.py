"""SGMN assembled: backbone, text branch, TGA, TDB, GCI, SMF; training forward and inference.

Inference (the "one-stage" path, GRA): v = l2n(masked_mean_t l2n(f̃_t)), p = l2n(image CLS),
a = l2n(fc_asr(asr)), t = l2n(fc_title(title)), S = v·p + λ·a·t where both sides have text.
Training adds the batch-wide terms of method.md "Total loss", each switchable and weighted by
``config.losses``. The rules for what appears in ``losses``:

* a term is computed only when its component is enabled (``use_text`` / ``use_gci`` / ``use_smf`` /
  ``use_tga``) and its weight is > 0; otherwise it is absent from the dict (never a fake zero);
* ``txt`` is also absent for a batch in which no clip–product pair has text on both sides (on
  CUDA it is then present and exactly 0: asking the GPU would stall the training loop), and
  ``box`` for a batch with no real frame that has both a box and ASR (no attention map exists);
* ``loss`` is the weighted sum of the present terms.

Under DDP the batch-wide terms see the global batch G (all-gathered with gradients). The two
heads whose cost grows with G per pair are sharded by rows: each rank computes GCI's relevance
rows of its own clips (against all G products) and SMF's cross-encoder rows of its own products;
the relevance rows are all-gathered, the L_pair shares summed (:func:`sum_of_shards`). Gradients
equal those of one process on the concatenated batch (tests/test_ddp.py).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn as nn

from sgmn.model.backbone import VisionBackbone
from sgmn.model.base import ClipEmbeddings, ProductEmbeddings, RetrievalModel, l2n, masked_mean
from sgmn.model.config import SGMNConfig
from sgmn.model.losses import bidirectional_triplet, symmetric_infonce
from sgmn.model.temporal import TemporalDifferenceBlock
from sgmn.model.tga import TextGuidedAttention, TextGuidedCLSBias
from sgmn.distributed import all_gather_no_grad, all_gather_with_grad, shard_rows, sum_of_shards


def run_backbone_on_real_frames(
    backbone: nn.Module,
    frames: torch.Tensor,
    frame_mask: torch.Tensor,
    patch_mask: Optional[torch.Tensor],
    include_padding: bool = False,
    compute_padding: Optional[bool] = None,
    guide: Optional[tuple[nn.Module, torch.Tensor, torch.Tensor]] = None,
):
    """(B,T,3,S,S) frames -> (B,T,N,d) tokens; padded frames are not computed and stay exactly 0.

    Skipping padding saves backbone time and guarantees padded pixels cannot reach the output.
    ``include_padding`` runs the backbone on every frame, as the published code does: with its
    TDB masking (``temporal_published_mask``) the first padded frame's feature reaches the clip
    embedding, so reproducing an imported checkpoint's scores needs it.

    ``guide`` = (TextGuidedCLSBias, query (B, d), has_text (B,)): the text steers the CLS of the
    last layer (or the module's last ``layers`` layers) in every frame of its clip; then
    ``(tokens, map (B,T,N-1))`` is returned (padding: zeros).
    """
    B, T = frames.shape[:2]
    if include_padding or (frames.is_cuda if compute_padding is None else compute_padding):
        # include_padding: as published. Otherwise on CUDA (the default) every frame is computed
        # and the padding zeroed: selecting the real frames needs their count on the host (a sync
        # that stalls the GPU queue, and a dynamic shape for torch.compile). Same result.
        def select(x):
            return x.flatten(0, 1)

        def place(x):
            x = x.reshape(B, T, *x.shape[1:])
            if include_padding:
                return x
            return torch.where(frame_mask.view(B, T, *([1] * (x.dim() - 2))), x, x.new_zeros(()))

        keep = select(patch_mask) if patch_mask is not None else None
        if keep is not None and not include_padding:
            keep = keep | ~select(frame_mask)[:, None]  # a padded frame's mask may be empty
    else:
        def select(x):
            return x[frame_mask]

        def place(x):
            full = x.new_zeros(B, T, *x.shape[1:])
            full[frame_mask] = x
            return full

        keep = select(patch_mask) if patch_mask is not None else None
    if guide is None:
        return place(backbone(select(frames), keep))
    module, query, has_text = guide  # one query per clip, shared by its frames
    frame_query = select(query[:, None].expand(B, T, query.shape[-1]))
    frame_has_text = select(has_text.bool()[:, None].expand(B, T))
    patch_keep = select(patch_mask)[:, 1:] if patch_mask is not None else None
    tokens, attn = backbone(select(frames), keep, lambda hidden: module(hidden, frame_query, frame_has_text, patch_keep),
                            guide_layers=module.layers)
    return place(tokens), place(attn)


def backbone_token_shape(backbone: nn.Module) -> tuple[int, int]:
    return backbone.config.num_tokens, backbone.embed_dim


class LogitScale(nn.Module):
    """The InfoNCE temperature: fixed (config.logit_scale) or learnable in log space (CLIP-style)."""

    def __init__(self, value: float, learnable: bool):
        super().__init__()
        if learnable:
            self.log_scale = nn.Parameter(torch.tensor(math.log(value)))
        else:
            self.register_buffer("log_scale", torch.tensor(math.log(value)), persistent=False)

    def forward(self) -> torch.Tensor:
        # Clamp as CLIP does so a learnable scale cannot run away.
        return self.log_scale.exp().clamp(max=100.0)


class SGMN(RetrievalModel):
    """The full model. Parts are named for the published-checkpoint importer:
    ``backbone``, ``temporal`` (None without TDB), ``fc_asr`` / ``fc_title`` (None without text)."""

    def __init__(self, config: SGMNConfig):
        super().__init__(config)
        d = config.embed_dim
        self.backbone = VisionBackbone(config.vision, d)
        self.temporal = (
            TemporalDifferenceBlock(
                d, config.temporal_heads, config.temporal_layers, config.max_position, config.temporal_ln_eps,
                published_difference_mask=config.temporal_published_mask, dropout=config.dropout,
            )
            if config.use_tdb
            else None
        )
        if config.use_text:
            self.fc_asr = nn.Linear(config.text.dim, d)
            self.fc_title = nn.Linear(config.text.dim, d)
        else:
            self.fc_asr = self.fc_title = None
        # TGA needs a text query, so it only exists together with the text branch.
        def make_tga():
            if config.tga_mode == "attention_bias":
                return TextGuidedCLSBias(config.vision.width, d, config.tga_bias_init, layers=config.tga_bias_layers)
            if config.tga_mode == "mix":
                return TextGuidedAttention(d, config.tga_mix_init)
            raise ValueError(f"unknown tga_mode {config.tga_mode!r} (expected 'attention_bias' or 'mix')")

        self.tga = make_tga() if (config.use_tga and config.use_text) else None
        self.tga_product = make_tga() if (config.tga_on_products and config.use_text) else None
        self.graph = None
        if config.use_gci:
            from sgmn.model.graph import CrossDomainGraph

            self.graph = CrossDomainGraph(config)
        self.fusion = self.cross = None
        if config.use_smf:
            from sgmn.model.matching import CrossEncoder, SelectiveFusion

            # One fusion module for both sides: ASR into the clip tokens, title into the product
            # tokens (a and t live in aligned spaces, pulled together by L_txt). Without text
            # there is nothing to fuse and the cross encoder sees the plain tokens.
            self.fusion = SelectiveFusion(d, config.cross_heads) if config.use_text else None
            self.cross = CrossEncoder(d, config.cross_heads, config.cross_layers, dropout=config.dropout)
        self.logit_scale = LogitScale(config.logit_scale, config.learnable_logit_scale)

    @property
    def uses_text(self) -> bool:
        return self.config.use_text

    # ---- the two encoders (shared by training and inference) ---------------------------------
    def _encode_clip_tensors(self, frames, frame_mask, patch_mask, asr_vec, asr_mask) -> dict[str, Any]:
        a_raw = a = attention = None
        if self.config.use_text:
            a_raw = self.fc_asr(asr_vec)
            a = l2n(a_raw) * asr_mask.unsqueeze(-1).to(a_raw.dtype)
        biased = isinstance(self.tga, TextGuidedCLSBias)
        out = run_backbone_on_real_frames(
            self.backbone, frames, frame_mask, patch_mask, include_padding=self.config.temporal_published_mask,
            guide=(self.tga, self.tga.text_query(a_raw), asr_mask) if biased else None,
        )
        tokens, attention = out if biased else (out, None)
        cls = tokens[:, :, 0]
        if self.tga is not None and not biased:
            pm = patch_mask[:, :, 1:] if patch_mask is not None else None
            cls, attention = self.tga(cls, tokens[:, :, 1:], a_raw, pm, asr_mask)
        if attention is not None:
            attention = attention * frame_mask.unsqueeze(-1).to(attention.dtype)
        frame_feats = self.temporal(cls, frame_mask) if self.temporal is not None else cls
        v = l2n(masked_mean(l2n(frame_feats), frame_mask))
        # The cross encoder sees each frame's final feature in place of its raw CLS token.
        tokens = torch.cat([frame_feats.unsqueeze(2), tokens[:, :, 1:]], dim=2)
        if a is None:
            a = torch.zeros_like(v)
            asr_mask = torch.zeros_like(asr_mask)
        return {
            "v": v, "a": a, "a_mask": asr_mask, "a_raw": a_raw, "attention": attention,
            "tokens": tokens, "frame_feats": frame_feats,
        }

    def _encode_product_tensors(self, pixels, title_vec, title_mask) -> dict[str, Any]:
        t_raw = t = attention = None
        if self.config.use_text:
            t_raw = self.fc_title(title_vec)
            t = l2n(t_raw) * title_mask.unsqueeze(-1).to(t_raw.dtype)
        biased = isinstance(self.tga_product, TextGuidedCLSBias)
        if biased:
            query = self.tga_product.text_query(t_raw)
            tokens, attention = self.backbone(pixels, None, lambda hidden: self.tga_product(hidden, query, title_mask),
                                              guide_layers=self.tga_product.layers)
        else:
            tokens = self.backbone(pixels, None)
        cls = tokens[:, 0]
        if self.tga_product is not None and not biased:
            new_cls, attention = self.tga_product(cls[:, None], tokens[:, None, 1:], t_raw, None, title_mask)
            cls, attention = new_cls[:, 0], attention[:, 0]
        p = l2n(cls)
        if t is None:
            t = torch.zeros_like(p)
            title_mask = torch.zeros_like(title_mask)
        return {"p": p, "t": t, "t_mask": title_mask, "t_raw": t_raw, "tokens": tokens, "attention": attention}

    # ---- training ---------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        cfg, w = self.config, self.config.losses
        frame_mask = batch["frame_mask"].bool()
        asr_vec, asr_mask = self._batch_text(batch, "asr_vec", "asr_mask", frame_mask)
        title_vec, title_mask = self._batch_text(batch, "title_vec", "title_mask", frame_mask)
        clip = self._encode_clip_tensors(batch["frames"], frame_mask, batch.get("patch_mask"), asr_vec, asr_mask)
        prod = self._encode_product_tensors(batch["product_pixels"], title_vec, title_mask)

        # Every batch-wide term sees the global batch.
        v, p = all_gather_with_grad(clip["v"]), all_gather_with_grad(prod["p"])
        a, t = all_gather_with_grad(clip["a"]), all_gather_with_grad(prod["t"])
        a_mask, t_mask = all_gather_no_grad(clip["a_mask"]), all_gather_no_grad(prod["t_mask"])
        labels = all_gather_no_grad(batch["labels"])
        g_frame_mask = all_gather_no_grad(frame_mask)
        scale = self.logit_scale()

        losses: dict[str, torch.Tensor] = {}
        # (on CUDA no "any pair?" test: it would be a host sync; the loss is an exact 0 without one)
        if cfg.use_text and w.txt > 0 and (a_mask.is_cuda or bool((a_mask & t_mask).any())):
            losses["txt"] = symmetric_infonce(a, t, labels, scale, a_mask=a_mask, b_mask=t_mask)
        trip = dict(margin=cfg.triplet_margin, cutoff=cfg.triplet_cutoff, nonzero_cutoff=cfg.triplet_nonzero_cutoff,
                    hinge=cfg.triplet_hinge)
        if w.base > 0:
            losses["base"] = bidirectional_triplet(v, p, labels, **trip)
        if self.graph is not None and (w.gnn > 0 or w.reg > 0):
            # Frame-level matching is detached (as published): the product tokens need no gradient.
            product_tokens = all_gather_no_grad(prod["tokens"].detach())
            # This rank's relevance rows (its clips against every product), then all of them.
            rel, rel_rev, mean, mean_rev = self.graph.relevances_and_means(clip["frame_feats"], frame_mask, product_tokens)
            relevances = (all_gather_with_grad(rel), all_gather_with_grad(rel_rev),
                          all_gather_no_grad(mean), all_gather_no_grad(mean_rev))
            graph_out = self.graph(v, p, None, g_frame_mask, product_tokens, relevances=relevances)
            graph_losses = self.graph.losses(graph_out, labels)
            for name in ("gnn", "reg"):
                if getattr(w, name) > 0:
                    losses[name] = graph_losses[name]
        if self.cross is not None and w.pair > 0:
            losses["pair"] = self._pair_loss(clip, prod, batch.get("patch_mask"), frame_mask, v, p, a, t, a_mask, t_mask, labels)
        if w.vi > 0:
            # v·p + λ a·t is the dot product of [v, √λ a] and [p, √λ t] (a, t are 0 without text).
            lam = math.sqrt(cfg.text_weight) if cfg.use_text else 0.0
            losses["vi"] = symmetric_infonce(
                torch.cat([v, lam * a], -1), torch.cat([p, lam * t], -1), labels, scale, normalize=False
            )
        if self.tga is not None and w.box > 0 and "boxes" in batch:
            box = self._box_loss(clip["attention"], batch, frame_mask, asr_mask)
            if box is not None:
                losses["box"] = box
        total = sum(getattr(w, name) * value for name, value in losses.items())
        return {"loss": total, "losses": losses}

    def _batch_text(self, batch, vec_key, mask_key, frame_mask):
        """A batch without text keys (e.g. MovingFashion) is the same as one where no clip has text."""
        B, dim = frame_mask.shape[0], self.config.text.dim
        vec = batch.get(vec_key)
        if vec is None:
            vec = torch.zeros(B, dim, device=frame_mask.device)
        mask = batch.get(mask_key)
        if mask is None:
            mask = vec.abs().sum(-1) > 0  # the batch convention: zeros where missing
        return vec, mask.bool()

    def _pair_loss(self, clip, prod, patch_mask, frame_mask, v, p, a, t, a_mask, t_mask, labels) -> torch.Tensor:
        """L_pair over the global batch, mined on S = v·p + λ·a·t: every product against its own
        clip and its k hardest clips of other products (the published rows) and, with
        ``smf_clip_rows``, every clip against its own product and its k hardest products of other
        ids (the re-ranker's direction); the mean of the two directions' means.

        Each rank fuses the text into its own tokens, gathers the fused tokens of the other side
        once (any clip or product can be a mined negative) and scores only its own rows; the rows'
        shares of the global mean are then summed over ranks."""
        from sgmn.model.matching import mine_hard_negatives, pairwise_matching_loss

        scores = self.score_tensors(v, p, a, t, a_mask, t_mask)  # (G clips, G products)
        clip_tokens, keep, product_tokens = self._fuse_for_cross_encoder(
            clip["tokens"], frame_mask, patch_mask.bool() if patch_mask is not None else None,
            clip["a_raw"], clip["a_mask"], prod["tokens"], prod["t_raw"], prod["t_mask"],
        )
        G = v.shape[0]
        rows = shard_rows(G)  # this rank's products and clips = its own pairs
        positives = torch.arange(G, device=v.device)
        directions = [("product", scores.t(), product_tokens, all_gather_with_grad(clip_tokens), all_gather_no_grad(keep))]
        if self.config.smf_clip_rows:
            directions.append(("clip", scores, all_gather_with_grad(product_tokens), clip_tokens, keep))
        total = 0.0
        for direction, by_row, product_side, clip_side, clip_keep in directions:
            negatives = mine_hard_negatives(by_row.t(), labels, labels, self.config.smf_k)  # per row: k hardest others
            prior = None
            if self.config.smf_score_prior:  # S of each (row, candidate), positive first
                candidates = torch.cat([positives[:, None], negatives.indices.clamp(min=0)], dim=1)
                prior = by_row.gather(1, candidates)[rows]
            local = pairwise_matching_loss(
                self.cross, product_side, clip_side, clip_keep, positives[rows], negatives.indices[rows],
                negatives.valid[rows], prior=prior, num_rows=negatives.valid.any(dim=1).sum(),  # the global mean's denominator
                detach_prior=not self.config.smf_prior_gradient, rows=direction,
            )
            total = total + sum_of_shards(local)
        return total / len(directions)

    def _fuse_for_cross_encoder(self, clip_tokens, frame_mask, patch_mask, a_raw, a_mask, product_tokens, t_raw, t_mask):
        """(B,T,N,d) clip tokens -> flattened (B,T·N,d) with ASR fused at the frame CLS positions and
        their keep mask; (M,N,d) product tokens with the title fused at CLS."""
        from sgmn.model.matching import clip_token_keep

        B, T, N, d = clip_tokens.shape
        flat = clip_tokens.reshape(B, T * N, d)
        keep = clip_token_keep(frame_mask, patch_mask, N)
        if self.fusion is not None:
            flat = self.fusion(flat, a_raw, a_mask, keep, cls_positions=list(range(0, T * N, N)))
            product_tokens = self.fusion(product_tokens, t_raw, t_mask)
        return flat, keep, product_tokens

    def _box_loss(self, attention, batch, frame_mask, asr_mask) -> Optional[torch.Tensor]:
        """−log of the TGA attention mass inside the product box, averaged over frames that have a
        box, ASR and are real. The in-box patches follow the same IoU ≥ 0.02 rule as the patch mask."""
        from sgmn.data.transforms import box_to_patch_mask

        vcfg = self.config.vision
        boxes, box_mask = batch["boxes"], batch.get("box_mask")
        if box_mask is None:
            return None
        valid = box_mask.bool() & frame_mask & asr_mask.unsqueeze(1)
        if not bool(valid.any()):
            return None
        idx = valid.nonzero(as_tuple=False)
        target = torch.stack(
            [box_to_patch_mask(tuple(boxes[b, f].tolist()), vcfg.image_size, vcfg.patch_size)[1:] for b, f in idx.tolist()]
        ).to(attention.device)
        mass = (attention[idx[:, 0], idx[:, 1]] * target.to(attention.dtype)).sum(-1)
        return -(mass.clamp(min=1e-6)).log().mean()

    # ---- optional re-ranking -----------------------------------------------------------------
    @torch.no_grad()
    def rerank_scores(
        self, clips: ClipEmbeddings, products: ProductEmbeddings, scores: Optional[torch.Tensor] = None,
        top_k: Optional[int] = None,
    ) -> torch.Tensor:
        """Re-order each clip's top-K products by the cross encoder (the SMF head).

        ``clips`` / ``products`` must come from ``encode_*(..., keep_tokens=True)`` (the default
        when ``config.rerank_top_k > 0``). ``scores`` (B,M) default ``score(clips, products)``;
        ``top_k`` default ``config.rerank_top_k``. The returned matrix equals ``scores`` outside
        each row's top-K; inside it, the same K values are handed out again in the cross
        encoder's order, so the top-K set, the score scale and everything below stay unchanged.
        """
        from sgmn.model.matching import rerank

        if self.cross is None:
            raise ValueError("re-ranking needs the cross encoder: this model was built with use_smf=False")
        if clips.tokens is None or products.tokens is None:
            raise ValueError("re-ranking needs tokens: encode with keep_tokens=True")
        scores = self.score(clips, products) if scores is None else scores
        k = min(top_k if top_k is not None else self.config.rerank_top_k, scores.shape[1])
        if k <= 1:
            return scores
        was_training = self.training
        self.eval()
        try:
            clip_tokens, keep, product_tokens = self._fuse_for_cross_encoder(
                clips.tokens, clips.frame_mask, clips.patch_mask, clips.text_vector, clips.text_mask,
                products.tokens, products.text_vector, products.text_mask,
            )
            top_values, top_idx = scores.topk(k, dim=1)  # sorted, best first
            cross = rerank(self.cross, product_tokens, clip_tokens, keep, top_idx)
            if self.config.smf_score_prior:
                cross = cross + self.cross.prior_weight * top_values.to(cross.dtype)
        finally:
            self.train(was_training)
        order = cross.argsort(dim=1, descending=True)
        out = scores.clone()
        out.scatter_(1, top_idx.gather(1, order), top_values)
        return out
