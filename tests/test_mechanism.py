"""Mechanism metrics (issue 9): TGA influence, TGA pointing, SMF accuracy — each computation on a
hand-made case whose answer is known, then end to end through ``evaluate(..., mechanism=True)``."""

import pytest
import torch
import torch.nn as nn

import sgmn
from sgmn.data.readers import read_dataset
from sgmn.data.synthetic import generate, preset
from sgmn.data.transforms import box_to_patch_mask
from sgmn.eval import mechanism as mech
from sgmn.eval.protocol import _make_text_vectors, encode_queries, evaluate


# ---------------------------------------------------------------------------- the computations
def test_identical_embeddings_have_cosine_one_and_opposite_minus_one():
    v = torch.randn(5, 16)
    assert torch.allclose(mech.embedding_cosines(v, v.clone()), torch.ones(5), atol=1e-6)
    assert torch.allclose(mech.embedding_cosines(v, -v), -torch.ones(5), atol=1e-6)


def test_in_box_patches_follow_the_patch_mask_rule():
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [5.0, 9.0, 40.0, 33.0], [1.0, 1.0, 1.2, 1.2]])
    got = mech.in_box_patches(boxes, 64, 16)
    for b, row in zip(boxes, got):
        assert torch.equal(row, box_to_patch_mask(tuple(b.tolist()), 64, 16)[1:])
    assert got[0].sum() == 1  # exactly the top-left cell


def test_a_map_entirely_in_the_box_gives_kept_over_in_box():
    P = 16
    in_box = torch.zeros(2, P, dtype=torch.bool)
    in_box[:, [0, 1, 4, 5]] = True
    att = torch.zeros(2, P)
    att[0, [0, 1, 4, 5]] = 0.25  # all mass in the box, spread evenly
    att[1, 5] = 1.0  # all mass on one in-box patch
    ratios, informative = mech.pointing_ratios(att, in_box)
    assert informative.all()
    assert torch.allclose(ratios, torch.full((2,), P / 4))  # n_kept / n_in_box = 16 / 4


def test_a_uniform_map_gives_one_and_a_map_outside_the_box_zero():
    P = 16
    in_box = torch.zeros(3, P, dtype=torch.bool)
    in_box[:, :3] = True
    kept = torch.ones(3, P, dtype=torch.bool)
    kept[2, 8:] = False  # a frame with only 8 kept patches: uniform over those
    att = torch.full((3, P), 1.0 / P)
    att[1] = 0.0
    att[1, 10] = 1.0  # all mass outside the box
    att[2] = torch.where(kept[2], 1.0 / 8, 0.0)
    ratios, informative = mech.pointing_ratios(att, in_box, kept)
    assert informative.all()
    assert torch.allclose(ratios, torch.tensor([1.0, 0.0, 1.0]))


def test_uninformative_frames_are_flagged_not_averaged():
    P = 4
    att = torch.full((3, P), 0.25)
    in_box = torch.tensor([[True] * 4, [False] * 4, [True, False, False, False]])  # whole frame, empty, fine
    att[2] = 0.0  # but no map (no ASR / no kept patch)
    _, informative = mech.pointing_ratios(att, in_box)
    assert informative.tolist() == [False, False, False]


def test_smf_candidates_are_the_true_product_and_the_k_hardest_others():
    ranking = [("a", 0.9), ("gt", 0.8), ("b", 0.7), ("c", 0.6), ("d", 0.5)]
    assert mech.smf_candidates(ranking, {"gt"}, 3) == ["gt", "a", "b", "c"]
    assert mech.smf_candidates(ranking, {"gt", "b"}, 3) == ["gt", "a", "c", "d"]  # other gts are no negatives
    assert mech.smf_candidates(ranking[:2], {"gt"}, 3) == ["gt", "a"]  # a small room offers fewer
    assert mech.smf_candidates(ranking, {"zz"}, 3) is None
    assert mech.smf_candidates([("gt", 1.0)], {"gt"}, 3) is None


def test_the_cross_encoder_is_correct_only_when_the_true_product_wins_strictly():
    assert mech.cross_encoder_correct(torch.tensor([2.0, 1.0, 0.0, 1.9]))
    assert not mech.cross_encoder_correct(torch.tensor([1.0, 1.0, 0.0, 0.0]))  # a tie counts against
    assert not mech.cross_encoder_correct(torch.tensor([0.0, 1.0, 0.0, 0.0]))


def test_summary_aggregates_records_over_queries_and_frames():
    model = _model()
    records = {
        "q1": {"cos": 1.0, "ratios": [2.0, 4.0], "uninformative": 1, "smf": [True, 3]},
        "q2": {"cos": 0.5, "ratios": [], "uninformative": 0, "smf": [False, 1]},
        "q3": {},  # no ASR, no candidate
    }
    out = mech.summarise(records, model, max_queries=256)
    assert out["queries"] == 3
    assert out["tga_influence"] == {"mean_cos": 0.75, "clips": 2}
    assert out["tga_pointing"] == {"mass_ratio": 3.0, "frames": 2, "clips": 1, "uninformative_frames": 1}
    assert out["smf_accuracy"] == {"accuracy": 0.5, "chance": (0.25 + 0.5) / 2, "k": 3, "queries": 2}


def test_sampling_spreads_over_the_ids_and_is_bounded():
    ids = [f"q{i:03d}" for i in range(100)]
    got = mech.sample_queries(list(reversed(ids)), 10)
    assert got == [f"q{i:03d}" for i in range(0, 100, 10)]
    assert mech.sample_queries(ids[:5], 10) == ids[:5]


# ---------------------------------------------------------------------------- end to end
SMALL = {"vision.layers": 1, "num_frames": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mech")
    generate(root, preset("easy", rooms=2, products_per_room=4, clips_per_product=1, frames_per_clip=4), progress=False)
    return read_dataset(root, "lpr4m")


@pytest.fixture(scope="module")
def text(data):
    """The test split's ASR / title vectors, encoded once for every model of this file."""
    return _make_text_vectors(_model(), data, "test")


def _model(**overrides):
    torch.manual_seed(0)
    return sgmn.create_model("sgmn-tiny", **SMALL, **overrides).eval()


class _StubTGA(nn.Module):
    """A TGA whose text either changes CLS (``shift``) or not, with a uniform map over kept patches."""

    def __init__(self, shift: float):
        super().__init__()
        self.shift = shift

    def forward(self, cls, patches, text, patch_mask=None, text_mask=None):
        B, T, P, _ = patches.shape
        kept = torch.ones(B, T, P, dtype=torch.bool) if patch_mask is None else patch_mask.bool()
        has = torch.ones(B, dtype=torch.bool) if text_mask is None else text_mask.bool()
        att = kept.float() / kept.float().sum(-1, keepdim=True) * has.view(B, 1, 1).float()
        update = self.shift * text[:, None, : cls.shape[-1]] * has.view(B, 1, 1).float()
        return cls + update, att


def test_tga_influence_is_one_when_the_text_changes_nothing_and_below_when_it_does(data, text):
    model = _model()
    model.tga = _StubTGA(shift=0.0)
    m = evaluate(model, data, "test", batch_size=3, progress=False, mechanism=True, text=text).metrics["mechanism"]
    with_asr = sum(1 for c in data.split_clips("test") if c.asr)
    assert m["tga_influence"]["clips"] == with_asr > 0
    assert m["tga_influence"]["mean_cos"] == pytest.approx(1.0, abs=1e-5)
    # a uniform map puts exactly a uniform map's mass in the box, on every frame with a box
    assert m["tga_pointing"]["frames"] > 0
    assert m["tga_pointing"]["mass_ratio"] == pytest.approx(1.0, abs=1e-4)

    model.tga = _StubTGA(shift=50.0)
    m = evaluate(model, data, "test", batch_size=3, progress=False, mechanism=True, text=text).metrics["mechanism"]
    assert m["tga_influence"]["mean_cos"] < 0.99  # the second encoding really had no ASR


def _identify(rows: torch.Tensor, table: torch.Tensor) -> list[int]:
    return torch.cdist(rows.float(), table.float()).argmin(dim=1).tolist()


@pytest.mark.parametrize("rig,expected", [("prefer_truth", 1.0), ("constant", 0.0), ("prefer_negative", 0.0)])
def test_smf_accuracy_with_a_rigged_cross_encoder(data, text, monkeypatch, rig, expected):
    model = _model()
    test = data.split_clips("test")
    pids = sorted(data.products)
    products = model.encode_products([data.products[p].image_paths[0] for p in pids],
                                     titles=torch.stack([torch.as_tensor(text.product(p)[0]) for p in pids]))
    # The rig knows the truth: it identifies the clip (by v) and the products (by p) it is asked about.
    truth_of = {}

    def rigged(model_, clip_emb, product_emb):
        names = [pids[i] for i in _identify(product_emb.embedding.cpu(), products.embedding.cpu())]
        clip_id = truth_of["by_v"][_identify(clip_emb.embedding.cpu(), truth_of["v"])[0]]
        gts = set(data.clips[clip_id].product_ids)
        if rig == "constant":
            return torch.zeros(len(names))
        prefer = [n in gts for n in names] if rig == "prefer_truth" else [n not in gts for n in names]
        return torch.tensor(prefer, dtype=torch.float32)

    q_ids, q_emb, _ = encode_queries(model, test, data, text=text,
                                     batch_size=4, device="cpu", progress=False)
    truth_of["by_v"], truth_of["v"] = q_ids, q_emb.embedding
    monkeypatch.setattr(mech, "cross_encoder_scores", rigged)
    m = evaluate(model, data, "test", batch_size=3, progress=False, mechanism=True, text=text).metrics["mechanism"]
    smf = m["smf_accuracy"]
    assert smf["queries"] == len(test)
    assert smf["k"] == 3 and smf["chance"] == pytest.approx(0.25)  # rooms of 4 products: 1 true + 3 others
    assert smf["accuracy"] == expected


def test_mechanism_metrics_are_absent_for_models_without_the_component(data, text):
    m = evaluate(_model(use_smf=False), data, "test", batch_size=4, progress=False, mechanism=True, text=text).metrics
    assert "tga_influence" in m["mechanism"] and "smf_accuracy" not in m["mechanism"]
    m = evaluate(_model(use_tga=False), data, "test", batch_size=4, progress=False, mechanism=True, text=text).metrics
    assert "smf_accuracy" in m["mechanism"] and "tga_influence" not in m["mechanism"] and "tga_pointing" not in m["mechanism"]
    torch.manual_seed(0)
    baseline = sgmn.create_model("clip-meanpool", **SMALL).eval()
    m = evaluate(baseline, data, "test", batch_size=4, progress=False, mechanism=True, text=text).metrics
    assert "mechanism" not in m
    # and without being asked for, nothing is computed
    assert "mechanism" not in evaluate(_model(), data, "test", batch_size=4, progress=False, text=text).metrics
