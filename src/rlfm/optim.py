"""Optimizer and learning-rate schedules shared by the stages.

AdamW with decoupled weight decay (Loshchilov & Hutter 2019) on matrices only: biases and norm
gains (1-D parameters) are not decayed, as in GPT-3.
Schedules are LambdaLR multipliers, so their state is a step count restored by a checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; 1-D ones (biases, norm gains) get no weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    params = [p for g in groups for p in g["params"]]
    # the fused kernel (one pass over all parameters) where every parameter can use it
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps, fused=fused or None
    )


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak rate over ``warmup_steps``, then cosine decay to
    ``min_ratio`` × peak at ``total_steps`` (GPT-3: cosine to 10%; PPO: linear to 0 instead)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def supervised(
    model: nn.Module, cfg: Any, lr: float, min_ratio: float = 0.1
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """The supervised stages' optimisation (GPT-3's): AdamW with β = (0.9, 0.95) and
    ``cfg.weight_decay`` on matrices, ``cfg.warmup_steps`` of warm-up, cosine decay to
    ``min_ratio`` × ``lr`` at ``cfg.steps``."""
    optimizer = adamw(model, lr, cfg.weight_decay, betas=(0.9, 0.95))
    return optimizer, warmup_cosine(optimizer, cfg.warmup_steps, cfg.steps, min_ratio)
