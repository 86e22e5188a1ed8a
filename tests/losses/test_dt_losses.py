"""losses/dt.py against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlfm.losses.dt import (
    action_cross_entropy,
    action_mse_loss,
    policy_nll_entropy_loss,
    step_prediction_loss,
    temperature_loss,
)


def test_action_mse_counts_real_steps_only():
    """B=1, T=3, A=2; steps 0, 1 real, step 2 padding.
    errors² step 0: (0.5−0)² + (0−1)² = 0.25 + 1 = 1.25; step 1: (1−1)² + (−1−0)² = 1;
    step 2 (padding, ignored): (9−0)² + 0 = 81.
    mean over 2 steps × 2 dims = (1.25 + 1) / 4 = 0.5625."""
    preds = torch.tensor([[[0.5, 0.0], [1.0, -1.0], [9.0, 0.0]]])
    actions = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert action_mse_loss(preds, actions, mask).item() == pytest.approx(0.5625)


def test_action_mse_skips_padded_action_dimensions():
    """Same numbers, but the task has only dimension 0: (0.25 + 0) / 2 = 0.125."""
    preds = torch.tensor([[[0.5, 0.0], [1.0, -1.0], [9.0, 0.0]]])
    actions = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    dims = torch.tensor([[1.0, 0.0]])
    assert action_mse_loss(preds, actions, mask, dims).item() == pytest.approx(0.125)


def test_action_cross_entropy_by_hand():
    """Logits [0, 0] (uniform over 2): −log ½ = ln 2 ≈ 0.6931; logits [ln 3, 0], action 0:
    p = 3/4, −ln ¾ ≈ 0.2877; a padded step with logits [0, 100] and action 0 is ignored.
    mean = (0.6931 + 0.2877) / 2 = 0.4904."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [0.0, 100.0]]])
    actions = torch.tensor([[1, 0, 0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    expected = (math.log(2) + -math.log(0.75)) / 2
    assert action_cross_entropy(logits, actions, mask).item() == pytest.approx(expected, abs=1e-6)


def test_policy_nll_entropy_loss_by_hand():
    """log π = [−1, −3] (real), [−50] (padding); H = [0.5, 1.5], [9].
    NLL = (1 + 3) / 2 = 2; H = (0.5 + 1.5) / 2 = 1; λ = 0.1: loss = 2 − 0.1·1 = 1.9."""
    logp = torch.tensor([[-1.0, -3.0, -50.0]], requires_grad=True)
    ent = torch.tensor([[0.5, 1.5, 9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    lam = torch.tensor(0.1, requires_grad=True)
    loss, nll, h = policy_nll_entropy_loss(logp, ent, mask, lam)
    assert (loss.item(), nll.item(), h.item()) == pytest.approx((1.9, 2.0, 1.0))
    loss.backward()
    # d loss / d log π = −m/2; d loss / d H = −λ·m/2; λ gets no gradient from the policy loss
    assert logp.grad[0].tolist() == pytest.approx([-0.5, -0.5, 0.0])
    assert ent.grad[0].tolist() == pytest.approx([-0.05, -0.05, 0.0])
    assert lam.grad is None or lam.grad.item() == 0.0


def test_temperature_loss_raises_lambda_below_target_entropy():
    """λ = e^{log λ} = 0.2, H = −3, H̄ = −2: L = 0.2·(−3 + 2) = −0.2;
    dL/dlog λ = λ·(H − H̄) = −0.2 < 0, so gradient descent raises λ (entropy too low)."""
    log_lam = torch.tensor(math.log(0.2), requires_grad=True)
    entropy = torch.tensor(-3.0, requires_grad=True)
    loss = temperature_loss(log_lam.exp(), entropy, target_entropy=-2.0)
    assert loss.item() == pytest.approx(-0.2)
    loss.backward()
    assert log_lam.grad.item() == pytest.approx(-0.2)
    assert entropy.grad is None  # H is held constant


def test_step_prediction_loss_by_hand():
    """(1 − 0)² and (2 − 4)² on real steps: (1 + 4) / 2 = 2.5."""
    preds = torch.tensor([[1.0, 2.0, 7.0]])
    targets = torch.tensor([[0.0, 4.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert step_prediction_loss(preds, targets, mask).item() == pytest.approx(2.5)


def test_shapes_are_checked():
    with pytest.raises(AssertionError, match="mask"):
        action_mse_loss(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), torch.ones(1, 2))
    with pytest.raises(AssertionError, match="actions"):
        action_cross_entropy(
            torch.zeros(1, 3, 2), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 3)
        )


def test_all_padding_gives_zero_not_nan():
    loss = action_mse_loss(torch.ones(1, 2, 1), torch.zeros(1, 2, 1), torch.zeros(1, 2))
    assert loss.item() == 0.0
