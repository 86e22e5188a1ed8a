"""The Constrained Decision Transformer against its baselines, end to end on a CPU in minutes.

    rlfm cdt demo --out runs/demo/cdt

1. The datasets of `rlfm dt demo` (made by `rlfm offline make` the first time, then reused):
   the velocity-constrained rlfm/SpeedRun-v0 task (rlfm.offline.speedrun; cost 1 per step
   above the speed limit), episodes of PPO-Lagrangian policies at several cost limits — the
   spread over the reward–cost plane the CDT learns from.
2. `rlfm cdt train` for CDT, DT-Cost, BC-All and BC-Safe with the CPU preset
   (configs/cdt/cpu.yaml = :data:`CPU`).
3. `rlfm cdt eval` of each at the cost thresholds (one CDT model for every threshold; BC-Safe
   trains a policy per threshold), then `rlfm cdt table`: the CDT paper's Table 1 layout in
   the terminal and in ``OUT/table.md``; ``OUT/<method>/eval/result.png`` plots reward and
   cost against the threshold.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rlfm.config import Runtime, check, settings
from rlfm.stages import cdt, cdt_eval, cdt_table
from rlfm.stages.dt_demo import demo_datasets
from rlfm.tracking import console

CPU = dict(
    context=5,
    hidden=64,
    layers=2,
    heads=2,
    dropout=0.0,
    steps=800,
    batch_size=64,
    lr=1e-3,
    weight_decay=1e-4,
    warmup_steps=50,
    max_grad_norm=0.25,
    init_temperature=0.1,
    augment_share=0.2,
    prediction_weight=0.02,
    eval_every=400,
    save_every=400,
    eval_episodes=4,
    precision="fp32",
)
"""The CPU preset (the same numbers as configs/cdt/cpu.yaml, less ``method``)."""


@settings(Runtime, precision="fp32")
class Config:
    """Train CDT and its baselines on the built-in constrained demo dataset; Table 1."""

    out: Path = Path("runs/demo/cdt")
    """Output directory: one run per method, and table.md."""
    methods: tuple[str, ...] = ("cdt", "dt-cost", "bc-all", "bc-safe")
    """Methods to train and compare."""
    cost_thresholds: tuple[str, ...] = ("5,10,20",)
    """Cost thresholds of the sweep (comma- or space-separated)."""
    steps: int = 800
    """Training steps per method."""
    episodes: int = 5
    """Evaluation episodes per threshold."""

    def __post_init__(self) -> None:
        known = ("cdt", *cdt.TRANSFORMERS, "bc-all", "bc-safe")
        for m in self.methods:
            check(m in known, "methods", f"{m!r} is not one of {', '.join(dict.fromkeys(known))}")
        check(self.steps >= 1, "steps", f"must be ≥ 1, got {self.steps}")
        check(self.episodes >= 1, "episodes", f"must be ≥ 1, got {self.episodes}")
        cdt_eval.Config(cost_thresholds=self.cost_thresholds)  # validates the thresholds


def run(cfg: Config) -> str:
    """Make (or reuse) the dataset, train and evaluate every method; returns the table."""
    t0 = time.perf_counter()
    if cfg.device in ("auto", "cpu") and not torch.cuda.is_available():
        torch.set_num_threads(1)  # a 0.1M-parameter model: one thread beats two that contend
    datasets = demo_datasets()
    results = []
    for method in cfg.methods:
        out = cfg.out / method
        settings_ = CPU | {"steps": cfg.steps, "device": cfg.device, "precision": cfg.precision}
        cdt.train(
            cdt.Config(
                dataset=datasets,
                out=out,
                method=method,  # type: ignore[arg-type]
                cost_thresholds=cfg.cost_thresholds,
                seed=cfg.seed,
                **settings_,
            )
        )
        result_file = out / "eval" / "result.json"
        cdt_eval.evaluate(
            cdt_eval.Config(
                model=(out,),
                cost_thresholds=cfg.cost_thresholds,
                episodes=cfg.episodes,
                out=result_file,
                device=cfg.device,
                seed=cfg.seed,
            )
        )
        results.append(result_file)
    table = cdt_table.run(cdt_table.Config(models=tuple(results), out=cfg.out / "table.md"))
    console.print(f"rlfm cdt demo: done in {time.perf_counter() - t0:.0f} s")
    return table
