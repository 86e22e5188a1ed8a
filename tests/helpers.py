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


def kill_at_random_moment(
    args: list[str], out: Path, seed: int, max_delay: float, env: dict | None = None
) -> None:
    """Start the command, wait for its first checkpoint, SIGKILL it a random 0..max_delay s
    later; fail if it had already finished (the test would then prove nothing)."""
    proc = start(*args, env=env)
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


def torchrun(
    *args: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m rlfm ARGS`` (gloo on the CPU) on a free port of its own,
    one at a time across the test workers: two 2-process jobs at once on a 2-core machine
    starve each other's collectives (runs of 15 s took 300 s)."""
    import fcntl
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(port)]
    with open(Path(tempfile.gettempdir()) / "rlfm-tests-torchrun.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return subprocess.run(
            [*cmd, "-m", "rlfm", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env or ENV,
        )


def write_plays(folder: Path, n_plays: int = 4, scenes: int = 6, seed: int = 0) -> Path:
    """Fake `*_gut.txt` plays in the built-in corpus's layout (the last one a validation play),
    so the built-in task runs offline."""
    from rlfm.data.corpora import VAL_PLAYS

    names_ = ["Romeo", "Juliet", "Hamlet", "Ophelia", "Viola", "Orsino"]
    words = ["good", "morrow", "sweet", "night", "my", "lord", "lady", "farewell", "gentle", "sir"]
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    plays = [f"play{i}" for i in range(n_plays - 1)] + [VAL_PLAYS[0]]
    for name in plays:
        lines = [name.upper(), ""]
        for act in range(1, scenes + 1):
            lines += [f"ACT {act}.", "", "SCENE 1. A hall.", ""]
            for _ in range(8):
                speaker = rng.choice(names_)
                speech = " ".join(rng.choice(words) for _ in range(rng.randint(2, 7)))
                lines += [f"{speaker}.", speech.capitalize() + ".", ""]
        (folder / f"{name}_gut.txt").write_text("\n".join(lines), encoding="utf-8")
    return folder


def tiny_gpt2(text: str, folder: Path, n_positions: int = 128) -> tuple[Any, Any]:
    """A random one-layer GPT-2 and a 300-token BPE tokenizer trained on ``text``, saved as a
    model directory in ``folder``: (model, tokenizer)."""
    from transformers import GPT2Config

    from rlfm.models.presets import build_model
    from rlfm.models.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer([text] * 20, 300)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=n_positions,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = build_model(cfg, seed=0).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok
