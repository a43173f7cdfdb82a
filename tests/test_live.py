"""Live sessions: causal windows, the ASR heard in the window, equal to a direct query."""

import numpy as np
import pytest
import torch
from PIL import Image

import sgmn
from sgmn.retrieval import NotFound, Retriever
from sgmn.retrieval.live import LiveSession


def _img(seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 255, 3) + rng.integers(-50, 50, (size[1], size[0], 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", params=["faiss", "milvus"])
def retriever(request, tmp_path_factory):
    """The same room on each retrieval backend (a store folder, and Milvus Lite)."""
    torch.manual_seed(0)
    model = sgmn.create_model("sgmn-tiny").eval()
    name = "store.db" if request.param == "milvus" else "store"
    r = Retriever.open(tmp_path_factory.mktemp("live") / name, model=model)
    titles = ["red silk dress", "blue denim jeans", "white sneakers", "gold necklace"]
    r.add_products("room", [(f"p{i}", [Image.fromarray(_img(i))], t) for i, t in enumerate(titles)], create_room=True)
    yield r
    r.close()


def _key(update):
    return [(h.product_id, round(h.score, 6)) for h in update.hits]


def test_updates_every_n_frames_equal_a_direct_query_on_the_window(retriever):
    frames = [_img(100 + i) for i in range(15)]
    session = LiveSession(retriever, "room", every_n_frames=5, window=10, top_k=3)
    session.push_asr("this red dress")  # before any frame: heard with frame 0
    updates = []
    for i, frame in enumerate(frames):
        update = session.push_frame(frame)
        assert (update is not None) == ((i + 1) % 5 == 0)
        if update:
            updates.append(update)
        if i == 3:
            session.push_asr("and jeans")  # heard with frame 3
        if i == 12:
            session.push_asr("white sneakers now")  # heard with frame 12
    assert [(u.window_start, u.frame_index) for u in updates] == [(0, 4), (0, 9), (5, 14)]
    assert [u.asr for u in updates] == ["this red dress and jeans", "this red dress and jeans", "white sneakers now"]
    for u in updates:
        direct = retriever.query("room", frames[u.window_start : u.frame_index + 1], asr=u.asr, top_k=3)
        assert _key(u) == [(h.product_id, round(h.score, 6)) for h in direct.hits]
        assert len(u.hits) == 3
        assert all(u.window_start <= i <= u.frame_index for i in u.result.frame_indices)
    # the tiny model takes 6 frames: a window of 10 is sampled uniformly inside the window
    assert updates[2].result.frame_indices == [5, 6, 8, 10, 11, 13]


def test_later_frames_and_asr_never_change_an_earlier_emission(retriever):
    shared = [_img(200 + i) for i in range(10)]
    a = LiveSession(retriever, "room", every_n_frames=5, window=10, top_k=4)
    b = LiveSession(retriever, "room", every_n_frames=5, window=10, top_k=4)
    out_a = list(a.feed(shared[:5]))
    out_b = list(b.feed(shared[:5]))
    b.push_asr("gold necklace")  # only b hears this, after its first emission
    out_a += list(a.feed(shared[5:] + [_img(300 + i) for i in range(5)]))
    out_b += list(b.feed(shared[5:] + [_img(400 + i) for i in range(5)]))
    assert _key(out_a[0]) == _key(out_b[0])  # emitted before anything differed
    assert out_a[1].asr is None and out_b[1].asr == "gold necklace"
    assert _key(out_a[1]) != _key(out_b[1])  # the ASR in the window counts
    assert _key(out_a[2]) != _key(out_b[2])  # different frames in the window
    # a new session that never sees the later frames emits the same first two updates as a
    c = LiveSession(retriever, "room", every_n_frames=5, window=10, top_k=4)
    assert [_key(u) for u in c.feed(shared)] == [_key(u) for u in out_a[:2]]


def test_window_drops_old_frames_and_bad_arguments_are_refused(retriever):
    s = LiveSession(retriever, "room", every_n_frames=3, window=2, top_k=2)
    with pytest.raises(ValueError, match="no frame"):
        s.current()
    frames = [_img(500 + i) for i in range(3)]
    s.push_frame(frames[0])
    s.push_frame(frames[1])
    update = s.push_frame(frames[2])
    assert (update.window_start, update.frame_index) == (1, 2)
    direct = retriever.query("room", frames[1:], top_k=2)
    assert _key(update) == [(h.product_id, round(h.score, 6)) for h in direct.hits]
    assert _key(s.current()) == _key(update)
    with pytest.raises(NotFound):
        LiveSession(retriever, "nope")
    with pytest.raises(ValueError):
        LiveSession(retriever, "room", every_n_frames=0)
