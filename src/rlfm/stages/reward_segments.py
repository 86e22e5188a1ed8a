"""Reward from preferences over trajectory segments (Christiano et al. 2017).

A small MLP r̂(o, a) is fit to comparisons of pairs of short segments σ of Gymnasium episodes
with the same Bradley–Terry loss as the language reward model (losses/preference.py), over the
segment sums:

    r(σ) = Σ_t r̂(o_t, a_t)
    loss = − E [ log σ( r(σ_w) − r(σ_l) ) ]

The comparisons come from a synthetic oracle that prefers the segment with the higher true
return, wrong with probability ``--error-rate`` (offline/segments.py). Episodes are collected
with a random (or "sticky" random) behaviour policy; segments of held-out episodes measure how
well the learned reward ranks behaviour: Spearman's rank correlation between Σ_t r̂ and the true
return, and the accuracy on noise-free held-out comparisons. Deviation from the paper: the
reward is learned offline from a fixed set of segments, with no policy trained alongside it
and no ensemble for choosing queries.

One process:
    rlfm reward train-segments --env Pendulum-v1 --out runs/segments/pendulum
N processes (data parallel; --batch-size is global):
    torchrun --nproc_per_node 2 -m rlfm reward train-segments --env Pendulum-v1 --out runs/seg
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch

from rlfm import checkpoint
from rlfm.config import Optimisation, RunSettings, check, settings
from rlfm.data.order import EpochOrder
from rlfm.engine import Engine
from rlfm.evaluate.plots import plot_metrics
from rlfm.losses.preference import bradley_terry_loss
from rlfm.models.heads import StepRewardMLP
from rlfm.offline.segments import collect_episodes, cut_segments, oracle_pairs, spearman
from rlfm.optim import adamw, warmup_cosine
from rlfm.run import Run
from rlfm.tracking import Meter


@settings(
    Optimisation,
    RunSettings,
    steps=400,
    batch_size=64,
    warmup_steps=40,
    docs={"lr": "Peak learning rate (AdamW, warm-up then cosine decay to 10%). Default: 3e-3."},
    eval_every=100,
    save_every=200,
    log_every=50,
    keep_checkpoints=2,
    device="cpu",
    precision="fp32",
)
class Config:
    """Learn a step reward r̂(o, a) from an oracle's preferences over episode segments."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    out: Path = Path("runs/segments/pendulum")
    """Output directory. Running again on the same directory resumes from its newest checkpoint."""
    env: str = "Pendulum-v1"
    """Gymnasium environment id (a classic-control or MuJoCo task with a Box observation)."""
    policy: Literal["random", "sticky"] = "random"
    """Behaviour policy that collects the episodes."""
    episodes: int = 40
    """Training episodes."""
    val_episodes: int = 10
    """Held-out episodes (their segments are never compared in training)."""
    max_episode_steps: int | None = None
    """Cut episodes at this many steps (default: the environment's own limit)."""
    segment_length: int = 25
    """Steps per segment."""
    pairs: int = 3000
    """Labelled comparisons of training segments."""
    error_rate: float = 0.0
    """Probability that the oracle prefers the segment with the lower return."""
    hidden: int = 64
    """Width of the MLP's hidden layers."""
    layers: int = 2
    """Hidden layers of the MLP."""

    RESUMABLE = ("steps",)

    def __post_init__(self) -> None:
        for name in ("episodes", "val_episodes", "pairs", "hidden", "layers"):
            check(getattr(self, name) >= 1, name, f"must be ≥ 1, got {getattr(self, name)}")
        check(self.segment_length >= 1, "segment_length", f"must be ≥ 1, got {self.segment_length}")
        check(
            self.max_episode_steps is None or self.max_episode_steps >= 1,
            "max_episode_steps",
            f"must be ≥ 1, got {self.max_episode_steps}",
        )
        check(
            0 <= self.error_rate < 0.5, "error_rate", f"must be in [0, 0.5), got {self.error_rate}"
        )


@torch.no_grad()
def evaluate(
    model: StepRewardMLP, features: torch.Tensor, returns: torch.Tensor
) -> dict[str, float]:
    """Spearman(Σ r̂, true return) and noise-free pairwise accuracy on held-out segments."""
    model.eval()
    predicted = model.segment_return(features).double().cpu()
    model.train()
    dp = predicted[:, None] - predicted[None, :]
    dt = returns[:, None] - returns[None, :]
    upper = torch.triu(torch.ones_like(dt, dtype=torch.bool), 1) & (dt != 0)
    agree = (torch.sign(dp[upper]) == torch.sign(dt[upper])).double().mean()
    return {"val_spearman": spearman(predicted, returns), "val_accuracy": float(agree)}


def train(cfg: Config) -> dict[str, float]:
    """Collect segments, train r̂ on oracle comparisons, evaluate on held-out segments."""
    with Run(cfg, "reward train-segments", total=cfg.steps) as run:
        if run.finished:
            return run.summary
        engine, resume = run.engine, run.resume
        common = dict(policy=cfg.policy, max_steps=cfg.max_episode_steps)
        train_eps = collect_episodes(cfg.env, cfg.episodes, seed=cfg.seed, **common)
        val_eps = collect_episodes(cfg.env, cfg.val_episodes, seed=cfg.seed + 100_000, **common)
        train_seg = cut_segments(train_eps, cfg.segment_length)
        val_seg = cut_segments(val_eps, cfg.segment_length)
        pairs = oracle_pairs(train_seg.returns, cfg.pairs, error_rate=cfg.error_rate, seed=cfg.seed)
        sampler = EpochOrder(len(pairs), cfg.batch_size, cfg.seed, name="comparisons")
        rows = engine.shard(cfg.batch_size)

        n_features = train_seg.features.shape[-1]
        if resume is not None:
            model = StepRewardMLP.from_pretrained(resume)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                model = StepRewardMLP(n_features, cfg.hidden, cfg.layers)
            flat = train_seg.features.reshape(-1, n_features)
            model.input_mean.copy_(flat.mean(0))
            model.input_std.copy_(flat.std(0).clamp(min=1e-6))
        model.train()
        model = engine.prepare(model)
        optimizer = adamw(model, cfg.lr or 3e-3, cfg.weight_decay)
        scheduler = warmup_cosine(optimizer, cfg.warmup_steps, cfg.steps, 0.1)
        step = run.track(model, optimizer=optimizer, scheduler=scheduler, data=sampler)
        run.print(
            f"[bold]rlfm reward train-segments[/]  {cfg.env}: {cfg.episodes} + {cfg.val_episodes} "
            f"{cfg.policy} episodes, {len(train_seg.returns)} + {len(val_seg.returns)} segments "
            f"of {cfg.segment_length} steps, {len(pairs)} oracle comparisons (error rate "
            f"{cfg.error_rate:g})\n"
            + run.banner(f"batch {cfg.batch_size} comparisons, peak lr {cfg.lr or 3e-3:g}", step)
        )
        features = train_seg.features.to(engine.device)
        val_features = val_seg.features.to(engine.device)
        pairs = pairs.to(engine.device)

        metrics: dict[str, float] = run.logged()
        meter = Meter()
        n_micro = engine.micro_batches(cfg.batch_size, cfg.micro_batch_size)
        micro = (rows.stop - rows.start) // n_micro
        while step < cfg.steps:
            meter.start()
            batch = pairs[sampler.next_batch()[rows].to(engine.device)]  # (b, 2) winner, loser
            loss_sum, correct = 0.0, 0.0
            for i in range(n_micro):
                part = batch[i * micro : (i + 1) * micro]
                seg = features[part.reshape(-1)]  # (2m, L, F)
                with engine.micro_step(model, last=i == n_micro - 1):
                    r = model(seg).float().sum(-1).reshape(-1, 2)  # (m, 2) Σ_t r̂ winner, loser
                    loss = bradley_terry_loss(r[:, 0], r[:, 1])
                    engine.backward(loss, weight=micro / cfg.batch_size)
                loss_sum += loss.item() / n_micro
                correct += float((r[:, 0] > r[:, 1]).float().mean()) / n_micro
            grad_norm = engine.step(model, optimizer, scheduler, cfg.max_grad_norm)
            step += 1
            meter.stop(comparisons=len(batch))
            row: dict[str, float] = {}
            if run.due(step, cfg.log_every):
                loss = engine.all_reduce_mean(loss_sum)
                row = run.train_row(loss, grad_norm, scheduler, sampler, meter)
                row["accuracy"] = engine.all_reduce_mean(correct)
            if run.due(step, cfg.eval_every):
                row |= evaluate(Engine.unwrap(model), val_features, val_seg.returns)
            run.tracker.log(step, row)
            metrics |= row
            run.checkpoint(step)
        if "val_spearman" not in metrics:  # its metrics.jsonl was lost
            metrics |= evaluate(Engine.unwrap(model), val_features, val_seg.returns)
        summary = {k: metrics[k] for k in ("loss", "val_spearman", "val_accuracy") if k in metrics}
        if engine.is_main:
            predicted = Engine.unwrap(model).segment_return(val_features).detach().double().cpu()
            plot_segments(predicted, val_seg.returns, cfg.out / "plots" / "segments.png", cfg.env)
            plot_metrics(cfg.out / "metrics.jsonl", cfg.out / "plots" / "loss.png", ["loss"])
            (cfg.out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
            run.print(
                f"[bold]held out[/] Spearman(Σ r̂, true return) {summary['val_spearman']:.3f}, "
                f"pairwise accuracy {summary['val_accuracy']:.1%} on {len(val_seg.returns)} "
                f"segments\nmodel: {checkpoint.latest_checkpoint(cfg.out)}"
            )
        return run.finish(summary)


def plot_segments(predicted: torch.Tensor, true: torch.Tensor, png: Path, env: str) -> Path:
    """Scatter of the learned segment reward against the true return."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    ax.scatter(true.numpy(), predicted.numpy(), s=10, alpha=0.7)
    ax.set_xlabel("true segment return")
    ax.set_ylabel("learned Σ r̂(o, a)")
    ax.set_title(f"{env}: held-out segments (Spearman {spearman(predicted, true):.3f})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
