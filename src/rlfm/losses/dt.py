"""Losses of the Decision Transformer (Chen et al. 2021) and the Constrained Decision
Transformer (Liu et al. 2023). Pure math: tensors in, tensors out.

Every loss is a mean over the *real* steps of a batch of windows: ``mask`` (B, T) is 1 where a
window holds a step of an episode and 0 on padding, so short windows count once per real step.

DT, continuous actions (the paper's Gym setup), mean squared error of the predicted action:

    L = Σ_{b,t} m_bt · ‖â_bt − a_bt‖² / (A · Σ m)                       (action_mse_loss)

DT, discrete actions (the paper's Atari setup), cross-entropy of the action logits:

    L = − Σ_{b,t} m_bt · log softmax(z_bt)[a_bt] / Σ m                   (action_cross_entropy)

CDT, stochastic policy π_θ(a | ·) with entropy regularisation and a learned temperature λ
(the recipe of Zheng et al. 2022 that CDT adopts):

    L_π = − E[log π_θ(a_t | ·)] − λ · E[H(π_θ(· | ·))]                  (policy_nll_entropy_loss)
    L_λ =   λ · (E[H(π_θ)] − H̄)     with H(π_θ) held constant          (temperature_loss)

λ is held constant in L_π and H in L_λ, so the policy maximises likelihood plus λ-weighted
entropy while λ grows when the entropy falls below the target H̄ (−|A| by default) and shrinks
when it is above.

CDT's prediction heads: mean squared error of the predicted step reward and cost
(step_prediction_loss).
"""

from __future__ import annotations

import torch


def _check_mask(mask: torch.Tensor, B: int, T: int) -> None:
    assert mask.shape == (B, T), f"mask {tuple(mask.shape)} != {(B, T)}"


def _real_steps(mask: torch.Tensor) -> torch.Tensor:
    """Number of real steps (at least 1, so an all-padding batch gives a zero loss)."""
    return mask.sum().clamp(min=1)


def action_mse_loss(
    action_preds: torch.Tensor,
    actions: torch.Tensor,
    mask: torch.Tensor,
    action_dims: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error of continuous actions over real steps and action dimensions.

    action_preds, actions: (B, T, A); mask: (B, T) 1 = real step. ``action_dims`` (B, A) marks
    the dimensions each window's task has (multi-task models with smaller action spaces pad
    the rest); default all. -> scalar.
    """
    B, T, A = action_preds.shape
    assert actions.shape == (B, T, A), f"actions {tuple(actions.shape)} != {(B, T, A)}"
    _check_mask(mask, B, T)
    weight = mask.to(action_preds.dtype)[:, :, None].expand(B, T, A)  # (B, T, A)
    if action_dims is not None:
        assert action_dims.shape == (B, A), f"action_dims {tuple(action_dims.shape)} != {(B, A)}"
        weight = weight * action_dims.to(action_preds.dtype)[:, None, :]
    sq = (action_preds.float() - actions.float()).square()
    return (sq * weight).sum() / weight.sum().clamp(min=1)


def action_cross_entropy(
    action_logits: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of discrete actions over real steps.

    action_logits: (B, T, N) over N actions; actions: (B, T) long; mask: (B, T). -> scalar.
    """
    B, T, N = action_logits.shape
    assert actions.shape == (B, T), f"actions {tuple(actions.shape)} != {(B, T)}"
    _check_mask(mask, B, T)
    logp = torch.log_softmax(action_logits.float(), dim=-1)  # (B, T, N)
    nll = -logp.gather(-1, actions.long().clamp(0, N - 1)[..., None]).squeeze(-1)  # (B, T)
    return (nll * mask).sum() / _real_steps(mask)


def policy_nll_entropy_loss(
    logprobs: torch.Tensor,
    entropies: torch.Tensor,
    mask: torch.Tensor,
    temperature: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CDT's policy loss −E[log π(a_t|·)] − λ·E[H(π)] over real steps, λ held constant.

    logprobs: (B, T) log π_θ(a_t | ·) of the data's actions (summed over action dimensions);
    entropies: (B, T) H(π_θ(· | ·)); mask: (B, T); temperature λ ≥ 0 (a scalar tensor or a
    float; 0 = no entropy term). -> (loss, mean NLL, mean entropy), the last two detached.
    """
    B, T = logprobs.shape
    assert entropies.shape == (B, T), f"entropies {tuple(entropies.shape)} != {(B, T)}"
    _check_mask(mask, B, T)
    n = _real_steps(mask)
    nll = -(logprobs * mask).sum() / n
    entropy = (entropies * mask).sum() / n
    lam = temperature.detach() if isinstance(temperature, torch.Tensor) else temperature
    return nll - lam * entropy, nll.detach(), entropy.detach()


def temperature_loss(
    temperature: torch.Tensor, entropy: torch.Tensor, target_entropy: float
) -> torch.Tensor:
    """λ · (H − H̄) with the entropy H held constant: its gradient raises λ when the policy's
    entropy is below the target H̄ and lowers it when above.

    temperature: scalar λ (= exp(log λ), the learned parameter); entropy: scalar mean entropy.
    """
    assert temperature.ndim == 0 and entropy.ndim == 0, "temperature and entropy are scalars"
    return temperature * (entropy.detach() - target_entropy)


def step_prediction_loss(
    predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean squared error of a per-step scalar prediction (CDT's reward and cost heads).

    predictions, targets, mask: (B, T). -> scalar.
    """
    B, T = predictions.shape
    assert targets.shape == (B, T), f"targets {tuple(targets.shape)} != {(B, T)}"
    _check_mask(mask, B, T)
    sq = (predictions.float() - targets.float()).square()
    return (sq * mask).sum() / _real_steps(mask)
