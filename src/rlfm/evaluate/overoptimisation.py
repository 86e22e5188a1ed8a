"""Reward over-optimisation (Gao, Schulman & Hilton 2023, "Scaling laws for reward model
overoptimization").

A policy optimised against a proxy reward (a reward model learned from noisy labels) moves away
from its initial policy; its distance is d = √KL(π ‖ π_init). The proxy score keeps rising with
d, but the gold score — what the labels were a noisy view of — rises, peaks and falls. Gao et
al. found two functional forms, each with R(0) = 0 (scores relative to the initial policy):

    best-of-n:  R_bon(d) = d · (α − β·d)          peak at d* = α / (2β)
    RL:         R_RL(d)  = d · (α − β·log d)      peak at d* = exp(α/β − 1)

Both are linear in (α, β), so the fits are least squares without an intercept.

Best-of-n's KL from the policy it samples from has a closed form (for a reward without ties):

    KL_bon(n) = log n − (n − 1) / n

and its expected gold score at n is estimated without bias from N ≥ n samples per prompt: with
the N samples sorted by proxy score, the i-th lowest is the best of a random n-subset with
probability C(i−1, n−1) / C(N, n) (:func:`best_of_n_expectation`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlfm.tracking import read_metrics


def bon_kl(n: int) -> float:
    """KL(π_bon ‖ π) = log n − (n − 1)/n, in nats."""
    assert n >= 1, "n must be ≥ 1"
    return math.log(n) - (n - 1) / n


def best_of_n_weights(N: int, n: int) -> torch.Tensor:
    """P(the i-th lowest of N samples is the best of a random n-subset), i = 1..N:
    C(i−1, n−1) / C(N, n). (N,) float64, sums to 1."""
    assert 1 <= n <= N, f"need 1 ≤ n ≤ N, got n={n}, N={N}"
    total = math.comb(N, n)  # exact integers: no cancellation for large N
    return torch.tensor(
        [math.comb(i - 1, n - 1) / total for i in range(1, N + 1)], dtype=torch.float64
    )


def best_of_n_expectation(proxy: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """E[value of the proxy-best of n samples drawn without replacement from the N per prompt].
    (P, N) proxy scores and (P, N) values -> (P,) float64. Proxy ties are broken by position."""
    P, N = proxy.shape  # prompts, samples per prompt
    assert values.shape == (P, N), f"values {tuple(values.shape)} != {(P, N)}"
    order = proxy.double().argsort(dim=1, stable=True)
    ranked = values.double().gather(1, order)
    return ranked @ best_of_n_weights(N, n)


@dataclass(frozen=True)
class Fit:
    """R(d) = d·(α − β·d) (best-of-n) or d·(α − β·log d) (RL), and where it peaks."""

    form: str  # "bon" or "rl"
    alpha: float
    beta: float

    def __call__(self, d: float) -> float:
        if d <= 0:
            return 0.0
        return d * (self.alpha - self.beta * (d if self.form == "bon" else math.log(d)))

    @property
    def peak(self) -> float:
        """The d where R peaks (inf when β ≤ 0: no peak)."""
        if self.beta <= 0:
            return math.inf
        if self.form == "bon":
            return self.alpha / (2 * self.beta)
        return math.exp(min(self.alpha / self.beta - 1, 700.0))


def fit(form: str, d: Sequence[float], r: Sequence[float]) -> Fit:
    """Least-squares (α, β) of ``form`` ("bon" or "rl") to points (d_i, R_i), R relative to
    the initial policy (R(0) = 0); needs two points with d > 0."""
    assert form in ("bon", "rl"), form
    pts = [(x, y) for x, y in zip(d, r, strict=True) if x > 0]
    if len(pts) < 2:
        raise ValueError(f"a fit needs at least 2 points with d > 0, got {len(pts)}")
    x = torch.tensor([p[0] for p in pts], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pts], dtype=torch.float64)
    second = x * x if form == "bon" else x * x.log()
    X = torch.stack([x, -second], dim=1)  # R = α·d − β·(d² or d·log d)
    coef = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]
    return Fit(form, float(coef[0]), float(coef[1]))


# ---------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ppo_curve(metrics_path: str | Path) -> list[dict[str, float]]:
    """A PPO run's evaluations: update, d = √KL, proxy and gold score (relative to update 0)."""
    rows = [
        r for r in read_metrics(metrics_path) if {"eval_kl", "eval_gold", "eval_score"} <= set(r)
    ]
    if not rows:
        return []
    g0, s0 = rows[0]["eval_gold"], rows[0]["eval_score"]
    return [
        {
            "update": r["step"],
            "d": math.sqrt(max(r["eval_kl"], 0.0)),
            "proxy": r["eval_score"] - s0,
            "gold": r["eval_gold"] - g0,
        }
        for r in rows
    ]


def plot_overoptimisation(metrics_path: str | Path, png: str | Path) -> Path | None:
    """Gold and proxy score of a PPO run's held-out evaluations against d = √KL(π ‖ π_SFT),
    both relative to the SFT policy's (update 0), each point labelled with its update and the
    gold peak starred (as Gao et al. plot them). None when the run has no gold evaluations."""
    pts = ppo_curve(metrics_path)
    if len(pts) < 2:
        return None
    plt = _pyplot()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=130)
    d = [p["d"] for p in pts]
    ax.plot(d, [p["proxy"] for p in pts], "--^", color="#c44e52", label="proxy (reward model)")
    ax.plot(d, [p["gold"] for p in pts], "-o", color="#4c72b0", label="gold labeler")
    best = max(pts, key=lambda p: p["gold"])
    ax.plot([best["d"]], [best["gold"]], "*", color="#4c72b0", markersize=16, zorder=5)
    for p in pts:
        ax.annotate(
            str(p["update"]),
            (p["d"], p["gold"]),
            textcoords="offset points",
            xytext=(4, -11),
            fontsize=7,
            color="#555",
        )
    ax.axhline(0, color="#999", linewidth=0.6)
    ax.set_xlabel("d = √KL(π ‖ π_SFT)   (nats½ per response)")
    ax.set_ylabel("score − score of the SFT policy")
    ax.set_title(f"over-optimisation: gold peaks at update {best['update']} (★)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
