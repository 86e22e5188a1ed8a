"""Language-modelling loss (self-supervised pre-training and supervised fine-tuning).

Next-token cross-entropy (Radford et al. 2018; Brown et al. 2020):

    L(θ) = − (1 / Σ m_t) · Σ_t m_t · log p_θ(x_{t+1} | x_1..x_t)

where m_t ∈ {0, 1} masks positions that carry no loss (padding; prompt tokens in SFT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_loss(
    logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean negative log-likelihood of ``targets`` under ``logits``.

    Args:
        logits: (B, T, V) scores for the token at each position's *next* step, already aligned
            with ``targets`` (logits[:, t] predicts targets[:, t]).
        targets: (B, T) token ids.
        loss_mask: (B, T) 1 where the target carries loss, 0 elsewhere; None = all positions.

    Returns:
        A scalar: the mean over masked-in positions (0 when the mask is empty).
    """
    B, T, V = logits.shape  # batch, time, vocabulary
    assert targets.shape == (B, T), f"targets {tuple(targets.shape)} != {(B, T)}"
    nll = F.cross_entropy(
        logits.reshape(B * T, V).float(), targets.reshape(B * T), reduction="none"
    )
    if loss_mask is None:
        return nll.mean()
    assert loss_mask.shape == (B, T), f"loss_mask {tuple(loss_mask.shape)} != {(B, T)}"
    m = loss_mask.reshape(B * T).to(nll.dtype)
    return (nll * m).sum() / m.sum().clamp(min=1.0)  # clamp: an all-masked batch gives 0, not nan


def unigram_cross_entropy(
    train_tokens: torch.Tensor, val_tokens: torch.Tensor, vocab: int
) -> float:
    """Cross-entropy of ``val_tokens`` under the add-one-smoothed unigram distribution of
    ``train_tokens`` (nats per token): the loss of a model that ignores context. (N,), (M,) ids.

        H = − (1/M) Σ_j log q(v_j),   q(v) = (count_train(v) + 1) / (N + vocab)
    """
    counts = torch.bincount(train_tokens, minlength=vocab).double() + 1.0
    logq = (counts / counts.sum()).log()
    return float(-logq[val_tokens].mean())
