"""The engine's CPU allocator setting (the rest of the engine is exercised by every stage's
tests and the DDP tests)."""

import subprocess
import sys
import textwrap

import pytest
import torch

from rlfm.engine import Engine

FAULTS = textwrap.dedent(
    """
    import resource, torch
    from rlfm.engine import reuse_freed_memory

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.ReLU(), torch.nn.Linear(512, 128))
    x = torch.randn(3840, 128)

    def faults():  # ten training steps of an MLP block at a Decision Transformer batch's size
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            mlp(x).square().mean().backward()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults(), faults()
    first = faults()
    ok = reuse_freed_memory()
    faults()
    print(first, faults(), ok)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reuse_freed_memory_stops_the_page_faults_of_repeated_allocations():
    """Training steps of an MLP block (3840 × 128 → 512 → 128): by default glibc keeps handing
    freed activations back to the kernel and faults them in again (thousands of page faults
    per ten steps, even after its thresholds adapt); once freed memory is kept, the steps
    reuse it."""
    out = subprocess.run(
        [sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True
    ).stdout.split()
    before, after, ok = int(out[0]), int(out[1]), out[2]
    assert ok == "True"
    assert before >= 2_000, before
    assert after < before / 4, (before, after)


def test_only_a_cpu_engine_changes_the_allocator(monkeypatch):
    calls = []
    monkeypatch.setattr("rlfm.engine.reuse_freed_memory", lambda: calls.append(1) or True)
    assert Engine(torch.device("cpu"), "fp32").reuse_freed_cpu_memory()
    assert not Engine(torch.device("cuda"), "fp32").reuse_freed_cpu_memory()
    assert calls == [1]
