"""The ``sgmn pretrain`` output folder and how a model starts from it.

A pretrain folder is a Hugging Face ``CLIPVisionModelWithProjection`` folder (``config.json`` +
``model.safetensors``: the vision tower and its projection to ``embed_dim``), so
``model.vision.pretrained=FOLDER`` loads it through the ordinary vision-weights path
(:meth:`VisionBackbone.load_hf_pretrained`) into every architecture (SGMN and its ablations,
``clip-meanpool``, ``rice-icl``). Next to it:

- ``text_projection.safetensors``: the text projection (Linear ``text.dim -> embed_dim``) trained
  against the image side. Models with a text branch start both ``fc_asr`` and ``fc_title`` from
  it, but only when their text encoder is the one it was trained on (its metadata says which);
- ``pretrain.json``: the pretrain config, cache key and zero-shot scores (written by
  ``sgmn.train.pretrain``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

log = logging.getLogger(__name__)

TEXT_PROJECTION_FILE = "text_projection.safetensors"
PRETRAIN_INFO_FILE = "pretrain.json"
TEXT_FIELDS = ("encoder", "dim", "pretrained")  # what must agree for the projection to mean the same


def text_identity(text_config: Any) -> dict:
    return {f: getattr(text_config, f) for f in TEXT_FIELDS}


def save_text_projection(folder: Union[str, Path], projection: nn.Linear, text_config: Any) -> Path:
    from safetensors.torch import save_file

    path = Path(folder) / TEXT_PROJECTION_FILE
    state = {"weight": projection.weight.detach().contiguous().cpu(), "bias": projection.bias.detach().contiguous().cpu()}
    save_file(state, str(path), metadata={"text": json.dumps(text_identity(text_config), sort_keys=True)})
    return path


def load_text_projections(model: nn.Module, folder: Union[str, Path]) -> list[str]:
    """Copy a pretrain folder's text projection into ``fc_asr`` and ``fc_title`` of ``model``.

    Returns the names loaded (empty when the folder has no text projection, the model has no text
    branch, or the model's text encoder differs from the one the projection was trained on: its
    vectors would live in another space, so the heads then keep their own initialisation, with a
    warning).
    """
    from safetensors import safe_open

    path = Path(folder) / TEXT_PROJECTION_FILE
    heads = [(name, getattr(model, name, None)) for name in ("fc_asr", "fc_title")]
    heads = [(name, head) for name, head in heads if isinstance(head, nn.Linear)]
    if not path.is_file() or not heads:
        return []
    with safe_open(str(path), framework="pt") as f:
        saved_text = json.loads((f.metadata() or {}).get("text", "{}"))
        state = {k: f.get_tensor(k) for k in f.keys()}
    wanted = text_identity(model.config.text)
    if saved_text != wanted:
        log.warning("%s: trained for text encoder %s, the model uses %s: text heads keep their initialisation",
                    path, saved_text, wanted)
        return []
    loaded = []
    with torch.no_grad():
        for name, head in heads:
            if tuple(state["weight"].shape) != tuple(head.weight.shape):
                log.warning("%s: text projection is %s, %s is %s: not loaded", path,
                            tuple(state["weight"].shape), name, tuple(head.weight.shape))
                continue
            head.weight.copy_(state["weight"])
            head.bias.copy_(state["bias"])
            loaded.append(name)
    return loaded
