"""Helpers the stage tests share: running the CLI in a subprocess, killing it, comparing runs."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rlfm.checkpoint import checkpoints
from rlfm.tracking import read_metrics

ENV = dict(os.environ, OMP_NUM_THREADS="1", RLFM_OFFLINE="1")


def flags(**kw: Any) -> list[str]:
    """``--name value`` for each keyword (booleans as --name / --no-name)."""
    out: list[str] = []
    for k, v in kw.items():
        name = k.replace("_", "-")
        if isinstance(v, bool):
            out.append(f"--{name}" if v else f"--no-{name}")
        elif isinstance(v, list | tuple):
            out += [f"--{name}", *map(str, v)]
        else:
            out += [f"--{name}", str(v)]
    return out


def rlfm(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m rlfm ARGS`` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "rlfm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or ENV,
    )


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m rlfm ARGS`` in the background (stderr kept for messages)."""
    return subprocess.Popen(
        [sys.executable, "-m", "rlfm", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env or ENV,
    )


def wait_until(proc: subprocess.Popen, ready: Any, timeout: float = 240) -> None:
    """Poll until ``ready()``; fail with the process's stderr if it ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended (status {proc.returncode}) first:\n{proc.stderr.read()}"
            )
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def kill_at_random_moment(args: list[str], out: Path, seed: int, max_delay: float) -> None:
    """Start the command, wait for its first checkpoint, SIGKILL it a random 0..max_delay s
    later; fail if it had already finished (the test would then prove nothing)."""
    proc = start(*args)
    wait_until(proc, lambda: bool(checkpoints(out)))
    time.sleep(random.Random(seed).uniform(0.0, max_delay))
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def assert_same_run(ref: Path, got: Path, keys: tuple[str, ...], rel: float = 1e-5) -> None:
    """Two runs logged the same steps with the same values of ``keys``, and wrote the same
    final summary."""
    a = {r["step"]: r for r in read_metrics(ref / "metrics.jsonl")}
    b = {r["step"]: r for r in read_metrics(got / "metrics.jsonl")}
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))  # no step logged twice, none missing
    for step, row in a.items():
        for key in keys:
            if key in row:
                assert math.isclose(b[step][key], row[key], rel_tol=rel, abs_tol=1e-7), (step, key)
    sa = json.loads((ref / "summary.json").read_text())["metrics"]
    sb = json.loads((got / "summary.json").read_text())["metrics"]
    for key in keys:
        if key in sa:
            assert math.isclose(sa[key], sb[key], rel_tol=rel, abs_tol=1e-7), key
