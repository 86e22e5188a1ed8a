"""Constrained Decision Transformer: offline safe RL, one model for every cost threshold.

Paper: Liu, Guo, Yao, Cen, Yu, Zhang & Zhao (2023), "Constrained Decision Transformer for
Offline Safe Reinforcement Learning".

Tokens (R̂_t, Ĉ_t, s_t, a_t), Ĉ_t = Σ_{t'≥t} c_t' the cost-to-go of the step costs
``info["cost"]``. The policy is stochastic, trained with likelihood, entropy and a learned
temperature λ, plus small reward and cost prediction losses (losses/dt.py):

    L = − E log π(a_t | ·) − λ E H(π) + w (E (r̂_t − r_t)² + E (ĉ_t − c_t)²)
    L_λ = λ (E H(π) − H̄),  H̄ = −|A| (Box) or ½ log |A| (Discrete)

A share of the episodes is relabelled with infeasible targets above the reward–cost Pareto
frontier (data/trajectories.py: relabel_infeasible), so that when asked for more return than
is possible at a cost threshold the model keeps the threshold. At deployment the user asks for
a return R̂_0 and a cost threshold Ĉ_0; after each step Ĉ ← Ĉ − c_t (`rlfm cdt eval`).

``--method`` trains CDT or one of the paper's baselines and ablations (Table 1):

    method              model              cost tokens  policy         entropy  relabelling
    cdt                 transformer        yes          Gaussian       yes      yes
    cdt-no-augment      transformer        yes          Gaussian       yes      no
    cdt-no-entropy      transformer        yes          Gaussian       no       yes
    cdt-deterministic   transformer        yes          tanh (MSE)     –        yes
    dt-cost             transformer        yes          tanh (MSE)     –        no
    bc-all              MLP                –            tanh (MSE)     –        all episodes
    bc-safe             MLP per threshold  –            tanh (MSE)     –        episodes with
                                                                                cost ≤ threshold

The paper's recipe (OSRL's defaults): K = 10, 128 wide, 3 layers, 8 heads, GELU, dropout 0.1,
batch 2048, AdamW (lr 1e-4, weight decay 1e-4), 500 warm-up steps, gradients clipped to 0.25,
100,000 steps, initial temperature 0.1, 20% relabelled, prediction weight 0.02
(``configs/cdt/paper.yaml``). Deviations: see the model's and the data module's docstrings
(Gaussian log σ clamped, log-likelihood summed over action dimensions, an exact step frontier,
step reward and cost regressed); the temperature is one more parameter of the same AdamW
(OSRL gives it its own Adam with the same learning rate and no warm-up); the return and cost
scales default to the dataset's largest episode return and cost; BC uses an MLP of the
transformer's width and depth.

One process:
    rlfm cdt train --dataset safe/hopper-velocity/mixed-v0 --out runs/cdt/hopper
N processes (data parallel; --batch-size is global):
    torchrun --nproc_per_node 4 -m rlfm cdt train --config configs/cdt/paper.yaml \\
        --dataset safe/hopper-velocity/mixed-v0 --out runs/cdt/hopper
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rlfm import checkpoint
from rlfm.config import RunSettings, check, settings
from rlfm.data.order import EpochOrder
from rlfm.data.trajectories import (
    Task,
    TrajectoryData,
    Windows,
    default_scale,
    describe,
    frontier_return,
    load_tasks,
    model_statistics,
    relabel_infeasible,
)
from rlfm.engine import Engine
from rlfm.errors import DataError
from rlfm.evaluate.episodes import evaluate_model
from rlfm.evaluate.plots import plot_metrics
from rlfm.losses.dt import (
    action_cross_entropy,
    action_mse_loss,
    policy_nll_entropy_loss,
    step_prediction_loss,
    temperature_loss,
)
from rlfm.models.decision_transformer import BCConfig, BCPolicy, DecisionTransformer, DTConfig
from rlfm.optim import adamw, warmup_cosine
from rlfm.run import Run
from rlfm.stages import dt
from rlfm.stages.dt import check_transformer_settings
from rlfm.stages.dt_eval import parse_numbers

Method = Literal[
    "cdt", "cdt-no-augment", "cdt-no-entropy", "cdt-deterministic", "dt-cost", "bc-all", "bc-safe"
]
# method -> (stochastic, entropy, relabelling); BC methods are not transformers
TRANSFORMERS: dict[str, tuple[bool, bool, bool]] = {
    "cdt": (True, True, True),
    "cdt-no-augment": (True, True, False),
    "cdt-no-entropy": (True, False, True),
    "cdt-deterministic": (False, False, True),
    "dt-cost": (False, False, False),
}


@settings(
    RunSettings,
    dt.TransformerTraining,
    docs={
        "hidden": "Width of the transformer (and of the BC MLP).",
        "layers": "Transformer blocks (BC: hidden layers).",
    },
    context=10,  # the CDT recipe: a shorter window, more heads, larger batches
    heads=8,
    batch_size=2048,
    warmup_steps=500,
    **dt.RUN_DEFAULTS,
)
class Config:
    """Train a Constrained Decision Transformer (or a baseline) on a Minari dataset with costs."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    out: Path = Path("runs/cdt")
    """Output directory. Running again on the same directory resumes from its newest checkpoint."""
    dataset: tuple[str, ...] = ()
    """Minari dataset ids or folders of one environment, whose step infos carry "cost"."""
    method: Method = "cdt"
    """CDT, an ablation, or a baseline (see the module docstring)."""
    cost_thresholds: tuple[str, ...] = ("10", "20", "40")
    """Cost thresholds (comma- or space-separated): BC-Safe trains a policy for each; the
    evaluations during training use them."""
    return_scale: float | None = None
    """R̂ is divided by this inside the model. Default: the largest |episode return|."""
    cost_scale: float | None = None
    """Ĉ is divided by this inside the model. Default: the largest episode cost."""
    augment_share: float = 0.2
    """Relabelled copies per episode of the data (methods with relabelling)."""
    init_temperature: float = 0.1
    """Initial entropy temperature λ."""
    prediction_weight: float = 0.02
    """Weight w of the reward and cost prediction losses."""

    RESUMABLE = ("steps", "eval_episodes", "max_eval_steps")

    def __post_init__(self) -> None:
        thresholds = parse_numbers(self.cost_thresholds, "cost_thresholds")
        check(len(thresholds) >= 1, "cost_thresholds", "give at least one threshold")
        check(
            all(c > 0 for c in thresholds),
            "cost_thresholds",
            f"must all be > 0, got {', '.join(f'{c:g}' for c in thresholds)}",
        )
        check_transformer_settings(self)
        for name in ("return_scale", "cost_scale"):
            v = getattr(self, name)
            check(v is None or v > 0, name, f"must be > 0, got {v}")
        check(
            0 <= self.augment_share <= 1,
            "augment_share",
            f"must be in [0, 1], got {self.augment_share}",
        )
        check(
            self.init_temperature > 0,
            "init_temperature",
            f"must be > 0, got {self.init_temperature}",
        )
        check(
            self.prediction_weight >= 0,
            "prediction_weight",
            f"must be ≥ 0, got {self.prediction_weight}",
        )

    @property
    def thresholds(self) -> tuple[float, ...]:
        return parse_numbers(self.cost_thresholds, "cost_thresholds")


class Samplers:
    """BC-Safe's resumable orders, one per threshold, saved as one checkpoint entry."""

    def __init__(self, orders: list[EpochOrder]) -> None:
        self.orders = orders

    def state_dict(self) -> dict[str, Any]:
        return {"orders": [o.state_dict() for o in self.orders]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for o, s in zip(self.orders, state["orders"]):
            o.load_state_dict(s)


def single_task(cfg: Config) -> Task:
    """The one environment's datasets (CDT models one task; several environments: an error)."""
    tasks = load_tasks(cfg.dataset, need_costs=True)
    if len(tasks) > 1:
        raise DataError(
            "dataset: rlfm cdt train models one environment; these datasets come from "
            + ", ".join(t.name for t in tasks)
        )
    return tasks[0]


def training_data(cfg: Config, task: Task) -> list[TrajectoryData]:
    """The method's training data: one TrajectoryData (BC-Safe: one per threshold)."""
    returns, costs = task.returns, task.cost_returns
    if cfg.method == "bc-safe":
        out = []
        for kappa in cfg.thresholds:
            keep = np.flatnonzero(costs <= kappa)
            if len(keep) == 0:
                raise DataError(
                    f"dataset: no episode has a total cost within the threshold {kappa:g} "
                    f"(lowest: {costs.min():g}); BC-Safe has nothing to imitate"
                )
            out.append(TrajectoryData([task], episodes=[keep]))
        return out
    relabel = None
    if cfg.method in TRANSFORMERS and TRANSFORMERS[cfg.method][2] and cfg.augment_share > 0:
        rng = np.random.default_rng(cfg.seed)
        relabel = [relabel_infeasible(returns, costs, cfg.augment_share, rng)]
    return [TrajectoryData([task], relabel=relabel)]


def build_model(cfg: Config, task: Task, data: TrajectoryData) -> torch.nn.Module:
    """A new CDT-family transformer or BC MLP with the data's statistics in its buffers."""
    stats = model_statistics([task], data.state_dim, data.action_dim)
    if cfg.method in TRANSFORMERS:
        stochastic = TRANSFORMERS[cfg.method][0]
        model: torch.nn.Module = DecisionTransformer(
            DTConfig(
                state_dim=data.state_dim,
                action_dim=data.action_dim,
                discrete=data.discrete,
                cost_tokens=True,
                stochastic=stochastic,
                prediction_heads=True,
                context=cfg.context,
                hidden=cfg.hidden,
                layers=cfg.layers,
                heads=cfg.heads,
                dropout=cfg.dropout,
                activation="gelu",
                max_timestep=task.max_episode_steps,
                return_scale=cfg.return_scale or default_scale(task.returns),
                cost_scale=cfg.cost_scale or default_scale(task.cost_returns),
                init_temperature=cfg.init_temperature,
                task_names=[task.name],
            )
        )
    else:
        model = BCPolicy(
            BCConfig(
                state_dim=data.state_dim,
                action_dim=data.action_dim,
                discrete=data.discrete,
                hidden=cfg.hidden,
                layers=cfg.layers,
                thresholds=list(cfg.thresholds) if cfg.method == "bc-safe" else [],
            )
        )
        stats = {k: v[:1] for k, v in stats.items()}
    for name, value in stats.items():
        getattr(model, name).copy_(value)
    return model


def cdt_loss(model: torch.nn.Module, w: Windows, cfg: Config) -> tuple[torch.Tensor, dict]:
    """The transformer methods' loss and its parts (see the module docstring)."""
    net: DecisionTransformer = Engine.unwrap(model)  # type: ignore[assignment]
    mc = net.cfg
    out = model(w.states, w.actions, w.returns_to_go, w.timesteps, w.costs_to_go)
    parts: dict[str, float] = {}
    if mc.stochastic:
        logp, ent = net.policy_terms(out, w.actions)
        entropy_on = TRANSFORMERS[cfg.method][1]
        lam = net.temperature() if entropy_on else 0.0
        loss, nll, entropy = policy_nll_entropy_loss(logp, ent, w.mask, lam)
        if entropy_on:
            target = 0.5 * math.log(mc.action_dim) if mc.discrete else -float(mc.action_dim)
            loss = loss + temperature_loss(net.temperature(), entropy, target)
            parts["temperature"] = net.temperature().item()
        parts |= {"nll": float(nll), "entropy": float(entropy)}
    elif mc.discrete:
        loss = action_cross_entropy(out.action, w.actions, w.mask)
    else:
        loss = action_mse_loss(out.action, net.unit_actions(w.actions), w.mask)
    if cfg.prediction_weight > 0:
        assert out.reward is not None and out.cost is not None
        pred = step_prediction_loss(out.reward, w.rewards / mc.return_scale, w.mask)
        pred = pred + step_prediction_loss(out.cost, w.costs / mc.cost_scale, w.mask)
        loss = loss + cfg.prediction_weight * pred
        parts["prediction_loss"] = float(pred.detach())
    return loss, parts


def bc_loss(model: torch.nn.Module, w: Windows, index: int) -> torch.Tensor:
    """Behaviour cloning of the windows' first steps by policy ``index``."""
    net: BCPolicy = Engine.unwrap(model)  # type: ignore[assignment]
    pred = model(w.states[:, :1], index)  # (B, 1, A)
    if net.cfg.discrete:
        return action_cross_entropy(pred, w.actions[:, :1], w.mask[:, :1])
    return action_mse_loss(pred, net.unit_actions(w.actions[:, :1]), w.mask[:, :1])


def evaluate_thresholds(
    model: torch.nn.Module, task: Task, cfg: Config, device: torch.device
) -> dict[str, float]:
    """Mean return and cost at each threshold, asking for the frontier's return there."""
    conditions = [(frontier_return(task.returns, task.cost_returns, k), k) for k in cfg.thresholds]
    d = task.datasets[0]
    eps = evaluate_model(
        model,
        d.eval_env_spec or d.env_spec,
        d.name,
        conditions,
        cfg.eval_episodes,
        seed=cfg.seed + 10_000,
        max_steps=cfg.max_eval_steps,
        device=device,
    )
    row: dict[str, float] = {}
    n = cfg.eval_episodes
    for j, (_, kappa) in enumerate(conditions):
        part = eps[j * n : (j + 1) * n]
        row[f"eval_return/{kappa:g}"] = float(np.mean([e.ret for e in part]))
        row[f"eval_cost/{kappa:g}"] = float(np.mean([e.cost for e in part]))
    return row


def train(cfg: Config) -> dict[str, float]:
    """Train; returns the final metrics (loss, eval_return/κ, eval_cost/κ)."""
    with Run(cfg, "cdt train", total=cfg.steps) as run:
        if run.finished:
            return run.summary
        engine = run.engine
        engine.reuse_freed_cpu_memory()
        task = single_task(cfg)
        datas = training_data(cfg, task)
        is_bc = cfg.method not in TRANSFORMERS
        K = 1 if is_bc else cfg.context
        if run.resume is not None:
            model: torch.nn.Module = (
                BCPolicy.from_pretrained(run.resume)
                if is_bc
                else DecisionTransformer.from_pretrained(run.resume)
            )
        else:
            model = build_model(cfg, task, datas[0])
        orders = [
            EpochOrder(len(d), cfg.batch_size, cfg.seed + i, f"training steps of policy {i}")
            for i, d in enumerate(datas)
        ]
        sampler = Samplers(orders)
        rows = engine.shard(cfg.batch_size)
        n_micro = engine.micro_batches(cfg.batch_size, cfg.micro_batch_size)
        micro = (rows.stop - rows.start) // n_micro
        model.train()
        model = engine.prepare(model)
        optimizer = adamw(model, cfg.lr, cfg.weight_decay)
        scheduler = warmup_cosine(optimizer, cfg.warmup_steps, cfg.steps, min_ratio=1.0)
        step = run.track(model, optimizer=optimizer, scheduler=scheduler, data=sampler)
        net = Engine.unwrap(model)
        info = describe(task)
        n_params = sum(p.numel() for p in net.parameters())
        frontier = ", ".join(
            f"κ={k:g}: R={frontier_return(task.returns, task.cost_returns, k):.1f}"
            for k in cfg.thresholds
        )
        run.print(
            f"[bold]rlfm cdt train[/]  method {cfg.method}\n"
            f"{info['task']}: {info['episodes']} episodes, {info['steps']:,} steps, returns "
            f"{info['return_min']:.1f} … {info['return_max']:.1f}, costs {info['cost_min']:g} … "
            f"{info['cost_max']:g}; frontier returns {frontier}\n"
            f"{sum(len(d) for d in datas):,} training steps (relabelled copies included); "
            f"{n_params / 1e6:.2f}M parameters\n"
            + run.banner(
                f"batch {cfg.batch_size} = {engine.world_size} × {n_micro} × {micro}, "
                f"lr {cfg.lr:g}",
                step,
            )
        )

        metrics: dict[str, float] = {}
        train_time, timed_steps = 0.0, 0
        while step < cfg.steps:
            t0 = time.perf_counter()
            batches = [d.windows(o.next_batch()[rows], K) for d, o in zip(datas, orders)]
            loss_sum, parts = 0.0, {}
            for i in range(n_micro):
                part = torch.arange(i * micro, (i + 1) * micro)
                with engine.micro_step(model, last=i == n_micro - 1):
                    if is_bc:  # one loss per policy (BC-Safe: one per threshold)
                        losses = [
                            bc_loss(model, b.select(part).to(engine.device), j)
                            for j, b in enumerate(batches)
                        ]
                        loss = torch.stack(losses).sum()
                    else:
                        loss, parts = cdt_loss(
                            model, batches[0].select(part).to(engine.device), cfg
                        )
                    engine.backward(loss, weight=micro / cfg.batch_size)
                loss_sum += loss.item() / n_micro
            grad_norm = engine.step(model, optimizer, scheduler, cfg.max_grad_norm)
            step += 1
            train_time, timed_steps = train_time + time.perf_counter() - t0, timed_steps + 1
            row: dict[str, float] = {}
            if run.due(step, cfg.log_every):
                row = {
                    "loss": engine.all_reduce_mean(loss_sum),
                    **parts,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "steps_per_s": timed_steps / train_time,
                    "epoch": orders[0].epochs,
                }
                train_time, timed_steps = 0.0, 0
            if cfg.eval_episodes and run.due(step, cfg.eval_every) and engine.is_main:
                row |= evaluate_thresholds(net, task, cfg, engine.device)
            run.tracker.log(step, row)
            metrics |= row
            run.checkpoint(step)

        summary = {k: v for k, v in metrics.items() if k.startswith(("loss", "eval_"))}
        if engine.is_main:
            plots = cfg.out / "plots"
            plot_metrics(cfg.out / "metrics.jsonl", plots / "loss.png", ["loss"])
            for kind in ("eval_return", "eval_cost"):
                keys = [k for k in summary if k.startswith(kind + "/")]
                if keys:
                    plot_metrics(cfg.out / "metrics.jsonl", plots / f"{kind}.png", keys)
            run.print(
                "  ".join(f"{k} {v:.4g}" for k, v in summary.items())
                + f"\nmodel: {checkpoint.latest_checkpoint(cfg.out)}\n"
                f"next: rlfm cdt eval --model {cfg.out} --cost-thresholds "
                + ",".join(f"{k:g}" for k in cfg.thresholds)
            )
        return run.finish(summary)
