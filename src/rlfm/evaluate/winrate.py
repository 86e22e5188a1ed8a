"""Win rates with confidence intervals: how often system A's output beats system B's."""

from __future__ import annotations

import math
from collections.abc import Sequence


def win_rate(a: Sequence[float], b: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """Share of paired items where ``a`` scores higher than ``b`` (ties count ½), with a
    normal-approximation confidence interval (z = 1.96: 95%) clipped to [0, 1].

        w_i = 1[a_i > b_i] + ½·1[a_i = b_i],   rate = mean(w),   rate ± z · sd(w) / √n
    """
    if len(a) != len(b) or not a:
        raise ValueError(
            f"win_rate needs two equally long, non-empty lists, got {len(a)} and {len(b)}"
        )
    w = [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)]
    n = len(w)
    rate = sum(w) / n
    sd = math.sqrt(sum((x - rate) ** 2 for x in w) / (n - 1)) if n > 1 else 0.0
    half = z * sd / math.sqrt(n)
    return rate, max(0.0, rate - half), min(1.0, rate + half)
