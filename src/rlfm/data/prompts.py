"""Prompts for RL fine-tuning and evaluation.

``--prompts`` (of ``rlfm ppo`` and of the reward stage's built-in task — one reader for both) is
a JSONL / JSON / Parquet file or a saved ``datasets`` directory whose rows have either ``prompt``
(a string) or ``messages`` (a list of ``{role, content}`` ending with a user turn; rendered with
the tokenizer's chat template — or rlfm's default template — with the generation prompt
appended), or a ``.txt`` file with one prompt per line (``\\n`` in a line stands for a line
break). Any other fields are ignored, so a preference or SFT file can serve. A repeated prompt
is sampled that much more often in training.

Splits (:func:`split_prompts`): a fixed share of the distinct prompts, rounded down but at least
one and never all of them, is held out at random with a fixed seed; a held-out prompt never
appears in training.

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


def _prompt_of(where: str, row: Any, tokenizer: PreTrainedTokenizerBase | None) -> str:
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
        if tokenizer is None:
            raise DataError(f"{where}: `messages` rows need a model's tokenizer to render them")
        return tokenizer.apply_chat_template(
            messages,
            chat_template=chat_template_of(tokenizer),
            tokenize=False,
            add_generation_prompt=True,
        )
    fields = ", ".join(sorted(row)) or "none"
    raise DataError(f"{where}: no `prompt` string or `messages` list (fields: {fields})")


def load_prompts(path: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> list[str]:
    """The prompts of a file or saved dataset (see the module docstring); rows with
    ``messages`` need the ``tokenizer`` whose chat template renders them."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (expected JSONL/Parquet prompts)")
    if path.is_file() and path.suffix.lower() == ".txt":
        lines = read_text(path).split("\n")
        prompts = [line.replace("\\n", "\n") for line in lines if line.strip()]
    else:
        prompts = [_prompt_of(r.where, r.value, tokenizer) for r in _rows(path)]
    if len(set(prompts)) < 2:
        raise DataError(f"{path}: needs at least 2 different prompts, found {len(set(prompts))}")
    return prompts


def split_prompts(
    prompts: list[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Prompts split into (training, held-out) at random with a fixed seed: ⌊n·val_fraction⌋ of
    the n distinct prompts held out (at least 1, at most n − 1), each once; training keeps
    every other row, repeats included."""
    order = list(prompts)
    random.Random(seed).shuffle(order)
    distinct = list(dict.fromkeys(order))
    held = distinct[: min(max(1, int(len(distinct) * val_fraction)), len(distinct) - 1)]
    kept = set(held)
    return [p for p in order if p not in kept], held


def builtin_prompts(val_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """(training, held-out) prompts of the built-in task: the dialogue contexts of the held-out
    plays, as the SFT stage lays them out."""
    from rlfm.data.sft import builtin_dialogue

    _, val, _ = builtin_dialogue()
    return split_prompts(sorted({r.demo.prompt for r in val}), val_fraction, seed)
