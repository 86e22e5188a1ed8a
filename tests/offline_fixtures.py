"""Small offline-RL datasets for the decision-transformer tests, written in Minari's format.

``SpeedRun``: a one-dimensional runner. The observation is the speed v ∈ [0, 2]; the action
a ∈ [−1, 1] changes it, v' = clip(v + 0.3·a + noise, 0, 2); the reward is v' and the cost is
1 when v' exceeds the speed limit 1 (a velocity constraint, like the CDT paper's Run tasks).
Episodes last 50 steps. Behaviour policies of varied quality drive towards a target speed u
drawn per episode, so the data spans returns from slow and safe to fast and unsafe.

``cartpole_dataset``: CartPole-v1 (Discrete actions) with a pole-balancing rule taking a random
action with a probability drawn per episode, so episode lengths (= returns) vary widely.

The datasets are built from episode buffers with ``minari.create_dataset_from_buffers`` (the
collector of Minari needs jax, which rlfm does not install); the environment spec is stored, so
``recover_environment`` rebuilds the environment from this module's entry point.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

SPEED_RUN = "rlfm_test/SpeedRun-v0"
HORIZON = 50
SPEED_LIMIT = 1.0


class SpeedRun(gym.Env):
    """See the module docstring."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0.0, 2.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.v = 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.v = float(self.np_random.uniform(0.0, 0.2))
        return np.array([self.v], np.float32), {"cost": 0.0}

    def step(self, action):
        a = float(np.clip(np.asarray(action).reshape(-1)[0], -1, 1))
        self.v = float(np.clip(self.v + 0.3 * a + self.np_random.normal(0, 0.05), 0.0, 2.0))
        cost = 1.0 if self.v > SPEED_LIMIT else 0.0
        return np.array([self.v], np.float32), self.v, False, False, {"cost": cost}


if SPEED_RUN not in gym.registry:
    gym.register(SPEED_RUN, entry_point="offline_fixtures:SpeedRun", max_episode_steps=HORIZON)


def _buffer(i: int, obs: list, acts: list, rews: list, costs: list | None, terminated: bool):
    from minari.data_collector.episode_buffer import EpisodeBuffer

    T = len(rews)
    infos = {"cost": np.asarray([0.0] + costs)} if costs is not None else {}
    return EpisodeBuffer(
        id=i,
        observations=np.asarray(obs, np.float32),
        actions=np.asarray(acts),
        rewards=list(map(float, rews)),
        terminations=[False] * (T - 1) + [terminated],
        truncations=[False] * (T - 1) + [not terminated],
        infos=infos,
    )


def speed_run_dataset(
    root: Path, dataset_id: str = "test/speedrun/mixed-v0", episodes: int = 300, seed: int = 0
) -> str:
    """Write a SpeedRun dataset under ``root`` (a MINARI_DATASETS_PATH); returns its id."""

    rng = np.random.default_rng(seed)
    env = gym.make(SPEED_RUN)
    buffers = []
    for i in range(episodes):
        u = rng.uniform(0.2, 2.0)  # this episode's behaviour: its target speed
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
        buffers.append(_buffer(i, obs, acts, rews, costs, False))
    _write(root, dataset_id, buffers, env)
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
        buffers.append(_buffer(i, obs, acts, rews, None, bool(term)))
    _write(root, dataset_id, buffers, env)
    return dataset_id


def _write(root: Path, dataset_id: str, buffers: list, env: gym.Env) -> None:
    import os
    import warnings

    import minari

    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Minari's advice to name an author and an email
            minari.create_dataset_from_buffers(
                dataset_id, buffers, env=env, algorithm_name="scripted", description="test data"
            )
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
