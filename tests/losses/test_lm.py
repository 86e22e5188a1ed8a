"""Language-modelling loss against numbers worked out by hand."""

import math

import pytest
import torch

from rlfm.losses.lm import chunked_next_token_loss, next_token_loss, unigram_cross_entropy


def test_uniform_logits_give_log_vocab():
    """Equal logits over V=2 tokens: −log(1/2) = ln 2 = 0.693147 whatever the target."""
    logits = torch.zeros(1, 3, 2)
    targets = torch.tensor([[0, 1, 1]])
    assert math.isclose(float(next_token_loss(logits, targets)), math.log(2), rel_tol=1e-6)


def test_hand_computed_mean():
    """Logits (ln 3, 0): p(0) = 3/4, p(1) = 1/4. Targets 0 and 1: mean of −ln(3/4) = 0.287682
    and −ln(1/4) = 1.386294 is 0.836988."""
    logits = torch.tensor([[[math.log(3), 0.0], [math.log(3), 0.0]]])
    targets = torch.tensor([[0, 1]])
    assert math.isclose(float(next_token_loss(logits, targets)), 0.836988, rel_tol=1e-5)


def test_mask_drops_positions():
    """With the second position masked out only −ln(3/4) = 0.287682 remains."""
    logits = torch.tensor([[[math.log(3), 0.0], [math.log(3), 0.0]]])
    targets = torch.tensor([[0, 1]])
    mask = torch.tensor([[1, 0]])
    assert math.isclose(float(next_token_loss(logits, targets, mask)), 0.287682, rel_tol=1e-5)


def test_empty_mask_gives_zero_not_nan():
    """A batch with no loss-carrying token contributes 0 (not nan)."""
    loss = next_token_loss(
        torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)
    )
    assert float(loss) == 0.0


def test_matches_plain_loop():
    """The vectorised loss equals a loop over positions of −log softmax."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 7, generator=g)
    targets = torch.randint(0, 7, (3, 4), generator=g)
    mask = torch.randint(0, 2, (3, 4), generator=g)
    total, n = 0.0, 0
    for b in range(3):
        for t in range(4):
            if mask[b, t]:
                total -= float(torch.log_softmax(logits[b, t], -1)[targets[b, t]])
                n += 1
    assert math.isclose(float(next_token_loss(logits, targets, mask)), total / n, rel_tol=1e-5)


def test_unigram_baseline_by_hand():
    """Train [0, 0, 1], vocabulary 2: add-one counts (3, 2), q = (0.6, 0.4); val [1, 0]:
    −(ln 0.4 + ln 0.6)/2 = 0.713558."""
    h = unigram_cross_entropy(torch.tensor([0, 0, 1]), torch.tensor([1, 0]), 2)
    assert math.isclose(h, 0.713558, rel_tol=1e-5)


def test_chunked_loss_and_gradients_by_hand():
    """h = [1, 0] at both positions, W = [[ln 3, 0], [0, 0]]: logits (ln 3, 0), p = (3/4, 1/4).
    Targets 0, 1: loss (−ln 3/4 − ln 1/4)/2 = 0.836988. p − y = (−1/4, 1/4) and (3/4, −3/4),
    each row weighted 1/2: ∂L/∂h = ½(p − y) W = (−ln 3/8, 0) = (−0.137327, 0) and
    (3 ln 3/8, 0) = (0.411980, 0); ∂L/∂W = Σ ½(p − y)ᵀ h = [[1/4, 0], [−1/4, 0]].
    One row per block, so the two positions go through separate blocks."""
    h = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]], requires_grad=True)
    w = torch.tensor([[math.log(3), 0.0], [0.0, 0.0]], requires_grad=True)
    loss = chunked_next_token_loss(h, w, torch.tensor([[0, 1]]), chunk=1)
    loss.backward()
    assert math.isclose(loss.item(), 0.836988, rel_tol=1e-5)
    torch.testing.assert_close(h.grad, torch.tensor([[[-0.137327, 0.0], [0.411980, 0.0]]]))
    torch.testing.assert_close(w.grad, torch.tensor([[0.25, 0.0], [-0.25, 0.0]]))


def _loss_and_grads(fn, h, w, *args, **kw):
    h = h.detach().requires_grad_()
    w = w.detach().requires_grad_()
    loss = fn(h, w, *args, **kw)
    grad_h, grad_w = torch.autograd.grad(loss, (h, w))
    return loss, grad_h, grad_w


def _full(h, w, targets, mask=None):
    return next_token_loss(h @ w.T, targets, mask)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mask", ["none", "random", "empty"])
@pytest.mark.parametrize("chunk", [1, 4, 21, 64])
def test_chunked_equals_full_logits(dtype, mask, chunk):
    """Loss and both gradients equal next_token_loss(h Wᵀ) to 1e-6, with and without a mask,
    for blocks that do not divide the 3 × 7 = 21 rows (4), one block (21, 64) and single rows.
    An all-masked batch gives loss 0 and zero gradients, not nan."""
    g = torch.Generator().manual_seed(0)
    B, T, d, V = 3, 7, 5, 11
    h = torch.randn(B, T, d, generator=g, dtype=dtype)
    w = torch.randn(V, d, generator=g, dtype=dtype)
    targets = torch.randint(0, V, (B, T), generator=g)
    m = {
        "none": None,
        "random": torch.randint(0, 2, (B, T), generator=g),
        "empty": torch.zeros(B, T),
    }[mask]
    got = _loss_and_grads(chunked_next_token_loss, h, w, targets, m, chunk=chunk)
    want = _loss_and_grads(_full, h, w, targets, m)
    assert got[1].dtype == got[2].dtype == dtype  # (next_token_loss's own loss is float32)
    for x, y in zip(got, want):
        torch.testing.assert_close(x.double(), y.double(), rtol=1e-6, atol=1e-6)
    if mask == "empty":
        assert got[0].item() == 0.0 and not got[1].abs().any() and not got[2].abs().any()


def test_chunked_keeps_float64():
    """float64 inputs stay float64 throughout: the loss and gradients match a float64
    log-softmax reference to 1e-12 (next_token_loss itself rounds logits to float32)."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    w = torch.randn(9, 4, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 9, (2, 5), generator=g)

    def exact(h, w, targets):
        logp = torch.log_softmax(h @ w.T, dim=-1)
        return -logp.gather(-1, targets[..., None]).mean()

    got = _loss_and_grads(chunked_next_token_loss, h, w, targets, chunk=3)
    want = _loss_and_grads(exact, h, w, targets)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_chunked_under_bf16_autocast():
    """Under bf16 autocast the logits are bf16 matrix products, as nn.Linear's would be, and the
    softmax is float32: the loss and ∂L/∂h equal the full path's; ∂L/∂W differs only by bf16
    rounding (blocks are rounded one by one and summed in float32). Gradients come back in the
    inputs' float32."""
    g = torch.Generator().manual_seed(2)
    h = torch.randn(4, 33, 16, generator=g)
    w = torch.randn(50, 16, generator=g)
    targets = torch.randint(0, 50, (4, 33), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _loss_and_grads(chunked_next_token_loss, h, w, targets, chunk=40)
        want = _loss_and_grads(_full, h, w, targets)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[2], want[2], rtol=2e-2, atol=2e-2 * float(want[2].abs().max()))


def test_chunked_without_grad():
    """Under no_grad (evaluation) the chunked loss is the plain loss value."""
    g = torch.Generator().manual_seed(3)
    h, w = torch.randn(2, 6, 4, generator=g), torch.randn(7, 4, generator=g)
    targets = torch.randint(0, 7, (2, 6), generator=g)
    with torch.no_grad():
        got = chunked_next_token_loss(h, w, targets, chunk=5)
    torch.testing.assert_close(got, next_token_loss(h @ w.T, targets))


def test_chunked_no_grad_loss_and_repeat_calls():
    """The loss is the same number with and without gradients (no_grad skips the gradient work
    only), two forward + backward passes give identical gradients (nothing carries over between
    calls), and the gradients formed in forward scale with the incoming gradient: (3 L)' = 3 L'."""
    g = torch.Generator().manual_seed(4)
    h = torch.randn(2, 9, 6, generator=g)
    w = torch.randn(13, 6, generator=g)
    targets = torch.randint(0, 13, (2, 9), generator=g)
    mask = torch.randint(0, 2, (2, 9), generator=g)
    with torch.no_grad():
        plain = chunked_next_token_loss(h, w, targets, mask, chunk=4)
    first = _loss_and_grads(chunked_next_token_loss, h, w, targets, mask, chunk=4)
    second = _loss_and_grads(chunked_next_token_loss, h, w, targets, mask, chunk=4)
    assert torch.equal(plain, first[0].detach())
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    (3.0 * chunked_next_token_loss(hh, ww, targets, mask, chunk=4)).backward()
    torch.testing.assert_close(hh.grad, 3.0 * first[1])
    torch.testing.assert_close(ww.grad, 3.0 * first[2])


def test_chunked_gradient_for_one_input_only():
    """Only the weight (a frozen encoder) or only the hidden states (a frozen head) needing a
    gradient: that one gradient equals the full path's."""
    g = torch.Generator().manual_seed(5)
    h = torch.randn(3, 5, 4, generator=g)
    w = torch.randn(8, 4, generator=g)
    targets = torch.randint(0, 8, (3, 5), generator=g)
    want = _loss_and_grads(_full, h, w, targets)
    for i, x in enumerate((h.clone().requires_grad_(), w.clone().requires_grad_())):
        args = (x, w) if i == 0 else (h, x)
        (grad,) = torch.autograd.grad(chunked_next_token_loss(*args, targets, chunk=6), x)
        torch.testing.assert_close(grad, want[1 + i], rtol=1e-6, atol=1e-6)
