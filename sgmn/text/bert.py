"""A BERT encoder (the MiniLM sentence model's forward) in plain torch, and its tokenizer.

Why not transformers' ``BertModel`` / ``AutoTokenizer``: importing transformers' modeling code
pulls in ``torch.distributed``, dynamo, sympy and scipy, about 3 s of every `sgmn query` before
any work. This file computes what ``BertModel(...).last_hidden_state`` computes (the SDPA path,
operation for operation) from the same weight file, with the same parameter names; the
tokenizer is the folder's ``tokenizer.json`` run by the ``tokenizers`` library (what transformers'
fast tokenizer runs too). tests/test_text.py checks ids and vectors against transformers.

Supported: ``model_type == "bert"`` folders with absolute positions, the exact (erf) GELU, a
``tokenizer.json`` and ``model.safetensors`` (see :func:`supports`); other folders go through
transformers (sgmn/text/encoders.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sgmn.loaded_layers import Embedding, Linear


@dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_json(cls, data: dict) -> "BertConfig":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def supports(folder: Path) -> Optional[str]:
    """None when this module can run the folder, else why not (the caller falls back)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        return "no config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("model_type") != "bert":
        return f"model_type {config.get('model_type')!r} is not 'bert'"
    if config.get("hidden_act", "gelu") != "gelu":
        return f"hidden_act {config.get('hidden_act')!r} is not 'gelu'"
    if config.get("position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {config.get('position_embedding_type')!r} is not 'absolute'"
    if config.get("is_decoder") or config.get("add_cross_attention"):
        return "a decoder BERT"
    for name in ("tokenizer.json", "model.safetensors"):
        if not (folder / name).is_file():
            return f"no {name}"
    return None


# The encoder is only ever built to receive a file's weights (BertEncoder.from_folder checks that
# every tensor is loaded), so its layers skip the random init (sgmn/loaded_layers.py).
class Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.head_dim = c.hidden_size // c.num_attention_heads
        self.query = Linear(c.hidden_size, c.hidden_size)
        self.key = Linear(c.hidden_size, c.hidden_size)
        self.value = Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        shape = (*x.shape[:-1], -1, self.head_dim)  # (B, L, heads, head_dim)
        q = self.query(x).view(shape).transpose(1, 2)
        k = self.key(x).view(shape).transpose(1, 2)
        v = self.value(x).view(shape).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)
        return y.transpose(1, 2).contiguous().reshape(*x.shape[:-1], -1).contiguous()


class DenseLayerNorm(nn.Module):
    """LayerNorm(dense(x) + residual): BERT's post-norm residual."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.self = SelfAttention(c)
        self.output = DenseLayerNorm(c.hidden_size, c.hidden_size, c.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = Linear(c.hidden_size, c.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = DenseLayerNorm(c.intermediate_size, c.hidden_size, c.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))


class BertEncoder(nn.Module):
    """``BertModel`` without the pooler: token ids -> last hidden states (B, L, hidden)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L): padding is never a key
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x

    @classmethod
    def from_folder(cls, folder: Path) -> "BertEncoder":
        """Weights of a transformers ``BertModel`` folder (``bert.`` prefix or none); the pooler
        and saved ``position_ids`` buffers are not used. Any other missing or extra tensor is an
        error naming the file."""
        from safetensors.torch import load_file

        config = BertConfig.from_json(json.loads((folder / "config.json").read_text(encoding="utf-8")))
        # No random init (see Linear above; the meta device would skip it too but imports torch's
        # Python decompositions, ~2 s). The loaded tensors become the parameters (assign=True):
        # no copy, and the memory-mapped file is read only where it is used.
        model = cls(config)
        weights_file = folder / "model.safetensors"
        state = {}
        for key, value in load_file(str(weights_file)).items():
            key = key[len("bert."):] if key.startswith("bert.") else key
            if key.startswith(("pooler.", "cls.")) or key.endswith("position_ids"):
                continue
            state[key] = value
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if missing or unexpected:
            raise ValueError(f"{weights_file}: not a BERT encoder's weights "
                             f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
        return model.eval()


class BertTokenizer:
    """The folder's ``tokenizer.json`` (``tokenizers`` library), truncating to ``max_length`` and
    padding to the longest text of a batch, as ``tokenizer(texts, padding=True, truncation=True,
    max_length=...)`` does in transformers."""

    def __init__(self, folder: Path, max_length: int):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        settings_file = folder / "tokenizer_config.json"
        settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
        pad = settings.get("pad_token", "[PAD]")
        pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else pad
        pad_id = self.tokenizer.token_to_id(pad)
        if pad_id is None:
            raise ValueError(f"{folder / 'tokenizer.json'}: no padding token {pad!r}")
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(direction=settings.get("padding_side", "right"), pad_id=pad_id, pad_token=pad)

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encodings = self.tokenizer.encode_batch(texts)
        return {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
            "token_type_ids": torch.tensor([e.type_ids for e in encodings], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),
        }
