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
    # rlfm, profiled: forward 0.02 + backward 0.03 of a 0.06 s step = 5/6 of it. The peer's
    # profiled step 0.1 s over (5/6 x 0.06 s = 0.05 s) = 2x. Plain steps do not enter.
    rl = {"forward": 0.02, "backward": 0.03, "step": 0.06, "plain": 0.5}
    share, top = profile_step.ceiling(rl, {"step": 0.1, "plain": 9.0})
    assert share == pytest.approx(5 / 6)
    assert top == pytest.approx(2.0)
    # forward + backward counted over warm-up steps can exceed the timed step: capped at 1
    share, top = profile_step.ceiling(rl | {"step": 0.04}, {"step": 0.1})
    assert share == 1.0
    assert top == pytest.approx(2.5)
