"""Pre-training: a GPT learns next-token prediction on raw text (self-supervised).

Papers: Radford et al. 2018/2019 (GPT, GPT-2), Brown et al. 2020 (GPT-3, the presets' Table 2.1),
Touvron et al. 2023 (LLaMA, Table 2).

    L(θ) = − Σ_t log p_θ(x_{t+1} | x_1..x_t)          (losses/lm.py: next_token_loss)

For models whose logits are plain h Wᵀ (GPT-2, Llama, ...) the loss is computed from the final
hidden states h and the LM head's weight W a block of positions at a time
(losses/lm.py: chunked_next_token_loss), so the (batch × context, vocabulary) logits are never
held whole; other models take the full-logits path. Both give the same loss and gradients.

Data: documents are tokenized, each followed by EOS, packed into one stream and cut into
windows of ``context + 1`` tokens (data/blocks.py). The optimizer is AdamW (β = 0.9, 0.95,
weight decay 0.1 on matrices), the learning rate warms up linearly and decays along a cosine to
10% of its peak, gradients are clipped to norm 1 — the GPT-3 recipe. Deviation from the papers:
the default run is a few-million-parameter model on the built-in Shakespeare corpus, so it
finishes on a 2-core CPU in minutes.

One process (CPU or one GPU):
    rlfm pretrain --out runs/demo/pretrain
N processes (data parallel, same loss curve as one process with the same --batch-size):
    torchrun --nproc_per_node 8 -m rlfm pretrain --model gpt3-small --data corpus/ \\
        --batch-size 512 --micro-batch-size 8 --out runs/gpt3-small
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch
from rich.markup import escape
from transformers import PreTrainedTokenizerBase

from rlfm import checkpoint
from rlfm.config import Optimisation, RunSettings, check, settings
from rlfm.data.blocks import BlockSampler, eval_starts, gather_windows, tokenize_stream
from rlfm.data.corpora import load_builtin_corpus
from rlfm.data.text import Document, load_documents, split_documents
from rlfm.engine import Engine
from rlfm.errors import ConfigError
from rlfm.evaluate.plots import plot_metrics
from rlfm.losses.lm import chunked_next_token_loss, next_token_loss, unigram_cross_entropy
from rlfm.models.adapters import fit_vocabulary
from rlfm.models.loading import load_causal_lm
from rlfm.models.presets import PRESETS, build_model, model_config
from rlfm.models.tokenizer import (
    ensure_pad_token,
    load_tokenizer,
    save_tokenizer,
    train_bpe_tokenizer,
)
from rlfm.optim import supervised
from rlfm.rollout import generate
from rlfm.run import Run
from rlfm.tracking import Meter

DEFAULT_PROMPTS = ("Romeo.\n", "Juliet.\n", "First Citizen.\n")


@settings(
    Optimisation,
    RunSettings,
    steps=600,
    warmup_steps=100,
    weight_decay=0.1,
    eval_every=200,
    save_every=200,
    docs={"lr": "Peak learning rate. Default: the preset's (GPT-3/LLaMA tables), or 3e-4."},
)
class Config:
    """Pre-train a causal language model (defaults: the `small` preset on Shakespeare)."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    out: Path = Path("runs/demo/pretrain")
    """Output directory. Running again on the same directory resumes from its newest checkpoint."""
    data: Path | None = None
    """Training text: a text file, a directory of text files, JSONL/Parquet rows with a text
    column, or a saved `datasets` directory. Default: the built-in Shakespeare corpus."""
    text_field: str = "text"
    """Column holding the text in JSONL/Parquet/`datasets` data."""
    val_fraction: float = 0.05
    """Share of the documents of --data held out for validation (the built-in corpus holds out
    four whole plays)."""
    tokenizer: Path | None = None
    """A local Hugging Face tokenizer directory. Default: the --model directory's tokenizer, or
    a byte-level BPE of --vocab-size trained on the training text."""
    vocab_size: int | None = None
    """Vocabulary size of a newly trained BPE tokenizer. Default: the preset's."""
    resize_embeddings: bool = False
    """Continuing a model directory with a --tokenizer larger than its vocabulary: grow the
    embeddings to fit (new rows are trained from scratch). Without it that is an error."""
    model: str = "small"
    """A preset name (see `rlfm models`) to train from scratch, or a local Hugging Face causal-LM
    directory (or rlfm run directory) to continue pre-training."""
    context: int | None = None
    """Tokens per training sequence. Default: the model's context, capped at 1024."""
    dropout: float = 0.0
    """Dropout of a model built from a preset."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a share of the peak (cosine decay)."""
    eval_batches: int = 8
    """Validation windows evaluated = eval_batches × batch_size."""
    samples: int = 3
    """Samples generated at the end (0 = none)."""
    max_new_tokens: int = 100
    """Tokens per sample at most (a sample ends at EOS)."""
    temperature: float = 0.8
    """Sampling temperature of the final samples."""
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    """Prompts of the final samples (cycled)."""

    RESUMABLE = ("steps", "eval_batches", "samples", "max_new_tokens", "temperature", "prompts")
    RENAMED = {"sample_tokens": "max_new_tokens"}

    def __post_init__(self) -> None:
        check(
            0 < self.val_fraction < 1, "val_fraction", f"must be in (0, 1), got {self.val_fraction}"
        )
        check(
            self.vocab_size is None or self.vocab_size >= 300,
            "vocab_size",
            f"must be at least 300, got {self.vocab_size}",
        )
        check(
            self.context is None or self.context >= 2, "context", f"must be ≥ 2, got {self.context}"
        )
        check(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        for name in ("eval_batches", "max_new_tokens"):
            check(getattr(self, name) >= 1, name, f"must be ≥ 1, got {getattr(self, name)}")
        check(
            0 <= self.min_lr_ratio <= 1,
            "min_lr_ratio",
            f"must be in [0, 1], got {self.min_lr_ratio}",
        )
        check(self.samples >= 0, "samples", f"must be ≥ 0, got {self.samples}")
        check(self.temperature >= 0, "temperature", f"must be ≥ 0, got {self.temperature}")
        if self.data is not None:
            check(Path(self.data).exists(), "data", f"{self.data} does not exist")
        if self.tokenizer is not None:
            check(
                Path(self.tokenizer).is_dir(), "tokenizer", f"{self.tokenizer} is not a directory"
            )
        check(
            self.model in PRESETS or Path(self.model).is_dir(),
            "model",
            f"{self.model!r} is neither a preset ({', '.join(PRESETS)}) nor a directory",
        )


def load_corpus(
    data: Path | None,
    engine: Engine,
    text_field: str = "text",
    val_fraction: float = 0.05,
    seed: int = 0,
) -> tuple[list[Document], list[Document], str]:
    """Training and validation documents of ``data`` (None: the built-in corpus, its held-out
    plays as validation), and a line saying where they came from."""
    if data is None:
        if engine.is_main:  # download once; the others read the cache
            load_builtin_corpus()
        engine.barrier()
        corpus = load_builtin_corpus()
        return corpus.train, corpus.val, f"built-in corpus: {corpus.source} ({corpus.credit})"
    docs = load_documents(data, text_field=text_field)
    train, val = split_documents(docs, val_fraction, seed)
    return train, val, f"data: {data}"


def setup_tokenizer(
    cfg: Config, engine: Engine, train_docs: list[Document], resume: Path | None
) -> PreTrainedTokenizerBase:
    """The run's tokenizer: the checkpoint's on resume, else a given one, else a new BPE."""
    if resume is not None:
        return load_tokenizer(resume)
    if cfg.tokenizer is not None or cfg.model not in PRESETS:
        path = cfg.tokenizer or checkpoint.resolve_model_dir(cfg.model)
        tok = load_tokenizer(path)
        ensure_pad_token(tok)
        return tok
    path = cfg.out / "tokenizer"
    if engine.is_main:
        vocab = cfg.vocab_size or PRESETS[cfg.model].vocab_size
        tok = train_bpe_tokenizer((d.text for d in train_docs), vocab)
        save_tokenizer(tok, path)
    engine.barrier()
    return load_tokenizer(path)


def setup_model(
    cfg: Config, tokenizer: PreTrainedTokenizerBase, resume: Path | None
) -> torch.nn.Module:
    """The model: from the checkpoint on resume, else a preset built from scratch, else a dir."""
    if resume is not None:
        return load_causal_lm(resume)
    if cfg.model in PRESETS:
        preset = PRESETS[cfg.model]
        mc = model_config(
            preset,
            vocab_size=len(tokenizer),
            context=cfg.context or min(preset.context, 1024),
            dropout=cfg.dropout,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return build_model(mc, seed=cfg.seed)
    model = load_causal_lm(checkpoint.resolve_model_dir(cfg.model))
    fit_vocabulary(model, tokenizer, allow_resize=cfg.resize_embeddings, what="model")
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


# Causal LMs whose forward is, verbatim, ``logits = lm_head(base_model(...)[0][:, logits_to_keep])``
# with a bias-free nn.Linear head (checked in transformers' modeling code). Any other architecture
# may scale or soft-cap its logits or hidden states between the two, so it keeps the full path.
_PLAIN_HEAD_TYPES = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3"})
# Config fields of logit transforms some architectures apply after the head; set = not plain.
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "lm_head_multiplier",
    "output_logits_scale",
)


def plain_head_weight(model: torch.nn.Module) -> torch.nn.Parameter | None:
    """The (V, d) output-embedding weight W when the model's logits are exactly h Wᵀ of its base
    model's output h, else None (the caller then uses the model's own logits)."""
    net = Engine.unwrap(model)
    config = getattr(net, "config", None)
    head = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    if config is None or getattr(config, "model_type", None) not in _PLAIN_HEAD_TYPES:
        return None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    if "logits_to_keep" not in inspect.signature(net.forward).parameters:
        return None
    return head.weight


def lm_loss(
    model: torch.nn.Module, rows: torch.Tensor, head_weight: torch.nn.Parameter | None
) -> torch.Tensor:
    """Mean next-token loss of ``rows`` (B, T + 1): positions 0..T−1 predict 1..T.

    With ``head_weight`` (from ``plain_head_weight``) the loss is chunked over positions and the
    full logits never exist; without it the model's logits go to ``next_token_loss``.

    The chunked path still calls ``model`` itself — the DDP wrapper when there are several
    processes — not its base model: DDP arms gradient all-reduce and syncs buffers in its own
    forward, and a call into ``model.module.transformer`` would skip that, leaving each
    process with its own gradients. ``logits_to_keep`` set to no positions makes the head's
    matmul empty, and a forward hook on the base model takes the hidden states the head would
    have been given. The head's weight then gets its gradient through the chunked loss, inside
    the same backward pass, so DDP sees every parameter used as before.
    """
    inputs, targets = rows[:, :-1], rows[:, 1:]
    if head_weight is None:
        return next_token_loss(model(input_ids=inputs).logits, targets)
    captured: list[torch.Tensor] = []
    hook = Engine.unwrap(model).base_model.register_forward_hook(
        lambda _module, _args, out: captured.append(out[0])  # (B, T, d) last hidden states
    )
    try:
        model(input_ids=inputs, logits_to_keep=inputs.new_empty(0))  # (B, 0, V) logits
    finally:
        hook.remove()
    assert len(captured) == 1, f"base model ran {len(captured)} times in one forward"
    return chunked_next_token_loss(captured[0], head_weight, targets)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    engine: Engine,
    stream: torch.Tensor,
    starts: torch.Tensor,
    block: int,
    micro: int,
) -> float:
    """Mean next-token loss over fixed validation windows (split over processes)."""
    model.eval()
    mine = starts[engine.rank :: engine.world_size]
    head_weight = plain_head_weight(model)
    total, count = torch.zeros((), dtype=torch.float64), 0
    for i in range(0, len(mine), micro):
        rows = gather_windows(stream, mine[i : i + micro], block + 1).to(engine.device)
        with engine.autocast():
            loss = lm_loss(model, rows, head_weight)
        total += loss.double().cpu() * rows.shape[0]
        count += rows.shape[0]
    model.train()
    summed = engine.all_reduce_sum(
        torch.stack([total, torch.tensor(float(count), dtype=torch.float64)])
    )
    return float(summed[0] / summed[1])


def generate_samples(
    cfg: Config, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, engine: Engine
) -> list[dict[str, str]]:
    """A few samples from the trained model, for a look at what it learned."""
    if cfg.samples == 0:
        return []
    prompts = [cfg.prompts[i % len(cfg.prompts)] if cfg.prompts else "" for i in range(cfg.samples)]
    g = torch.Generator(device=engine.device).manual_seed(cfg.seed)
    model.eval()
    with engine.autocast():
        gen = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            generator=g,
        )
    model.train()
    return [{"prompt": p, "sample": s} for p, s in zip(prompts, gen.texts)]


def train(cfg: Config) -> dict[str, float]:
    """Run pre-training; returns the final metrics (val_loss, val_ppl, ...)."""
    with Run(cfg, "pretrain", total=cfg.steps, derived=("tokenizer",)) as run:
        if run.finished:
            return run.summary
        engine, resume = run.engine, run.resume
        train_docs, val_docs, source = load_corpus(
            cfg.data, engine, cfg.text_field, cfg.val_fraction, cfg.seed
        )
        tokenizer = setup_tokenizer(cfg, engine, train_docs, resume)
        model = setup_model(cfg, tokenizer, resume)
        block = cfg.context or min(model.config.max_position_embeddings, 1024)
        if block > model.config.max_position_embeddings:
            raise ConfigError(
                f"context: {block} exceeds the model's {model.config.max_position_embeddings} "
                "positions"
            )
        train_stream = tokenize_stream(tokenizer, train_docs)
        val_stream = tokenize_stream(tokenizer, val_docs)
        sampler = BlockSampler(len(train_stream), block, cfg.batch_size, cfg.seed, "training data")
        val_windows = eval_starts(len(val_stream), block, cfg.eval_batches * cfg.batch_size)
        rows = engine.shard(cfg.batch_size)
        n_micro = engine.micro_batches(cfg.batch_size, cfg.micro_batch_size)
        micro = (rows.stop - rows.start) // n_micro

        preset = PRESETS.get(cfg.model)
        lr = cfg.lr or (preset.lr if preset else 3e-4)
        model = engine.prepare(model.train())
        optimizer, scheduler = supervised(model, cfg, lr, cfg.min_lr_ratio)
        head_weight = plain_head_weight(model)  # None: the model's own logits (see lm_loss)
        step = run.track(model, tokenizer, optimizer=optimizer, scheduler=scheduler, data=sampler)
        n_params = sum(p.numel() for p in model.parameters())
        run.print(
            f"[bold]rlfm pretrain[/]  {source}\n"
            f"model {cfg.model} ({n_params / 1e6:.2f}M parameters), vocabulary "
            f"{len(tokenizer):,}, context {block}, {len(train_stream):,} training / "
            f"{len(val_stream):,} validation tokens\n"
            + run.banner(
                f"batch {cfg.batch_size} = {engine.world_size} × {n_micro} × {micro} "
                f"sequences, peak lr {lr:g}",
                step,
            )
        )

        metrics: dict[str, float] = run.logged()
        meter = Meter()
        while step < cfg.steps:
            meter.start()
            batch = gather_windows(train_stream, sampler.next_batch()[rows], block + 1)
            loss_sum = 0.0
            for i in range(n_micro):
                mb = batch[i * micro : (i + 1) * micro].to(engine.device, non_blocking=True)
                with engine.micro_step(model, last=i == n_micro - 1):
                    loss = lm_loss(model, mb, head_weight)
                    engine.backward(loss, weight=micro / cfg.batch_size)
                loss_sum += loss.item() / n_micro
            grad_norm = engine.step(model, optimizer, scheduler, cfg.max_grad_norm)
            step += 1
            meter.stop(tokens=batch.shape[0] * block)
            row: dict[str, float] = {}
            if run.due(step, cfg.log_every):
                loss = engine.all_reduce_mean(loss_sum)
                row = run.train_row(loss, grad_norm, scheduler, sampler, meter)
            if run.due(step, cfg.eval_every):
                val_loss = evaluate(model, engine, val_stream, val_windows, block, micro)
                row |= {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
            run.tracker.log(step, row)
            metrics |= row
            run.checkpoint(step)
        if "val_loss" not in metrics:  # its metrics.jsonl was lost
            val_loss = evaluate(model, engine, val_stream, val_windows, block, micro)
            metrics |= {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}

        summary = {k: metrics[k] for k in ("loss", "val_loss", "val_ppl") if k in metrics}
        if engine.is_main:
            plot_metrics(
                cfg.out / "metrics.jsonl", cfg.out / "plots" / "loss.png", ["loss", "val_loss"]
            )
            unigram = unigram_cross_entropy(train_stream, val_stream, len(tokenizer))
            summary["unigram_val_loss"] = unigram
            samples = generate_samples(cfg, Engine.unwrap(model), tokenizer, engine)
            run.append("samples.jsonl", [{"step": step, **s} for s in samples])
            for s in samples:
                run.print(f"[bold cyan]{escape(s['prompt'].strip())}[/] {escape(s['sample'])}\n")
            run.print(
                f"[bold]validation[/] loss {summary['val_loss']:.3f}, perplexity "
                f"{summary['val_ppl']:.1f} (unigram baseline: loss {unigram:.3f}, perplexity "
                f"{math.exp(unigram):.1f})\nmodel: {checkpoint.latest_checkpoint(cfg.out)}"
            )
        return run.finish(summary)
