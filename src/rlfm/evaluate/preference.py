"""How good is a reward model: pairwise accuracy, agreement with a gold score, calibration.

- **Pairwise accuracy**: the share of held-out comparisons whose winner gets the higher reward
  (a reward tie counts one half).
- **Agreement with the gold labeler**: the same, against the gold scores instead of the
  labels, over every pair of completions whose gold scores differ. With noisy labelers this can
  exceed the labelers' own agreement with gold (the reward model averages the noise out).
- **Calibration** (reliability diagram): the Bradley–Terry model predicts
  p = σ(r_w − r_l) for each comparison; binned by p, the observed frequency of the predicted
  outcome should equal the mean p. Each comparison is counted in both orientations (p with
  outcome 1 and 1 − p with outcome 0), so the diagram is symmetric about (0.5, 0.5). The
  expected calibration error is ECE = Σ_bins (n_bin / n) · |mean p − observed|.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


def pairwise_accuracy(differences: torch.Tensor) -> float:
    """Share of r_w − r_l > 0, ties counted as one half. (P,) -> float (nan when P = 0)."""
    if differences.numel() == 0:
        return float("nan")
    return float(((differences > 0).float() + 0.5 * (differences == 0).float()).mean())


def gold_agreement(rewards: Sequence[torch.Tensor], gold: Sequence[Sequence[float]]) -> float:
    """Share of completion pairs (same prompt, different gold score) that the rewards order as
    the gold scores do; reward ties count one half. nan when no pair qualifies."""
    agree, total = 0.0, 0
    for r, g in zip(rewards, gold):
        gt = torch.as_tensor(list(g), dtype=torch.float64)
        rt = r.double()
        dg = gt[:, None] - gt[None, :]
        dr = rt[:, None] - rt[None, :]
        upper = torch.triu(torch.ones_like(dg, dtype=torch.bool), diagonal=1) & (dg != 0)
        s = torch.sign(dg[upper]) * torch.sign(dr[upper])
        agree += float((s > 0).sum()) + 0.5 * float((s == 0).sum())
        total += int(upper.sum())
    return agree / total if total else float("nan")


def labels_gold_agreement(
    levels: Sequence[Sequence[int]], gold: Sequence[Sequence[float]]
) -> float:
    """Share of labelled comparisons (different levels, different gold) that the labels order
    as the gold scores do: how noisy the labelers were."""
    agree, total = 0, 0
    for lv, g in zip(levels, gold):
        k = len(lv)
        for i in range(k):
            for j in range(k):
                if lv[i] < lv[j] and g[i] != g[j]:
                    total += 1
                    agree += int(g[i] > g[j])
    return agree / total if total else float("nan")


@dataclass
class Calibration:
    """A reliability table: per probability bin, the mean prediction and observed frequency."""

    edges: list[float]
    """Bin edges, 0 to 1."""
    mean_predicted: list[float]
    """Mean p in each bin (nan for an empty bin)."""
    observed: list[float]
    """Observed frequency of the predicted outcome in each bin (nan when empty)."""
    counts: list[int]
    """Predictions per bin (each comparison counts twice, once per orientation)."""
    ece: float
    """Expected calibration error."""


def calibration(differences: torch.Tensor, bins: int = 10) -> Calibration:
    """Reliability table of p = σ(r_w − r_l) over comparisons (module docstring). (P,)."""
    p_win = torch.sigmoid(differences.double())
    p = torch.cat([p_win, 1 - p_win])
    y = torch.cat([torch.ones_like(p_win), torch.zeros_like(p_win)])
    idx = (p * bins).long().clamp(max=bins - 1)
    mean_p, obs, counts = [], [], []
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        counts.append(n)
        if n == 0:
            mean_p.append(float("nan"))
            obs.append(float("nan"))
            continue
        mp, oy = float(p[sel].mean()), float(y[sel].mean())
        mean_p.append(mp)
        obs.append(oy)
        ece += n / len(p) * abs(mp - oy)
    return Calibration([b / bins for b in range(bins + 1)], mean_p, obs, counts, ece)


def plot_calibration(cal: Calibration, png: str | Path, title: str = "calibration") -> Path:
    """Reliability diagram: observed vs predicted P(win), the diagonal, counts per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect calibration")
    pts = [(m, o) for m, o in zip(cal.mean_predicted, cal.observed) if m == m]
    if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", label=f"reward model (ECE {cal.ece:.3f})")
    counts = ax.twinx()
    centers = [(a + b) / 2 for a, b in zip(cal.edges, cal.edges[1:])]
    counts.bar(centers, cal.counts, width=0.08, alpha=0.2, color="tab:blue")
    counts.set_ylabel("predictions per bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(win) = σ(r_a − r_b)")
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def plot_reward_histograms(
    chosen: Sequence[float], rejected: Sequence[float], png: str | Path, title: str = "rewards"
) -> Path:
    """Overlaid histograms of the rewards of preferred and rejected completions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    values = list(chosen) + list(rejected)
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    bins = torch.linspace(lo, hi if hi > lo else lo + 1, 31).tolist()
    ax.hist(list(chosen), bins=bins, alpha=0.55, label=f"chosen (best), n={len(chosen)}")
    ax.hist(list(rejected), bins=bins, alpha=0.55, label=f"rejected (worst), n={len(rejected)}")
    ax.set_xlabel("reward (normalised)")
    ax.set_ylabel("completions")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
