"""Packed windows and the resumable sampler."""

import pytest
import torch

from rlfm.data.blocks import BlockSampler, eval_starts, gather_windows
from rlfm.errors import DataError


def test_windows_are_contiguous_and_in_bounds():
    """Every window is block+1 consecutive tokens inside the stream, over many epochs."""
    stream = torch.arange(1000)
    s = BlockSampler(1000, block=16, batch_size=8, seed=3)
    for _ in range(300):
        starts = s.next_batch()
        rows = gather_windows(stream, starts, 17)
        assert rows.shape == (8, 17)
        assert torch.equal(rows[:, 1:] - rows[:, :-1], torch.ones(8, 16, dtype=torch.long))
        assert int(rows.max()) < 1000
    assert s.epoch > 1


def test_epoch_visits_each_window_once():
    """Within an epoch no window repeats."""
    s = BlockSampler(16 * 41, block=16, batch_size=5, seed=0)
    seen = torch.cat([s.next_batch() for _ in range(s.n_windows // 5)])
    assert len(set(seen.tolist())) == len(seen)


def test_resume_gives_the_same_batches():
    """A sampler restored from (epoch, cursor) yields exactly what the original yields next."""
    a = BlockSampler(5000, block=32, batch_size=4, seed=1)
    for _ in range(57):
        a.next_batch()
    b = BlockSampler(5000, block=32, batch_size=4, seed=1)
    b.load_state_dict(a.state_dict())
    for _ in range(80):
        assert torch.equal(a.next_batch(), b.next_batch())


def test_seed_changes_order():
    """Different seeds give different orders."""
    a = BlockSampler(5000, block=32, batch_size=4, seed=1).next_batch()
    b = BlockSampler(5000, block=32, batch_size=4, seed=2).next_batch()
    assert not torch.equal(a, b)


def test_too_little_data_is_a_clear_error():
    """Fewer windows than one batch names the data and the remedy."""
    with pytest.raises(DataError, match="training data: 100 tokens.*fewer than one batch"):
        BlockSampler(100, block=32, batch_size=8, seed=0, name="training data")


def test_eval_starts_fit():
    """Validation windows fit inside the stream."""
    starts = eval_starts(500, block=32, n_windows=100)
    assert int(starts.max()) + 33 <= 500 and len(starts) == (500 - 1) // 32
