"""Prompts for RL fine-tuning and evaluation.

``--prompts`` is a JSONL / JSON / Parquet file or a saved ``datasets`` directory whose rows have
either ``prompt`` (a string) or ``messages`` (a list of ``{role, content}`` ending with a user
turn; rendered with the tokenizer's chat template — or rlfm's default template — with the
generation prompt appended). Any other fields are ignored, so a preference or SFT file can serve.

The built-in default: the dialogue contexts of the held-out plays, laid out as the SFT stage
lays out its prompts (``"Romeo.\\n<speech>\\n\\nJuliet.\\n"``). A fixed share of them is kept
apart for evaluation, so the policy is scored on prompts it never trained on.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from rlfm.data.rows import (
    ROW_SUFFIXES,
    Row,
    file_rows,
    is_saved_dataset,
    json_lines,
    read_text,
    saved_dataset_rows,
)
from rlfm.errors import DataError


def _rows(path: Path) -> list[Row]:
    """Rows of a row file or saved dataset (a file of another ending is read as JSON lines);
    DataError names the file and line."""
    if path.is_dir():
        if not is_saved_dataset(path):
            raise DataError(
                f"{path}: not a saved `datasets` directory (it has neither dataset_dict.json "
                "nor dataset_info.json and state.json); expected a JSONL, JSON or Parquet file "
                "of prompts, or a directory written by Dataset.save_to_disk"
            )
        return saved_dataset_rows(path)[0]
    if path.suffix.lower() in ROW_SUFFIXES:
        return file_rows(path)
    return [Row(f"{path}: line {n}", v, n) for n, v in json_lines(path, read_text(path))]


def _prompt_of(where: str, row: Any, tokenizer: PreTrainedTokenizerBase) -> str:
    from rlfm.data.sft import chat_template_of

    if not isinstance(row, dict):
        raise DataError(
            f"{where}: expected an object with `prompt` or `messages`, got {type(row).__name__}"
        )
    if isinstance(row.get("prompt"), str):
        if not row["prompt"].strip():
            raise DataError(f"{where}: `prompt` is empty")
        return row["prompt"]
    messages = row.get("messages")
    if isinstance(messages, list) and messages:
        for i, m in enumerate(messages):
            if not (
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
            ):
                raise DataError(f"{where}: messages[{i}] must be {{role, content}} strings")
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # a conversation with its answer: prompt for that answer
        if not messages:
            raise DataError(f"{where}: `messages` holds no turn before the assistant's")
        return tokenizer.apply_chat_template(
            messages,
            chat_template=chat_template_of(tokenizer),
            tokenize=False,
            add_generation_prompt=True,
        )
    fields = ", ".join(sorted(row)) or "none"
    raise DataError(f"{where}: no `prompt` string or `messages` list (fields: {fields})")


def load_prompts(path: str | Path, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The prompts of a file or saved dataset (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (expected JSONL/Parquet prompts)")
    prompts = [_prompt_of(r.where, r.value, tokenizer) for r in _rows(path)]
    if not prompts:
        raise DataError(f"{path}: holds no prompts")
    return prompts


def builtin_prompts(eval_share: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """(training, evaluation) prompts: dialogue contexts of the held-out plays, split at random
    with a fixed seed."""
    from rlfm.data.sft import builtin_dialogue

    _, val, _ = builtin_dialogue()
    prompts = sorted({r.demo.prompt for r in val})
    random.Random(seed).shuffle(prompts)
    n_eval = max(1, int(len(prompts) * eval_share))
    return prompts[n_eval:], prompts[:n_eval]


def split_prompts(prompts: list[str], eval_share: float, seed: int) -> tuple[list[str], list[str]]:
    """A user's prompts split into (training, evaluation) at random with a fixed seed."""
    order = list(prompts)
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, int(len(order) * eval_share)), len(order) - 1) if len(order) > 1 else 0
    return order[n_eval:], (order[:n_eval] or order[:1])
