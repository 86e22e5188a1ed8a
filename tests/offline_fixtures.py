"""Small offline-RL datasets for the decision-transformer tests, written in Minari's format.

SpeedRun (Box actions, costs): rlfm.offline.speedrun. ``cartpole_dataset``: CartPole-v1
(Discrete actions, no costs) with a pole-balancing rule taking a random action with a
probability drawn per episode, so episode lengths (= returns) vary widely.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

from rlfm.offline.speedrun import episode_buffer, speed_run_dataset, write_dataset

__all__ = ["cartpole_dataset", "speed_run_dataset"]


def cartpole_dataset(
    root: Path, dataset_id: str = "test/cartpole/mixed-v0", episodes: int = 40, seed: int = 0
) -> str:
    """Write a CartPole-v1 dataset (Discrete actions, no costs) under ``root``; returns its id."""
    rng = np.random.default_rng(seed)
    env = gym.make("CartPole-v1")
    buffers = []
    for i in range(episodes):
        eps = rng.uniform(0.0, 0.6)  # chance of a random action in this episode
        o, _ = env.reset(seed=seed * 100_003 + i)
        obs, acts, rews = [o], [], []
        done = term = False
        while not done:
            a = int(o[2] + 0.5 * o[3] > 0) if rng.random() > eps else int(rng.integers(2))
            o, r, term, trunc, _ = env.step(a)
            obs.append(o)
            acts.append(a)
            rews.append(r)
            done = term or trunc
        buffers.append(episode_buffer(i, obs, acts, rews, None, bool(term)))
    write_dataset(root, dataset_id, buffers, env)
    return dataset_id
