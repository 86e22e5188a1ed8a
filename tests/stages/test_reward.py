"""The reward stage as a user runs it: it recovers a known preference, normalises on reference
samples, reports, resumes, builds the built-in set with simulated labelers, rejects bad data."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest
import torch
from transformers import GPT2Config

from rlfm.checkpoint import checkpoints
from rlfm.cli import main as cli_main
from rlfm.models.heads import RewardModel
from rlfm.models.presets import build_model
from rlfm.models.tokenizer import save_tokenizer, train_bpe_tokenizer
from rlfm.stages import reward
from rlfm.tracking import read_metrics
from tests.helpers import assert_same_run, flags, kill_at_random_moment, rlfm, torchrun

WORDS = ["romeo", "juliet", "greets", "thanks", "follows", "answers", "."]
X = "gold"

ARGS = dict(
    steps=24,
    batch_size=8,
    lr=2e-3,
    warmup_steps=4,
    eval_every=12,
    save_every=12,
    log_every=10,
    max_length=48,
    norm_samples=24,
    max_new_tokens=10,
    precision="fp32",
    device="cpu",
)


def completion(rng: random.Random, n_x: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))] + [X] * n_x
    rng.shuffle(words)
    return " " + " ".join(words)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A tiny GPT-2 directory, and preference data where more of the word X is better:
    pairs and rankings of K = 3..4 (with ties) over prompts of random words."""
    root = tmp_path_factory.mktemp("reward")
    rng = random.Random(0)
    text = " ".join(rng.choice(WORDS + [X]) for _ in range(4000))
    tok = train_bpe_tokenizer([text], 300)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model_dir = root / "lm"
    build_model(cfg, seed=0).save_pretrained(model_dir)
    save_tokenizer(tok, model_dir)
    rows = []
    for i in range(300):
        prompt = " ".join(rng.choice(WORDS) for _ in range(3)) + f" {i} :"
        if i % 3 == 0:
            a, b = rng.sample(range(4), 2)
            ca, cb = completion(rng, a), completion(rng, b)
            rows.append(
                {"prompt": prompt, "chosen": ca if a > b else cb, "rejected": cb if a > b else ca}
            )
        else:
            counts = [rng.randint(0, 4) for _ in range(rng.choice([3, 4]))]
            if len(set(counts)) == 1:
                counts[0] += 1
            comps = [completion(rng, c) for c in counts]
            levels = sorted(set(counts), reverse=True)
            ranking = [[j for j, c in enumerate(counts) if c == lv] for lv in levels]
            ranking = [g[0] if len(g) == 1 else g for g in ranking]
            rows.append({"prompt": prompt, "completions": comps, "ranking": ranking})
    data = root / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return model_dir, data


@pytest.fixture(scope="module")
def trained(task, tmp_path_factory):
    model_dir, data = task
    out = tmp_path_factory.mktemp("rm") / "run"
    summary = reward.train(reward.Config(model=model_dir, data=data, out=out, **ARGS))
    return out, summary


def test_recovers_a_known_preference(trained):
    """More of token X is better: the reward model orders ≥ 95% of held-out comparisons right,
    and its reward grows with the number of X."""
    out, summary = trained
    assert summary["val_accuracy"] >= 0.95, summary
    rm = RewardModel.from_pretrained(checkpoints(out)[-1])
    rng = random.Random(5)
    base = [completion(rng, 0) for _ in range(20)]
    scores = [rm.score([b + f" {X}" * n for b in base], ["romeo : "] * 20).mean() for n in range(4)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


def test_normalised_on_reference_samples(trained):
    """The final model's rewards of the reference policy's samples have mean 0 and standard
    deviation 1 (rescored from reference_samples.jsonl with the saved model)."""
    out, summary = trained
    rows = [json.loads(x) for x in (out / "reference_samples.jsonl").read_text().splitlines()]
    assert len(rows) == ARGS["norm_samples"]
    rm = RewardModel.from_pretrained(checkpoints(out)[-1])
    r = rm.score([x["completion"] for x in rows], [x["prompt"] for x in rows], max_length=48)
    assert abs(float(r.mean())) < 1e-4 and abs(float(r.std()) - 1) < 1e-4
    meta = json.loads((checkpoints(out)[-1] / "config.json").read_text())["rlfm_head"]
    assert math.isclose(meta["gain"], summary["gain"], rel_tol=1e-6) and meta["gain"] != 1.0
    assert not (checkpoints(out)[-1] / "head.json").exists()


def test_transformers_alone_gives_the_normalised_rewards(trained):
    """The saved reward model is a one-label AutoModelForSequenceClassification: transformers
    alone reads it (score at the last non-pad token, the EOS) and its output plus the stored
    offset is rlfm's normalised reward, to 1e-5."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlfm.models.heads import encode_sequence

    out, _ = trained
    ckpt = checkpoints(out)[-1]
    rows = [json.loads(x) for x in (out / "reference_samples.jsonl").read_text().splitlines()]
    rows = rows[:8]
    hf = AutoModelForSequenceClassification.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    seqs = [encode_sequence(tok, x["prompt"], x["completion"], 48) for x in rows]
    ids = torch.full((len(seqs), max(map(len, seqs))), tok.pad_token_id)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    with torch.no_grad():
        logits = hf(ids, attention_mask=(ids != tok.pad_token_id).long()).logits[:, 0]
    want = RewardModel.from_pretrained(ckpt).score(
        [x["completion"] for x in rows], [x["prompt"] for x in rows], max_length=48
    )
    torch.testing.assert_close(logits + hf.config.rlfm_head["offset"], want, atol=1e-5, rtol=0)


def test_writes_reports_and_scores_from_the_command_line(trained):
    """config, metrics (loss, accuracy, comparisons/s, val), eval.json (accuracy, calibration),
    the three plots; `rlfm reward score --model <run>` prints one reward per text."""
    out, _ = trained
    assert (out / "config.yaml").is_file()
    rows = read_metrics(out / "metrics.jsonl")
    assert {"loss", "accuracy", "comparisons_per_s", "lr"} <= set(rows[0])
    assert any("val_accuracy" in r for r in rows)
    report = json.loads((out / "eval.json").read_text())
    assert report["val_accuracy"] >= 0.95 and len(report["calibration"]["counts"]) == 10
    for name in ("loss", "calibration", "rewards"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlfm",
            "reward",
            "score",
            "--model",
            str(out),
            "--text",
            f" romeo {X} {X} {X}",
            " romeo juliet",
            "--jsonl",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    got = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(got) == 2 and got[0]["reward"] > got[1]["reward"]


def test_sigkill_at_a_random_moment_then_resume_ends_as_uninterrupted(task, tmp_path):
    """A reward run SIGKILLed at a random moment after its first checkpoint resumes with the
    same command: same losses at every step, same held-out accuracy and normalisation."""
    model_dir, data = task
    args = dict(ARGS, steps=48, save_every=6, eval_every=24, log_every=6, norm_samples=8)
    ref = tmp_path / "ref"
    reward.train(reward.Config(model=model_dir, data=data, out=ref, **args))
    out = tmp_path / "run"
    cmd = ["reward", "train", "--model", str(model_dir), "--data", str(data), "--out", str(out)]
    cmd += flags(**args)
    kill_at_random_moment(cmd, out, seed=2, max_delay=1.0)
    r = rlfm(*cmd)
    assert r.returncode == 0 and "resuming from" in r.stderr, r.stderr[-2000:]
    assert_same_run(ref, out, ("loss", "val_loss", "val_accuracy", "gain", "bias"))


def test_built_in_task_with_simulated_labelers(task, tmp_path):
    """Without --data the reference policy samples K = 4 replies per prompt, simulated labelers
    rank them into <out>/preferences/*.jsonl (with gold scores), and the report includes the
    agreement with the gold labeler."""
    model_dir, _ = task
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"romeo {i} :"}) + "\n" for i in range(16)))
    out = tmp_path / "builtin"
    args = dict(ARGS, steps=2, eval_every=2, save_every=2, norm_samples=8, max_new_tokens=8)
    summary = reward.train(
        reward.Config(model=model_dir, prompts=prompts, out=out, val_fraction=0.25, **args)
    )
    rows = [json.loads(x) for x in (out / "preferences" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(len(r["completions"]) == 4 and "gold" in r for r in rows)
    assert (out / "preferences" / "val.jsonl").is_file()
    assert 0.0 <= summary["gold_agreement"] <= 1.0


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "completions": [" a", " b"], "ranking": [0, 0]}, "permutation"),
        ({"prompt": "p", "chosen": " a", "rejected": " a"}, "identical"),
        ({"prompt": "p", "completions": [" a"], "ranking": [0]}, "at least 2"),
    ],
    ids=["not-a-permutation", "identical", "one-completion"],
)
def test_bad_data_is_a_clear_error_before_training(task, tmp_path, capsys, row, message):
    """`rlfm reward train` on a file with a bad row exits 2 naming the file and line, without
    a traceback and before any checkpoint."""
    model_dir, data = task
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text().splitlines()[0] + "\n" + json.dumps(row) + "\n")
    with pytest.raises(SystemExit) as e:
        cli_main(
            [
                "reward",
                "train",
                "--model",
                str(model_dir),
                "--data",
                str(bad),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{bad}: line 2" in err and message in err, err
    assert not (tmp_path / "o" / "checkpoints").exists()
    assert torch.is_tensor(torch.zeros(1))  # torch still importable after the CLI's exit


def test_two_process_ddp_matches_one_process(task, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) logs the losses of one process that accumulates
    the same global batch in two micro-batches, and writes one normalised model."""

    model_dir, data = task
    args = dict(ARGS, steps=4, eval_every=4, save_every=4, log_every=2, norm_samples=4)
    one = tmp_path / "one"
    reward.train(reward.Config(model=model_dir, data=data, out=one, micro_batch_size=4, **args))
    two = tmp_path / "two"
    cmd = ["reward", "train", "--model", str(model_dir), "--data", str(data), "--out", str(two)]
    r = torchrun(*cmd, *flags(**args))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [x["step"] for x in a] == [x["step"] for x in b] == [2, 4]
    for x, y in zip(a, b):
        assert math.isclose(x["loss"], y["loss"], rel_tol=1e-4), (x, y)
    assert math.isclose(a[-1]["val_loss"], b[-1]["val_loss"], rel_tol=1e-4)
    meta = json.loads((checkpoints(two)[-1] / "config.json").read_text())["rlfm_head"]
    assert meta["gain"] != 1.0


def test_lora_at_its_default_rate_learns_as_well_as_full(task, tmp_path):
    """At their default learning rates (full 5e-5, LoRA 5e-4), 24 steps of LoRA reach a
    held-out loss no worse than full fine-tuning's (measured on a 64-wide GPT-2 over 60 steps:
    full 0.28, LoRA 0.09); at full's rate, LoRA would lag."""
    model_dir, data = task
    args = {k: v for k, v in ARGS.items() if k != "lr"} | dict(
        steps=24, eval_every=24, save_every=24
    )
    losses = {}
    for adapter in ("full", "lora"):
        summary = reward.train(
            reward.Config(
                model=model_dir, data=data, out=tmp_path / adapter, adapter=adapter, **args
            )
        )
        losses[adapter] = summary["val_loss"]
    slow = reward.train(
        reward.Config(
            model=model_dir, data=data, out=tmp_path / "slow", adapter="lora", lr=5e-5, **args
        )
    )["val_loss"]
    assert losses["lora"] <= losses["full"] + 0.02 and slow > losses["lora"] + 0.05, (losses, slow)
