"""PPO for language models with a KL penalty to the reference (SFT) policy.

Objective (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022, eq. 2):

    maximise  E_{x, y ~ π_RL} [ r_θ(x, y) − β · log(π_RL(y|x) / π_SFT(y|x)) ]

as a per-token reward (the KL penalty at every token, the reward-model score at the last real
token; a fixed penalty score replaces it when the response never produced EOS):

    R_t = −β · KL_t + 1[t = last] · score

then GAE (Schulman et al. 2016) with γ = 1, λ = 0.95, the clipped surrogate policy loss and the
clipped value loss of PPO (Schulman et al. 2017), and the adaptive KL coefficient of Ziegler et
al. (2019). All tensors are (B, T) over response tokens with a 0/1 ``mask``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from rlfm.losses.sequence import masked_mean, masked_var


def kl_per_token(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: Literal["k1", "k3"] = "k1"
) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π. (B, T) -> (B, T).

    k1 = log π − log π_ref                      (unbiased, can be negative per token)
    k3 = (ρ − 1) − log ρ,  ρ = π_ref / π        (unbiased, always ≥ 0; Schulman 2020, "Approximating KL")
    """
    assert logprobs.shape == ref_logprobs.shape
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio  # (ρ − 1) − log ρ with log ρ = −log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (k1 or k3)")


def shaped_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """Per-token rewards R_t = −β·KL_t, plus the sequence score at the last real token.

    scores: (B,) reward-model scores (already replaced by the missing-EOS penalty where needed);
    kl: (B, T) per-token KL estimates; mask: (B, T) response mask (1 up to and incl. the last
    token). Returns (B, T), zero where mask is 0.
    """
    B, T = kl.shape  # batch, response time
    assert scores.shape == (B,) and mask.shape == (B, T)
    m = mask.to(kl.dtype)
    rewards = -kl_coef * kl * m
    last = (m.sum(1).long() - 1).clamp(min=0)  # index of each row's last real token
    rewards[torch.arange(B), last] += scores.to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens. (B, T) x3 -> advantages, returns.

    δ_t = R_t + γ·V_{t+1} − V_t          (V after the last real token is 0)
    A_t = δ_t + γλ·A_{t+1}
    returns_t = A_t + V_t
    """
    assert rewards.shape == values.shape == mask.shape
    B, T = rewards.shape  # batch, response time
    m = mask.to(rewards.dtype)
    values = values * m
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]  # padding carries nothing back
        next_value = values[:, t]
        advantages[:, t] = next_adv
    return advantages, (advantages + values) * m


def _mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the masked-in entries, or over all of them without a mask."""
    return x.mean() if mask is None else masked_mean(x, mask)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate loss, masked mean over tokens. (B, T) x4 -> scalar, stats.

        ρ_t = exp(log π(y_t) − log π_old(y_t))
        L = −E[min(ρ_t·A_t, clip(ρ_t, 1 − ε, 1 + ε)·A_t)]

    ``mask`` None: every entry counts (control: (B,) steps, no padding).
    stats: clip fraction (share of tokens where the clipped term was chosen), approx-KL
    ½·E[(log ρ)²] between old and new policy, mean ratio.
    """
    assert logprobs.shape == old_logprobs.shape == advantages.shape
    assert mask is None or mask.shape == logprobs.shape
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = _mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_frac": _mean((clipped > unclipped).to(ratio.dtype), mask),
            "approx_kl": _mean(0.5 * log_ratio**2, mask),
            "ratio": _mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor | None,
    clip_eps: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss, masked mean over tokens. (B, T) x4 -> scalar, stats.

    V_clip = V_old + clip(V − V_old, −ε, ε)
    L = ½·E[max((V − R)², (V_clip − R)²)]

    ``clip_eps`` None: no clipping, L = ½·E[(V − R)²]. ``mask`` None: every entry counts.
    """
    assert values.shape == old_values.shape == returns.shape
    assert mask is None or mask.shape == values.shape
    if clip_eps is None:
        return 0.5 * _mean((values - returns) ** 2, mask), {
            "value_clip_frac": torch.zeros((), dtype=values.dtype)
        }
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    err = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    loss = 0.5 * _mean(err, mask)
    with torch.no_grad():
        stats = {
            "value_clip_frac": _mean(
                ((clipped - returns) ** 2 > (values - returns) ** 2).to(values.dtype), mask
            )
        }
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var[R − V] / Var[R] over masked-in tokens (1 = perfect value function, ≤ 0 = useless)."""
    var_r = masked_var(returns, mask)
    if float(var_r) == 0.0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / var_r)


@dataclass
class AdaptiveKLController:
    """β that steers the measured KL toward a target (Ziegler et al. 2019, eq. 2):

        e_t = clip((KL_t − KL_target) / KL_target, −0.2, 0.2)
        β_{t+1} = β_t · (1 + K_β · e_t),   K_β = n_steps / horizon

    ``target=None`` keeps β fixed. Its state (β) goes into every checkpoint.
    """

    kl_coef: float
    target: float | None = 6.0
    horizon: int = 10000

    def update(self, kl: float, n_steps: int) -> float:
        """Update β after a batch of ``n_steps`` samples whose mean KL was ``kl``; returns β."""
        if self.target is not None:
            error = min(max((kl - self.target) / self.target, -0.2), 0.2)
            self.kl_coef *= 1.0 + error * n_steps / self.horizon
        return self.kl_coef

    def state_dict(self) -> dict[str, float | int | None]:
        return {"kl_coef": self.kl_coef, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.kl_coef = float(state["kl_coef"])


# ---------------------------------------------------------------------------- control


def gae_time_major(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    done: torch.Tensor,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016) over a rollout of N parallel environments. (T, N) x5 ->
    advantages, returns, each (T, N).

        δ_t = r_t + γ·(1 − terminated_t)·V(s'_t) − V(s_t)
        A_t = δ_t + γλ·(1 − done_t)·A_{t+1}          (A_T = 0)
        returns_t = A_t + V(s_t)

    ``next_values[t]`` is V(s'_t), the value of the state step t led to: ``values[t + 1]``
    within an episode, the value of the final observation where an episode was cut by a time
    limit (``done`` but not ``terminated``: bootstrapped, the episode would have gone on), and
    anything where it ``terminated`` (multiplied by 0). ``done`` = terminated or truncated
    stops the recursion, so nothing flows back across an episode boundary.
    """
    assert rewards.ndim == 2, f"rewards {tuple(rewards.shape)}: expected (T, N)"
    T, N = rewards.shape  # time, environments
    for name, t in (("values", values), ("next_values", next_values)):
        assert t.shape == (T, N), f"{name} {tuple(t.shape)} != {(T, N)}"
    assert terminated.shape == done.shape == (T, N), (
        f"{tuple(terminated.shape)}, {tuple(done.shape)}"
    )
    alive = 1.0 - terminated.to(rewards.dtype)  # bootstrap unless the MDP ended
    carry = 1.0 - done.to(rewards.dtype)  # continue the recursion within an episode
    deltas = rewards + gamma * alive * next_values - values
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros(N, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_adv = deltas[t] + gamma * lam * carry[t] * next_adv
        advantages[t] = next_adv
    return advantages, advantages + values


def minibatch_normalized(
    advantages: torch.Tensor, batch_size: int, eps: float = 1e-8
) -> torch.Tensor:
    """Advantages normalised within each minibatch of ``batch_size`` consecutive entries (the
    last one may be shorter; one of a single entry is left as it is). (B,) -> (B,).

        Â_i ↦ (Â_i − mean_m) / √(var_m + ε)   over the minibatch m holding i (var unbiased)

    The same numbers as ``whiten`` on each minibatch, computed for all full minibatches at once
    (one set of operations per epoch instead of one per minibatch).
    """
    (B,) = advantages.shape  # steps of the (permuted) rollout
    full = B - B % batch_size
    out = advantages.clone()
    if full and batch_size > 1:
        m = advantages[:full].view(-1, batch_size)
        var, mean = torch.var_mean(m, dim=1, keepdim=True)  # unbiased
        out[:full] = ((m - mean) * torch.rsqrt(var + eps)).flatten()
    rest = advantages[full:]
    if rest.numel() > 1:
        var, mean = torch.var_mean(rest)
        out[full:] = (rest - mean) * torch.rsqrt(var + eps)
    return out


def lagrangian_advantages(
    advantages: torch.Tensor, cost_advantages: torch.Tensor, multiplier: float
) -> torch.Tensor:
    """The PPO-Lagrangian advantage (Ray, Achiam & Amodei 2019, "Benchmarking Safe Exploration
    in Deep RL"): the policy ascends the Lagrangian J_r − λ·J_c, rescaled by 1 / (1 + λ) so its
    size does not grow with λ. (...) x2 -> (...).

        A = (A_r − λ·A_c) / (1 + λ)
    """
    assert advantages.shape == cost_advantages.shape, (
        f"{tuple(advantages.shape)} != {tuple(cost_advantages.shape)}"
    )
    assert multiplier >= 0, f"multiplier {multiplier} < 0"
    return (advantages - multiplier * cost_advantages) / (1.0 + multiplier)


def lagrange_multiplier_step(
    multiplier: float, episode_cost: float, cost_limit: float, lr: float
) -> float:
    """One projected gradient-ascent step on λ of the Lagrangian J_r − λ·(J_c − d): λ grows
    while the mean episode cost J_c is above the limit d and shrinks (never below 0) while it
    is under.

        λ ← max(0, λ + lr·(J_c − d))
    """
    return max(0.0, multiplier + lr * (episode_cost - cost_limit))
