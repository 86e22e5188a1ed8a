"""Minari datasets made with D4RL's recipes: read back with minari's own API, reference
scores, the environment recovered, costs of constrained tasks, resuming a killed generation,
`rlfm offline list`."""

from __future__ import annotations

import numpy as np
import pytest

from rlfm.errors import ConfigError
from rlfm.offline import datasets
from rlfm.offline.datasets import (
    load_episodes,
    make_dataset,
    medium_step,
    read_policy_run,
    save_episodes,
)
from rlfm.stages import control_ppo, offline_list


@pytest.fixture(autouse=True)
def minari_folder(tmp_path, monkeypatch):
    """Every test writes its datasets into its own MINARI_DATASETS_PATH."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    """A short CartPole PPO run with policy snapshots and its training episodes recorded."""
    out = tmp_path_factory.mktemp("offline") / "ppo"
    cfg = control_ppo.Config(
        env="CartPole-v1",
        out=out,
        steps=8 * 1024,
        n_envs=4,
        n_steps=256,
        batch_size=256,
        epochs=4,
        lr=1e-3,
        eval_every=2048,
        eval_episodes=3,
        snapshots=True,
        record_episodes=True,
    )
    control_ppo.train(cfg)
    return out


def test_episode_files_round_trip(tmp_path):
    eps = [
        {
            "observations": np.arange(8, dtype=np.float32).reshape(4, 2),
            "actions": np.array([0, 1, 1]),
            "rewards": np.ones(3),
            "terminations": np.array([0, 0, 1], bool),
            "truncations": np.zeros(3, bool),
        },
        {
            "observations": np.zeros((2, 2), np.float32),
            "actions": np.array([1]),
            "rewards": np.array([2.0]),
            "terminations": np.zeros(1, bool),
            "truncations": np.ones(1, bool),
        },
    ]
    save_episodes(tmp_path / "e.npz", eps)
    back = load_episodes(tmp_path / "e.npz")
    for a, b in zip(eps, back):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_expert_medium_and_replay_datasets(cartpole_run, minari_folder):
    """Each kind loads with minari.load_dataset; the spec recovers the environment; ref scores
    are the random and the expert returns; medium is the snapshot nearest a third of the way;
    medium-replay holds exactly the training episodes up to it."""
    import minari

    run = read_policy_run(cartpole_run)
    for kind in ("expert", "medium", "medium-replay"):
        make_dataset(
            "CartPole-v1",
            kind,
            f"rlfm/cartpole-{kind}-v0",
            policies=[cartpole_run],
            steps=600,
            ref_episodes=3,
            progress=False,
        )
    expert = minari.load_dataset("rlfm/cartpole-expert-v0")
    assert (minari_folder / "rlfm" / "cartpole-expert-v0").is_dir()
    assert expert.total_steps >= 600
    meta = expert.storage.metadata
    assert meta["ref_min_score"] < 40 < meta["ref_max_score"]  # random CartPole ≈ 20
    env = expert.recover_environment()
    assert env.spec.id == "CartPole-v1"
    ep = next(expert.iterate_episodes())
    assert len(ep.observations) == len(ep.actions) + 1
    upto = medium_step(run, meta["ref_min_score"], meta["ref_max_score"])
    replay = minari.load_dataset("rlfm/cartpole-medium-replay-v0")
    recorded = sum(
        len(load_episodes(p)) for p in run.episodes if int(p.stem.split("_")[-1]) <= upto
    )
    assert replay.total_episodes == recorded
    medium = minari.load_dataset("rlfm/cartpole-medium-v0")
    assert medium.storage.metadata["algorithm_name"] == "rlfm PPO (medium)"


def test_constrained_random_dataset_records_costs(minari_folder):
    """A velocity-constrained task's steps carry infos['cost'] (0 at reset); the env spec
    rebuilds the cost wrapper."""
    import minari

    ds = make_dataset(
        "rlfm/SafetyHopperVelocity-v5",
        "random",
        "rlfm/hopper-velocity-random-v0",
        steps=200,
        ref_episodes=2,
        progress=False,
    )
    ep = next(minari.load_dataset("rlfm/hopper-velocity-random-v0").iterate_episodes())
    assert ep.infos["cost"].shape == (len(ep.rewards) + 1,) and ep.infos["cost"][0] == 0.0
    assert set(np.unique(ep.infos["cost"])) <= {0.0, 1.0}
    env = ds.recover_environment()
    env.reset(seed=0)
    assert "cost" in env.step(env.action_space.sample())[4]


def test_a_killed_generation_resumes_to_the_same_dataset(minari_folder, monkeypatch):
    """Chunks finished before a kill are reused; the result equals an uninterrupted run's."""
    import minari

    make_dataset(
        "Pendulum-v1",
        "random",
        "rlfm/pendulum-random-v0",
        steps=4000,
        ref_episodes=2,
        progress=False,
    )
    original = datasets._play_chunks

    def killed_after_one_chunk(env_id, sources, steps, seed, folder, progress, run_episodes):
        calls = {"n": 0}

        def play(*a, **k):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return run_episodes(*a, **k)

        return original(env_id, sources, steps, seed, folder, progress, play)

    monkeypatch.setattr(datasets, "_play_chunks", killed_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        make_dataset(
            "Pendulum-v1",
            "random",
            "rlfm/pendulum-random-v1",
            steps=4000,
            ref_episodes=2,
            progress=False,
        )
    assert (
        len(
            list(
                (
                    minari_folder / ".rlfm-partial" / "rlfm" / "pendulum-random-v1" / "chunks"
                ).iterdir()
            )
        )
        == 1
    )
    monkeypatch.setattr(datasets, "_play_chunks", original)
    make_dataset(
        "Pendulum-v1",
        "random",
        "rlfm/pendulum-random-v1",
        steps=4000,
        ref_episodes=2,
        progress=False,
    )
    a = list(minari.load_dataset("rlfm/pendulum-random-v0").iterate_episodes())
    b = list(minari.load_dataset("rlfm/pendulum-random-v1").iterate_episodes())
    assert len(a) == len(b) == 20
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.observations, y.observations)
        np.testing.assert_array_equal(x.actions, y.actions)


def test_errors_name_the_culprit(tmp_path, cartpole_run):
    with pytest.raises(ConfigError, match="needs a `rlfm control ppo` run"):
        make_dataset("CartPole-v1", "expert", "rlfm/x-v0")
    with pytest.raises(ConfigError, match="needs a version"):
        make_dataset("CartPole-v1", "random", "rlfm/x")
    with pytest.raises(ConfigError, match="was trained on CartPole-v1, not Pendulum-v1"):
        make_dataset("Pendulum-v1", "expert", "rlfm/x-v0", policies=[cartpole_run])
    with pytest.raises(ConfigError, match="is not a run directory"):
        make_dataset("CartPole-v1", "expert", "rlfm/x-v0", policies=[tmp_path])


def test_offline_list_shows_sizes_and_returns(capsys):
    make_dataset(
        "CartPole-v1",
        "random",
        "rlfm/cartpole-random-v0",
        steps=300,
        ref_episodes=2,
        progress=False,
    )
    rows = offline_list.run(offline_list.Config())
    out = capsys.readouterr().out
    assert "rlfm/cartpole-random-v0" in out and "mean return" in out
    assert rows[0]["steps"] >= 300 and 5 < rows[0]["mean_return"] < 60 and rows[0]["bytes"] > 0
