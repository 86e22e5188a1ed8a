"""Score texts with a reward model.

    rlfm reward score --model runs/demo/rm --text "Good my lord, I thank you." "Away, knave!"
    rlfm reward score --model runs/demo/rm --prompt $'Romeo.\\nGood morrow.\\n\\nJuliet.\\n' --text "..."
    rlfm reward score --model my-hf-reward-model/ --text "..."

``--model`` is a reward model written by ``rlfm reward train`` (a checkpoint, or its run
directory: the newest checkpoint), or any local ``AutoModelForSequenceClassification`` directory
with one label (or a peft LoRA adapter onto one), read with its own tokenizer. Each text is read
as the reward model was trained: the prompt's tokens (a lone BOS when there is no prompt), the
text's tokens and EOS, scored at the last token that is not PAD (models/heads.py); the printed
reward is normalised (mean 0, standard deviation 1 on the reference policy's samples) unless
``--raw``. A model made elsewhere has no normalisation: its reward is its classifier's output.

:func:`load_reward_model` is the one way every command loads the reward model it is given.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from rlfm.checkpoint import resolve_model_dir
from rlfm.config import Runtime, check, settings
from rlfm.engine import Engine
from rlfm.models.heads import RewardModel


@settings(Runtime, precision="fp32")
class Config:
    """Score texts with a reward model."""

    model: Path = Path("runs/demo/rm")
    """A reward model: an `rlfm reward train` run or checkpoint, or any local
    AutoModelForSequenceClassification directory with one label (or a LoRA adapter onto one)."""
    text: tuple[str, ...] = ()
    """One or more texts (completions of --prompt) to score."""
    prompt: str = ""
    """The prompt the texts answer (the same for all); empty = score the texts alone."""
    raw: bool = False
    """Print the head's raw output instead of the normalised reward."""
    jsonl: bool = False
    """Print one JSON object per text instead of plain text."""


def load_reward_model(path: str | Path, device: torch.device | str | None = None) -> RewardModel:
    """The frozen reward model at ``path`` (an rlfm run or checkpoint, a one-label
    ``AutoModelForSequenceClassification`` directory, a peft adapter onto one, or rlfm's
    earlier format: its ``load_note`` then says so), on ``device``, in eval mode.
    Score texts with ``model.score(texts, prompts)`` (it needs the tokenizer saved with the
    model; without one it can only score token ids of a tokenizer it shares)."""
    model = RewardModel.from_pretrained(resolve_model_dir(path))
    model.requires_grad_(False)
    if device is not None:
        model.to(device)
    return model.eval()


def run(cfg: Config) -> list[float]:
    """Print each text's reward; returns the rewards."""
    check(len(cfg.text) >= 1, "text", "give at least one text to score: --text TEXT [TEXT ...]")
    resolve_model_dir(cfg.model)  # a wrong --model fails before the device is set up
    engine = Engine.create(cfg.device, cfg.precision)
    model = load_reward_model(cfg.model, engine.device)
    if model.load_note:
        print(f"note: {model.load_note}", file=sys.stderr)
    with engine.autocast():
        rewards = model.score(list(cfg.text), [cfg.prompt] * len(cfg.text), raw=cfg.raw).tolist()
    for text, r in zip(cfg.text, rewards):
        if cfg.jsonl:
            print(json.dumps({"text": text, "reward": r}, ensure_ascii=False))
        else:
            print(f"{r:+.4f}\t{text}")
    return rewards
