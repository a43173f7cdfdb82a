"""Saving and loading model weights, and importing checkpoints of the published SGMN code.

Our own format is a folder with ``config.json`` (the SGMNConfig as JSON) and ``model.safetensors``.
A published-code checkpoint ``pytorch_model.bin.<epoch>`` is a plain torch state dict; the parts
that matter at inference are mapped onto ``model.backbone``, ``model.temporal``, ``model.fc_asr``
and ``model.fc_title`` (see docs/checkpoints.md), everything else is reported as ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sgmn.errors import DataError
from sgmn.model.backbone import openai_visual_items, vision_config_from_openai_state_dict
from sgmn.model.config import SGMNConfig, TextConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


# ---- our own format ----------------------------------------------------------------------------


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder so a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_model(model: nn.Module, config: Union[SGMNConfig, Mapping[str, Any]], directory: Union[str, Path]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_dict = config.to_dict() if isinstance(config, SGMNConfig) else dict(config)
    tensors: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        # safetensors refuses tensors sharing memory (tied weights): store a copy of each repeat
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen_storage and tensor.numel() > 0:
            tensor = tensor.clone()
        seen_storage.add(ptr)
        tensors[name] = tensor
    _atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))

    def write_config(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(config_dict, f, indent=2, sort_keys=True)
            f.write("\n")

    _atomic_write(directory / CONFIG_FILE, write_config)
    return directory


def load_state(directory: Union[str, Path]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a folder written by :func:`save_model`: ``(config_dict, state_dict)``."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise DataError("missing file (expected a folder written by save_model)", file=path)
    try:
        config_dict = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg}", file=config_path, line=err.lineno) from err
    if not isinstance(config_dict, dict):
        raise DataError("expected a JSON object", file=config_path)
    try:
        state_dict = load_file(weights_path, device="cpu")
    except (SafetensorError, OSError) as err:
        raise DataError(f"cannot read safetensors file: {err}", file=weights_path) from err
    return config_dict, state_dict


# ---- published SGMN code checkpoints -----------------------------------------------------------

# Published-code key prefix -> attribute path inside our model.
_PUBLISHED_MAP = [
    ("fc_asr.", "fc_asr."),
    ("fc_title.", "fc_title."),
    ("frame_position_embeddings.", "temporal.frame_position_embeddings."),
    ("type_position_embeddings.", "temporal.type_position_embeddings."),
    ("frame2t_attention.resblocks.", "temporal.difference_transformer.resblocks."),
    ("trans_layernorm.", "temporal.difference_norm."),
    ("transformerClip.resblocks.", "temporal.temporal_transformer.resblocks."),
]
# Training-only or dead parts of the published model (and the unused CLIP text tower).
_PUBLISHED_IGNORED = ("clip.", "loss_graph.", "cross.", "fusion_layer.", "similarity_dense.", "cat2emb")
_IMPORTED_MODULES = ("backbone", "temporal", "fc_asr", "fc_title")


@dataclass
class ImportReport:
    """What an import did. ``loaded``/``missing``/``untouched`` name our parameters; ``ignored`` and
    ``unexpected`` name checkpoint keys."""

    loaded: list[str] = field(default_factory=list)  # our parameters set from the checkpoint
    ignored: list[str] = field(default_factory=list)  # checkpoint keys not loaded (all of them)
    unexpected: list[str] = field(default_factory=list)  # the ignored keys of no known published module
    missing: list[str] = field(default_factory=list)  # parameters of the imported modules not in the checkpoint
    untouched: list[str] = field(default_factory=list)  # other model parameters (left at initialisation)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} tensors, ignored {len(self.ignored)} checkpoint keys "
            f"({len(self.unexpected)} unknown), {len(self.missing)} missing, "
            f"{len(self.untouched)} other parameters left at initialisation"
        ]
        if self.missing:
            lines.append(f"missing: {self.missing}")
        if self.unexpected:
            lines.append(f"unknown keys: {self.unexpected}")
        lines.extend(self.notes)
        return "\n".join(lines)


def _strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints saved from a DistributedDataParallel wrapper carry a ``module.`` prefix."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def torch_load_tensors(path: Union[str, Path]) -> Any:
    """``torch.load(path, weights_only=True)`` with a one-line DataError for files that are not
    torch checkpoints. torch's own message advises ``weights_only=False``, which would run
    arbitrary code from the file: never shown, never done."""
    import pickle
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise DataError("no such checkpoint file", file=path)
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive (torch >= 1.6) or a pickle (protocol 2+ starts with 0x80)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        raise DataError("not a PyTorch checkpoint (expected a file written by torch.save)", file=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise DataError(
            "the checkpoint holds Python objects other than tensors and plain containers; "
            "only plain state dicts are loaded (weights_only=True)", file=path
        ) from err
    except Exception as err:  # a damaged archive fails in many ways; all mean "not readable"
        first = str(err).strip().split("\n")[0][:200]
        raise DataError(f"cannot read PyTorch checkpoint: {first}", file=path) from err


def read_published_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Load ``pytorch_model.bin.<epoch>`` (a plain torch state dict) on the CPU."""
    path = Path(path)
    obj = torch_load_tensors(path)
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError("expected a plain state dict of tensors", file=path)
    return _strip_module_prefix(obj)


def _count_indexed(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in keys if (m := pattern.match(k))})


def published_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], temporal_heads: int = 8, vision_heads: int | None = None
) -> SGMNConfig:
    """The SGMNConfig that reproduces a published-code checkpoint, read off its shapes.

    Head counts are not visible in any shape: the vision tower follows OpenAI CLIP (64-dim heads),
    the temporal transformers use 8 heads as in the published code; both can be overridden.
    """
    state_dict = _strip_module_prefix(state_dict)
    vision, embed_dim = vision_config_from_openai_state_dict(state_dict)
    if vision_heads is not None:
        vision.heads = vision_heads
    has_text = "fc_asr.weight" in state_dict and "fc_title.weight" in state_dict
    text_dim = int(state_dict["fc_asr.weight"].shape[1]) if has_text else 512
    positions = state_dict.get("frame_position_embeddings.weight")
    temporal_layers = _count_indexed(state_dict, "transformerClip.resblocks.")
    has_tdb = temporal_layers > 0 and positions is not None
    return SGMNConfig(
        name="sgmn-published",
        architecture="sgmn",
        vision=vision,
        text=TextConfig(encoder="precomputed", dim=text_dim),
        embed_dim=embed_dim,
        geometry="squash",
        use_tga=False,  # the published TGA adds one projected vector to every token: a no-op
        use_tdb=has_tdb,
        use_text=has_text,
        temporal_layers=temporal_layers if has_tdb else SGMNConfig.temporal_layers,
        temporal_heads=temporal_heads,
        temporal_ln_eps=1e-12,
        max_position=int(positions.shape[0]) if positions is not None else SGMNConfig.max_position,
        temporal_published_mask=True,
        smf_clip_rows=False,  # the published L_pair: product rows only
        text_weight=0.5,  # the published score's λ
    )


def import_published_checkpoint(
    state_dict_or_path: Union[str, Path, Mapping[str, torch.Tensor]], model: nn.Module
) -> ImportReport:
    """Copy a published SGMN checkpoint into ``model`` (which has ``backbone``, ``temporal``,
    ``fc_asr``, ``fc_title`` and ``config``). Shape or architecture mismatches raise a DataError
    naming the checkpoint key; everything not loaded is listed in the returned report.
    """
    source = None
    if isinstance(state_dict_or_path, (str, Path)):
        source = Path(state_dict_or_path)
        state_dict = read_published_state_dict(source)
    else:
        state_dict = _strip_module_prefix(state_dict_or_path)

    report = ImportReport()
    targets = dict(model.state_dict(keep_vars=True))
    pending: dict[str, tuple[str, torch.Tensor]] = {}  # our name -> (checkpoint key, tensor)

    # vision tower: OpenAI names -> HF names -> our backbone names
    visual = {k: v for k, v in state_dict.items() if k.startswith("clip.visual.")}
    if visual:
        for key, hf_name, tensor in openai_visual_items(visual):
            ours = "backbone.proj.weight" if hf_name == "visual_projection.weight" else f"backbone.{hf_name}"
            pending[ours] = (key, tensor)

    for key, tensor in state_dict.items():
        if key.startswith("clip.visual."):
            continue
        mapped = next((ours + key[len(src) :] for src, ours in _PUBLISHED_MAP if key.startswith(src)), None)
        if mapped is None:
            report.ignored.append(key)
            if not key.startswith(_PUBLISHED_IGNORED):
                report.unexpected.append(key)
            continue
        module_name = mapped.split(".", 1)[0]
        if getattr(model, module_name, None) is None:
            report.ignored.append(key)
            report.notes.append(f"{key}: model has no {module_name} (switched off), not loaded")
            continue
        pending[mapped] = (key, tensor)

    for ours, (key, tensor) in pending.items():
        if ours not in targets:
            raise DataError(
                f"no matching parameter {ours!r} in the model (architecture differs from the checkpoint; "
                "build the model with published_config_from_state_dict)",
                file=source,
                key=key,
            )
        if tuple(tensor.shape) != tuple(targets[ours].shape):
            raise DataError(
                f"shape {tuple(tensor.shape)} does not match {ours} {tuple(targets[ours].shape)}",
                file=source,
                key=key,
            )
    with torch.no_grad():
        for ours, (_, tensor) in pending.items():
            targets[ours].copy_(tensor)
    report.loaded = sorted(pending)

    imported_prefixes = tuple(f"{name}." for name in _IMPORTED_MODULES if getattr(model, name, None) is not None)
    for name in targets:
        if name in pending:
            continue
        (report.missing if name.startswith(imported_prefixes) else report.untouched).append(name)

    temporal = getattr(model, "temporal", None)
    if temporal is not None and not getattr(temporal, "published_difference_mask", True):
        temporal.published_difference_mask = True
        report.notes.append("temporal.published_difference_mask switched on to match the published masking")
    config = getattr(model, "config", None)
    if isinstance(config, SGMNConfig) and not config.temporal_published_mask:
        # keep the switch in the config so that a saved copy of the imported model behaves the same
        config.temporal_published_mask = True
        report.notes.append("config.temporal_published_mask set to True")
    return report


def model_fingerprint(model) -> str:
    """sha256 of the model's config and weights (lazily attached helpers such as the text
    encoder are not weights of the model and are left out)."""
    h = hashlib.sha256()
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else asdict(model.config)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("_text_encoder."):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype
    return h.hexdigest()
