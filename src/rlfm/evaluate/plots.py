"""PNG plots of a stage's metrics (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlfm.tracking import read_metrics


def pyplot() -> Any:
    """matplotlib.pyplot, headless, in the style of the reports (small type, no top/right
    spines, light grid, frameless legends)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 8.5,
            "axes.titlesize": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.25,
            "legend.frameon": False,
            "legend.fontsize": 7.5,
        }
    )
    return plt


def plot_metrics(
    metrics_path: str | Path, png: str | Path, keys: list[str], title: str = ""
) -> Path:
    """Plot ``keys`` of ``metrics.jsonl`` against step, one line each, into ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=key, marker="o" if len(pts) < 30 else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_title(title or Path(metrics_path).parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
