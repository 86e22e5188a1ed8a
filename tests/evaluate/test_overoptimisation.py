"""Over-optimisation analysis: the functional forms' fits recover known coefficients, the
analytic best-of-n KL matches a Monte-Carlo estimate, the best-of-n expectation matches
enumeration, a PPO run's curve is read relative to its start, the gold rule's terms are
averaged per update, and the proxy's agreement with gold on pairs of one prompt's replies is
counted by hand."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch

from rlfm.evaluate.overoptimisation import (
    Fit,
    best_of_n_expectation,
    best_of_n_weights,
    bon_kl,
    fit,
    gold_parts_by_update,
    pair_agreement,
    plot_overoptimisation,
    ppo_curve,
    proxy_agreement,
)


@pytest.mark.parametrize(("form", "alpha", "beta"), [("bon", 1.7, 0.45), ("rl", 0.9, 0.3)])
def test_fits_recover_known_coefficients(form, alpha, beta):
    """Points of R(d) = d(α − βd) or d(α − β log d) at 25 values of d in (0, 4], with Gaussian
    noise of sd 0.01, give back α and β within 2%; the peak is where dR/dd = 0: α/(2β) for
    best-of-n, exp(α/β − 1) for RL."""
    truth = Fit(form, alpha, beta)
    rng = random.Random(0)
    d = [0.16 * i for i in range(1, 26)]
    r = [truth(x) + rng.gauss(0, 0.01) for x in d]
    got = fit(form, d, r)
    assert got.alpha == pytest.approx(alpha, rel=0.02)
    assert got.beta == pytest.approx(beta, rel=0.02)
    expected_peak = alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)
    assert truth.peak == pytest.approx(expected_peak)
    h = 1e-5
    assert (truth(truth.peak + h) - truth(truth.peak - h)) / (2 * h) == pytest.approx(0, abs=1e-6)


def test_a_fit_needs_two_points_away_from_the_start():
    with pytest.raises(ValueError, match="at least 2 points"):
        fit("bon", [0.0, 1.0], [0.0, 0.5])


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_best_of_n_kl_matches_monte_carlo(n):
    """Best-of-n over a categorical base distribution of 20,000 outcomes with distinct rewards
    (so, nearly continuous): P_bon(i) = F(i)ⁿ − F(i−1)ⁿ with outcomes sorted by reward;
    KL(π_bon ‖ π) estimated from 200,000 best-of-n draws as the mean of log P_bon/P agrees with
    log n − (n−1)/n within 0.02 nats."""
    g = torch.Generator().manual_seed(n)
    M = 20_000
    p = torch.rand(M, generator=g, dtype=torch.float64) + 0.1
    p /= p.sum()  # outcomes in reward order: index = rank of the reward
    F = p.cumsum(0)
    p_bon = F.pow(n) - torch.cat([torch.zeros(1, dtype=torch.float64), F[:-1]]).pow(n)
    draws = torch.multinomial(p, 200_000 * n, replacement=True, generator=g).view(-1, n)
    best = draws.max(dim=1).values  # the highest reward of n draws
    kl_mc = float((p_bon[best] / p[best]).log().mean())
    assert kl_mc == pytest.approx(bon_kl(n), abs=0.02)


def test_best_of_n_expectation_matches_enumeration():
    """For N = 7 samples and every n ≤ N, the weighted formula equals the average, over all
    C(N, n) subsets, of the value of the subset's proxy-best sample; n = 1 is the plain mean,
    n = N the proxy's argmax."""
    g = torch.Generator().manual_seed(0)
    proxy = torch.randn(3, 7, generator=g, dtype=torch.float64)
    value = torch.randn(3, 7, generator=g, dtype=torch.float64)
    for n in range(1, 8):
        got = best_of_n_expectation(proxy, value, n)
        for b in range(3):
            subsets = list(itertools.combinations(range(7), n))
            picks = [max(s, key=lambda i: proxy[b, i]) for s in subsets]
            want = sum(float(value[b, i]) for i in picks) / len(subsets)
            assert float(got[b]) == pytest.approx(want, abs=1e-12)
        assert float(best_of_n_weights(7, n).sum()) == pytest.approx(1.0)
    assert torch.allclose(best_of_n_expectation(proxy, value, 1), value.mean(1))


def test_ppo_curve_and_plot(tmp_path):
    """A PPO run's held-out evaluations become (update, √KL, proxy − proxy₀, gold − gold₀);
    the plot is written only when there are two or more."""
    rows = [
        {"step": 0, "eval_score": 0.1, "eval_gold": 0.5, "eval_kl": 0.0},
        {"step": 5, "score": 1.0},
        {"step": 10, "eval_score": 1.1, "eval_gold": 1.5, "eval_kl": 4.0},
        {"step": 20, "eval_score": 2.1, "eval_gold": 0.0, "eval_kl": 16.0},
    ]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pts = ppo_curve(metrics)
    assert [(p["update"], p["d"]) for p in pts] == [(0, 0.0), (10, 2.0), (20, 4.0)]
    assert [p["proxy"] for p in pts] == pytest.approx([0.0, 1.0, 2.0])
    assert [p["gold"] for p in pts] == pytest.approx([0.0, 1.0, -0.5])
    assert plot_overoptimisation(metrics, tmp_path / "o.png").stat().st_size > 5000
    metrics.write_text(json.dumps(rows[0]) + "\n")
    assert plot_overoptimisation(metrics, tmp_path / "none.png") is None


def test_gold_parts_by_update_splits_each_held_out_reply_into_the_rules_terms(tmp_path):
    """Worked by hand (data/labelers.py), prompt "Romeo. Good morrow, cousin. / Benvolio.":
    "Good morrow, sir, sir." has courtesy +2 (good, sir), relevance +1 (good, morrow shared),
    length −1 (4 words, 4 short of 8), repetition −0.5 (sir, sir), form 0: text 1.5, so a
    stored gold of 1.8 leaves fluency +0.3. "Away" has courtesy 0, relevance −0.5 (nothing
    shared), length −1.75 (1 word), form −0.5 (no full stop): text −2.75; stored −4.75 leaves
    fluency −2. Training rows and rows without a gold score are not counted."""
    prompt = "Romeo.\nGood morrow, cousin.\n\nBenvolio.\n"
    rows = [
        {
            "step": 0,
            "split": "held-out",
            "prompt": prompt,
            "response": "Away\n\nmore",
            "score": -1.0,
            "gold": -4.75,
        },
        {
            "step": 0,
            "split": "held-out",
            "prompt": prompt,
            "response": " Good morrow, sir, sir.",
            "score": 1.0,
            "gold": 1.8,
        },
        {
            "step": 0,
            "split": "train",
            "prompt": prompt,
            "response": "Away",
            "score": 9.0,
            "gold": 9.0,
        },
        {
            "step": 6,
            "split": "held-out",
            "prompt": prompt,
            "response": "Good morrow, sir, sir.",
            "score": 2.0,
            "gold": 1.8,
        },
        {
            "step": 6,
            "split": "held-out",
            "prompt": prompt,
            "response": "Away",
            "score": 5.0,
            "gold": None,
        },
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = gold_parts_by_update(path)
    assert [r["update"] for r in got] == [0, 6]
    expect0 = dict(
        courtesy=1.0,
        relevance=0.25,
        length=-1.375,
        repetition=-0.25,
        form=-0.25,
        fluency=-0.85,
        gold=-1.475,
        proxy=0.0,
        words=2.5,
    )
    expect6 = dict(
        courtesy=2.0,
        relevance=1.0,
        length=-1.0,
        repetition=-0.5,
        form=0.0,
        fluency=0.3,
        gold=1.8,
        proxy=2.0,
        words=4.0,
    )
    for row, expect in zip(got, (expect0, expect6)):
        for key, value in expect.items():
            assert row[key] == pytest.approx(value), key


def test_gold_parts_by_update_is_empty_without_a_gold_labeler(tmp_path):
    path = tmp_path / "samples.jsonl"
    row = {"step": 0, "split": "held-out", "prompt": "x", "response": "y", "score": 0.0}
    path.write_text(json.dumps(row) + "\n")
    assert gold_parts_by_update(path) == []


def _held_out(step, prompt, gold, score):
    return {
        "step": step,
        "split": "held-out",
        "prompt": prompt,
        "response": "r",
        "score": score,
    } | ({} if gold is None else {"gold": gold})


def test_pair_agreement_counts_pairs_of_one_prompts_replies_by_hand():
    """Prompt A at updates 0, 6, 12: gold 0, 1, 2, proxy 0, 2, 1 — pairs (0,6) and (0,12) agree,
    (6,12) does not. Prompt B: gold 1, 1, 0, proxy 0.5 throughout — (0,6) has equal gold and is
    skipped, (0,12) and (6,12) are proxy ties, half each. All: (1 + 1 + 0 + ½ + ½) / 5 = 0.6.
    Late pairs (both from update ≥ 6): A's (6,12) 0, B's (6,12) ½: 0.25 of 2."""
    rows = [
        ("A", 0, 0.0, 0.0),
        ("A", 6, 1.0, 2.0),
        ("A", 12, 2.0, 1.0),
        ("B", 0, 1.0, 0.5),
        ("B", 6, 1.0, 0.5),
        ("B", 12, 0.0, 0.5),
    ]
    got = pair_agreement(rows, late_from=6)
    assert got["all"] == (pytest.approx(0.6), 5)
    assert got["late"] == (pytest.approx(0.25), 2)
    # no late pair at all: nan, 0
    none = pair_agreement(rows, late_from=13)["late"]
    assert math.isnan(none[0]) and none[1] == 0


def test_proxy_agreement_reads_held_out_replies_and_defaults_late_to_the_runs_second_half(
    tmp_path,
):
    """From samples.jsonl: training rows and rows without gold are ignored; the default late
    pairs are those from the second half of the run (update ≥ 24 of 48)."""
    rows = [
        _held_out(0, "A", 0.0, 0.0),
        _held_out(24, "A", 1.0, 1.0),  # agrees with update 0
        _held_out(48, "A", 2.0, 0.5),  # agrees with 0, not with 24 (late)
        _held_out(48, "B", None, 9.0),  # no gold: ignored
        {"step": 48, "split": "train", "prompt": "A", "response": "r", "score": -5.0, "gold": 9.0},
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = proxy_agreement(path)
    assert got["late_from"] == 24
    assert got["all"] == (pytest.approx(2 / 3), 3)
    assert got["late"] == (pytest.approx(0.0), 1)
    assert proxy_agreement(path, late_from=48)["late"][1] == 0
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps(_held_out(0, "A", None, 0.0)) + "\n")
    assert proxy_agreement(empty) is None
