"""Preferences over trajectory segments: Spearman by hand, the oracle, and a learned Pendulum
reward that ranks held-out segments like the true return."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlfm.errors import ConfigError, DataError
from rlfm.models.heads import StepRewardMLP
from rlfm.offline.segments import collect_episodes, cut_segments, oracle_pairs, spearman
from rlfm.stages import reward_segments
from rlfm.tracking import read_metrics
from tests.helpers import assert_same_run, flags, kill_at_random_moment, rlfm, torchrun


def test_spearman_by_hand():
    """x = (1, 2, 3, 4), y = (1, 3, 2, 4): rank differences (0, 1, 1, 0), ρ = 1 − 6·2/(4·15) =
    0.8; reversed order gives −1; ties get average ranks ((1, 1, 2) vs (1, 2, 3): ρ = 0.866025)."""
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 3, 2, 4])) == pytest.approx(
        0.8
    )
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0, 1, 2]), torch.tensor([1.0, 2, 3])) == pytest.approx(
        0.866025, abs=1e-6
    )


def test_segments_and_oracle():
    """Pendulum episodes of 60 steps cut into 20-step segments give 3 per episode with the
    summed true reward; a noise-free oracle always prefers the higher return, one with
    error_rate 0.25 is wrong on about a quarter of 4000 comparisons."""
    eps = collect_episodes("Pendulum-v1", 4, seed=0, max_steps=60)
    seg = cut_segments(eps, 20)
    assert seg.features.shape == (12, 20, 4)  # cos θ, sin θ, θ̇, torque
    assert torch.allclose(seg.returns[1], torch.tensor(eps[0].rewards[20:40].sum()))
    pairs = oracle_pairs(seg.returns, 500, seed=0)
    assert (seg.returns[pairs[:, 0]] > seg.returns[pairs[:, 1]]).all()
    noisy = oracle_pairs(seg.returns, 4000, error_rate=0.25, seed=0)
    wrong = float((seg.returns[noisy[:, 0]] < seg.returns[noisy[:, 1]]).double().mean())
    assert 0.22 < wrong < 0.28


def test_constant_reward_and_unknown_env_are_clear_errors():
    """CartPole's segments all return +1 per step: the oracle has no preference (DataError);
    an unknown environment id is a ConfigError naming it."""
    seg = cut_segments(collect_episodes("CartPole-v1", 3, seed=0), 5)
    with pytest.raises(DataError, match="same true return"):
        oracle_pairs(seg.returns, 10)
    with pytest.raises(ConfigError, match="NoSuchEnv-v0"):
        collect_episodes("NoSuchEnv-v0", 1)


def test_learned_reward_ranks_held_out_segments(tmp_path):
    """Trained on 1,500 comparisons of a 10%-noisy oracle over Pendulum-v1 segments, Σ r̂ over
    held-out segments has Spearman ≥ 0.8 with the true return; the saved model reloads."""
    out = tmp_path / "seg"
    summary = reward_segments.train(
        reward_segments.Config(
            out=out,
            env="Pendulum-v1",
            episodes=20,
            val_episodes=8,
            pairs=1500,
            error_rate=0.1,
            steps=150,
            eval_every=150,
            save_every=150,
            log_every=50,
        )
    )
    assert summary["val_spearman"] >= 0.8, summary
    assert json.loads((out / "eval.json").read_text())["val_spearman"] == summary["val_spearman"]
    assert (out / "plots" / "segments.png").stat().st_size > 1000
    model = StepRewardMLP.from_pretrained(out / "checkpoints" / "step_150")
    assert model(torch.zeros(7, 4)).shape == (7,)


SEGMENT_ARGS = dict(
    env="Pendulum-v1",
    episodes=8,
    val_episodes=4,
    pairs=600,
    steps=1200,
    batch_size=32,
    eval_every=600,
    save_every=100,
    log_every=100,
    keep_checkpoints=20,
)


def test_sigkill_at_a_random_moment_then_resume_ends_as_uninterrupted(tmp_path):
    """SIGKILL at a random moment after the first checkpoint, the same command again: the
    same losses at every logged step and the same held-out Spearman as an uninterrupted run."""
    ref = tmp_path / "ref"
    reward_segments.train(reward_segments.Config(out=ref, **SEGMENT_ARGS))
    out = tmp_path / "run"
    cmd = ["reward", "train-segments", "--out", str(out), *flags(**SEGMENT_ARGS)]
    kill_at_random_moment(cmd, out, seed=3, max_delay=0.5)
    r = rlfm(*cmd)
    assert r.returncode == 0 and "resuming from" in r.stderr, r.stderr[-2000:]
    assert_same_run(ref, out, ("loss", "accuracy", "val_spearman", "val_accuracy"))


def test_two_process_ddp_matches_one_process(tmp_path):
    """torchrun --nproc_per_node 2 (gloo) logs the losses of one process that accumulates the
    same global batch in two micro-batches."""
    args = dict(SEGMENT_ARGS, steps=200, eval_every=200, save_every=200, log_every=50)
    one = tmp_path / "one"
    reward_segments.train(reward_segments.Config(out=one, micro_batch_size=16, **args))
    two = tmp_path / "two"
    r = torchrun("reward", "train-segments", "--out", str(two), *flags(**args))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [x["step"] for x in a] == [x["step"] for x in b] == [50, 100, 150, 200]
    for x, y in zip(a, b):
        assert math.isclose(x["loss"], y["loss"], rel_tol=1e-4), (x, y)
    assert math.isclose(a[-1]["val_spearman"], b[-1]["val_spearman"], rel_tol=1e-4)
