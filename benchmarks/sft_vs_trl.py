"""Supervised fine-tuning: ``rlfm sft`` against TRL's ``SFTTrainer``, side by side in one run.

Same model, data, batch size, sequence length, precision and optimizer, on the same machine:

- **rlfm** — ``rlfm.stages.sft.train`` (what ``rlfm sft`` runs) with its defaults: length-grouped
  batches, right padding to each batch's longest row (rounded up to a multiple of 16 under bf16
  on a CPU), vocabulary logits only from the batch's first position that carries loss onward,
  the loss taken on the positions that carry it. Its throughput is the ``samples_per_s`` it logs, which
  times batch assembly, forward, backward, clipping and the optimizer step, and excludes
  logging, evaluation and checkpoints (both happen only at step 0 and after the last step).
- **TRL** — ``trl.SFTTrainer`` with ``SFTConfig`` defaults for a prompt–completion data set
  (loss on completion tokens only, EOS appended, no packing, padding to each batch's longest
  row), no evaluation, no saving, ``report_to="none"``. A ``TrainerCallback`` stamps the end of
  every optimizer step; the time between the stamps covers everything the trainer does per
  step (data loading and collation included).

Both get the same HF model directory (a preset built with ``rlfm.models.presets.build_model``,
seed 0, and a byte-level BPE trained here on the data) and the same prompt–completion rows:
the built-in dialogue (context line → reply; synthetic rows when the Shakespeare texts are not
cached), keeping only rows of at most ``--max-length`` tokens so that neither side truncates.
rlfm also gets a small validation split (its step-0 and final evaluation); TRL trains on the
same training split. Optimizer on both sides: AdamW, β = (0.9, 0.95), no weight decay,
gradients clipped to norm 1, linear warm-up then cosine decay. ``--adapter lora`` gives both
sides the same peft ``LoraConfig`` (r = 8, α = 16, dropout 0.05 on GPT-2's ``c_attn`` and
``attn.c_proj``).

Measures: **samples/s** over the steps after ``--warmup`` (the first steps create kernels and
caches), and **peak memory** = the process's peak resident memory (``ru_maxrss``) minus its
resident memory right after its imports (both import the same libraries first: torch,
transformers, datasets, peft, accelerate, trl, TensorBoard, matplotlib, rlfm), the smallest
over the rounds. Each contender runs in its own process, ``--rounds``
times, interleaved (the order reverses every other round); the best round of each is reported:
other work on a shared machine only slows a run down. Ratio = rlfm samples/s ÷ TRL samples/s.

TRL version: ``trl==1.12.0`` (the ``bench`` extra) imports and trains with transformers 5.24,
peft 0.21 and accelerate 1.15 as installed here, so no other release was needed. Its bf16 on a
CPU is accelerate's CPU autocast, the same autocast rlfm uses.

Run (from the repository root, after ``.venv/bin/pip install -e '.[bench]'``):
    .venv/bin/python benchmarks/sft_vs_trl.py
    .venv/bin/python benchmarks/sft_vs_trl.py --adapter lora
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def rss_mib() -> float:
    """This process's resident memory now, MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------- preparation


def prepare(args: argparse.Namespace, work: Path) -> dict:
    """Write the shared data set and model directory; return a description."""
    from rlfm.data.corpora import load_builtin_corpus
    from rlfm.data.dialogue import dialogue_pairs
    from rlfm.data.sft import render_dialogue_prompt
    from rlfm.models.presets import build_model, model_config
    from rlfm.models.tokenizer import train_bpe_tokenizer

    rng = random.Random(0)
    corpus = load_builtin_corpus()
    rows = []
    if corpus.source == "shakespeare":
        pairs = [p for d in corpus.train for p in dialogue_pairs(d)]
        rng.shuffle(pairs)
        for p in pairs[: args.rows * 2]:
            prompt = render_dialogue_prompt(p.context_speaker, p.context, p.reply_speaker)
            rows.append({"prompt": prompt, "completion": p.reply})
        source = "built-in dialogue"
    else:
        words = ["good", "morrow", "sweet", "night", "my", "lord", "lady", "farewell", "sir"]
        for _ in range(args.rows * 2):
            ctx = " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
            reply = " ".join(rng.choice(words) for _ in range(rng.randint(3, 40)))
            rows.append({"prompt": f"Romeo.\n{ctx}\n\nJuliet.\n", "completion": reply})
        source = "synthetic dialogue"
    tok = train_bpe_tokenizer((r["prompt"] + r["completion"] for r in rows), args.vocab)
    n_tokens = [  # prompt + completion + the EOS both sides append
        len(tok(r["prompt"], add_special_tokens=False)["input_ids"])
        + len(tok(r["completion"], add_special_tokens=False)["input_ids"])
        + 1
        for r in rows
    ]
    fit = [r for r, n in zip(rows, n_tokens) if n <= args.max_length][: args.rows]
    lengths = [n for n in n_tokens if n <= args.max_length][: args.rows]
    import datasets

    n_val = max(16, len(fit) // 50)
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(fit[n_val:]),
            "validation": datasets.Dataset.from_list(fit[:n_val]),
        }
    ).save_to_disk(str(work / "data"))
    config = model_config(
        args.preset,
        vocab_size=len(tok),
        context=args.max_length,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = build_model(config, seed=0)
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    return {
        "source": source,
        "rows": len(fit) - n_val,
        "mean_tokens": sum(lengths[n_val:]) / max(1, len(lengths) - n_val),
        "vocab": len(tok),
        "params": sum(p.numel() for p in model.parameters()),
    }


# ---------------------------------------------------------------------------- contenders


LORA = dict(r=8, alpha=16.0, dropout=0.05, targets=["c_attn", "attn.c_proj"])


def run_rlfm(args: argparse.Namespace, work: Path) -> dict:
    from rlfm.stages import sft

    base = rss_mib()
    out = work / "rlfm_out"
    shutil.rmtree(out, ignore_errors=True)
    cfg = sft.Config(
        model=work / "model",
        data=work / "data",
        out=out,
        adapter=args.adapter,
        lora_r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        lora_targets=tuple(LORA["targets"]),
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lr=args.lr,
        warmup_steps=args.warmup,
        weight_decay=0.0,
        precision=args.precision,
        device="cpu",
        log_every=args.warmup,
        eval_every=args.steps,
        save_every=args.steps,
        eval_examples=16,
        samples=0,
        seed=0,
    )
    sft.train(cfg)
    peak = peak_rss_mib()
    from rlfm.tracking import read_metrics

    rows = [r for r in read_metrics(out / "metrics.jsonl") if "samples_per_s" in r]
    # a row's samples_per_s covers the steps since the previous row; the first row (the
    # warm-up) is left out
    steps = [b["step"] - a["step"] for a, b in zip(rows, rows[1:])]
    seconds = sum(n * args.batch_size / r["samples_per_s"] for n, r in zip(steps, rows[1:]))
    return {
        "samples_per_s": sum(steps) * args.batch_size / seconds,
        "peak_mib": peak - base,
        "loss": f"{rows[-1]['loss']:.3f} (last step)",
    }


def run_trl(args: argparse.Namespace, work: Path) -> dict:
    import datasets
    import torch
    import trl
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    base = rss_mib()
    data = datasets.load_from_disk(str(work / "data"))["train"]
    model = AutoModelForCausalLM.from_pretrained(work / "model")
    tok = AutoTokenizer.from_pretrained(work / "model")
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    config = trl.SFTConfig(
        output_dir=str(work / "trl_out"),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup,
        weight_decay=0.0,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        max_length=args.max_length,
        bf16=args.precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        logging_steps=args.steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    peft_config = None
    if args.adapter == "lora":
        peft_config = LoraConfig(
            task_type="CAUSAL_LM",
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules=LORA["targets"],
            fan_in_fan_out=True,
        )
    trainer = trl.SFTTrainer(
        model=model,
        args=config,
        train_dataset=data,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=[Stamp()],
    )
    result = trainer.train()
    peak = peak_rss_mib()
    steps = len(stamps) - 1 - (args.warmup - 1)  # intervals after the warm-up steps
    seconds = stamps[-1] - stamps[args.warmup - 1]
    return {
        "samples_per_s": args.batch_size * steps / seconds,
        "peak_mib": peak - base,
        "loss": f"{result.training_loss:.3f} (mean of the run)",
        "trl": trl.__version__,
        "mixed_precision": str(trainer.accelerator.mixed_precision),
    }


def child(args: argparse.Namespace) -> None:
    """One contender in this process; prints one JSON line.

    Both contenders import the same libraries before anything is measured, so the memory
    figure is what training adds, not library code."""
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import peft  # noqa: F401
    import torch
    import torch.utils.tensorboard  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import rlfm.stages.sft  # noqa: F401

    if args.threads:
        torch.set_num_threads(args.threads)
    from rlfm.tracking import quiet_libraries

    quiet_libraries()
    work = Path(args.workdir)
    result = (run_rlfm if args.child == "rlfm" else run_trl)(args, work)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", choices=["full", "lora"], default="full")
    p.add_argument("--preset", default="small", help="model preset (default: small, 4 × 256)")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--rows", type=int, default=3000, help="training rows (at most)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--lr", type=float, default=None, help="default: 3e-4 full, 2e-3 lora")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="also write every round's results here")
    p.add_argument("--child", choices=["rlfm", "trl"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.lr is None:
        args.lr = 3e-4 if args.adapter == "full" else 2e-3
    if args.precision is None:
        import torch

        from rlfm.engine import bf16_supported

        args.precision = "bf16" if bf16_supported(torch.device("cpu")) else "fp32"
    if args.child:
        child(args)
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="rlfm-sft-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    info = prepare(args, work)
    print(
        f"data: {info['rows']} {info['source']} rows of ≤ {args.max_length} tokens "
        f"(mean {info['mean_tokens']:.0f}), vocabulary {info['vocab']}; model: {args.preset} "
        f"({info['params'] / 1e6:.1f}M parameters), adapter {args.adapter}; batch "
        f"{args.batch_size}, {args.steps} steps ({args.warmup} warm-up, not timed), "
        f"{args.precision}, lr {args.lr:g}"
    )
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if v is not None]
    flags = [f for f in flags if not f.startswith(("--child", "--workdir", "--json"))]
    results: dict[str, list[dict]] = {"rlfm": [], "trl": []}
    for r in range(args.rounds):
        order = ["rlfm", "trl"] if r % 2 == 0 else ["trl", "rlfm"]
        for name in order:
            cmd = [sys.executable, str(HERE), "--child", name, "--workdir", str(work), *flags]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
            results[name].append(json.loads(lines[-1][len("RESULT ") :]))
            got = results[name][-1]
            print(
                f"  round {r + 1} {name:4s}: {got['samples_per_s']:7.1f} samples/s, "
                f"peak +{got['peak_mib']:6.0f} MiB, training loss {got['loss']}"
            )
    best = {k: max(v, key=lambda x: x["samples_per_s"]) for k, v in results.items()}
    mem = {k: min(x["peak_mib"] for x in v) for k, v in results.items()}
    print(f"\n{'':6s}{'samples/s':>11s}{'peak memory above imports':>28s}")
    for name in ("rlfm", "trl"):
        label = name if name == "rlfm" else f"TRL {best['trl'].get('trl', '')}"
        print(f"{label:10s}{best[name]['samples_per_s']:7.1f}{mem[name]:22.0f} MiB")
    ratio = best["rlfm"]["samples_per_s"] / best["trl"]["samples_per_s"]
    print(
        f"ratio rlfm / TRL: {ratio:.2f}× samples/s at {mem['rlfm'] / mem['trl']:.2f}× the "
        "peak memory (target: ≥ 1.5× at ≤ 1×)"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "info": info, **results}))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
