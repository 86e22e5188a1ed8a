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

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from rlfm.data.labelers import GoldScore
from rlfm.evaluate.plots import pyplot
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


GOLD_PARTS = tuple(f.name for f in fields(GoldScore))
"""The gold rule's terms (data/labelers.py: courtesy, relevance, length, repetition, form,
fluency), in the order the report shows them."""


def judged_replies(samples_path: str | Path) -> list[dict[str, Any]]:
    """The held-out replies of a PPO run's ``samples.jsonl`` that carry a gold score (one per
    held-out prompt per evaluated update); [] for a run without a gold labeler."""
    return [
        r
        for r in read_metrics(samples_path)
        if r.get("split") == "held-out" and isinstance(r.get("gold"), int | float)
    ]


def gold_parts_by_update(samples_path: str | Path) -> list[dict[str, float]]:
    """What the gold labeler saw at each of a PPO run's held-out evaluations: per update the
    mean of each term of the gold rule over the held-out replies (:data:`GOLD_PARTS`; the
    text terms from the reply itself, fluency as the stored gold score less them), the mean
    gold and proxy score and the mean reply length in words. Read from ``samples.jsonl``; []
    when its held-out rows carry no gold score (a run without a gold labeler)."""
    from rlfm.data.labelers import clean_reply, gold_components, words

    by_update: dict[int, list[dict[str, float]]] = {}
    for r in judged_replies(samples_path):
        reply = clean_reply(r["response"])
        text = gold_components(r["prompt"], reply)
        row = {name: float(getattr(text, name)) for name in GOLD_PARTS}
        row["fluency"] = r["gold"] - text.total  # the text terms' fluency is 0
        row |= {"gold": r["gold"], "proxy": r["score"], "words": float(len(words(reply)))}
        by_update.setdefault(int(r["step"]), []).append(row)
    return [
        {"update": float(u)} | {k: sum(x[k] for x in rows) / len(rows) for k in rows[0]}
        for u, rows in sorted(by_update.items())
    ]


def pair_agreement(
    rows: Iterable[tuple[str, int, float, float]], late_from: int
) -> dict[str, tuple[float, int]]:
    """How often a proxy orders two replies to the same prompt as gold does.

    ``rows`` are (prompt, update, gold, proxy), one per reply. Every pair of one prompt's
    replies with different gold scores is a comparison; the proxy agrees when it orders the pair
    as gold does, and a proxy tie counts half. ``"all"``: every pair; ``"late"``: the pairs whose
    replies both come from update ``late_from`` or later. Each is (agreement, pairs), the
    agreement nan without pairs; 0.5 is chance."""
    by_prompt: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for prompt, update, gold, proxy in rows:
        by_prompt[prompt].append((update, gold, proxy))
    counts = {"all": [0.0, 0], "late": [0.0, 0]}
    for replies in by_prompt.values():
        for (ua, ga, xa), (ub, gb, xb) in itertools.combinations(replies, 2):
            if ga == gb:
                continue
            agree = 0.5 if xa == xb else float((ga - gb) * (xa - xb) > 0)
            for key in ("all", "late") if min(ua, ub) >= late_from else ("all",):
                counts[key][0] += agree
                counts[key][1] += 1
    return {k: (a / n if n else math.nan, int(n)) for k, (a, n) in counts.items()}


def proxy_agreement(
    samples_path: str | Path, late_from: int | None = None
) -> dict[str, Any] | None:
    """Does the reward PPO optimised still rank PPO's own replies? :func:`pair_agreement` over a
    run's held-out replies (``samples.jsonl``: one reply per held-out prompt per evaluated
    update, with its gold score and the score PPO received: the reward model's, or the
    missing-EOS penalty). ``late_from`` defaults to the run's second half (the first evaluated
    update at or past half the last). None without gold scores."""
    rows = [
        (r["prompt"], int(r["step"]), float(r["gold"]), float(r["score"]))
        for r in judged_replies(samples_path)
    ]
    if not rows:
        return None
    updates = sorted({u for _, u, _, _ in rows})
    if late_from is None:
        late_from = next(u for u in updates if u >= updates[-1] / 2)
    return {"late_from": late_from} | pair_agreement(rows, late_from)


def plot_overoptimisation(metrics_path: str | Path, png: str | Path) -> Path | None:
    """Gold and proxy score of a PPO run's held-out evaluations against d = √KL(π ‖ π_SFT),
    both relative to the SFT policy's (update 0), each point labelled with its update and the
    gold peak starred (as Gao et al. plot them). None when the run has no gold evaluations."""
    pts = ppo_curve(metrics_path)
    if len(pts) < 2:
        return None
    plt = pyplot()
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


def fmt(x: float | None) -> str:
    """A coefficient for a table: three significant digits, "–" for none or a non-number."""
    return "–" if x is None or not math.isfinite(x) else f"{x:.3g}"


# ---------------------------------------------------------------------------- a study's figure and report


def plot_study(study: dict[str, Any], png: Path) -> Path:
    """Two panels, best-of-n and RL: gold (solid, with its fit dotted) and proxy (dashed) score
    against d, one colour per proxy size."""
    plt = pyplot()
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8), dpi=150, sharey=False)
    for (size, p), colour in zip(study["proxies"].items(), colours):
        b = p["best_of_n"]
        ax = axes[0]
        ax.plot(
            study["bon_d"], b["gold"], "o-", color=colour, markersize=3.5, label=f"gold, {size}"
        )
        ax.plot(
            study["bon_d"],
            b["proxy"],
            "^--",
            color=colour,
            markersize=3.5,
            alpha=0.7,
            label=f"proxy, {size}",
        )
        if b["fit"]:
            f = Fit("bon", b["fit"]["alpha"], b["fit"]["beta"])
            xs = [i * max(study["bon_d"]) / 60 for i in range(61)]
            ax.plot(xs, [f(x) for x in xs], ":", color=colour, linewidth=1)
        r = p["rl"]
        ax = axes[1]
        d = [q["d"] for q in r["points"]]
        ax.plot(
            d,
            [q["gold"] for q in r["points"]],
            "o-",
            color=colour,
            markersize=3.5,
            label=f"gold, {size}",
        )
        ax.plot(
            d,
            [q["proxy"] for q in r["points"]],
            "^--",
            color=colour,
            markersize=3.5,
            alpha=0.7,
            label=f"proxy, {size}",
        )
        if r["fit"] and d:
            f = Fit("rl", r["fit"]["alpha"], r["fit"]["beta"])
            xs = [i * max(d) / 60 for i in range(61)]
            ax.plot(xs, [f(x) for x in xs], ":", color=colour, linewidth=1)
        if r["peak"]:
            ax.plot([r["peak"]["d"]], [r["peak"]["gold"]], "*", color=colour, markersize=12)
    for ax, title in zip(axes, ("best-of-n (n = 1 … N)", "PPO (★ gold peak)")):
        ax.axhline(0, color="#999", linewidth=0.6)
        ax.set_xlabel("d = √KL(π ‖ π_SFT)")
        ax.set_title(title)
    axes[0].set_ylabel("score − score of the SFT policy")
    axes[1].legend(ncol=2, title="proxy trained on … comparisons", title_fontsize=7.5)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png


def write_study_report(out: Path) -> tuple[Path, Path]:
    """report.html and report.md of a study (from overopt.json and its plot)."""
    from rlfm.evaluate.render import Figures, Heading, Table, Text, write
    from rlfm.evaluate.report import clip, prompt_cell

    out = Path(out)
    study = json.loads((out / "overopt.json").read_text(encoding="utf-8"))
    s = study["settings"]
    blocks: list[Any] = [
        Text(
            f"The gold labeler of `{s['run']}` plays the gold reward model; proxy reward models "
            f"are trained for {s['rm_steps']} steps on the first {', '.join(map(str, study['sizes']))} "
            "comparisons of its simulated labelers' noisy rankings. Best-of-n picks the proxy's "
            f"favourite of n SFT samples on {s['bon_prompts']} held-out prompts (expected scores "
            f"for n = 1 … {study['bon_n'][-1]}, KL = log n − (n−1)/n); PPO optimises each proxy "
            f"for {s['ppo_updates']} updates with a fixed β = {s['kl_coef']} and learning rate "
            f"{s['lr']:g}, evaluated on {s['eval_size']} held-out prompts."
        ),
        Figures(
            [out / "plots" / "overoptimisation.png"],
            [
                "Gold (solid) and proxy (dashed) score against d = √KL; dotted: the fitted functional forms."
            ],
        ),
        Heading("Fits and peaks"),
    ]
    rows = []
    for size, p in study["proxies"].items():
        b, r = p["best_of_n"]["fit"] or {}, p["rl"]["fit"] or {}
        peak = p["rl"]["peak"] or {}
        last = p["rl"]["last"] or {}
        rows.append(
            [
                size,
                fmt(b.get("alpha")),
                fmt(b.get("beta")),
                fmt(b.get("peak_d")),
                fmt(r.get("alpha")),
                fmt(r.get("beta")),
                fmt(r.get("peak_d")),
                f"{peak.get('update', '–')} (d {fmt(peak.get('d'))}, gold {fmt(peak.get('gold'))})",
                f"gold {fmt(last.get('gold'))}, proxy {fmt(last.get('proxy'))}",
                "yes" if p["rl"]["over_optimised"] else "no",
            ]
        )
    blocks.append(
        Table(
            [
                "comparisons",
                "BoN α",
                "BoN β",
                "BoN peak d",
                "RL α",
                "RL β",
                "RL peak d",
                "RL gold peak (observed)",
                "RL last",
                "over-optimised",
            ],
            rows,
            numeric=(1, 2, 3, 4, 5, 6),
            caption="R_bon(d) = d(α − βd) and R_RL(d) = d(α − β log d) fitted to the gold scores "
            "(relative to SFT); 'over-optimised': at the last update the proxy is higher and the "
            "gold lower than at the gold peak.",
        )
    )
    if study["samples"]:
        blocks += [
            Heading("Both sides of the peak"),
            Text(
                f"PPO against the proxy trained on {study['samples_from']} comparisons: replies to the same held-out prompts at the gold peak and at the last update."
            ),
            Table(
                ["prompt", "at the peak", "gold", "proxy", "last update", "gold", "proxy"],
                [
                    [
                        prompt_cell(x["prompt"]),
                        clip(x["peak"]),
                        x["peak_gold"],
                        x["peak_proxy"],
                        clip(x["last"]),
                        x["last_gold"],
                        x["last_proxy"],
                    ]
                    for x in study["samples"]
                ],
                wide_text=True,
                numeric=(2, 3, 5, 6),
            ),
        ]
    return write(
        out,
        "report",
        f"rlfm over-optimisation study: {out.name}",
        f"`{out}` · rebuild with `rlfm report {out}`",
        blocks,
    )
