"""The report's small formatting rules."""

from __future__ import annotations

import pytest

from rlfm.evaluate.report import duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "0 s"),
        (59.4, "59 s"),
        (59.6, "1 min 00 s"),
        (119.5, "2 min 00 s"),
        (1862.0, "31 min 02 s"),
    ],
)
def test_a_duration_never_shows_60_seconds(seconds, text):
    assert duration(seconds) == text
