"""SpeedRun: a small velocity-constrained task, the decision-transformer demos' environment.

A one-dimensional runner. The observation is the speed v ∈ [0, 2]; the action a ∈ [−1, 1]
changes it, v' = clip(v + 0.3·a + ε, 0, 2), ε ~ N(0, 0.05²); the reward is v' and the cost
is 1 when v' exceeds the speed limit 1 (a velocity constraint, like the CDT paper's Run tasks),
reported in ``info["cost"]`` (0 at reset, so reset and step infos carry the same keys). Episodes
last 50 steps. Registered with Gymnasium as ``rlfm/SpeedRun-v0`` (when rlfm.offline.envs is
imported), so a Minari dataset of it rebuilds it with ``recover_environment()``.

Its datasets are made like any other environment's, by ``rlfm offline make`` (PPO-Lagrangian
policies at several cost limits; configs/control/speedrun.yaml): see ``rlfm dt demo``.
"""

from __future__ import annotations

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
