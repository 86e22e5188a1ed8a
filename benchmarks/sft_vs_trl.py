"""Supervised fine-tuning: ``rlfm sft`` against TRL's ``SFTTrainer``, side by side in one run.

Same model, data, batch size, sequence length, precision and optimizer, on the same machine,
each side at the settings its documentation recommends for speed:

- **rlfm** — ``rlfm.stages.sft.train`` (what ``rlfm sft`` runs) with its defaults: length-grouped
  batches, right padding to each batch's longest row (rounded up to a multiple of 16 under bf16
  on a CPU), vocabulary logits only from the batch's first position that carries loss onward,
  the loss taken on the positions that carry it. Its step-0 and final evaluations run outside
  the timed steps.
- **TRL** — ``trl.SFTTrainer`` (trl 1.12) with ``SFTConfig`` defaults for a prompt–completion
  data set (loss on completion tokens only, EOS appended, no packing, padding to each batch's
  longest row) except for speed: ``gradient_checkpointing=False`` (``SFTConfig`` turns it on,
  which recomputes every activation in the backward pass), ``train_sampling_strategy=
  "group_by_length"`` (transformers 5's name for ``group_by_length``: batches of similar length,
  as rlfm's), ``loss_type`` = ``--trl-loss`` (default ``"nll"``; TRL's default ``"chunked_nll"``
  drops the positions without loss before the LM head but checkpoints each chunk, recomputing it
  in the backward pass; ``--trl-loss chunked_nll`` measures it), no evaluation, no saving,
  ``report_to="none"``, ``dataloader_num_workers=0``; run with transformers' default SDPA
  attention and with ``attn_implementation="eager"`` (faster on a CPU in bf16 at short
  lengths), the headline against the faster (``--peer-attention`` picks one). Not used, because they change the work or
  do not run here: ``packing`` (other batches), ``padding_free`` (needs FlashAttention), Liger
  kernels (GPU only).

Both get the same HF model directory (the ``--size`` model, seed 0, with a byte-level BPE trained
here on the data) and the same prompt–completion rows: the built-in dialogue (context line →
reply; synthetic rows when the Shakespeare texts are not cached), keeping only rows of at most
``--max-length`` tokens so that neither side truncates. Optimizer on both sides: AdamW,
β = (0.9, 0.95), no weight decay, gradients clipped to norm 1, linear warm-up then cosine decay;
the same precision on both sides (bf16 autocast where the CPU has bf16, else fp32; TRL's bf16 on
a CPU is accelerate's CPU autocast). ``--adapter lora`` gives both sides the same peft
``LoraConfig`` (r = 8, α = 16, dropout 0.05 on GPT-2's ``c_attn`` and ``attn.c_proj``).

Measures, the same way on both sides (``_common``): **samples/s** = batch × steps after
``--warmup`` ÷ the time from the end of the last warm-up optimizer step to the end of the last
step (a global optimizer post-step hook stamps both), and **peak memory** = peak RSS above the
RSS right after all imports (both processes import torch, transformers, datasets, peft,
accelerate, trl's trainers, TensorBoard, matplotlib and rlfm's stage first). Each contender runs
in its own process, ``--rounds`` times (default 2), interleaved (the order reverses every other
round); the table gives the median round and the range.

Run (from the repository root, after ``bash scripts/setup.sh dev,bench``):
    .venv/bin/python benchmarks/sft_vs_trl.py --size small
    .venv/bin/python benchmarks/sft_vs_trl.py --size 100m --steps 8 --warmup 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
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
    size_config,
    write_rows,
)

HERE = Path(__file__).resolve()
TARGET = 2.0
"""rlfm's samples/s over TRL's (issue 15)."""


# ---------------------------------------------------------------------------- preparation


def prepare(args: argparse.Namespace, work: Path) -> dict:
    """Write the shared data set and model directory; return a description."""
    from rlfm.data.corpora import load_builtin_corpus
    from rlfm.data.dialogue import dialogue_pairs
    from rlfm.data.sft import render_dialogue_prompt
    from rlfm.models.presets import build_model
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
    tok = train_bpe_tokenizer((r["prompt"] + r["completion"] for r in rows), SIZES[args.size].vocab)
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
    config = size_config(args.size, tok)
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


def run_rlfm(args: argparse.Namespace, work: Path, stamps: StepStamps) -> dict:
    from rlfm.stages import sft

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
        log_every=args.steps,
        eval_every=args.steps,
        save_every=args.steps,
        eval_examples=16,
        samples=0,
        seed=0,
    )
    sft.train(cfg)
    from rlfm.tracking import read_metrics

    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    return {"loss": f"{rows[-1]['loss']:.3f} (last step)"}


def run_trl(args: argparse.Namespace, work: Path, stamps: StepStamps) -> dict:
    import datasets
    import torch
    import trl
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = datasets.load_from_disk(str(work / "data"))["train"]
    model = AutoModelForCausalLM.from_pretrained(work / "model", attn_implementation=args.attention)
    tok = AutoTokenizer.from_pretrained(work / "model")
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
        gradient_checkpointing=False,
        train_sampling_strategy="group_by_length",
        loss_type=args.trl_loss,
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
    )
    result = trainer.train()
    return {
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
    from trl import SFTConfig, SFTTrainer  # noqa: F401  (trl's modules load lazily)

    import rlfm.stages.sft  # noqa: F401
    from rlfm.tracking import quiet_libraries

    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    memory = MemoryAboveImports()
    stamps = StepStamps()
    work = Path(args.workdir)
    result = (run_rlfm if args.child == "rlfm" else run_trl)(args, work, stamps)
    result |= {
        "samples_per_s": stamps.rate(args.warmup, args.batch_size),
        "steps": len(stamps.ends),
        "peak_mib": memory.peak(),
    }
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the learning rate and precision defaults resolved."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", choices=["full", "lora"], default="full")
    p.add_argument("--size", choices=list(SIZES), default="small", help="model size")
    p.add_argument("--rows", type=int, default=3000, help="training rows (at most)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--lr", type=float, default=None, help="default: 3e-4 full, 2e-3 lora")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    p.add_argument("--trl-loss", choices=["nll", "chunked_nll"], default="nll")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="also write every round's results here")
    add_peer_attention_arg(p)
    p.add_argument("--child", choices=["rlfm", "trl"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--attention", default="sdpa", help=argparse.SUPPRESS)  # a TRL child's
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = 3e-4 if args.adapter == "full" else 2e-3
    if args.precision is None:
        import torch

        from rlfm.engine import bf16_supported

        args.precision = "bf16" if bf16_supported(torch.device("cpu")) else "fp32"
    return args


def child_command(args: argparse.Namespace, work: Path, who: str, attention: str = "") -> list[str]:
    """The command line of one contender (``who``: rlfm or trl; ``attention``: TRL's)."""
    flags = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if v is not None and k not in ("child", "workdir", "json", "peer_attention", "attention")
    ]
    cmd = [sys.executable, str(HERE), "--child", who, "--workdir", str(work), *flags]
    return cmd + ([f"--attention={attention}"] if attention else [])


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="rlfm-sft-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    info = prepare(args, work)
    print(
        f"data: {info['rows']} {info['source']} rows of ≤ {args.max_length} tokens "
        f"(mean {info['mean_tokens']:.0f}), vocabulary {info['vocab']}; model: {args.size} "
        f"({info['params'] / 1e6:.1f}M parameters), adapter {args.adapter}; batch "
        f"{args.batch_size}, {args.steps} steps ({args.warmup} warm-up, not timed), "
        f"{args.precision}, lr {args.lr:g}"
    )
    sides = ["rlfm"] + [f"trl-{x}" for x in args.peer_attention]
    results: dict[str, list[dict]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in sides if r % 2 == 0 else sides[::-1]:
            who, _, attn = name.partition("-")
            proc = subprocess.run(
                child_command(args, work, who, attn), capture_output=True, text=True
            )
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
            results[name].append(json.loads(lines[-1][len("RESULT ") :]))
            got = results[name][-1]
            print(
                f"  round {r + 1} {name:9s}: {got['samples_per_s']:7.1f} samples/s, "
                f"peak +{got['peak_mib']:6.0f} MiB, training loss {got['loss']}"
            )
    trl_version = results[sides[1]][0].get("trl", "")
    settings = (
        f"trl {trl_version} SFTTrainer, {args.precision}, gradient_checkpointing=False, "
        f"group_by_length, loss_type={args.trl_loss}, batch {args.batch_size}, "
        f"adapter {args.adapter}"
    )
    rows = peer_variant_rows(
        results["rlfm"],
        {x: results[f"trl-{x}"] for x in args.peer_attention},
        rate="samples_per_s",
        metric="samples/s",
        settings=settings,
        target=TARGET,
        workload=f"sft ({args.adapter})",
        size=args.size,
        peer=f"TRL {trl_version}",
        precision=args.precision,
    )
    print()
    print_rows(rows)
    write_rows(Path(args.json) if args.json else None, rows, {"info": info, **results})
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
