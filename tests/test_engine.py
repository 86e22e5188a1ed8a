"""The engine's process settings: glibc's malloc keeps freed activation-sized blocks."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

# in a fresh process: the test runner may run tests off the main thread, whose malloc arena
# trims differently
FAULTS = """
import json, resource, torch
from rlfm.engine import keep_freed_memory

def faults(n=10):
    torch.empty(2 * 2**20).fill_(1.0)  # the first use may fault the block in once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.empty(2 * 2**20).fill_(1.0)  # 8 MiB of float32, freed at once
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

before = faults()
applied = keep_freed_memory()
print(json.dumps({"before": before, "applied": applied, "after": faults()}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_after_keep_freed_memory_a_reused_8_mib_block_page_faults_no_more():
    """Before the call each fresh 8 MiB tensor is mapped anew and faulted in page by page
    (2,048 pages of 4 KiB); after it the freed block is reused without a fault."""
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["applied"]
    assert got["before"] > 1000, got
    assert got["after"] < 20, got
