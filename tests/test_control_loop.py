"""rlfm.control against the plain formulas: a rollout's normalised observations, log-probs
and values against a step-by-step computation, and the PPO update against a plain loop of
minibatch steps."""

from __future__ import annotations

import copy

import numpy as np
import torch

from rlfm.control import Collector, UpdateSettings, adam, make_model, ppo_update
from rlfm.engine import Engine
from rlfm.offline.envs import make_vector_env


def stream_normalized(raw: np.ndarray, clip: float = 10.0, eps: float = 1e-4) -> np.ndarray:
    """Observation t normalised by the mean and variance of observations 0..t, with the prior
    (mean 0, variance 1, weight eps) RunningMeanStd starts from. (T, N, O) -> (T, N, O)."""
    T, N, O = raw.shape  # noqa: E741
    out = np.empty_like(raw, dtype=np.float64)
    for t in range(T):
        seen = raw[: t + 1].reshape(-1, O).astype(np.float64)
        n = len(seen)
        total = eps + n
        mean = seen.sum(0) / total
        m2 = eps * 1.0 + ((seen - seen.mean(0)) ** 2).sum(0) + seen.mean(0) ** 2 * eps * n / total
        out[t] = np.clip((raw[t] - mean) / np.sqrt(m2 / total + 1e-8), -clip, clip)
    return out


def test_rollout_equals_a_step_by_step_computation():
    """Hopper-v5, 2 environments × 300 steps (episodes end inside): each step's observation is
    normalised by the statistics of the stream up to and including it; log π_old(a|s) and
    V(s), computed once per rollout, equal the model applied to each step on its own; V(s')
    is the next step's value within an episode."""
    torch.manual_seed(0)
    envs = make_vector_env("Hopper-v5", 2)
    model = make_model(envs.envs[0], hidden=(32, 32))
    ro = Collector(envs, seed=0).collect(model, 300)
    assert ro.done.any()
    np.testing.assert_allclose(ro.obs.numpy(), stream_normalized(ro.raw_obs.numpy()), atol=2e-5)
    with torch.no_grad():
        for t in range(300):
            lp = model.log_prob_entropy(ro.obs[t], ro.actions[t])[0]
            torch.testing.assert_close(ro.logprobs[t], lp, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ro.values[t], model.value(ro.obs[t]), rtol=1e-5, atol=1e-5)
    within = ~ro.done[:-1]
    torch.testing.assert_close(ro.next_values[:-1][within], ro.values[1:][within])


def plain_ppo_update(model, optimizer, obs, actions, logprobs, advantages, returns, s) -> None:
    """PPO's clipped objective as the papers write it, one minibatch at a time (indices drawn
    from one permutation per epoch, advantages normalised within each minibatch)."""
    B = len(obs)
    for _ in range(s.epochs):
        order = torch.randperm(B)
        for start in range(0, B, s.batch_size):
            idx = order[start : start + s.batch_size]
            adv = advantages[idx]
            adv = (adv - adv.mean()) / torch.sqrt(adv.var() + 1e-8)
            logp, entropy = model.log_prob_entropy(obs[idx], actions[idx])
            ratio = torch.exp(logp - logprobs[idx])
            clipped = ratio.clamp(1 - s.clip_eps, 1 + s.clip_eps)
            pl = -torch.min(ratio * adv, clipped * adv).mean()
            vl = 0.5 * ((model.value(obs[idx]) - returns[idx]) ** 2).mean()
            loss = pl + s.vf_coef * vl - s.ent_coef * entropy.mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
            optimizer.step()


def test_ppo_update_equals_a_plain_loop():
    """ppo_update (one shuffle per epoch, vectorised advantage normalisation, slices) moves the
    weights exactly as the plain loop does, from the same start and random permutations."""
    torch.manual_seed(0)
    envs = make_vector_env("Pendulum-v1", 2)
    model = make_model(envs.envs[0], hidden=(16, 16), log_std_init=-0.5)
    ro = Collector(envs, seed=0).collect(model, 100)
    B = 200
    obs, actions, logprobs = ro.obs.flatten(0, 1), ro.actions.flatten(0, 1), ro.logprobs.flatten()
    g = torch.Generator().manual_seed(1)
    advantages, returns = torch.randn(B, generator=g), torch.randn(B, generator=g)
    s = UpdateSettings(
        epochs=3,
        batch_size=48,  # 200 = 4 × 48 + 8: a shorter last minibatch
        clip_eps=0.2,
        value_clip=0.0,
        ent_coef=0.01,
        vf_coef=0.5,
        normalize_advantages=True,
        target_kl=None,
        max_grad_norm=0.5,
    )
    plain, start = copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(2)
    stats = ppo_update(
        model,
        adam(model.parameters(), 1e-3),
        Engine.create("cpu", "fp32"),
        obs,
        actions,
        logprobs,
        advantages,
        ro.values.flatten(),
        returns,
        s,
    )
    torch.manual_seed(2)
    plain_ppo_update(
        plain, adam(plain.parameters(), 1e-3), obs, actions, logprobs, advantages, returns, s
    )
    assert stats["minibatch_steps"] == 15
    for (name, a), (_, b) in zip(model.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    moved = [not torch.equal(a, b) for a, b in zip(model.parameters(), start.parameters())]
    assert all(moved)


def test_sde_exploration_is_held_for_sde_sample_freq_steps():
    """A gSDE rollout draws exploration matrices θ at steps 0, 4, 8 (sde_sample_freq 4) and
    every action is μ(s_t) + θᵀz(s_t) with the θ of its block of 4 steps."""
    torch.manual_seed(0)
    envs = make_vector_env("Pendulum-v1", 2)
    model = make_model(envs.envs[0], hidden=(8, 8), sde=True)
    drawn = []
    original = model.exploration

    def spy(n: int) -> torch.Tensor:
        drawn.append(original(n))
        return drawn[-1]

    model.exploration = spy
    ro = Collector(envs, seed=0, sde_sample_freq=4).collect(model, 12)
    assert len(drawn) == 3 and drawn[0].shape == (2, 8, 1)
    with torch.no_grad():
        for t in range(12):
            mean, z = model.pi.forward_features(ro.obs[t])
            theta = drawn[t // 4]
            expected = mean + torch.bmm(z[:, None], theta)[:, 0]
            torch.testing.assert_close(ro.actions[t], expected)
