"""Sampling from a causal language model with a KV cache.

:func:`generate` is the one call every stage uses: prompt texts in; token ids, masks, log-probs
and response texts out. It decides the prompt budget once for everyone — a prompt keeps its
last ``context − max_new_tokens`` tokens (and at most ``max_prompt_tokens``), so a response
always has room for ``max_new_tokens`` — and counts the prompts it had to cut.
:func:`sample` is the tensor-level loop underneath.

Prompts are left-padded so every row's next token sits in the last column; each row stops at
its first EOS and is padded with PAD after it. Log-probabilities are those of the distribution
actually sampled from (logits divided by the temperature, then top-k / top-p filtering), so a
learner that recomputes them with the same temperature gets the same numbers.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicLayer

from rlfm.errors import ConfigError
from rlfm.models.linear import packed_for_inference


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

    def trimmed(self) -> Samples:
        """The same rows without the padding columns none of them needs: the prompt's leading
        columns that are padding in every row and the response's trailing ones. Responses keep
        their first ``R'`` columns, so per-token tensors of the batch line up with
        ``[:, :R']``."""
        P = self.prompt_mask.shape[1] - _leading_zero_columns(self.prompt_mask)
        R = self.response_mask.shape[1] - _leading_zero_columns(self.response_mask.flip(1))
        R = max(R, 1)
        return Samples(
            prompt_ids=self.prompt_ids[:, -P:] if P else self.prompt_ids[:, :0],
            prompt_mask=self.prompt_mask[:, -P:] if P else self.prompt_mask[:, :0],
            response_ids=self.response_ids[:, :R],
            response_mask=self.response_mask[:, :R],
            logprobs=self.logprobs[:, :R],
            ended=self.ended,
        )

    def lengths(self) -> torch.Tensor:
        """Real tokens of each row, prompt and response together. -> (B,)"""
        return self.prompt_mask.sum(1) + self.response_mask.sum(1)

    @staticmethod
    def cat(parts: Sequence[Samples], pad_token_id: int) -> Samples:
        """Batches one after the other: prompts padded on the left, responses on the right."""
        if len(parts) == 1:
            return parts[0]
        P = max(s.prompt_ids.shape[1] for s in parts)
        R = max(s.response_ids.shape[1] for s in parts)

        def pad(t: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
            extra = width - t.shape[1]
            return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=value)

        return Samples(
            prompt_ids=torch.cat([pad(s.prompt_ids, P, pad_token_id, True) for s in parts]),
            prompt_mask=torch.cat([pad(s.prompt_mask, P, 0, True) for s in parts]),
            response_ids=torch.cat([pad(s.response_ids, R, pad_token_id, False) for s in parts]),
            response_mask=torch.cat([pad(s.response_mask, R, 0, False) for s in parts]),
            logprobs=torch.cat([pad(s.logprobs, R, 0.0, False) for s in parts]),
            ended=torch.cat([s.ended for s in parts]),
        )


def _leading_zero_columns(mask: torch.Tensor) -> int:
    """How many of ``mask``'s first columns are 0 in every row."""
    used = mask.ne(0).any(0)
    return int(used.numel() if not bool(used.any()) else int(used.int().argmax()))


def length_grouped(
    lengths: torch.Tensor, size: int, generator: torch.Generator, group: int = 4
) -> list[torch.Tensor]:
    """Row indices of minibatches of ``size`` rows of similar ``lengths``: a random permutation
    cut into groups of ``group`` minibatches, each group sorted by length and cut into
    minibatches, the minibatches in random order (the last may be smaller when ``size`` does
    not divide the rows). With :meth:`Samples.trimmed` a minibatch then pays for its own
    longest row, not the rollout's."""
    n = lengths.shape[0]
    perm = torch.randperm(n, generator=generator)
    batches = []
    for start in range(0, n, size * group):
        rows = perm[start : start + size * group]
        rows = rows[torch.argsort(lengths[rows].cpu(), stable=True)]
        batches += list(rows.split(size))
    order = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in order]


@dataclass
class Generation:
    """What :func:`generate` returns."""

    samples: Samples  # token ids, masks and log-probs, (B, P) and (B, R)
    prompts: list[str]  # (B,) the prompt texts, as given
    texts: list[str]  # (B,) the response texts (special tokens dropped)
    prompts_cut: int  # prompts longer than the budget, cut to their last prompt_budget tokens
    prompt_budget: int  # tokens a prompt may keep


def model_positions(model: nn.Module) -> int | None:
    """The number of positions a model can attend over (None when its config does not say)."""
    config = getattr(getattr(model, "module", model), "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_budget(
    positions: int | None, max_new_tokens: int, max_prompt_tokens: int | None = None
) -> int:
    """Tokens a prompt may keep so that ``max_new_tokens`` still fit in ``positions``."""
    room = (positions - max_new_tokens) if positions else (max_prompt_tokens or 1 << 30)
    if room < 1:
        raise ConfigError(
            f"max_new_tokens: {max_new_tokens} leaves no room for a prompt in the model's "
            f"{positions} positions"
        )
    return min(room, max_prompt_tokens) if max_prompt_tokens else room


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_prompt_tokens: int | None = None,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    shard: tuple[int, int] | None = None,
) -> Generation:
    """Sample one response per prompt (repeat a prompt for several), ``batch_size`` rows at a
    time (all at once by default), on the model's device; the caller chooses autocast and
    eval mode. Each prompt keeps its last :func:`prompt_budget` tokens.

    ``shard = (offset, total)``: these prompts are rows offset.. of a global batch of ``total``
    rows spread over processes; with a ``generator`` seeded alike on every process, each row
    then gets the random numbers it would get if one process sampled the whole batch."""
    if shard is not None and batch_size is not None:
        raise ValueError("generate: a shard is sampled in one batch")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("generate: no prompts")
    device = next(model.parameters()).device
    budget = prompt_budget(model_positions(model), max_new_tokens, max_prompt_tokens)
    step = batch_size or len(prompts)
    parts, cut = [], 0
    for i in range(0, len(prompts), step):
        ids, mask, n_cut = _encode(tokenizer, prompts[i : i + step], device, budget)
        cut += n_cut
        parts.append(
            sample(
                model,
                ids,
                mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
                shard=shard,
            )
        )
    samples = Samples.cat(parts, tokenizer.pad_token_id)
    return Generation(samples, prompts, decode_responses(tokenizer, samples), cut, budget)


def _encode(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    device: torch.device | str,
    max_length: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left-padded token ids and mask for ``prompts`` (kept to their last ``max_length``
    tokens), and how many were cut.

    An empty prompt becomes a lone BOS/EOS token so every row has at least one token.
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    rows, cut = [], 0
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=False)["input_ids"] if p else []
        ids = ids or [start]
        cut += len(ids) > max_length
        rows.append(ids[-max_length:])
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r) :] = torch.tensor(r)
        mask[i, P - len(r) :] = 1
    return ids.to(device), mask.to(device), cut


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
    computes vocabulary logits for the last position only). A LoRA peft model passes both on to
    its base model, so the base model's signature is the one read."""
    inner = _unwrap(model)
    params = inspect.signature(inner.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    return cache_arg, ({"logits_to_keep": 1} if "logits_to_keep" in params else {})


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP (``.module``) and inside a LoRA peft model (its base model, which
    holds the LoRA layers). A prompt-learning peft model is left as it is: it builds its own
    cache from the learned prefix."""
    inner = getattr(model, "module", model)
    peft_config = getattr(inner, "active_peft_config", None)
    if hasattr(inner, "get_base_model") and not getattr(peft_config, "is_prompt_learning", True):
        return inner.get_base_model()
    return inner


def _preallocated_cache(model: nn.Module, max_len: int) -> Any | None:
    """A KV cache whose keys and values are written in place into buffers allocated for
    ``max_len`` positions; None where the model is not a Hugging Face model that takes one
    (or has sliding-window or other non-full attention layers): it then keeps its own cache."""
    inner = _unwrap(model)
    if not isinstance(inner, PreTrainedModel) or inner.config.is_encoder_decoder:
        return None
    if not {"cache", "past_key_values"} & set(inspect.signature(inner.forward).parameters):
        return None
    config = inner.config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    if getattr(config, "sliding_window", None) or set(layer_types) != {"full_attention"}:
        return None
    return Cache(layers=[_PreallocatedLayer(max_len) for _ in range(config.num_hidden_layers)])


class _PreallocatedLayer(DynamicLayer):
    """One layer of :func:`_preallocated_cache`: its keys and values are views of the first
    positions of buffers allocated at the first update, so attention reads only the positions
    written so far, as with the growing cache, without copying them at every step."""

    def __init__(self, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        B, H = key_states.shape[:2]  # batch, heads
        self.key_buffer = key_states.new_empty(B, H, self.max_len, key_states.shape[-1])
        self.value_buffer = value_states.new_empty(B, H, self.max_len, value_states.shape[-1])
        self.keys, self.values = self.key_buffer[:, :, :0], self.value_buffer[:, :, :0]
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        self.key_buffer[:, :, start:end] = key_states
        self.value_buffer[:, :, start:end] = value_states
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values


def _cache(out: Any) -> Any:
    return out["cache"] if "cache" in out else out["past_key_values"]


@torch.no_grad()
def draw(
    logits: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    shard: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from softmax(filter(logits / T)) and its log-probability; the argmax
    when temperature = 0. (B, V) float32 -> (B,), (B,). With ``shard = (offset, total)`` the
    rows take uniforms offset..offset+B of ``total`` drawn (see :func:`generate`)."""
    if temperature <= 0:
        tok = logits.argmax(-1)
        return tok, logits.gather(-1, tok[:, None]).squeeze(-1) - logits.logsumexp(-1)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    # inverse-CDF sampling: one uniform number per row (multinomial draws one per token);
    # u is scaled by the row's total, so float32 rounding in the sum cannot bias the tail,
    # and kept below it, so a token of probability 0 is never drawn
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    B = logits.shape[0]  # rows
    offset, n = shard if shard is not None else (0, B)
    u = torch.rand(n, 1, generator=generator, device=logits.device)[offset : offset + B] * total
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
    shard: tuple[int, int] | None = None,
) -> Samples:
    """Sample up to ``max_new_tokens`` per row; rows stop at EOS. Greedy when temperature=0.
    ``shard``: see :func:`generate`."""
    B, P = prompt_ids.shape  # batch, prompt length
    # the decoding products from oneDNN-packed weights where that pays (models/linear.py)
    with torch.no_grad(), packed_for_inference(model, B):
        device = prompt_ids.device
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
        cache_arg, extra = _forward_args(model)
        # The KV cache and the mask are allocated once at full width (prompt + max_new_tokens) and
        # filled in place: growing them by torch.cat copies everything so far at every step. The
        # model sees the mask's first columns, as many as the tokens it has been given.
        cache = _preallocated_cache(model, P + max_new_tokens)
        mask = torch.cat([prompt_mask, prompt_mask.new_ones(B, max_new_tokens)], dim=1)
        if cache is not None:  # else the model's own, growing cache
            extra = {**extra, cache_arg: cache}
        out = model(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            position_ids=positions,
            use_cache=True,
            **extra,
        )
        cache, logits = _cache(out), out.logits[:, -1, :]
        next_pos = positions[:, -1:] + 1
        tokens, logps = [], []
        done = torch.zeros(B, dtype=torch.bool, device=device)
        ended = torch.zeros(B, dtype=torch.bool, device=device)
        for t in range(max_new_tokens):
            tok, tok_logp = draw(logits.float(), temperature, top_k, top_p, generator, shard)
            tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
            tokens.append(tok)
            logps.append(torch.where(done, torch.zeros_like(tok_logp), tok_logp))
            ended |= ~done & (tok == eos_token_id)
            done |= tok == eos_token_id
            if bool(done.all()) or t == max_new_tokens - 1:
                break
            out = model(
                input_ids=tok[:, None],
                attention_mask=mask[:, : P + t + 1],
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
