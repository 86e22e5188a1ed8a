"""Evaluate a Decision Transformer: the achieved return for each asked-for return.

    rlfm dt eval --model runs/dt/hopper --target-returns 1000,2000,3000 --episodes 10 \\
        --out runs/dt/hopper/eval/result.json

The environment is made from the dataset's own stored spec (Minari's environment recovery), so
any dataset whose environment is importable works; ``--env`` overrides it. Each target's
episodes run side by side and start from the same seeds as every other target's.

``result.json`` holds, per task, the normalisation used (``ref_min``, ``ref_max`` and their
``source``: the dataset's ``ref_min_score`` / ``ref_max_score``, else its own min and max
episode return), the dataset's best return, and per target ``target_return``,
``return_mean``, ``return_std``, ``normalised_score`` = 100·(R − ref_min)/(ref_max − ref_min).
Next to it, ``result.png`` is the DT paper's Figure 4: achieved against target return with the
oracle diagonal and the dataset's best return. Without ``--target-returns`` the targets span
the dataset's returns, from the lowest to a quarter of the range above the highest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import yaml

from rlfm.checkpoint import resolve_model_dir
from rlfm.config import Runtime, check, settings
from rlfm.data.trajectories import Task, load_tasks
from rlfm.engine import Engine
from rlfm.errors import ConfigError, DataError, ModelError
from rlfm.evaluate.dt_report import normalised, plot_target_sweep
from rlfm.evaluate.episodes import evaluate_model
from rlfm.models.decision_transformer import DecisionTransformer
from rlfm.tracking import console


def parse_numbers(values: tuple[str, ...], field: str) -> tuple[float, ...]:
    """``("1000,2000", "3000")`` -> (1000.0, 2000.0, 3000.0); a bad entry names ``field``."""
    out = []
    for part in ",".join(values).split(","):
        if not part.strip():
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise ConfigError(f"{field}: {part.strip()!r} is not a number") from None
    return tuple(out)


@settings(Runtime, precision="fp32")
class Config:
    """Evaluate a Decision Transformer at several target returns."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    model: Path = Path("runs/dt")
    """An `rlfm dt train` run directory or one of its checkpoints."""
    target_returns: tuple[str, ...] = ()
    """Target returns, comma- or space-separated (default: a sweep over the dataset's range)."""
    episodes: int = 10
    """Episodes per target (and per task)."""
    out: Path = Path("result.json")
    """Result file; the Figure-4 plot is written next to it (.png)."""
    dataset: tuple[str, ...] = ()
    """Datasets for the environment and the score references (default: the training ones)."""
    env: str | None = None
    """A Gymnasium id to evaluate in instead of the dataset's stored environment."""
    task: str | None = None
    """Evaluate only this task of a multi-task model (default: every task)."""
    max_steps: int | None = None
    """Cut episodes at this many steps (default: the environment's limit)."""

    def __post_init__(self) -> None:
        check(self.episodes >= 1, "episodes", f"must be ≥ 1, got {self.episodes}")
        parse_numbers(self.target_returns, "target_returns")
        check(
            self.max_steps is None or self.max_steps >= 1,
            "max_steps",
            f"must be ≥ 1, got {self.max_steps}",
        )


def trained_datasets(ckpt: Path, override: tuple[str, ...]) -> tuple[str, ...]:
    """The datasets a checkpoint was trained on (its config.yaml), unless overridden."""
    if override:
        return override
    try:
        stored = yaml.safe_load((ckpt / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ModelError(
            f"model: cannot read {ckpt / 'config.yaml'} ({e}); pass --dataset"
        ) from None
    names = stored.get("dataset") or ()
    if not names:
        raise ModelError(f"model: {ckpt / 'config.yaml'} names no dataset; pass --dataset")
    return tuple(names)


def pick_tasks(tasks: list[Task], names: list[str], only: str | None) -> list[tuple[int, Task]]:
    """(model task index, task) pairs to evaluate; the datasets' environments must be the
    model's tasks."""
    index = {n: i for i, n in enumerate(names)} if names else {tasks[0].name: 0}
    chosen = []
    for t in tasks:
        if t.name not in index:
            raise DataError(
                f"dataset: environment {t.name} is not one of the model's tasks "
                f"({', '.join(index)})"
            )
        if only is None or only == t.name:
            chosen.append((index[t.name], t))
    if not chosen:
        raise ConfigError(f"task: {only!r} is not one of {', '.join(t.name for t in tasks)}")
    return chosen


def default_targets(task: Task, n: int = 6) -> list[float]:
    """From the lowest episode return to a quarter of the range above the highest."""
    lo, hi = float(task.returns.min()), float(task.returns.max())
    return [float(x) for x in np.linspace(lo, hi + 0.25 * (hi - lo), n)]


def evaluate(cfg: Config) -> dict:
    """Run the evaluation; writes and returns the result."""
    ckpt = resolve_model_dir(cfg.model)
    model = DecisionTransformer.from_pretrained(ckpt)
    if model.cfg.cost_tokens:
        raise ModelError(f"model: {ckpt} is a Constrained DT; evaluate it with `rlfm cdt eval`")
    engine = Engine.create(cfg.device, cfg.precision)
    engine.seed(cfg.seed)
    model.to(engine.device)
    tasks = load_tasks(trained_datasets(ckpt, cfg.dataset))
    asked = parse_numbers(cfg.target_returns, "target_returns")
    result: dict = {"model": str(ckpt), "episodes": cfg.episodes, "seed": cfg.seed, "tasks": []}
    t0 = time.perf_counter()
    for index, task in pick_tasks(tasks, model.cfg.task_names, cfg.task):
        targets = list(asked) or default_targets(task)
        d = task.datasets[0]
        spec = cfg.env or d.eval_env_spec or d.env_spec
        episodes = evaluate_model(
            model,
            spec,
            d.name,
            [(g, None) for g in targets],
            cfg.episodes,
            task_index=index,
            seed=cfg.seed,
            max_steps=cfg.max_steps,
            device=engine.device,
        )
        ref = task.reference()
        rows = []
        for j, target in enumerate(targets):
            got = [e.ret for e in episodes[j * cfg.episodes : (j + 1) * cfg.episodes]]
            lengths = [e.length for e in episodes[j * cfg.episodes : (j + 1) * cfg.episodes]]
            mean = float(np.mean(got))
            rows.append(
                {
                    "target_return": target,
                    "return_mean": mean,
                    "return_std": float(np.std(got)),
                    "normalised_score": normalised(mean, ref["ref_min"], ref["ref_max"]),
                    "length_mean": float(np.mean(lengths)),
                }
            )
        result["tasks"].append(
            {
                "task": task.name,
                "datasets": [x.name for x in task.datasets],
                "normalisation": ref,
                "dataset_best_return": float(task.returns.max()),
                "results": rows,
            }
        )
    seconds = time.perf_counter() - t0
    n_episodes = sum(len(t["results"]) for t in result["tasks"]) * cfg.episodes
    result["seconds"] = seconds
    result["episodes_per_s"] = n_episodes / seconds
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result["plot"] = str(plot_target_sweep(result["tasks"], out.with_suffix(".png")))
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    show(result)
    console.print(f"result: {out}\nplot: {result['plot']}")
    return result


def show(result: dict) -> None:
    """Print each task's sweep as a table."""
    from rich.table import Table

    for task in result["tasks"]:
        ref = task["normalisation"]
        table = Table(
            title=f"{task['task']}: normalised by {ref['source']} "
            f"({ref['ref_min']:.1f} … {ref['ref_max']:.1f}); best in dataset "
            f"{task['dataset_best_return']:.1f}"
        )
        for col in ("target return", "achieved (mean ± std)", "normalised score"):
            table.add_column(col, justify="right")
        for r in task["results"]:
            table.add_row(
                f"{r['target_return']:.1f}",
                f"{r['return_mean']:.1f} ± {r['return_std']:.1f}",
                f"{r['normalised_score']:.1f}",
            )
        console.print(table)
