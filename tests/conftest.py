"""Shared fixtures: a small synthetic corpus whose next token depends on its context, and
settings that keep every test on the CPU, offline and fast."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

# Test models are tiny: one thread each is faster than two fighting over the cores, and the
# suite runs in two worker processes (pytest -n 2) to use both.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"  # the same in every subprocess: same numbers as in-process

NAMES = ["romeo", "juliet", "hamlet", "ophelia", "lear", "cordelia", "viola", "orsino"]
VERBS = ["greets", "thanks", "follows", "answers", "praises", "warns"]


def synthetic_text(n_lines: int = 3000, seed: int = 0) -> str:
    """Lines like 'romeo greets juliet . juliet answers romeo .': the second clause repeats the
    names of the first in swapped order, so a model that reads the context beats a unigram one."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        a, b = rng.sample(NAMES, 2)
        lines.append(f"{a} {rng.choice(VERBS)} {b} . {b} {rng.choice(VERBS)} {a} .")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(synthetic_text(), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """No test downloads anything; the corpus cache is a fresh temporary directory."""
    monkeypatch.setenv("RLFM_OFFLINE", "1")
    monkeypatch.setenv("RLFM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
