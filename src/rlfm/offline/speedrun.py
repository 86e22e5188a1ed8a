"""SpeedRun: a small velocity-constrained task and a dataset of it, for the decision-transformer
demos and tests (a stand-in until datasets of MuJoCo tasks are made by `rlfm offline make`).

A one-dimensional runner. The observation is the speed v ∈ [0, 2]; the action a ∈ [−1, 1]
changes it, v' = clip(v + 0.3·a + ε, 0, 2), ε ~ N(0, 0.05²); the reward is v' and the cost
is 1 when v' exceeds the speed limit 1 (a velocity constraint, like the CDT paper's Run tasks),
reported in ``info["cost"]`` (0 at reset, so reset and step infos carry the same keys). Episodes
last 50 steps.

The dataset's behaviour policies drive towards a target speed u = 0.2 + 1.8·√U, U uniform in
[0, 1], drawn per episode (more fast episodes than slow ones), a = clip(3·(u − v) + N(0, 0.2²),
−1, 1), so the episodes span the reward–cost plane from slow and safe to fast and unsafe. It is written with Minari's own API
(``minari.create_dataset_from_buffers``) with the environment's spec, so
``recover_environment()`` rebuilds the task.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

SPEED_RUN = "rlfm/SpeedRun-v0"
HORIZON = 50
SPEED_LIMIT = 1.0


class SpeedRun(gym.Env):
    """See the module docstring."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0.0, 2.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.v = 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
        super().reset(seed=seed)
        self.v = float(self.np_random.uniform(0.0, 0.2))
        return np.array([self.v], np.float32), {"cost": 0.0}

    def step(self, action: Any) -> tuple:
        a = float(np.clip(np.asarray(action).reshape(-1)[0], -1, 1))
        self.v = float(np.clip(self.v + 0.3 * a + self.np_random.normal(0, 0.05), 0.0, 2.0))
        cost = 1.0 if self.v > SPEED_LIMIT else 0.0
        return np.array([self.v], np.float32), self.v, False, False, {"cost": cost}


def register() -> None:
    """Register ``rlfm/SpeedRun-v0`` with Gymnasium (once)."""
    if SPEED_RUN not in gym.registry:
        gym.register(
            SPEED_RUN, entry_point="rlfm.offline.speedrun:SpeedRun", max_episode_steps=HORIZON
        )


register()


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
                dataset_id,
                buffers,
                env=env,
                algorithm_name="scripted target-speed controllers",
                description=__doc__.split("\n\n")[0] if __doc__ else None,
            )
    finally:
        if root is not None:
            if old is None:
                del os.environ["MINARI_DATASETS_PATH"]
            else:
                os.environ["MINARI_DATASETS_PATH"] = old


def speed_run_dataset(
    root: Path | None = None,
    dataset_id: str = "rlfm-demo/speedrun/mixed-v0",
    episodes: int = 300,
    seed: int = 0,
) -> str:
    """Write a SpeedRun dataset (module docstring) under ``root``; returns its id."""
    rng = np.random.default_rng(seed)
    env = gym.make(SPEED_RUN)
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
