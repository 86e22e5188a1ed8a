"""Supervised fine-tuning: a pre-trained model learns the task from demonstrations and dialogue.

Papers: Ouyang et al. 2022 (InstructGPT: step 1 of the recipe, supervised fine-tuning on
labeler demonstrations before reward modelling and PPO); Hu et al. 2021 (LoRA); Li & Liang 2021
(prefix-tuning). On the built-in data this is behavioural cloning of dialogue: the context is a
speaker's line, the demonstration is the next speaker's reply (data/sft.py).

    L(θ) = − (1 / Σ m_t) · Σ_t m_t · log p_θ(x_t | x_<t)        (losses/lm.py: next_token_loss)

where m_t = 1 on completion / assistant tokens (and their EOS) only, unless
``--no-completion-only-loss``. The mean is over every loss token of the whole global batch
(not a mean of per-sequence or per-micro-batch means), so gradient accumulation and any number
of processes give the same step as one process with the whole batch.

Adapters (models/adapters.py): ``full`` trains every weight; ``lora`` trains
h = W₀x + (α/r)·BAx on the attention projections with W₀ frozen and B = 0 at the start, so the
model starts exactly at the base model; ``prefix`` trains key/value vectors that every layer
attends to before the sequence. A LoRA or prefix run saves only the adapter (plus the tokenizer)
in its checkpoints; ``rlfm merge`` folds a LoRA adapter into a plain model, and ``rlfm sample``
and later stages load base + adapter from a checkpoint directly.

Optimisation: AdamW (β = 0.9, 0.95), linear warm-up, cosine decay to 10% of the peak, gradients
clipped to norm 1. Batches group demonstrations of similar length (data/sft.py: BucketSampler),
and the output layer is evaluated only from the first position that carries loss onward
(``logits_to_keep``), so vocabulary logits before the batch's first completion token are never
computed, and the loss's float32 copies hold only the positions that carry loss; padded lengths
are rounded to a few sizes where kernels are compiled per shape (``shape_multiple``).
Deviations from InstructGPT: a small model on the built-in dialogue by default instead of labeler demonstrations;
validation is the loss on held-out demonstrations (four held-out plays), and samples for fixed
held-out prompts are written to ``samples.jsonl`` at every evaluation (step 0 included), where
the replies can be seen turning from "continue the play" into "answer the line".

One process (CPU or one GPU):
    rlfm sft --model runs/demo/pretrain --out runs/demo/sft
    rlfm sft --model runs/demo/pretrain --adapter lora --out runs/demo/sft-lora
N processes (data parallel, the same steps as one process with the same --batch-size):
    torchrun --nproc_per_node 8 -m rlfm sft --model /models/my-llama --data chats.jsonl \\
        --adapter lora --batch-size 64 --micro-batch-size 8 --out runs/llama-sft
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Literal

import torch
from rich.markup import escape
from torch import nn
from transformers import PreTrainedTokenizerBase

from rlfm import checkpoint
from rlfm.config import AdapterSettings, Optimisation, RunSettings, check, lora_alpha, settings
from rlfm.data import sft as data
from rlfm.data.corpora import load_builtin_corpus
from rlfm.engine import Engine
from rlfm.errors import ConfigError, DataError, ModelError
from rlfm.evaluate.plots import plot_metrics
from rlfm.losses.lm import next_token_loss
from rlfm.models import adapters
from rlfm.models.tokenizer import ensure_pad_token, load_tokenizer
from rlfm.optim import supervised
from rlfm.rollout import generate
from rlfm.run import Run
from rlfm.tracking import Meter, read_metrics

DEFAULT_LR = {"full": 3e-4, "lora": 2e-3, "prefix": 1e-2}
"""Peak learning rate per adapter when --lr is not given."""


@settings(
    Optimisation,
    RunSettings,
    AdapterSettings,
    eval_every=100,
    save_every=100,
    lora_dropout=0.05,
    docs={
        "lr": "Peak learning rate. Default: per adapter, 3e-4 (full), 2e-3 (lora), 1e-2 (prefix)."
    },
)
class Config:
    """Supervised fine-tuning (defaults: full fine-tuning on the built-in dialogue)."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    out: Path = Path("runs/demo/sft")
    """Output directory. Running again on the same directory resumes from its newest checkpoint."""
    model: Path = Path("runs/demo/pretrain")
    """A local Hugging Face causal-LM directory (with its tokenizer), an rlfm checkpoint, or an
    rlfm run directory (its newest checkpoint)."""
    data: Path | None = None
    """Demonstrations: JSONL / JSON / Parquet rows with 'prompt' and 'completion', or 'messages'
    (a list of {role, content}), a saved `datasets` directory, or a directory of such files.
    Default: the built-in Shakespeare dialogue (context line -> reply), split by play."""
    val_fraction: float = 0.05
    """Share of the --data rows held out for validation (unless the data has its own
    'validation' split)."""
    completion_only_loss: bool = True
    """Loss on completion / assistant tokens only; --no-completion-only-loss trains on every
    token (never on padding)."""
    max_length: int | None = None
    """Longest sequence in tokens. Default: the model's context (at most 1024)."""
    too_long: Literal["drop", "truncate", "error"] = "drop"
    """What to do with a longer sequence: drop it, keep its first max_length tokens, or stop
    with an error naming the row. The run reports how many and which."""
    eval_examples: int = 256
    """Held-out demonstrations in the validation loss (a fixed, evenly spread subset)."""
    samples: int = 4
    """Fixed held-out prompts sampled at each evaluation (0 = none)."""
    max_new_tokens: int = 64
    """Tokens per sample at most (a sample ends at EOS)."""
    temperature: float = 0.7
    """Sampling temperature of the samples (0 = greedy)."""

    RESUMABLE = ("steps", "eval_examples", "samples", "max_new_tokens", "temperature")
    RENAMED = {"sample_tokens": "max_new_tokens"}

    def __post_init__(self) -> None:
        check(
            0 < self.val_fraction < 1, "val_fraction", f"must be in (0, 1), got {self.val_fraction}"
        )
        check(
            self.max_length is None or self.max_length >= 2,
            "max_length",
            f"must be ≥ 2, got {self.max_length}",
        )
        for name in ("eval_examples", "max_new_tokens"):
            check(getattr(self, name) >= 1, name, f"must be ≥ 1, got {getattr(self, name)}")
        check(self.samples >= 0, "samples", f"must be ≥ 0, got {self.samples}")
        check(self.temperature >= 0, "temperature", f"must be ≥ 0, got {self.temperature}")
        if self.data is not None:
            check(Path(self.data).exists(), "data", f"{self.data} does not exist")


# ---------------------------------------------------------------------------- setup


def load_records(cfg: Config, engine: Engine) -> tuple[list[data.Record], list[data.Record], str]:
    """Training and validation records (validated), and a line saying where they came from."""
    if cfg.data is None:
        if engine.distributed:  # download the corpus once; the others read the cache
            if engine.is_main:
                load_builtin_corpus()
            engine.barrier()
        train, val, credit = data.builtin_dialogue()
        return train, val, f"built-in dialogue: {credit}"
    rows, val = data.load_records(cfg.data)
    if not val:
        rows, val = data.split_records(rows, cfg.val_fraction, cfg.seed)
    return rows, val, f"data: {cfg.data}"


def prepare_examples(
    cfg: Config, engine: Engine, tokenizer: PreTrainedTokenizerBase, model_dir: Path
) -> tuple[list[data.Example], list[data.Example], str, list[str], int]:
    """Training and validation examples, where they came from, notes for the log, and the
    max_length they fit. Every data error surfaces here, before the model is loaded."""
    train_records, val_records, source = load_records(cfg, engine)
    notes = []
    chats = any(isinstance(r.demo, data.Conversation) for r in train_records + val_records)
    if chats and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = data.DEFAULT_CHAT_TEMPLATE  # saved with every checkpoint
        notes.append("the tokenizer has no chat template: using rlfm's default template")
    n_prefix = cfg.prefix_tokens if cfg.adapter == "prefix" else 0
    room = model_context(model_dir) - n_prefix
    max_length = cfg.max_length or min(room, 1024)
    if max_length > room:
        raise ConfigError(
            f"max_length: {max_length} exceeds the model's {room} positions"
            + (f" left by {n_prefix} prefix tokens" if n_prefix else "")
        )
    examples = {}
    for name, records in (("training", train_records), ("validation", val_records)):
        tokenized = data.tokenize_records(
            records, tokenizer, completion_only_loss=cfg.completion_only_loss
        )
        kept, report = data.fit_length(tokenized, max_length, cfg.too_long)
        if report.describe(name, len(tokenized)):
            notes.append(report.describe(name, len(tokenized)))
        if not kept:
            raise DataError(
                f"{name} data: every one of the {len(tokenized)} demonstrations is longer than "
                f"max_length {max_length}; raise --max-length or use --too-long truncate"
            )
        examples[name] = kept
    return examples["training"], examples["validation"], source, notes, max_length


def model_context(model_dir: Path) -> int:
    """The number of positions of the model in ``model_dir`` (following adapters to the base),
    read from its config.json without loading weights; 1024 when the config does not say."""
    d = model_dir
    while adapters.is_adapter_dir(d):
        d = adapters.adapter_base_path(d)
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"model: cannot read {d / 'config.json'}: {e}") from e
    return int(config.get("max_position_embeddings") or config.get("n_positions") or 1024)


def setup_model(
    cfg: Config, tokenizer: PreTrainedTokenizerBase, model_dir: Path, resume: Path | None
) -> nn.Module:
    """The model to train: the checkpoint's on resume, else the base with the chosen adapter."""
    if resume is not None:
        return adapters.load_model(resume, trainable=True)
    base = adapters.load_model(model_dir)
    if adapters.is_peft_model(base):  # fine-tuning an already fine-tuned model: fold it in
        base = adapters.merge_adapter(base)
    adapters.fit_vocabulary(base, tokenizer)
    base.config.pad_token_id = tokenizer.pad_token_id
    if cfg.adapter == "lora":
        return adapters.add_lora(
            base,
            r=cfg.lora_r,
            alpha=lora_alpha(cfg),
            dropout=cfg.lora_dropout,
            targets=cfg.lora_targets,
            base_path=model_dir,
        )
    if cfg.adapter == "prefix":
        return adapters.add_prefix(base, num_tokens=cfg.prefix_tokens, base_path=model_dir)
    return base


def _takes_logits_to_keep(model: nn.Module) -> bool:
    forward = adapters.base_model_of(model).forward
    return "logits_to_keep" in inspect.signature(forward).parameters


def shape_multiple(engine: Engine) -> int:
    """Padded lengths are multiples of this: 8 on CUDA (tensor-core tiles); 16 for bf16 on a
    CPU, where oneDNN keeps a compiled kernel and its scratch buffer for every distinct matrix
    shape, so that memory would grow with every new sequence length; 1 for fp32 on a CPU."""
    if engine.device.type == "cuda":
        return 8
    return 16 if engine.precision == "bf16" else 1


def batch_loss(
    model: nn.Module, batch: data.Batch, device: torch.device, trim: bool, multiple_of: int = 1
) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over the loss tokens of ``batch``, and their number.

    With ``trim`` the model computes vocabulary logits only from the first position whose next
    token carries loss (``logits_to_keep``), rounded down to ``multiple_of``; the positions
    before it need none. The loss itself is computed on the rows of the logits that carry loss
    only, so its float32 copies are as small as the completions, not the batch.
    """
    B, T = batch.input_ids.shape  # batch, time (on the CPU: no device sync below)
    has_loss = batch.loss_mask[:, 1:].any(0)  # (T-1,) target columns with any loss token
    start = int(has_loss.nonzero()[0]) if trim else 0
    start -= start % multiple_of
    rows, cols = batch.loss_mask[:, start + 1 :].nonzero(as_tuple=True)  # target: start+1+col
    targets = batch.input_ids[:, start + 1 :][rows, cols]  # (N,)
    b = batch.to(device)
    kwargs = {"logits_to_keep": T - start} if trim else {}
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, **kwargs).logits
    if len(rows) == 0:  # nothing to learn here (keeps the graph, so DDP still syncs)
        return logits.sum() * 0.0, 0
    K = logits.shape[1]  # the last K positions; position t - 1 predicts token t
    flat = rows * K + (start + cols) - (T - K)  # (N,) rows of the (B·K, V) logits with loss
    # index_select, not [flat]: its backward is an index_add (the rows are distinct), where
    # advanced indexing's is a sorting index_put (5.1 against 0.9 ms for 600 of 960 rows × 4096)
    picked = logits.reshape(B * K, -1).index_select(0, flat.to(device, non_blocking=True))
    loss = next_token_loss(picked[None], targets.to(device, non_blocking=True)[None])
    return loss * len(flat), len(flat)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    engine: Engine,
    examples: list[data.Example],
    micro: int,
    pad_id: int,
    trim: bool,
    multiple_of: int,
) -> float:
    """Mean loss per loss token over ``examples`` (split over processes)."""
    model.eval()
    mine = examples[engine.rank :: engine.world_size]
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for i in range(0, len(mine), micro):
        batch = data.collate(mine[i : i + micro], pad_id, multiple_of)
        with engine.autocast():
            loss_sum, n = batch_loss(model, batch, engine.device, trim, multiple_of)
        total += loss_sum.double().cpu()
        count += n
    model.train()
    totals = torch.stack([total, torch.tensor(float(count), dtype=torch.float64)])
    summed = engine.all_reduce_sum(totals.to(engine.device)).cpu()
    return float(summed[0] / summed[1].clamp(min=1.0))


def generate_samples(
    cfg: Config,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    engine: Engine,
    prompts: list[data.Example],
) -> list[dict[str, str]]:
    """Samples for the fixed held-out prompts (main process only)."""
    if not prompts:
        return []
    inner = Engine.unwrap(model)
    g = torch.Generator(device=engine.device).manual_seed(cfg.seed)
    inner.eval()
    with engine.autocast():
        gen = generate(
            adapters.sampling_model(inner),
            tokenizer,
            [ex.prompt for ex in prompts],
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            generator=g,
        )
    inner.train()
    return [
        {"prompt": ex.prompt, "sample": s, "reference": ex.reference, "source": ex.source}
        for ex, s in zip(prompts, gen.texts)
    ]


def _spread(items: list, n: int) -> list:
    """``n`` items evenly spread over ``items`` (all of them when n ≥ len)."""
    if n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


# ---------------------------------------------------------------------------- training


def train(cfg: Config) -> dict[str, float]:
    """Run supervised fine-tuning; returns the final metrics (loss, val_loss, ...)."""
    with Run(cfg, "sft", total=cfg.steps) as run:
        if run.finished:
            return run.summary
        engine, resume = run.engine, run.resume
        model_dir = checkpoint.resolve_model_dir(cfg.model) if resume is None else resume
        tokenizer = load_tokenizer(model_dir)
        ensure_pad_token(tokenizer)

        # data: read, validate, tokenize and fit to length before the model is loaded
        train_examples, val_examples, source, notes, max_length = prepare_examples(
            cfg, engine, tokenizer, model_dir
        )
        sampler = data.BucketSampler([len(ex) for ex in train_examples], cfg.batch_size, cfg.seed)
        n_loss = torch.tensor([int(ex.loss_mask.sum()) for ex in train_examples])
        eval_set = sorted(_spread(val_examples, cfg.eval_examples), key=len)
        sample_prompts = _spread(val_examples, cfg.samples) if cfg.samples else []
        rows = engine.shard(cfg.batch_size)
        n_micro = engine.micro_batches(cfg.batch_size, cfg.micro_batch_size)
        micro = (rows.stop - rows.start) // n_micro
        multiple_of = shape_multiple(engine)

        model = setup_model(cfg, tokenizer, model_dir, resume)
        n_trainable, n_total = adapters.trainable_parameters(model)
        trim = cfg.completion_only_loss and _takes_logits_to_keep(model)
        lr = cfg.lr or DEFAULT_LR[cfg.adapter]
        model = engine.prepare(model.train())
        optimizer, scheduler = supervised(model, cfg, lr)
        step = run.track(model, tokenizer, optimizer=optimizer, scheduler=scheduler, data=sampler)
        adapter_line = {
            "full": "full fine-tuning",
            "lora": f"LoRA r={cfg.lora_r} α={lora_alpha(cfg):g}",
            "prefix": f"prefix-tuning, {cfg.prefix_tokens} prefix tokens",
        }[cfg.adapter]
        run.print(
            f"[bold]rlfm sft[/]  {escape(source)}\n"
            f"model {model_dir} ({n_total / 1e6:.2f}M parameters), {adapter_line}: trainable "
            f"{n_trainable:,} ({100 * n_trainable / n_total:.2f}%)\n"
            f"{len(train_examples):,} training / {len(val_examples):,} validation "
            f"demonstrations, max_length {max_length}, loss on "
            f"{'completion tokens' if cfg.completion_only_loss else 'all tokens'}\n"
            + "".join(f"note: {escape(n)}\n" for n in notes)
            + run.banner(
                f"batch {cfg.batch_size} = {engine.world_size} × {n_micro} × {micro} "
                f"demonstrations, peak lr {lr:g}",
                step,
            )
        )

        def evaluation(step: int) -> dict[str, float]:
            val_loss = evaluate(
                model, engine, eval_set, micro, tokenizer.pad_token_id, trim, multiple_of
            )
            if engine.is_main:
                samples = generate_samples(cfg, model, tokenizer, engine, sample_prompts)
                run.append("samples.jsonl", [{"step": step, **s} for s in samples])
            return {"val_loss": val_loss}

        metrics: dict[str, float] = run.logged()
        if step == 0:
            metrics |= evaluation(0)
            run.tracker.log(0, metrics)
        meter = Meter()
        while step < cfg.steps:
            meter.start()
            batch_idx = sampler.next_batch()
            n_global = int(n_loss[batch_idx].sum())  # loss tokens in the batch of all processes
            mine = batch_idx[rows].tolist()
            loss_sum = torch.zeros((), device=engine.device)  # summed loss: no sync per micro-step
            tokens, positions = 0, 0
            for i in range(n_micro):
                part = [train_examples[j] for j in mine[i * micro : (i + 1) * micro]]
                batch = data.collate(part, tokenizer.pad_token_id, multiple_of)
                tokens += int(batch.attention_mask.sum())
                positions += batch.input_ids.numel()
                with engine.micro_step(model, last=i == n_micro - 1):
                    summed, _ = batch_loss(model, batch, engine.device, trim, multiple_of)
                    engine.backward(summed, weight=1.0 / n_global)  # the global token mean
                loss_sum += summed.detach().float()
            grad_norm = engine.step(model, optimizer, scheduler, cfg.max_grad_norm)
            step += 1
            meter.stop(samples=len(mine), tokens=tokens, positions=positions)
            row: dict[str, float] = {}
            if run.due(step, cfg.log_every):
                loss = float(engine.all_reduce_sum(loss_sum)) / n_global
                row = run.train_row(loss, grad_norm, scheduler, sampler, meter)
                del row["positions_per_s"]  # counted for the padding share only
                row["padding"] = 1 - meter.totals["tokens"] / max(1.0, meter.totals["positions"])
            if run.due(step, cfg.eval_every):
                row |= evaluation(step)
            run.tracker.log(step, row)
            metrics |= row
            run.checkpoint(step)
        if "val_loss" not in metrics:  # its metrics.jsonl was lost
            metrics["val_loss"] = evaluate(
                model, engine, eval_set, micro, tokenizer.pad_token_id, trim, multiple_of
            )

        summary = {k: metrics[k] for k in ("loss", "val_loss") if k in metrics}
        summary["trainable_share"] = n_trainable / n_total
        if engine.is_main:
            plot_metrics(
                cfg.out / "metrics.jsonl", cfg.out / "plots" / "loss.png", ["loss", "val_loss"]
            )
            last = [r for r in read_metrics(cfg.out / "samples.jsonl") if r.get("step") == step]
            for s in last[:3]:
                run.print(f"[bold cyan]{escape(s['prompt'].strip())}[/]\n{escape(s['sample'])}\n")
            run.print(
                f"[bold]validation[/] loss {summary['val_loss']:.3f}\n"
                f"model: {checkpoint.latest_checkpoint(cfg.out)}"
            )
        return run.finish(summary)
