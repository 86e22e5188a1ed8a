"""Deployment of a return- and cost-conditioned policy (evaluate/episodes.py), checked by hand
on an environment whose rewards and costs are known in advance."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlfm.errors import DataError
from rlfm.evaluate.episodes import History, run_episodes


class Counter(gym.Env):
    """Step t (from 0) gives reward t + 1 and cost 0.5 at odd t; the observation after it is
    [t + 1, 10(t + 1)]; an episode lasts 3 steps when reset with seed 0, 5 with seed 1."""

    observation_space = gym.spaces.Box(-1e3, 1e3, (2,))
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))

    def __init__(self, cost: bool = True) -> None:
        self.cost = cost

    def reset(self, *, seed=None, options=None):
        self.t, self.length = 0, 3 if seed == 0 else 5
        return np.zeros(2), {}

    def step(self, action):
        r, c = self.t + 1.0, 0.5 * (self.t % 2)
        self.t += 1
        info = {"cost": c} if self.cost else {}
        return np.array([self.t, 10.0 * self.t]), r, self.t == self.length, False, info


def test_histories_returns_and_costs_to_go_by_hand():
    """Two episodes side by side (3 and 5 steps), target return 100, cost threshold 4, window 2:
    R̂ and Ĉ fall by each step's reward and cost; the policy sees the last 2 steps of the
    episodes still running, with their timesteps and its own earlier actions."""
    seen: list[History] = []

    def policy(h: History) -> torch.Tensor:
        seen.append(h)
        return h.timesteps[:, -1:].float() / 10  # action 0.1·t

    eps = run_episodes(
        policy, Counter, [(100.0, 4.0)], 2, state_dim=2, action_dim=1, discrete=False,
        window=2, max_steps=10, need_cost=True,
    )  # fmt: skip
    assert [(e.ret, e.cost, e.length) for e in eps] == [(6.0, 0.5, 3), (15.0, 1.0, 5)]
    assert [len(h.states) for h in seen] == [2, 2, 2, 1, 1]  # the first episode ends after 3
    h = seen[2]  # t = 2, both running: steps 1 and 2
    assert h.timesteps.tolist() == [[1, 2], [1, 2]]
    assert h.states[:, :, 0].tolist() == [[1.0, 2.0], [1.0, 2.0]]
    assert h.returns_to_go.tolist() == [[99.0, 97.0], [99.0, 97.0]]  # 100 − 1, 100 − 1 − 2
    assert h.costs_to_go.tolist() == [[4.0, 3.5], [4.0, 3.5]]  # the cost of step 1 is 0.5
    torch.testing.assert_close(h.actions[:, 0, 0], torch.tensor([0.1, 0.1]))
    h = seen[4]  # t = 4, only the second episode: steps 3 and 4
    assert h.timesteps.tolist() == [[3, 4]]
    assert h.returns_to_go.tolist() == [[94.0, 90.0]] and h.costs_to_go.tolist() == [[3.5, 3.0]]
    assert h.thresholds.tolist() == [4.0]


def test_a_constrained_evaluation_needs_the_cost_in_the_step_info():
    with pytest.raises(DataError, match='has no "cost"'):
        run_episodes(
            lambda h: torch.zeros(len(h.states), 1), lambda: Counter(cost=False), [(1.0, 2.0)],
            1, state_dim=2, action_dim=1, discrete=False, need_cost=True, max_steps=3,
        )  # fmt: skip
