"""PPO on a reward learned online from preferences over trajectory segments (Christiano et al.
2017, "Deep reinforcement learning from human preferences").

The policy never sees the environment's reward. Each update:

1. the policy collects a rollout (rlfm/control.py); its steps are cut into segments σ of
   ``--segment-length`` steps (within episodes) and added to a pool of recent segments;
2. while the label budget allows (``--labels`` comparisons, spread over the first
   ``--label-fraction`` of training, ``--initial-labels`` of them at the start), pairs are
   **chosen by the ensemble's disagreement**: of ``--candidates`` random pairs from the pool,
   the ones whose predicted preference P(σ¹ ≻ σ²) = σ(Σ r̂(σ¹) − Σ r̂(σ²)) varies most across the
   ensemble's members are shown to the **synthetic oracle**, which prefers the segment with the
   higher true return (wrong with probability ``--error-rate``; offline/segments.py);
3. each of the ``--ensemble`` step-reward MLPs r̂(o, a) (models/heads.py: StepRewardMLP, the
   network `rlfm reward train-segments` trains) takes ``--reward-steps`` steps of the
   Bradley–Terry loss (losses/preference.py) on its own random minibatches of all labels;
4. PPO (the same update as ``rlfm control ppo``) maximises the ensemble's mean r̂, normalised
   like an environment reward.

Evaluation episodes report the **true** return (``eval_return``), so a run can be set against
``rlfm control ppo`` on the true reward at the same steps (benchmarks/control_prefs_vs_true.py).
Deviations from the paper: PPO instead of TRPO/A2C; no ℓ2 / dropout regularisation of r̂; the
label schedule is linear instead of ∝ 1/T; segments come from the current rollout only.

PPO's hyperparameters come from a ``rlfm control ppo`` preset (``--ppo-config``):

    rlfm control prefs --env Pendulum-v1 --ppo-config configs/control/pendulum-zoo.yaml \\
        --steps 200000 --labels 500 --out runs/prefs/pendulum
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlfm import checkpoint
from rlfm.config import RunSettings, check, from_dict, load_yaml, settings
from rlfm.control import (
    Collector,
    ReturnNormalizer,
    adam,
    evaluate,
    make_model,
    one_thread,
    ppo_update,
    summarize,
)
from rlfm.errors import ConfigError
from rlfm.evaluate.plots import plot_metrics
from rlfm.losses.ppo import gae_time_major
from rlfm.losses.preference import bradley_terry_loss
from rlfm.models.control import ActorCritic
from rlfm.models.heads import StepRewardMLP
from rlfm.offline.envs import check_env_id, make_env, make_vector_env
from rlfm.run import Run
from rlfm.stages import control_ppo


@settings(RunSettings, **control_ppo.RUN_DEFAULTS)
class Config:
    """PPO on a reward model learned online from an oracle's segment preferences."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    out: Path = Path("runs/control/prefs")
    """Output directory. Running again on the same directory resumes from its newest checkpoint."""
    env: str = "Pendulum-v1"
    """Gymnasium environment id (its reward is hidden from the policy: only the oracle sees it)."""
    ppo_config: Path | None = None
    """A `rlfm control ppo` YAML preset for PPO's hyperparameters (its env and steps are not
    used). Default: rlfm control ppo's defaults."""
    steps: int = 200_000
    """Environment steps (rounded up to whole updates)."""
    labels: int = 500
    """Label budget: oracle comparisons over the whole run."""
    initial_labels: float = 0.25
    """Share of the budget asked for after the first rollout."""
    label_fraction: float = 0.5
    """The rest of the budget is spread evenly over this share of training."""
    segment_length: int = 25
    """Steps per segment."""
    pool: int = 2000
    """Recent segments kept to draw query pairs from."""
    candidates: int = 10
    """Random pairs considered per label; the most disputed 1/candidates are asked about."""
    error_rate: float = 0.0
    """Probability that the oracle prefers the segment with the lower true return."""
    ensemble: int = 3
    """Step-reward MLPs in the ensemble."""
    hidden: int = 64
    """Width of the reward MLPs' hidden layers."""
    reward_steps: int = 50
    """Bradley–Terry steps of each member whenever new labels arrive."""
    reward_batch: int = 32
    """Comparisons per reward-model step."""
    reward_lr: float = 1e-3
    """Adam learning rate of the reward models."""
    eval_episodes: int = 10
    """Deterministic evaluation episodes (true return) at every evaluation."""

    RESUMABLE = ("steps", "eval_episodes")

    def __post_init__(self) -> None:
        for name in ("steps", "labels", "segment_length", "pool", "candidates", "ensemble"):
            check(getattr(self, name) >= 1, name, f"must be ≥ 1, got {getattr(self, name)}")
        for name in ("hidden", "reward_steps", "reward_batch", "eval_episodes"):
            check(getattr(self, name) >= 1, name, f"must be ≥ 1, got {getattr(self, name)}")
        check(
            0 <= self.initial_labels <= 1,
            "initial_labels",
            f"must be in [0, 1], got {self.initial_labels}",
        )
        check(
            0 < self.label_fraction <= 1,
            "label_fraction",
            f"must be in (0, 1], got {self.label_fraction}",
        )
        check(
            0 <= self.error_rate < 0.5, "error_rate", f"must be in [0, 0.5), got {self.error_rate}"
        )
        check(self.reward_lr > 0, "reward_lr", f"must be > 0, got {self.reward_lr}")
        if self.ppo_config is not None:
            check(Path(self.ppo_config).is_file(), "ppo_config", f"{self.ppo_config} is not a file")


def ppo_settings(cfg: Config) -> control_ppo.Config:
    """The control PPO config PPO's hyperparameters are read from (env, steps, seed from here)."""
    base = control_ppo.Config(env=cfg.env)
    if cfg.ppo_config is not None:
        base = from_dict(
            control_ppo.Config, load_yaml(cfg.ppo_config), base, source=str(cfg.ppo_config)
        )
    return from_dict(
        control_ppo.Config,
        {
            "env": cfg.env,
            "steps": cfg.steps,
            "seed": cfg.seed,
            "out": str(cfg.out),
            "cost_limit": None,
        },
        base,
    )


class RewardEnsemble(nn.Module):
    """K step-reward MLPs r̂_k(o, a); the reward PPO gets is their mean."""

    def __init__(self, n_features: int, k: int, hidden: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(StepRewardMLP(n_features, hidden, 2) for _ in range(k))

    def segment_returns(self, segments: torch.Tensor) -> torch.Tensor:
        """Σ_t r̂_k over each segment, per member. (S, L, F) -> (K, S)."""
        return torch.stack([m.segment_return(segments) for m in self.members])

    @torch.no_grad()
    def reward(self, features: torch.Tensor) -> torch.Tensor:
        """Mean r̂ over the members. (..., F) -> (...)."""
        return torch.stack([m(features) for m in self.members]).mean(0)


class Labels:
    """Labelled comparisons (winner and loser segments) and the segment pool."""

    def __init__(self, pool: int, seed: int) -> None:
        self.rng = random.Random(seed)  # the oracle's candidate pairs and errors
        self.winners: list[torch.Tensor] = []  # (L, F) each
        self.losers: list[torch.Tensor] = []
        self.pool: list[tuple[torch.Tensor, float]] = []  # (features (L, F), true return)
        self.pool_size = pool

    def add_segments(self, segments: list[tuple[torch.Tensor, float]]) -> None:
        self.pool = (self.pool + segments)[-self.pool_size :]

    def state_dict(self) -> dict[str, Any]:
        return {
            "winners": self.winners,
            "losers": self.losers,
            "pool": self.pool,
            "rng": self.rng.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.winners, self.losers, self.pool = state["winners"], state["losers"], state["pool"]
        self.rng.setstate(state["rng"])


def step_features(model: ActorCritic, raw_obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """[o_t, a_t] per step as offline/segments.py encodes them: a discrete action one-hot, a
    bounded continuous one (clipped as the environment got it) rescaled to [−1, 1].
    (T, N, O), (T, N) or (T, N, A) -> (T, N, O + A)."""
    if model.action_kind == "discrete":
        a = torch.nn.functional.one_hot(actions.long(), model.action_dim).float()
    else:
        low, high = model.action_low, model.action_high
        clipped = torch.maximum(torch.minimum(actions, high), low)
        bounded = torch.isfinite(low) & torch.isfinite(high)
        scaled = 2 * (clipped - low) / (high - low).clamp(min=1e-8) - 1
        a = torch.where(bounded, scaled, clipped)
    return torch.cat([raw_obs, a], -1)


def cut_rollout(
    features: torch.Tensor, rewards: torch.Tensor, done: torch.Tensor, length: int
) -> list[tuple[torch.Tensor, float]]:
    """Non-overlapping segments of ``length`` steps of each environment that do not cross an
    episode's end. (T, N, F), (T, N), (T, N) -> [(features (L, F), true return)]."""
    T, N, _ = features.shape  # time, environments, features
    out = []
    for n in range(N):
        start = 0
        for t in range(T):
            if t - start + 1 == length:
                out.append(
                    (features[start : t + 1, n].clone(), float(rewards[start : t + 1, n].sum()))
                )
                start = t + 1
            if done[t, n]:
                start = t + 1
    return out


def ask_oracle(
    labels: Labels,
    ensemble: RewardEnsemble,
    n: int,
    candidates: int,
    error_rate: float,
    rng: random.Random,
) -> int:
    """Choose ``n`` pairs by ensemble disagreement and label them; returns how many were added."""
    pool = labels.pool
    if len(pool) < 2:
        return 0
    pairs = []
    for _ in range(n * candidates):
        i, j = rng.randrange(len(pool)), rng.randrange(len(pool))
        if i != j and pool[i][1] != pool[j][1]:
            pairs.append((i, j))
    if not pairs:
        return 0
    with torch.no_grad():
        first = torch.stack([pool[i][0] for i, _ in pairs])
        second = torch.stack([pool[j][0] for _, j in pairs])
        p = torch.sigmoid(
            ensemble.segment_returns(first) - ensemble.segment_returns(second)
        )  # (K, P)
        disagreement = p.var(0) if p.shape[0] > 1 else torch.rand(p.shape[1])
    chosen = torch.argsort(disagreement, descending=True)[:n].tolist()
    for c in chosen:
        i, j = pairs[c]
        w, lo = (i, j) if pool[i][1] > pool[j][1] else (j, i)
        if rng.random() < error_rate:
            w, lo = lo, w
        labels.winners.append(pool[w][0])
        labels.losers.append(pool[lo][0])
    return len(chosen)


def train_rewards(
    ensemble: RewardEnsemble,
    optimizer: torch.optim.Optimizer,
    labels: Labels,
    steps: int,
    batch: int,
) -> dict[str, float]:
    """``steps`` Bradley–Terry steps of every member on its own random minibatches."""
    winners, losers = torch.stack(labels.winners), torch.stack(labels.losers)
    total = acc = 0.0
    for _ in range(steps):
        loss = torch.zeros(())
        for m in ensemble.members:
            idx = torch.randint(len(winners), (min(batch, len(winners)),))
            rw, rl = m.segment_return(winners[idx]), m.segment_return(losers[idx])
            loss = loss + bradley_terry_loss(rw, rl)
            acc += float((rw > rl).float().mean()) / len(ensemble.members)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) / len(ensemble.members)
    return {"reward_loss": total / steps, "reward_accuracy": acc / steps}


def train(cfg: Config) -> dict[str, float]:
    """Train the policy and the reward ensemble together; returns the final metrics."""
    check_env_id(cfg.env)
    ppo, notes = control_ppo.fit_to_rollout(ppo_settings(cfg))
    probe = make_env(cfg.env)
    from gymnasium import spaces

    batch = ppo.n_envs * ppo.n_steps
    cfg, own_notes = control_ppo.whole_updates(cfg, batch)  # its own eval/save/log schedule
    notes += [n for n in own_notes if n not in notes]
    total = ppo.steps
    if isinstance(probe.action_space, spaces.Discrete) and cfg.segment_length > batch:
        raise ConfigError(f"segment_length: {cfg.segment_length} is longer than a rollout")
    with one_thread(), Run(cfg, "control prefs", total=total) as run:
        if run.finished:
            return run.summary
        engine = run.engine
        run.notes += notes
        model = (
            ActorCritic.from_pretrained(run.resume)
            if run.resume
            else make_model(probe, **control_ppo.model_settings(ppo, False))
        )
        n_features = model.settings["obs_dim"] + model.action_dim
        probe.close()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            ensemble = RewardEnsemble(n_features, cfg.ensemble, cfg.hidden)
        optimizer = adam(model.parameters(), ppo.lr)
        updates = total // batch
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda u: max(0.0, 1.0 - u / updates) if ppo.anneal_lr else 1.0
        )
        reward_optimizer = adam(ensemble.parameters(), cfg.reward_lr, eps=1e-8)
        normalizer = ReturnNormalizer(ppo.n_envs, ppo.gamma)
        labels = Labels(cfg.pool, cfg.seed)
        collector = Collector(
            make_vector_env(cfg.env, ppo.n_envs), cfg.seed, sde_sample_freq=ppo.sde_sample_freq
        )
        step = run.track(
            model,
            optimizer=optimizer,
            scheduler=scheduler,
            reward_normalizer=normalizer,
            envs=collector,
            reward_models=ensemble,
            reward_optimizer=reward_optimizer,
            labels=labels,
        )
        run.print(
            f"[bold]rlfm control prefs[/]  {cfg.env}: label budget {cfg.labels}, segments of "
            f"{cfg.segment_length} steps, ensemble of {cfg.ensemble}\n"
            + run.banner(f"{ppo.n_envs} env(s) × {ppo.n_steps} steps = {batch:,} per update", step)
        )
        hp = control_ppo.update_settings(ppo)
        metrics: dict[str, float] = {}
        t0, timed = time.perf_counter(), 0
        while step < total:
            ro = collector.collect(model, ppo.n_steps)
            features = step_features(model, ro.raw_obs, ro.actions)
            labels.add_segments(cut_rollout(features, ro.rewards, ro.done, cfg.segment_length))
            progress = (step + batch) / (total * cfg.label_fraction)
            due = round(
                cfg.labels * min(1.0, cfg.initial_labels + (1 - cfg.initial_labels) * progress)
            )
            row: dict[str, float] = {}
            asked = (
                ask_oracle(
                    labels,
                    ensemble,
                    due - len(labels.winners),
                    cfg.candidates,
                    cfg.error_rate,
                    labels.rng,
                )
                if due > len(labels.winners)
                else 0
            )
            if asked:
                row |= train_rewards(
                    ensemble, reward_optimizer, labels, cfg.reward_steps, cfg.reward_batch
                )
            if not labels.winners:
                raise ConfigError(
                    f"env: the oracle found no pair of {cfg.segment_length}-step segments of "
                    f"{cfg.env} with different true returns (a constant reward, as CartPole's?)"
                )
            predicted = ensemble.reward(features)  # (T, N) r̂ replaces the true reward
            rewards = normalizer(predicted, ro.done) if ppo.normalize_reward else predicted
            adv, ret = gae_time_major(
                rewards,
                ro.values,
                ro.next_values,
                ro.terminated,
                ro.done,
                ppo.gamma,
                ppo.gae_lambda,
            )
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
            )
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += batch
            timed += batch
            if run.due(step, cfg.log_every):
                true = ro.rewards.flatten().numpy()
                corr = (
                    np.corrcoef(true, predicted.flatten().numpy())[0, 1]
                    if true.std() > 0
                    else float("nan")
                )
                row |= (
                    stats
                    | summarize(collector.finished, "episode_")
                    | {
                        "lr": lr,
                        "labels": float(len(labels.winners)),
                        "reward_correlation": float(corr),
                    }
                )
                row["steps_per_s"] = timed / (time.perf_counter() - t0)
                collector.finished, t0, timed = [], time.perf_counter(), 0
            if run.due(step, cfg.eval_every):
                row |= summarize(
                    evaluate(model, cfg.env, cfg.eval_episodes, cfg.seed + control_ppo.EVAL_SEED),
                    "eval_",
                )
            row = {k: v for k, v in row.items() if not k.endswith("cost")}
            run.tracker.log(step, row)
            metrics |= row
            run.checkpoint(step)
        if "eval_return" not in metrics:
            metrics |= summarize(
                evaluate(model, cfg.env, cfg.eval_episodes, cfg.seed + control_ppo.EVAL_SEED),
                "eval_",
            )
        summary = {
            k: metrics[k]
            for k in ("eval_return", "eval_return_std", "episode_return", "reward_correlation")
            if k in metrics
        }
        summary["labels"] = float(len(labels.winners))
        if engine.is_main:
            plot_metrics(
                cfg.out / "metrics.jsonl",
                cfg.out / "plots" / "return.png",
                ["episode_return", "eval_return"],
            )
            run.print(
                f"[bold]evaluation[/] (true return, {cfg.eval_episodes} deterministic episodes): "
                f"{summary['eval_return']:.1f} ± {summary['eval_return_std']:.1f} with "
                f"{len(labels.winners)} labels\nmodel: {checkpoint.latest_checkpoint(cfg.out)}"
            )
        return run.finish(summary)
