"""The main job: the ChatGPT recipe end to end on the built-in default task.

    rlfm pipeline --out runs/demo

1. pretrain  a BPE tokenizer and a small GPT on Shakespeare's plays      <out>/pretrain
2. sft       behavioural cloning of dialogue: context → the next reply    <out>/sft
3. reward    the SFT policy samples K = 4 replies per prompt, simulated   <out>/rm
             labelers rank them, a Bradley–Terry reward model learns them
4. ppo       PPO against the reward model, KL penalty to the SFT policy;  <out>/ppo
             the gold labeler judges PPO against SFT on held-out prompts

Each stage writes into its own directory and resumes there when the pipeline is run again, so an
interrupted pipeline continues where it stopped. ``--quick`` runs every stage on a tiny model for
a few steps: a smoke test of the whole chain in a few minutes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rlfm.config import Runtime, check, settings
from rlfm.stages import ppo, pretrain, reward, sample, sft
from rlfm.tracking import console


@settings(Runtime)
class Config:
    """Run every stage on the built-in default task."""

    out: Path = Path("runs/demo")
    """Run directory; each stage writes into <out>/<stage>/."""
    quick: bool = False
    """A smoke run: the tiny preset and a few steps per stage (a few minutes on a CPU)."""
    pretrain_steps: int | None = None
    """Pre-training steps (default: the stage's own default)."""

    def __post_init__(self) -> None:
        check(
            self.pretrain_steps is None or self.pretrain_steps >= 1,
            "pretrain_steps",
            f"must be ≥ 1, got {self.pretrain_steps}",
        )


def stage_configs(cfg: Config) -> tuple[pretrain.Config, sft.Config, reward.Config, ppo.Config]:
    """The four stages' configs, chained through their output directories."""
    common = dict(device=cfg.device, precision=cfg.precision, seed=cfg.seed)
    pre = pretrain.Config(out=cfg.out / "pretrain", **common)
    tune = sft.Config(model=cfg.out / "pretrain", out=cfg.out / "sft", **common)
    rm = reward.Config(model=cfg.out / "sft", out=cfg.out / "rm", **common)
    rl = ppo.Config(policy=cfg.out / "sft", reward=cfg.out / "rm", out=cfg.out / "ppo", **common)
    if cfg.quick:
        pre = replace(
            pre,
            model="tiny",
            vocab_size=2048,
            context=128,
            steps=200,
            eval_every=100,
            save_every=100,
        )
        tune = replace(tune, steps=60, eval_every=30, save_every=30, max_length=128)
        rm = replace(
            rm,
            max_length=128,
            num_prompts=96,
            num_val_prompts=32,
            steps=40,
            eval_every=20,
            save_every=20,
            norm_samples=64,
        )
        rl = replace(
            rl,
            updates=6,
            rollout_batch=16,
            minibatch=8,
            eval_every=3,
            save_every=3,
            max_new_tokens=24,
        )
    if cfg.pretrain_steps is not None:
        pre = replace(pre, steps=cfg.pretrain_steps)
    return pre, tune, rm, rl


def run(cfg: Config) -> dict[str, float]:
    """Run the stages in order; returns one summary of all of them."""
    pre, tune, rm, rl = stage_configs(cfg)
    summary: dict[str, float] = {}
    for name, stage, stage_cfg in (
        ("pretrain", pretrain, pre),
        ("sft", sft, tune),
        ("reward", reward, rm),
        ("ppo", ppo, rl),
    ):
        console.rule(f"[bold]rlfm pipeline: {name}")
        result = stage.train(stage_cfg)
        summary |= {f"{name}/{k}": v for k, v in result.items() if isinstance(v, int | float)}
    console.rule("[bold]rlfm pipeline: samples from the PPO policy")
    sample.run(
        sample.Config(
            model=rl.out,
            prompt=("Romeo.\nGood morrow, cousin.\n\nBenvolio.\n",),
            num_samples=3,
            max_new_tokens=48,
            temperature=0.7,
            device=cfg.device,
            seed=cfg.seed,
        )
    )
    console.rule("[bold]rlfm pipeline: summary")
    for k, v in summary.items():
        console.print(f"{k:<32} {v:.4g}")
    return summary
