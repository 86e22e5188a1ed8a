"""Learning curves of ``rlfm control ppo`` with its presets: Pendulum-v1 (target > −250) and
Hopper-v5 (target ≥ 3000 within 1M steps), written as a table, JSON and a PNG per task.

Each task runs ``rlfm control ppo --config configs/control/<task>.yaml`` in its own process
(deterministic evaluation episodes every ``eval_every`` steps give the curve). A run directory
that already holds part of a run is resumed, so a long run stopped by the machine's limits goes
on where it stopped when the script is started again; ``--max-minutes`` stops a task cleanly
(SIGTERM: rlfm saves a checkpoint) and the curve says how far it got and the training rate, so
the time the rest would take can be projected. Training time is the sum of the logged
steps/s intervals (evaluation and checkpoints excluded).

    python benchmarks/control_learning.py --workdir runs/learning             # both presets
    python benchmarks/control_learning.py --tasks hopper --seeds 0 1 --max-minutes 120
    python benchmarks/control_learning.py --tasks pendulum --out learning.json  # result rows

``--out`` writes one result row per task and seed (the last evaluation return against the
issue's target) as a JSON list.

The runs keep their policy snapshots, so a Hopper medium dataset can be made from one:
``rlfm offline make --env Hopper-v5 --kind medium --policy runs/learning/hopper-seed0 ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
TARGETS = {"pendulum": -250.0, "hopper": 3000.0}
"""The issue's targets: eval return above these (Hopper within 1M steps)."""


def run_task(task: str, seed: int, out: Path, steps: int | None, max_minutes: float) -> int:
    """Run (or resume) one preset in a child process; stop it with SIGTERM after the limit.
    Policy snapshots are kept (``--snapshots``), so the run can make medium datasets."""
    cmd = [sys.executable, "-m", "rlfm", "control", "ppo", "--snapshots"]
    cmd += ["--config", str(ROOT / "configs" / "control" / f"{task}.yaml")]
    cmd += ["--out", str(out), "--seed", str(seed)]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    out.mkdir(parents=True, exist_ok=True)
    with (out.parent / f"{out.name}.log").open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + max_minutes * 60
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.send_signal(signal.SIGTERM)  # rlfm checkpoints and exits
                proc.wait()
                break
            time.sleep(2)
    return proc.returncode


def curve(run_dir: Path) -> dict:
    """Evaluation returns against steps, and the training time they took."""
    from rlfm.tracking import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    train_s, last, points = 0.0, 0, []
    for r in rows:
        if "steps_per_s" in r:
            train_s += (r["step"] - last) / r["steps_per_s"]
            last = r["step"]
        if "eval_return" in r:
            points.append(
                {
                    "step": r["step"],
                    "eval_return": r["eval_return"],
                    "eval_return_std": r["eval_return_std"],
                    "train_minutes": train_s / 60,
                }
            )
    return {"points": points, "steps": last, "train_minutes": train_s / 60}


def plot(task: str, curves: dict[int, dict], png: Path) -> None:
    from _common import curve_plot

    series = {
        f"seed {seed}": (
            [p["step"] for p in c["points"]],
            [p["eval_return"] for p in c["points"]],
            None,
        )
        for seed, c in curves.items()
    }
    curve_plot(
        png,
        series,
        f"rlfm control ppo, configs/control/{task}.yaml",
        "environment steps",
        "eval return (deterministic)",
        hline=(TARGETS[task], "target"),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["pendulum", "hopper"], choices=list(TARGETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--workdir", type=Path, default=Path("runs/learning"), help="run directories")
    p.add_argument("--out", type=Path, help="write the result rows here (JSON list)")
    p.add_argument("--steps", type=int, help="override the presets' steps")
    p.add_argument("--max-minutes", type=float, default=600.0, help="per task and seed")
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from _common import ratio_row, table, write_row_list

    result, rows_out = {}, []
    for task in a.tasks:
        curves = {}
        for seed in a.seeds:
            run_dir = a.workdir / f"{task}-seed{seed}"
            rc = run_task(task, seed, run_dir, a.steps, a.max_minutes)
            curves[seed] = curve(run_dir) | {"exit_status": rc}
        plot(task, curves, a.workdir / f"{task}.png")
        result[task] = curves
        rows = []
        for seed, c in curves.items():
            pts = c["points"]
            if pts:
                rows_out.append(
                    ratio_row(
                        f"control PPO learning, configs/control/{task}.yaml",
                        f"{c['steps']} steps, seed {seed}",
                        "",
                        "",
                        "last eval return (deterministic)",
                        pts[-1]["eval_return"],
                        None,
                        TARGETS[task],
                    )
                )
            best = max(pts, key=lambda x: x["eval_return"]) if pts else None
            rows.append(
                [
                    f"{task} seed {seed}",
                    f"{c['steps']:,}",
                    f"{pts[-1]['eval_return']:.0f}" if pts else "-",
                    f"{best['eval_return']:.0f} at {best['step']:,}" if best else "-",
                    f"{c['train_minutes']:.1f}",
                    f"{c['steps'] / max(c['train_minutes'], 1e-9) / 60:.0f}",
                ]
            )
        print(f"\n{task} (target {TARGETS[task]:g})")
        heads = ["run", "steps", "last eval", "best eval", "train min", "steps/s"]
        print(table(heads, rows))
        for seed, c in curves.items():
            print(
                f"seed {seed}: "
                + ", ".join(f"{x['step'] // 1000}k {x['eval_return']:.0f}" for x in c["points"])
            )
    (a.workdir / "curves.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\ncurves: {a.workdir / 'curves.json'}, plots: {a.workdir}/<task>.png")
    write_row_list(a.out, rows_out)


if __name__ == "__main__":
    main()
