"""Reward over-optimisation, measured (Gao, Schulman & Hilton 2023).

    rlfm overopt --out runs/overopt                  # on runs/demo's models and labels
    rlfm overopt --out runs/overopt-quick --quick    # a few minutes: fewer, smaller everything

The gold labeler (rlfm/gold.py) plays the gold reward model. Proxy reward models are trained on
the pipeline run's labels (``--run``: its simulated labelers' noisy rankings, labels/train.jsonl)
at several data sizes (``--sizes``, in comparisons: the first rankings whose C(K,2) pairs add up
to the size). For each proxy:

- **best-of-n**: the SFT policy samples N replies to each of ``--bon-prompts`` held-out prompts
  once; for n = 1, 2, 4, …, N the expected gold and proxy score of the proxy's pick of n are
  computed without bias (evaluate/overoptimisation.py), at d = √(log n − (n−1)/n);
- **RL**: a PPO run against the proxy, long and with a small fixed KL penalty so that it can
  over-optimise (``--ppo-updates``, ``--kl-coef``), evaluated on ``--eval-size`` held-out
  prompts every ``--eval-every`` updates: proxy, gold and KL.

Gold and proxy are plotted against d per proxy size (``plots/overoptimisation.png``), relative
to the SFT policy's; R_bon(d) = d(α − βd) is fitted to the best-of-n gold points and
R_RL(d) = d(α − β log d) to the RL gold points, and the coefficients and the d where each fit
peaks go to ``overopt.json`` with the observed peaks. Replies of the RL policy at its gold peak
and at its last update (past the peak) show what over-optimisation looks like; the report
(``report.html``, ``report.md``) puts it together. Every step resumes: proxies and PPO runs are
ordinary run directories under ``--out``.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rlfm.config import Runtime, check, settings
from rlfm.data.preferences import write_rankings
from rlfm.errors import DataError
from rlfm.evaluate.overoptimisation import (
    Fit,
    best_of_n_expectation,
    bon_kl,
    fit,
    fmt,
    plot_study,
    ppo_curve,
    write_study_report,
)
from rlfm.tracking import console, read_metrics


@settings(Runtime)
class Config:
    """Proxy against gold reward as the policy moves away from SFT: best-of-n and PPO."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    out: Path = Path("runs/overopt")
    """Output directory (proxies, PPO runs, samples, overopt.json, plots, report)."""
    run: Path = Path("runs/demo")
    """The pipeline run whose pre-trained model, SFT policy, labels and gold labeler are used;
    its stages up to the labels are run first where missing."""
    pipeline: Path | None = None
    """The `rlfm pipeline --config` YAML --run was made with (none: the defaults)."""
    quick: bool = False
    """A few-minute study: two small proxies, n ≤ 8, short PPO runs (and a --quick pipeline
    where --run has none yet)."""
    sizes: tuple[int, ...] = (250, 1000, 3000)
    """Proxy training-set sizes, in comparisons (a ranking of K = 4 replies holds 6)."""
    rm_steps: int = 100
    """Optimizer steps of each proxy (batch 16 rankings)."""
    bon_n: int = 64
    """Samples per prompt for best-of-n (n = 1, 2, 4, …, this)."""
    bon_prompts: int = 64
    """Held-out prompts for best-of-n."""
    ppo_updates: int = 60
    """PPO updates per proxy."""
    eval_every: int = 5
    """PPO evaluates every this many updates."""
    eval_size: int = 64
    """Held-out prompts per PPO evaluation."""
    kl_coef: float = 0.01
    """PPO's fixed KL coefficient β (small: the run may wander far from SFT)."""
    lr: float = 2e-5
    """PPO's policy learning rate."""
    rollout_batch: int = 32
    """PPO's prompts per update."""
    max_new_tokens: int = 48
    """Tokens per reply at most."""
    temperature: float = 0.7
    """Sampling temperature (best-of-n and PPO; best-of-n's analytic KL is then against the
    SFT policy sampled at this temperature)."""

    def __post_init__(self) -> None:
        check(len(self.sizes) >= 1, "sizes", "give at least one proxy size")
        check(all(s >= 6 for s in self.sizes), "sizes", f"each must be ≥ 6, got {self.sizes}")
        for name in ("rm_steps", "bon_n", "bon_prompts", "ppo_updates", "eval_every", "eval_size"):
            check(getattr(self, name) >= 1, name, f"must be ≥ 1, got {getattr(self, name)}")
        check(self.kl_coef >= 0, "kl_coef", f"must be ≥ 0, got {self.kl_coef}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


QUICK: dict[str, Any] = dict(
    sizes=(120, 480),  # 20 and 80 rankings: at least a batch, at most a --quick run's 96
    rm_steps=30,
    bon_n=8,
    bon_prompts=16,
    ppo_updates=8,
    eval_every=2,
    eval_size=16,
    rollout_batch=16,
    max_new_tokens=24,
)
"""--quick: the study's shape in a few minutes."""


def effective(cfg: Config) -> Config:
    """The config that runs: with --quick, QUICK's values where the field has its default."""
    if not cfg.quick:
        return cfg
    default = Config()
    return replace(
        cfg, **{k: v for k, v in QUICK.items() if getattr(cfg, k) == getattr(default, k)}
    )


# ---------------------------------------------------------------------------- inputs


def prepare_run(cfg: Config) -> tuple[Any, Path, Path, Path]:
    """The pipeline run's stages up to the labels (run where missing): its stage configs, the
    training and validation rankings, and the gold labeler file."""
    from rlfm import pipeline
    from rlfm.config import from_dict, load_yaml
    from rlfm.stages import labels, pretrain, sft

    given = load_yaml(cfg.pipeline) if cfg.pipeline is not None else {}
    p = from_dict(pipeline.Config, given, source=str(cfg.pipeline or ""))
    p = replace(
        p,
        out=cfg.run,
        quick=cfg.quick or p.quick,
        device=cfg.device,
        precision=cfg.precision,
        seed=cfg.seed,
    )
    st = pipeline.stage_configs(p)
    if st.pretrain is not None:
        pretrain.train(st.pretrain)
    sft.train(st.sft)
    exported = labels.run(st.labels)
    if exported is None:
        raise DataError(f"run: {cfg.run}'s labels are not complete yet (people are labelling)")
    return st, *exported


def proxy_data(train_file: Path, size: int, out: Path) -> Path:
    """The first rankings of ``train_file`` whose comparisons add up to ``size``."""
    rows, pairs = [], 0
    for row in read_metrics(train_file):
        if pairs >= size:
            break
        k = len(row["completions"])
        rows.append(row)
        pairs += k * (k - 1) // 2
    if pairs < size:
        raise DataError(
            f"sizes: {size} comparisons asked for, but {train_file} holds only {pairs}; give "
            "smaller --sizes or label more prompts"
        )
    return write_rankings(out, rows)


# ---------------------------------------------------------------------------- best-of-n


@torch.no_grad()
def best_of_n(cfg: Config, st: Any, gold_file: Path, proxies: dict[int, Path]) -> dict[str, Any]:
    """N SFT samples per held-out prompt (cached in bon_samples.jsonl), scored by gold and by
    every proxy; the expected scores of the proxy's pick of n for n = 1, 2, 4, …, N."""
    from rlfm.builtin_task import load_policy, sample_replies
    from rlfm.checkpoint import resolve_model_dir
    from rlfm.engine import Engine
    from rlfm.gold import load_gold
    from rlfm.models.heads import RewardModel
    from rlfm.stages.compare import Config as CompareConfig
    from rlfm.stages.compare import held_out_prompts

    engine = Engine.create(cfg.device, cfg.precision)
    N = cfg.bon_n
    samples_file = cfg.out / "bon_samples.jsonl"
    cached = read_metrics(samples_file)
    prompts = held_out_prompts(
        CompareConfig(n_prompts=cfg.bon_prompts, prompts=st.ppo.prompts, seed=cfg.seed)
    )
    if len(cached) != len(prompts) * N:
        policy, tokenizer = load_policy(st.ppo.policy, engine.device)
        with engine.autocast():
            replies = sample_replies(
                policy,
                tokenizer,
                prompts,
                N,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                seed=cfg.seed + 5,
            )
        del policy
        gold = load_gold(gold_file, engine.device)
        flat_p = [p for p in prompts for _ in range(N)]
        flat_r = [r for rs in replies for r in rs]
        golds = gold.scores(flat_p, flat_r)
        cached = [{"prompt": p, "reply": r, "gold": g} for p, r, g in zip(flat_p, flat_r, golds)]
        write_rankings(samples_file, cached)
    P = len(prompts)
    gold_t = torch.tensor([r["gold"] for r in cached], dtype=torch.float64).view(P, N)
    ns = [n for n in (2**i for i in range(20)) if n <= N]
    out: dict[str, Any] = {"n": ns, "d": [math.sqrt(bon_kl(n)) for n in ns], "proxies": {}}
    for size, rm_dir in proxies.items():
        rm = RewardModel.from_pretrained(resolve_model_dir(rm_dir)).to(engine.device).eval()
        with engine.autocast():
            proxy = rm.score([r["reply"] for r in cached], [r["prompt"] for r in cached])
        proxy = proxy.double().view(P, N)
        g = [float(best_of_n_expectation(proxy, gold_t, n).mean()) for n in ns]
        s = [float(best_of_n_expectation(proxy, proxy, n).mean()) for n in ns]
        out["proxies"][str(size)] = {
            "gold": [x - g[0] for x in g],
            "proxy": [x - s[0] for x in s],
            "gold_at_1": g[0],
        }
    return out


# ---------------------------------------------------------------------------- the study


def _fit_or_none(form: str, d: list[float], r: list[float]) -> Fit | None:
    try:
        return fit(form, d, r)
    except ValueError:
        return None


def _peak_samples(ppo_dir: Path, peak: int, last: int, n: int = 5) -> list[dict[str, Any]]:
    """Held-out replies of the same prompts at the gold peak and at the last update."""
    rows = [r for r in read_metrics(ppo_dir / "samples.jsonl") if r.get("split") == "held-out"]
    at = {s: {r["prompt"]: r for r in rows if r["step"] == s} for s in (peak, last)}
    prompts = [p for p in at[peak] if p in at[last]]
    picks = random.Random(0).sample(prompts, min(n, len(prompts)))
    return [
        {
            "prompt": p,
            "peak": at[peak][p]["response"],
            "peak_gold": at[peak][p]["gold"],
            "peak_proxy": at[peak][p]["score"],
            "last": at[last][p]["response"],
            "last_gold": at[last][p]["gold"],
            "last_proxy": at[last][p]["score"],
        }
        for p in picks
    ]


def run(cfg: Config) -> dict[str, Any]:
    """Train the proxies, run best-of-n and PPO against each, fit, plot, report."""
    from rlfm.stages import ppo, reward

    cfg = effective(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    st, train_file, val_file, gold_file = prepare_run(cfg)
    common = dict(device=cfg.device, precision=cfg.precision, seed=cfg.seed)
    proxies: dict[int, Path] = {}
    for size in cfg.sizes:
        console.rule(f"[bold]rlfm overopt: proxy reward model on {size} comparisons")
        data = proxy_data(train_file, size, cfg.out / "data" / f"proxy-{size}.jsonl")
        rm_cfg = replace(
            st.reward,
            data=data,
            val_data=val_file,
            out=cfg.out / f"rm-{size}",
            steps=cfg.rm_steps,
            eval_every=cfg.rm_steps,
            save_every=cfg.rm_steps,
            **common,
        )
        reward.train(rm_cfg)
        proxies[size] = rm_cfg.out
    console.rule("[bold]rlfm overopt: best-of-n")
    bon = best_of_n(cfg, st, gold_file, proxies)
    rl: dict[str, Any] = {}
    for size, rm_dir in proxies.items():
        console.rule(f"[bold]rlfm overopt: PPO against the proxy of {size} comparisons")
        ppo_cfg = replace(
            st.ppo,
            reward=rm_dir,
            gold=gold_file,
            out=cfg.out / f"ppo-{size}",
            updates=cfg.ppo_updates,
            eval_every=cfg.eval_every,
            save_every=cfg.eval_every,
            eval_size=cfg.eval_size,
            kl_coef=cfg.kl_coef,
            kl_target=None,
            lr=cfg.lr,
            rollout_batch=cfg.rollout_batch,
            minibatch=min(st.ppo.minibatch, cfg.rollout_batch),
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            **common,
        )
        ppo.train(ppo_cfg)
        pts = ppo_curve(ppo_cfg.out / "metrics.jsonl")
        rl[str(size)] = {"points": pts, "dir": str(ppo_cfg.out)}
    study = summarise(cfg, bon, rl)
    (cfg.out / "overopt.json").write_text(json.dumps(study, indent=1) + "\n", encoding="utf-8")
    plot_study(study, cfg.out / "plots" / "overoptimisation.png")
    html, md = write_study_report(cfg.out)
    _print(study)
    console.print(f"report: {html} and {md}")
    return study


def summarise(cfg: Config, bon: dict[str, Any], rl: dict[str, Any]) -> dict[str, Any]:
    """Fits, peaks, whether each RL run over-optimised, and replies from both sides of the
    clearest peak."""
    proxies: dict[str, Any] = {}
    for size in map(str, cfg.sizes):
        b, r = bon["proxies"][size], rl[size]["points"]
        bon_fit = _fit_or_none("bon", bon["d"], b["gold"])
        rl_fit = _fit_or_none("rl", [p["d"] for p in r], [p["gold"] for p in r])
        peak = max(r, key=lambda p: p["gold"]) if r else None
        last = r[-1] if r else None
        over = (
            peak is not None
            and last is not None
            and last["update"] > peak["update"]
            and last["proxy"] > peak["proxy"]
            and last["gold"] < peak["gold"]
        )
        proxies[size] = {
            "best_of_n": {
                **b,
                "fit": {"alpha": bon_fit.alpha, "beta": bon_fit.beta, "peak_d": bon_fit.peak}
                if bon_fit
                else None,
            },
            "rl": {
                "points": r,
                "fit": {"alpha": rl_fit.alpha, "beta": rl_fit.beta, "peak_d": rl_fit.peak}
                if rl_fit
                else None,
                "peak": peak,
                "last": last,
                "over_optimised": over,
                "dir": rl[size]["dir"],
            },
        }
    clearest = max(
        proxies,
        key=lambda s: (
            proxies[s]["rl"]["over_optimised"],
            (proxies[s]["rl"]["peak"] or {}).get("gold", 0)
            - (proxies[s]["rl"]["last"] or {}).get("gold", 0),
        ),
    )
    c = proxies[clearest]["rl"]
    samples = (
        _peak_samples(Path(c["dir"]), c["peak"]["update"], c["last"]["update"])
        if c["peak"] and c["last"] and c["peak"]["update"] != c["last"]["update"]
        else []
    )
    return {
        "sizes": list(cfg.sizes),
        "bon_n": bon["n"],
        "bon_d": bon["d"],
        "proxies": proxies,
        "samples_from": clearest,
        "samples": samples,
        "settings": {
            "rm_steps": cfg.rm_steps,
            "bon_prompts": cfg.bon_prompts,
            "ppo_updates": cfg.ppo_updates,
            "kl_coef": cfg.kl_coef,
            "lr": cfg.lr,
            "eval_size": cfg.eval_size,
            "run": str(cfg.run),
        },
    }


def _print(study: dict[str, Any]) -> None:
    lines = ["[bold]over-optimisation[/] (gold relative to SFT; d = √KL)"]
    for size, p in study["proxies"].items():
        b, r = p["best_of_n"]["fit"], p["rl"]["fit"]
        peak = p["rl"]["peak"] or {}
        lines.append(
            f"proxy on {size} comparisons: best-of-n α {fmt(b and b['alpha'])} β "
            f"{fmt(b and b['beta'])} (peak d {fmt(b and b['peak_d'])}); RL α "
            f"{fmt(r and r['alpha'])} β {fmt(r and r['beta'])} (peak d {fmt(r and r['peak_d'])}); "
            f"observed RL gold peak at update {peak.get('update', '–')} (d "
            f"{fmt(peak.get('d'))}){'; over-optimised' if p['rl']['over_optimised'] else ''}"
        )
    console.print("\n".join(lines))
