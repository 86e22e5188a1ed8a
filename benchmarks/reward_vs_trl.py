"""Reward-model training throughput: rlfm's ``reward train`` against TRL's ``RewardTrainer``.

Same model, same data, same machine, in one run, for three kinds of data:

- **pairs** — ``{prompt, chosen, rejected}``; both sides train the same comparisons.
- **K=4** and **K=8 rankings** — ``{prompt, completions, ranking}``. rlfm trains each ranking as
  one batch element: the prompt once, each completion once, all C(K,2) pair losses from the K
  rewards (InstructGPT). TRL has no ranking format, so it trains the C(K,2) expanded pairs
  (``{prompt, chosen, rejected}`` rows), two sequences each, as users of TRL must.

Throughput is **comparisons per second** (one comparison = one labelled pair) while training:
rlfm's is the ``comparisons_per_s`` it logs to ``metrics.jsonl`` (collation, forward, backward,
clipping, optimizer step; not evaluation or checkpoints), averaged over the logged windows after
the first (warm-up); TRL's is (pairs per step) × (steps) / (time from the end of the warm-up
steps to the end of the last step), stamped by a ``TrainerCallback``. Both sides run about the
same number of sequences per step (64): TRL 32 pairs, rlfm 32 pairs / 16 K=4 rankings / 8 K=8
rankings. Both use bf16 autocast (TRL's ``RewardConfig`` default; rlfm's ``--precision auto``
on a CPU with bf16 units), AdamW at the same learning rate, no dropout, gradient clipping at 1.
TRL runs with ``gradient_checkpointing=False`` (its default is True, which recomputes
activations and is slower): the comparison is against TRL's fastest setting.

Model and data: a BPE tokenizer (8,192 tokens) and a randomly initialised GPT-2 of the rlfm
``small`` preset shape (4 layers, 256 wide) saved as a Hugging Face directory, loaded by both
sides (TRL as ``AutoModelForSequenceClassification``, whose ``score`` head is the same scalar
head). Prompts are dialogue prompts of the built-in Shakespeare corpus (cached by
``rlfm pretrain``; synthetic sentences otherwise), completions are replies from the plays, at
most 40 words each, as in the built-in preference task.

Each contender runs in its own process (peak RSS is that process's, read with ``os.wait4``),
``--rounds`` times, interleaved (the order flips every round); the best round of each is
reported, since other work on a shared machine can only slow a run down.

TRL version: trl 1.12.0 (``pip install -e '.[bench]'``) works with transformers 5.24 as is.

Run (from the repository root, after ``pip install -e '.[bench]'``):
    python benchmarks/reward_vs_trl.py                 # all three cases
    python benchmarks/reward_vs_trl.py --cases pairs --steps 20
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_child, table  # noqa: E402

SEQS_PER_STEP = 64
"""Completion sequences per optimizer step on both sides."""
LR = 5e-5
CASES = {"pairs": 2, "k4": 4, "k8": 8}


def make_assets(root: Path, n_prompts: int, seed: int = 0) -> dict:
    """Tokenizer + model directory and the three data sets (rlfm files and TRL pair files)."""
    from rlfm.data.corpora import load_builtin_corpus
    from rlfm.data.dialogue import dialogue_pairs
    from rlfm.data.sft import render_dialogue_prompt
    from rlfm.models.presets import build_model, model_config
    from rlfm.models.tokenizer import save_tokenizer, train_bpe_tokenizer

    rng = random.Random(seed)
    corpus = load_builtin_corpus()
    pairs = [p for d in corpus.train for p in dialogue_pairs(d)]
    pairs = [p for p in pairs if len(p.context.split()) <= 40 and len(p.reply.split()) <= 40]
    if len(pairs) < 100:  # offline fallback corpus: synthetic dialogue
        words = [
            "good",
            "my",
            "lord",
            "sir",
            "thanks",
            "noble",
            "gentle",
            "pray",
            "the",
            "moon",
            "night",
            "day",
            "love",
            "fair",
        ]
        from rlfm.data.dialogue import DialoguePair

        pairs = [
            DialoguePair(
                "synthetic",
                "Romeo",
                " ".join(rng.choice(words) for _ in range(rng.randint(5, 30))),
                "Juliet",
                " ".join(rng.choice(words) for _ in range(rng.randint(3, 30))),
            )
            for _ in range(5000)
        ]
    replies = [p.reply for p in pairs]
    tok = train_bpe_tokenizer([d.text for d in corpus.train], 8192)
    cfg = model_config(
        "small",
        vocab_size=len(tok),
        context=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model_dir = root / "model"
    build_model(cfg, seed=0).save_pretrained(model_dir)
    save_tokenizer(tok, model_dir)
    files = {}
    for case, k in CASES.items():
        rl_rows, trl_rows = [], []
        for p in rng.sample(pairs, n_prompts):
            prompt = render_dialogue_prompt(p.context_speaker, p.context, p.reply_speaker)
            comps = list(dict.fromkeys([p.reply] + rng.sample(replies, k + 2)))[:k]
            order = list(range(k))
            rng.shuffle(order)
            if k == 2:
                rl_rows.append(
                    {"prompt": prompt, "chosen": comps[order[0]], "rejected": comps[order[1]]}
                )
            else:
                rl_rows.append({"prompt": prompt, "completions": comps, "ranking": order})
            for a, b in itertools.combinations(order, 2):  # a is ranked above b
                trl_rows.append({"prompt": prompt, "chosen": comps[a], "rejected": comps[b]})
        rl_file, trl_file = root / f"{case}-rlfm.jsonl", root / f"{case}-trl.jsonl"
        rl_file.write_text("".join(json.dumps(r) + "\n" for r in rl_rows), encoding="utf-8")
        trl_file.write_text("".join(json.dumps(r) + "\n" for r in trl_rows), encoding="utf-8")
        files[case] = (str(rl_file), str(trl_file))
    return {"model": str(model_dir), "files": files}


# ---------------------------------------------------------------------------- contenders


def child_trl(model_dir: str, data: str, steps: int, warmup: int, out: str) -> None:
    """TRL's RewardTrainer on expanded pairs; writes {comparisons_per_s} to ``out``."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    ds = load_dataset("json", data_files=data, split="train")
    batch = SEQS_PER_STEP // 2
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    args = RewardConfig(
        output_dir=str(Path(out).parent / "trl-out"),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=LR,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        gradient_checkpointing=False,
        bf16=True,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=10_000,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Stamp()]
    )
    trainer.train()
    timed = len(stamps) - warmup
    rate = timed * batch / (stamps[-1] - stamps[warmup - 1])
    Path(out).write_text(json.dumps({"comparisons_per_s": rate, "steps": len(stamps)}))


def rlfm_command(
    model_dir: str, data: str, k: int, steps: int, out: Path, log_every: int
) -> list[str]:
    rankings = SEQS_PER_STEP // k
    return [
        sys.executable, "-m", "rlfm", "reward", "train",
        "--model", model_dir, "--data", data, "--out", str(out),
        "--steps", str(steps), "--batch-size", str(rankings), "--lr", str(LR),
        "--warmup-steps", "0", "--max-length", "256", "--log-every", str(log_every),
        "--eval-every", str(steps), "--save-every", str(steps), "--norm-samples", "2",
        "--sample-tokens", "4", "--precision", "auto", "--device", "cpu",
    ]  # fmt: skip


def rlfm_rate(out: Path) -> float:
    """Mean logged comparisons/s over the windows after the first (warm-up)."""
    from rlfm.tracking import read_metrics

    rates = [
        r["comparisons_per_s"]
        for r in read_metrics(out / "metrics.jsonl")
        if "comparisons_per_s" in r
    ]
    return sum(rates[1:]) / len(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=25, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--prompts", type=int, default=400, help="prompts per data set")
    parser.add_argument("--rounds", type=int, default=2, help="runs per contender (best kept)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        child_trl(a.child[0], a.child[1], int(a.child[2]), int(a.child[3]), a.child[4])
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import trl

    root = Path(tempfile.mkdtemp(prefix="reward-bench-"))
    print(f"building model and data in {root} ...", flush=True)
    assets = make_assets(root, a.prompts)
    results, rows = {}, []
    for case in a.cases:
        k = CASES[case]
        rl_file, trl_file = assets["files"][case]
        best = {"rlfm": (0.0, None), "trl": (0.0, None)}
        for rnd in range(a.rounds):  # interleaved, order flipped every round; best round kept
            for who in ("rlfm", "trl") if rnd % 2 == 0 else ("trl", "rlfm"):
                if who == "rlfm":
                    out = root / f"rlfm-{case}-{rnd}"
                    cmd = rlfm_command(assets["model"], rl_file, k, a.steps, out, a.warmup)
                else:
                    out = root / f"trl-{case}-{rnd}.json"
                    cmd = [sys.executable, __file__, "--child", assets["model"], trl_file]
                    cmd += [str(a.steps), str(a.warmup), str(out)]
                r = run_child(cmd, root / f"{who}-{case}-{rnd}.log")
                if r.returncode != 0:
                    sys.exit(f"{who} {case} failed:\n{r.tail()}")
                rate = (
                    rlfm_rate(out)
                    if who == "rlfm"
                    else json.loads(out.read_text())["comparisons_per_s"]
                )
                print(
                    f"  {case} round {rnd + 1} {who}: {rate:,.1f} comparisons/s, {r.peak_rss_mib:,.0f} MiB",
                    flush=True,
                )
                if rate > best[who][0]:
                    best[who] = (rate, r)
        (rl, r1), (tr, r2) = best["rlfm"], best["trl"]
        results[case] = {
            "rlfm_comparisons_per_s": rl,
            "trl_comparisons_per_s": tr,
            "speedup": rl / tr,
            "rlfm_peak_rss_mib": r1.peak_rss_mib,
            "trl_peak_rss_mib": r2.peak_rss_mib,
        }
        rows.append([
            case, f"{rl:,.1f}", f"{tr:,.1f}", f"{rl / tr:.2f}x",
            f"{r1.peak_rss_mib:,.0f}", f"{r2.peak_rss_mib:,.0f}", f"{r2.peak_rss_mib / r1.peak_rss_mib:.2f}x",
        ])  # fmt: skip
        print(f"{case}: rlfm {rl:,.1f} vs TRL {tr:,.1f} comparisons/s ({rl / tr:.2f}x)", flush=True)
    print(f"\nreward-model training, small GPT-2 (4 x 256), bf16, CPU, TRL {trl.__version__}")
    print(table(
        ["data", "rlfm cmp/s", "TRL cmp/s", "speed-up", "rlfm MiB", "TRL MiB", "TRL/rlfm mem"], rows
    ))  # fmt: skip
    print("targets: pairs >= 1.5x, K=4 >= 3x, K=8 >= 6x (comparisons/s)")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
