"""Preference losses: Bradley–Terry comparisons, pairs and K-way rankings.

A reward model r_θ(x, y) scores a completion y of a prompt x. The Bradley–Terry model
(Bradley & Terry 1952), as used for learning from human comparisons by Christiano et al. 2017
and Stiennon et al. 2020, says a person prefers y_w to y_l with probability

    P(y_w ≻ y_l | x) = σ(r_θ(x, y_w) − r_θ(x, y_l))

and the reward model is fit by maximum likelihood on labelled pairs:

    loss(θ) = − E_{(x, y_w, y_l) ~ D} [ log σ(r_θ(x, y_w) − r_θ(x, y_l) − m) ]

with an optional margin m ≥ 0 (m = 0 is the plain model; a margin asks for a reward gap of at
least about m, e.g. for strongly preferred pairs).

**K-way rankings** (Ouyang et al. 2022, InstructGPT, eq. 1). A labeler ranks K completions of
one prompt best → worst; every one of the C(K,2) pairs is a comparison. The K completions are
scored once and the loss of the ranking is the mean over its pairs:

    loss(θ) = − 1/C(K,2) · E_{(x, y_w, y_l) ~ D} [ log σ(r_θ(x, y_w) − r_θ(x, y_l)) ]

Each ranking is one batch element (its pairs are never spread over batches, which InstructGPT
found to overfit), and the batch loss is the mean over rankings. **Ties**: a ranking is a list
whose items are completion indices or inner lists of tied indices, e.g. ``[[2, 0], 1, 3]``
(2 and 0 tie for best). Tied completions form no pair, so a ranking with ties has fewer than
C(K,2) pairs and its loss is the mean over the pairs it has.

Rankings are handed to the vectorised loss as **levels** (data/preferences.py turns the rankings
of data files into levels): ``levels[b, i]`` is the position of
completion i's tie group in ranking b (0 = best), and −1 marks padding, so rankings of
different K share one (B, K_max) batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 at least (bf16 rewards are widened, float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def bradley_terry_loss(
    rewards_chosen: torch.Tensor,
    rewards_rejected: torch.Tensor,
    margin: float | torch.Tensor = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Pairwise Bradley–Terry loss −log σ(r_w − r_l − m) (Christiano et al. 2017; Stiennon et
    al. 2020).

    Args:
        rewards_chosen: (N,) r_θ(x, y_w), rewards of the preferred completions.
        rewards_rejected: (N,) r_θ(x, y_l), rewards of the other completions.
        margin: m, a float or an (N,) tensor of per-pair margins.
        reduction: "mean" (a scalar) or "none" (the (N,) per-pair losses).
    """
    (N,) = rewards_chosen.shape  # pairs
    assert rewards_rejected.shape == (N,), f"rewards_rejected {tuple(rewards_rejected.shape)}"
    if isinstance(margin, torch.Tensor):
        assert margin.shape in ((), (N,)), f"margin {tuple(margin.shape)} != () or ({N},)"
    assert reduction in ("mean", "none"), f"reduction {reduction!r}"
    # logsigmoid is the numerically stable log σ(z) (no overflow for large |z|)
    loss = -F.logsigmoid(_wide(rewards_chosen) - _wide(rewards_rejected) - margin)
    return loss.mean() if reduction == "mean" else loss


def pair_mask(levels: torch.Tensor) -> torch.Tensor:
    """better[b, i, j] = True when completion i beats completion j in ranking b.

    (B, K) levels (−1 = padding) -> (B, K, K) bool; the pairs of ranking b are its True entries.
    """
    B, K = levels.shape  # rankings, completions (padded to the longest ranking)
    real = levels >= 0
    return (levels[:, :, None] < levels[:, None, :]) & real[:, :, None] & real[:, None, :]


def ranking_loss(
    rewards: torch.Tensor, levels: torch.Tensor, margin: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """InstructGPT's K-way loss from the K rewards of each ranking (one forward per completion).

        loss = mean_b [ 1/|P_b| · Σ_{(w,l) ∈ P_b} −log σ(r_{b,w} − r_{b,l} − m_b) ]

    where P_b are the pairs of ranking b (:func:`pair_mask`). Rankings without a pair are left
    out of the mean (a batch with no pair at all gives 0).

    Args:
        rewards: (B, K) rewards r_θ(x_b, y_{b,i}); entries at padding are ignored.
        levels: (B, K) integer levels, 0 = best, equal = tied, −1 = padding.
        margin: m, a float or a (B,) tensor (one margin per ranking).

    Returns:
        A scalar (float32, or float64 for float64 rewards).
    """
    B, K = rewards.shape  # rankings, completions
    assert levels.shape == (B, K), f"levels {tuple(levels.shape)} != {(B, K)}"
    rewards = _wide(rewards)
    margin = torch.as_tensor(margin, dtype=rewards.dtype, device=rewards.device)
    assert margin.shape in ((), (B,)), f"margin {tuple(margin.shape)} != () or ({B},)"
    better = pair_mask(levels)  # (B, K, K)
    diff = rewards[:, :, None] - rewards[:, None, :]  # r_i − r_j
    nll = -F.logsigmoid(diff - (margin[:, None, None] if margin.ndim else margin))
    nll = torch.where(better, nll, torch.zeros_like(nll))  # where, not *: padding may be ±inf
    n_pairs = better.sum(dim=(1, 2))  # (B,)
    per_ranking = nll.sum(dim=(1, 2)) / n_pairs.clamp(min=1)
    return per_ranking.sum() / (n_pairs > 0).sum().clamp(min=1)


def pair_differences(rewards: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """r_w − r_l for every pair of every ranking, flattened. (B, K), (B, K) -> (P,).

    A positive entry is a pair the rewards order the way the labeler did (for accuracy and
    calibration: σ of an entry is the predicted probability of the observed preference).
    """
    B, K = rewards.shape
    assert levels.shape == (B, K), f"levels {tuple(levels.shape)} != {(B, K)}"
    diff = _wide(rewards)[:, :, None] - _wide(rewards)[:, None, :]
    return diff[pair_mask(levels)]
