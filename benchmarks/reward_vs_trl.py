"""Reward-model training throughput: rlfm's ``reward train`` against TRL's ``RewardTrainer``.

Same model, same comparisons per optimizer step, same precision, same machine, in one run, for
three kinds of data:

- **pairs** — ``{prompt, chosen, rejected}``; both sides train the same comparisons.
- **K=4** and **K=8 rankings** — ``{prompt, completions, ranking}``. rlfm trains each ranking as
  one batch element: the prompt once, each completion once, all C(K,2) pair losses from the K
  rewards (InstructGPT). TRL has no ranking format, so it trains the C(K,2) expanded pairs
  (``{prompt, chosen, rejected}`` rows), two sequences each, as users of TRL must.

**Equal comparisons per optimizer step**: rlfm trains R rankings per step (``--rankings``;
default 48 pairs, 8 K=4 rankings, 2 K=8 rankings), TRL R × C(K,2) pairs per step (48, 48, 56):
both optimizer steps see the same comparisons, so the two runs are the same optimisation
problem (one comparison = one labelled pair).

Settings, each side at what its documentation recommends for speed:
- rlfm: ``rlfm reward train`` as a user runs it (in-process, through ``rlfm.cli.main``), its
  defaults, ``--precision`` as below.
- TRL: ``RewardTrainer`` (trl 1.12), run twice per round: with transformers' default SDPA
  attention and with ``attn_implementation="eager"`` (faster on a CPU in bf16 at these lengths);
  the headline compares with the faster (``--peer-attention`` picks one). ``RewardConfig``
  defaults except
  ``gradient_checkpointing=False`` (its default True recomputes activations: slower),
  ``train_sampling_strategy="group_by_length"`` (batches of similar length, as rlfm's; the
  script adds the ``length`` column the sampler reads, the longer sequence of each pair), no
  evaluation, no saving, ``report_to=[]``, ``dataloader_num_workers=0``.
- Both: the same precision, ``--precision`` (default: bf16 autocast where the CPU has bf16, else
  fp32; TRL's ``bf16`` flag is set to match rather than left at its default), AdamW at the same
  learning rate, constant schedule, no dropout, gradient clipping at 1.

Measured the same way on both sides (``_common``): **comparisons/s** = comparisons per step ×
optimizer steps after ``--warmup`` ÷ the time from the end of the last warm-up step to the end of
the last step (a global optimizer post-step hook stamps both: total work over total time), and
**peak memory** above the RSS after all imports. Each contender runs in its own process,
``--rounds`` times (default 2), interleaved (the order flips every round); the table gives the
median round and the range.

Model and data: a BPE tokenizer and a randomly initialised GPT-2 of the ``--size`` shape saved
as a Hugging Face directory, loaded by both sides (TRL as
``AutoModelForSequenceClassification``, whose ``score`` head is the same scalar head). Prompts
are dialogue prompts of the built-in Shakespeare corpus (synthetic sentences when it is not
cached), completions are replies from the plays, at most 40 words each, as in the built-in
preference task.

Run (from the repository root, after ``bash scripts/setup.sh dev,bench``):
    python benchmarks/reward_vs_trl.py --size small
    python benchmarks/reward_vs_trl.py --cases pairs --steps 20 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    SIZES,
    MemoryAboveImports,
    StepStamps,
    add_peer_attention_arg,
    peer_variant_rows,
    print_rows,
    run_child,
    size_config,
    write_rows,
)

HERE = Path(__file__).resolve()
LR = 5e-5
CASES = {"pairs": 2, "k4": 4, "k8": 8}
RANKINGS = {"pairs": 48, "k4": 8, "k8": 2}
"""rlfm's rankings per optimizer step (TRL: these × C(K,2) pairs)."""
TARGETS = {"pairs": 2.0, "k4": 4.0, "k8": 8.0}
"""rlfm's comparisons/s over TRL's (issue 15)."""


def make_assets(root: Path, n_prompts: int, size: str, seed: int = 0) -> dict:
    """Tokenizer + model directory and the three data sets (rlfm files and TRL pair files)."""
    from rlfm.data.corpora import load_builtin_corpus
    from rlfm.data.dialogue import dialogue_pairs
    from rlfm.data.sft import render_dialogue_prompt
    from rlfm.models.presets import build_model
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
    tok = train_bpe_tokenizer([d.text for d in corpus.train], SIZES[size].vocab)
    cfg = size_config(size, tok)
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


def child_trl(spec: dict) -> None:
    """TRL's RewardTrainer on expanded pairs; writes its rate and memory to ``spec["out"]``."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    memory = MemoryAboveImports()
    stamps = StepStamps()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForSequenceClassification.from_pretrained(
        spec["model"], num_labels=1, attn_implementation=spec["attention"]
    )
    model.config.pad_token_id = tok.pad_token_id
    ds = load_dataset("json", data_files=spec["data"], split="train")
    args = RewardConfig(
        output_dir=str(Path(spec["out"]).parent / "trl-out"),
        per_device_train_batch_size=spec["pairs_per_step"],
        max_steps=spec["steps"],
        learning_rate=LR,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        gradient_checkpointing=False,
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,  # keep "length" for the sampler; the collator ignores it
        bf16=spec["precision"] == "bf16",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=10_000,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    # LengthGroupedSampler reads a "length" column (a pair pads to its longer sequence)
    trainer.train_dataset = trainer.train_dataset.map(
        lambda r: {"length": max(len(r["chosen_ids"]), len(r["rejected_ids"]))}
    )
    trainer.train()
    Path(spec["out"]).write_text(
        json.dumps(
            {
                "rate": stamps.rate(spec["warmup"], spec["pairs_per_step"]),
                "steps": len(stamps.ends),
                "peak_mib": memory.peak(),
                "mixed_precision": str(trainer.accelerator.mixed_precision),
            }
        )
    )


def rlfm_command(spec: dict) -> list[str]:
    """``rlfm reward train`` as a user runs it, under ``_stamped.py`` (same timing and memory)."""
    k = spec["k"]
    return [
        sys.executable, str(HERE.parent / "_stamped.py"), spec["out"], str(spec["warmup"]),
        str(spec["rankings"] * math.comb(k, 2)), "rlfm.stages.reward", "--",
        "reward", "train", "--model", spec["model"], "--data", spec["data"],
        "--out", str(Path(spec["out"]).parent / "rlfm-out"),
        "--steps", str(spec["steps"]), "--batch-size", str(spec["rankings"]), "--lr", str(LR),
        "--warmup-steps", "0", "--max-length", "256", "--log-every", str(spec["steps"]),
        "--eval-every", str(spec["steps"]), "--save-every", str(spec["steps"]),
        "--norm-samples", "2", "--sample-tokens", "4", "--precision", spec["precision"],
        "--device", "cpu",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="small", help="model size")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=25, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--prompts", type=int, default=400, help="prompts per data set")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs per contender")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    parser.add_argument(
        "--rankings", type=int, nargs=3, default=None, help="rlfm rankings per step: pairs K4 K8"
    )
    add_peer_attention_arg(parser)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        child_trl(json.loads(a.child.read_text()))
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import trl

    from rlfm.engine import bf16_supported

    if a.precision is None:
        a.precision = "bf16" if bf16_supported(torch.device("cpu")) else "fp32"
    rankings = dict(zip(CASES, a.rankings)) if a.rankings else RANKINGS
    root = Path(tempfile.mkdtemp(prefix="reward-bench-"))
    print(f"building the {a.size} model and data in {root} ...", flush=True)
    assets = make_assets(root, a.prompts, a.size)
    rows, details = [], {}
    for case in a.cases:
        k = CASES[case]
        rl_file, trl_file = assets["files"][case]
        per_step = rankings[case] * math.comb(k, 2)
        spec = {"model": assets["model"], "steps": a.steps, "warmup": a.warmup, "k": k}
        spec |= {"precision": a.precision, "rankings": rankings[case], "pairs_per_step": per_step}
        sides = ["rlfm"] + [f"trl-{x}" for x in a.peer_attention]
        got: dict[str, list[dict]] = {who: [] for who in sides}
        for rnd in range(a.rounds):  # interleaved, order reversed every round
            for who in sides if rnd % 2 == 0 else sides[::-1]:
                run_dir = root / f"{who}-{case}-{rnd}"
                run_dir.mkdir()
                out = run_dir / "result.json"
                if who == "rlfm":
                    cmd = rlfm_command(spec | {"data": rl_file, "out": str(out)})
                else:
                    spec_file = run_dir / "spec.json"
                    attn = who.removeprefix("trl-")
                    peer = spec | {"data": trl_file, "out": str(out), "attention": attn}
                    spec_file.write_text(json.dumps(peer))
                    cmd = [sys.executable, str(HERE), "--child", str(spec_file)]
                r = run_child(cmd, run_dir / "log.txt")
                if r.returncode != 0 or not out.is_file():
                    sys.exit(f"{who} {case} failed:\n{r.tail()}")
                res = json.loads(out.read_text())
                got[who].append(res)
                print(
                    f"  {case} round {rnd + 1} {who}: {res['rate']:,.1f} comparisons/s, "
                    f"+{res['peak_mib']:,.0f} MiB",
                    flush=True,
                )
        details[case] = got
        settings = (
            f"trl {trl.__version__} RewardTrainer, {a.precision}, gradient_checkpointing=False, "
            f"group_by_length, {per_step} pairs/step"
            + ("" if k == 2 else f" (C({k},2) pairs of {rankings[case]} rankings)")
        )
        rows += peer_variant_rows(
            got["rlfm"],
            {x: got[f"trl-{x}"] for x in a.peer_attention},
            rate="rate",
            metric="comparisons/s",
            settings=settings,
            target=TARGETS[case],
            workload=f"reward {'pairs' if k == 2 else f'K={k}'}",
            size=a.size,
            peer=f"TRL {trl.__version__}",
            precision=a.precision,
        )
    print()
    print_rows(rows)
    write_rows(a.json, rows, details)


if __name__ == "__main__":
    main()
