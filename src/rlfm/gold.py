"""The built-in task's gold labeler: the text rule of data/labelers.py plus its fluency term,
which needs a language model.

    fluency(x, y) = clip( ℓ(y | x) − ℓ_ref,  FLUENCY_RANGE )
    ℓ(y | x)      = (1/|y|) Σ_t log p_LM(y_t | x, y_<t)      (mean log-probability per token)

p_LM is a fixed model that never saw the task's rewards: the pipeline's pre-trained model (or
your own base model). ℓ_ref is the mean ℓ of the SFT policy's own replies, measured once when
the labeler is made (:func:`calibrate`), so an ordinary SFT reply scores about 0, garbled text
("Vott me") scores below, and the ceiling keeps a policy from buying gold with text that is
merely very predictable. An empty reply gets the floor.

A labeler is saved as ``gold.json`` — ``{"model": <the LM's directory>, "reference_logprob":
ℓ_ref, "reference_replies": n}`` — so every stage that judges with it (the simulated labelers,
the reward model's report, PPO's evaluation, `rlfm overopt`, `rlfm eval safety`) judges alike.
Without a file the gold labeler is the text rule alone (fluency 0).

Scores are memoised per (prompt, reply): the simulated labelers ask for one item at a time, and
the replies they judge were scored in one batch before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from rlfm.data.labelers import FLUENCY_RANGE, GoldScore, gold_components
from rlfm.errors import DataError


class GoldLabeler:
    """gold(x, y) with the fluency term of a language model (or without, when ``model`` is
    None). Call it as a :data:`rlfm.data.labelers.GoldFn`: ``gold(prompt, completions)``."""

    def __init__(
        self,
        model: nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        reference_logprob: float = 0.0,
        *,
        model_path: str = "",
        reference_replies: int = 0,
        batch_size: int = 64,
        max_prompt_tokens: int = 96,
    ) -> None:
        self.model = model.eval() if model is not None else None
        self.tokenizer = tokenizer
        self.reference_logprob = reference_logprob
        self.model_path = model_path
        self.reference_replies = reference_replies
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self._logprob: dict[tuple[str, str], float] = {}

    @property
    def describe(self) -> str:
        """One line saying what judges."""
        if self.model is None:
            return "gold labeler: the text rule (courtesy, relevance, length, repetition, form)"
        return (
            f"gold labeler: the text rule + fluency under {self.model_path} (reference "
            f"{self.reference_logprob:.3f} nats/token over {self.reference_replies} SFT replies)"
        )

    # ------------------------------------------------------------------ the model's part
    @torch.no_grad()
    def logprobs(self, prompts: Sequence[str], replies: Sequence[str]) -> list[float]:
        """ℓ(y | x) of each reply (NaN for an empty one; needs the model)."""
        assert self.model is not None and self.tokenizer is not None, "no fluency model"
        keys = list(zip(prompts, replies, strict=True))
        todo = list(dict.fromkeys(k for k in keys if k not in self._logprob))
        for i in range(0, len(todo), self.batch_size):
            part = todo[i : i + self.batch_size]
            self._logprob.update(zip(part, self._batch_logprobs(part)))
        return [self._logprob[k] for k in keys]

    def _batch_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        tok, model = self.tokenizer, self.model
        assert tok is not None and model is not None
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        context = getattr(model.config, "n_positions", None) or getattr(
            model.config, "max_position_embeddings", None
        )
        rows, lengths = [], []
        for prompt, reply in pairs:
            x = tok(prompt, add_special_tokens=False)["input_ids"][-self.max_prompt_tokens :]
            y = tok(reply, add_special_tokens=False)["input_ids"] if reply.strip() else []
            if context is not None:  # the context holds the reply, then as much of x as fits
                y = y[: context - 1]
                x = x[len(x) - min(len(x), context - len(y)) :]
            rows.append((x or [start]) + y)
            lengths.append(len(y))
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r)
            mask[b, : len(r)] = 1
        device = next(model.parameters()).device
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None].to(device))[..., 0]
        out = []
        for b, (r, n) in enumerate(zip(rows, lengths)):
            out.append(float(logp[b, len(r) - 1 - n : len(r) - 1].mean()) if n else math.nan)
        return out

    def fluency(self, prompts: Sequence[str], replies: Sequence[str]) -> list[float]:
        """The fluency term of each reply (0 without a model)."""
        if self.model is None:
            return [0.0] * len(replies)
        lo, hi = FLUENCY_RANGE
        return [
            lo if math.isnan(lp) else min(max(lp - self.reference_logprob, lo), hi)
            for lp in self.logprobs(prompts, replies)
        ]

    # ------------------------------------------------------------------ the whole rule
    def components(self, prompts: Sequence[str], replies: Sequence[str]) -> list[GoldScore]:
        """The gold rule, part by part, for each (prompt, reply)."""
        flu = self.fluency(prompts, replies)
        return [gold_components(p, r, f) for p, r, f in zip(prompts, replies, flu)]

    def scores(self, prompts: Sequence[str], replies: Sequence[str]) -> list[float]:
        """gold(x, y) for each (prompt, reply)."""
        return [c.total for c in self.components(prompts, replies)]

    def __call__(self, prompt: str, completions: Sequence[str]) -> list[float]:
        return self.scores([prompt] * len(completions), completions)

    # ------------------------------------------------------------------ gold.json
    def save(self, path: str | Path) -> Path:
        """Write gold.json (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        data = {
            "model": self.model_path,
            "reference_logprob": self.reference_logprob,
            "reference_replies": self.reference_replies,
        }
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path


def _load_lm(model_dir: str | Path, device: torch.device | str) -> tuple[nn.Module, object]:
    from rlfm.checkpoint import resolve_model_dir
    from rlfm.models.adapters import fit_vocabulary, load_model
    from rlfm.models.heads import load_model_tokenizer

    path = resolve_model_dir(model_dir)
    tokenizer = load_model_tokenizer(path)
    model = load_model(path, merge=True)
    fit_vocabulary(model, tokenizer, what="gold labeler's language model")
    return model.to(device).float().eval().requires_grad_(False), tokenizer


def calibrate(
    model_dir: str | Path,
    prompts: Sequence[str],
    replies: Sequence[str],
    device: torch.device | str = "cpu",
) -> GoldLabeler:
    """A gold labeler whose fluency is measured by the LM in ``model_dir`` relative to
    ``replies`` (the SFT policy's replies to ``prompts``: ℓ_ref is their mean ℓ)."""
    model, tokenizer = _load_lm(model_dir, device)
    gold = GoldLabeler(model, tokenizer, model_path=str(model_dir))  # type: ignore[arg-type]
    lps = [lp for lp in gold.logprobs(prompts, replies) if not math.isnan(lp)]
    if not lps:
        raise DataError("gold labeler: every SFT reply to calibrate fluency on is empty")
    gold.reference_logprob = sum(lps) / len(lps)
    gold.reference_replies = len(lps)
    return gold


def load_gold(path: str | Path | None, device: torch.device | str = "cpu") -> GoldLabeler:
    """The gold labeler saved in ``path`` (gold.json), or the text rule alone for None."""
    if path is None:
        return GoldLabeler()
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model_dir, ref = data["model"], float(data["reference_logprob"])
    except FileNotFoundError:
        raise DataError(
            f"gold: {path} does not exist (the pipeline writes it: labels/gold.json)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"gold: {path} is not a gold labeler file ({e}); expected "
            '{"model": DIR, "reference_logprob": number}'
        ) from None
    model, tokenizer = _load_lm(model_dir, device)
    return GoldLabeler(
        model,
        tokenizer,  # type: ignore[arg-type]
        ref,
        model_path=str(model_dir),
        reference_replies=int(data.get("reference_replies", 0)),
    )
