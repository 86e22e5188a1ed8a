"""Evaluate a Constrained DT (or a baseline) across cost thresholds: one trained model, a
zero-shot sweep.

    rlfm cdt eval --model runs/cdt/hopper --cost-thresholds 10,20,40 --episodes 10 \\
        --out runs/cdt/hopper/eval/result.json

Each threshold κ is deployed with R̂_0 = a target return and Ĉ_0 = κ; Ĉ then falls by each
step's ``info["cost"]``. Without ``--target-returns``, each threshold's target is read off the
dataset's reward–cost frontier (the best episode return among episodes whose total cost is
within κ) and printed; with it, give one target for all thresholds or one per threshold.
Several ``--model`` (the same method trained with different seeds) are averaged.

``result.json``: per threshold ``cost_threshold``, ``target_return``, ``return_mean``,
``cost_mean``, ``normalised_return`` (100·(R − r_min)/(r_max − r_min) with r_min, r_max the
dataset's lowest and highest episode return, the CDT paper's convention; a constrained task's
random or unconstrained reference policies would not bound its safe returns) and ``normalised_cost`` (cost / threshold; ≤ 1 is safe), their average over
thresholds and seeds under ``average``, the method and the task. Printed in the CDT paper's
Table 1 layout; ``result.png`` plots achieved reward and cost against the threshold.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import yaml

from rlfm.checkpoint import resolve_model_dir
from rlfm.config import Runtime, check, settings
from rlfm.data.trajectories import frontier_return, load_tasks
from rlfm.engine import Engine
from rlfm.errors import ConfigError, DataError, ModelError
from rlfm.evaluate.dt_report import SAFE, normalised, plot_threshold_sweep, print_table1
from rlfm.evaluate.episodes import evaluate_model
from rlfm.models.decision_transformer import load_policy
from rlfm.stages.dt_eval import parse_numbers, trained_datasets
from rlfm.tracking import console


@settings(Runtime, precision="fp32")
class Config:
    """Evaluate a Constrained DT or baseline at several cost thresholds."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    model: tuple[Path, ...] = (Path("runs/cdt"),)
    """`rlfm cdt train` run directories or checkpoints of one method (several seeds: averaged)."""
    cost_thresholds: tuple[str, ...] = ("10", "20", "40")
    """Cost thresholds κ > 0, comma- or space-separated."""
    target_returns: tuple[str, ...] = ()
    """One target return for all thresholds or one per threshold (default: the frontier's)."""
    episodes: int = 10
    """Episodes per threshold and model."""
    out: Path = Path("result.json")
    """Result file; the threshold plot is written next to it (.png)."""
    dataset: tuple[str, ...] = ()
    """Dataset for the environment, references and frontier (default: the training one)."""
    env: str | None = None
    """A Gymnasium id to evaluate in instead of the dataset's stored environment."""
    max_steps: int | None = None
    """Cut episodes at this many steps (default: the environment's limit)."""

    def __post_init__(self) -> None:
        check(len(self.model) >= 1, "model", "give at least one --model")
        check(self.episodes >= 1, "episodes", f"must be ≥ 1, got {self.episodes}")
        kappas = parse_numbers(self.cost_thresholds, "cost_thresholds")
        check(len(kappas) >= 1, "cost_thresholds", "give at least one threshold")
        check(
            all(k > 0 for k in kappas),
            "cost_thresholds",
            f"must all be > 0 (normalised cost = cost / threshold), got "
            f"{', '.join(f'{k:g}' for k in kappas)}",
        )
        targets = parse_numbers(self.target_returns, "target_returns")
        check(
            len(targets) in (0, 1, len(kappas)),
            "target_returns",
            f"give one target or one per threshold ({len(kappas)}), got {len(targets)}",
        )
        check(
            self.max_steps is None or self.max_steps >= 1,
            "max_steps",
            f"must be ≥ 1, got {self.max_steps}",
        )


def method_of(ckpt: Path) -> str:
    """The method a checkpoint was trained with (its config.yaml)."""
    try:
        stored = yaml.safe_load((ckpt / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        stored = {}
    return str(stored.get("method", "cdt"))


def evaluate(cfg: Config) -> dict:
    """Run the sweep; writes and returns the result."""
    kappas = parse_numbers(cfg.cost_thresholds, "cost_thresholds")
    asked = parse_numbers(cfg.target_returns, "target_returns")
    ckpts = [resolve_model_dir(m) for m in cfg.model]
    methods = {method_of(c) for c in ckpts}
    if len(methods) > 1:
        raise ConfigError(f"model: the models were trained with different methods ({methods})")
    engine = Engine.create(cfg.device, cfg.precision)
    engine.seed(cfg.seed)
    tasks = load_tasks(trained_datasets(ckpts[0], cfg.dataset), need_costs=True)
    if len(tasks) > 1:
        raise DataError("dataset: give the datasets of one environment")
    task = tasks[0]
    R, C = task.returns, task.cost_returns
    targets = (
        [asked[0]] * len(kappas)
        if len(asked) == 1
        else list(asked)
        if asked
        else [frontier_return(R, C, k) for k in kappas]
    )
    if not asked:
        console.print(
            "target returns from the dataset's frontier: "
            + ", ".join(f"κ={k:g} → {g:.1f}" for k, g in zip(kappas, targets))
        )
    d = task.datasets[0]
    spec = cfg.env or d.eval_env_spec or d.env_spec
    ref = task.reference(empirical=True)
    t0 = time.perf_counter()
    per_model = []  # (model, threshold) -> returns, costs
    for ckpt in ckpts:
        model = load_policy(ckpt).to(engine.device)
        if getattr(model.cfg, "cost_tokens", True) is False:
            raise ModelError(f"model: {ckpt} is a plain DT; evaluate it with `rlfm dt eval`")
        episodes = evaluate_model(
            model,
            spec,
            d.name,
            list(zip(targets, kappas)),
            cfg.episodes,
            seed=cfg.seed,
            max_steps=cfg.max_steps,
            device=engine.device,
        )
        n = cfg.episodes
        per_model.append(
            [
                (
                    [e.ret for e in episodes[j * n : (j + 1) * n]],
                    [e.cost for e in episodes[j * n : (j + 1) * n]],
                )
                for j in range(len(kappas))
            ]
        )
    seconds = time.perf_counter() - t0
    rows = []
    for j, (kappa, target) in enumerate(zip(kappas, targets)):
        rets = [np.mean(m[j][0]) for m in per_model]  # per seed, then over seeds
        costs = [np.mean(m[j][1]) for m in per_model]
        all_costs = [c for m in per_model for c in m[j][1]]
        all_rets = [r for m in per_model for r in m[j][0]]
        ret, cost = float(np.mean(rets)), float(np.mean(costs))
        rows.append(
            {
                "cost_threshold": kappa,
                "target_return": target,
                "return_mean": ret,
                "return_std": float(np.std(all_rets)),
                "cost_mean": cost,
                "cost_std": float(np.std(all_costs)),
                "normalised_return": normalised(ret, ref["ref_min"], ref["ref_max"]),
                "normalised_cost": cost / kappa,
                "safe": bool(cost / kappa <= SAFE),
            }
        )
    result = {
        "method": methods.pop(),
        "task": task.name,
        "models": [str(c) for c in ckpts],
        "datasets": [x.name for x in task.datasets],
        "episodes": cfg.episodes,
        "seed": cfg.seed,
        "normalisation": ref,
        "results": rows,
        "average": {
            "normalised_return": float(np.mean([r["normalised_return"] for r in rows])),
            "normalised_cost": float(np.mean([r["normalised_cost"] for r in rows])),
        },
        "seconds": seconds,
    }
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result["plot"] = str(plot_threshold_sweep(result, out.with_suffix(".png")))
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    show(result)
    console.print(f"result: {out}\nplot: {result['plot']}")
    return result


def show(result: dict) -> None:
    """Per-threshold rows, then the Table 1 cell of this method and task."""
    from rich.table import Table

    table = Table(title=f"{result['method']} on {result['task']}")
    for col in ("threshold", "target return", "return", "cost", "norm. return", "norm. cost"):
        table.add_column(col, justify="right")
    for r in result["results"]:
        style = "bold" if r["safe"] else "dim"
        table.add_row(
            f"{r['cost_threshold']:g}",
            f"{r['target_return']:.1f}",
            f"{r['return_mean']:.1f} ± {r['return_std']:.1f}",
            f"{r['cost_mean']:.1f} ± {r['cost_std']:.1f}",
            f"[{style}]{r['normalised_return']:.2f}[/]",
            f"[{style}]{r['normalised_cost']:.2f}[/]",
        )
    console.print(table)
    print_table1([result], title="averaged over thresholds (Table 1 layout; bold = safe)")
