"""PPO math against numbers worked out by hand."""

import math

import pytest
import torch

from rlfm.losses.ppo import (
    AdaptiveKLController,
    explained_variance,
    gae,
    kl_per_token,
    minibatch_normalized,
    policy_loss,
    shaped_rewards,
    value_loss,
)
from rlfm.losses.sequence import masked_mean, token_entropy, token_logprobs, whiten


def test_kl_estimators_by_hand():
    """π = 0.5, π_ref = 0.25: k1 = ln 2 = 0.693147; ρ = 0.5, k3 = (0.5 − 1) − ln 0.5 = 0.193147."""
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert math.isclose(float(kl_per_token(lp, ref, "k1")), 0.693147, rel_tol=1e-5)
    assert math.isclose(float(kl_per_token(lp, ref, "k3")), 0.193147, rel_tol=1e-5)
    assert float(kl_per_token(ref, lp, "k3")) >= 0  # k3 is never negative


def test_shaped_rewards_by_hand():
    """β = 0.5: row 0 = (−0.05, −0.1, −0.15 + 1) ; row 1 (one token) = (−0.25 + 2, 0, 0)."""
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    r = shaped_rewards(torch.tensor([1.0, 2.0]), kl, mask, kl_coef=0.5)
    torch.testing.assert_close(r, torch.tensor([[-0.05, -0.1, 0.85], [1.75, 0.0, 0.0]]))


def test_gae_by_hand():
    """γ = 1, λ = 0.5, R = (0, 0, 1), V = (0.5, 0.6, 0.7): δ = (0.1, 0.1, 0.3),
    A = (0.1 + 0.5·0.25, 0.1 + 0.5·0.3, 0.3) = (0.225, 0.25, 0.3), returns = A + V."""
    adv, ret = gae(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 1.0, 0.5
    )
    torch.testing.assert_close(adv, torch.tensor([[0.225, 0.25, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.725, 0.85, 1.0]]))


def test_gae_ignores_padding():
    """A padded position's value (9.0) and reward never leak into earlier advantages:
    R = (0, 2, ·), V = (0.5, 1.0, ·), λ = 0.5: A = (0.5 + 0.5·1.0, 1.0, 0) = (1.0, 1.0, 0)."""
    adv, ret = gae(
        torch.tensor([[0.0, 2.0, 5.0]]),
        torch.tensor([[0.5, 1.0, 9.0]]),
        torch.tensor([[1, 1, 0]]),
        1.0,
        0.5,
    )
    torch.testing.assert_close(adv, torch.tensor([[1.0, 1.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.5, 2.0, 0.0]]))


def test_policy_loss_by_hand():
    """ε = 0.2, A = 1: ρ = 1.5 → max(−1.5, −1.2) = −1.2 (clipped); ρ = 0.5 → max(−0.5, −0.8) = −0.5.
    Loss = −0.85, clip fraction 1/2."""
    old = torch.zeros(1, 2)
    lp = torch.log(torch.tensor([[1.5, 0.5]]))
    loss, stats = policy_loss(lp, old, torch.ones(1, 2), torch.ones(1, 2), clip_eps=0.2)
    assert math.isclose(float(loss), -0.85, rel_tol=1e-5)
    assert math.isclose(float(stats["clip_frac"]), 0.5)
    assert math.isclose(float(stats["ratio"]), 1.0, rel_tol=1e-5)


def test_policy_loss_negative_advantage_clips_low_ratio():
    """A = −1, ρ = 0.5: max(0.5, 0.8) = 0.8 — a worse action is not pushed below 1 − ε for free."""
    loss, stats = policy_loss(
        torch.log(torch.tensor([[0.5]])), torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1)
    )
    assert math.isclose(float(loss), 0.8, rel_tol=1e-5) and float(stats["clip_frac"]) == 1.0


def test_policy_gradient_vanishes_when_clipped():
    """Past the clip range the surrogate is flat: no gradient reaches the log-prob."""
    lp = torch.log(torch.tensor([[1.5]])).requires_grad_()
    loss, _ = policy_loss(lp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1))
    loss.backward()
    assert float(lp.grad) == 0.0


def test_value_loss_by_hand():
    """V = 1.0, V_old = 0.5, R = 1.2, ε = 0.2: (V − R)² = 0.04, V_clip = 0.7, (V_clip − R)² = 0.25;
    loss = ½·max = 0.125."""
    loss, _ = value_loss(
        torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[1.2]]), torch.ones(1, 1)
    )
    assert math.isclose(float(loss), 0.125, rel_tol=1e-5)


def test_adaptive_kl_controller_by_hand():
    """β = 0.1, target 6, horizon 10000, 512 samples: KL 9 → e = 0.2, β = 0.1·1.01024 = 0.101024;
    KL 3 → e = −0.2, β = 0.1·0.98976 = 0.098976; target None keeps β."""
    assert math.isclose(
        AdaptiveKLController(0.1, 6.0, 10000).update(9.0, 512), 0.101024, rel_tol=1e-6
    )
    assert math.isclose(
        AdaptiveKLController(0.1, 6.0, 10000).update(3.0, 512), 0.098976, rel_tol=1e-6
    )
    assert AdaptiveKLController(0.1, None).update(100.0, 512) == 0.1


def test_whiten_by_hand():
    """x = (1, 2, 3, 4): mean 2.5, unbiased var 5/3, std 1.290994 → ±0.387298, ±1.161895;
    without the mean shift the mean 2.5 is added back; masked entries are 0."""
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 1, 0]])
    expected = torch.tensor([[-1.161895, -0.387298, 0.387298, 1.161895, 0.0]])
    torch.testing.assert_close(whiten(x, m), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        whiten(x, m, shift_mean=False), (expected + 2.5) * m, atol=1e-5, rtol=1e-5
    )


def test_token_logprobs_use_temperature():
    """Logits (2, 0) at T = 2 → z = (1, 0): log π(0) = 1 − ln(e + 1) = −0.313262."""
    lp = token_logprobs(torch.tensor([[[2.0, 0.0]]]), torch.tensor([[0]]), temperature=2.0)
    assert math.isclose(float(lp), -0.313262, rel_tol=1e-5)
    full = torch.randn(2, 3, 5)
    tok = torch.randint(0, 5, (2, 3))
    ref = (full / 0.7).log_softmax(-1).gather(-1, tok[..., None])[..., 0]
    torch.testing.assert_close(token_logprobs(full, tok, 0.7), ref)


def test_entropy_and_masked_mean():
    """Uniform over 4 tokens: H = ln 4 = 1.386294; masked mean of (1, 3, [5]) = 2."""
    assert math.isclose(float(token_entropy(torch.zeros(1, 1, 4))), 1.386294, rel_tol=1e-5)
    assert float(masked_mean(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([1, 1, 0]))) == 2.0


def test_explained_variance():
    """V = R gives 1; V = 0 gives 0."""
    r, m = torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3)
    assert explained_variance(r, r, m) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 3), r, m) == pytest.approx(0.0)


# ---------------------------------------------------------------------------- control


def test_gae_time_major_by_hand():
    """γ = λ = 0.5, two environments, three steps, V(s_t) = 0.5, r_t = 1.

    env 0, no episode end, V(s'_2) = 2: δ = (1 + 0.25 − 0.5, same, 1 + 1 − 0.5) = (0.75, 0.75,
    1.5); A_2 = 1.5, A_1 = 0.75 + 0.25·1.5 = 1.125, A_0 = 0.75 + 0.25·1.125 = 1.03125.
    env 1, terminated at t = 0 (V(s'_0) = 9 is ignored), cut by a time limit at t = 1 with the
    final observation worth 2 (bootstrapped): δ = (0.5, 1 + 1 − 0.5, 0.75) = (0.5, 1.5, 0.75);
    neither end carries anything back: A = (0.5, 1.5, 0.75). Returns = A + 0.5."""
    from rlfm.losses.ppo import gae_time_major

    rewards = torch.ones(3, 2)
    values = torch.full((3, 2), 0.5)
    next_values = torch.tensor([[0.5, 9.0], [0.5, 2.0], [2.0, 0.5]])
    terminated = torch.tensor([[0, 1], [0, 0], [0, 0]])
    done = torch.tensor([[0, 1], [0, 1], [0, 0]])
    adv, ret = gae_time_major(rewards, values, next_values, terminated, done, 0.5, 0.5)
    expected = torch.tensor([[1.03125, 0.5], [1.125, 1.5], [1.5, 0.75]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + 0.5)


def test_gae_time_major_matches_a_plain_loop():
    """Vectorised GAE = Σ_k (γλ)^k δ_{t+k} summed step by step up to each episode's end."""
    from rlfm.losses.ppo import gae_time_major

    g = torch.Generator().manual_seed(0)
    T, N, gamma, lam = 17, 5, 0.97, 0.9
    rewards, values, next_values = (
        torch.randn(T, N, generator=g, dtype=torch.float64) for _ in range(3)
    )
    done = torch.rand(T, N, generator=g) < 0.2
    terminated = done & (torch.rand(T, N, generator=g) < 0.5)
    adv, ret = gae_time_major(rewards, values, next_values, terminated, done, gamma, lam)
    expected = torch.zeros(T, N, dtype=torch.float64)
    for n in range(N):
        for t in range(T):
            total, k = 0.0, t
            while k < T:
                bootstrap = 0.0 if terminated[k, n] else gamma * float(next_values[k, n])
                delta = float(rewards[k, n]) + bootstrap - float(values[k, n])
                total += (gamma * lam) ** (k - t) * delta
                if done[k, n]:
                    break
                k += 1
            expected[t, n] = total
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_lagrangian_advantages_by_hand():
    """λ = 1: (A_r − A_c) / 2 = ((2 − 1) / 2, (0 − 4) / 2) = (0.5, −2); λ = 0 leaves A_r."""
    from rlfm.losses.ppo import lagrangian_advantages

    a_r, a_c = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 4.0])
    torch.testing.assert_close(lagrangian_advantages(a_r, a_c, 1.0), torch.tensor([0.5, -2.0]))
    torch.testing.assert_close(lagrangian_advantages(a_r, a_c, 0.0), a_r)


def test_lagrange_multiplier_step_by_hand():
    """lr = 0.1, d = 25: cost 35 → λ = 0.5 + 0.1·10 = 1.5; cost 5 → 0.5 − 2 < 0 → 0."""
    from rlfm.losses.ppo import lagrange_multiplier_step

    assert math.isclose(lagrange_multiplier_step(0.5, 35.0, 25.0, 0.1), 1.5)
    assert lagrange_multiplier_step(0.5, 5.0, 25.0, 0.1) == 0.0


def test_losses_without_a_mask_equal_an_all_ones_mask():
    """Control passes mask=None (every step counts): the same loss and statistics as a mask of
    ones; value clipping None equals an infinite clip range (plain ½·E[(V − R)²])."""
    g = torch.Generator().manual_seed(0)
    lp, old, adv, v, v_old, ret = (torch.randn(12, generator=g) for _ in range(6))
    ones = torch.ones(12)
    loss, stats = policy_loss(lp * 0.1, old * 0.1, adv, None, 0.2)
    ref, ref_stats = policy_loss(lp * 0.1, old * 0.1, adv, ones, 0.2)
    torch.testing.assert_close(loss, ref)
    for k in ref_stats:
        torch.testing.assert_close(stats[k], ref_stats[k], msg=k)
    torch.testing.assert_close(
        value_loss(v, v_old, ret, None, 0.2)[0], value_loss(v, v_old, ret, ones)[0]
    )
    plain = value_loss(v, v_old, ret, None, None)[0]
    torch.testing.assert_close(plain, value_loss(v, v_old, ret, ones, math.inf)[0])
    torch.testing.assert_close(plain, 0.5 * ((v - ret) ** 2).mean())


@pytest.mark.parametrize("B, batch_size", [(64, 16), (70, 16), (65, 16), (8, 8), (5, 1)])
def test_minibatch_normalized_equals_whiten_per_minibatch(B, batch_size):
    """Each minibatch of consecutive entries normalised on its own, as ``whiten`` of that
    minibatch would (a last, shorter one too; a single entry stays as it is)."""
    adv = torch.randn(B, generator=torch.Generator().manual_seed(B)) * 3 + 1
    out = minibatch_normalized(adv, batch_size)
    for start in range(0, B, batch_size):
        part = adv[start : start + batch_size]
        expected = whiten(part, torch.ones_like(part)) if len(part) > 1 else part
        torch.testing.assert_close(out[start : start + batch_size], expected)
