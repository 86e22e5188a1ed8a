"""Agreement statistics and rank aggregation: small examples worked by hand, and the same
figures as scikit-learn, `krippendorff` and SciPy on random data."""

from __future__ import annotations

import math
import random

import krippendorff
import numpy as np
import pytest
from scipy.stats import kendalltau
from sklearn.metrics import cohen_kappa_score

from rlfm.feedback import agreement as ag


def test_comparisons_and_pairwise_agreement():
    """levels [0, 2, 1]: pairs (0,1), (0,2), (1,2) → 0 ahead of 1 (+1), 0 ahead of 2 (+1),
    1 behind 2 (−1). Against [0, 1, 2] (+1, +1, +1) two of three pairs agree; a tie agrees
    only with a tie."""
    assert ag.comparisons([0, 2, 1]) == [1, 1, -1]
    assert ag.pairwise_agreement([0, 1, 2], [0, 2, 1]) == (2, 3)
    assert ag.pairwise_agreement([0, 0, 1], [0, 0, 1]) == (3, 3)
    assert ag.pairwise_agreement([0, 0, 1], [0, 1, 2]) == (2, 3)


def test_cohen_kappa_by_hand():
    """a = 1 1 0 0, b = 1 0 0 0: p_o = 3/4; marginals a (½, ½), b (¼, ¾) so p_e = ½·¼ + ½·¾
    = ½; κ = (¾ − ½)/(1 − ½) = 0.5.

    Linear weights, labels 1 2 3, a = 1 2 3, b = 1 3 3: the only disagreement (2, 3) weighs 1
    and has proportion ⅓; expected Σ w·r·c = ⅓·(0·⅓ + 2·⅔) + ⅓·(1·⅓ + 1·⅔) + ⅓·(2·⅓ + 0·⅔)
    = ⅓·(4/3 + 1 + 2/3) = 1; κ = 1 − ⅓/1 = ⅔."""
    assert ag.cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    assert ag.cohen_kappa([1, 2, 3], [1, 3, 3], "linear", labels=[1, 2, 3]) == pytest.approx(2 / 3)
    assert ag.cohen_kappa([1, 1], [1, 1]) is None  # one category only: undefined
    assert ag.cohen_kappa([], []) is None


def test_fleiss_kappa_by_hand_and_fleiss_example():
    """Two raters who always agree: P_u = 1, p = (½, ½), P̄_e = ½, κ = 1; who always split:
    P_u = 0, κ = (0 − ½)/½ = −1. The 10 subjects × 14 raters × 5 categories example (Fleiss
    1971, as tabulated on Wikipedia): P̄ = 0.378, P̄_e = 0.213, κ = 0.210."""
    assert ag.fleiss_kappa([[2, 0], [0, 2]]) == pytest.approx(1.0)
    assert ag.fleiss_kappa([[1, 1], [1, 1]]) == pytest.approx(-1.0)
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert ag.fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)
    assert ag.fleiss_kappa([[1, 0]]) is None  # one rater: nothing to agree on


def test_krippendorff_alpha_by_hand():
    """Raters (1, 1, 2) and (1, 2, 2) on three units: coincidences o_11 = 2, o_12 = o_21 = 1,
    o_22 = 2; n_1 = n_2 = 3, n = 6; D_o = 2/6; D_e = (3·3 + 3·3)/(6·5) = 0.6;
    α = 1 − (1/3)/0.6 = 4/9. A unit rated once is left out; no variation → undefined."""
    assert ag.krippendorff_alpha([[1, 1, 2], [1, 2, 2]]) == pytest.approx(4 / 9)
    assert ag.krippendorff_alpha([[1, 1, 2, 1], [1, 2, 2, None]]) == pytest.approx(4 / 9)
    assert ag.krippendorff_alpha([[1, 1], [1, 1]]) is None


def test_kendall_tau_by_hand():
    """(1, 2, 3) vs (1, 3, 2): 2 concordant, 1 discordant pair → τ = 1/3. (1, 1, 2) vs
    (1, 2, 3): n_c = 2, n_d = 0, n_0 = 3, one pair tied in the first → τ_b = 2/√(2·3)."""
    assert ag.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert ag.kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    assert ag.kendall_tau([0, 0], [0, 1]) is None


def test_ranked_pairs_breaks_a_cycle_by_the_weakest_margin():
    """3 × A>B>C, 2 × B>C>A, 2 × C>A>B: margins A−B = 5−2 = 3, B−C = 5−2 = 3, C−A = 4−3 = 1.
    A>B and B>C are locked in; C>A would close a cycle and is skipped: A > B > C."""
    rankings = [[0, 1, 2]] * 3 + [[2, 0, 1]] * 2 + [[1, 2, 0]] * 2
    assert ag.ranked_pairs(rankings, 3) == [0, 1, 2]
    assert ag.ranked_pairs([[0, 1], [1, 0]], 2) == [0, 0]  # no majority: a tie
    assert ag.ranked_pairs([[1, 0, 2]], 3) == [1, 0, 2]  # one ranking is its own aggregate


def test_bradley_terry_by_hand():
    """A beats B 3 times of 4: the likelihood (p_A/(p_A+p_B))³ (p_B/(p_A+p_B)) is largest at
    p_A/p_B = 3, so the log-strengths (mean 0) are ±ln(3)/2."""
    scores = ag.bradley_terry([[0, 1]] * 3 + [[1, 0]], 2, prior=0.0)
    assert scores == pytest.approx([math.log(3) / 2, -math.log(3) / 2], abs=1e-6)
    # one output always first: the prior keeps the estimate finite and the order right
    scores = ag.bradley_terry([[0, 1, 2]] * 5, 3)
    assert all(math.isfinite(s) for s in scores) and scores[0] > scores[1] > scores[2]
    assert ag.levels_from_scores([0.5, 2.0, 0.5]) == [1, 0, 1]


# ---------------------------------------------------------------------------- reference implementations


@pytest.mark.parametrize("seed", range(5))
def test_cohen_kappa_matches_scikit_learn(seed):
    rng = random.Random(seed)
    a = [rng.randint(1, 7) for _ in range(60)]
    b = [min(7, max(1, x + rng.choice([-2, -1, 0, 0, 1]))) for x in a]
    labels = list(range(1, 8))
    assert ag.cohen_kappa(a, b, labels=labels) == pytest.approx(
        cohen_kappa_score(a, b, labels=labels)
    )
    for w in ("linear", "quadratic"):
        ref = cohen_kappa_score(a, b, labels=labels, weights=w)
        assert ag.cohen_kappa(a, b, w, labels=labels) == pytest.approx(ref)
    c = [rng.choice([-1, 0, 1]) for _ in range(40)]
    d = [x if rng.random() < 0.7 else rng.choice([-1, 0, 1]) for x in c]
    assert ag.cohen_kappa(c, d) == pytest.approx(cohen_kappa_score(c, d))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_krippendorff_alpha_matches_the_krippendorff_package(seed, level):
    rng = random.Random(seed)
    truth = [rng.randint(1, 7) for _ in range(30)]
    data = []
    for _ in range(4):
        row = []
        for t in truth:
            v = min(7, max(1, t + rng.choice([-1, 0, 0, 1])))
            row.append(None if rng.random() < 0.2 else v)
        data.append(row)
    ref = krippendorff.alpha(
        reliability_data=np.array(
            [[np.nan if v is None else v for v in r] for r in data], dtype=float
        ),
        level_of_measurement=level,
    )
    assert ag.krippendorff_alpha(data, level) == pytest.approx(ref)


@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_matches_scipy(seed):
    rng = random.Random(seed)
    a = [rng.randint(0, 4) for _ in range(8)]  # with ties
    b = [rng.randint(0, 4) for _ in range(8)]
    ref = kendalltau(a, b).statistic
    ours = ag.kendall_tau(a, b)
    assert (ours is None and math.isnan(ref)) or ours == pytest.approx(ref)


@pytest.mark.parametrize("seed", range(3))
def test_pairwise_agreement_matches_a_plain_loop(seed):
    rng = random.Random(seed)
    for _ in range(20):
        k = rng.randint(2, 7)
        a = [rng.randint(0, 3) for _ in range(k)]
        b = [rng.randint(0, 3) for _ in range(k)]
        same = total = 0
        for i in range(k):
            for j in range(i + 1, k):
                total += 1
                same += (a[i] < a[j]) == (b[i] < b[j]) and (a[i] == a[j]) == (b[i] == b[j])
        assert ag.pairwise_agreement(a, b) == (same, total)


def test_aggregates_recover_a_known_order_from_noisy_rankings():
    """Seven noisy labelers rank five outputs whose true order is 0 > 1 > 2 > 3 > 4 (score
    gaps 1, noise σ 0.35: a labeler swaps two neighbours with probability Φ(−1/(0.35·√2)) ≈ 2%): both aggregates put the outputs back in the true order."""
    rng = random.Random(0)
    truth = [4.0, 3.0, 2.0, 1.0, 0.0]
    rankings = []
    for _ in range(7):
        s = [t + rng.gauss(0, 0.35) for t in truth]
        rankings.append(ag.levels_from_scores(s))
    assert ag.ranked_pairs(rankings, 5) == [0, 1, 2, 3, 4]
    assert ag.levels_from_scores(ag.bradley_terry(rankings, 5)) == [0, 1, 2, 3, 4]
