"""benchmarks/profile_step.py: the time it attributes to rlfm's training forward (calls from
the training loop only) and the ceiling it derives, on a profile of a small program and on
hand-made figures (no benchmark runs here, no timings asserted beyond what sleeps guarantee)."""

from __future__ import annotations

import cProfile
import importlib.util
import pstats
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

PROGRAM = """
import time

def batch_loss(seconds):
    time.sleep(seconds)

def evaluate():
    batch_loss(0.05)

def train():
    for _ in range(2):
        batch_loss(0.02)
    evaluate()
"""


@pytest.fixture(scope="module")
def profile_step():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_profile_step", BENCH / "profile_step.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_called_from_counts_only_the_caller_s_calls(profile_step, tmp_path):
    (tmp_path / "prog.py").write_text(PROGRAM)
    sys.path.insert(0, str(tmp_path))
    try:
        import prog

        prof = cProfile.Profile()
        prof.runcall(prog.train)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("prog", None)
    stats = pstats.Stats(prof)
    from_train = profile_step.called_from(stats, ("prog.py", "batch_loss"), ("prog.py", "train"))
    from_eval = profile_step.called_from(stats, ("prog.py", "batch_loss"), ("prog.py", "evaluate"))
    nobody = profile_step.called_from(stats, ("prog.py", "batch_loss"), ("other.py", "train"))
    total = sum(v[3] for k, v in stats.stats.items() if k[2] == "batch_loss")
    assert from_train >= 0.04  # two 20 ms calls
    assert from_eval >= 0.05  # the evaluation's one 50 ms call, not counted in from_train
    assert from_train + from_eval == pytest.approx(total)
    assert nobody == 0.0


def test_ceiling_by_hand(profile_step):
    # rlfm, profiled: 0.05 s of a 0.06 s step is arithmetic the peer does too = 5/6 of it. The
    # peer's profiled step 0.1 s over (5/6 x 0.06 s = 0.05 s) = 2x. Plain steps do not enter.
    rl = {"train": 0.05, "step": 0.06, "plain": 0.5}
    share, top = profile_step.ceiling(rl, {"step": 0.1, "plain": 9.0})
    assert share == pytest.approx(5 / 6)
    assert top == pytest.approx(2.0)
    # work counted over warm-up steps can exceed the timed step: capped at 1
    share, top = profile_step.ceiling(rl | {"step": 0.04}, {"step": 0.1})
    assert share == 1.0
    assert top == pytest.approx(2.5)


def test_phases_per_step(profile_step):
    """rlfm's SFT forward is batch_loss's calls from train (evaluation left out), ``train`` adds
    the backward; the peer has no ``train``; PPO's is its optimise function, all calls."""
    stats = _Stats(
        {
            ("/x/sft.py", 1, "batch_loss"): (
                3,
                3,
                0.0,
                0.9,
                {
                    ("/x/sft.py", 9, "train"): (2, 2, 0.0, 0.6),
                    ("/x/sft.py", 5, "evaluate"): (1, 1, 0.0, 0.3),
                },
            ),
            ("~", 0, profile_step.BACKWARD): (2, 2, 0.4, 0.4, {}),
            ("/t/modeling_gpt2.py", 7, "forward"): (3, 3, 0.0, 0.8, {}),
            ("/x/ppo.py", 3, "optimise"): (2, 2, 0.0, 1.0, {}),
        }
    )
    rl = profile_step.phases(stats, 2, "sft", "rlfm")
    assert rl == pytest.approx({"backward": 0.2, "forward": 0.3, "train": 0.5})
    peer = profile_step.phases(stats, 2, "sft", "trl")
    assert peer == pytest.approx({"backward": 0.2, "forward": 0.4})  # outermost forward
    assert profile_step.phases(stats, 2, "ppo", "rlfm")["train"] == pytest.approx(0.5)


class _Stats:
    """A stand-in for pstats.Stats: its ``stats`` mapping only."""

    def __init__(self, stats: dict):
        self.stats = stats
