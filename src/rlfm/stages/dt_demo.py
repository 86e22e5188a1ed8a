"""The Decision Transformer end to end on datasets rlfm makes itself, on a CPU in minutes.

    rlfm dt demo --out runs/demo/dt

1. The datasets, made by `rlfm offline make` the first time and reused after that (they stay
   in the local Minari folder, ``$MINARI_DATASETS_PATH``): rlfm/SpeedRun-v0 (a small
   velocity-constrained task, rlfm.offline.speedrun) with PPO-Lagrangian policies trained at
   several cost limits (configs/control/speedrun.yaml); ``rlfm-demo/speedrun-medium-replay-v0``
   holds the episodes those runs trained on up to their medium policy, and
   ``rlfm-demo/speedrun-expert-v0`` episodes of their final policies. `rlfm cdt demo` uses the
   same datasets.
2. `rlfm dt train` on the two datasets pooled (as D4RL's medium-expert) with the CPU preset
   (configs/dt/cpu.yaml = :data:`CPU`).
3. `rlfm dt eval`: a sweep of target returns over the data's range and beyond; the table and
   ``eval/result.png`` (the DT paper's Figure 4) show the achieved returns following the
   targets up to the best return in the data.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rlfm.config import Runtime, check, settings
from rlfm.data.trajectories import local_dataset_ids, minari_root
from rlfm.offline.speedrun import SPEED_RUN
from rlfm.stages import dt, dt_eval, offline_make
from rlfm.tracking import console

DATASETS = {
    "medium-replay": "rlfm-demo/speedrun-medium-replay-v0",
    "expert": "rlfm-demo/speedrun-expert-v0",
}
"""The demo datasets by kind (Minari ids)."""
COST_LIMITS = (2.0, 10.0, 25.0, 50.0)
"""Cost limits of the PPO-Lagrangian runs whose episodes the datasets hold; 50 (the horizon)
never binds: that run is plain PPO, the unconstrained expert (``ref_max_score``)."""
EXPERT_STEPS = 15_000
"""Transitions of the expert dataset (300 episodes of 50 steps)."""
CPU = dict(
    context=10,
    hidden=64,
    layers=2,
    heads=1,
    dropout=0.1,
    activation="relu",
    steps=1500,
    batch_size=64,
    lr=1e-3,
    weight_decay=1e-4,
    warmup_steps=100,
    max_grad_norm=0.25,
    eval_every=500,
    save_every=500,
    eval_episodes=4,
    precision="fp32",
)
"""The CPU preset (the same numbers as configs/dt/cpu.yaml)."""


def demo_datasets() -> tuple[str, ...]:
    """The demo datasets' ids; the first call makes them with `rlfm offline make` (and the
    PPO runs they come from; a killed call resumes)."""
    for kind, dataset_id in DATASETS.items():
        if dataset_id not in local_dataset_ids():
            console.print(f"making the demo dataset {dataset_id} in {minari_root()}")
            offline_make.run(
                offline_make.Config(
                    env=SPEED_RUN,
                    kind=kind,  # type: ignore[arg-type]
                    dataset_id=dataset_id,
                    cost_limits=COST_LIMITS,
                    steps=EXPERT_STEPS,
                )
            )
    return tuple(DATASETS.values())


@settings(Runtime, precision="fp32")
class Config:
    """Train and evaluate a Decision Transformer on the built-in demo dataset."""

    out: Path = Path("runs/demo/dt")
    """Output directory (the training run; the evaluation goes to OUT/eval)."""
    steps: int = 1500
    """Training steps."""
    episodes: int = 5
    """Evaluation episodes per target return."""

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", f"must be ≥ 1, got {self.steps}")
        check(self.episodes >= 1, "episodes", f"must be ≥ 1, got {self.episodes}")


def run(cfg: Config) -> dict:
    """Make (or reuse) the dataset, train, evaluate; returns the evaluation result."""
    t0 = time.perf_counter()
    if cfg.device in ("auto", "cpu") and not torch.cuda.is_available():
        torch.set_num_threads(1)  # a 0.1M-parameter model: one thread beats two that contend
    datasets = demo_datasets()
    settings_ = CPU | {"steps": cfg.steps, "device": cfg.device, "precision": cfg.precision}
    dt.train(dt.Config(dataset=datasets, out=cfg.out, seed=cfg.seed, **settings_))
    result = dt_eval.evaluate(
        dt_eval.Config(
            model=cfg.out,
            episodes=cfg.episodes,
            out=cfg.out / "eval" / "result.json",
            device=cfg.device,
            seed=cfg.seed,
        )
    )
    console.print(f"rlfm dt demo: done in {time.perf_counter() - t0:.0f} s")
    return result
