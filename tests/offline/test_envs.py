"""Environments for control: clear errors, the velocity cost, state capture for exact resume."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rlfm.errors import ConfigError
from rlfm.offline.envs import (
    BULLET_SAFETY_TASKS,
    VELOCITY_THRESHOLDS,
    SameStepEnvs,
    check_env_id,
    env_state,
    make_env,
    make_vector_env,
    run_episodes,
    set_env_state,
    step_costs,
    velocity_constrained,
)


def test_velocity_cost_is_one_exactly_above_the_threshold():
    """Hopper's threshold is Safety-Gymnasium's 0.7402: cost = 1[info['x_velocity'] > 0.7402]
    at every step, 0 in the reset info (the same info keys at reset and step)."""
    env = velocity_constrained("Hopper-v5")
    assert env.spec.id == "rlfm/SafetyHopperVelocity-v5"
    _, info = env.reset(seed=0)
    env.action_space.seed(0)
    assert info["cost"] == 0.0
    seen = set()
    for _ in range(1000):
        _, _, term, trunc, info = env.step(env.action_space.sample())
        assert info["cost"] == float(info["x_velocity"] > VELOCITY_THRESHOLDS["Hopper"])
        seen.add(info["cost"])
        if term or trunc:
            env.reset()
    assert seen == {0.0, 1.0}  # random actions cross the threshold both ways


def test_velocity_task_is_rebuilt_from_its_spec():
    """What a Minari dataset stores (the spec as JSON) makes the same constrained task again."""
    spec = velocity_constrained("Walker2d-v5").spec
    env = gym.make(gym.envs.registration.EnvSpec.from_json(spec.to_json()))
    env.reset(seed=0)
    assert "cost" in env.step(env.action_space.sample())[4]


def test_bad_ids_and_spaces_name_the_culprit():
    with pytest.raises(ConfigError, match="did you mean 'CartPole-v1'"):
        check_env_id("CartPole-v7")
    with pytest.raises(ConfigError, match="FrozenLake-v1 observes Discrete"):
        make_env("FrozenLake-v1")
    with pytest.raises(ConfigError, match="no velocity-constrained version"):
        velocity_constrained("CartPole-v1")


def test_bullet_safety_gym_tasks_where_installed():
    """The CDT table's tasks come from bullet-safety-gym: each carries info['cost']."""
    pytest.importorskip(
        "bullet_safety_gym",
        reason="bullet-safety-gym is not installed (pip install --no-deps bullet-safety-gym "
        "&& pip install pybullet)",
    )
    for task in BULLET_SAFETY_TASKS:
        env = make_env(task)
        env.reset(seed=0)
        assert "cost" in env.step(env.action_space.sample())[4]


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "Hopper-v5"])
def test_state_capture_continues_the_episode_exactly(env_id):
    """A captured environment put into a fresh copy steps exactly as the original."""
    env = make_env(env_id)
    env.reset(seed=3)
    env.action_space.seed(0)
    for _ in range(7):
        env.step(env.action_space.sample())
    state = env_state(env)
    assert state is not None
    copy = make_env(env_id)
    copy.reset(seed=99)
    copy = set_env_state(copy, state)
    for _ in range(5):
        a = env.action_space.sample()
        o1, r1, *_ = env.step(a)
        o2, r2, *_ = copy.step(a)
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2


def test_step_costs_of_a_vector_env():
    """Finished environments' costs come from final_info, the others' from the step info."""
    infos = {
        "cost": np.array([1.0, 0.0, 0.0]),
        "_cost": np.array([True, False, True]),
        "final_info": {"cost": np.array([0.0, 1.0, 0.0]), "_cost": np.array([False, True, False])},
    }
    np.testing.assert_array_equal(
        step_costs(infos, np.array([False, True, False])), [1.0, 1.0, 0.0]
    )
    assert step_costs({}, np.array([False])) is None


class _CartCost(gym.Wrapper):
    """CartPole with a cost: 1 while the cart is right of 0.3 (0 in the reset info)."""

    def reset(self, **kw):
        obs, info = self.env.reset(**kw)
        return obs, info | {"cost": 0.0}

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        return obs, r, term, trunc, info | {"cost": float(obs[0] > 0.3)}


@pytest.mark.parametrize("cost", [False, True])
def test_same_step_envs_step_as_gymnasium_sync_vector_env(cost):
    """rlfm's vector environment against Gymnasium's SyncVectorEnv (SAME_STEP autoreset) on
    three CartPoles (one with a time limit of 40, so episodes end both ways) for 300 steps of
    the same random actions: the same observations, rewards, flags, final observations and
    step costs; reset seeds environment i with seed + i."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    def makers():
        def make(limit):
            env = gym.make("CartPole-v1", max_episode_steps=limit)
            return _CartCost(env) if cost else env

        return [lambda: make(500), lambda: make(40), lambda: make(500)]

    ours = SameStepEnvs([f() for f in makers()])
    ref = SyncVectorEnv(makers(), autoreset_mode=AutoresetMode.SAME_STEP)
    o1, _ = ours.reset(seed=7)
    o2, _ = ref.reset(seed=7)
    np.testing.assert_array_equal(o1, o2)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(300):
        a = rng.integers(0, 2, size=3)
        *mine, i1 = ours.step(a)
        *theirs, i2 = ref.step(a)
        for x, y in zip(mine, theirs):
            np.testing.assert_array_equal(x, y)
        done = mine[2] | mine[3]
        ends += int(done.sum())
        for i in np.flatnonzero(done):
            np.testing.assert_array_equal(i1["final_obs"][i], i2["final_obs"][i])
        c1, c2 = step_costs(i1, done), step_costs(i2, done)
        if cost:
            np.testing.assert_array_equal(c1, c2)
            assert c1 is not None
        else:
            assert c1 is None and c2 is None
    assert ends > 10 and ours.envs[1].spec.max_episode_steps == 40
    ours.close()
    assert isinstance(make_vector_env("CartPole-v1", 2), SameStepEnvs)


def test_run_episodes_records_what_the_environment_got():
    """Observations T + 1, actions/rewards T, terminations at the end; the total is the sum."""
    (ep,) = run_episodes("CartPole-v1", lambda obs: np.zeros(len(obs), dtype=int), [0], record=True)
    assert ep.observations.shape == (ep.length + 1, 4)
    assert (
        ep.actions.shape == (ep.length,) and ep.terminations[-1] and not ep.terminations[:-1].any()
    )
    assert ep.total_return == pytest.approx(ep.rewards.sum())
