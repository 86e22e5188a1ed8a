"""Minari episodes → decision-transformer windows: returns-to-go, costs-to-go, padding, masks.

**Datasets.** ``--dataset`` is a dataset id in the local Minari folder (``$MINARI_DATASETS_PATH``,
else ``~/.minari/datasets``; nothing is ever downloaded) or a dataset folder path (the folder
holding ``data/metadata.json``, or that ``data`` folder itself). Observations must be a Box
(flattened); actions a Box with finite bounds or a Discrete space. A step's cost is
``info["cost"]`` (Minari stores the reset info at index 0, so step t's cost is entry t + 1).

**Returns- and costs-to-go** (undiscounted, as in both papers)::

    R̂_t = Σ_{t'=t}^{T} r_t'        Ĉ_t = Σ_{t'=t}^{T} c_t'

**Windows.** A window is K consecutive steps of one episode starting at any step; one that runs
past the episode's end is padded on the **right** and its ``mask`` is 0 there. Starting a
window at every step of the data with equal probability is the original code's sampling (an
episode drawn with probability ∝ its length, then a uniform start), here without replacement
within an epoch (data/order.py). State statistics (mean, standard deviation per dimension)
come from all steps of a task's datasets and are saved with the model.

**CDT's return relabelling** (Liu et al. 2023, Sec. 4.3): a target pair (ρ, κ) above the
dataset's reward–cost Pareto frontier is infeasible; CDT teaches the model what to do when
asked for one by relabelling copies of the best *safe* episode. Each copy draws κ uniformly in
the dataset's range of episode costs and ρ uniformly between the frontier F(κ) = max{R_i : C_i
≤ κ} and the best episode return, and takes the episode that attains F(κ); its R̂ is shifted by
ρ − R_i and its Ĉ by κ − C_i. Deviation from OSRL's implementation: the frontier is the exact
step function above, not a polynomial fit, and the episode attached is the one on the frontier
at κ, not the nearest in the (cost, return) plane.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlfm.errors import DataError

# ---------------------------------------------------------------------------- finding datasets


def minari_root() -> Path:
    """The local Minari dataset folder: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env).expanduser() if env else Path.home() / ".minari" / "datasets"


def local_dataset_ids(root: Path | None = None) -> list[str]:
    """Ids of the datasets under ``root`` (default: :func:`minari_root`)."""
    root = root or minari_root()
    if not root.is_dir():
        return []
    return sorted(str(p.parent.parent.relative_to(root)) for p in root.rglob("data/metadata.json"))


def resolve_dataset(spec: str | Path) -> Path:
    """The ``data`` folder (holding ``metadata.json``) of a dataset id or folder path."""
    path = Path(spec).expanduser()
    for candidate in (path / "data", path):
        if (candidate / "metadata.json").is_file():
            return candidate
    if path.exists():
        raise DataError(f"dataset: {spec} is not a Minari dataset folder (no data/metadata.json)")
    root = minari_root()
    by_id = root / str(spec) / "data"
    if (by_id / "metadata.json").is_file():
        return by_id
    ids = local_dataset_ids(root)
    have = f"local datasets: {', '.join(ids[:8])}" if ids else "it holds no datasets"
    raise DataError(
        f"dataset: {spec!r} is neither a dataset folder nor a dataset id in {root} "
        f"(MINARI_DATASETS_PATH; {have})"
    )


# ---------------------------------------------------------------------------- episodes


@dataclass
class EpisodeSet:
    """One dataset's episodes, their steps concatenated."""

    name: str  # the id or path the user gave
    path: Path  # its data folder
    observations: np.ndarray  # (N, S) float32 observation at each step (not the final one)
    actions: np.ndarray  # (N, A) float32 Box actions, or (N,) int64 discrete actions
    rewards: np.ndarray  # (N,) float64
    costs: np.ndarray | None  # (N,) float64 info["cost"] of each step, None without costs
    lengths: np.ndarray  # (E,) int64 steps of each episode
    action_space: Any
    observation_space: Any
    env_spec: Any  # gymnasium EnvSpec or None
    eval_env_spec: Any
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def starts(self) -> np.ndarray:
        """(E,) index of each episode's first step."""
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    @property
    def returns(self) -> np.ndarray:
        """(E,) each episode's return Σ r_t."""
        return np.add.reduceat(self.rewards, self.starts) if len(self.lengths) else np.zeros(0)

    @property
    def cost_returns(self) -> np.ndarray:
        """(E,) each episode's total cost Σ c_t (zeros without costs)."""
        if self.costs is None:
            return np.zeros(len(self.lengths))
        return np.add.reduceat(self.costs, self.starts)

    @property
    def discrete(self) -> bool:
        return self.actions.ndim == 1

    @property
    def env_id(self) -> str:
        return self.env_spec.id if self.env_spec is not None else self.name


def _space_problem(space: Any, what: str) -> str | None:
    import gymnasium as gym

    if what == "observation":
        if isinstance(space, gym.spaces.Box):
            return None
        return f"observation space {space} is not a Box (Dict, image and text spaces are not supported)"
    if isinstance(space, gym.spaces.Discrete):
        return None
    if isinstance(space, gym.spaces.Box):
        if space.shape is None or len(space.shape) != 1:
            return f"action space {space} is not a flat Box"
        if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            return f"action space {space} has infinite bounds (a tanh head needs finite ones)"
        return None
    return f"action space {space} is neither a Box nor a Discrete space"


def load_episodes(spec: str | Path, need_costs: bool = False) -> EpisodeSet:
    """Read every episode of a Minari dataset (see :func:`resolve_dataset`)."""
    import minari

    path = resolve_dataset(spec)
    try:
        ds = minari.MinariDataset(path)
    except (ValueError, OSError, KeyError) as e:
        raise DataError(f"dataset: cannot read {path}: {e}") from None
    for space, what in ((ds.observation_space, "observation"), (ds.action_space, "action")):
        problem = _space_problem(space, what)
        if problem:
            raise DataError(f"dataset: {spec}: {problem}")
    discrete = not hasattr(ds.action_space, "low")
    obs, acts, rews, costs, lengths = [], [], [], [], []
    has_costs = True
    for ep in ds.iterate_episodes():
        T = len(ep.rewards)
        if T == 0:
            continue
        obs.append(np.asarray(ep.observations, dtype=np.float32).reshape(T + 1, -1)[:T])
        a = np.asarray(ep.actions)
        acts.append(a.reshape(T).astype(np.int64) if discrete else a.reshape(T, -1))
        rews.append(np.asarray(ep.rewards, dtype=np.float64).reshape(T))
        c = ep.infos.get("cost") if isinstance(ep.infos, dict) else None
        if c is None:
            has_costs = False
        else:
            c = np.asarray(c, dtype=np.float64).reshape(-1)
            costs.append(c[1 : T + 1] if len(c) == T + 1 else c[:T])
        lengths.append(T)
    if not lengths:
        raise DataError(f"dataset: {spec} holds no episodes")
    if need_costs and not has_costs:
        raise DataError(
            f'dataset: {spec}: its step infos carry no "cost" (a constrained dataset records '
            'info["cost"] at every step)'
        )
    meta = ds.storage.metadata
    return EpisodeSet(
        name=str(spec),
        path=path,
        observations=np.concatenate(obs),
        actions=np.concatenate(acts).astype(np.int64 if discrete else np.float32),
        rewards=np.concatenate(rews),
        costs=np.concatenate(costs) if has_costs else None,
        lengths=np.asarray(lengths, dtype=np.int64),
        action_space=ds.action_space,
        observation_space=ds.observation_space,
        env_spec=ds.env_spec,
        eval_env_spec=getattr(ds, "_eval_env_spec", None),
        ref_min_score=_float_or_none(meta.get("ref_min_score")),
        ref_max_score=_float_or_none(meta.get("ref_max_score")),
        metadata={k: v for k, v in meta.items() if isinstance(v, str | int | float)},
    )


def _float_or_none(v: Any) -> float | None:
    return None if v is None else float(v)


def to_go(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Σ_{t'≥t} x_t' within each episode (returns- or costs-to-go). (N,), (E,) -> (N,)."""
    values = np.asarray(values, dtype=np.float64)
    ends = np.cumsum(lengths)  # (E,) one past each episode's last step
    csum = np.concatenate([[0.0], np.cumsum(values)])  # (N + 1,)
    episode = np.repeat(np.arange(len(lengths)), lengths)  # (N,)
    return csum[ends[episode]] - csum[:-1]


def timesteps_of(lengths: np.ndarray) -> np.ndarray:
    """Each step's index within its episode. (E,) -> (N,)."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.arange(int(np.sum(lengths))) - np.repeat(starts, lengths)


# ---------------------------------------------------------------------------- CDT relabelling


def pareto_frontier(returns: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Indices of the episodes no other beats: none has cost ≤ and return ≥ with one strict,
    sorted by cost."""
    order = np.lexsort((-returns, costs))  # by cost, then best return first
    front, best = [], -np.inf
    for i in order:
        if returns[i] > best:
            front.append(i)
            best = returns[i]
    return np.asarray(front, dtype=np.int64)


@dataclass
class Relabel:
    """Copies of episodes with shifted targets (CDT's augmentation)."""

    episode: np.ndarray  # (M,) int64 which episode each copy repeats
    target_return: np.ndarray  # (M,) float64 ρ: the copy's R̂ at its first step
    target_cost: np.ndarray  # (M,) float64 κ: the copy's Ĉ at its first step


def relabel_infeasible(
    returns: np.ndarray, costs: np.ndarray, share: float, rng: np.random.Generator
) -> Relabel:
    """CDT's augmentation (module docstring): round(share × E) copies of frontier episodes,
    each labelled with a target (ρ, κ) on or above the frontier at κ."""
    E = len(returns)
    m = int(round(share * E))
    kappa = rng.uniform(costs.min(), costs.max(), size=m)
    best_return = returns.max()
    episode = np.empty(m, dtype=np.int64)
    rho = np.empty(m)
    for j, k in enumerate(kappa):
        safe = np.flatnonzero(costs <= k)  # never empty: κ ≥ the lowest cost
        i = safe[np.argmax(returns[safe])]
        episode[j] = i
        rho[j] = rng.uniform(returns[i], best_return)
    return Relabel(episode, rho, kappa)


# ---------------------------------------------------------------------------- windows


@dataclass
class Windows:
    """A batch of K-step windows, right-padded."""

    states: torch.Tensor  # (B, K, S) float32 raw observations (0 on padding)
    actions: torch.Tensor  # (B, K, A) float32 environment units, or (B, K) long
    returns_to_go: torch.Tensor  # (B, K) float32 R̂_t
    costs_to_go: torch.Tensor  # (B, K) float32 Ĉ_t (0 without costs)
    rewards: torch.Tensor  # (B, K) float32 r_t
    costs: torch.Tensor  # (B, K) float32 c_t
    timesteps: torch.Tensor  # (B, K) long t within the episode
    mask: torch.Tensor  # (B, K) float32 1 = a real step, 0 = padding
    task: torch.Tensor  # (B,) long

    def to(self, device: torch.device) -> Windows:
        return Windows(**{k: v.to(device, non_blocking=True) for k, v in vars(self).items()})

    def select(self, rows: torch.Tensor) -> Windows:
        """Windows ``rows`` of the batch."""
        return Windows(**{k: v[rows] for k, v in vars(self).items()})


@dataclass
class Task:
    """The datasets of one environment, pooled (statistics for the model and the report)."""

    name: str  # the environment id
    datasets: list[EpisodeSet]
    state_dim: int
    action_dim: int

    @property
    def returns(self) -> np.ndarray:
        return np.concatenate([d.returns for d in self.datasets])

    @property
    def cost_returns(self) -> np.ndarray:
        return np.concatenate([d.cost_returns for d in self.datasets])

    @property
    def max_episode_steps(self) -> int:
        spec = self.datasets[0].env_spec
        longest = max(int(d.lengths.max()) for d in self.datasets)
        return max(longest, getattr(spec, "max_episode_steps", None) or 0)

    def state_stats(self) -> tuple[np.ndarray, np.ndarray]:
        obs = np.concatenate([d.observations for d in self.datasets]).astype(np.float64)
        return obs.mean(0), obs.std(0) + 1e-6

    def reference(self, empirical: bool = False) -> dict[str, Any]:
        """Normalisation references: the dataset's ref_min/max_score, else its own min and max
        episode return (``source`` says which); ``empirical``: always its own min and max (the
        CDT paper's convention, r_min(M) and r_max(M) of the offline data)."""
        d = self.datasets[0]
        if not empirical and d.ref_min_score is not None and d.ref_max_score is not None:
            return {
                "ref_min": d.ref_min_score,
                "ref_max": d.ref_max_score,
                "source": "ref_min_score/ref_max_score of the dataset",
            }
        r = self.returns
        return {
            "ref_min": float(r.min()),
            "ref_max": float(r.max()),
            "source": "the dataset's own min and max episode return"
            + ("" if empirical else " (no ref scores stored)"),
        }


def group_tasks(sets: list[EpisodeSet]) -> list[Task]:
    """One task per environment (datasets of the same environment are pooled), in order."""
    tasks: dict[str, list[EpisodeSet]] = {}
    for s in sets:
        tasks.setdefault(s.env_id, []).append(s)
    kinds = {s.discrete for s in sets}
    if len(kinds) > 1:
        names = ", ".join(f"{s.name} ({'Discrete' if s.discrete else 'Box'})" for s in sets)
        raise DataError(f"dataset: one model cannot mix Box and Discrete actions: {names}")
    out = []
    for name, group in tasks.items():
        dims = {(s.observations.shape[1], _action_dim(s)) for s in group}
        if len(dims) > 1:
            raise DataError(f"dataset: datasets of {name} differ in observation/action sizes")
        S, A = dims.pop()
        out.append(Task(name, group, S, A))
    return out


def _action_dim(s: EpisodeSet) -> int:
    return int(s.action_space.n) if s.discrete else s.actions.shape[1]


class TrajectoryData:
    """Every step of every task's episodes (and relabelled copies), ready to cut windows from.

    Steps are stored flat; a window starting at step i covers steps i .. i + K − 1 of the same
    episode copy (``end[i]`` is one past its last step)."""

    def __init__(
        self,
        tasks: list[Task],
        relabel: list[Relabel | None] | None = None,
        episodes: list[np.ndarray | None] | None = None,
    ) -> None:
        """``relabel``: per task, copies to append (CDT). ``episodes``: per task, the indices of
        the episodes to keep (BC-Safe), default all."""
        self.tasks = tasks
        self.state_dim = max(t.state_dim for t in tasks)
        self.action_dim = max(t.action_dim for t in tasks)
        self.discrete = tasks[0].datasets[0].discrete
        parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("s", "a", "r", "c", "rtg", "ctg", "t", "end", "task")
        }
        offset = 0
        for ti, task in enumerate(tasks):
            obs, act, rew, cost, lengths = _pooled(task, self.state_dim, self.action_dim)
            rtg, ctg = to_go(rew, lengths), to_go(cost, lengths)
            copies = [(np.arange(len(lengths)), np.zeros(len(lengths)), np.zeros(len(lengths)))]
            keep = episodes[ti] if episodes is not None else None
            if keep is not None:
                copies = [(keep, np.zeros(len(keep)), np.zeros(len(keep)))]
            rel = relabel[ti] if relabel is not None else None
            if rel is not None and len(rel.episode):
                R, C = _episode_sums(rew, lengths), _episode_sums(cost, lengths)
                shift_r = rel.target_return - R[rel.episode]
                shift_c = rel.target_cost - C[rel.episode]
                copies.append((rel.episode, shift_r, shift_c))
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            for eps, dr, dc in copies:
                for e, sr, sc in zip(eps, dr, dc):
                    sl = slice(starts[e], starts[e] + lengths[e])
                    n = int(lengths[e])
                    parts["s"].append(obs[sl])
                    parts["a"].append(act[sl])
                    parts["r"].append(rew[sl])
                    parts["c"].append(cost[sl])
                    parts["rtg"].append(rtg[sl] + sr)
                    parts["ctg"].append(ctg[sl] + sc)
                    parts["t"].append(np.arange(n))
                    parts["end"].append(np.full(n, offset + n))
                    parts["task"].append(np.full(n, ti))
                    offset += n
        if offset == 0:
            raise DataError("dataset: no episodes left to train on")
        f32 = torch.float32
        self.states = torch.as_tensor(np.concatenate(parts["s"]), dtype=f32)
        adt = torch.long if self.discrete else f32
        self.actions = torch.as_tensor(np.concatenate(parts["a"]), dtype=adt)
        self.rewards = torch.as_tensor(np.concatenate(parts["r"]), dtype=f32)
        self.costs = torch.as_tensor(np.concatenate(parts["c"]), dtype=f32)
        self.returns_to_go = torch.as_tensor(np.concatenate(parts["rtg"]), dtype=f32)
        self.costs_to_go = torch.as_tensor(np.concatenate(parts["ctg"]), dtype=f32)
        self.timesteps = torch.as_tensor(np.concatenate(parts["t"]), dtype=torch.long)
        self.end = torch.as_tensor(np.concatenate(parts["end"]), dtype=torch.long)
        self.task = torch.as_tensor(np.concatenate(parts["task"]), dtype=torch.long)

    def __len__(self) -> int:
        """Steps (= window starts)."""
        return len(self.end)

    def windows(self, starts: torch.Tensor, K: int) -> Windows:
        """The K-step windows beginning at step indices ``starts`` (B,)."""
        pos = starts[:, None] + torch.arange(K)  # (B, K)
        mask = pos < self.end[starts][:, None]  # (B, K) inside the episode
        pos = torch.where(mask, pos, starts[:, None])  # padding reads the first step, zeroed

        def take(x: torch.Tensor) -> torch.Tensor:
            v = x[pos]
            m = mask.view(*mask.shape, *([1] * (v.ndim - 2)))
            return v * m.to(v.dtype)

        return Windows(
            states=take(self.states),
            actions=take(self.actions),
            returns_to_go=take(self.returns_to_go),
            costs_to_go=take(self.costs_to_go),
            rewards=take(self.rewards),
            costs=take(self.costs),
            timesteps=take(self.timesteps),
            mask=mask.float(),
            task=self.task[starts],
        )


def _episode_sums(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.add.reduceat(values, starts)


def _pooled(
    task: Task, S: int, A: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A task's steps over its datasets, observations and Box actions zero-padded to S, A."""
    obs = np.concatenate([_pad(d.observations, S) for d in task.datasets])
    if task.datasets[0].discrete:
        act = np.concatenate([d.actions for d in task.datasets])
    else:
        act = np.concatenate([_pad(d.actions, A) for d in task.datasets])
    rew = np.concatenate([d.rewards for d in task.datasets])
    cost = np.concatenate(
        [d.costs if d.costs is not None else np.zeros_like(d.rewards) for d in task.datasets]
    )
    lengths = np.concatenate([d.lengths for d in task.datasets])
    return obs, act, rew, cost, lengths


def _pad(x: np.ndarray, width: int) -> np.ndarray:
    return x if x.shape[1] == width else np.pad(x, ((0, 0), (0, width - x.shape[1])))


def model_statistics(tasks: list[Task], S: int, A: int) -> dict[str, torch.Tensor]:
    """Per-task state mean/std and action bounds, padded to (tasks, S) and (tasks, A): the
    buffers the model stores (padded action dimensions have low = high = 0)."""
    mean, std = torch.zeros(len(tasks), S), torch.ones(len(tasks), S)
    low, high = torch.zeros(len(tasks), A), torch.zeros(len(tasks), A)
    for i, t in enumerate(tasks):
        m, s = t.state_stats()
        mean[i, : len(m)] = torch.as_tensor(m)
        std[i, : len(s)] = torch.as_tensor(s)
        space = t.datasets[0].action_space
        if hasattr(space, "low"):
            low[i, : t.action_dim] = torch.as_tensor(space.low, dtype=torch.float32)
            high[i, : t.action_dim] = torch.as_tensor(space.high, dtype=torch.float32)
        else:
            low[i], high[i] = -1.0, 1.0
    return {"state_mean": mean, "state_std": std, "action_low": low, "action_high": high}


def describe(task: Task) -> dict[str, Any]:
    """A task's datasets and return/cost ranges, for the run's banner and result files."""
    r, c = task.returns, task.cost_returns
    return {
        "task": task.name,
        "datasets": [d.name for d in task.datasets],
        "episodes": int(len(r)),
        "steps": int(sum(int(d.lengths.sum()) for d in task.datasets)),
        "return_min": float(r.min()),
        "return_max": float(r.max()),
        "cost_min": float(c.min()),
        "cost_max": float(c.max()),
        "has_costs": all(d.costs is not None for d in task.datasets),
    }


def read_json(path: Path) -> Any:
    """A JSON file; errors name it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it as JSON ({e})") from None


def load_tasks(specs: tuple[str, ...] | list[str], need_costs: bool = False) -> list[Task]:
    """The datasets of ``specs`` grouped into tasks (one per environment)."""
    if not specs:
        raise DataError("dataset: give at least one --dataset (a Minari id or folder)")
    return group_tasks([load_episodes(s, need_costs=need_costs) for s in specs])


def default_scale(values: np.ndarray) -> float:
    """A scale for returns- or costs-to-go: the largest absolute episode total (1 if all 0)."""
    m = float(np.max(np.abs(values))) if len(values) else 0.0
    return m if m > 0 else 1.0


def frontier_return(returns: np.ndarray, costs: np.ndarray, threshold: float) -> float:
    """The target return of a cost threshold read off the reward–cost frontier: the best
    episode return among episodes whose total cost is within the threshold (the lowest-cost
    episode's return when none is)."""
    safe = costs <= threshold
    if safe.any():
        return float(returns[safe].max())
    return float(returns[np.argmin(costs)])
