"""Transformer blocks and the temporal difference block: per-sample masks, padding, T = 1."""

import torch

from sgmn.model.temporal import TemporalDifferenceBlock
from sgmn.model.transformer import QuickGELU, Transformer

D = 32


def tdb(published=False, seed=0) -> TemporalDifferenceBlock:
    torch.manual_seed(seed)
    block = TemporalDifferenceBlock(D, heads=4, layers=2, max_position=16, published_difference_mask=published)
    return block.eval()


def test_position_and_type_embeddings_start_at_n_0_002():
    # the published code's init for new modules; PyTorch's N(0, 1) made them as large as the
    # frame features and the shared type embedding a constant offset in every v (issue 9)
    torch.manual_seed(0)
    block = TemporalDifferenceBlock(512, heads=8, layers=1, max_position=77)
    for weight in (block.frame_position_embeddings.weight, block.type_position_embeddings.weight):
        assert abs(weight.mean().item()) < 0.005 and 0.015 < weight.std().item() < 0.025


def test_quick_gelu_is_the_clip_activation():
    x = torch.linspace(-4, 4, 9)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))


def test_transformer_key_mask_equals_running_on_the_real_prefix():
    torch.manual_seed(0)
    model = Transformer(D, layers=2, heads=4).eval()
    x = torch.randn(2, 6, D)
    keep = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        masked = model(x, keep)
        prefix = model(x[:1, :4])
        full = model(x[1:])
    torch.testing.assert_close(masked[0, :4], prefix[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(masked[1], full[0], atol=1e-5, rtol=0)


def test_transformer_row_with_every_key_masked_gives_no_nan():
    torch.manual_seed(0)
    model = Transformer(D, layers=1, heads=4).eval()
    x = torch.randn(2, 3, D)
    keep = torch.tensor([[0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = model(x, keep)
        unmasked = model(x[:1])
    assert torch.isfinite(out).all()
    # an all-masked row attends over all its keys, as the published additive -1e6 mask does
    torch.testing.assert_close(out[0], unmasked[0], atol=1e-5, rtol=0)


def test_appended_padded_frames_do_not_change_real_outputs():
    block = tdb()
    torch.manual_seed(1)
    frames = torch.randn(1, 4, D)
    garbage = torch.randn(1, 3, D) * 10
    padded = torch.cat([frames, garbage], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        alone = block(frames)
        with_padding = block(padded, mask)
        other_garbage = block(torch.cat([frames, -garbage], dim=1), mask)
    torch.testing.assert_close(with_padding[:, :4], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(other_garbage[:, :4], alone, atol=1e-5, rtol=0)
    assert torch.isfinite(with_padding).all()


def test_batch_equals_one_clip_at_a_time():
    # different numbers of real frames per clip: a head-major mask mix-up would pair clip 0's
    # heads with clip 1's mask and break this equality
    block = tdb()
    torch.manual_seed(2)
    frames = torch.randn(3, 5, D)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        batched = block(frames, mask)
        single = torch.cat([block(frames[i : i + 1], mask[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched[mask], single[mask], atol=1e-5, rtol=0)
    published = tdb(published=True)
    with torch.no_grad():
        batched = published(frames, mask)
        single = torch.cat([published(frames[i : i + 1], mask[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched[mask], single[mask], atol=1e-5, rtol=0)


def test_temporal_context_changes_frame_outputs():
    block = tdb()
    torch.manual_seed(3)
    frames = torch.randn(1, 4, D)
    changed = frames.clone()
    changed[0, 3] += torch.randn(D)  # not a constant shift: LayerNorm would remove that
    with torch.no_grad():
        a, b = block(frames), block(changed)
    # frame 0 sees frame 3 through the temporal transformer: the block really mixes time
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4


def test_single_frame_clip():
    block = tdb()
    torch.manual_seed(4)
    frame = torch.randn(2, 1, D)
    with torch.no_grad():
        single = block(frame)
        padded = block(torch.cat([frame, torch.randn(2, 2, D)], 1), torch.tensor([[1, 0, 0]] * 2, dtype=torch.bool))
    assert single.shape == (2, 1, D)
    assert torch.isfinite(single).all()
    torch.testing.assert_close(padded[:, :1], single, atol=1e-5, rtol=0)


def test_published_masking_lets_the_first_padded_frame_in():
    # documented difference: the published masking keeps d_i when frame i is real, even if frame
    # i+1 is padding; only that mode reproduces published checkpoints
    block = tdb(published=True)
    torch.manual_seed(5)
    frames = torch.randn(1, 5, D)
    mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    changed = frames.clone()
    changed[0, 3] += 3 * torch.randn(D)  # first padded frame
    later = frames.clone()
    later[0, 4] += 3 * torch.randn(D)  # second padded frame: its difference token is masked in both modes
    with torch.no_grad():
        a, b, c = block(frames, mask), block(changed, mask), block(later, mask)
    assert (a[0, :3] - b[0, :3]).abs().max() > 1e-4
    torch.testing.assert_close(a[0, :3], c[0, :3], atol=1e-5, rtol=0)
    all_padded = torch.zeros(1, 5, dtype=torch.bool)
    with torch.no_grad():
        assert torch.isfinite(block(frames, all_padded)).all()
        assert torch.isfinite(tdb()(frames, all_padded)).all()
