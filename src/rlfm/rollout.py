"""Sampling from a causal language model with a KV cache.

Prompts are left-padded so every row's next token sits in the last column; each row stops at
its first EOS and is padded with PAD after it. Log-probabilities are those of the distribution
actually sampled from (logits divided by the temperature, then top-k / top-p filtering), so a
learner that recomputes them with the same temperature gets the same numbers.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase


@dataclass
class Samples:
    """A batch of prompts and sampled responses (plain tensors on the model's device)."""

    prompt_ids: torch.Tensor  # (B, P) left-padded prompt tokens
    prompt_mask: torch.Tensor  # (B, P) 1 for real prompt tokens, 0 for left padding
    response_ids: torch.Tensor  # (B, R) sampled tokens, PAD after the first EOS
    response_mask: torch.Tensor  # (B, R) 1 for real response tokens (EOS included), 0 after
    logprobs: torch.Tensor  # (B, R) log-prob of each sampled token under the sampling policy
    ended: torch.Tensor  # (B,) True where the response ended with EOS

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt + response as one sequence: ids, mask, position ids. (B, P + R) each."""
        ids = torch.cat([self.prompt_ids, self.response_ids], dim=1)
        mask = torch.cat([self.prompt_mask, self.response_mask], dim=1)
        return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    def select(self, rows: torch.Tensor | slice) -> Samples:
        """The rows ``rows`` of this batch."""
        return Samples(**{k: getattr(self, k)[rows] for k in self.__dataclass_fields__})


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    device: torch.device | str = "cpu",
    max_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded token ids and mask for ``prompts`` (kept to their last ``max_length`` tokens).

    An empty prompt becomes a lone BOS/EOS token so every row has at least one token.
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    rows = []
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=False)["input_ids"] if p else []
        ids = ids or [start]
        rows.append(ids[-max_length:] if max_length else ids)
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r) :] = torch.tensor(r)
        mask[i, P - len(r) :] = 1
    return ids.to(device), mask.to(device)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus top-p set to -inf. (B, V) -> (B, V).

    ``top_k=0`` and ``top_p=1`` leave the distribution untouched (the default for RL).
    """
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def _forward_args(model: nn.Module) -> tuple[str, dict]:
    """The model's name for the KV-cache argument (``cache`` in recent transformers,
    ``past_key_values`` before), and ``logits_to_keep=1`` where supported (the prompt pass then
    computes vocabulary logits for the last position only)."""
    inner = getattr(model, "module", model)
    params = inspect.signature(inner.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    return cache_arg, ({"logits_to_keep": 1} if "logits_to_keep" in params else {})


def _cache(out: Any) -> Any:
    return out["cache"] if "cache" in out else out["past_key_values"]


@torch.no_grad()
def draw(
    logits: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from softmax(filter(logits / T)) and its log-probability; the argmax
    when temperature = 0. (B, V) float32 -> (B,), (B,)."""
    if temperature <= 0:
        tok = logits.argmax(-1)
        return tok, logits.gather(-1, tok[:, None]).squeeze(-1) - logits.logsumexp(-1)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    # inverse-CDF sampling: one uniform number per row (multinomial draws one per token);
    # u is scaled by the row's total, so float32 rounding in the sum cannot bias the tail,
    # and kept below it, so a token of probability 0 is never drawn
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(logits.shape[0], 1, generator=generator, device=logits.device) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    tok = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
    return tok, probs.gather(-1, tok[:, None]).squeeze(-1).log()


def sample(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Samples:
    """Sample up to ``max_new_tokens`` per row; rows stop at EOS. Greedy when temperature=0."""
    B, P = prompt_ids.shape  # batch, prompt length
    device = prompt_ids.device
    mask = prompt_mask.clone()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache_arg, extra = _forward_args(model)
    out = model(
        input_ids=prompt_ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra
    )
    cache, logits = _cache(out), out.logits[:, -1, :]
    next_pos = positions[:, -1:] + 1
    tokens, logps = [], []
    done = torch.zeros(B, dtype=torch.bool, device=device)
    ended = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        tok, tok_logp = draw(logits.float(), temperature, top_k, top_p, generator)
        tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
        tokens.append(tok)
        logps.append(torch.where(done, torch.zeros_like(tok_logp), tok_logp))
        ended |= ~done & (tok == eos_token_id)
        done |= tok == eos_token_id
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], dim=1)
        out = model(
            input_ids=tok[:, None],
            attention_mask=mask,
            position_ids=next_pos,
            use_cache=True,
            **{cache_arg: cache},
        )
        cache, logits = _cache(out), out.logits[:, -1, :]
        next_pos = next_pos + 1
    response = torch.stack(tokens, dim=1)  # (B, R)
    # a token is real up to and including the row's first EOS
    after_eos = (response == eos_token_id).long().cumsum(-1) - (response == eos_token_id).long()
    response_mask = (after_eos == 0).long()
    response = response.masked_fill(response_mask == 0, pad_token_id)
    return Samples(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response,
        response_mask=response_mask,
        logprobs=torch.stack(logps, dim=1) * response_mask,
        ended=ended,
    )


def decode_responses(tokenizer: PreTrainedTokenizerBase, samples: Samples) -> list[str]:
    """The response texts (special tokens dropped)."""
    return [
        tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=True)
        for ids, m in zip(samples.response_ids, samples.response_mask)
    ]
