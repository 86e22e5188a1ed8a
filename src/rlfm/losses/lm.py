"""Language-modelling loss (self-supervised pre-training and supervised fine-tuning).

Next-token cross-entropy (Radford et al. 2018; Brown et al. 2020):

    L(θ) = − (1 / Σ m_t) · Σ_t m_t · log p_θ(x_{t+1} | x_1..x_t)

where m_t ∈ {0, 1} masks positions that carry no loss (padding; prompt tokens in SFT).

``chunked_next_token_loss`` computes the same loss from the final hidden states h (N, d) and the
output embedding W (V, d), logits = h Wᵀ, a block of rows at a time, so the (N, V) logits are
never held whole: with V = 8192 or 50,257 they are by far the largest activation of a small
model. Its gradients, for one row with p = softmax(h Wᵀ) and one-hot target y, scaled by the
row's weight c = m_t / Σ m_t:

    ∂L/∂h = c · (p − y) W,      ∂L/∂W = Σ_rows c · (p − y)ᵀ h

are formed in the forward pass, block by block while the block's softmax is at hand, rather than
by recomputing the logits in backward: each block's logits are computed once (three matrix
products per block in all instead of four). The price is memory held from forward to backward:
one hidden-sized buffer (∂L/∂h, N × d) and one weight-sized float32 buffer (∂L/∂W, V × d).
Backward only multiplies them by the incoming gradient. Without gradients (no_grad, evaluation)
the forward pass computes the loss alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx, once_differentiable


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


class _ChunkedNextTokenLoss(torch.autograd.Function):
    """Σ_rows coef · (−log softmax(h Wᵀ)[target]) over blocks of ``chunk`` rows.

    With ``want_h`` / ``want_w`` the forward pass also forms the gradients: each block's
    c · (p − y) is multiplied into ∂L/∂h (rows of a hidden-sized buffer) and ∂L/∂W (a float32
    (V, d) sum) while the block's softmax is at hand, so logits exist once, in forward only.
    The backward pass just scales the two buffers by the incoming gradient. The matrix products
    run in the autocast dtype when autocast is on (as ``nn.Linear`` would), the softmax in
    float32 (float64 inputs stay float64).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        coef: torch.Tensor,
        chunk: int,
        want_h: bool,
        want_w: bool,
    ) -> torch.Tensor:
        device = hidden.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        else:
            dtype = torch.promote_types(hidden.dtype, weight.dtype)
        acc = torch.promote_types(dtype, torch.float32)  # softmax dtype: fp32 (fp64 stays fp64)
        h, w = hidden.to(dtype), weight.to(dtype)
        N = h.shape[0]  # rows = batch × time
        nll = torch.empty(N, dtype=acc, device=hidden.device)
        c = coef.to(acc)
        grad_h = torch.empty_like(h) if want_h else None  # (N, d) in the matmul dtype
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        with torch.autocast(device, enabled=False):  # dtypes are set by hand above
            for s in range(0, N, chunk):
                h_c, t_c = h[s : s + chunk], targets[s : s + chunk]
                logp = torch.log_softmax((h_c @ w.T).to(acc), dim=-1)  # (n, V): the big buffer
                nll[s : s + chunk] = -logp.gather(1, t_c[:, None]).squeeze(1)
                if not (want_h or want_w):
                    continue
                dlogits = logp.exp_()  # p, in place of log p
                dlogits[torch.arange(h_c.shape[0], device=h.device), t_c] -= 1.0  # p − y
                dlogits = dlogits.mul_(c[s : s + chunk, None]).to(dtype)  # · c
                if want_h:
                    grad_h[s : s + chunk] = dlogits @ w
                if want_w:
                    grad_w += dlogits.T @ h_c  # (V, d), summed over blocks in fp32
        ctx.save_for_backward(grad_h, grad_w)
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        return (nll * c).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[:2]
        # Out of place: the buffers stay as they are for a second backward (retain_graph=True).
        # grad_loss is 0-dim, so the products keep the buffers' dtypes (computed at fp32 or more).
        return (
            grad_h.to(ctx.hidden_dtype) * grad_loss if want_h else None,
            (grad_w * grad_loss).to(ctx.weight_dtype) if want_w else None,
            None,
            None,
            None,
            None,
            None,
        )


def chunked_next_token_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    chunk: int = 512,
) -> torch.Tensor:
    """``next_token_loss(hidden @ weight.T, targets, loss_mask)`` without the (B·T, V) logits.

    Logits, log-softmax and their gradients are formed for ``chunk`` rows (positions) at a time,
    all in the forward pass, so the memory they take is one (chunk, V) block instead of the whole
    batch's logits, their float32 copy and the softmax kept for backward. When gradients are
    wanted (grad mode on and ``hidden`` or ``weight`` requiring grad) the forward pass also fills
    ∂L/∂hidden (one hidden-sized buffer, in the matmul dtype) and ∂L/∂weight (one (V, d) float32
    buffer) and keeps them for backward, which only scales them by the incoming gradient; under
    no_grad (evaluation) only the loss is computed. Use it wherever a model's logits are exactly
    ``hidden @ weight.T`` (no bias, no scaling or soft-capping).

    Args:
        hidden: (B, T, d) final hidden states (after the last layer norm).
        weight: (V, d) output embedding (the LM head's weight).
        targets: (B, T) token ids in [0, V) (no ignore index: mask positions with loss_mask).
        loss_mask: (B, T) 1 where the target carries loss, 0 elsewhere; None = all positions.
        chunk: rows per block. On a CPU, 256–512 rows of V = 8192 float32 logits (8–16 MiB)
            ran fastest; 1024-row blocks, which fall out of cache, were ~40% slower.

    Returns:
        A scalar: the mean over masked-in positions (0 when the mask is empty).
    """
    B, T, d = hidden.shape  # batch, time, width
    V = weight.shape[0]  # vocabulary
    assert weight.shape == (V, d), f"weight {tuple(weight.shape)} != (V, {d})"
    assert targets.shape == (B, T), f"targets {tuple(targets.shape)} != {(B, T)}"
    assert chunk >= 1, f"chunk must be ≥ 1, got {chunk}"
    acc = torch.promote_types(hidden.dtype, torch.float32)
    if loss_mask is None:
        coef = torch.full((B * T,), 1.0 / (B * T), dtype=acc, device=hidden.device)
    else:
        assert loss_mask.shape == (B, T), f"loss_mask {tuple(loss_mask.shape)} != {(B, T)}"
        m = loss_mask.reshape(B * T).to(acc)
        coef = m / m.sum().clamp(min=1.0)  # clamp: an all-masked batch gives 0, not nan
    grad_on = torch.is_grad_enabled()  # (False here under no_grad / inference_mode: evaluation)
    want_h, want_w = grad_on and hidden.requires_grad, grad_on and weight.requires_grad
    return _ChunkedNextTokenLoss.apply(
        hidden.reshape(B * T, d), weight, targets.reshape(B * T), coef, chunk, want_h, want_w
    )


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
