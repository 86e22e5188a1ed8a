"""Sampling: generate text from any model directory or rlfm run.

    rlfm sample --model runs/demo/pretrain --prompt "Romeo." --num-samples 3
    rlfm sample --model runs/demo/sft --reward runs/demo/rm --best-of 8 --prompt "..."

``--model`` is a Hugging Face causal-LM directory, an rlfm checkpoint, or an rlfm run directory
(its newest checkpoint is used); an adapter directory (LoRA or prefix-tuning, from ``rlfm sft``)
loads the base model it names and applies the adapter. Sampling uses rlfm's own KV-cache loop
(rollout.py) with temperature, top-k and top-p.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

from rlfm.checkpoint import resolve_model_dir
from rlfm.config import Runtime, check, settings
from rlfm.engine import Engine
from rlfm.errors import ModelError
from rlfm.models.adapters import fit_vocabulary, load_model, sampling_model
from rlfm.models.heads import head_format, same_token_ids
from rlfm.models.tokenizer import load_tokenizer
from rlfm.rollout import generate


@settings(Runtime, precision="fp32")
class Config:
    """Generate text from a model."""

    model: Path = Path("runs/demo/pretrain")
    """A Hugging Face causal-LM directory, an rlfm checkpoint or an rlfm run directory."""
    prompt: tuple[str, ...] = ("",)
    """One or more prompts (an empty prompt samples from the start of a document)."""
    num_samples: int = 1
    """Samples per prompt."""
    max_new_tokens: int = 100
    """Tokens generated per sample at most (a sample stops early at EOS)."""
    temperature: float = 1.0
    """Sampling temperature; 0 = greedy."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = all)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability reaches p (1 = all)."""
    best_of: int = 1
    """Best-of-n: draw this many candidates per sample and keep the one the --reward model
    scores highest (the baseline RLHF is compared against)."""
    reward: Path | None = None
    """Reward model that ranks the best-of-n candidates: an `rlfm reward train` run or checkpoint,
    or any local AutoModelForSequenceClassification directory with one label (with another
    tokenizer than the model's, it scores the decoded text)."""
    jsonl: bool = False
    """Print one JSON object per sample instead of plain text."""

    def __post_init__(self) -> None:
        check(self.num_samples >= 1, "num_samples", f"must be ≥ 1, got {self.num_samples}")
        check(self.max_new_tokens >= 1, "max_new_tokens", f"must be ≥ 1, got {self.max_new_tokens}")
        check(self.temperature >= 0, "temperature", f"must be ≥ 0, got {self.temperature}")
        check(self.top_k >= 0, "top_k", f"must be ≥ 0, got {self.top_k}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(len(self.prompt) >= 1, "prompt", "give at least one prompt")
        check(self.best_of >= 1, "best_of", f"must be ≥ 1, got {self.best_of}")
        check(
            self.best_of == 1 or self.reward is not None,
            "reward",
            "--best-of needs a reward model to pick the best candidate (--reward DIR)",
        )


def run(cfg: Config) -> list[dict]:
    """Generate and print the samples; returns them as {prompt, sample[, score]} dicts."""
    path = resolve_model_dir(cfg.model)
    if head_format(path) is not None:
        raise ModelError(f"model: {path} is a reward or value model, not a policy to sample from")
    engine = Engine.create(cfg.device, cfg.precision)
    tokenizer = load_tokenizer(path)
    model = load_model(path)
    fit_vocabulary(model, tokenizer)
    model = sampling_model(model).to(engine.device).eval()  # base + any adapter
    reward_model = None
    if cfg.reward is not None:
        from rlfm.stages.reward_score import load_reward_model

        reward_model = load_reward_model(cfg.reward, engine.device)
        if reward_model.load_note:
            print(f"note: {reward_model.load_note}", file=sys.stderr)
    n = cfg.best_of
    prompts = [p for p in cfg.prompt for _ in range(cfg.num_samples) for _ in range(n)]
    g = torch.Generator(device=engine.device).manual_seed(cfg.seed)
    with engine.autocast():
        gen = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            generator=g,
        )
    if gen.prompts_cut:
        warnings.warn(
            f"{gen.prompts_cut} of {len(prompts)} prompts are longer than the "
            f"{gen.prompt_budget} tokens left for them by --max-new-tokens {cfg.max_new_tokens}; "
            "they were cut from the left",
            stacklevel=1,
        )
    out, texts = gen.samples, gen.texts
    rows = [{"prompt": p, "sample": s} for p, s in zip(prompts, texts)]
    if reward_model is not None:
        with torch.no_grad(), engine.autocast():
            tok = reward_model.tokenizer
            if tok is None or same_token_ids(tok, tokenizer):  # the sampled ids as they are
                ids, mask, _ = out.sequences()
                scores = reward_model(ids, mask).float().cpu()
            else:  # its own tokenizer: the prompt and decoded sample as text
                scores = reward_model.score(texts, prompts)
        for r, score in zip(rows, scores.tolist()):
            r["score"] = score
        # keep the best of each group of n candidates
        best = scores.view(-1, n).argmax(-1) + torch.arange(0, len(rows), n)
        rows = [rows[i] | {"best_of": n} for i in best.tolist()] if n > 1 else rows
    for r in rows:
        if cfg.jsonl:
            print(json.dumps(r, ensure_ascii=False))
        else:
            score = f"  [reward {r['score']:.3f}]" if "score" in r else ""
            print(f"{r['prompt']}{r['sample']}\n{'-' * 40}{score}")
    return rows
