"""Preference data: pairs and K-way rankings, read from files, checked, tokenized, batched.

**Formats** (read by :mod:`rlfm.data.rows`). A JSONL file (one object per line), a JSON file
(a list of objects, one object, or JSON lines), a Parquet file, a saved `datasets` directory
(the "train" split of a DatasetDict, or its only split), or a directory of such files (found
recursively, hidden ones left out). Each row is one of:

- a **pair** ``{"prompt": ..., "chosen": ..., "rejected": ...}`` — TRL's preference format and
  that of most public sets. ``prompt`` may be missing (Anthropic HH style: the conversation is
  repeated in both): the prompt is then recovered as the longest shared prefix, cut back to a
  word boundary (before the whitespace that starts the first differing word, so each side keeps
  its first word whole and tokenizes as it would in the full text). An optional ``margin``
  (a number) asks for a reward gap (losses/preference.py).
- a **ranking** ``{"prompt": ..., "completions": [y_0, ..., y_{K-1}], "ranking": [...]}`` with
  ``ranking`` listing completion indices best → worst; an inner list groups tied completions
  (``[[2, 0], 1, 3]``: 2 and 0 tie for best). The export of the feedback web app writes this
  form. Optional: ``gold`` (K numbers, a reference score per completion, used for reports).
- either in **conversation** form: ``prompt`` (or ``messages``) a list of
  ``{"role", "content"}`` messages, and each completion / chosen / rejected a string, one
  assistant message, or a list of messages (for pairs without ``prompt``, ``chosen`` and
  ``rejected`` are whole conversations; their shared leading messages are the prompt).
  Conversations are rendered exactly as the SFT stage renders them (the tokenizer's chat
  template, or ``data.sft.DEFAULT_CHAT_TEMPLATE``): the prompt is the history with the
  generation prompt, a completion is what its reply adds (without the EOS text: the reward
  model appends the EOS token), so the reward model reads the text the policy writes.

**Checks** (before any training; DataError naming the file and the 1-based line or row): a row
that is not an object, missing fields, a field of the wrong type, fewer than 2 completions, a
ranking that is not a permutation of 0..K−1 (ties allowed), a ranking that ties everything,
identical chosen and rejected (or identical completions ranked differently), text that is not
UTF-8 (bytes in the file, or a lone surrogate escape in JSON).

**Batches** (:func:`collate_rankings`; batches of similar length come from
``data.sft.BucketSampler``): a ranking is one batch element and one row,
``[prompt | completion 1 + EOS | ... | completion K + EOS]`` (an empty prompt is a lone BOS/EOS,
as in ``rollout.encode_prompts``), with segment ids and positions that make each completion
see only the prompt and itself (models/heads.py). The reward model so runs the prompt once and
each completion once — P + Σ|y_i| tokens per ranking, instead of 2·C(K,2)·(P + |y|) for the
expanded pairs — with no padding between the completions of a ranking.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from rlfm.data.rows import (
    Row,
    file_rows,
    is_saved_dataset,
    json_kind,
    row_files,
    saved_dataset_rows,
)
from rlfm.errors import DataError
from rlfm.losses.preference import pair_mask

RankingSpec = Sequence[int | Sequence[int]]
"""A ranking as written in data files: best → worst, inner lists group tied completions."""


def ranking_levels(ranking: RankingSpec, k: int) -> list[int]:
    """The level of each of ``k`` completions in ``ranking`` (0 = best; tied ones share a level).

    ``ranking_levels([[2, 0], 1, 3], 4) == [0, 1, 0, 2]``. Raises ValueError, saying why, unless
    the ranking (flattened) is a permutation of 0..k−1 with at least two levels.
    """
    if isinstance(ranking, str | bytes) or not isinstance(ranking, Sequence):
        raise ValueError(f"ranking must be a list, got {type(ranking).__name__}")
    levels: list[int | None] = [None] * k
    for level, item in enumerate(ranking):
        group = [item] if not isinstance(item, Sequence) or isinstance(item, str) else item
        if not group:
            raise ValueError(f"ranking item {level + 1} is an empty list of tied completions")
        for i in group:
            if isinstance(i, bool) or not isinstance(i, int):
                raise ValueError(f"ranking holds {i!r}, expected completion indices (integers)")
            if not 0 <= i < k:
                raise ValueError(
                    f"ranking holds index {i}, outside 0..{k - 1} for {k} completions; "
                    f"it must be a permutation of 0..{k - 1}"
                )
            if levels[i] is not None:
                raise ValueError(
                    f"ranking holds index {i} twice; it must be a permutation of 0..{k - 1}"
                )
            levels[i] = level
    missing = [i for i, v in enumerate(levels) if v is None]
    if missing:
        raise ValueError(
            f"ranking leaves out completion(s) {', '.join(map(str, missing))}; it must be a "
            f"permutation of 0..{k - 1}"
        )
    if len(ranking) < 2:
        raise ValueError("ranking ties every completion, so it makes no comparison")
    return [int(v) for v in levels]  # type: ignore[arg-type]


def levels_to_ranking(levels: Sequence[int]) -> list[int | list[int]]:
    """The inverse of :func:`ranking_levels`: ``[0, 1, 0, 2] -> [[0, 2], 1, 3]``."""
    groups: dict[int, list[int]] = {}
    for i, level in enumerate(levels):
        groups.setdefault(level, []).append(i)
    return [g[0] if len(g) == 1 else g for _, g in sorted(groups.items())]


def ranking_pairs(ranking: RankingSpec, k: int | None = None) -> list[tuple[int, int]]:
    """All (winner, loser) pairs of a ranking: C(K,2) without ties, fewer with ties.

    ``ranking_pairs([2, 0, 1]) == [(2, 0), (2, 1), (0, 1)]``;
    ``ranking_pairs([[2, 0], 1]) == [(2, 1), (0, 1)]`` (2 and 0 tie: no pair between them).
    ``k`` defaults to the number of indices in the ranking.
    """
    if k is None:
        k = sum(len(x) if isinstance(x, Sequence) else 1 for x in ranking)
    levels = ranking_levels(ranking, k)
    order = sorted(range(k), key=lambda i: (levels[i], _position(ranking, i)))
    return [(w, lo) for a, w in enumerate(order) for lo in order[a + 1 :] if levels[w] < levels[lo]]


def _position(ranking: RankingSpec, i: int) -> int:
    """Where index i is written in the ranking (keeps pairs in reading order)."""
    flat = [j for x in ranking for j in (x if isinstance(x, Sequence) else [x])]
    return flat.index(i)


@dataclass(frozen=True)
class Ranking:
    """One prompt and K ≥ 2 completions ordered by a labeler (a pair is a ranking of two)."""

    prompt: str
    """The prompt text (may be empty)."""
    completions: tuple[str, ...]
    """The K completion texts, in file order."""
    levels: tuple[int, ...]
    """Level of each completion: 0 = best; tied completions share a level."""
    source: str = ""
    """Where it came from: ``"<file>:<line or row>"``."""
    margin: float = 0.0
    """Margin m of the Bradley–Terry loss for this element."""
    gold: tuple[float, ...] | None = None
    """Optional reference score per completion (the built-in task's gold labeler)."""

    @property
    def k(self) -> int:
        return len(self.completions)

    @property
    def ranking(self) -> list[int | list[int]]:
        """The ranking in file form (best → worst, ties as inner lists)."""
        return levels_to_ranking(self.levels)

    def pairs(self) -> list[tuple[int, int]]:
        """All (winner, loser) index pairs (tied completions give none)."""
        k = self.k
        return [(i, j) for i in range(k) for j in range(k) if self.levels[i] < self.levels[j]]


# ---------------------------------------------------------------------------- reading


def load_preferences(
    path: str | Path, tokenizer: PreTrainedTokenizerBase | None = None
) -> list[Ranking]:
    """Every row of a preference file or directory as a :class:`Ranking` (see module doc).

    ``tokenizer`` renders rows in conversation form (its chat template, or the SFT default);
    such rows without a tokenizer raise DataError.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(
            f"{root}: no such file or directory; expected a .jsonl, .json or .parquet file of "
            "preference rows, or a saved `datasets` directory"
        )
    if root.is_dir() and is_saved_dataset(root):
        train, _ = saved_dataset_rows(root)
        rows = _rankings(train, root.name, tokenizer)
    elif root.is_dir():
        files = row_files(root)
        if not files:
            raise DataError(f"{root}: directory holds no .jsonl, .json or .parquet file")
        rows = [r for f in files for r in _load_file(f, tokenizer)]
    else:
        rows = _load_file(root, tokenizer)
    if not rows:
        raise DataError(f"{root}: holds no preference rows")
    return rows


def _load_file(file: Path, tokenizer: PreTrainedTokenizerBase | None) -> list[Ranking]:
    """Rankings of one .jsonl, .json or .parquet file; DataError when it holds no rows."""
    rows = file_rows(file)  # DataError naming the line for bytes that are not UTF-8
    if not rows:
        raise DataError(f"{file}: file is empty; expected preference rows")
    return _rankings(rows, file.name, tokenizer)


def _rankings(
    rows: list[Row], name: str, tokenizer: PreTrainedTokenizerBase | None
) -> list[Ranking]:
    """Rows as rankings whose source is ``"<name>:<line or row>"``."""
    return [parse_row(r.value, r.where, f"{name}:{r.number}", tokenizer) for r in rows]


# ---------------------------------------------------------------------------- one row


def parse_row(
    row: Any,
    where: str,
    source: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Ranking:
    """Check one row and return it as a Ranking; otherwise DataError prefixed with ``where``
    (e.g. ``"prefs.jsonl: line 3"``). ``tokenizer`` renders conversations."""
    try:
        return _parse_row(row, source if source is not None else where, tokenizer)
    except _RowError as e:
        raise DataError(f"{where}: {e}") from None


class _RowError(ValueError):
    """A problem with one row (the caller adds the file and row)."""


def _parse_row(row: Any, source: str, tokenizer: PreTrainedTokenizerBase | None) -> Ranking:
    if not isinstance(row, dict):
        raise _RowError(f"is a JSON {json_kind(row)}, expected an object")
    keys = set(row)
    if keys & {"completions", "ranking"}:
        _require(row, ("completions", "ranking"), "a ranking row")
        return _parse_ranking(row, source, tokenizer)
    if keys & {"chosen", "rejected"}:
        _require(row, ("chosen", "rejected"), "a pair row")
        return _parse_pair(row, source, tokenizer)
    fields = ", ".join(repr(k) for k in row) or "none"
    raise _RowError(
        f"missing fields: expected 'chosen' and 'rejected' (a pair, with an optional 'prompt') "
        f"or 'prompt', 'completions' and 'ranking' (a ranking); the row has {fields}"
    )


def _require(row: dict, names: tuple[str, ...], what: str) -> None:
    null = [n for n in names if n in row and row[n] is None]
    if null:
        raise _RowError(f"field {', '.join(map(repr, null))} is null; {what} needs a value")
    missing = [n for n in names if n not in row]
    if missing:
        have = ", ".join(repr(k) for k in row)
        raise _RowError(f"missing field {', '.join(map(repr, missing))} for {what} (has {have})")


def _parse_pair(row: dict, source: str, tokenizer: PreTrainedTokenizerBase | None) -> Ranking:
    chosen, rejected = row["chosen"], row["rejected"]
    prompt_value = row.get("prompt", row.get("messages"))
    if prompt_value is None:
        if _is_conversation(chosen) and _is_conversation(rejected):
            prompt, chosen_text, rejected_text = _split_conversations(chosen, rejected, tokenizer)
        else:
            c = _text(chosen, "'chosen'")
            r = _text(rejected, "'rejected'")
            if c == r:
                raise _RowError("'chosen' and 'rejected' are identical")
            cut = shared_prefix_cut(c, r)
            prompt, chosen_text, rejected_text = c[:cut], c[cut:], r[cut:]
    else:
        prompt, (chosen_text, rejected_text) = _prompt_and_completions(
            prompt_value, [chosen, rejected], ["'chosen'", "'rejected'"], tokenizer
        )
    if chosen_text == rejected_text:
        raise _RowError("'chosen' and 'rejected' are identical")
    return Ranking(
        prompt=prompt,
        completions=(chosen_text, rejected_text),
        levels=(0, 1),
        source=source,
        margin=_margin(row),
    )


def _parse_ranking(row: dict, source: str, tokenizer: PreTrainedTokenizerBase | None) -> Ranking:
    if "prompt" not in row and "messages" not in row:
        raise _RowError("missing field 'prompt' for a ranking row")
    completions = row["completions"]
    if not isinstance(completions, list):
        raise _RowError(f"'completions' is a JSON {json_kind(completions)}, expected a list")
    if len(completions) < 2:
        raise _RowError(f"'completions' has {len(completions)} item(s); a ranking needs at least 2")
    prompt, texts = _prompt_and_completions(
        row["prompt"] if "prompt" in row else row["messages"],
        completions,
        [f"completion {i}" for i in range(len(completions))],
        tokenizer,
    )
    try:
        levels = ranking_levels(row["ranking"], len(texts))
    except ValueError as e:
        raise _RowError(f"'ranking' {json.dumps(row['ranking'])}: {e}") from None
    seen: dict[str, int] = {}
    for i, t in enumerate(texts):
        j = seen.setdefault(t, i)
        if j != i and levels[i] != levels[j]:
            raise _RowError(f"completions {j} and {i} are identical but ranked differently")
    gold = row.get("gold")
    if gold is not None:
        ok = isinstance(gold, list) and len(gold) == len(texts)
        if not (ok and all(_is_number(g) for g in gold)):
            raise _RowError(f"'gold' must be a list of {len(texts)} numbers")
        gold = tuple(float(g) for g in gold)
    return Ranking(prompt, tuple(texts), tuple(levels), source, _margin(row), gold)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _margin(row: dict) -> float:
    m = row.get("margin")
    if m is None:
        return 0.0
    if not _is_number(m):
        raise _RowError(f"'margin' is {m!r}, expected a finite number")
    return float(m)


def _text(value: Any, name: str) -> str:
    """``value`` as a string that is valid UTF-8 (bytes are decoded), else _RowError."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _RowError(
                f"{name} is not valid UTF-8 (byte 0x{value[e.start]:02x} at offset {e.start})"
            ) from None
    if not isinstance(value, str):
        raise _RowError(f"{name} is a JSON {json_kind(value)}, expected a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _RowError(
            f"{name} is not valid UTF-8 text (character {e.start} is a lone surrogate "
            f"{value[e.start]!r}); re-encode the source data as UTF-8"
        ) from None
    return value


# ---------------------------------------------------------------------------- conversations


def _is_message(x: Any) -> bool:
    return isinstance(x, dict) and "role" in x and "content" in x


def _is_conversation(x: Any) -> bool:
    return isinstance(x, list) and len(x) > 0 and all(_is_message(m) for m in x)


def _messages(value: list, name: str) -> list[dict[str, str]]:
    return [
        {
            "role": _text(m["role"], f"{name} message {i} role"),
            "content": _text(m["content"], f"{name} message {i} content"),
        }
        for i, m in enumerate(value, start=1)
    ]


def _as_messages(value: Any, name: str) -> list[dict[str, str]]:
    """A completion as assistant message(s): a string, one message, or a list of messages."""
    if isinstance(value, str | bytes):
        return [{"role": "assistant", "content": _text(value, name)}]
    if _is_message(value):
        return _messages([value], name)
    if _is_conversation(value):
        return _messages(value, name)
    raise _RowError(
        f"{name} is a JSON {json_kind(value)}, expected a string, a message or messages"
    )


def _prompt_and_completions(
    prompt_value: Any,
    completions: list,
    names: list[str],
    tokenizer: PreTrainedTokenizerBase | None,
) -> tuple[str, list[str]]:
    """Texts of a prompt (string or conversation) and its completions."""
    if isinstance(prompt_value, str | bytes):
        prompt = _text(prompt_value, "'prompt'")
        texts = []
        for c, name in zip(completions, names):
            if isinstance(c, str | bytes):
                texts.append(_text(c, name))
            else:  # message(s) after a plain-text prompt: their contents
                texts.append("\n".join(m["content"] for m in _as_messages(c, name)))
        return prompt, texts
    if not _is_conversation(prompt_value):
        raise _RowError(
            f"'prompt' is a JSON {json_kind(prompt_value)}, expected a string or a list of "
            '{"role": ..., "content": ...} messages'
        )
    history = _messages(prompt_value, "'prompt'")
    rendered = [
        render_chat(history, _as_messages(c, name), tokenizer)
        for c, name in zip(completions, names)
    ]
    return rendered[0][0], [r[1] for r in rendered]


def _split_conversations(
    chosen: list, rejected: list, tokenizer: PreTrainedTokenizerBase | None
) -> tuple[str, str, str]:
    """Prompt = the messages both conversations share (all but at least the last of each)."""
    a, b = _messages(chosen, "'chosen'"), _messages(rejected, "'rejected'")
    n = 0
    limit = min(len(a), len(b)) - 1
    while n < limit and a[n] == b[n]:
        n += 1
    if a == b:
        raise _RowError("'chosen' and 'rejected' are identical")
    prompt, chosen_text = render_chat(a[:n], a[n:], tokenizer)
    _, rejected_text = render_chat(a[:n], b[n:], tokenizer)
    return prompt, chosen_text, rejected_text


def render_chat(
    history: list[dict[str, str]],
    reply: list[dict[str, str]],
    tokenizer: PreTrainedTokenizerBase | None,
) -> tuple[str, str]:
    """(prompt, completion) texts of a conversation, rendered as the SFT stage renders it
    (the tokenizer's chat template, or ``data.sft.DEFAULT_CHAT_TEMPLATE``): the prompt is the
    history with the generation prompt, the completion what the reply adds, without a final
    EOS text (the reward model appends the EOS token)."""
    if tokenizer is None:
        raise _RowError("a conversation row needs a tokenizer (its chat template) to be read")
    from rlfm.data.sft import chat_template_of

    template = chat_template_of(tokenizer)

    def render(msgs: list[dict[str, str]], gen: bool) -> str:
        if not msgs:
            return ""
        return tokenizer.apply_chat_template(
            msgs, chat_template=template, tokenize=False, add_generation_prompt=gen
        )

    prompt = render(history, True)
    full = render(history + reply, False)
    if not full.startswith(prompt):
        raise _RowError(
            "the chat template does not render the reply after the prompt (the rendering of "
            "the prompt is not a prefix of the whole), so the completion cannot be found"
        )
    completion = full[len(prompt) :]
    eos = tokenizer.eos_token
    if eos and completion.endswith(eos):
        completion = completion[: -len(eos)]
    return prompt, completion


def shared_prefix_cut(a: str, b: str) -> int:
    """Where to split two different texts into a shared prompt and two completions.

    The longest common prefix, cut back to a word boundary: to the start of the whitespace
    before the first word that differs (so ``"Q: hi A: yes"`` / ``"Q: hi A: no"`` split as
    ``"Q: hi A:"`` + ``" yes"`` / ``" no"``), or 0 when there is no such whitespace. Both
    completions are then non-empty unless one text is the other's prefix.
    """
    n = 0
    limit = min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    i = n  # a[:n] == b[:n]
    while i > 0 and not a[i - 1].isspace():
        i -= 1  # back to the start of the differing word
    while i > 0 and a[i - 1].isspace():
        i -= 1  # and before the whitespace that precedes it
    return i


# ---------------------------------------------------------------------------- splitting


def split_rankings(
    rankings: Sequence[Ranking], val_fraction: float, seed: int
) -> tuple[list[Ranking], list[Ranking]]:
    """(train, val) split by prompt, so no prompt is in both (at least one prompt each)."""
    prompts = sorted({r.prompt for r in rankings})
    if len(prompts) < 2:
        raise DataError(
            "preference data: need rankings of at least 2 different prompts to hold some out "
            "for validation (or pass --val-data)"
        )
    n_val = min(max(1, round(len(prompts) * val_fraction)), len(prompts) - 1)
    val_prompts = set(random.Random(seed).sample(prompts, n_val))
    train = [r for r in rankings if r.prompt not in val_prompts]
    val = [r for r in rankings if r.prompt in val_prompts]
    return train, val


def write_rankings(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rankings rows as JSONL atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------- tokens and batches


@dataclass(frozen=True)
class EncodedRanking:
    """A ranking as token ids."""

    prompt_ids: list[int]
    """Prompt tokens (a lone BOS/EOS for an empty prompt)."""
    completion_ids: list[list[int]]
    """Each completion's tokens followed by EOS."""
    levels: list[int]
    """Level of each completion (0 = best)."""
    margin: float = 0.0

    @property
    def n_tokens(self) -> int:
        """Tokens the reward model runs: the prompt once, each completion once."""
        return len(self.prompt_ids) + sum(len(c) for c in self.completion_ids)


def encode_rankings(
    tokenizer: PreTrainedTokenizerBase, rankings: Sequence[Ranking], max_length: int
) -> list[EncodedRanking]:
    """Tokenize rankings for :func:`collate_rankings`.

    Every prompt + completion + EOS fits ``max_length`` tokens: a completion longer than
    ``max(max_length // 2, max_length − len(prompt))`` tokens is cut (keeping its start), then
    the prompt keeps only its last tokens.
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    prompts = sorted({r.prompt for r in rankings if r.prompt})
    prompt_ids = dict(zip(prompts, _tokenize(tokenizer, prompts)))
    flat = [c for r in rankings for c in r.completions]
    completion_ids = iter(_tokenize(tokenizer, flat))
    out = []
    for r in rankings:
        p = prompt_ids.get(r.prompt) or [start]
        comps = [next(completion_ids) + [eos] for _ in r.completions]
        room = max(max_length // 2, max_length - len(p))
        comps = [c[:room] for c in comps]
        keep = max_length - max(len(c) for c in comps)  # ≥ 1, as room ≤ max_length − 1
        p = p[max(0, len(p) - keep) :]
        out.append(EncodedRanking(p, comps, list(r.levels), r.margin))
    return out


def _tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], chunk: int = 1024
) -> list[list[int]]:
    ids: list[list[int]] = []
    for i in range(0, len(texts), chunk):
        part = texts[i : i + chunk]
        ids.extend(tokenizer(part, add_special_tokens=False)["input_ids"] if part else [])
    return ids


@dataclass
class RankingBatch:
    """B rankings holding N = Σ K_b completions, one row per ranking:
    ``[prompt | completion 1 | ... | completion K | padding]`` (models/heads.py)."""

    input_ids: torch.Tensor  # (B, T) prompt then completions (each + EOS), PAD after
    attention_mask: torch.Tensor  # (B, T) 1 for real tokens
    segment_ids: torch.Tensor  # (B, T) 0 prompt, i for completion i (1-based), −1 padding
    position_ids: torch.Tensor  # (B, T) prompt 0..P−1; each completion P, P+1, ...
    read_index: torch.Tensor  # (N, 2) (row, column) of each completion's last token (EOS)
    slot: torch.Tensor  # (N,) the completion's index within its ranking
    levels: torch.Tensor  # (B, K_max) level of each completion, −1 = padding
    margin: torch.Tensor  # (B,) margin of each ranking

    def to(self, device: torch.device | str) -> RankingBatch:
        return RankingBatch(*(t.to(device, non_blocking=True) for t in vars(self).values()))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of the reward model's forward."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "segment_ids": self.segment_ids,
            "position_ids": self.position_ids,
            "read_index": self.read_index,
        }

    def reward_matrix(self, rewards: torch.Tensor) -> torch.Tensor:
        """Scatter the (N,) completion rewards into the (B, K_max) layout of ``levels``
        (0 at padding), differentiably."""
        (N,) = rewards.shape
        out = torch.zeros(self.levels.shape, dtype=rewards.dtype, device=rewards.device)
        return out.index_put((self.read_index[:, 0], self.slot), rewards)

    @property
    def n_pairs(self) -> int:
        """Comparisons in the batch (pairs of completions at different levels)."""
        return int(pair_mask(self.levels).sum())


def collate_rankings(batch: Sequence[EncodedRanking], pad_token_id: int) -> RankingBatch:
    """Pack B encoded rankings into one :class:`RankingBatch`: each prompt and each completion
    appears once, and a row is only as long as its prompt plus its completions."""
    B = len(batch)
    T = max(r.n_tokens for r in batch)
    K = max(len(r.completion_ids) for r in batch)
    input_ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    segment_ids = torch.full((B, T), -1, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    levels = torch.full((B, K), -1, dtype=torch.long)
    read, slot = [], []
    for b, r in enumerate(batch):
        P = len(r.prompt_ids)
        row = [torch.tensor(r.prompt_ids)]
        seg = [torch.zeros(P, dtype=torch.long)]
        pos = [torch.arange(P)]
        end = P
        for i, c in enumerate(r.completion_ids):
            row.append(torch.tensor(c))
            seg.append(torch.full((len(c),), i + 1, dtype=torch.long))
            pos.append(torch.arange(P, P + len(c)))
            end += len(c)
            read.append((b, end - 1))
            slot.append(i)
        input_ids[b, :end] = torch.cat(row)
        segment_ids[b, :end] = torch.cat(seg)
        position_ids[b, :end] = torch.cat(pos)
        levels[b, : len(r.levels)] = torch.tensor(r.levels)
    return RankingBatch(
        input_ids=input_ids,
        attention_mask=(segment_ids >= 0).long(),
        segment_ids=segment_ids,
        position_ids=position_ids,
        read_index=torch.tensor(read, dtype=torch.long),
        slot=torch.tensor(slot, dtype=torch.long),
        levels=levels,
        margin=torch.tensor([r.margin for r in batch], dtype=torch.float32),
    )
