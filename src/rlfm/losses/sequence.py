"""Per-token quantities of a sampled sequence: log-probabilities, entropy, masked statistics.

Temperature: a policy that samples from softmax(z / T) has log π(y_t) = log_softmax(z / T)[y_t],
so every log-prob used for a ratio or a KL must divide the logits by the same T the sampler
used (Ziegler et al. 2019; the "temperature-consistent log-probs" detail of DESIGN.md).
"""

from __future__ import annotations

import torch
from torch.autograd.function import FunctionCtx, once_differentiable


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log π(tokens) under softmax(logits / temperature). (B, T, V), (B, T) -> (B, T) float32
    (float64 for float64 logits).

        log π(y_t) = z_t[y_t] − logsumexp(z_t),   z_t = logits_t / T
        ∂ log π(y_t) / ∂ logits_t = (onehot(y_t) − softmax(z_t)) / T

    Computed a block of positions at a time (:func:`blocks`), in float32 whatever the
    logits' dtype; with gradients, the backward pass recomputes each block's softmax instead of
    keeping a (B, T, V) float32 copy alive. Same numbers as
    ``log_softmax(logits.float() / T).gather(-1, tokens)``.
    """
    B, T, V = logits.shape  # batch, time, vocabulary
    assert tokens.shape == (B, T), f"tokens {tuple(tokens.shape)} != {(B, T)}"
    assert temperature > 0, "temperature must be > 0 when computing log-probs"
    if torch.is_grad_enabled() and logits.requires_grad:
        return _TokenLogprobs.apply(logits, tokens, temperature)
    return _blocked_logprobs(logits, tokens, temperature)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy H(π(·|x_<t)) of softmax(logits / temperature) at each position, float32 (float64
    for float64 logits), no gradient (a statistic). (B, T, V) -> (B, T).

        H_t = − Σ_v p_v log p_v,   p = softmax(logits_t / T)
    """
    logits = logits.detach()
    out = logits.new_empty(logits.shape[:-1], dtype=_wide(logits.dtype))
    for block in blocks(logits):
        logp = (logits[block].to(out.dtype) / temperature).log_softmax(-1)
        out[block] = -(logp.exp() * logp).sum(-1)
    return out


def blocks(logits: torch.Tensor) -> list[tuple[slice, slice]]:
    """(batch rows, positions) blocks of (B, T, V) logits for vocabulary-wide arithmetic.

    On a CPU a block holds about 2¹⁸ logits (1 MiB in float32), so the temporaries of one block
    stay in cache and their memory is reused from block to block: for a PPO batch (32 × 32
    positions, V = 4096) that is 4× faster than whole-tensor arithmetic, whose 16 MiB
    temporaries are fresh pages every time. On a GPU the whole tensor is one block (one kernel
    launch per operation). Works on views (a slice of the model's logits) without copying them.
    """
    B, T, V = logits.shape
    if logits.is_cuda:
        return [(slice(None), slice(None))]
    per_block = max(1, (1 << 18) // max(V, 1))  # positions per block
    if per_block >= T:  # whole rows, several at a time
        k = per_block // max(T, 1)
        return [(slice(b, min(b + k, B)), slice(None)) for b in range(0, B, k)]
    return [
        (slice(b, b + 1), slice(t, min(t + per_block, T)))
        for b in range(B)
        for t in range(0, T, per_block)
    ]


def _wide(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16/fp32 logits, float64 for float64 ones."""
    return torch.promote_types(dtype, torch.float32)


def _blocked_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float
) -> torch.Tensor:
    logits = logits.detach()
    out = logits.new_empty(tokens.shape, dtype=_wide(logits.dtype))
    for block in blocks(logits):
        z = logits[block].to(out.dtype) / temperature
        out[block] = z.gather(-1, tokens[block][..., None]).squeeze(-1) - z.logsumexp(-1)
    return out


class _TokenLogprobs(torch.autograd.Function):
    """:func:`token_logprobs` with a blocked backward (see its docstring for the formulas)."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, logits: torch.Tensor, tokens: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        ctx.save_for_backward(logits, tokens)
        ctx.temperature = temperature
        return _blocked_logprobs(logits, tokens, temperature)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, tokens = ctx.saved_tensors
        T = ctx.temperature
        dtype = _wide(logits.dtype)
        g = (grad_out.to(dtype) / T)[..., None]  # (B, T, 1)
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        for block in blocks(logits):
            p = (logits[block].to(dtype) / T).softmax(-1)
            # (onehot − softmax) · g / T: −p·g everywhere, then + g at the token
            grad[block] = p.mul_(-g[block]).scatter_add_(-1, tokens[block][..., None], g[block])
        return grad, None, None


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (all of them, or along ``dim``)."""
    assert x.shape == mask.shape, f"x {tuple(x.shape)} != mask {tuple(mask.shape)}"
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1.0)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked-in entries of ``x`` (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)
    n = mask.to(x.dtype).sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    moments: tuple[torch.Tensor, torch.Tensor] | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """(x − mean) / std over the masked-in entries; with ``shift_mean=False`` the mean is added
    back, so only the scale changes (how PPO for LMs whitens rewards). Masked-out entries are 0.

        whiten(x) = (x − μ) / sqrt(σ² + eps)  [+ μ when shift_mean is False]

    ``moments`` = (μ, σ²) computed elsewhere (e.g. over all processes); default: from ``x``.
    """
    mean, var = moments if moments is not None else (masked_mean(x, mask), masked_var(x, mask))
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def moments_from_sums(
    total: torch.Tensor, total_sq: torch.Tensor, count: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased variance) from Σx, Σx² and n — the sums all-reduce across processes."""
    mean = total / count.clamp(min=1)
    var = (total_sq / count.clamp(min=1) - mean**2).clamp(min=0)
    return mean, var * count / (count - 1).clamp(min=1)
