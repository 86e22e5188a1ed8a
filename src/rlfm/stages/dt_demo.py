"""The Decision Transformer end to end on a small dataset, on a CPU in minutes.

    rlfm dt demo --out runs/demo/dt

1. The dataset: rlfm/SpeedRun-v0 episodes of scripted controllers of varied speed
   (rlfm.offline.speedrun), written once in Minari's format into the local Minari folder
   (``$MINARI_DATASETS_PATH``) as ``rlfm-demo/speedrun/mixed-v0`` and reused after that.
2. `rlfm dt train` with the CPU preset (configs/dt/cpu.yaml = :data:`CPU`).
3. `rlfm dt eval`: a sweep of target returns over the dataset's range and beyond; the table
   and ``eval/result.png`` (the DT paper's Figure 4) show the achieved returns following the
   targets up to the best return in the data.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rlfm.config import Runtime, check, settings
from rlfm.data.trajectories import local_dataset_ids, minari_root
from rlfm.offline.speedrun import speed_run_dataset
from rlfm.stages import dt, dt_eval
from rlfm.tracking import console

DATASET = "rlfm-demo/speedrun/mixed-v0"
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


def demo_dataset() -> str:
    """The demo dataset's id, written into the local Minari folder the first time."""
    if DATASET not in local_dataset_ids():
        console.print(f"writing the demo dataset {DATASET} into {minari_root()}")
        speed_run_dataset(None, DATASET)
    return DATASET


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
    dataset = demo_dataset()
    settings_ = CPU | {"steps": cfg.steps, "device": cfg.device, "precision": cfg.precision}
    dt.train(dt.Config(dataset=(dataset,), out=cfg.out, seed=cfg.seed, **settings_))
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
