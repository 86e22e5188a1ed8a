"""What the decision-transformer evaluations report: normalised scores, the target-return sweep
(the DT paper's Figure 4), the cost-threshold sweep, and the CDT paper's Table 1 layout.

Normalised return (D4RL's convention, both papers): 100 · (R − R_min) / (R_max − R_min), with
R_min, R_max the dataset's ``ref_min_score`` / ``ref_max_score`` when it stores them, else its
own lowest and highest episode return (the result says which); the CDT evaluation always uses
the dataset's own (the CDT paper's r_min(M), r_max(M)). Normalised cost (CDT): the
episode cost divided by the cost threshold; ≤ 1 is safe.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rlfm.errors import DataError

SAFE = 1.0
"""A normalised cost at or below this is safe."""


def normalised(value: float, ref_min: float, ref_max: float) -> float:
    """100 · (value − ref_min) / (ref_max − ref_min) (nan when the references are equal)."""
    span = ref_max - ref_min
    return 100.0 * (value - ref_min) / span if span else math.nan


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_target_sweep(tasks: list[dict[str, Any]], png: str | Path) -> Path:
    """Achieved against target return, one panel per task (the DT paper's Figure 4): mean ±
    standard deviation over episodes, the oracle diagonal, and the dataset's best return."""
    plt = _pyplot()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4.2), dpi=110, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = task["results"]
        x = np.array([r["target_return"] for r in rows])
        y = np.array([r["return_mean"] for r in rows])
        e = np.array([r["return_std"] for r in rows])
        ax.plot(x, y, marker="o", color="C0", label="Decision Transformer")
        ax.fill_between(x, y - e, y + e, color="C0", alpha=0.2)
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], ls="--", color="gray", label="oracle")
        ax.axhline(task["dataset_best_return"], ls=":", color="C3", label="best in dataset")
        ax.set_xlabel("target return")
        ax.set_ylabel("achieved return")
        ax.set_title(task["task"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def plot_threshold_sweep(result: dict[str, Any], png: str | Path) -> Path:
    """Achieved normalised return and episode cost against the cost threshold (one model,
    zero-shot over thresholds), with the cost = threshold line."""
    plt = _pyplot()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    rows = result["results"]
    x = np.array([r["cost_threshold"] for r in rows])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    a1.plot(x, [r["normalised_return"] for r in rows], marker="o")
    a1.set_xlabel("cost threshold")
    a1.set_ylabel("normalised return")
    a2.errorbar(
        x,
        [r["cost_mean"] for r in rows],
        yerr=[r["cost_std"] for r in rows],
        marker="o",
        capsize=3,
        label="episode cost",
    )
    a2.plot(x, x, ls="--", color="gray", label="cost = threshold")
    a2.set_xlabel("cost threshold")
    a2.set_ylabel("episode cost")
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result['method']} on {result['task']}")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


# ---------------------------------------------------------------------------- Table 1


RESULT_KEYS = ("method", "task", "average")
AVERAGE_KEYS = ("normalised_return", "normalised_cost")


def read_cdt_result(path: str | Path) -> dict[str, Any]:
    """A ``rlfm cdt eval`` result file (or a folder holding ``result.json``), checked."""
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    if not path.is_file():
        raise DataError(f"result: {path} does not exist (write it with `rlfm cdt eval --out`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"result: {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"result: {path} does not hold a JSON object")
    missing = [k for k in RESULT_KEYS if k not in data]
    if not missing and isinstance(data["average"], dict):
        missing = [f"average.{k}" for k in AVERAGE_KEYS if k not in data["average"]]
    if missing:
        raise DataError(
            f"result: {path} is not a `rlfm cdt eval` result (it lacks {', '.join(missing)})"
        )
    for k in AVERAGE_KEYS:
        v = data["average"][k]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise DataError(f"result: {path}: average.{k} is {v!r}, not a number")
    return data


def table1(results: list[dict[str, Any]]) -> tuple[list[str], list[str], dict]:
    """Methods (rows, in first-seen order), tasks (columns) and the cell of each (method,
    task): its average normalised return and cost (several results of one cell — seeds — are
    averaged)."""
    methods: list[str] = []
    tasks: list[str] = []
    cells: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in results:
        m, t = str(r["method"]), str(r["task"])
        methods += [m] if m not in methods else []
        tasks += [t] if t not in tasks else []
        avg = r["average"]
        cells.setdefault((m, t), []).append(
            (float(avg["normalised_return"]), float(avg["normalised_cost"]))
        )
    mean = {k: tuple(np.mean(v, axis=0)) for k, v in cells.items()}
    return methods, tasks, mean


def _row_average(cells: dict, method: str, tasks: list[str]) -> tuple[float, float] | None:
    vals = [cells[(method, t)] for t in tasks if (method, t) in cells]
    if len(vals) != len(tasks):
        return None
    return tuple(np.mean(vals, axis=0))  # type: ignore[return-value]


def _layout(results: list[dict[str, Any]], average: bool) -> tuple[list, list, dict, dict]:
    """Methods, columns (tasks [+ Average]), each cell's (return, cost) or None, and each
    column's best safe method."""
    methods, tasks, cells = table1(results)
    columns = tasks + (["Average"] if average else [])
    values = {
        (m, c): (cells.get((m, c)) if c != "Average" else _row_average(cells, m, tasks))
        for m in methods
        for c in columns
    }
    best = {}
    for c in columns:
        safe = [(v[0], m) for m in methods if (v := values[(m, c)]) and v[1] <= SAFE]
        best[c] = max(safe)[1] if safe else None
    return methods, columns, values, best


def table1_markdown(results: list[dict[str, Any]]) -> str:
    """The CDT paper's Table 1 layout as Markdown: a row per method, a reward ↑ / cost ↓ pair
    per task and their average; safe cells (normalised cost ≤ 1) in bold, the safe cell with
    the highest reward of each column starred."""
    methods, columns, values, best = _layout(results, average=True)
    head = "| Method | " + " | ".join(f"{c} reward ↑ | {c} cost ↓" for c in columns) + " |"
    rule = "|---|" + "---:|---:|" * len(columns)
    lines = [head, rule]
    for m in methods:
        cells_md = []
        for c in columns:
            v = values[(m, c)]
            if v is None:
                cells_md += ["–", "–"]
                continue
            r, k = f"{v[0]:.2f}", f"{v[1]:.2f}"
            if v[1] <= SAFE:
                star = " ★" if best[c] == m else ""
                r, k = f"**{r}**{star}", f"**{k}**"
            cells_md += [r, k]
        lines.append(f"| {m} | " + " | ".join(cells_md) + " |")
    lines += [
        "",
        "Normalised return (100 = the dataset's best episode return, 0 its worst) and "
        "normalised cost (episode cost / threshold), averaged over thresholds and seeds. "
        "**Bold**: safe (normalised cost ≤ 1); plain: unsafe; ★: the safe method with the "
        "highest reward in its column.",
    ]
    return "\n".join(lines) + "\n"


def print_table1(results: list[dict[str, Any]], title: str = "") -> None:
    """Print the Table 1 layout in the terminal (safe: bold, unsafe: dim, best safe: blue)."""
    from rich.table import Table

    from rlfm.tracking import console

    methods, columns, values, best = _layout(results, average=len(table1(results)[1]) > 1)
    table = Table(title=title or None)
    table.add_column("method")
    for c in columns:
        table.add_column(f"{c}\nreward ↑", justify="right")
        table.add_column("cost ↓", justify="right")
    for m in methods:
        row = [m]
        for c in columns:
            v = values[(m, c)]
            if v is None:
                row += ["–", "–"]
                continue
            style = "bold blue" if best[c] == m else "bold" if v[1] <= SAFE else "dim"
            row += [f"[{style}]{v[0]:.2f}[/]", f"[{style}]{v[1]:.2f}[/]"]
        table.add_row(*row)
    console.print(table)
