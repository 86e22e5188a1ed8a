"""data/trajectories.py: returns/costs-to-go, windows at episode edges, relabelling, finding and
reading Minari datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from offline_fixtures import cartpole_dataset, speed_run_dataset

from rlfm.data.trajectories import (
    EpisodeSet,
    Task,
    TrajectoryData,
    frontier_return,
    load_episodes,
    load_tasks,
    pareto_frontier,
    relabel_infeasible,
    resolve_dataset,
    timesteps_of,
    to_go,
)
from rlfm.errors import DataError


def test_to_go_against_a_loop():
    rng = np.random.default_rng(0)
    lengths = np.array([5, 1, 9, 3])
    values = rng.normal(size=lengths.sum())
    expected, i = [], 0
    for n in lengths:
        for t in range(n):
            expected.append(sum(values[i + t : i + n]))
        i += n
    assert to_go(values, lengths) == pytest.approx(expected)
    assert timesteps_of(lengths).tolist() == [*range(5), 0, *range(9), *range(3)]


def episodes(rewards: list[list[float]], costs: list[list[float]] | None = None) -> EpisodeSet:
    """An in-memory dataset with a 1-D observation equal to the step index, Box actions."""
    import gymnasium as gym

    lengths = np.array([len(r) for r in rewards])
    n = int(lengths.sum())
    flat_costs = np.concatenate(costs).astype(float) if costs else None
    return EpisodeSet(
        name="hand",
        path=Path("."),
        observations=np.arange(n, dtype=np.float32)[:, None],
        actions=np.linspace(-1, 1, n, dtype=np.float32)[:, None],
        rewards=np.concatenate(rewards).astype(float),
        costs=flat_costs,
        lengths=lengths,
        action_space=gym.spaces.Box(-1, 1, (1,)),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (1,)),
        env_spec=None,
        eval_env_spec=None,
    )


def test_windows_pad_on_the_right_with_masks():
    """Episodes r = [1, 2, 3] and [10, 20], K = 4.
    Window at step 1 (episode 0): steps 1, 2 then padding: mask 1 1 0 0, R̂ = 5, 3, 0, 0,
    t = 1, 2, 0, 0, states 1, 2, 0, 0. Window at step 3 (episode 1's first): R̂ = 30, 20.
    Costs c = [0, 1, 1] and [2, 0]: Ĉ at step 1 = 2, 1."""
    es = episodes([[1, 2, 3], [10, 20]], [[0, 1, 1], [2, 0]])
    data = TrajectoryData([Task("hand", [es], 1, 1)])
    w = data.windows(torch.tensor([1, 3]), 4)
    assert w.mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]
    assert w.returns_to_go.tolist() == [[5, 3, 0, 0], [30, 20, 0, 0]]
    assert w.costs_to_go[0].tolist() == [2, 1, 0, 0]
    assert w.timesteps.tolist() == [[1, 2, 0, 0], [0, 1, 0, 0]]
    assert w.states[0, :, 0].tolist() == [1, 2, 0, 0]
    assert w.rewards[1].tolist() == [10, 20, 0, 0]
    full = data.windows(torch.tensor([0]), 3)
    assert full.mask.tolist() == [[1, 1, 1]]


def test_pareto_frontier_and_frontier_return():
    """(cost, return): A (0, 1), B (1, 3), C (2, 2) dominated by B, D (3, 5)."""
    R = np.array([1.0, 3.0, 2.0, 5.0])
    C = np.array([0.0, 1.0, 2.0, 3.0])
    assert pareto_frontier(R, C).tolist() == [0, 1, 3]
    assert frontier_return(R, C, 2.5) == 3.0
    assert frontier_return(R, C, 3.0) == 5.0
    assert frontier_return(R, C + 1, 0.5) == 1.0  # none within: the lowest-cost episode's


def test_relabelling_targets_lie_on_or_above_the_frontier_of_safe_episodes():
    rng = np.random.default_rng(0)
    R = rng.uniform(0, 100, 50)
    C = rng.uniform(0, 40, 50)
    rel = relabel_infeasible(R, C, 0.2, np.random.default_rng(1))
    assert len(rel.episode) == 10
    for e, rho, kappa in zip(rel.episode, rel.target_return, rel.target_cost):
        assert C[e] <= kappa  # the attached episode keeps the threshold
        assert R[e] == frontier_return(R, C, kappa)  # and is the best one that does
        assert R[e] <= rho <= R.max()  # the target asks at least the frontier's return


def test_relabelled_copies_shift_returns_and_costs_to_go():
    """Episodes (R, C) = (6, 2) and (30, 2): a copy of episode 0 relabelled (ρ, κ) = (9, 5)
    has R̂ shifted by +3 and Ĉ by +3 at every step."""
    from rlfm.data.trajectories import Relabel

    es = episodes([[1, 2, 3], [10, 20]], [[0, 1, 1], [2, 0]])
    rel = Relabel(np.array([0]), np.array([9.0]), np.array([5.0]))
    data = TrajectoryData([Task("hand", [es], 1, 1)], relabel=[rel])
    assert len(data) == 5 + 3
    w = data.windows(torch.tensor([5]), 3)
    assert w.returns_to_go[0].tolist() == [9, 8, 6]
    assert w.costs_to_go[0].tolist() == [5, 5, 4]
    assert w.states[0, :, 0].tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def minari_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("minari")
    speed_run_dataset(root, "test/speedrun/mixed-v0", episodes=20)
    cartpole_dataset(root, episodes=5)
    return root


def test_dataset_by_id_honours_minari_datasets_path(minari_dir, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_dir))
    path = resolve_dataset("test/speedrun/mixed-v0")
    assert path == minari_dir / "test/speedrun/mixed-v0/data"
    es = load_episodes("test/speedrun/mixed-v0", need_costs=True)
    assert es.lengths.tolist() == [50] * 20
    assert es.costs is not None and set(np.unique(es.costs)) <= {0.0, 1.0}
    assert es.returns == pytest.approx([es.rewards[i * 50 : (i + 1) * 50].sum() for i in range(20)])


def test_dataset_by_folder_path(minari_dir, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_dir / "elsewhere"))
    folder = minari_dir / "test/cartpole/mixed-v0"
    assert resolve_dataset(folder) == folder / "data"
    assert resolve_dataset(folder / "data") == folder / "data"
    es = load_episodes(folder)
    assert es.discrete and es.actions.dtype == np.int64 and es.costs is None


def test_missing_dataset_names_the_folder_and_lists_local_ids(minari_dir, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_dir))
    with pytest.raises(DataError) as e:
        resolve_dataset("mujoco/hopper/nowhere-v0")
    msg = str(e.value)
    assert "'mujoco/hopper/nowhere-v0'" in msg and str(minari_dir) in msg
    assert "test/speedrun/mixed-v0" in msg and "\n" not in msg


def test_dataset_without_costs_is_refused_where_costs_are_needed(minari_dir, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_dir))
    with pytest.raises(DataError, match='test/cartpole/mixed-v0: its step infos carry no "cost"'):
        load_tasks(["test/cartpole/mixed-v0"], need_costs=True)


def test_mixing_box_and_discrete_is_refused(minari_dir, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_dir))
    with pytest.raises(DataError, match="cannot mix Box and Discrete"):
        load_tasks(["test/speedrun/mixed-v0", "test/cartpole/mixed-v0"])


def test_unsupported_space_is_named(tmp_path, monkeypatch):
    import warnings

    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    space = gym.spaces.MultiBinary(2)
    buf = EpisodeBuffer(
        observations=np.zeros((3, 1), np.float32),
        actions=np.zeros((2, 2), np.int8),
        rewards=[0.0, 0.0],
        terminations=[False, True],
        truncations=[False, False],
        infos={},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari's advice on metadata
        minari.create_dataset_from_buffers(
            "test/multibinary-v0",
            [buf],
            action_space=space,
            observation_space=gym.spaces.Box(-1, 1, (1,)),
            algorithm_name="none",
        )
    with pytest.raises(DataError, match="neither a Box nor a Discrete"):
        load_episodes("test/multibinary-v0")
