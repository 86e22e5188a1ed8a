"""Decision Transformer: offline RL as return-conditioned sequence modelling.

Paper: Chen, Lu, Rajeswaran, Lee, Grover, Laskin, Abbeel, Srinivas & Mordatch (2021),
"Decision Transformer: Reinforcement Learning via Sequence Modeling".

A causal transformer reads windows of K steps (R̂_t, s_t, a_t), R̂_t = Σ_{t'≥t} r_t' the
return-to-go, and predicts each action from its state token (models/decision_transformer.py).
Training is supervised (losses/dt.py):

    Box actions:      L = E ‖â_t − a_t‖²           (tanh head, actions in the unit box)
    Discrete actions: L = − E log softmax(z_t)[a_t]

At deployment the user asks for a return: R̂_0 = target, then R̂_{t+1} = R̂_t − r_t, and the
model acts from the last K steps (`rlfm dt eval`, evaluate/episodes.py).

Data: any Minari dataset with a Box observation and Box (finite bounds) or Discrete actions,
by id in the local Minari folder (``MINARI_DATASETS_PATH`` honoured) or by folder path
(data/trajectories.py). State normalisation and the return scale come from the data and are
saved with the model. Several ``--dataset`` make a multi-task model: datasets of the same
environment are pooled (e.g. medium + expert), each environment is a task with its own state
statistics and a learned task embedding, evaluated per task.

The paper's recipe (Gym): K = 20, 128 wide, 3 layers, 1 head, ReLU, dropout 0.1, batch 64,
AdamW (lr 1e-4, weight decay 1e-4), linear warm-up over 10,000 steps, gradients clipped to
0.25, 100,000 steps, returns-to-go divided by 1000 (``configs/dt/paper.yaml``). Deviations:
``--return-scale`` defaults to the dataset's largest episode return instead of a per-environment
constant, and windows are right-padded (see the model's docstring; the outputs at real steps
are the same). During training the model is evaluated every ``--eval-every`` steps at the
dataset's best episode return.

One process:
    rlfm dt train --dataset mujoco/hopper/medium-v0 --out runs/dt/hopper
N processes (data parallel; --batch-size is global):
    torchrun --nproc_per_node 4 -m rlfm dt train --dataset mujoco/hopper/medium-v0 \\
        --config configs/dt/paper.yaml --out runs/dt/hopper
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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
    load_tasks,
    model_statistics,
)
from rlfm.engine import Engine
from rlfm.evaluate.dt_report import normalised
from rlfm.evaluate.episodes import evaluate_model
from rlfm.evaluate.plots import plot_metrics
from rlfm.losses.dt import action_cross_entropy, action_mse_loss
from rlfm.models.decision_transformer import DecisionTransformer, DTConfig
from rlfm.optim import adamw, warmup_cosine
from rlfm.run import Run


@dataclass(frozen=True)
class TransformerTraining:
    """The model and optimisation settings `rlfm dt train` and `rlfm cdt train` share (the
    Decision Transformer paper's Gym setup by default, Chen et al. 2021, Table 8)."""

    context: int = 20
    """K: steps per window."""
    hidden: int = 128
    """Width of the transformer."""
    layers: int = 3
    """Transformer blocks."""
    heads: int = 1
    """Attention heads."""
    dropout: float = 0.1
    """Dropout on embeddings, attention and residual branches."""
    steps: int = 100_000
    """Optimizer steps."""
    batch_size: int = 64
    """Windows per optimizer step, summed over all processes."""
    micro_batch_size: int | None = None
    """Windows per forward/backward pass per process (gradient accumulation when smaller)."""
    lr: float = 1e-4
    """Learning rate (AdamW), reached after the warm-up and then constant."""
    weight_decay: float = 1e-4
    """AdamW weight decay on weight matrices."""
    warmup_steps: int = 10_000
    """Steps of linear learning-rate warm-up."""
    eval_episodes: int = 5
    """Episodes per evaluation during training, per task or threshold (0 = no evaluation)."""
    max_eval_steps: int | None = None
    """Cut evaluation episodes at this many steps (default: the environment's limit)."""


RUN_DEFAULTS = dict(eval_every=2000, save_every=2000, log_every=50, max_grad_norm=0.25)
"""The run settings of `rlfm dt train` and `rlfm cdt train`."""


@settings(RunSettings, TransformerTraining, **RUN_DEFAULTS)
class Config:
    """Train a Decision Transformer on Minari datasets."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    out: Path = Path("runs/dt")
    """Output directory. Running again on the same directory resumes from its newest checkpoint."""
    dataset: tuple[str, ...] = ()
    """Minari dataset ids (in MINARI_DATASETS_PATH or ~/.minari/datasets) or dataset folders;
    several make a multi-task model (one task per environment)."""
    activation: Literal["relu", "gelu"] = "relu"
    """MLP activation (the original code: ReLU)."""
    return_scale: float | None = None
    """R̂ is divided by this inside the model. Default: the largest |episode return| in the data."""

    RESUMABLE = ("steps", "eval_episodes", "max_eval_steps")

    def __post_init__(self) -> None:
        check_transformer_settings(self)
        check(
            self.return_scale is None or self.return_scale > 0,
            "return_scale",
            f"must be > 0, got {self.return_scale}",
        )


def check_transformer_settings(cfg: Any) -> None:
    """The checks `rlfm dt train` and `rlfm cdt train` share: sizes, optimiser, evaluation."""
    for name in ("context", "hidden", "layers", "heads", "steps", "batch_size"):
        check(getattr(cfg, name) >= 1, name, f"must be ≥ 1, got {getattr(cfg, name)}")
    check(
        cfg.hidden % cfg.heads == 0,
        "heads",
        f"{cfg.heads} heads do not divide the width {cfg.hidden}",
    )
    check(0 <= cfg.dropout < 1, "dropout", f"must be in [0, 1), got {cfg.dropout}")
    check(
        cfg.micro_batch_size is None or cfg.micro_batch_size >= 1,
        "micro_batch_size",
        f"must be ≥ 1, got {cfg.micro_batch_size}",
    )
    check(cfg.lr > 0, "lr", f"must be > 0, got {cfg.lr}")
    check(cfg.weight_decay >= 0, "weight_decay", f"must be ≥ 0, got {cfg.weight_decay}")
    check(cfg.warmup_steps >= 0, "warmup_steps", f"must be ≥ 0, got {cfg.warmup_steps}")
    check(cfg.eval_episodes >= 0, "eval_episodes", f"must be ≥ 0, got {cfg.eval_episodes}")


def build_model(cfg: Config, tasks: list[Task], data: TrajectoryData) -> DecisionTransformer:
    """A new DT sized by the config, with the data's statistics in its buffers."""
    returns = np.concatenate([t.returns for t in tasks])
    model = DecisionTransformer(
        DTConfig(
            state_dim=data.state_dim,
            action_dim=data.action_dim,
            discrete=data.discrete,
            context=cfg.context,
            hidden=cfg.hidden,
            layers=cfg.layers,
            heads=cfg.heads,
            dropout=cfg.dropout,
            activation=cfg.activation,
            max_timestep=max(t.max_episode_steps for t in tasks),
            tasks=len(tasks),
            return_scale=cfg.return_scale or default_scale(returns),
            task_names=[t.name for t in tasks],
        )
    )
    for name, value in model_statistics(tasks, data.state_dim, data.action_dim).items():
        getattr(model, name).copy_(value)
    return model


def dt_loss(model: torch.nn.Module, w: Windows) -> torch.Tensor:
    """The action loss of a batch of windows (MSE in the unit box, or cross-entropy)."""
    net = Engine.unwrap(model)
    multi = net.cfg.tasks > 1
    out = model(w.states, w.actions, w.returns_to_go, w.timesteps, task=w.task if multi else None)
    if net.cfg.discrete:
        return action_cross_entropy(out.action, w.actions, w.mask)
    target = net.unit_actions(w.actions, w.task)
    return action_mse_loss(out.action, target, w.mask, net.action_dims(w.task, w.mask.shape[0]))


def evaluate_best_return(
    model: DecisionTransformer, tasks: list[Task], cfg: Config, device: torch.device
) -> dict[str, float]:
    """Mean return and normalised score of ``eval_episodes`` episodes per task, asking for the
    task's best episode return."""
    row: dict[str, float] = {}
    for i, task in enumerate(tasks):
        best = float(task.returns.max())
        d = task.datasets[0]
        eps = evaluate_model(
            model,
            d.eval_env_spec or d.env_spec,
            d.name,
            [(best, None)],
            cfg.eval_episodes,
            task_index=i,
            seed=cfg.seed + 10_000,
            max_steps=cfg.max_eval_steps,
            device=device,
        )
        ref = task.reference()
        mean = float(np.mean([e.ret for e in eps]))
        suffix = f"/{task.name}" if len(tasks) > 1 else ""
        row[f"eval_return{suffix}"] = mean
        row[f"eval_score{suffix}"] = normalised(mean, ref["ref_min"], ref["ref_max"])
    return row


def train(cfg: Config) -> dict[str, float]:
    """Train; returns the final metrics (loss, eval_return, eval_score)."""
    with Run(cfg, "dt train", total=cfg.steps) as run:
        if run.finished:
            return run.summary
        engine = run.engine
        engine.reuse_freed_cpu_memory()
        tasks = load_tasks(cfg.dataset)
        data = TrajectoryData(tasks)
        if run.resume is not None:
            model = DecisionTransformer.from_pretrained(run.resume)
        else:
            model = build_model(cfg, tasks, data)
        sampler = EpochOrder(len(data), cfg.batch_size, cfg.seed, "training windows")
        rows = engine.shard(cfg.batch_size)
        n_micro = engine.micro_batches(cfg.batch_size, cfg.micro_batch_size)
        micro = (rows.stop - rows.start) // n_micro
        model.train()
        model = engine.prepare(model)
        optimizer = adamw(model, cfg.lr, cfg.weight_decay)
        scheduler = warmup_cosine(optimizer, cfg.warmup_steps, cfg.steps, min_ratio=1.0)
        step = run.track(model, optimizer=optimizer, scheduler=scheduler, data=sampler)
        net: DecisionTransformer = Engine.unwrap(model)  # type: ignore[assignment]
        n_params = sum(p.numel() for p in net.parameters())
        lines = [
            f"{t['task']}: {t['episodes']} episodes, {t['steps']:,} steps, returns "
            f"{t['return_min']:.1f} … {t['return_max']:.1f} ({', '.join(t['datasets'])})"
            for t in map(describe, tasks)
        ]
        run.print(
            "[bold]rlfm dt train[/]  " + "\n".join(lines) + "\n"
            f"Decision Transformer: {n_params / 1e6:.2f}M parameters, K={cfg.context}, "
            f"{cfg.layers} layers × {cfg.hidden} wide × {cfg.heads} heads, return scale "
            f"{net.cfg.return_scale:g}, {'Discrete' if data.discrete else 'Box'} actions\n"
            + run.banner(
                f"batch {cfg.batch_size} = {engine.world_size} × {n_micro} × {micro} windows, "
                f"lr {cfg.lr:g}",
                step,
            )
        )

        metrics: dict[str, float] = {}
        train_time, timed_steps = 0.0, 0
        while step < cfg.steps:
            t0 = time.perf_counter()
            batch = data.windows(sampler.next_batch()[rows], cfg.context)
            loss_sum = 0.0
            for i in range(n_micro):
                part = torch.arange(i * micro, (i + 1) * micro)
                w = batch.select(part).to(engine.device)
                with engine.micro_step(model, last=i == n_micro - 1):
                    loss = dt_loss(model, w)
                    engine.backward(loss, weight=micro / cfg.batch_size)
                loss_sum += loss.item() / n_micro
            grad_norm = engine.step(model, optimizer, scheduler, cfg.max_grad_norm)
            step += 1
            train_time, timed_steps = train_time + time.perf_counter() - t0, timed_steps + 1
            row: dict[str, float] = {}
            if run.due(step, cfg.log_every):
                row = {
                    "loss": engine.all_reduce_mean(loss_sum),
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "steps_per_s": timed_steps / train_time,
                    "epoch": sampler.epochs,
                }
                train_time, timed_steps = 0.0, 0
            if cfg.eval_episodes and run.due(step, cfg.eval_every) and engine.is_main:
                row |= evaluate_best_return(net, tasks, cfg, engine.device)
            run.tracker.log(step, row)
            metrics |= row
            run.checkpoint(step)

        summary = {k: v for k, v in metrics.items() if k.startswith(("loss", "eval_"))}
        if engine.is_main:
            out = cfg.out / "plots"
            plot_metrics(cfg.out / "metrics.jsonl", out / "loss.png", ["loss"])
            evals = [k for k in summary if k.startswith("eval_return")]
            if evals:
                plot_metrics(cfg.out / "metrics.jsonl", out / "eval_return.png", evals)
            run.print(
                "  ".join(f"{k} {v:.4g}" for k, v in summary.items())
                + f"\nmodel: {checkpoint.latest_checkpoint(cfg.out)}\n"
                f"next: rlfm dt eval --model {cfg.out} --episodes 10"
            )
        return run.finish(summary)
