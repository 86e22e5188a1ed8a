"""PPO for control: a policy for any Gymnasium environment with a flat Box observation and a
Discrete or Box action space (CartPole, Pendulum, the MuJoCo tasks, ...).

Papers: Schulman et al. 2017 (PPO), Schulman et al. 2016 (GAE); the implementation details that
decide MuJoCo results follow Engstrom et al. 2020 and Andrychowicz et al. 2021 and match
Stable-Baselines3 and CleanRL. One implementation of the losses is shared with PPO for
language models (losses/ppo.py):

    ρ_t = π_θ(a_t|s_t) / π_old(a_t|s_t)
    L_clip = −E[min(ρ_t·Â_t, clip(ρ_t, 1 − ε, 1 + ε)·Â_t)]
    L_V = ½·E[max((V − R)², (V_old + clip(V − V_old, ±ε_V) − R)²)]
    L = L_clip + c_v·L_V − c_e·H[π]
    Â_t = GAE(γ, λ) over (T, N) rollouts: a time-limit cut bootstraps from V of the final
          observation, a termination does not (losses/ppo.py: gae_time_major)

Defaults, each with a test: N parallel environments, T steps each per update; observations
normalised by running statistics and rewards by the running standard deviation of the
discounted return (both saved in every checkpoint); advantages normalised per minibatch; the
learning rate annealed linearly to 0; the global gradient norm clipped (0.5); clipped value
loss; orthogonal initialisation; a Gaussian policy with a state-independent log-std whose
samples are clipped to the action bounds for the environment only. Deterministic evaluation
episodes every ``--eval-every`` steps give ``eval_return`` in metrics.jsonl.

**PPO-Lagrangian** (Ray, Achiam & Amodei 2019), with ``--cost-limit d`` on a task whose step
info carries "cost": a cost critic V_c, cost advantages Â_c by the same GAE, and a multiplier
λ ≥ 0 that follows the mean episode cost J_c of each rollout, λ ← max(0, λ + lr_λ·(J_c − d));
the policy uses Â = (Â_r − λ·Â_c) / (1 + λ). λ is logged as ``lagrange_multiplier``.

**gSDE** (``--sde``; Raffin, Kober & Stulp 2022): exploration noise that is a linear function
of the policy's last hidden features, with the matrix held for ``--sde-sample-freq`` steps
(models/control.py). The Pendulum preset uses it, as the rl-baselines3-zoo's does.

Deviation: steps are environment steps; ``--steps`` and the eval/save/log intervals are rounded
up to whole updates of N × T steps (the banner says so).

For offline datasets (rlfm offline make): ``--snapshots`` keeps the policy of every evaluation
in ``policies/step_N`` (medium = the one nearest a third of the expert's return), and
``--record-episodes`` writes every training episode to ``episodes/`` (medium-replay).

One process:
    rlfm control ppo --env CartPole-v1 --config configs/control/cartpole.yaml --out runs/cartpole
    rlfm control ppo --env rlfm/SafetyHopperVelocity-v5 --config configs/control/hopper.yaml \\
        --cost-limit 25 --out runs/hopper-safe
(Environment stepping is single-process Python: one CPU process per run is the right size;
run several seeds or tasks side by side rather than several processes per run.)
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rlfm import checkpoint
from rlfm.config import RunSettings, check, settings
from rlfm.control import (
    Collector,
    ReturnNormalizer,
    UpdateSettings,
    adam,
    evaluate,
    make_model,
    one_thread,
    ppo_update,
    summarize,
)
from rlfm.errors import ConfigError
from rlfm.evaluate.plots import plot_metrics
from rlfm.losses.ppo import gae_time_major, lagrange_multiplier_step, lagrangian_advantages
from rlfm.models.control import ActorCritic
from rlfm.offline.datasets import save_episodes
from rlfm.offline.envs import check_env_id, has_cost, make_env, make_vector_env
from rlfm.run import Run

EVAL_SEED = 1_000_000  # evaluation episodes use reset seeds seed + EVAL_SEED + i


RUN_DEFAULTS = dict(
    device="cpu",
    precision="fp32",
    eval_every=10_000,
    save_every=50_000,
    log_every=2048,
    keep_checkpoints=2,
    max_grad_norm=0.5,
)
"""The run settings' defaults of the control stages (`rlfm control ppo` and `control prefs`)."""


@settings(RunSettings, **RUN_DEFAULTS)
class Config:
    """PPO on a Gymnasium environment (defaults: Stable-Baselines3's PPO with normalisation)."""

    config: Path | None = None
    """YAML file of field values (presets: configs/control/*.yaml); flags override it."""
    out: Path = Path("runs/control/ppo")
    """Output directory. Running again on the same directory resumes from its newest checkpoint."""
    env: str = "CartPole-v1"
    """Gymnasium environment id (Box observation; Discrete or Box actions)."""
    steps: int = 1_000_000
    """Environment steps to train for (rounded up to whole updates of n_envs × n_steps)."""
    n_envs: int = 1
    """Environments stepped side by side."""
    n_steps: int = 2048
    """Steps of each environment per update (rollout length T)."""
    batch_size: int = 64
    """Steps per minibatch of the PPO update."""
    epochs: int = 10
    """Passes over each rollout."""
    lr: float = 3e-4
    """Adam learning rate (eps 1e-5), annealed linearly to 0 with --anneal-lr."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over the run."""
    gamma: float = 0.99
    """Discount γ."""
    gae_lambda: float = 0.95
    """GAE λ."""
    clip_eps: float = 0.2
    """Clip range ε of the policy ratio."""
    value_clip: float = 0.2
    """Clip range of the value change (0 = plain squared error)."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient c_e."""
    vf_coef: float = 0.5
    """Value loss coefficient c_v."""
    normalize_obs: bool = True
    """Normalise observations by running mean and variance (saved with the model)."""
    normalize_reward: bool = True
    """Scale rewards by the running standard deviation of the discounted return."""
    normalize_advantages: bool = True
    """Normalise advantages to mean 0, std 1 per minibatch."""
    target_kl: float | None = None
    """Stop an update's epochs once a minibatch's approximate KL exceeds 1.5 × this."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the policy and value MLPs."""
    activation: Literal["tanh", "relu"] = "tanh"
    """Activation of the hidden layers."""
    log_std_init: float = 0.0
    """Initial log-std of a Gaussian policy."""
    ortho_init: bool = True
    """Orthogonal initialisation (gain √2 hidden, 0.01 policy output, 1 value output)."""
    sde: bool = False
    """Generalised state-dependent exploration (gSDE; Box actions): noise θᵀz(s) from the
    policy's last hidden features, θ held for --sde-sample-freq steps."""
    sde_sample_freq: int = -1
    """gSDE: draw new exploration matrices every this many steps (−1: once per rollout)."""
    eval_episodes: int = 10
    """Deterministic evaluation episodes at every evaluation."""
    cost_limit: float | None = None
    """PPO-Lagrangian: keep the mean episode cost under this (needs info["cost"])."""
    lagrange_lr: float = 0.05
    """Step size of the Lagrange multiplier."""
    lagrange_init: float = 0.0
    """Initial Lagrange multiplier λ."""
    snapshots: bool = False
    """Keep the policy of every evaluation in policies/step_N (for offline datasets)."""
    record_episodes: bool = False
    """Write every training episode to episodes/ (for medium-replay datasets)."""

    RESUMABLE = ("steps", "eval_episodes")

    def __post_init__(self) -> None:
        for name in ("steps", "n_envs", "n_steps", "batch_size", "epochs", "eval_episodes"):
            check(getattr(self, name) >= 1, name, f"must be ≥ 1, got {getattr(self, name)}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(0 < self.gamma <= 1, "gamma", f"must be in (0, 1], got {self.gamma}")
        check(0 <= self.gae_lambda <= 1, "gae_lambda", f"must be in [0, 1], got {self.gae_lambda}")
        check(self.clip_eps > 0, "clip_eps", f"must be > 0, got {self.clip_eps}")
        check(self.value_clip >= 0, "value_clip", f"must be ≥ 0, got {self.value_clip}")
        check(self.ent_coef >= 0, "ent_coef", f"must be ≥ 0, got {self.ent_coef}")
        check(self.vf_coef >= 0, "vf_coef", f"must be ≥ 0, got {self.vf_coef}")
        check(
            self.target_kl is None or self.target_kl > 0,
            "target_kl",
            f"must be > 0, got {self.target_kl}",
        )
        check(
            len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden),
            "hidden",
            f"must be one or more widths ≥ 1, got {self.hidden}",
        )
        check(
            self.batch_size <= self.n_envs * self.n_steps,
            "batch_size",
            f"{self.batch_size} is larger than a rollout of n_envs × n_steps = "
            f"{self.n_envs * self.n_steps} steps",
        )
        check(
            self.cost_limit is None or self.cost_limit >= 0,
            "cost_limit",
            f"must be ≥ 0, got {self.cost_limit}",
        )
        check(
            self.sde_sample_freq == -1 or self.sde_sample_freq >= 1,
            "sde_sample_freq",
            f"must be ≥ 1 or −1 (once per rollout), got {self.sde_sample_freq}",
        )
        check(self.lagrange_lr > 0, "lagrange_lr", f"must be > 0, got {self.lagrange_lr}")
        check(self.lagrange_init >= 0, "lagrange_init", f"must be ≥ 0, got {self.lagrange_init}")


def fit_to_rollout(cfg: Config) -> tuple[Config, list[str]]:
    """``cfg`` with the step counts rounded up to whole updates, and a note per change."""
    return whole_updates(cfg, cfg.n_envs * cfg.n_steps)


def whole_updates(cfg: Any, batch: int) -> tuple[Any, list[str]]:
    """``cfg`` (a dataclass with ``steps``, ``eval_every``, ``save_every``, ``log_every``) with
    those counts rounded up to whole updates of ``batch`` steps, and a note per change: the
    loop only stops after whole updates, so a schedule that is not a multiple never fires."""
    changes, notes = {}, []
    for name in ("steps", "eval_every", "save_every", "log_every"):
        value = getattr(cfg, name)
        rounded = max(batch, math.ceil(value / batch) * batch)
        if rounded != value:
            changes[name] = rounded
            notes.append(f"{name} {value:,} → {rounded:,} (whole updates of {batch:,} steps)")
    return replace(cfg, **changes), notes


class LagrangeMultiplier:
    """λ of PPO-Lagrangian, with the state a checkpoint keeps."""

    def __init__(self, value: float) -> None:
        self.value = value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


def update_settings(cfg: Config) -> UpdateSettings:
    """The PPO update's hyperparameters from the config."""
    return UpdateSettings(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        clip_eps=cfg.clip_eps,
        value_clip=cfg.value_clip,
        ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef,
        normalize_advantages=cfg.normalize_advantages,
        target_kl=cfg.target_kl,
        max_grad_norm=cfg.max_grad_norm,
    )


def model_settings(cfg: Config, cost_critic: bool) -> dict:
    """ActorCritic keyword arguments from the config."""
    return dict(
        hidden=cfg.hidden,
        activation=cfg.activation,
        log_std_init=cfg.log_std_init,
        ortho_init=cfg.ortho_init,
        cost_critic=cost_critic,
        normalize_obs=cfg.normalize_obs,
        sde=cfg.sde,
    )


def drop_after(out: Path, step: int) -> None:
    """Remove policy snapshots and recorded episodes written after ``step`` (resuming)."""
    for p in (out / "policies").glob("step_*"):
        if int(p.name.split("_")[-1]) > step:
            shutil.rmtree(p)
    for p in (out / "episodes").glob("step_*.npz"):
        if int(p.stem.split("_")[-1]) > step:
            p.unlink()


def train(cfg: Config) -> dict[str, float]:
    """Train a policy with PPO; returns the final metrics (eval_return, ...)."""
    check_env_id(cfg.env)
    cfg, notes = fit_to_rollout(cfg)
    probe = make_env(cfg.env)  # a bad id or space fails here, before the run directory
    constrained = has_cost(probe, cfg.seed)
    if cfg.cost_limit is not None and not constrained:
        raise ConfigError(
            f"cost_limit: {cfg.env} reports no info['cost'], so there is nothing to limit; use a "
            "constrained task (e.g. rlfm/SafetyHopperVelocity-v5)"
        )
    lagrangian = cfg.cost_limit is not None
    batch = cfg.n_envs * cfg.n_steps
    updates = cfg.steps // batch
    with (
        one_thread(),
        Run(cfg, "control ppo", total=cfg.steps, derived=("policies", "episodes")) as run,
    ):
        if run.finished:
            return run.summary
        engine = run.engine
        run.notes += notes
        if run.resume is not None:
            model = ActorCritic.from_pretrained(run.resume)
        else:
            model = make_model(probe, **model_settings(cfg, lagrangian))
        probe.close()
        model.train()
        optimizer = adam(model.parameters(), cfg.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda u: max(0.0, 1.0 - u / updates) if cfg.anneal_lr else 1.0
        )
        normalizer = ReturnNormalizer(cfg.n_envs, cfg.gamma)
        multiplier = LagrangeMultiplier(cfg.lagrange_init)
        collector = Collector(
            make_vector_env(cfg.env, cfg.n_envs),
            cfg.seed,
            record=cfg.record_episodes,
            sde_sample_freq=cfg.sde_sample_freq,
        )
        step = run.track(
            model,
            optimizer=optimizer,
            scheduler=scheduler,
            reward_normalizer=normalizer,
            lagrange=multiplier,
            envs=collector,
        )
        run.notes += collector.notes
        drop_after(cfg.out, step)
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        run.print(
            f"[bold]rlfm control ppo[/]  {cfg.env}: {model.action_kind} actions "
            f"({model.action_dim}), observations ({model.settings['obs_dim']},), "
            f"{n_params:,} parameters"
            + (f", cost limit {cfg.cost_limit:g}" if lagrangian else "")
            + "\n"
            + run.banner(
                f"{cfg.n_envs} env(s) × {cfg.n_steps} steps = {batch:,} per update, "
                f"{cfg.epochs} epochs of minibatches of {cfg.batch_size}, lr {cfg.lr:g}",
                step,
            )
        )
        hp = update_settings(cfg)
        metrics: dict[str, float] = {}
        t0, timed = time.perf_counter(), 0
        while step < cfg.steps:
            ro = collector.collect(model, cfg.n_steps)
            rewards = normalizer(ro.rewards, ro.done) if cfg.normalize_reward else ro.rewards
            adv, ret = gae_time_major(
                rewards,
                ro.values,
                ro.next_values,
                ro.terminated,
                ro.done,
                cfg.gamma,
                cfg.gae_lambda,
            )
            cost_adv = cost_ret = None
            row: dict[str, float] = {}
            if lagrangian:
                assert ro.costs is not None and ro.cost_values is not None
                assert ro.next_cost_values is not None and cfg.cost_limit is not None
                cost_adv, cost_ret = gae_time_major(
                    ro.costs,
                    ro.cost_values,
                    ro.next_cost_values,
                    ro.terminated,
                    ro.done,
                    cfg.gamma,
                    cfg.gae_lambda,
                )
                if ro.episodes:  # λ follows the cost of the episodes this rollout finished
                    j_c = float(np.mean([e["cost"] for e in ro.episodes]))
                    multiplier.value = lagrange_multiplier_step(
                        multiplier.value, j_c, cfg.cost_limit, cfg.lagrange_lr
                    )
                adv = lagrangian_advantages(adv, cost_adv, multiplier.value)
                row["lagrange_multiplier"] = multiplier.value
            stats = ppo_update(
                model,
                optimizer,
                engine,
                ro.obs.flatten(0, 1),
                ro.actions.flatten(0, 1),
                ro.logprobs.flatten(0, 1),
                adv.flatten(),
                ro.values.flatten(),
                ret.flatten(),
                hp,
                ro.cost_values.flatten() if lagrangian else None,
                cost_ret.flatten() if cost_ret is not None else None,
            )
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += batch
            timed += batch
            if cfg.record_episodes:
                save_episodes(
                    cfg.out / "episodes" / f"step_{step:010d}.npz", collector.take_recorded()
                )
            if run.due(step, cfg.log_every):
                row |= stats | summarize(collector.finished, "episode_") | {"lr": lr}
                row["steps_per_s"] = timed / (time.perf_counter() - t0)
                collector.finished, t0, timed = [], time.perf_counter(), 0
            if run.due(step, cfg.eval_every):
                episodes = evaluate(model, cfg.env, cfg.eval_episodes, cfg.seed + EVAL_SEED)
                row |= summarize(episodes, "eval_")
                if cfg.snapshots and engine.is_main:
                    model.save_pretrained(cfg.out / "policies" / f"step_{step}")
            if not (constrained or lagrangian):
                row = {k: v for k, v in row.items() if not k.endswith("cost")}
            run.tracker.log(step, row)
            metrics |= row
            run.checkpoint(step)
        if "eval_return" not in metrics:  # a finished run whose summary was lost
            metrics |= summarize(
                evaluate(model, cfg.env, cfg.eval_episodes, cfg.seed + EVAL_SEED), "eval_"
            )
        keys = ("eval_return", "eval_return_std", "eval_length", "eval_cost", "episode_return")
        summary = {k: metrics[k] for k in keys if k in metrics}
        if not (constrained or lagrangian):
            summary.pop("eval_cost", None)
        if engine.is_main:
            metrics_file = cfg.out / "metrics.jsonl"
            plot_metrics(
                metrics_file, cfg.out / "plots" / "return.png", ["episode_return", "eval_return"]
            )
            if constrained:
                plot_metrics(
                    metrics_file, cfg.out / "plots" / "cost.png", ["episode_cost", "eval_cost"]
                )
            if lagrangian:
                plot_metrics(
                    metrics_file, cfg.out / "plots" / "lagrange.png", ["lagrange_multiplier"]
                )
            cost = f", cost {summary['eval_cost']:.1f}" if "eval_cost" in summary else ""
            run.print(
                f"[bold]evaluation[/] ({cfg.eval_episodes} deterministic episodes): return "
                f"{summary['eval_return']:.1f} ± {summary['eval_return_std']:.1f}{cost}\n"
                f"model: {checkpoint.latest_checkpoint(cfg.out)}"
            )
        return run.finish(summary)
