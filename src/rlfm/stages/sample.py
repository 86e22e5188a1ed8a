"""Sampling: generate text from any model directory or rlfm run.

    rlfm sample --model runs/demo/pretrain --prompt "Romeo." --num-samples 3

``--model`` is a Hugging Face causal-LM directory, an rlfm checkpoint, or an rlfm run directory
(its newest checkpoint is used). Sampling uses rlfm's own KV-cache loop (rollout.py) with
temperature, top-k and top-p.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rlfm.checkpoint import resolve_model_dir
from rlfm.config import check
from rlfm.engine import Engine
from rlfm.models.loading import load_causal_lm
from rlfm.models.tokenizer import load_tokenizer
from rlfm.rollout import decode_responses, encode_prompts, sample


@dataclass(frozen=True)
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
    jsonl: bool = False
    """Print one JSON object per sample instead of plain text."""
    seed: int = 0
    """Seed of the sampler."""
    device: str = "auto"
    """auto, cpu or cuda."""
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    """Compute precision of the forward passes."""

    def __post_init__(self) -> None:
        check(self.num_samples >= 1, "num_samples", f"must be ≥ 1, got {self.num_samples}")
        check(self.max_new_tokens >= 1, "max_new_tokens", f"must be ≥ 1, got {self.max_new_tokens}")
        check(self.temperature >= 0, "temperature", f"must be ≥ 0, got {self.temperature}")
        check(self.top_k >= 0, "top_k", f"must be ≥ 0, got {self.top_k}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(len(self.prompt) >= 1, "prompt", "give at least one prompt")


def run(cfg: Config) -> list[dict[str, str]]:
    """Generate and print the samples; returns them as {prompt, sample} dicts."""
    path = resolve_model_dir(cfg.model)
    engine = Engine.create(cfg.device, cfg.precision)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path).to(engine.device).eval()
    prompts = [p for p in cfg.prompt for _ in range(cfg.num_samples)]
    ids, mask = encode_prompts(
        tokenizer, prompts, engine.device, max_length=model.config.max_position_embeddings - 1
    )
    room = model.config.max_position_embeddings - ids.shape[1]
    g = torch.Generator(device=engine.device).manual_seed(cfg.seed)
    with engine.autocast():
        out = sample(
            model,
            ids,
            mask,
            max_new_tokens=min(cfg.max_new_tokens, room),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            generator=g,
        )
    rows = [{"prompt": p, "sample": s} for p, s in zip(prompts, decode_responses(tokenizer, out))]
    for r in rows:
        if cfg.jsonl:
            print(json.dumps(r, ensure_ascii=False))
        else:
            print(f"{r['prompt']}{r['sample']}\n{'-' * 40}")
    return rows
