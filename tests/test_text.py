"""Text encoders, the content-hash cache and per-split text vectors."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from sgmn.data.records import Clip, LPRData, Product, Room
from sgmn.errors import DataError
from sgmn.model.config import TextConfig
from sgmn.text import (
    CachedTextEncoder,
    ClipTextEncoder,
    MiniLMEncoder,
    PrecomputedTextVectors,
    TextEncoder,
    TextVectors,
    load_vector_json,
    make_text_encoder,
    text_key,
)
from sgmn.text import encoders as encoders_module


class CountingEncoder:
    """Deterministic fake: a vector derived from the text's hash; records every text it sees."""

    def __init__(self, dim: int = 8, name: str = "counting"):
        self.dim = dim
        self.name = name
        self.seen: list[str] = []

    def encode(self, texts):
        mask = np.array([t is not None and bool(t.strip()) for t in texts])
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            if mask[i]:
                self.seen.append(t)
                seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
                out[i] = np.random.default_rng(seed).standard_normal(self.dim)
        return out, mask


# ---- MiniLM (the default) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder()


def test_minilm_unit_vectors_similarity_and_missing_text(minilm):
    texts = [
        "this red summer dress is made of silk",
        "a red silk dress for the summer",
        "the central bank raised interest rates",
        None,
        "",
        "   \n",
    ]
    vecs, mask = minilm.encode(texts)
    assert isinstance(minilm, TextEncoder)
    assert vecs.shape == (6, 384) and vecs.dtype == np.float32
    assert mask.tolist() == [True, True, True, False, False, False]
    assert np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs[:3], axis=1), 1.0, atol=1e-5)
    assert not vecs[3:].any()
    sim = vecs @ vecs.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[0, 1] > sim[1, 2] + 0.3
    # A text's vector does not depend on what else is in the batch.
    alone, _ = minilm.encode(["a red silk dress for the summer"])
    np.testing.assert_allclose(alone[0], vecs[1], atol=1e-5)


def test_cache_with_real_minilm_skips_the_model_on_second_run(tmp_path, minilm, monkeypatch):
    texts = ["a blue cotton shirt", None, "wireless earbuds with noise cancelling"]
    first = CachedTextEncoder(minilm, tmp_path)
    v1, m1 = first.encode(texts)
    assert (first.hits, first.misses) == (0, 2)

    def model_must_not_run(self, texts):
        raise AssertionError(f"model called for {texts}")

    monkeypatch.setattr(encoders_module.MiniLMEncoder, "_encode_strings", model_must_not_run)
    second = CachedTextEncoder(MiniLMEncoder(), tmp_path)  # a new run: nothing in memory
    v2, m2 = second.encode(texts)
    assert (second.hits, second.misses) == (2, 0)
    np.testing.assert_array_equal(v1, v2)
    assert m1.tolist() == m2.tolist() == [True, False, True]


# ---- cache with a counting fake -------------------------------------------------------------
def test_cache_calls_encoder_once_per_distinct_text(tmp_path):
    fake = CountingEncoder()
    cached = CachedTextEncoder(fake, tmp_path)
    vecs, mask = cached.encode(["shoe", "bag", "shoe", None, " "])
    assert sorted(fake.seen) == ["bag", "shoe"]  # repeated and missing texts never reach the model
    assert mask.tolist() == [True, True, True, False, False]
    np.testing.assert_array_equal(vecs[0], vecs[2])
    assert not vecs[3:].any()

    again = CachedTextEncoder(fake, tmp_path)
    vecs2, _ = again.encode(["bag", "shoe", "hat"])
    assert fake.seen[2:] == ["hat"]
    np.testing.assert_array_equal(vecs2[0], vecs[1])
    direct, _ = CountingEncoder().encode(["hat"])
    np.testing.assert_array_equal(vecs2[2], direct[0])


def test_cache_key_depends_on_encoder_name_and_torn_files_are_recomputed(tmp_path):
    a, b = CountingEncoder(name="enc-a"), CountingEncoder(name="enc-b")
    CachedTextEncoder(a, tmp_path).encode(["shoe"])
    CachedTextEncoder(b, tmp_path).encode(["shoe"])
    assert a.seen == ["shoe"] and b.seen == ["shoe"]  # b did not read a's vector
    assert text_key("enc-a", "shoe") != text_key("enc-b", "shoe")

    path = tmp_path / text_key("enc-a", "shoe")[:2] / f"{text_key('enc-a', 'shoe')}.npy"
    assert path.is_file()
    path.write_bytes(b"garbage")
    vec, _ = CachedTextEncoder(a, tmp_path).encode(["shoe"])
    assert a.seen == ["shoe", "shoe"]
    assert np.isfinite(vec).all() and vec.any()


# ---- CLIP / Chinese-CLIP text towers --------------------------------------------------------
def _tiny_clip_folder(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<s>", "</s>", "red", "dress", "blue", "shoe", "a", "the", "long", "very"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    config = CLIPTextConfig(
        vocab_size=len(words), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=16, max_position_embeddings=77,
        bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )
    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


def test_clip_text_encoder_matches_the_text_tower(tmp_path):
    model, tokenizer = _tiny_clip_folder(tmp_path)
    enc = ClipTextEncoder(tmp_path)
    assert enc.dim == 16
    texts = ["red dress", "the very long blue shoe", None, ""]
    vecs, mask = enc.encode(texts)
    assert mask.tolist() == [True, True, False, False]
    assert not vecs[2:].any()
    with torch.no_grad():
        ref = model(**tokenizer(["red dress"], return_tensors="pt")).text_embeds[0].numpy()
    np.testing.assert_allclose(vecs[0], ref / np.linalg.norm(ref), atol=1e-5)  # padding did not leak in
    assert abs(np.linalg.norm(vecs[1]) - 1) < 1e-5
    assert not np.allclose(vecs[0], vecs[1])


def test_chinese_clip_encoder_uses_cls_and_projection(tmp_path):
    from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPModel

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "红", "色", "裙", "子", "鞋"]) + "\n")
    tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"))
    config = ChineseCLIPConfig(
        text_config=dict(vocab_size=10, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                           num_attention_heads=4, image_size=32, patch_size=16),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = ChineseCLIPModel(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    enc = ClipTextEncoder(tmp_path)
    vecs, mask = enc.encode(["鞋", "红色裙子", None])
    assert enc.dim == 16 and mask.tolist() == [True, True, False]
    with torch.no_grad():
        out = model.text_model(**tokenizer(["鞋"], return_tensors="pt"))
        ref = model.text_projection(out.last_hidden_state[:, 0, :])[0].numpy()
    np.testing.assert_allclose(vecs[0], ref / np.linalg.norm(ref), atol=1e-5)


def test_clip_text_encoder_rejects_non_clip_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="bert"):
        ClipTextEncoder(tmp_path)


# ---- precomputed vectors and the factory ----------------------------------------------------
def test_load_vector_json_names_file_and_key(tmp_path):
    good = tmp_path / "eval_asr2emb_3.json"
    good.write_text(json.dumps({"c1": [0.5, 1, -2], "c2": [0, 0, 0.25]}))
    table = load_vector_json(good, dim=3)
    np.testing.assert_array_equal(table["c1"], np.array([0.5, 1, -2], dtype=np.float32))
    assert table["c1"].dtype == np.float32

    short = tmp_path / "short.json"
    short.write_text(json.dumps({"c1": [1, 2, 3], "c-2": [1, 2]}))
    with pytest.raises(DataError, match=r"short\.json.*'c-2'.*length 2, expected 3"):
        load_vector_json(short)
    text = tmp_path / "text.json"
    text.write_text(json.dumps({"c1": [1, "x", 3]}))
    with pytest.raises(DataError, match=r"text\.json.*'c1'.*non-numeric"):
        load_vector_json(text, dim=3)
    bad = []
    assert list(load_vector_json(short, on_bad=bad.append)) == ["c1"] and len(bad) == 1


def test_precomputed_encoder_looks_up_keys():
    table = PrecomputedTextVectors({"a": np.ones(4, np.float32), "b": np.arange(4, dtype=np.float32)})
    vecs, mask = table.encode(["b", None, "a"])
    assert table.dim == 4 and mask.tolist() == [True, False, True]
    np.testing.assert_array_equal(vecs[0], [0, 1, 2, 3])
    assert not vecs[1].any()
    with pytest.raises(KeyError, match="cannot embed new text"):
        table.encode(["some new asr"])


def test_make_text_encoder(tmp_path):
    enc = make_text_encoder(TextConfig())
    assert isinstance(enc, MiniLMEncoder) and enc.dim == 384
    cached = make_text_encoder(TextConfig(cache_dir=str(tmp_path)))
    assert isinstance(cached, CachedTextEncoder) and cached.name == enc.name
    with pytest.raises(ValueError, match="text.dim = 512"):
        make_text_encoder(TextConfig(dim=512))
    with pytest.raises(ValueError, match="pretrained"):
        make_text_encoder(TextConfig(encoder="clip-text", dim=512))
    pre = make_text_encoder(TextConfig(encoder="precomputed", dim=512))
    vecs, mask = pre.encode([None, ""])
    assert vecs.shape == (2, 512) and not mask.any()


# ---- TextVectors ----------------------------------------------------------------------------
def _data() -> LPRData:
    data = LPRData(source="test")
    data.products = {
        "p1": Product("p1", [], title="red dress"),
        "p2": Product("p2", [], title="red dress"),  # same title as p1: encoded once
        "p3": Product("p3", [], title=None),
        "p4": Product("p4", [], title_vector=np.full(8, 0.5, np.float32)),
        "p9": Product("p9", [], title="other room"),
    }
    data.rooms = {"r1": Room("r1", ["p1", "p2", "p3", "p4"]), "r2": Room("r2", ["p9"])}
    data.clips = {
        "c1": Clip("c1", "r1", asr="look at this red dress", product_ids=["p1"]),
        "c2": Clip("c2", "r1", asr="  ", product_ids=["p3"]),
        "c3": Clip("c3", "r1", asr_vector=np.arange(8, dtype=np.float32), product_ids=["p4"]),
        "c9": Clip("c9", "r2", asr="other", product_ids=["p9"]),
    }
    data.splits = {"test": ["c1", "c2", "c3"], "train": ["c9"]}
    return data


def test_text_vectors_mix_precomputed_and_encoded():
    fake = CountingEncoder(dim=8)
    tv = TextVectors(_data(), "test", fake, progress=False)
    assert tv.dim == 8
    assert sorted(fake.seen) == ["look at this red dress", "red dress"]

    vec, ok = tv.clip("c1")
    ref, _ = CountingEncoder(dim=8).encode(["look at this red dress"])
    assert ok and vec.dtype == np.float32
    np.testing.assert_array_equal(vec, ref[0])
    vec, ok = tv.clip("c2")
    assert not ok and vec.shape == (8,) and not vec.any()
    vec, ok = tv.clip("c3")
    np.testing.assert_array_equal(vec, np.arange(8))  # the record's own vector wins
    np.testing.assert_array_equal(tv.product("p1")[0], tv.product("p2")[0])
    assert tv.product("p3")[1] is False
    np.testing.assert_array_equal(tv.product("p4")[0], np.full(8, 0.5))
    # The split covers its own clips and the galleries of their rooms only.
    with pytest.raises(KeyError, match="c9"):
        tv.clip("c9")
    with pytest.raises(KeyError, match="p9"):
        tv.product("p9")
    vec[:] = 7  # a returned vector is a copy
    assert tv.product("p4")[0][0] == 0.5


def test_text_vectors_errors():
    data = _data()
    with pytest.raises(ValueError, match="no text encoder"):
        TextVectors(data, "test", None, progress=False)
    data.clips["c3"].asr_vector = np.zeros(5, np.float32)
    with pytest.raises(DataError, match=r"'c3'.*shape \(5,\)"):
        TextVectors(data, "test", CountingEncoder(dim=8), progress=False)

    # Precomputed-only data: no encoder needed, dim taken from the vectors.
    only = LPRData(source="sgmn")
    only.products = {"p": Product("p", [], title_vector=np.ones(3, np.float32))}
    only.clips = {"c": Clip("c", "r", asr_vector=np.ones(3, np.float32), product_ids=["p"])}
    only.rooms = {"r": Room("r", ["p"])}
    only.splits = {"test": ["c"]}
    tv = TextVectors(only, "test", None, progress=False)
    assert tv.dim == 3 and tv.clip("c")[1]


def test_minilm_vectors_equal_sentence_transformers_without_importing_it():
    """The MiniLM encoder runs the folder through transformers (importing sentence-transformers
    costs seconds on every CLI call); its vectors are SentenceTransformer's."""
    import subprocess
    import sys

    from sentence_transformers import SentenceTransformer

    from sgmn.text.encoders import minilm_path

    texts = ["red silk dress", "THE striped mug, only today", "a " * 400 + "very long ASR past 256 tokens", "x"]
    ours, has = MiniLMEncoder().encode(texts)
    reference = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True).encode(
        texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    assert has.all() and np.allclose(ours, reference, atol=1e-5)
    code = ("import sys; from sgmn.text import MiniLMEncoder; MiniLMEncoder().encode(['a mug']); "
            "print('sentence_transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


# ---- MiniLM without transformers (sgmn/text/bert.py) ---------------------------------------------
TEXTS = ["Red silks CAFÉ, 中文 dressed!", "the striped mug", "a b a b a b a b a b a b a b a b a b", "mug", "?? unknown"]


def _tiny_sentence_folder(path, max_seq_length=12, pooling="mean"):
    """A sentence-transformers folder (BERT -> pooling -> Normalize) with random weights."""
    import transformers
    from tokenizers.implementations import BertWordPieceTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "silk", "dress", "mug", "the", "striped",
             "##s", "a", "b", "##ed", "cafe", ",", ".", "中", "!"]
    path.mkdir(parents=True)
    BertWordPieceTokenizer({w: i for i, w in enumerate(words)}, lowercase=True).save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "pad_token": "[PAD]", "model_max_length": 512}))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=32, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(path, safe_serialization=True)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 16, "pooling_mode_mean_tokens": pooling == "mean",
         "pooling_mode_cls_token": pooling == "cls"}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    return path


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_plain_torch_bert_equals_transformers_on_a_tiny_model(tmp_path, pooling):
    """Token ids (truncated at max_seq_length, padded to the longest) and vectors are transformers'."""
    from sgmn.text.encoders import _PooledSentenceModel

    folder = _tiny_sentence_folder(tmp_path / "st", pooling=pooling)
    rng = torch.random.get_rng_state()
    ours = _PooledSentenceModel(folder, "cpu")
    assert torch.equal(torch.random.get_rng_state(), rng)  # loading draws no random numbers
    reference = _PooledSentenceModel(folder, "cpu", backend="transformers")
    assert ours.backend == "torch"
    ids, expected = ours._tokenize(TEXTS), reference._tokenize(TEXTS)
    assert ids.keys() == {"input_ids", "token_type_ids", "attention_mask"} and ids["input_ids"].shape == (5, 12)
    for key in ids:
        assert torch.equal(ids[key], expected[key]), key
    assert not ids["attention_mask"].all()  # padding was exercised
    vectors = ours.encode(TEXTS, batch_size=2)
    np.testing.assert_allclose(vectors, reference.encode(TEXTS, batch_size=2), atol=1e-6, rtol=0)
    with torch.no_grad():  # padding changes nothing: each text alone gives the same vector
        alone = np.concatenate([ours.encode([t], batch_size=1) for t in TEXTS])
    np.testing.assert_allclose(vectors, alone, atol=1e-6, rtol=0)


def test_bert_weights_that_do_not_fit_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from sgmn.text.bert import BertEncoder

    folder = _tiny_sentence_folder(tmp_path / "st")
    state = load_file(str(folder / "model.safetensors"))
    del state[next(k for k in state if k.endswith("attention.self.query.weight"))]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="model.safetensors: not a BERT encoder's weights"):
        BertEncoder.from_folder(folder)


def test_other_architectures_fall_back_to_transformers(tmp_path):
    from sgmn.text import bert
    from sgmn.text.encoders import _PooledSentenceModel

    folder = _tiny_sentence_folder(tmp_path / "st")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu_new"}))
    assert "gelu_new" in bert.supports(folder)
    assert _PooledSentenceModel(folder, "cpu").backend == "transformers"
    with pytest.raises(ValueError, match="cannot run without transformers"):
        _PooledSentenceModel(folder, "cpu", backend="torch")


def test_minilm_token_ids_and_vectors_equal_transformers():
    from sgmn.text.encoders import _PooledSentenceModel, minilm_path

    texts = [*TEXTS, "the red mug with the striped handle, only today", "Ünïcödé àccents — dash “quotes” 🙂",
             "word " * 300, "   ", "email me at shop@example.com #sale $9.99"]
    ours = _PooledSentenceModel(minilm_path(), "cpu")
    reference = _PooledSentenceModel(minilm_path(), "cpu", backend="transformers")
    assert ours.backend == "torch"
    ids, expected = ours._tokenize(texts), reference._tokenize(texts)
    assert ids["input_ids"].shape == (len(texts), 256)  # truncated at max_seq_length
    for key in ids:
        assert torch.equal(ids[key], expected[key]), key
    np.testing.assert_allclose(ours.encode(texts, 4), reference.encode(texts, 4), atol=1e-6, rtol=0)
