"""The main job: the recipe end to end on the built-in default task.

    rlfm pipeline --out runs/demo

Today: pre-training a small GPT on the built-in Shakespeare corpus, then sampling from it. Each
stage writes into ``<out>/<stage>/`` and resumes there when the pipeline is run again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from rlfm.config import check
from rlfm.stages import pretrain, sample


@dataclass(frozen=True)
class Config:
    """Run every stage on the built-in default task."""

    out: Path = Path("runs/demo")
    """Run directory; each stage writes into <out>/<stage>/."""
    quick: bool = False
    """A smoke run: the tiny preset and a few hundred steps (about a minute on a CPU)."""
    pretrain_steps: int | None = None
    """Pre-training steps (default: the stage's own default, or 300 with --quick)."""
    device: str = "auto"
    """auto, cpu or cuda."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Compute precision: bf16 autocast where fast (auto), or fp32."""
    seed: int = 0
    """Seed of every stage."""

    def __post_init__(self) -> None:
        check(
            self.pretrain_steps is None or self.pretrain_steps >= 1,
            "pretrain_steps",
            f"must be ≥ 1, got {self.pretrain_steps}",
        )


def run(cfg: Config) -> dict[str, float]:
    """Run the stages in order; returns the pre-training summary."""
    pre = pretrain.Config(
        out=cfg.out / "pretrain", device=cfg.device, precision=cfg.precision, seed=cfg.seed
    )
    if cfg.quick:
        pre = replace(
            pre,
            model="tiny",
            vocab_size=2048,
            context=128,
            steps=300,
            eval_every=100,
            save_every=100,
        )
    if cfg.pretrain_steps is not None:
        pre = replace(pre, steps=cfg.pretrain_steps)
    summary = pretrain.train(pre)
    sample.run(
        sample.Config(
            model=cfg.out / "pretrain",
            prompt=pretrain.DEFAULT_PROMPTS,
            max_new_tokens=60,
            temperature=0.8,
            device=cfg.device,
            seed=cfg.seed,
        )
    )
    return summary
