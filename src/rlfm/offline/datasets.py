"""Offline RL datasets in Minari format, made with D4RL's recipes (Fu et al. 2020, "D4RL:
Datasets for Deep Data-Driven Reinforcement Learning"):

- ``random``: uniform random actions;
- ``expert``: the final policy of a full PPO run (``rlfm control ppo``);
- ``medium``: a policy of the same run "at about a third of the expert's performance": the
  policy snapshot whose evaluation return is nearest ref_min + (ref_max − ref_min) / 3 (in
  normalised score, so it also means something for negative returns such as Pendulum's);
- ``medium-replay``: every episode the PPO run trained on up to that snapshot (its "replay
  buffer" — the run must have been made with ``--record-episodes``).

Policies act stochastically (sampled actions, as D4RL's), clipped to the action bounds.
Several policy runs (e.g. PPO-Lagrangian at several ``--cost-limit`` values on a constrained
task) share the episodes equally, which spreads the data over the reward–cost plane, as the
offline safe-RL datasets of OSRL/DSRL (Liu et al. 2023).

Datasets are written with Minari's own API (``minari.create_dataset_from_buffers``) into
Minari's local folder (``$MINARI_DATASETS_PATH``, default ``~/.minari/datasets``), so
``minari.load_dataset(dataset_id)`` reads them back. Each stores the environment's spec (so
``dataset.recover_environment()`` rebuilds it, cost wrapper included), ``ref_min_score`` (mean
return of the random policy) and ``ref_max_score`` (mean return of the expert; of the best
expert when there are several runs) for
``minari.get_normalized_score``, and on constrained tasks ``infos["cost"]`` for every step
(0 at reset: Minari wants the same info keys at reset and at each step).

**Resumable.** Episodes are played in chunks with fixed reset seeds and each chunk is saved
under ``<datasets>/.rlfm-partial/<dataset_id>/`` as soon as it is complete; a killed
generation started again reuses the finished chunks and the same seeds, so the dataset is the
one an uninterrupted run would have written.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rlfm.errors import ConfigError, DataError

Kind = Literal["random", "medium", "medium-replay", "expert"]
KINDS: tuple[str, ...] = ("random", "medium", "medium-replay", "expert")
CHUNK_EPISODES = 10
"""Episodes played side by side and saved together (the unit a killed generation resumes at)."""


# ---------------------------------------------------------------------------- episode files


def save_episodes(path: Path, episodes: list[dict[str, np.ndarray]]) -> None:
    """Write episodes (dicts of observations (T+1, O), actions, rewards, terminations,
    truncations and optionally costs (T,)) into one ``.npz`` file, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"lengths": np.array([len(e["rewards"]) for e in episodes])}
    keys = ("observations", "actions", "rewards", "terminations", "truncations", "costs")
    for key in keys:
        parts = [e[key] for e in episodes if key in e]
        if parts and len(parts) == len(episodes):
            arrays[key] = np.concatenate(parts)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_episodes(path: Path) -> list[dict[str, np.ndarray]]:
    """The episodes of a file written by :func:`save_episodes`."""
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    out = []
    o = s = 0
    for n in data["lengths"].tolist():
        ep = {"observations": data["observations"][o : o + n + 1]} if n else {}
        for key in ("actions", "rewards", "terminations", "truncations", "costs"):
            if key in data:
                ep[key] = data[key][s : s + n]
        out.append(ep)
        o, s = o + n + 1, s + n
    return out


# ---------------------------------------------------------------------------- the recipes


@dataclass
class PolicyRun:
    """What a ``rlfm control ppo`` run directory offers a dataset."""

    path: Path
    env: str
    final: Path  # the newest checkpoint (the expert)
    snapshots: dict[int, Path]  # step -> policies/step_N
    eval_returns: dict[int, float]  # step -> eval_return from metrics.jsonl
    episodes: list[Path]  # episodes/step_N.npz, oldest first


def read_policy_run(path: str | Path) -> PolicyRun:
    """A control PPO run directory (its newest intact checkpoint, snapshots and logs); a
    ModelError-style ConfigError names the path when it is not one."""
    from rlfm import checkpoint
    from rlfm.tracking import read_metrics

    path = Path(path)
    run_file = path / "run.json"
    if not run_file.is_file():
        raise ConfigError(f"policy: {path} is not a run directory of `rlfm control ppo`")
    stage = json.loads(run_file.read_text(encoding="utf-8")).get("stage")
    if stage != "control ppo":
        raise ConfigError(f"policy: {path} holds a `rlfm {stage}` run, not `rlfm control ppo`")
    final = checkpoint.latest_checkpoint(path)
    if final is None:
        raise ConfigError(f"policy: {path} has no checkpoint yet; train it first")
    import yaml

    env = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))["env"]
    snapshots = {
        int(p.name.split("_")[-1]): p for p in (path / "policies").glob("step_*") if p.is_dir()
    }
    evals = {
        int(r["step"]): float(r["eval_return"])
        for r in read_metrics(path / "metrics.jsonl")
        if "eval_return" in r
    }
    episodes = sorted((path / "episodes").glob("step_*.npz"))
    return PolicyRun(path, env, final, snapshots, evals, episodes)


def medium_step(run: PolicyRun, ref_min: float, ref_max: float) -> int:
    """The snapshot step whose evaluation return is nearest ref_min + (ref_max − ref_min) / 3."""
    candidates = {s: r for s, r in run.eval_returns.items() if s in run.snapshots}
    if not candidates:
        raise ConfigError(
            f"policy: {run.path} kept no policy snapshots; train it with --snapshots to make "
            "medium or medium-replay datasets"
        )
    target = ref_min + (ref_max - ref_min) / 3
    return min(candidates, key=lambda s: (abs(candidates[s] - target), s))


def policy_fn(model_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A stochastic policy (sampled actions, clipped to the bounds) of a saved ActorCritic."""
    from rlfm.models.control import ActorCritic

    model = ActorCritic.from_pretrained(model_dir)
    model.eval()
    return lambda obs: model.predict(obs, deterministic=False)


def random_policy(env_id: str, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Uniform random actions from the action space (seeded)."""
    from rlfm.offline.envs import make_env

    space = make_env(env_id).action_space
    space.seed(seed)
    return lambda obs: [space.sample() for _ in range(len(obs))]


def mean_return(env_id: str, policy: Callable, episodes: int, seed: int) -> float:
    """Mean return of ``episodes`` episodes of ``policy``."""
    from rlfm.offline.envs import run_episodes

    eps = run_episodes(env_id, policy, [seed + i for i in range(episodes)])
    return float(np.mean([e.total_return for e in eps]))


# ---------------------------------------------------------------------------- making


def datasets_root() -> Path:
    """Minari's local dataset folder (``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``)."""
    from minari.storage.datasets_root_dir import get_dataset_path

    return Path(get_dataset_path())


def check_dataset_id(dataset_id: str) -> None:
    """A ConfigError unless ``dataset_id`` is a valid, not yet existing Minari dataset id."""
    from minari.dataset.minari_dataset import parse_dataset_id

    if not dataset_id.split("/")[-1].rsplit("-v", 1)[-1].isdigit():
        raise ConfigError(
            f"dataset_id: {dataset_id!r} needs a version, e.g. rlfm/{dataset_id.split('/')[-1]}-v0"
        )
    try:
        parse_dataset_id(dataset_id)
    except Exception as e:  # minari raises ValueError / AssertionError for a malformed id
        raise ConfigError(f"dataset_id: {dataset_id!r} is not a Minari id ({e})") from None
    if (datasets_root() / dataset_id).exists():
        raise ConfigError(
            f"dataset_id: {dataset_id} already exists in {datasets_root()}; choose another id or "
            "version (Minari never overwrites a dataset)"
        )


def make_dataset(
    env_id: str,
    kind: Kind,
    dataset_id: str,
    *,
    policies: Sequence[str | Path] = (),
    steps: int = 100_000,
    ref_episodes: int = 20,
    seed: int = 0,
    description: str | None = None,
    progress: bool = True,
) -> Any:
    """Make a Minari dataset of ``kind`` for ``env_id`` and return it (a ``MinariDataset``).

    Args:
        env_id: Gymnasium id, e.g. "Hopper-v5" or "rlfm/SafetyHopperVelocity-v5".
        kind: "random", "medium", "medium-replay" or "expert" (module docstring).
        dataset_id: Minari id ``namespace/name-vN``, e.g. "rlfm/cartpole-expert-v0".
        policies: ``rlfm control ppo`` run directories of ``env_id`` (one or more; required
            except for "random", where the first one, if any, gives ``ref_max_score``).
            medium and medium-replay need runs made with ``--snapshots`` (medium-replay also
            ``--record-episodes``).
        steps: at least this many transitions (whole episodes; medium-replay takes the
            recorded episodes as they are).
        ref_episodes: episodes that estimate ``ref_min_score`` (random policy) and
            ``ref_max_score`` (each run's final policy, deterministic evaluation as in
            training's ``eval_return``; the best run's).
        seed: reset seeds of the dataset's episodes are seed, seed + 1, ...

    Example (a CartPole demo dataset on a 2-core CPU in about a minute)::

        from rlfm.stages import control_ppo
        control_ppo.train(control_ppo.Config(
            config=Path("configs/control/cartpole.yaml"), out=Path("runs/cartpole"),
            snapshots=True, record_episodes=True))
        make_dataset("CartPole-v1", "medium-replay", "rlfm/cartpole-medium-replay-v0",
                     policies=["runs/cartpole"])
    """
    import minari

    from rlfm.offline.envs import make_env, run_episodes

    if kind not in KINDS:
        raise ConfigError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    check_dataset_id(dataset_id)
    runs = [read_policy_run(p) for p in policies]
    for r in runs:
        if r.env != env_id:
            raise ConfigError(f"policy: {r.path} was trained on {r.env}, not {env_id}")
    if kind != "random" and not runs:
        raise ConfigError(f"policy: a {kind} dataset needs a `rlfm control ppo` run (--policy)")
    env = make_env(env_id)
    from rlfm.offline.envs import has_cost

    constrained = has_cost(env, seed)
    env.close()

    partial = datasets_root() / ".rlfm-partial" / dataset_id
    ref = _cached(partial / "ref.json", lambda: _ref_scores(env_id, runs, ref_episodes, seed))
    ref_min, ref_max = ref["ref_min"], ref["ref_max"]

    # one source of episodes per run (or the random policy): (policy, model dir) pairs
    buffers: list[dict[str, np.ndarray]] = []
    if kind == "medium-replay":
        for r in runs:
            upto = medium_step(r, ref_min, ref_max)
            files = [p for p in r.episodes if int(p.stem.split("_")[-1]) <= upto]
            if not files:
                raise ConfigError(
                    f"policy: {r.path} recorded no training episodes; train it with "
                    "--record-episodes to make medium-replay datasets"
                )
            for p in files:
                buffers += load_episodes(p)
    else:
        # a policy per source, made for each chunk from the chunk's seed
        sources: list[Callable[[int], Callable[[np.ndarray], np.ndarray]]] = []
        if kind == "random":
            sources = [lambda s: random_policy(env_id, s)]
        for r in runs if kind != "random" else []:
            model_dir = (
                r.final if kind == "expert" else r.snapshots[medium_step(r, ref_min, ref_max)]
            )
            policy = policy_fn(model_dir)
            sources.append(lambda s, policy=policy: policy)
        buffers = _play_chunks(
            env_id, sources, steps, seed, partial / "chunks", progress, run_episodes
        )

    from minari.data_collector import EpisodeBuffer

    episode_buffers = []
    for i, e in enumerate(buffers):
        infos = None
        if constrained:
            costs = e.get("costs", np.zeros(len(e["rewards"])))
            infos = {"cost": np.concatenate([[0.0], costs])}
        episode_buffers.append(
            EpisodeBuffer(
                id=i,
                observations=e["observations"],
                actions=e["actions"],
                rewards=list(e["rewards"]),
                terminations=list(e["terminations"]),
                truncations=list(e["truncations"]),
                infos=infos,
            )
        )
    spec = make_env(env_id).spec
    with warnings.catch_warnings():  # Minari warns about metadata rlfm has no value for
        warnings.simplefilter("ignore", UserWarning)
        dataset = minari.create_dataset_from_buffers(
            dataset_id,
            episode_buffers,
            env=spec,
            algorithm_name="random" if kind == "random" else f"rlfm PPO ({kind})",
            author="rlfm",
            author_email="none",
            code_permalink="https://pypi.org/project/rlfm/",
            ref_min_score=ref_min,
            ref_max_score=ref_max,
            description=description
            or f"{kind} data of {env_id} made with rlfm's D4RL recipe"
            + (f" from {len(runs)} PPO run(s)" if runs else ""),
        )
    shutil.rmtree(partial, ignore_errors=True)
    return dataset


def _cached(path: Path, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``compute()``, saved at ``path`` and read back when the generation resumes."""
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value) + "\n", encoding="utf-8")
    return value


def _ref_scores(env_id: str, runs: list[PolicyRun], episodes: int, seed: int) -> dict[str, Any]:
    """ref_min (random policy) and ref_max (the best of the runs' final deterministic policies:
    with several PPO-Lagrangian runs the tightest cost limits' experts earn little, and a mean
    over them could fall below the random policy's return)."""
    from rlfm.models.control import ActorCritic

    ref_min = mean_return(env_id, random_policy(env_id, seed), episodes, seed + 10_000)
    experts = []
    for r in runs:
        model = ActorCritic.from_pretrained(r.final)
        model.eval()
        experts.append(
            mean_return(env_id, lambda o, m=model: m.predict(o), episodes, seed + 20_000)
        )
    ref_max = float(max(experts)) if experts else None
    return {"ref_min": ref_min, "ref_max": ref_max}


def _play_chunks(
    env_id: str,
    sources: list[Callable[[int], Callable[[np.ndarray], np.ndarray]]],
    steps: int,
    seed: int,
    folder: Path,
    progress: bool,
    run_episodes: Callable,
) -> list[dict[str, np.ndarray]]:
    """Chunks of CHUNK_EPISODES episodes (sources in turn) until ``steps`` transitions; each
    chunk saved as it completes and reused when the generation is run again. A chunk's reset
    seeds, its random actions and its torch sampling depend only on its index, so a resumed
    generation plays the chunks it lacks exactly as an uninterrupted one."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from rlfm.tracking import console

    episodes: list[dict[str, np.ndarray]] = []
    total = 0
    bar = Progress(
        "[bold]episodes[/]",
        BarColumn(),
        MofNCompleteColumn(),
        "steps",
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
    )
    with bar:
        task = bar.add_task("steps", total=steps)
        chunk = 0
        while total < steps:
            path = folder / f"chunk_{chunk:06d}.npz"
            if path.is_file():
                part = load_episodes(path)
            else:
                seeds = [seed + chunk * CHUNK_EPISODES + i for i in range(CHUNK_EPISODES)]
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seeds[0])
                    policy = sources[chunk % len(sources)](seeds[0])
                    played = run_episodes(env_id, policy, seeds, record=True)
                part = [_as_dict(e) for e in played]
                save_episodes(path, part)
            for e in part:
                if total >= steps:
                    break
                episodes.append(e)
                total += len(e["rewards"])
            bar.update(task, completed=min(total, steps))
            chunk += 1
    return episodes


def _as_dict(e: Any) -> dict[str, np.ndarray]:
    out = {
        "observations": e.observations,
        "actions": np.asarray(e.actions),
        "rewards": e.rewards,
        "terminations": e.terminations,
        "truncations": e.truncations,
    }
    if e.costs is not None:
        out["costs"] = e.costs
    return out


# ---------------------------------------------------------------------------- listing


def list_datasets() -> list[dict[str, Any]]:
    """The local Minari datasets: id, episodes, steps, size on disk, mean return (and cost),
    reference scores."""
    import minari

    rows = []
    for dataset_id, meta in sorted(minari.list_local_datasets().items()):
        row: dict[str, Any] = {
            "id": dataset_id,
            "episodes": int(meta.get("total_episodes", 0)),
            "steps": int(meta.get("total_steps", 0)),
            "bytes": _size(datasets_root() / dataset_id),
            "ref_min_score": meta.get("ref_min_score"),
            "ref_max_score": meta.get("ref_max_score"),
        }
        try:
            ds = minari.load_dataset(dataset_id)
            returns, costs = [], []
            for ep in ds.iterate_episodes():
                returns.append(float(np.sum(ep.rewards)))
                if isinstance(ep.infos, dict) and "cost" in ep.infos:
                    costs.append(float(np.sum(ep.infos["cost"])))
            row["mean_return"] = float(np.mean(returns)) if returns else None
            row["mean_cost"] = float(np.mean(costs)) if costs else None
        except Exception as e:  # a dataset another tool wrote that Minari cannot read
            raise DataError(
                f"dataset {dataset_id} in {datasets_root()} cannot be read: {e}"
            ) from None
        rows.append(row)
    return rows


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_bytes(n: int) -> str:
    """1234567 -> '1.2 MB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


__all__ = ["KINDS", "list_datasets", "load_episodes", "make_dataset", "save_episodes"]
