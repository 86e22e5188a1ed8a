"""Pre-training as a user runs it: outputs, learning, resume after SIGKILL, DDP, bad data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlfm.checkpoint import checkpoints
from rlfm.models.presets import build_model, model_config
from rlfm.stages import pretrain
from rlfm.tracking import read_metrics
from tests.helpers import assert_same_run, flags, kill_at_random_moment, rlfm, torchrun

ARGS = dict(
    model="tiny",
    vocab_size=400,
    context=32,
    batch_size=8,
    steps=120,
    warmup_steps=10,
    lr=3e-3,
    eval_every=40,
    save_every=20,
    keep_checkpoints=10,
    log_every=10,
    eval_batches=4,
    samples=2,
    max_new_tokens=12,
    precision="fp32",
    device="cpu",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, corpus_file):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    os.environ["RLFM_OFFLINE"] = "1"
    summary = pretrain.train(pretrain.Config(out=out, data=corpus_file, **ARGS))
    return out, summary


def test_writes_every_output(tiny_run):
    """config.yaml, metrics.jsonl with the documented keys, TensorBoard, loss.png, ≥ 3 HF
    checkpoints that load with plain transformers, samples.jsonl."""
    out, _ = tiny_run
    assert (out / "config.yaml").is_file()
    rows = read_metrics(out / "metrics.jsonl")
    assert {"step", "loss", "lr", "tokens_per_s"} <= set(rows[0])
    assert any("val_loss" in r and "val_ppl" in r for r in rows)
    assert any(p.name.startswith("events") for p in (out / "tb").iterdir())
    assert (out / "plots" / "loss.png").stat().st_size > 1000
    ckpts = checkpoints(out)
    assert len(ckpts) >= 3 and ckpts[-1].name == "step_120"
    model = AutoModelForCausalLM.from_pretrained(ckpts[-1])
    tok = AutoTokenizer.from_pretrained(ckpts[-1])
    assert tok.pad_token_id != tok.eos_token_id
    assert model.config.vocab_size == len(tok)
    assert (ckpts[-1] / "config.yaml").is_file()
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(isinstance(s["sample"], str) for s in samples)


def test_validation_loss_falls_well_below_unigram(tiny_run):
    """The model uses context: validation loss < 0.6 × the unigram baseline's."""
    _, summary = tiny_run
    assert summary["val_loss"] < 0.6 * summary["unigram_val_loss"], summary
    assert math.isclose(summary["val_ppl"], math.exp(summary["val_loss"]), rel_tol=1e-6)


def test_kill_and_resume_ends_where_uninterrupted_run_ends(tiny_run, tmp_path, corpus_file):
    """SIGKILL at a random moment after the first checkpoint, rerun the same command: the
    resumed run logs the same losses as the uninterrupted run at every step and ends with the
    same validation loss."""
    ref_out, _ = tiny_run
    out = tmp_path / "run"
    cmd = ["pretrain", "--out", str(out), "--data", str(corpus_file), *flags(**ARGS)]
    kill_at_random_moment(cmd, out, seed=0, max_delay=0.5)
    r = rlfm(*cmd)
    assert r.returncode == 0 and "resuming from" in r.stderr, r.stderr
    assert_same_run(ref_out, out, ("loss", "val_loss"))


def test_two_process_ddp_matches_one_process(tmp_path, corpus_file):
    """torchrun --nproc_per_node 2 (gloo, CPU) gives the loss curve of one process with the
    same global batch (here: one process accumulating two micro-batches)."""
    args = dict(ARGS, steps=20, eval_every=20, save_every=20, log_every=5, samples=0)
    one = tmp_path / "one"
    pretrain.train(pretrain.Config(out=one, data=corpus_file, micro_batch_size=4, **args))
    two = tmp_path / "two"
    r = torchrun("pretrain", "--out", str(two), "--data", str(corpus_file), *flags(**args))
    assert r.returncode == 0, r.stderr[-3000:]
    a = read_metrics(one / "metrics.jsonl")
    b = read_metrics(two / "metrics.jsonl")
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b):
        assert math.isclose(x["loss"], y["loss"], rel_tol=2e-4), (x, y)
    assert math.isclose(a[-1]["val_loss"], b[-1]["val_loss"], rel_tol=2e-4)


@pytest.mark.parametrize("preset", ["tiny", "llama-tiny"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_chunked_loss_matches_model_logits(preset, bf16):
    """GPT-2 (head tied to the embedding) and Llama (untied head): the chunked loss from the
    base model's hidden states gives the loss and every parameter's gradient of the model's
    own logits."""
    model = build_model(model_config(preset, vocab_size=300, context=32), seed=0)
    head = pretrain.plain_head_weight(model)
    assert head is model.get_output_embeddings().weight
    rows = torch.randint(0, 300, (3, 18), generator=torch.Generator().manual_seed(0))
    results = []
    for weight in (None, head):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = pretrain.lm_loss(model, rows, weight)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (full, full_grads), (chunked, chunked_grads) = results
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=1e-6)
    for a, b in zip(chunked_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_models_with_other_heads_keep_the_full_logits():
    """A head with a bias, or soft-capped logits, is not plain h Wᵀ: no chunked loss."""
    model = build_model(model_config("tiny", vocab_size=300, context=32), seed=0)
    model.config.final_logit_softcapping = 30.0
    assert pretrain.plain_head_weight(model) is None
    model.config.final_logit_softcapping = None
    model.lm_head = torch.nn.Linear(128, 300, bias=True)
    assert pretrain.plain_head_weight(model) is None


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlfm", "pretrain", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (
            lambda p: (p / "empty.txt").write_text("") and p / "empty.txt" or p / "empty.txt",
            "empty",
        ),
        (
            lambda p: (p / "blob.bin").write_bytes(b"\x00\x01\x02binary\xff") and p / "blob.bin",
            "binary|UTF-8",
        ),
    ],
    ids=["missing", "empty", "binary"],
)
def test_bad_data_is_a_clear_error(tmp_path, make, message):
    """A missing, empty or binary --data file exits 2 with a message naming the file."""
    path: Path = make(tmp_path)
    r = _cli("--out", str(tmp_path / "run"), "--data", str(path))
    assert r.returncode == 2, r.stderr
    assert path.name in r.stderr and "Traceback" not in r.stderr
    import re

    assert re.search(message, r.stderr), r.stderr


def test_sample_command_reads_a_run_directory(tiny_run):
    """`rlfm sample --model <run dir>` loads the newest checkpoint and prints samples."""
    out, _ = tiny_run
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlfm",
            "sample",
            "--model",
            str(out),
            "--prompt",
            "romeo",
            "--num-samples",
            "2",
            "--max-new-tokens",
            "8",
            "--jsonl",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 2 and rows[0]["prompt"] == "romeo"
