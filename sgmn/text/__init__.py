"""Text encoders for ASR and titles (MiniLM default, CLIP text tower, precomputed vectors), the
content-hash disk cache, and per-split text vectors for the datasets."""

from sgmn.text.base import TextEncoder, has_text
from sgmn.text.cache import CachedTextEncoder, text_key
from sgmn.text.encoders import ClipTextEncoder, MiniLMEncoder, make_text_encoder
from sgmn.text.precomputed import PrecomputedTextVectors, load_vector_json
from sgmn.text.vectors import TextVectors

__all__ = [
    "TextEncoder",
    "has_text",
    "CachedTextEncoder",
    "text_key",
    "ClipTextEncoder",
    "MiniLMEncoder",
    "make_text_encoder",
    "PrecomputedTextVectors",
    "load_vector_json",
    "TextVectors",
]
