"""The built-in task's preference set: a policy samples K replies per prompt, the simulated
labelers rank them.

This is the one place where the built-in task meets a model: the gold rule and the simulated
labelers (data/labelers.py) are plain text rules, the sampling is ``rollout.generate``. Each
reply is cut at its first blank line (a blank line ends a speech in the play layout), so the
labelers judge one speech. The reward stage builds its default data set here, and the
labelling app's simulated labelers use the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from rlfm.data.labelers import (
    GoldFn,
    SimulatedLabeler,
    clean_reply,
    default_labelers,
    label_rows,
    text_gold,
)
from rlfm.rollout import generate


def load_policy(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A policy to sample from (an rlfm run or checkpoint, a Hugging Face model or an adapter
    directory: base + adapter) and its tokenizer, on ``device`` in eval mode."""
    from rlfm.checkpoint import resolve_model_dir
    from rlfm.errors import ModelError
    from rlfm.models.adapters import fit_vocabulary, load_model, sampling_model
    from rlfm.models.heads import load_model_tokenizer

    model_dir = resolve_model_dir(path)
    if (model_dir / "head.json").is_file():
        raise ModelError(f"model: {model_dir} is a reward or value model, not a policy")
    tokenizer = load_model_tokenizer(model_dir)
    model = load_model(model_dir)
    fit_vocabulary(model, tokenizer)
    return sampling_model(model).to(device).eval(), tokenizer


@torch.no_grad()
def sample_replies(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    k: int,
    *,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
) -> list[list[str]]:
    """``k`` replies per prompt sampled from ``model`` (on its own device; the caller chooses
    precision), cut with ``clean_reply``. -> ``len(prompts)`` lists of ``k`` strings."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    flat = [p for p in prompts for _ in range(k)]
    was_training = model.training
    model.eval()
    gen = generate(
        model,
        tokenizer,
        flat,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        batch_size=batch_size,
        generator=g,
    )
    model.train(was_training)
    replies = [clean_reply(t) for t in gen.texts]
    return [replies[j * k : (j + 1) * k] for j in range(len(prompts))]


def build_preference_set(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    k: int = 4,
    labelers: Sequence[SimulatedLabeler] | None = None,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    gold: GoldFn = text_gold,
) -> list[dict[str, Any]]:
    """The built-in preference set for ``prompts``: ``k`` sampled replies each, ranked by the
    simulated labelers, who perceive the ``gold`` scores (rlfm/gold.py) through their noise.
    Returns rankings rows (write them with ``data.preferences.write_rankings``)."""
    replies = sample_replies(
        model,
        tokenizer,
        prompts,
        k,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        batch_size=batch_size,
        seed=seed,
    )
    return label_rows(prompts, replies, labelers or default_labelers(), seed=seed, gold=gold)
