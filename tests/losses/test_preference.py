"""Bradley–Terry and K-way ranking losses against hand-worked numbers and a plain loop."""

from __future__ import annotations

import itertools
import math
import random

import torch

from rlfm.data.preferences import ranking_levels
from rlfm.losses.preference import (
    bradley_terry_loss,
    pair_differences,
    pair_mask,
    ranking_loss,
)


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def test_bradley_terry_hand_values():
    """−log σ(d): d = 0 → ln 2 = 0.693147; d = 1 → ln(1 + e⁻¹) = 0.313262; d = −1 →
    ln(1 + e) = 1.313262; d = 2 → 0.126928."""
    got = bradley_terry_loss(t(0.0, 3.0, 1.0, 5.0), t(0.0, 2.0, 2.0, 3.0), reduction="none")
    torch.testing.assert_close(got, t(0.693147, 0.313262, 1.313262, 0.126928), atol=1e-6, rtol=0)
    mean = bradley_terry_loss(t(0.0, 3.0), t(0.0, 2.0))
    assert math.isclose(float(mean), (0.693147 + 0.313262) / 2, abs_tol=1e-6)


def test_bradley_terry_margin():
    """With margin m the loss is −log σ(d − m): d = 1, m = 1 → ln 2 = 0.693147; d = 1,
    m = 0.5 → ln(1 + e^−0.5) = 0.474077; per-pair margins (1, 0.5) give both."""
    assert math.isclose(
        float(bradley_terry_loss(t(1.0), t(0.0), margin=1.0)), 0.693147, abs_tol=1e-6
    )
    got = bradley_terry_loss(t(1.0, 1.0), t(0.0, 0.0), margin=t(1.0, 0.5), reduction="none")
    torch.testing.assert_close(got, t(0.693147, 0.474077), atol=1e-6, rtol=0)


def test_loss_is_stable_for_large_gaps():
    """A gap of ±100 gives a finite loss (≈ 0 and ≈ 100), not inf/nan."""
    big = bradley_terry_loss(t(100.0, -100.0), t(0.0, 0.0), reduction="none")
    torch.testing.assert_close(big, t(0.0, 100.0), atol=1e-4, rtol=0)


def test_ranking_loss_hand_values_with_ties_and_padding():
    """Rewards (0, −1, 1). Ranking [2, 0, 1]: pairs with gaps 1, 2, 1 → (0.313262 + 0.126928
    + 0.313262)/3 = 0.251150. Ranking [[2, 0], 1] (tie): gaps 2, 1 → 0.220095. A batch of the
    first and a K = 2 pair with equal rewards (padded to K = 3) → (0.251150 + 0.693147)/2 =
    0.472149."""
    r = t(0.0, -1.0, 1.0)[None]
    lv = torch.tensor([ranking_levels([2, 0, 1], 3)])
    assert math.isclose(float(ranking_loss(r, lv)), 0.251150, abs_tol=1e-6)
    lv_tie = torch.tensor([ranking_levels([[2, 0], 1], 3)])
    assert math.isclose(float(ranking_loss(r, lv_tie)), 0.220095, abs_tol=1e-6)
    rewards = torch.tensor([[0.0, -1.0, 1.0], [0.0, 0.0, 123.0]])  # 123: padding, ignored
    levels = torch.tensor([[1, 2, 0], [0, 1, -1]])
    assert math.isclose(float(ranking_loss(rewards, levels)), 0.472149, abs_tol=1e-6)
    assert pair_mask(levels).sum() == 4


def test_ranking_loss_equals_plain_loop_over_pairs():
    """Random rankings of K = 2..6 with ties and padding, random margins: the vectorised loss
    and its gradient equal a Python loop over each ranking's pairs (mean per ranking, then
    over rankings)."""
    rng = random.Random(0)
    B, K = 12, 6
    rewards = torch.randn(B, K, dtype=torch.float64, requires_grad=True)
    margin = torch.rand(B, dtype=torch.float64)
    levels = torch.full((B, K), -1)
    for b in range(B):
        k = rng.randint(2, K)
        lv = [rng.randint(0, 2) for _ in range(k)]
        if len(set(lv)) == 1:
            lv[0] = lv[0] + 1
        levels[b, :k] = torch.tensor(lv)
    loss = ranking_loss(rewards, levels, margin)
    (g_vec,) = torch.autograd.grad(loss, rewards)
    per = []
    for b in range(B):
        k = int((levels[b] >= 0).sum())
        terms = [
            bradley_terry_loss(rewards[b, i : i + 1], rewards[b, j : j + 1], margin[b])
            for i, j in itertools.product(range(k), range(k))
            if levels[b, i] < levels[b, j]
        ]
        per.append(torch.stack(terms).mean())
    loop = torch.stack(per).mean()
    (g_loop,) = torch.autograd.grad(loop, rewards)
    torch.testing.assert_close(loss.double(), loop.double(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g_vec, g_loop, atol=1e-6, rtol=1e-6)


def test_pair_differences_orient_winner_minus_loser():
    """pair_differences lists r_w − r_l per pair: ranking [2, 0, 1] with rewards (0, −1, 1)
    gives the gaps {1, 2, 1} (all positive: the rewards agree with the ranking)."""
    d = pair_differences(t(0.0, -1.0, 1.0)[None], torch.tensor([[1, 2, 0]]))
    assert sorted(d.tolist()) == [1.0, 1.0, 2.0]
