"""Preferences over trajectory segments: Spearman by hand, the oracle, and a learned Pendulum
reward that ranks held-out segments like the true return."""

from __future__ import annotations

import json

import pytest
import torch

from rlfm.errors import ConfigError, DataError
from rlfm.models.heads import StepRewardMLP
from rlfm.offline.segments import collect_episodes, cut_segments, oracle_pairs, spearman
from rlfm.stages import reward_segments


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
