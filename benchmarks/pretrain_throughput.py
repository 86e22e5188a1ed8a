"""Pre-training throughput: rlfm's ``pretrain`` stage against a plain ``transformers.Trainer``.

Same model, same data, same batch, same optimizer, same machine, in one run:

- **rlfm** — the real ``rlfm pretrain`` command line, run in-process by ``_stamped.py``, with
  its default precision (bf16 autocast where the CPU runs bf16 fast, else fp32). Evaluation and
  saving happen only after the last step; it logs only then.
- **Trainer (bf16)** — ``transformers.Trainer`` with ``bf16=True`` (autocast through
  accelerate: the same precision as rlfm, the headline ratio), run twice per round: with
  transformers' default SDPA attention and with ``attn_implementation="eager"`` (faster on a
  CPU in bf16 at short contexts); the headline compares with the faster, the other is an extra
  row (``--peer-attention`` picks one). Its default optimizer
  (``adamw_torch_fused`` for torch ≥ 2.8, the fused kernel its docs recommend for speed), no
  evaluation, no saving, no logging, ``report_to=[]``, ``dataloader_num_workers=0``; and
  **Trainer (fp32)**, its default precision, as an extra, recipe-vs-recipe row.

Both are timed the same way, from outside their loops (``_common.StepStamps``): a global
optimizer post-step hook stamps the end of every optimizer step; tokens/s is the tokens of the
steps after ``--warmup`` over the time from the end of the last warm-up step to the end of the
last step (data loading, collation, forward, backward, clipping, the step: everything each does
per step). Memory is peak RSS above the RSS after all imports, read in each process.

Both sides build the model with ``rlfm.models.presets.build_model`` from the same config (the
preset at the tokenizer's vocabulary and ``--context``, seed 0; the script checks that the
checkpoint rlfm wrote has the same shape), tokenize the same training documents with the same
tokenizer (trained once here and handed to both), and cut the same windows with rlfm's
``BlockSampler`` (the Trainer visits that set of windows in its own shuffled order). Inputs are
``context`` tokens per row on both sides (the Trainer's model shifts its labels inside; rlfm
predicts the window's next ``context`` tokens). Optimizer: AdamW, the preset's peak lr, β =
(0.9, 0.95), weight decay 0.1 on matrices, gradients clipped to norm 1, linear warm-up over
``--warmup`` steps then cosine decay to 10% (``cosine_with_min_lr`` on the Trainer side).

Each contender runs in its own process, ``--rounds`` times (default 2), interleaved (the order
reverses every other round); the **median** round of each contender is reported with the range.
The matmul peak is measured at the start of every round and after the last one; its best is the
denominator of MFU (the hardware's capability; a lower peak would flatter MFU). All runs are in
the ``--json`` output.

Model-FLOPs utilisation (Kaplan et al. 2020; Chowdhery et al. 2022, PaLM, appendix B):

    MFU = 6 · N · tokens/s / peak

N counts the parameters that take part in a matrix multiply: every weight except the token and
position embeddings (a lookup, not a matmul), plus the LM head matrix once when it is tied to the
token embedding (GPT-2: logits = h · Eᵀ is a V × d matmul even though E is also the embedding).
``count_non_embedding_parameters`` drops the tied head together with the embedding, so it is
added back here; an untied head (Llama) is already counted. Norm gains and biases stay in N, as
in Kaplan et al. (about 0.1% of it here). A weight matrix costs 2 FLOPs per parameter per token
in the forward pass and 4 in the backward pass (gradients for the activations and for the
weights): 6·N per token.

Attention's own matmuls have no parameters. Per layer and per token, with T the context and d
the attention width (heads × head size = d_model): the scores q·kᵀ against T keys take T·d
multiply-adds = 2·T·d FLOPs, the weighted sum of T values another 2·T·d, so 4·T·d forward and
twice that backward: 12·T·d per layer, 12·L·T·d per token. The attention-inclusive variant

    MFU_attn = (6 · N + 12 · L · T · d) · tokens/s / peak

is PaLM's definition (it counts the full T × T score matrix although causal attention could skip
half of it). ``peak`` is this CPU's measured FLOP/s for large square matmuls (2048² and 4096²,
best of three each, all threads) in the precision the contender computes in: bf16 for bf16
autocast, fp32 otherwise.

Run (from the repository root, after ``bash scripts/setup.sh dev,bench``):
    python benchmarks/pretrain_throughput.py                    # small size, built-in corpus
    python benchmarks/pretrain_throughput.py --synthetic --json runs/bench/pretrain.json
    python benchmarks/pretrain_throughput.py --size 100m --steps 4 --warmup 2
Target (issue 15): rlfm ≥ 1.5× the bf16 Trainer's tokens/s, at the same precision.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from _common import (
    PEER_ATTENTION,
    SIZES,
    MemoryAboveImports,
    StepStamps,
    add_peer_attention_arg,
    fastest_first,
    matmul_peaks,
    memory_row,
    print_rows,
    result_row,
    run_child,
    table,
    write_rows,
)

TARGET_SPEEDUP = 1.5
"""rlfm's tokens/s over the bf16 Trainer's (issue 15)."""
SEED = 0
VAL_FRACTION = 0.05
"""rlfm's default share of --data documents held out (synthetic data only)."""
CHILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class Spec:
    """Everything a contender's process needs to know (written as JSON for the Trainer's)."""

    model: str
    """Preset name."""
    context: int
    """Tokens per sequence."""
    batch_size: int
    """Sequences per optimizer step."""
    warmup: int
    """Untimed first steps (also the learning-rate warm-up)."""
    steps: int
    """Timed steps after the warm-up."""
    lr: float
    """Peak learning rate (the preset's)."""
    tokenizer: str
    """Directory of the tokenizer both sides use."""
    synthetic_dir: str | None
    """Directory of synthetic text files, or None for the built-in corpus."""


# ------------------------------------------------------------------------------------- data


def write_synthetic_corpus(directory: Path, n_docs: int = 24, words_per_doc: int = 25_000) -> None:
    """Random text: words of a random 30k-word lexicon drawn with Zipf frequencies.

    ``rlfm pretrain`` reads text, so the offline "random token stream" is random text; its BPE
    still fills the preset's whole vocabulary, so the model and its cost are the same as on
    real text (throughput does not depend on which tokens are seen).
    """
    rng = random.Random(SEED)
    letters = "abcdefghijklmnopqrstuvwxyz"
    lexicon = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(30_000)]
    cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(lexicon))))
    directory.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        words = rng.choices(lexicon, cum_weights=cum, k=words_per_doc)
        lines = (" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, len(words), 12))
        (directory / f"doc{d:02d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def training_documents(synthetic_dir: str | None) -> list:
    """The training documents ``rlfm pretrain`` reads for this data (same split, same order)."""
    if synthetic_dir is None:
        from rlfm.data.corpora import load_builtin_corpus

        return load_builtin_corpus().train
    from rlfm.data.text import load_documents, split_documents

    return split_documents(load_documents(synthetic_dir), VAL_FRACTION, SEED)[0]


def build_config(spec: Spec, tokenizer):
    """The Hugging Face config both contenders build their model from."""
    from rlfm.models.presets import model_config

    return model_config(
        spec.model,
        vocab_size=len(tokenizer),
        context=spec.context,
        dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def flops_per_token(config) -> tuple[int, float, float]:
    """(N, 6·N, 6·N + 12·L·T·d): matmul parameters and training FLOPs per token (docstring)."""
    from rlfm.models.presets import count_non_embedding_parameters

    n = count_non_embedding_parameters(config)
    if config.tie_word_embeddings:  # the head is the embedding matrix: a V × d matmul all the same
        n += config.vocab_size * config.hidden_size
    attention = 12 * config.num_hidden_layers * config.max_position_embeddings * config.hidden_size
    return n, 6.0 * n, 6.0 * n + attention


# ------------------------------------------------------------------------ the Trainer's process


def trainer_worker(spec_path: Path, precision: str, attention: str, result_path: Path) -> None:
    """One ``transformers.Trainer`` run; writes its timed step times to ``result_path``."""
    import torch
    from transformers import Trainer, TrainingArguments

    from rlfm.data.blocks import BlockSampler, gather_windows, tokenize_stream
    from rlfm.models.presets import build_model
    from rlfm.models.tokenizer import load_tokenizer

    memory = MemoryAboveImports()
    stamps = StepStamps()
    spec = Spec(**json.loads(spec_path.read_text()))
    tokenizer = load_tokenizer(spec.tokenizer)
    stream = tokenize_stream(tokenizer, training_documents(spec.synthetic_dir))
    total = spec.warmup + spec.steps
    sampler = BlockSampler(len(stream), spec.context, spec.batch_size, SEED, name="training data")
    windows = torch.cat(
        [gather_windows(stream, sampler.next_batch(), spec.context + 1) for _ in range(total)]
    )
    inputs = windows[:, :-1].contiguous()  # (total·B, T): the model shifts the labels itself

    class Windows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(inputs)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": inputs[i], "labels": inputs[i]}

    model = build_model(build_config(spec, tokenizer), seed=SEED)
    model.set_attn_implementation(attention)  # transformers' own, not rlfm's
    args = TrainingArguments(
        output_dir=str(result_path.parent / f"trainer-{precision}"),
        max_steps=total,
        per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.lr,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=spec.warmup,
        bf16=precision == "bf16",
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=SEED,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Windows())
    trainer.train()
    ends = stamps.ends
    assert len(ends) == total, f"{len(ends)} steps timed, expected {total}"
    result = {
        "step_s": [b - a for a, b in zip(ends[spec.warmup - 1 :], ends[spec.warmup :])],
        "peak_mib": memory.peak(),
        "optim": getattr(trainer.args.optim, "value", str(trainer.args.optim)),
        "threads": torch.get_num_threads(),
    }
    result_path.write_text(json.dumps(result))


# ------------------------------------------------------------------------------- the contenders


def rlfm_command(spec: Spec, out: Path, result: Path) -> list[str]:
    """``rlfm pretrain`` as a user runs it, under ``_stamped.py`` (the same timing and memory
    method as the Trainer's); it logs, evaluates and saves only after the last step."""
    total = spec.warmup + spec.steps
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "_stamped.py"), str(result)]
    cmd += [str(spec.warmup), str(spec.batch_size * spec.context), "rlfm.stages.pretrain", "--"]
    cmd += ["pretrain", "--out", str(out), "--model", spec.model]
    cmd += ["--tokenizer", spec.tokenizer, "--context", str(spec.context)]
    cmd += ["--batch-size", str(spec.batch_size), "--steps", str(total), "--lr", str(spec.lr)]
    cmd += ["--warmup-steps", str(spec.warmup), "--weight-decay", "0.1", "--max-grad-norm", "1.0"]
    cmd += ["--log-every", str(total), "--eval-every", str(total), "--save-every", str(total)]
    cmd += ["--eval-batches", "1", "--samples", "0", "--keep-checkpoints", "1"]
    cmd += ["--seed", str(SEED), "--precision", "auto"]
    if spec.synthetic_dir is not None:
        cmd += ["--data", spec.synthetic_dir, "--val-fraction", str(VAL_FRACTION)]
    return cmd


def check_same_model(out: Path, config) -> None:
    """The checkpoint rlfm wrote has the shape the Trainer's model was built with."""
    from transformers import AutoConfig

    from rlfm.checkpoint import latest_checkpoint
    from rlfm.models.presets import count_parameters

    theirs = AutoConfig.from_pretrained(latest_checkpoint(out))
    fields = ("vocab_size", "hidden_size", "num_hidden_layers", "max_position_embeddings")
    mine_t, theirs_t = ([getattr(c, f) for f in fields] for c in (config, theirs))
    if mine_t != theirs_t or count_parameters(config) != count_parameters(theirs):
        raise RuntimeError(f"rlfm trained {dict(zip(fields, theirs_t))}, expected {mine_t}")


def run_contender(name: str, spec: Spec, work: Path, round_: int, env: dict[str, str]) -> dict:
    """Run one contender in its own process; its tokens/s, peak RSS and wall time."""
    tag = f"{name}-r{round_}"
    if name == "rlfm":
        out, result = work / tag, work / f"{tag}.json"
        child = run_child(
            rlfm_command(spec, out, result),
            work / f"{tag}.log",
            env=env,
            timeout_s=CHILD_TIMEOUT_S,
        )
        if child.returncode != 0:
            raise RuntimeError(f"rlfm pretrain failed ({child.returncode}):\n{child.tail()}")
        extra = json.loads(result.read_text())
        extra = {"step_s": extra["step_s"][spec.warmup - 1 :], "peak_mib": extra["peak_mib"]}
        extra["out"] = str(out)
    else:
        _, precision, attention = name.split("-")
        result = work / f"{tag}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(work / "spec.json")]
        cmd += ["--worker-precision", precision, "--worker-attention", attention]
        cmd += ["--worker-result", str(result)]
        child = run_child(cmd, work / f"{tag}.log", env=env, timeout_s=CHILD_TIMEOUT_S)
        if child.returncode != 0:
            raise RuntimeError(
                f"Trainer ({precision}) failed ({child.returncode}):\n{child.tail()}"
            )
        extra = json.loads(result.read_text())
    tokens = spec.batch_size * spec.context
    return {
        "tokens_per_s": len(extra["step_s"]) * tokens / sum(extra["step_s"]),
        "median_step_tokens_per_s": tokens / statistics.median(extra["step_s"]),
        "peak_rss_mib": child.peak_rss_mib,
        "wall_s": child.wall_s,
        **extra,
    }


def measure_peaks(label: str) -> dict[str, float]:
    """This CPU's matmul FLOP/s in fp32 and bf16 now, and the load average; printed after
    ``label``."""
    peak = matmul_peaks()
    peak["load_average_1min"] = os.getloadavg()[0]
    print(
        f"{label}matmul peak fp32 {peak['float32'] / 1e9:.0f}, "
        f"bf16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s (load average {peak['load_average_1min']:.1f}"
        f" on {os.cpu_count()} CPUs)",
        flush=True,
    )
    return peak


def summarise(
    runs: dict[str, list[dict]],
    peaks: list[dict[str, float]],
    precision: dict[str, str],
    f6: float,
    size: str,
) -> tuple[list[dict], dict]:
    """The result rows (medians over the rounds) and the peaks used for MFU."""
    peak = {"fp32": max(p["float32"] for p in peaks), "bf16": max(p["bfloat16"] for p in peaks)}

    def settings(peer: str) -> str:
        _, p, attention = peer.split("-")
        what = "bf16=True" if p == "bf16" else "fp32 (its default)"
        return f"transformers Trainer, {what}, adamw_torch_fused, attn_implementation={attention}"

    bf16 = fastest_first(
        {c: r for c, r in runs.items() if c.startswith("trainer-bf16")}, "tokens_per_s"
    )
    rows = []
    for peer, kind, target in (
        (bf16[0], "like-for-like", TARGET_SPEEDUP),
        ("trainer-fp32-sdpa", "recipe vs recipe (each at its default precision)", None),
        *((c, "like-for-like, extra row: the Trainer's slower attention", None) for c in bf16[1:]),
    ):
        if precision[peer] == precision["rlfm"] and "extra row" not in kind:
            kind = "like-for-like"
        common = dict(
            workload="pretrain",
            size=size,
            peer="transformers Trainer",
            peer_settings=settings(peer),
            kind=kind,
            precision=f"rlfm {precision['rlfm']} / Trainer {precision[peer]}",
        )
        rows.append(
            result_row(
                **common,
                metric="tokens/s",
                rlfm=[x["tokens_per_s"] for x in runs["rlfm"]],
                peer_value=[x["tokens_per_s"] for x in runs[peer]],
                target=target if kind == "like-for-like" else None,
            )
        )
        if "extra row" in kind:
            continue
        rows.append(
            result_row(
                **common,
                metric="MFU (6·N) vs measured matmul peak",
                rlfm=[f6 * x["tokens_per_s"] / peak[precision["rlfm"]] for x in runs["rlfm"]],
                peer_value=[f6 * x["tokens_per_s"] / peak[precision[peer]] for x in runs[peer]],
                note=f"peak fp32 {peak['fp32'] / 1e9:.0f}, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s",
            )
        )
        rows.append(memory_row(runs["rlfm"], runs[peer], **common))
    return rows, peak


def print_report(runs: dict[str, list[dict]], peak: dict, n_matmul: int, f6, f_attn) -> None:
    """Each contender's rounds, MFU at the median round, and the peaks."""
    headers = ["contender", "tokens/s (median)", "by round", "MFU", "MFU+attn", "peak MiB"]
    rows = []
    for c, rs in runs.items():
        tps = statistics.median(x["tokens_per_s"] for x in rs)
        p = peak["bf16" if "-bf16" in c else "fp32"] if c != "rlfm" else None
        p = p or peak[rs[0]["precision"]]
        rows.append(
            [
                c,
                f"{tps:,.0f}",
                " / ".join(f"{x['tokens_per_s']:,.0f}" for x in rs),
                f"{100 * f6 * tps / p:.1f}%",
                f"{100 * f_attn * tps / p:.1f}%",
                f"{statistics.median(x['peak_mib'] for x in rs):,.0f}",
            ]
        )
    print()
    print(table(headers, rows))
    print(
        f"\nMFU = 6·N·tokens/s / peak, N = {n_matmul:,}; MFU+attn adds 12·L·T·d = "
        f"{f_attn - f6:,.0f} FLOPs/token. Peak (best measured this run): fp32 "
        f"{peak['fp32'] / 1e9:.0f}, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s."
    )


# ------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Tokens/s and MFU of rlfm pretrain vs transformers.Trainer (same model, "
        "data, batch and optimizer; one run).",
    )
    p.add_argument("--size", choices=list(SIZES), default="small", help="model size")
    p.add_argument("--steps", type=int, default=30, help="timed steps per run (default: 30)")
    p.add_argument("--warmup", type=int, default=10, help="untimed first steps (default: 10)")
    p.add_argument("--rounds", type=int, default=2, help="runs per contender (default: 2)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step (default: 16)")
    p.add_argument(
        "--context", type=int, default=None, help="tokens per sequence (default: the preset's)"
    )
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="random text generated here instead of the built-in corpus (no download)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (runs, logs)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--worker-precision", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    p.add_argument("--worker-attention", choices=PEER_ATTENTION, help=argparse.SUPPRESS)
    add_peer_attention_arg(p)
    p.add_argument("--worker-result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for field in ("steps", "warmup", "rounds", "batch_size"):
        if getattr(args, field) < 1:
            p.error(f"--{field.replace('_', '-')} must be ≥ 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        trainer_worker(
            args.worker, args.worker_precision, args.worker_attention, args.worker_result
        )
        return

    import torch

    from rlfm.engine import bf16_supported
    from rlfm.models.presets import PRESETS
    from rlfm.models.tokenizer import save_tokenizer, train_bpe_tokenizer

    size = SIZES[args.size]
    context = args.context or size.context
    work = Path(tempfile.mkdtemp(prefix="rlfm-bench-pretrain-"))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    try:
        synthetic_dir = None
        if args.synthetic:
            synthetic_dir = str(work / "synthetic")
            write_synthetic_corpus(Path(synthetic_dir))
        docs = training_documents(synthetic_dir)
        # the tokenizer rlfm pretrain would train itself, trained once and given to both sides
        tokenizer = train_bpe_tokenizer((d.text for d in docs), size.vocab)
        save_tokenizer(tokenizer, work / "tokenizer")
        spec = Spec(
            model=size.preset,
            context=context,
            batch_size=args.batch_size,
            warmup=args.warmup,
            steps=args.steps,
            lr=PRESETS[size.preset].lr,
            tokenizer=str(work / "tokenizer"),
            synthetic_dir=synthetic_dir,
        )
        (work / "spec.json").write_text(json.dumps(asdict(spec)))
        config = build_config(spec, tokenizer)
        n_matmul, f6, f_attn = flops_per_token(config)
        rlfm_precision = "bf16" if bf16_supported(torch.device("cpu")) else "fp32"
        bf16_peers = [f"trainer-bf16-{a}" for a in args.peer_attention]
        contenders = ["rlfm", *bf16_peers, "trainer-fp32-sdpa"]
        precision = {c: c.split("-")[1] for c in contenders[1:]} | {"rlfm": rlfm_precision}
        print(
            f"model {args.size}: {config.num_hidden_layers} layers × {config.hidden_size}, "
            f"vocabulary {config.vocab_size:,}, context {context}; N (matmul parameters) = "
            f"{n_matmul / 1e6:.2f}M; batch {args.batch_size} × {context} tokens; "
            f"{args.warmup} warm-up + {args.steps} timed steps; {args.rounds} round(s); data: "
            f"{'synthetic text' if args.synthetic else 'built-in corpus'}; "
            f"{torch.get_num_threads()} threads",
            flush=True,
        )

        peaks: list[dict[str, float]] = []
        runs: dict[str, list[dict]] = {c: [] for c in contenders}
        for r in range(args.rounds):
            peaks.append(measure_peaks(f"round {r + 1}/{args.rounds}: "))
            for name in contenders if r % 2 == 0 else contenders[::-1]:
                res = run_contender(name, spec, work, r, env)
                runs[name].append(res)
                print(
                    f"  {name:<13} {res['tokens_per_s']:>8,.0f} tokens/s  "
                    f"+{res['peak_mib']:>6,.0f} MiB  ({res['wall_s']:.0f} s in all)",
                    flush=True,
                )
        peaks.append(measure_peaks("after the last round: "))
        check_same_model(Path(runs["rlfm"][0]["out"]), config)

        for c in runs:
            for x in runs[c]:
                x["precision"] = precision[c]
        rows, peak = summarise(runs, peaks, precision, f6, args.size)
        print_report(runs, peak, n_matmul, f6, f_attn)
        print()
        print_rows(rows)
        print(f"({time.perf_counter() - started:.0f} s in all)")
        settings = {**asdict(spec), "synthetic": args.synthetic, "rounds": args.rounds}
        flops = {"n_matmul_params": n_matmul, "per_token_6N": f6, "per_token_6N_attn": f_attn}
        details = {"settings": settings, "flops": flops, "peaks": peaks, "runs": runs}
        write_rows(args.json, rows, details)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
