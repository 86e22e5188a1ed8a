"""Small offline-RL datasets for the decision-transformer tests, written in Minari's format
by scripted controllers (seconds to make, a known spread of behaviour; rlfm's own datasets come
from `rlfm offline make`, which trains PPO policies first).

``speed_run_dataset``: rlfm/SpeedRun-v0 (Box actions, costs; rlfm.offline.speedrun). Each
episode's controller drives towards a target speed u = 0.2 + 1.8·√U, U uniform in [0, 1] (more
fast episodes than slow ones), a = clip(3·(u − v) + N(0, 0.2²), −1, 1), so the episodes span
the reward–cost plane from slow and safe to fast and unsafe. ``cartpole_dataset``: CartPole-v1
(Discrete actions, no costs) with a pole-balancing rule taking a random action with a
probability drawn per episode, so episode lengths (= returns) vary widely.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rlfm.offline.envs import make_env
from rlfm.offline.speedrun import SPEED_RUN

__all__ = ["cartpole_dataset", "episode_buffer", "speed_run_dataset", "write_dataset"]


def episode_buffer(
    i: int, obs: list, acts: list, rews: list, costs: list | None, terminated: bool
) -> Any:
    """A Minari EpisodeBuffer of one episode (observations has one more entry than actions)."""
    from minari.data_collector.episode_buffer import EpisodeBuffer

    T = len(rews)
    infos = {"cost": np.asarray([0.0, *costs])} if costs is not None else {}
    return EpisodeBuffer(
        id=i,
        observations=np.asarray(obs, np.float32),
        actions=np.asarray(acts),
        rewards=[float(r) for r in rews],
        terminations=[False] * (T - 1) + [terminated],
        truncations=[False] * (T - 1) + [not terminated],
        infos=infos,
    )


def write_dataset(root: Path | None, dataset_id: str, buffers: list, env: gym.Env) -> None:
    """Write episode buffers as a Minari dataset under ``root`` (default: Minari's folder)."""
    import minari

    old = os.environ.get("MINARI_DATASETS_PATH")
    if root is not None:
        os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Minari's advice to name an author and an email
            minari.create_dataset_from_buffers(
                dataset_id, buffers, env=env, algorithm_name="scripted controllers"
            )
    finally:
        if root is not None:
            if old is None:
                del os.environ["MINARI_DATASETS_PATH"]
            else:
                os.environ["MINARI_DATASETS_PATH"] = old


def speed_run_dataset(
    root: Path | None, dataset_id: str, episodes: int = 300, seed: int = 0
) -> str:
    """Write a SpeedRun dataset of scripted target-speed controllers (module docstring) under
    ``root``; returns its id."""
    rng = np.random.default_rng(seed)
    env = make_env(SPEED_RUN)
    buffers = []
    for i in range(episodes):
        u = 0.2 + 1.8 * np.sqrt(rng.uniform())  # this episode's target speed (more fast ones)
        o, _ = env.reset(seed=seed * 100_003 + i)
        obs, acts, rews, costs = [o], [], [], []
        done = False
        while not done:
            a = np.clip(3.0 * (u - o[0]) + rng.normal(0, 0.2), -1, 1)
            o, r, term, trunc, info = env.step(np.array([a], np.float32))
            obs.append(o)
            acts.append(np.array([a], np.float32))
            rews.append(r)
            costs.append(info["cost"])
            done = term or trunc
        buffers.append(episode_buffer(i, obs, acts, rews, costs, False))
    write_dataset(root, dataset_id, buffers, env)
    return dataset_id


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
