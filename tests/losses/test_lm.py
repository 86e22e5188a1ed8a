"""Language-modelling loss against numbers worked out by hand."""

import math

import torch

from rlfm.losses.lm import next_token_loss, unigram_cross_entropy


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
