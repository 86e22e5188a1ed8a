"""The engine's CPU allocator setting (the rest of the engine is exercised by every stage's
tests and the DDP tests)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rlfm.engine import Engine

FAULTS = textwrap.dedent(
    """
    import ctypes, resource, statistics, torch
    from rlfm.engine import reuse_freed_memory

    ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: count 4 KiB pages everywhere
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.ReLU(), torch.nn.Linear(512, 128))
    x = torch.randn(3840, 128)

    def faults():  # ten training steps of an MLP block at a Decision Transformer batch's size
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            mlp(x).square().mean().backward()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults()
    first = statistics.median(faults() for _ in range(3))
    ok = reuse_freed_memory()
    faults()  # the switch itself: the heap grows once to hold what was mapped before
    print(first, statistics.median(faults() for _ in range(5)), ok)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reuse_freed_memory_stops_the_page_faults_of_repeated_allocations():
    """Training steps of an MLP block (3840 × 128 → 512 → 128) with glibc serving large blocks
    from fresh mappings, as it does until its adaptive threshold has seen them: every step
    faults its activations in anew (~100k page faults per ten steps). Once freed memory is kept,
    the steps reuse it. The threshold is pinned by glibc's own environment variable because how
    far it adapts by itself depends on the machine and the run (480 to 37k faults per ten
    steps here, 1,057 on another machine), which a test cannot rely on; transparent huge pages
    are switched off for the process, so a system that has them always on counts the same
    4 KiB faults."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))  # glibc's default value
    out = subprocess.run(
        [sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    before, after, ok = float(out[0]), float(out[1]), out[2]
    assert ok == "True"
    assert before >= 20_000, before
    assert after < before / 20, (before, after)


def test_only_a_cpu_engine_changes_the_allocator(monkeypatch):
    calls = []
    monkeypatch.setattr("rlfm.engine.reuse_freed_memory", lambda: calls.append(1) or True)
    assert Engine(torch.device("cpu"), "fp32").reuse_freed_cpu_memory()
    assert not Engine(torch.device("cuda"), "fp32").reuse_freed_cpu_memory()
    assert calls == [1]
