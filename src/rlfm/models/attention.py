"""Attention for the Hugging Face transformers rlfm trains and samples: PyTorch's fused
``scaled_dot_product_attention`` (SDPA), except where its CPU kernel is slow.

On a CPU, SDPA's flash kernel in bfloat16 is slow for short sequences: it works in blocks sized
for long ones. Forward plus backward of one attention at the tiny preset's shape (48 rows × 4
heads × 80 tokens × 32 dims, bf16) took 23.6 ms fused against 6.0 ms written out as
softmax(QKᵀ/√d)·V; at 16 × 4 × 128 × 16, 11.0 against 3.5 ms. Past a few hundred tokens the
fused kernel wins (2 × 12 × 1024 × 64: 132 against 355 ms) and never materialises the T × T
scores. :func:`attention` so writes attention out when the scores are small — bf16 or fp16 on a
CPU, at most :data:`EXPLICIT_MAX_KEYS` keys and :data:`EXPLICIT_MAX_SCORES` score elements
(rows × heads × queries × keys) — and calls transformers' SDPA path otherwise (float32, GPUs,
long sequences: unchanged). A reward model's shared-prompt batches and a policy's training
batches at the built-in task's lengths fall in the first case. Measured here (2-core AMD EPYC,
bf16): a reward-model training step at the tiny preset 1.3–1.6× faster (pairs, K = 4, K = 8
rankings), pre-training the small preset at context 256 about 10% more tokens/s.

The written-out formula is the plain one, as transformers' "eager" attention computes it:
QKᵀ in the inputs' precision, scaled, masked, softmax in float32, cast back, then ·V. A query
that may attend to nothing (a padding row) gets a uniform average instead of NaN; such rows
are never read.

:func:`use_fast_attention` puts a loaded model on it (transformers' ``AttentionInterface``,
under the name :data:`NAME`; masks are built as for SDPA). The choice is not saved with the
model: a saved directory loads in plain transformers as before.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

NAME = "rlfm_sdpa"
"""The attention implementation's name in transformers' registries."""
EXPLICIT_MAX_KEYS = 256
"""Longest key sequence attention is written out for (SDPA's fused kernel beyond)."""
EXPLICIT_MAX_SCORES = 4 * 2**20
"""Most score elements (rows × heads × queries × keys) attention is written out for."""


def explicit_is_faster(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether :func:`attention` writes attention out for these (B, H, Tq, D) queries and
    (B, H_kv, Tk, D) keys rather than calling SDPA (the rule of the module docstring)."""
    B, H, Tq, _ = query.shape
    Tk = key.shape[2]
    return (
        query.device.type == "cpu"
        and query.dtype in (torch.bfloat16, torch.float16)
        and Tk <= EXPLICIT_MAX_KEYS
        and B * H * Tq * Tk <= EXPLICIT_MAX_SCORES
    )


DROPOUT_LEVELS = 2**15
"""The mask's resolution: p is taken to the nearest multiple of 1/32768."""


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout: each element kept with probability 1 − p' and scaled by 1/(1 − p'),
    zeroed otherwise, independently — ``F.dropout``'s distribution with p' = round(32768·p) /
    32768, within 1.6e-5 of p (0.1 is 0.100006), so E[dropout(x)] = x exactly.

    The mask costs one random draw per four elements: each 64-bit draw of the CPU generator is
    four 16-bit lanes, and an element is kept when its lane's low 15 bits (uniform on
    0 … 32767; ``random_`` leaves an int64's sign bit 0, so the top lane has no 16th) are
    ≥ 32768·p'. On the CPU ``F.dropout`` draws a float per element with ``bernoulli_``: for a
    3840 × 128 batch on one thread it took 5.3 ms, ``torch.rand ≥ p`` 1.5 ms (with dropout 0.1
    in the Decision Transformer paper's setting the first was 10% of a training step); in
    another measurement (beside other work) drawing the lanes took 0.9 ms where ``torch.rand ≥ p``
    took 5.0."""
    if p <= 0:
        return x
    return x * dropout_keep(x.shape, p, x.device, x.dtype)


def dropout_keep(
    shape: torch.Size | tuple[int, ...], p: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """:func:`dropout`'s multiplier for p > 0: 0 or 1/(1 − p') per element, drawn as there."""
    cut = round(p * DROPOUT_LEVELS)  # dropped iff the lane's 15 bits are below it
    if cut >= DROPOUT_LEVELS:
        return torch.zeros(shape, dtype=dtype, device=device)
    n = math.prod(shape)
    lanes = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_()
    bits = lanes.view(torch.int16)[:n].view(shape).bitwise_and_(DROPOUT_LEVELS - 1)
    return bits.ge_(cut).to(dtype).mul_(DROPOUT_LEVELS / (DROPOUT_LEVELS - cut))


def causal_mask(L: int, rows: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """(R, L) bool: True where the query at each position of ``rows`` (all L positions
    without) may attend, i.e. at keys up to its own position."""
    keys = torch.arange(L, device=device)
    return keys[None, :] <= (keys if rows is None else rows)[:, None]


def explicit_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    causal: bool,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax(QKᵀ·scale + mask)·V for (B, H, Tq, D) queries and (B, H, Tk, D) keys and values.

    ``mask``: bool (True = may attend) or additive float, broadcastable to (B, H, Tq, Tk), or
    None; ``causal`` (used when ``mask`` is None): query i sees keys up to Tk − Tq + i, SDPA's
    alignment when a cache holds earlier keys. Softmax in float32; :func:`dropout` with
    probability ``dropout_p`` on the probabilities, as SDPA applies it. -> (B, H, Tq, D) in the
    queries' dtype.
    """
    Tq, Tk = query.shape[2], key.shape[2]
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scale
    if mask is None and causal and Tq > 1:
        mask = causal_mask(Tk, torch.arange(Tk - Tq, Tk, device=query.device), query.device)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
        else:
            scores = scores + mask.float()
    probs = dropout(torch.softmax(scores, dim=-1), dropout_p)
    return torch.matmul(probs.to(value.dtype), value)


class _PackedAttention(torch.autograd.Function):
    """:func:`packed_attention`; its backward writes ∂q, ∂k, ∂v into one buffer laid out as
    the packed projection, so no concatenation joins them."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        packed: torch.Tensor,
        q: torch.Tensor | None,
        bias: torch.Tensor,
        keep: torch.Tensor | None,
        scale: float,
    ) -> torch.Tensor:
        qv, k, v = _unpack(packed, q)
        probs = torch.baddbmm(bias, qv, k.transpose(1, 2), alpha=scale).softmax(-1)  # (B, R, L)
        dropped = probs if keep is None else probs * keep
        ctx.save_for_backward(packed, q, probs, keep, dropped)
        ctx.scale = scale
        return torch.bmm(dropped, v)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        packed, q, probs, keep, dropped = ctx.saved_tensors
        qv, k, v = _unpack(packed, q)
        grad = torch.empty_like(packed)
        gq, gk, gv = _unpack(grad, None if q is None else torch.empty_like(q))
        d_dropped = torch.bmm(dy, v.transpose(1, 2))  # (B, R, L)
        torch.bmm(dropped.transpose(1, 2), dy, out=gv)
        d_probs = d_dropped if keep is None else d_dropped.mul_(keep)
        d_scores = torch._softmax_backward_data(d_probs, probs, -1, probs.dtype).mul_(ctx.scale)
        torch.bmm(d_scores, k, out=gq)
        torch.bmm(d_scores.transpose(1, 2), qv, out=gk)
        return grad, None if q is None else gq, None, None, None


def _unpack(
    packed: torch.Tensor, q: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, v) views of a (B, L, 3h) [q k v] projection, or ``q`` and a (B, L, 2h) [k v]."""
    if q is None:
        return tuple(packed.chunk(3, dim=-1))  # type: ignore[return-value]
    k, v = packed.chunk(2, dim=-1)
    return q, k, v


def packed_attention(
    packed: torch.Tensor,
    allowed: torch.Tensor,
    q: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Single-head :func:`explicit_attention` read from a packed projection: ``packed`` (B, L,
    3h) holds [q k v] at every token, or (B, L, 2h) [k v] with the queries ``q`` (B, R, h)
    given apart; ``allowed`` (R, L) bool, True where a query may attend. -> (B, R, h).

    The same formula — softmax(q·kᵀ/√h masked) with :func:`dropout`'s mask on the
    probabilities (the same random draws), times v — with the scale and mask applied inside the
    score product, and a backward pass that writes the three gradients into one buffer of
    ``packed``'s layout: autograd's path through ``split`` joins them with a concatenation
    (≈ 4% of a Decision Transformer training step at the paper's size)."""
    h = packed.shape[-1] // (3 if q is None else 2)
    bias = torch.zeros(allowed.shape, dtype=packed.dtype, device=packed.device)
    bias.masked_fill_(~allowed, torch.finfo(packed.dtype).min)
    keep = None
    if dropout_p > 0:
        shape = (packed.shape[0], allowed.shape[0], packed.shape[1])  # (B, R, L)
        keep = dropout_keep(shape, dropout_p, packed.device, packed.dtype)
    return _PackedAttention.apply(packed, q, bias, keep, h**-0.5)


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: (B, H, T, D) inputs -> ((B, T, H, D), None).
    Written out where :func:`explicit_is_faster`, else transformers' SDPA function."""
    special = any(kwargs.get(k) is not None for k in ("position_bias", "softcap", "sinks"))
    if special or kwargs.get("output_attentions") or not explicit_is_faster(query, key):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[2]]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    out = explicit_attention(
        query, key, value, attention_mask, causal=causal, scale=scaling, dropout_p=dropout
    )
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)


def use_fast_attention(model: nn.Module) -> nn.Module:
    """Put a transformers model that uses SDPA on :func:`attention` (same results; faster where
    SDPA's CPU kernel is slow). Models on another implementation are left as they are."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) == "sdpa":
        _register()
        model.set_attn_implementation(NAME)
    return model
