"""rlfm control prefs: segments cut within episodes, queries chosen by ensemble disagreement,
the label budget kept, PPO on the learned reward, the true return reported."""

from __future__ import annotations

import random

import torch

from rlfm.stages import control_prefs
from rlfm.stages.control_prefs import Labels, RewardEnsemble, ask_oracle, cut_rollout
from rlfm.tracking import read_metrics


def test_segments_never_cross_an_episode_end():
    """T = 7, one environment, an episode ends at t = 2, length 2: segments [0, 1] and then,
    from t = 3, [3, 4] and [5, 6] ([2] alone is the episode's short tail)."""
    features = torch.arange(7.0).reshape(7, 1, 1)
    rewards = torch.arange(7.0).reshape(7, 1)
    done = torch.zeros(7, 1, dtype=torch.bool)
    done[2, 0] = True
    segs = cut_rollout(features, rewards, done, 2)
    assert [s[0].flatten().tolist() for s in segs] == [[0.0, 1.0], [3.0, 4.0], [5.0, 6.0]]
    assert [s[1] for s in segs] == [1.0, 7.0, 11.0]


def test_queries_go_to_the_most_disputed_pair():
    """Two members that agree on every segment but the one with feature 5 ask about a pair
    containing it; the oracle's label follows the true returns."""
    torch.manual_seed(0)
    ens = RewardEnsemble(1, 2, 4)
    with torch.no_grad():
        for k, m in enumerate(ens.members):
            for p in m.parameters():
                p.zero_()
            m.net[-1].bias.fill_(0.0)
            m.net[0].weight.fill_(1.0 if k == 0 else -1.0)  # differ only where the input is > 0
            m.net[-1].weight.fill_(1.0)
    labels = Labels(100, seed=0)
    labels.add_segments([(torch.full((3, 1), float(v)), float(v)) for v in (-1, -2, -3, 5)])
    assert ask_oracle(labels, ens, 1, candidates=50, error_rate=0.0, rng=random.Random(0)) == 1
    w, lo = labels.winners[0], labels.losers[0]
    assert 5.0 in (float(w[0, 0]), float(lo[0, 0])) and float(w.sum()) > float(lo.sum())


def test_prefs_run_keeps_its_label_budget(tmp_path):
    """A short Pendulum run: labels arrive on schedule and never exceed the budget, the reward
    models train, the true return is evaluated (every eval_every steps rounded up to whole
    updates), the run resumes as finished."""
    preset = tmp_path / "ppo.yaml"
    preset.write_text("n_envs: 1\nn_steps: 512\n")
    cfg = control_prefs.Config(
        env="Pendulum-v1",
        ppo_config=preset,
        out=tmp_path / "prefs",
        steps=4 * 512,
        labels=40,
        initial_labels=0.5,
        label_fraction=0.5,
        segment_length=20,
        reward_steps=10,
        eval_every=1000,  # not a whole number of 512-step updates: rounded up to 1024
        log_every=512,
        eval_episodes=2,
    )
    summary = control_prefs.train(cfg)
    rows = read_metrics(cfg.out / "metrics.jsonl")
    labels = [r["labels"] for r in rows if "labels" in r]
    assert labels == sorted(labels) and labels[-1] == 40 and labels[0] >= 20
    assert "reward_loss" in rows[0] and "eval_return" in rows[-1]
    assert [r["step"] for r in rows if "eval_return" in r] == [1024, 2048]
    assert summary["labels"] == 40
    assert control_prefs.train(cfg) == summary  # already finished: nothing more is asked
