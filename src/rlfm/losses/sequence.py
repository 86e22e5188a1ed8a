"""Per-token quantities of a sampled sequence: log-probabilities, entropy, masked statistics.

Temperature: a policy that samples from softmax(z / T) has log π(y_t) = log_softmax(z / T)[y_t],
so every log-prob used for a ratio or a KL must divide the logits by the same T the sampler
used (Ziegler et al. 2019; the "temperature-consistent log-probs" detail of DESIGN.md).
"""

from __future__ import annotations

import torch


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log π(tokens) under softmax(logits / temperature). (B, T, V), (B, T) -> (B, T) float32."""
    B, T, V = logits.shape  # batch, time, vocabulary
    assert tokens.shape == (B, T), f"tokens {tuple(tokens.shape)} != {(B, T)}"
    assert temperature > 0, "temperature must be > 0 when computing log-probs"
    z = logits.float() / temperature
    # log_softmax(z)[y] = z[y] − logsumexp(z): avoids materialising a (B, T, V) log-prob tensor
    return z.gather(-1, tokens[..., None]).squeeze(-1) - torch.logsumexp(z, dim=-1)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy H(π(·|x_<t)) of softmax(logits / temperature) at each position. (B, T, V) -> (B, T)."""
    z = logits.float() / temperature
    logp = z.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


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
