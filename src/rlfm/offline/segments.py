"""Trajectory segments of Gymnasium episodes and a synthetic oracle that compares them.

Christiano et al. (2017), "Deep reinforcement learning from human preferences": a person is
shown two short clips σ¹, σ² of an agent's behaviour and says which is better; a reward
r̂(o, a) is fit so that

    P(σ¹ ≻ σ²) = σ( Σ_t r̂(o¹_t, a¹_t) − Σ_t r̂(o²_t, a²_t) )

(the Bradley–Terry loss of losses/preference.py over segment sums). Here the person is a
**synthetic oracle** that prefers the segment with the higher true return — as in the paper's
own synthetic-label experiments — optionally wrong with probability ``error_rate`` (the paper
assumes a 10% chance of a random answer).

Episodes come from a simple behaviour policy: ``random`` (uniform actions) or ``sticky``
(uniform actions, each repeated with probability 0.9, which makes longer swings and so more
varied returns). A segment is ``length`` consecutive steps of one episode (non-overlapping;
a short tail is dropped). Its features per step are [observation, action]: a discrete action
as a one-hot vector, a bounded continuous action rescaled to [−1, 1].
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from rlfm.errors import ConfigError, DataError

Behaviour = Literal["random", "sticky"]


@dataclass
class Episode:
    """One episode: per-step features [o_t, a_t] and true rewards."""

    features: np.ndarray  # (T, F) float32 observation and encoded action of each step
    rewards: np.ndarray  # (T,) float64 the environment's reward of each step


@dataclass
class Segments:
    """Fixed-length pieces of episodes."""

    features: torch.Tensor  # (N, L, F) float32 [o_t, a_t] of each step of each segment
    returns: torch.Tensor  # (N,) float64 true return Σ_t r_t of each segment
    episode: torch.Tensor  # (N,) int64 the episode each segment comes from


def make_env(env_id: str) -> Any:
    """``gymnasium.make(env_id)`` with a ConfigError naming the id when it is unknown."""
    import gymnasium as gym

    try:
        return gym.make(env_id)
    except gym.error.Error as e:
        raise ConfigError(f"env: cannot make Gymnasium environment {env_id!r}: {e}") from None


def encode_action(space: Any, action: Any) -> np.ndarray:
    """A Discrete action as one-hot, a bounded Box action rescaled to [−1, 1], else as is."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        out = np.zeros(int(space.n), dtype=np.float32)
        out[int(action) - int(space.start)] = 1.0
        return out
    a = np.asarray(action, dtype=np.float32).reshape(-1)
    if (
        isinstance(space, spaces.Box)
        and np.all(np.isfinite(space.low))
        and np.all(np.isfinite(space.high))
    ):
        low, high = space.low.reshape(-1), space.high.reshape(-1)
        return (2 * (a - low) / np.maximum(high - low, 1e-8) - 1).astype(np.float32)
    return a


def collect_episodes(
    env_id: str,
    n_episodes: int,
    *,
    policy: Behaviour = "random",
    seed: int = 0,
    max_steps: int | None = None,
) -> list[Episode]:
    """Roll out ``n_episodes`` of the behaviour policy (reset seeds seed, seed+1, ...)."""
    from gymnasium import spaces

    env = make_env(env_id)
    if not isinstance(env.observation_space, spaces.Box):
        raise ConfigError(f"env: {env_id} has {env.observation_space}, expected a Box observation")
    env.action_space.seed(seed)
    rng = random.Random(seed)
    episodes = []
    for i in range(n_episodes):
        obs, _ = env.reset(seed=seed + i)
        feats, rewards = [], []
        action = env.action_space.sample()
        done = False
        while not done and (max_steps is None or len(rewards) < max_steps):
            if policy == "random" or rng.random() >= 0.9:
                action = env.action_space.sample()
            next_obs, r, terminated, truncated, _ = env.step(action)
            o = np.asarray(obs, dtype=np.float32).reshape(-1)
            feats.append(np.concatenate([o, encode_action(env.action_space, action)]))
            rewards.append(float(r))
            obs, done = next_obs, terminated or truncated
        episodes.append(Episode(np.stack(feats), np.asarray(rewards, dtype=np.float64)))
    env.close()
    return episodes


def cut_segments(episodes: list[Episode], length: int) -> Segments:
    """Non-overlapping segments of ``length`` steps (each episode's short tail is dropped)."""
    feats, rets, eps = [], [], []
    for e, ep in enumerate(episodes):
        for start in range(0, len(ep.rewards) - length + 1, length):
            feats.append(ep.features[start : start + length])
            rets.append(ep.rewards[start : start + length].sum())
            eps.append(e)
    if len(feats) < 2:
        raise DataError(
            f"segments: {len(feats)} segment(s) of {length} steps from {len(episodes)} episodes; "
            "collect more episodes or shorten --segment-length"
        )
    return Segments(
        torch.from_numpy(np.stack(feats)),
        torch.tensor(rets, dtype=torch.float64),
        torch.tensor(eps, dtype=torch.long),
    )


def oracle_pairs(
    returns: torch.Tensor, n_pairs: int, *, error_rate: float = 0.0, seed: int = 0
) -> torch.Tensor:
    """``n_pairs`` labelled comparisons (winner, loser) of random segment pairs: the oracle
    prefers the higher true return and answers the other way with probability ``error_rate``;
    pairs with equal returns are skipped. (N,) -> (n_pairs, 2) int64."""
    (N,) = returns.shape
    if float(returns.max() - returns.min()) == 0.0:
        raise DataError(
            "segments: every segment has the same true return (e.g. CartPole's +1 per step), so "
            "the oracle has no preference; use an environment whose reward varies (Pendulum-v1)"
        )
    rng = random.Random(seed)
    out = []
    while len(out) < n_pairs:
        i, j = rng.randrange(N), rng.randrange(N)
        if returns[i] == returns[j]:
            continue
        w, lo = (i, j) if returns[i] > returns[j] else (j, i)
        if rng.random() < error_rate:
            w, lo = lo, w
        out.append((w, lo))
    return torch.tensor(out, dtype=torch.long)


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation (Pearson correlation of ranks; ties get average ranks)."""
    assert x.shape == y.shape and x.ndim == 1, f"{tuple(x.shape)} vs {tuple(y.shape)}"
    rx, ry = _ranks(x.double()), _ranks(y.double())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float((rx.pow(2).sum() * ry.pow(2).sum()).sqrt())
    return float((rx * ry).sum()) / denom if denom > 0 else float("nan")


def _ranks(v: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(v)
    ranks = torch.empty_like(v)
    ranks[order] = torch.arange(len(v), dtype=v.dtype)
    for value in torch.unique(v):  # average the ranks of ties
        tied = v == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks
