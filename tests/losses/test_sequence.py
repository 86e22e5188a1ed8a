"""Blocked log-probs and entropy (losses/sequence.py) against whole-tensor formulas."""

from __future__ import annotations

import pytest
import torch

from rlfm.losses.sequence import blocks, token_entropy, token_logprobs


def reference_logprobs(logits: torch.Tensor, tokens: torch.Tensor, t: float) -> torch.Tensor:
    z = logits.to(torch.promote_types(logits.dtype, torch.float32)) / t
    return z.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)


@pytest.mark.parametrize("vocab", [7, 1 << 17])  # whole rows per block; blocks inside a row
def test_blocked_logprobs_and_gradient_match_the_whole_tensor_formula(vocab):
    """Loss and gradient equal log_softmax(z / T)[y] in float64, also on a sliced (non-contiguous)
    view of the logits as PPO passes them, with blocks that do not divide the positions."""
    g = torch.Generator().manual_seed(0)
    full = torch.randn(3, 6, vocab, generator=g, dtype=torch.float64) * 3
    tokens = torch.randint(0, vocab, (3, 5), generator=g)
    weights = torch.randn(3, 5, generator=g, dtype=torch.float64)
    if vocab > 7:
        assert len(blocks(full[:, :-1])) > 3  # several blocks per row
    a = full.clone().requires_grad_()
    got = token_logprobs(a[:, :-1], tokens, 0.7)
    (got * weights).sum().backward()
    b = full.clone().requires_grad_()
    want = reference_logprobs(b[:, :-1], tokens, 0.7)
    (want * weights).sum().backward()
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(token_logprobs(full[:, :-1], tokens, 0.7), want.detach())


def test_gradient_by_hand():
    """z = (2, 0) / T with T = 2 → p = (e/(e+1), 1/(e+1)); ∂ log p_0 / ∂ logits = (1 − p_0, −p_1) / 2
    = (0.134471, −0.134471)."""
    logits = torch.tensor([[[2.0, 0.0]]], requires_grad=True)
    token_logprobs(logits, torch.tensor([[0]]), 2.0).sum().backward()
    torch.testing.assert_close(
        logits.grad, torch.tensor([[[0.134471, -0.134471]]]), rtol=1e-5, atol=1e-6
    )


def test_bf16_logits_give_float32_logprobs_and_bf16_gradients():
    logits = torch.randn(2, 4, 50).bfloat16().requires_grad_()
    tokens = torch.randint(0, 50, (2, 4))
    lp = token_logprobs(logits, tokens, 1.0)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, reference_logprobs(logits.detach(), tokens, 1.0))
    lp.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


def test_blocked_entropy_matches_the_formula():
    logits = torch.randn(2, 5, 1 << 17, dtype=torch.float64)[:, 1:]
    logp = (logits / 0.5).log_softmax(-1)
    torch.testing.assert_close(token_entropy(logits, 0.5), -(logp.exp() * logp).sum(-1))
