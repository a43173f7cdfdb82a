"""The CLIP / Chinese-CLIP vision tower with the patch mask inside attention.

The tower is :class:`sgmn.model.vit.VisionTransformer`, a plain-torch copy of transformers' CLIP
vision model with the same parameter names (importing transformers' modeling code costs ~3 s per
`sgmn query`), so Hugging Face CLIP folders load by name; OpenAI CLIP ``.pt`` files (and the
``clip.visual.*`` part of published SGMN checkpoints) are converted to the same names by
:func:`openai_visual_to_hf`. :meth:`VisionBackbone.forward` runs the encoder layers itself so that
a per-image patch mask can be applied to the keys of every layer, and it applies the
post-LayerNorm and projection to ALL tokens (token 0 = CLS = the image feature; the patch tokens
feed text-guided attention and frame-level matching).

A freshly built backbone takes its random initial weights from transformers' model (built and
copied), so seeded training starts exactly where it did when the tower was transformers' module;
a model rebuilt to receive saved weights skips that (:func:`saved_weights_follow`).
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.utils.checkpoint
from torch import nn

from sgmn.errors import DataError
from sgmn.model.config import VisionConfig
from sgmn.model.vit import VisionTransformer

# OpenAI CLIP ViTs use 64-dim heads; the head count is not visible in any weight shape.
OPENAI_HEAD_DIM = 64

_HF_CLASSES = {
    # model_type in config.json -> (kind, transformers class name)
    "clip": ("clip", "CLIPModel"),
    "clip_vision_model": ("clip", "CLIPVisionModel"),
    "chinese_clip": ("chinese-clip", "ChineseCLIPModel"),
    "chinese_clip_vision_model": ("chinese-clip", "ChineseCLIPVisionModel"),
}


def _hf_vision_config(vision: VisionConfig):
    import transformers

    cls = transformers.ChineseCLIPVisionConfig if vision.kind == "chinese-clip" else transformers.CLIPVisionConfig
    return cls(
        hidden_size=vision.width,
        num_hidden_layers=vision.layers,
        num_attention_heads=vision.heads,
        intermediate_size=int(vision.width * vision.mlp_ratio),
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        hidden_act="quick_gelu",
        layer_norm_eps=vision.layer_norm_eps,
    )


# True while a model is rebuilt only to receive saved weights (see saved_weights_follow).
_SAVED_WEIGHTS_FOLLOW = contextvars.ContextVar("sgmn_saved_weights_follow", default=False)


@contextlib.contextmanager
def saved_weights_follow():
    """Backbones built inside skip transformers' random init: every tensor is about to be
    overwritten by saved weights (``RetrievalModel.from_pretrained``), and building transformers'
    model only to throw its weights away costs seconds of imports."""
    token = _SAVED_WEIGHTS_FOLLOW.set(True)
    try:
        yield
    finally:
        _SAVED_WEIGHTS_FOLLOW.reset(token)


def _innermost_vision(module: nn.Module) -> nn.Module:
    """The module that owns embeddings / pre_layrnorm / encoder / post_layernorm.

    transformers 4.x wraps it as ``CLIPVisionModel.vision_model``; 5.x puts it on the model itself;
    ``CLIPModel`` and ``...WithProjection`` add one more ``vision_model`` level.
    """
    while hasattr(module, "vision_model"):
        module = module.vision_model
    return module


class VisionBackbone(nn.Module):
    """CLIP ViT + ``proj`` (Linear width -> embed_dim, no bias) applied to every output token."""

    def __init__(self, vision: VisionConfig, embed_dim: int):
        super().__init__()
        if vision.kind not in ("clip", "chinese-clip"):
            raise ValueError(f"unknown vision kind {vision.kind!r} (expected 'clip' or 'chinese-clip')")
        self.config = vision
        self.embed_dim = embed_dim
        # Built without random init (no draws: the seeded stream sees only transformers' draws
        # below, in the same order as before); always filled, here or by the saved weights.
        self.vision_model = VisionTransformer(
            width=vision.width, layers=vision.layers, heads=vision.heads,
            mlp_hidden=int(vision.width * vision.mlp_ratio), image_size=vision.image_size,
            patch_size=vision.patch_size, eps=vision.layer_norm_eps,
        )
        if not _SAVED_WEIGHTS_FOLLOW.get():
            self._init_like_transformers()
        self.proj = nn.Linear(vision.width, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=vision.width**-0.5)
        if vision.freeze:
            self.vision_model.requires_grad_(False)
        # Recompute each encoder layer in the backward pass instead of storing its activations
        # (a training option: sgmn train --set train.activation_checkpointing=true).
        self.activation_checkpointing = False

    def _init_like_transformers(self) -> None:
        """Random init = transformers' CLIP (or Chinese-CLIP) vision model's, copied tensor by tensor."""
        import transformers

        vision = self.config
        model_cls = (
            transformers.ChineseCLIPVisionModel if vision.kind == "chinese-clip" else transformers.CLIPVisionModel
        )
        reference = _innermost_vision(model_cls(_hf_vision_config(vision)))
        self.vision_model.load_state_dict(reference.state_dict(), strict=True)

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    def _attention_mask(self, keep_mask: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """(M, N) keep mask -> the (M, 1, N, N) boolean mask of SDPA (True = attend)."""
        m, n = hidden.shape[:2]
        if keep_mask.shape != (m, n):
            raise ValueError(f"keep_mask must be (M, N) = ({m}, {n}), got {tuple(keep_mask.shape)}")
        keep = keep_mask.to(device=hidden.device, dtype=torch.bool)
        # CLS is the image feature: with it masked it could see nothing of itself. On CUDA the
        # check is asynchronous (no host sync); the error then surfaces at the next sync.
        if keep.is_cuda:
            torch._assert_async(keep[:, 0].all(), "keep_mask must keep token 0 (CLS) of every image")
        elif not bool(keep[:, 0].all()):
            raise ValueError("keep_mask must keep token 0 (CLS) of every image")
        # a boolean mask stays valid under autocast dtypes
        return keep[:, None, None, :].expand(m, 1, n, n)

    def _cls_biased_mask(self, keep_mask: Optional[torch.Tensor], bias: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Additive (M, 1, N, N) mask: the key mask, plus ``bias`` (M, N-1) on the CLS query's patch keys."""
        m, n = hidden.shape[:2]
        additive = hidden.new_zeros(m, 1, n, n, dtype=torch.float32)
        additive[:, 0, 0, 1:] = bias.float()
        if keep_mask is not None:
            keys = keep_mask.to(device=hidden.device, dtype=torch.bool)[:, None, None, :].expand(m, 1, n, n)
            additive = additive.masked_fill(~keys, torch.finfo(torch.float32).min)
        # SDPA wants the mask in the query's dtype (the autocast dtype inside the attention)
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype
        return additive.clamp(min=torch.finfo(dtype).min).to(dtype)

    def forward(
        self, pixels: torch.Tensor, keep_mask: Optional[torch.Tensor] = None, guide: Optional[Any] = None,
        guide_layers: int = 1,
    ) -> torch.Tensor:
        """pixels (M, 3, S, S) CLIP-normalised; keep_mask (M, N) bool, True = visible token.

        Returns (M, N, embed_dim): post-LN + proj of every token; token 0 is the image feature.
        A masked patch is never a key, so it cannot influence any kept token in any layer.

        ``guide`` (text-guided attention as a bias, :class:`sgmn.model.tga.TextGuidedCLSBias`):
        a callable taking the (M, N, width) tokens that enter the first of the last ``guide_layers``
        layers and returning (bias (M, N-1), map (M, N-1)); the bias is added to the CLS-query
        scores of the patch keys in each of those layers. Then ``(tokens, map)`` is returned.
        """
        tower = self.vision_model
        hidden = tower.embeddings(pixels)
        hidden = tower.pre_layrnorm(hidden)
        mask = None
        # On CUDA a mask is always passed (asking whether it is all-True would wait for the GPU).
        if keep_mask is not None and (keep_mask.is_cuda or not bool(keep_mask.all())):
            mask = self._attention_mask(keep_mask, hidden)
        checkpointing = self.activation_checkpointing and torch.is_grad_enabled() and self.training
        layers = tower.encoder.layers
        if guide is not None and not 1 <= guide_layers <= len(layers):
            raise ValueError(f"guide_layers must be in [1, {len(layers)}] (the backbone's layers), got {guide_layers}")
        guide_map = None
        for i, layer in enumerate(layers):
            if guide is not None and i == len(layers) - guide_layers:
                bias, guide_map = guide(hidden)
                mask = self._cls_biased_mask(keep_mask, bias, hidden)
            if checkpointing:
                hidden = torch.utils.checkpoint.checkpoint(layer, hidden, mask, use_reentrant=False)
            else:
                hidden = layer(hidden, mask)
        hidden = tower.post_layernorm(hidden)
        tokens = self.proj(hidden)
        return tokens if guide is None else (tokens, guide_map)

    # ---- pretrained weights -----------------------------------------------------------------

    def load_pretrained(self, path: Union[str, Path]) -> list[str]:
        """A Hugging Face CLIP folder or Hub id, or an OpenAI CLIP ``.pt`` file; returns names left
        unloaded. An id is fetched into the HF cache unless HF_HUB_OFFLINE is set (see sgmn.hub)."""
        from sgmn.hub import resolve_pretrained

        path = resolve_pretrained(path, "vision.pretrained")
        if path.is_dir():
            return self.load_hf_pretrained(path)
        return self.load_openai_clip(path)

    def load_hf_pretrained(self, path: Union[str, Path]) -> list[str]:
        """Load a local Hugging Face folder (CLIPModel, CLIPVisionModel[WithProjection], or the
        Chinese-CLIP equivalents): vision weights, and ``visual_projection`` into ``proj``.

        Returns the names not loaded (``["proj.weight"]`` for a folder without a projection).
        Never downloads: ``path`` must be a folder holding ``config.json`` and the weights.
        """
        import transformers

        path = Path(path)
        if not (path / "config.json").is_file():
            raise DataError("not a Hugging Face model folder (no config.json)", file=path)
        hf_config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        model_type = hf_config.model_type
        if model_type not in _HF_CLASSES:
            raise DataError(
                f"model_type {model_type!r} is not a CLIP / Chinese-CLIP model "
                f"(supported: {sorted(_HF_CLASSES)})",
                file=path / "config.json",
            )
        kind, class_name = _HF_CLASSES[model_type]
        if kind != self.config.kind:
            raise DataError(
                f"folder holds a {kind!r} model but vision.kind is {self.config.kind!r}", file=path / "config.json"
            )
        if class_name == "CLIPVisionModel" and "CLIPVisionModelWithProjection" in (hf_config.architectures or []):
            class_name = "CLIPVisionModelWithProjection"
        vision_cfg = getattr(hf_config, "vision_config", hf_config)
        self._check_hf_hyperparameters(vision_cfg, path / "config.json")
        model = getattr(transformers, class_name).from_pretrained(path, local_files_only=True)
        state = {f"vision_model.{k}": v for k, v in _innermost_vision(model).state_dict().items()}
        projection = getattr(model, "visual_projection", None)
        if projection is not None:
            state["visual_projection.weight"] = projection.weight
        return self._load_hf_named(state, source=path)

    def load_openai_clip(self, path_or_state_dict: Union[str, Path, Mapping[str, torch.Tensor]]) -> list[str]:
        """Load an OpenAI CLIP ViT: a ``.pt`` TorchScript archive, a ``torch.save``d state dict, or a
        state dict in memory, with ``visual.*`` (or ``clip.visual.*``) keys. Returns names left unloaded."""
        source: Any = "<state dict>"
        if isinstance(path_or_state_dict, (str, Path)):
            source = Path(path_or_state_dict)
            state_dict = read_openai_state_dict(source)
        else:
            state_dict = path_or_state_dict
        found, embed_dim = vision_config_from_openai_state_dict(state_dict, source=source)
        expected = self.config
        for field in ("width", "layers", "patch_size", "image_size"):
            if getattr(found, field) != getattr(expected, field):
                raise DataError(
                    f"checkpoint has vision {field} = {getattr(found, field)} but the model was built "
                    f"with {getattr(expected, field)}",
                    file=source if isinstance(source, Path) else None,
                )
        if embed_dim != self.embed_dim:
            raise DataError(
                f"checkpoint projects to {embed_dim} dims but the model's embed_dim is {self.embed_dim}",
                file=source if isinstance(source, Path) else None,
                key="visual.proj",
            )
        return self._load_hf_named(openai_visual_to_hf(state_dict), source=source)

    def _check_hf_hyperparameters(self, hf_vision_config: Any, source: Path) -> None:
        """Sizes and activation must agree, or the loaded tower would compute something else."""
        wanted = {
            "hidden_size": self.config.width,
            "num_hidden_layers": self.config.layers,
            "num_attention_heads": self.config.heads,
            "intermediate_size": int(self.config.width * self.config.mlp_ratio),
            "image_size": self.config.image_size,
            "patch_size": self.config.patch_size,
            "hidden_act": "quick_gelu",
        }
        for name, value in wanted.items():
            got = getattr(hf_vision_config, name, None)
            if got != value:
                raise DataError(f"vision {name} is {got!r} in the folder but the model expects {value!r}", file=source)
        got_eps = getattr(hf_vision_config, "layer_norm_eps", None)
        if got_eps is None or abs(got_eps - self.config.layer_norm_eps) > 1e-12:
            raise DataError(
                f"vision layer_norm_eps is {got_eps!r} in the folder but the model expects "
                f"{self.config.layer_norm_eps!r}",
                file=source,
            )

    def _load_hf_named(self, state: Mapping[str, torch.Tensor], source: Any) -> list[str]:
        """Copy HF-CLIPModel-named tensors (``vision_model.*``, ``visual_projection.weight``) in."""
        targets = dict(self.vision_model.state_dict(prefix="vision_model."))
        targets["visual_projection.weight"] = self.proj.weight
        file = source if isinstance(source, Path) else None
        for key in state:
            if key not in targets:
                raise DataError("checkpoint tensor has no place in the vision backbone", file=file, key=key)
        with torch.no_grad():
            for key, value in state.items():
                target = targets[key]
                if tuple(value.shape) != tuple(target.shape):
                    raise DataError(
                        f"shape {tuple(value.shape)} does not match the model's {tuple(target.shape)}",
                        file=file,
                        key=key,
                    )
                target.copy_(value)
        left = [("proj.weight" if k == "visual_projection.weight" else k) for k in targets if k not in state]
        if left:
            warnings.warn(f"{source}: not in the checkpoint, left at initialisation: {left}", stacklevel=3)
        return left


# ---- OpenAI CLIP checkpoints -------------------------------------------------------------------


def read_openai_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """State dict of an OpenAI CLIP file: a TorchScript archive or a plain ``torch.save`` dict."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such checkpoint file", file=path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
            try:
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
            except RuntimeError as err:
                raise DataError(f"cannot load TorchScript archive: {err}", file=path) from err
    from sgmn.model.checkpoint import torch_load_tensors

    obj = torch_load_tensors(path)  # one-line DataError for files that are not checkpoints
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise DataError(f"expected a state dict, found {type(obj).__name__}", file=path)
    return dict(obj)


def _visual_prefix(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'visual.', 'clip.visual.', 'module.clip.visual.' ... whichever prefix holds conv1."""
    for key in state_dict:
        if key.endswith("visual.conv1.weight"):
            return key[: -len("conv1.weight")]
    if any(key.endswith("visual.layer1.0.conv1.weight") for key in state_dict):
        raise DataError("ResNet CLIP visual towers are not supported (only ViT)", key="visual.layer1")
    raise DataError("no OpenAI CLIP vision weights found", key="visual.conv1.weight")


def _count_blocks(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if indices and indices != set(range(len(indices))):
        raise DataError(f"blocks {sorted(indices)} are not numbered 0..{len(indices) - 1}", key=prefix)
    return len(indices)


def vision_config_from_openai_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: Any = None
) -> tuple[VisionConfig, int]:
    """(VisionConfig, embed_dim) read off the weight shapes of an OpenAI CLIP ViT."""
    prefix = _visual_prefix(state_dict)
    file = source if isinstance(source, Path) else None

    def get(name: str) -> torch.Tensor:
        if prefix + name not in state_dict:
            raise DataError("missing tensor", file=file, key=prefix + name)
        return state_dict[prefix + name]

    conv = get("conv1.weight")
    width, _, patch, patch_w = conv.shape
    if patch != patch_w:
        raise DataError(f"non-square patches {patch}x{patch_w}", file=file, key=prefix + "conv1.weight")
    positions = get("positional_embedding").shape[0]
    grid = round((positions - 1) ** 0.5)
    if grid * grid != positions - 1:
        raise DataError(
            f"{positions} positions is not 1 + a square grid", file=file, key=prefix + "positional_embedding"
        )
    layers = _count_blocks(state_dict, prefix + "transformer.resblocks.")
    if layers == 0:
        raise DataError("no transformer blocks", file=file, key=prefix + "transformer.resblocks")
    mlp_hidden = get("transformer.resblocks.0.mlp.c_fc.weight").shape[0]
    proj = get("proj")
    if proj.shape[0] != width:
        raise DataError(f"proj is {tuple(proj.shape)}, expected ({width}, d)", file=file, key=prefix + "proj")
    vision = VisionConfig(
        kind="clip",
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=layers,
        heads=max(1, width // OPENAI_HEAD_DIM),
        mlp_ratio=mlp_hidden / width,
        layer_norm_eps=1e-5,
    )
    return vision, int(proj.shape[1])


def openai_visual_to_hf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and reshape) OpenAI ``visual.*`` tensors to Hugging Face ``CLIPModel`` names:
    ``vision_model.*`` and ``visual_projection.weight``. Packed ``in_proj`` is split into q, k, v and
    ``proj`` (width, d) is transposed into a Linear weight (d, width).

    Keys outside the visual prefix are ignored; an unknown key inside it is an error.
    """
    return {hf_name: tensor for _, hf_name, tensor in openai_visual_items(state_dict)}


def openai_visual_items(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, str, torch.Tensor]]:
    """(source key, HF name, tensor) for every converted tensor (see :func:`openai_visual_to_hf`)."""
    prefix = _visual_prefix(state_dict)
    out: list[tuple[str, str, torch.Tensor]] = []
    direct = {
        "class_embedding": "vision_model.embeddings.class_embedding",
        "positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "ln_post.weight": "vision_model.post_layernorm.weight",
        "ln_post.bias": "vision_model.post_layernorm.bias",
    }
    block_names = {
        "attn.out_proj.weight": "self_attn.out_proj.weight",
        "attn.out_proj.bias": "self_attn.out_proj.bias",
        "ln_1.weight": "layer_norm1.weight",
        "ln_1.bias": "layer_norm1.bias",
        "mlp.c_fc.weight": "mlp.fc1.weight",
        "mlp.c_fc.bias": "mlp.fc1.bias",
        "mlp.c_proj.weight": "mlp.fc2.weight",
        "mlp.c_proj.bias": "mlp.fc2.bias",
        "ln_2.weight": "layer_norm2.weight",
        "ln_2.bias": "layer_norm2.bias",
    }
    block_key = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
    for source_key, value in state_dict.items():
        if not source_key.startswith(prefix):
            continue
        key = source_key[len(prefix) :]
        if key in direct:
            out.append((source_key, direct[key], value))
        elif key == "proj":
            out.append((source_key, "visual_projection.weight", value.t().contiguous()))
        elif m := block_key.fullmatch(key):
            index, name = m.group(1), m.group(2)
            layer = f"vision_model.encoder.layers.{index}."
            if name in block_names:
                out.append((source_key, layer + block_names[name], value))
            elif name in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if name.endswith("weight") else "bias"
                if value.shape[0] % 3 != 0:
                    raise DataError(f"packed in_proj of size {value.shape[0]} is not 3 x width", key=source_key)
                for part, tensor in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    out.append((source_key, f"{layer}self_attn.{part}_proj.{kind}", tensor.contiguous()))
            else:
                raise DataError("unknown tensor in an OpenAI CLIP vision block", key=source_key)
        else:
            raise DataError("unknown tensor in an OpenAI CLIP vision tower", key=source_key)
    return out
