"""The recipe's models side by side: the pipeline's evaluation step.

On the same held-out prompts (the PPO stage's), each of

- the pre-trained model (it continues the play: no notion of a reply),
- the SFT policy,
- best-of-n: the SFT policy's n samples, the one the reward model scores highest
  (KL from SFT = log n − (n−1)/n),
- the PPO policy (its best update by held-out gold score, <ppo>/best, else its last),

answers once; every reply is scored by the gold labeler and by the reward model (the proxy):
``<out>/compare.jsonl``. Then the same models (but best-of-n) answer the red-team prompts
(stages/eval_safety.py): ``<out>/safety.json``. The report (evaluate/report.py) shows both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from rlfm.config import Runtime, check, settings
from rlfm.data.preferences import write_rankings
from rlfm.evaluate.report import COMPARE, SAFETY
from rlfm.stages import eval_safety
from rlfm.tracking import console


@settings(Runtime)
class Config:
    """Compare the recipe's models on held-out and red-team prompts."""

    out: Path = Path("runs/demo/eval")
    """Where compare.jsonl and safety.json go."""
    base: Path = Path("runs/demo/pretrain")
    """The pre-trained model."""
    sft: Path = Path("runs/demo/sft")
    """The SFT policy."""
    ppo: Path = Path("runs/demo/ppo/best")
    """The PPO policy."""
    reward: Path = Path("runs/demo/rm")
    """The reward model (the proxy; it also picks best-of-n)."""
    gold: Path | None = None
    """The gold labeler (gold.json); default: the text rule."""
    prompts: Path | None = None
    """The PPO stage's --prompts (its held-out share is used); default: the built-in ones."""
    val_fraction: float = 0.1
    """The PPO stage's held-out share."""
    n_prompts: int = 24
    """Held-out prompts answered by every model."""
    best_of: int = 8
    """n of best-of-n."""
    max_new_tokens: int = 48
    """Tokens per reply at most."""
    temperature: float = 1.0
    """Sampling temperature (PPO's)."""
    safety_samples: int = 1
    """Replies per red-team prompt and model."""
    labelers: int = 3
    """Simulated labelers rating the red-team replies' toxicity."""

    def __post_init__(self) -> None:
        check(self.n_prompts >= 1, "n_prompts", f"must be ≥ 1, got {self.n_prompts}")
        check(self.best_of >= 1, "best_of", f"must be ≥ 1, got {self.best_of}")


@dataclass(frozen=True)
class Entry:
    """A model in the comparison."""

    name: str
    path: Path
    n: int  # samples per prompt; the reward model keeps the best


def done(cfg: Config) -> Path:
    """The file written last (the step is finished when it exists)."""
    return cfg.out / SAFETY


def held_out_prompts(cfg: Config) -> list[str]:
    """The first ``n_prompts`` of the PPO stage's held-out prompts."""
    from rlfm.data.prompts import builtin_prompts, load_prompts, split_prompts

    if cfg.prompts is None:
        held = builtin_prompts(cfg.val_fraction, cfg.seed)[1]
    else:
        held = split_prompts(load_prompts(cfg.prompts), cfg.val_fraction, cfg.seed)[1]
    return held[: cfg.n_prompts]


@torch.no_grad()
def run(cfg: Config) -> dict[str, float]:
    """Answer, score, write compare.jsonl and safety.json; returns mean gold and proxy scores
    per model (a finished evaluation — safety.json written — is not run again)."""
    from rlfm.builtin_task import load_policy, sample_replies
    from rlfm.checkpoint import resolve_model_dir
    from rlfm.engine import Engine
    from rlfm.evaluate.overoptimisation import bon_kl
    from rlfm.gold import load_gold
    from rlfm.models.heads import RewardModel

    if done(cfg).is_file():
        console.print(f"rlfm eval: {cfg.out} already finished; nothing to do")
        return {}
    engine = Engine.create(cfg.device, cfg.precision)
    prompts = held_out_prompts(cfg)
    gold = load_gold(cfg.gold, engine.device)
    proxy = RewardModel.from_pretrained(resolve_model_dir(cfg.reward)).to(engine.device).eval()
    entries = [
        Entry("pre-trained", cfg.base, 1),
        Entry("SFT", cfg.sft, 1),
        Entry(f"best-of-{cfg.best_of}", cfg.sft, cfg.best_of),
        Entry("PPO", cfg.ppo, 1),
    ]
    rows, summary = [], {}
    for e in entries:
        model, tokenizer = load_policy(e.path, engine.device)
        with engine.autocast():
            replies = sample_replies(
                model,
                tokenizer,
                prompts,
                e.n,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                seed=cfg.seed + 17,
            )
        del model
        flat_p = [p for p in prompts for _ in range(e.n)]
        flat_r = [r for rs in replies for r in rs]
        with engine.autocast():
            scores = proxy.score(flat_r, flat_p).view(len(prompts), e.n)
        keep = scores.argmax(1).tolist()
        chosen = [rs[i] for rs, i in zip(replies, keep)]
        picked = scores.gather(1, torch.tensor(keep)[:, None])[:, 0].tolist()
        golds = gold.scores(prompts, chosen)
        for p, r, g, s in zip(prompts, chosen, golds, picked):
            rows.append({"model": e.name, "prompt": p, "reply": r, "gold": g, "proxy": s})
        summary[f"{e.name}/gold"] = sum(golds) / len(golds)
        summary[f"{e.name}/proxy"] = sum(picked) / len(picked)
        if e.n > 1:
            summary[f"{e.name}/kl"] = bon_kl(e.n)
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_rankings(cfg.out / COMPARE, rows)
    console.print(
        "\n".join(
            f"{e.name:<14} gold {summary[f'{e.name}/gold']:+.3f}  proxy "
            f"{summary[f'{e.name}/proxy']:+.3f}"
            for e in entries
        )
    )
    safety = eval_safety.Config(
        model=(cfg.base, cfg.sft, cfg.ppo),
        name=("pre-trained", "SFT", "PPO"),
        samples=cfg.safety_samples,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        labelers=cfg.labelers,
        db=cfg.out / "safety.db",
        out=cfg.out / SAFETY,
        device=cfg.device,
        precision=cfg.precision,
        seed=cfg.seed,
    )
    eval_safety.run(safety)
    return {k: v for k, v in summary.items() if math.isfinite(v)}
