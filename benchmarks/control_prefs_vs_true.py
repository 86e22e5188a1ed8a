"""PPO on a reward learned from trajectory preferences (``rlfm control prefs``, Christiano et
al. 2017) against PPO on the true reward (``rlfm control ppo``): the true return each reaches
at the same environment steps, and the number of labels the preference run used; both curves
in one plot.

Both sides use the same PPO preset (``--ppo-config``), environment, steps, seed and evaluation
schedule (deterministic episodes scored with the environment's true reward); the preference run
never sees that reward: a synthetic oracle labels segment pairs by their true return, within
the label budget (``--labels``, one run per budget). Every run is its own process; a run
directory that already holds a finished run is reused, a partial one resumed.

    python benchmarks/control_prefs_vs_true.py --env Pendulum-v1 \\
        --ppo-config configs/control/pendulum-zoo.yaml --labels 250 1000 --seeds 0 1

``--out`` writes one result row per label budget (final true return of the preference runs
against the true-reward runs', mean over seeds, and the labels used) as a JSON list.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def run(args: list[str], out: Path) -> None:
    """``rlfm ARGS --out OUT`` in its own process, output appended to OUT.log."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "rlfm", *args, "--out", str(out)]
    with (out.parent / f"{out.name}.log").open("ab") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}); see {out.parent / f'{out.name}.log'}")


def curve(run_dir: Path) -> list[dict]:
    """(step, eval_return, labels so far) of every evaluation."""
    from rlfm.tracking import read_metrics

    labels, points = 0.0, []
    for r in read_metrics(run_dir / "metrics.jsonl"):
        labels = r.get("labels", labels)
        if "eval_return" in r:
            points.append({"step": r["step"], "eval_return": r["eval_return"], "labels": labels})
    return points


def plot(curves: dict[str, list[list[dict]]], png: Path, title: str) -> None:
    """Mean over seeds of each method's curve, shaded between the seeds' min and max."""
    import numpy as np
    from _common import curve_plot

    series = {}
    for name, runs in curves.items():
        n = min(len(r) for r in runs)
        ys = np.array([[p["eval_return"] for p in r[:n]] for r in runs])
        band = (ys.min(0), ys.max(0)) if len(runs) > 1 else None
        series[name] = ([p["step"] for p in runs[0][:n]], ys.mean(0), band)
    curve_plot(png, series, title, "environment steps", "true eval return (deterministic)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--ppo-config", type=Path, default=ROOT / "configs/control/pendulum-zoo.yaml")
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--labels", type=int, nargs="+", default=[1000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--eval-every", type=int, default=20_000)
    p.add_argument("--workdir", type=Path, default=Path("runs/prefs_vs_true"))
    p.add_argument("--out", type=Path, help="write the result rows here (JSON list)")
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from _common import ratio_row, table, write_row_list

    common = ["--env", a.env, "--steps", str(a.steps), "--eval-every", str(a.eval_every)]
    curves: dict[str, list[list[dict]]] = {"true reward": []}
    for seed in a.seeds:
        out = a.workdir / f"true-seed{seed}"
        run(["control", "ppo", "--config", str(a.ppo_config), *common, "--seed", str(seed)], out)
        curves["true reward"].append(curve(out))
    for labels in a.labels:
        name = f"preferences, {labels} labels"
        curves[name] = []
        for seed in a.seeds:
            out = a.workdir / f"prefs{labels}-seed{seed}"
            args = ["control", "prefs", "--ppo-config", str(a.ppo_config), *common]
            run([*args, "--labels", str(labels), "--seed", str(seed)], out)
            curves[name].append(curve(out))

    rows = []
    for name, runs in curves.items():
        for seed, pts in zip(a.seeds, runs):
            half = min(pts, key=lambda x: abs(x["step"] - a.steps // 2))
            best = max(x["eval_return"] for x in pts)
            used = f"{pts[-1]['labels']:.0f}" if name != "true reward" else "-"
            rows.append(
                [
                    f"{name}, seed {seed}",
                    f"{half['eval_return']:.0f} at {half['step']:,}",
                    f"{pts[-1]['eval_return']:.0f} at {pts[-1]['step']:,}",
                    f"{best:.0f}",
                    used,
                ]
            )
    print(f"{a.env}, {a.steps:,} steps, PPO preset {a.ppo_config.name}; true eval return")
    print(table(["run", "halfway", "final", "best", "labels used"], rows))
    png = a.workdir / "prefs_vs_true.png"
    plot(curves, png, f"{a.env}: PPO on the true reward vs on learned preferences")
    (a.workdir / "curves.json").write_text(json.dumps(curves, indent=2) + "\n")
    print(f"plot: {png}; curves: {a.workdir / 'curves.json'}")
    true_final = sum(r[-1]["eval_return"] for r in curves["true reward"]) / len(a.seeds)
    rows_out = []
    for labels in a.labels:
        runs = curves[f"preferences, {labels} labels"]
        final = sum(r[-1]["eval_return"] for r in runs) / len(runs)
        used = max(r[-1]["labels"] for r in runs)
        rows_out.append(
            ratio_row(
                f"control PPO from preferences, {a.env}",
                f"{a.steps} steps, {labels} label budget ({used:.0f} used), seeds {a.seeds}",
                "PPO on the true reward",
                f"same preset ({a.ppo_config.name}), steps and seeds",
                "final true eval return",
                final,
                true_final,
                None,
            )
        )
        print(
            f"{labels} labels ({used:.0f} used): final true return {final:.1f} vs "
            f"{true_final:.1f} with the true reward"
        )
    write_row_list(a.out, rows_out)


if __name__ == "__main__":
    main()
