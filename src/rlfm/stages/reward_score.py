"""Score texts with a reward model.

    rlfm reward score --model runs/demo/rm --text "Good my lord, I thank you." "Away, knave!"
    rlfm reward score --model runs/demo/rm --prompt $'Romeo.\\nGood morrow.\\n\\nJuliet.\\n' --text "..."

``--model`` is a reward-model directory written by ``rlfm reward train`` (a checkpoint) or its
run directory (the newest checkpoint). Each text is read as the reward model was trained: the
prompt's tokens (a lone BOS when there is no prompt), the text's tokens and EOS; the printed
reward is normalised (mean 0, standard deviation 1 on the reference policy's samples) unless
``--raw``.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlfm.checkpoint import resolve_model_dir
from rlfm.config import Runtime, check, settings
from rlfm.engine import Engine
from rlfm.models.heads import RewardModel


@settings(Runtime, precision="fp32")
class Config:
    """Score texts with a trained reward model."""

    model: Path = Path("runs/demo/rm")
    """A reward-model checkpoint or run directory (`rlfm reward train --out`)."""
    text: tuple[str, ...] = ()
    """One or more texts (completions of --prompt) to score."""
    prompt: str = ""
    """The prompt the texts answer (the same for all); empty = score the texts alone."""
    raw: bool = False
    """Print the head's raw output instead of the normalised reward."""
    jsonl: bool = False
    """Print one JSON object per text instead of plain text."""


def run(cfg: Config) -> list[float]:
    """Print each text's reward; returns the rewards."""
    check(len(cfg.text) >= 1, "text", "give at least one text to score: --text TEXT [TEXT ...]")
    path = resolve_model_dir(cfg.model)
    engine = Engine.create(cfg.device, cfg.precision)
    model = RewardModel.from_pretrained(path).to(engine.device).eval()
    with engine.autocast():
        rewards = model.score(list(cfg.text), [cfg.prompt] * len(cfg.text), raw=cfg.raw).tolist()
    for text, r in zip(cfg.text, rewards):
        if cfg.jsonl:
            print(json.dumps({"text": text, "reward": r}, ensure_ascii=False))
        else:
            print(f"{r:+.4f}\t{text}")
    return rewards
