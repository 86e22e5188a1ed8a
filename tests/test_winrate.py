"""Win rate with a confidence interval, against numbers worked out by hand."""

import math

import pytest

from rlfm.evaluate.winrate import win_rate


def test_win_rate_by_hand():
    """Outcomes (1, 1, 0, ½): rate 0.625; sd = sqrt(((.375²)·2 + .625² + .125²)/3) = 0.478714;
    half-width 1.96 · 0.478714 / 2 = 0.469140 → (0.155860, 1.0 after clipping)."""
    rate, low, high = win_rate([2, 3, 0, 1], [1, 1, 1, 1])
    assert rate == 0.625
    assert math.isclose(low, 0.625 - 0.469140, rel_tol=1e-5)
    assert high == 1.0


def test_win_rate_rejects_unpaired():
    """Unequal lengths are an error, not a silent truncation."""
    with pytest.raises(ValueError):
        win_rate([1, 2], [1])
