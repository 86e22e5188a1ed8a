"""RLHF with PPO: maximise the reward model's score while staying close to the SFT policy.

Papers: Ziegler et al. 2019 (fine-tuning LMs from human preferences: the KL-penalised reward,
the adaptive KL controller), Stiennon et al. 2020, Ouyang et al. 2022 (InstructGPT, eq. 2),
Schulman et al. 2017 (PPO), Schulman et al. 2016 (GAE).

    objective(φ) = E_{x ~ D, y ~ π_φ(·|x)} [ r_θ(x, y) − β · log(π_φ(y|x) / π_SFT(y|x)) ]

The math lives in losses/ppo.py (per-token shaped rewards, GAE, clipped policy and value
losses, the adaptive KL controller) and losses/sequence.py (temperature-consistent log-probs).

One update:
  1. rollout: ``rollout_batch`` prompts; the policy samples one response each with temperature T,
     top_k = 0, top_p = 1, stopping at EOS (rollout.py, KV cache). Dropout is off throughout.
  2. scoring: log π and log π_SFT of every response token, recomputed with the same T; values
     V(x, y_<t) from the value model; the reward model's score at the last real token (a fixed
     ``missing_eos_penalty`` replaces it when the response never reached EOS); per-token reward
     R_t = −β·KL_t (+ score at the last token).
  3. ``ppo_epochs`` passes over the rollout in shuffled minibatches of ``minibatch`` responses,
     one optimizer step per minibatch (policy and value model each), each minibatch cut into
     micro-batches of ``micro_batch_size`` for gradient accumulation. Per minibatch: rewards are
     whitened without shifting their mean, GAE (γ, λ) gives advantages and returns
     (= advantages + values), advantages are whitened. Clipped policy loss (ε) and clipped value
     loss; Adam (eps 1e-5), learning rates annealed linearly to 0 over ``updates``.
  4. β ← adaptive KL controller (target, horizon), or fixed with ``--kl-target none``.

Batch hierarchy: rollout batch (prompts per update, all processes together) → minibatches
(one optimizer step each; ``rollout_batch / minibatch`` steps per epoch) → micro-batches
(forward/backward passes per process). With N processes each takes 1/N of every rollout batch and
of every minibatch.

Reference and value models: with ``--adapter full`` the reference policy is a frozen copy of the
SFT model and the value model a full copy of the reward model. With ``--adapter lora`` the
policy is the SFT model plus a LoRA adapter and the reference is the same weights with the
adapter disabled; the value model is a LoRA adapter (and a copy of the reward head) on the
reward model's own weights, whose score is read with that adapter disabled — two models'
weights in memory instead of four. ``--value-from policy`` starts the value model from the SFT
policy instead, with a new scalar head (with LoRA: an adapter on a copy of the policy's weights).

Deviation from the papers: no pre-training-mix term (InstructGPT's PPO-ptx).

One process:   rlfm ppo --policy runs/demo/sft --reward runs/demo/rm --out runs/demo/ppo
N processes:   torchrun --nproc_per_node 8 -m rlfm ppo --policy sft/ --reward rm/ \\
                   --rollout-batch 512 --minibatch 64 --micro-batch-size 8 --out runs/ppo
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from rlfm import checkpoint
from rlfm.config import check, save_yaml
from rlfm.data.order import EpochOrder
from rlfm.engine import Engine
from rlfm.errors import ConfigError
from rlfm.losses.ppo import (
    AdaptiveKLController,
    explained_variance,
    gae,
    kl_per_token,
    policy_loss,
    shaped_rewards,
    value_loss,
)
from rlfm.losses.sequence import (
    masked_mean,
    moments_from_sums,
    token_entropy,
    token_logprobs,
    whiten,
)
from rlfm.models.adapters import (
    add_lora,
    disabled_adapter,
    is_peft_model,
    load_model,
    sampling_model,
)
from rlfm.models.heads import RewardModel, ValueModel, load_model_tokenizer
from rlfm.rollout import Generation, Samples, generate, model_positions, prompt_budget
from rlfm.tracking import Tracker

RewardFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class Config:
    """Fine-tune a policy with PPO against a reward model, with a KL penalty to the SFT policy."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    policy: Path = Path("runs/demo/sft")
    """The SFT policy: an rlfm run or checkpoint, a Hugging Face model or an adapter directory."""
    reward: Path = Path("runs/demo/rm")
    """The reward model (`rlfm reward train` output: a run or checkpoint directory)."""
    out: Path = Path("runs/demo/ppo")
    """Output directory. Running again on the same directory resumes from its newest checkpoint."""
    prompts: Path | None = None
    """Prompts (JSONL/Parquet/`datasets` rows with `prompt` or `messages`). Default: the built-in
    held-out dialogue contexts."""
    eval_share: float = 0.1
    """Share of the prompts kept apart for evaluation."""
    adapter: Literal["full", "lora"] = "full"
    """Train all policy weights, or a LoRA adapter (then the reference policy is the same weights
    with the adapter disabled, and the value model a LoRA adapter on the reward model)."""
    lora_r: int = 8
    """LoRA rank (with --adapter lora)."""
    value_from: Literal["reward", "policy"] = "reward"
    """Where the value model starts: the reward model (its head already scores responses), or
    the SFT policy with a new scalar head. With --adapter lora it is a LoRA adapter on those
    weights: on the reward model's own weights (no extra copy), or on a copy of the policy's."""
    updates: int = 40
    """PPO updates (rollout, then ppo_epochs of optimisation)."""
    rollout_batch: int = 32
    """Prompts sampled per update, over all processes."""
    minibatch: int = 8
    """Responses per optimizer step, over all processes."""
    micro_batch_size: int | None = None
    """Responses per forward/backward pass per process (default: the whole per-process minibatch)."""
    ppo_epochs: int = 4
    """Passes over each rollout batch."""
    max_prompt_tokens: int = 128
    """Prompts are cut to their last this many tokens."""
    max_new_tokens: int = 48
    """Tokens per response at most (a response stops at EOS)."""
    temperature: float = 0.7
    """Sampling temperature; log-probs are computed with the same temperature."""
    lr: float = 1e-5
    """Peak learning rate of the policy (annealed linearly to 0)."""
    value_lr: float = 5e-5
    """Peak learning rate of the value model (annealed linearly to 0)."""
    kl_coef: float = 0.05
    """Initial β, the weight of the KL penalty."""
    kl_target: float | None = 6.0
    """Target KL (nats per response) of the adaptive controller; `none` keeps β fixed."""
    kl_horizon: int = 320
    """Horizon of the adaptive KL controller, in responses: each update moves β by at most a factor
    1 ± 0.2·rollout_batch/horizon. 320 = 10 × the default rollout batch, Ziegler et al.'s
    K_β = 0.1 per batch (TRL's 10000 barely moves β in a run of ~1,000 responses)."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimator in the reward: k1 = log π − log π_ref, k3 = (ρ−1) − log ρ."""
    clip_eps: float = 0.2
    """PPO clip range of the policy ratio (and of the value change)."""
    gamma: float = 1.0
    """Discount of GAE."""
    lam: float = 0.95
    """λ of GAE."""
    missing_eos_penalty: float = -1.0
    """Score of a response that did not end with EOS (in the reward model's normalised units)."""
    max_grad_norm: float = 1.0
    """Clip each model's gradient norm to this (0 = no clipping)."""
    eval_every: int = 10
    """Evaluate on the held-out prompts every this many updates (and at the end)."""
    save_every: int = 10
    """Write a checkpoint every this many updates (and at the end)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Compute precision: bf16 autocast where the hardware runs it fast (auto), or fp32."""
    device: str = "auto"
    """auto, cpu or cuda."""
    seed: int = 0
    """Seed of sampling and minibatch order."""

    def __post_init__(self) -> None:
        for name in ("updates", "rollout_batch", "minibatch", "ppo_epochs", "lora_r"):
            check(getattr(self, name) >= 1, name, f"must be ≥ 1, got {getattr(self, name)}")
        check(
            self.rollout_batch % self.minibatch == 0,
            "minibatch",
            f"{self.minibatch} must divide rollout_batch {self.rollout_batch}",
        )
        check(
            self.micro_batch_size is None or self.micro_batch_size >= 1,
            "micro_batch_size",
            f"must be ≥ 1, got {self.micro_batch_size}",
        )
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be ≥ 1")
        check(self.max_prompt_tokens >= 1, "max_prompt_tokens", "must be ≥ 1")
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        check(self.lr > 0 and self.value_lr > 0, "lr", "learning rates must be > 0")
        check(self.kl_coef >= 0, "kl_coef", f"must be ≥ 0, got {self.kl_coef}")
        check(
            self.kl_target is None or self.kl_target > 0,
            "kl_target",
            f"must be > 0 or none, got {self.kl_target}",
        )
        check(self.kl_horizon >= 1, "kl_horizon", "must be ≥ 1")
        check(0 < self.clip_eps < 1, "clip_eps", f"must be in (0, 1), got {self.clip_eps}")
        check(0 < self.gamma <= 1, "gamma", f"must be in (0, 1], got {self.gamma}")
        check(0 <= self.lam <= 1, "lam", f"must be in [0, 1], got {self.lam}")
        check(0 < self.eval_share < 1, "eval_share", f"must be in (0, 1), got {self.eval_share}")
        check(self.eval_every >= 1 and self.save_every >= 1, "eval_every", "must be ≥ 1")
        check(self.max_grad_norm >= 0, "max_grad_norm", "must be ≥ 0")


# ---------------------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    """One update's experience (this process's share); all (B, R) over response tokens."""

    samples: Samples  # prompts (B, P) and responses (B, R) with their masks
    prompts: list[str]  # (B,) prompt texts
    responses: list[str]  # (B,) response texts
    logprobs: torch.Tensor  # (B, R) log π_old(y_t), temperature-scaled
    ref_logprobs: torch.Tensor  # (B, R) log π_SFT(y_t), temperature-scaled
    values: torch.Tensor  # (B, R) V(x, y_<t) at rollout time
    scores: torch.Tensor  # (B,) reward-model score (penalty where no EOS)
    kl: torch.Tensor  # (B, R) per-token KL estimate used in the reward


def response_logits(policy: nn.Module, s: Samples) -> torch.Tensor:
    """The policy's logits predicting each response token. -> (B, R, V).

    Only the last R + 1 positions get vocabulary logits (``logits_to_keep``): the prompt's
    positions would cost output-layer work and memory for nothing."""
    ids, mask, pos = s.sequences()
    R = s.response_ids.shape[1]
    out = policy(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=R + 1)
    return out.logits[:, :-1]


def response_values(value_model: nn.Module, s: Samples) -> torch.Tensor:
    """V(x, y_<t) for each response token t: the value head read at the token before it. -> (B, R)."""
    ids, mask, _ = s.sequences()
    P, R = s.prompt_ids.shape[1], s.response_ids.shape[1]
    return value_model(ids, mask)[:, P - 1 : P + R - 1]


# ---------------------------------------------------------------------------- the stage


def _linear_to_zero(total: int) -> Callable[[int], float]:
    return lambda step: max(0.0, 1.0 - step / total)


def train(cfg: Config, reward_fn: RewardFn | None = None) -> dict[str, float]:
    """Run PPO; returns the final evaluation metrics.

    ``reward_fn(prompts, responses) -> (N,) scores`` replaces the reward model (for tests and
    programmatic use); the value model is then initialised from the policy.
    """
    engine = Engine.create(cfg.device, cfg.precision)
    engine.seed(cfg.seed)
    resume = checkpoint.latest_checkpoint(cfg.out)
    policy_dir = checkpoint.resolve_model_dir(cfg.policy)
    tokenizer = load_model_tokenizer(policy_dir)

    # ---- models
    policy = (
        load_model(resume, trainable=True)
        if resume is not None
        else load_model(policy_dir, merge=True)
    )
    if cfg.adapter == "lora" and resume is None:
        policy = add_lora(
            policy, r=cfg.lora_r, alpha=2.0 * cfg.lora_r, dropout=0.0, base_path=policy_dir
        )
    if cfg.adapter == "full" and is_peft_model(policy):
        raise ConfigError(f"adapter: {resume} holds a LoRA checkpoint; rerun with --adapter lora")
    reference = (
        None if cfg.adapter == "lora" else load_model(policy_dir, merge=True).requires_grad_(False)
    )
    reward_model, value_model = _reward_and_value(cfg, reward_fn, policy_dir)
    for m in (policy, reference, reward_model, value_model):
        if m is not None:
            m.eval()  # dropout off during RL; gradients still flow
            m.to(engine.device)
    _check_vocabulary(tokenizer, policy)
    prompt_budget(model_positions(policy), cfg.max_new_tokens, cfg.max_prompt_tokens)  # fits?

    # ---- prompts
    train_prompts, eval_prompts, source = _prompts(cfg, tokenizer, engine)
    order = EpochOrder(len(train_prompts), cfg.rollout_batch, cfg.seed, name="prompts")
    rows = engine.shard(cfg.rollout_batch)
    per_process_mb = engine.shard(cfg.minibatch)
    mb_size = per_process_mb.stop - per_process_mb.start
    n_micro = engine.micro_batches(cfg.minibatch, cfg.micro_batch_size)
    micro = mb_size // n_micro

    # ---- optimisation
    policy_ddp, value_ddp = engine.prepare(policy), engine.prepare(value_model)
    p_opt = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, eps=1e-5, weight_decay=0.0
    )
    v_opt = torch.optim.AdamW(
        [p for p in value_model.parameters() if p.requires_grad],
        lr=cfg.value_lr,
        eps=1e-5,
        weight_decay=0.0,
    )
    steps_total = cfg.updates * cfg.ppo_epochs * (cfg.rollout_batch // cfg.minibatch)
    p_sched = torch.optim.lr_scheduler.LambdaLR(p_opt, _linear_to_zero(steps_total))
    v_sched = torch.optim.lr_scheduler.LambdaLR(v_opt, _linear_to_zero(steps_total))
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)

    update, first_eos = 0, None
    if resume is not None:
        state = checkpoint.load_trainer_state(resume, engine)
        value_model.load_state_dict(state["value"], strict=False)
        p_opt.load_state_dict(state["policy_optimizer"])
        v_opt.load_state_dict(state["value_optimizer"])
        p_sched.load_state_dict(state["policy_scheduler"])
        v_sched.load_state_dict(state["value_scheduler"])
        kl_ctl.load_state_dict(state["kl_controller"])
        order.load_state_dict(state["data"])
        update, first_eos = state["step"], state.get("first_eos_fraction")
    if engine.is_main:
        save_yaml(cfg, cfg.out / "config.yaml")
    tracker = Tracker(
        cfg.out,
        enabled=engine.is_main,
        total_steps=cfg.updates,
        start_step=update,
        description="ppo",
    )
    n_train = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in policy.parameters())
    tracker.print(
        f"[bold]rlfm ppo[/]  policy {policy_dir}  reward {'(function)' if reward_fn else cfg.reward}\n"
        f"prompts: {source}: {len(train_prompts):,} training, {len(eval_prompts):,} evaluation\n"
        f"policy {cfg.adapter}: {n_train:,} of {n_all:,} parameters trained ({100 * n_train / n_all:.2f}%)\n"
        f"batch: rollout {cfg.rollout_batch} → minibatches of {cfg.minibatch} ({cfg.rollout_batch // cfg.minibatch}"
        f" steps × {cfg.ppo_epochs} epochs) → {n_micro} micro-batch(es) of {micro} × {engine.world_size} "
        f"process(es); {engine.device}, {engine.precision}"
        + (f"\nresuming from {resume} (update {update})" if resume else "")
    )
    if reward_fn is None:
        _check_reward_model(cfg, tracker)

    shared_weights = cfg.adapter == "lora" and cfg.value_from == "reward" and reward_fn is None

    def score(prompts: list[str], responses: list[str], s: Samples) -> torch.Tensor:
        if reward_fn is not None:
            return reward_fn(prompts, responses).float().to(engine.device)
        ids, mask, _ = s.sequences()
        if shared_weights:  # the reward model's weights carry the value model's LoRA layers
            with disabled_adapter(value_model.backbone):
                return reward_model(ids, mask).float()
        return reward_model(ids, mask).float()

    def ref_logprobs(s: Samples) -> torch.Tensor:
        if reference is None:
            with disabled_adapter(policy):
                return token_logprobs(response_logits(policy, s), s.response_ids, cfg.temperature)
        return token_logprobs(response_logits(reference, s), s.response_ids, cfg.temperature)

    @torch.no_grad()
    def collect(prompts: list[str]) -> Rollout:
        gen = _sample(cfg, engine, tokenizer, sampling_model(policy), prompts)
        s, responses = gen.samples, gen.texts
        with engine.autocast():
            logprobs = token_logprobs(response_logits(policy, s), s.response_ids, cfg.temperature)
            ref = ref_logprobs(s)
            values = response_values(value_model, s).float()
            raw = score(prompts, responses, s)
        scores = torch.where(s.ended, raw, torch.full_like(raw, cfg.missing_eos_penalty))
        kl = kl_per_token(logprobs, ref, cfg.kl_estimator) * s.response_mask
        return Rollout(s, prompts, responses, logprobs, ref, values, scores, kl)

    metrics: dict[str, float] = {}
    if update == 0:  # the SFT policy's own held-out numbers: the start of every curve
        tracker.log(0, _evaluate(eval_prompts, collect, engine, reward_fn is None))
    while update < cfg.updates:
        t0 = time.perf_counter()
        batch_prompts = [train_prompts[i] for i in order.next_batch()[rows].tolist()]
        ro = collect(batch_prompts)
        gen_time = time.perf_counter() - t0
        n_gen_tokens = engine.all_reduce_sum(ro.samples.response_mask.sum().float())
        stats = _optimise(
            cfg,
            engine,
            ro,
            policy_ddp,
            value_ddp,
            p_opt,
            v_opt,
            p_sched,
            v_sched,
            kl_ctl.kl_coef,
            update,
            mb_size,
            n_micro,
            micro,
        )
        train_time = time.perf_counter() - t0 - gen_time
        update += 1

        m = ro.samples.response_mask
        seq_kl = ro.kl.sum(1)
        k1 = ((ro.logprobs - ro.ref_logprobs) * m).sum(1)
        k3 = kl_per_token(ro.logprobs, ro.ref_logprobs, "k3").mul(m).sum(1)
        row = {
            "score": engine.all_reduce_mean(ro.scores.mean()),
            "kl": engine.all_reduce_mean(seq_kl.mean()),
            "kl_k1": engine.all_reduce_mean(k1.mean()),
            # its standard error over the rollout: how far below 0 sampling noise alone reaches
            "kl_k1_stderr": math.sqrt(
                engine.all_reduce_mean(k1.var() if len(k1) > 1 else k1.new_zeros(()))
                / (len(k1) * engine.world_size)
            ),
            "kl_k3": engine.all_reduce_mean(k3.mean()),
            "beta": kl_ctl.kl_coef,
            "response_length": engine.all_reduce_mean(m.sum(1).float().mean()),
            "eos_fraction": engine.all_reduce_mean(ro.samples.ended.float().mean()),
            **{k: engine.all_reduce_mean(v) for k, v in stats.items()},
            "gen_tokens_per_s": float(n_gen_tokens) / max(gen_time, 1e-9),
            "train_tokens_per_s": float(n_gen_tokens) * cfg.ppo_epochs / max(train_time, 1e-9),
            "lr": p_sched.get_last_lr()[0],
        }
        row["objective"] = row["score"] - row["beta"] * row["kl"]
        kl_ctl.update(row["kl"], cfg.rollout_batch)
        first_eos = row["eos_fraction"] if first_eos is None else first_eos
        _guards(row, first_eos, tracker)
        if update % cfg.eval_every == 0 or update == cfg.updates:
            row |= _evaluate(eval_prompts, collect, engine, reward_fn is None)
            _write_samples(cfg.out / "samples.jsonl", update, ro, engine)
        tracker.log(update, row)
        metrics = row
        if update % cfg.save_every == 0 or update == cfg.updates:
            checkpoint.save_checkpoint(
                cfg.out,
                update,
                engine=engine,
                model=policy,
                tokenizer=tokenizer,
                config=cfg,
                trainer_state={
                    "value": _trainable_state(value_model),
                    "policy_optimizer": p_opt.state_dict(),
                    "value_optimizer": v_opt.state_dict(),
                    "policy_scheduler": p_sched.state_dict(),
                    "value_scheduler": v_sched.state_dict(),
                    "kl_controller": kl_ctl.state_dict(),
                    "data": order.state_dict(),
                    "first_eos_fraction": first_eos,
                },
                keep=2,
            )
    tracker.close()
    if engine.is_main:
        from rlfm.evaluate.plots import plot_metrics

        plot_metrics(
            cfg.out / "metrics.jsonl",
            cfg.out / "plots" / "reward.png",
            ["score", "objective", "eval_score", "eval_gold"],
        )
        plot_metrics(
            cfg.out / "metrics.jsonl", cfg.out / "plots" / "kl.png", ["kl", "kl_k3", "eval_kl"]
        )
    summary = {
        k: v for k, v in metrics.items() if k.startswith("eval_") or k in ("score", "kl", "beta")
    }
    if engine.is_main and reward_fn is None and cfg.prompts is None:
        summary |= _gold_win_rate(cfg, tokenizer, policy, reference, eval_prompts, engine, tracker)
    engine.close()
    return summary


@torch.no_grad()
def _sample(
    cfg: Config,
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    model: nn.Module,
    prompts: list[str],
    batch_size: int | None = None,
) -> Generation:
    """Responses to ``prompts`` as PPO samples them: temperature ``cfg.temperature``, top_k 0,
    top_p 1, each row stopping at EOS, prompts cut to their last ``max_prompt_tokens`` tokens."""
    with engine.autocast():
        return generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            max_prompt_tokens=cfg.max_prompt_tokens,
            batch_size=batch_size,
        )


def _reward_and_value(
    cfg: Config, reward_fn: RewardFn | None, policy_dir: Path
) -> tuple[nn.Module | None, nn.Module]:
    """The frozen reward model (None with a reward function) and the trainable value model."""
    if reward_fn is not None or cfg.value_from == "policy":
        value = ValueModel.from_backbone(
            policy_dir, lora_rank=cfg.lora_r if cfg.adapter == "lora" else 0, seed=cfg.seed
        )
        if reward_fn is not None:
            return None, value
        reward = RewardModel.from_pretrained(checkpoint.resolve_model_dir(cfg.reward))
        return reward.requires_grad_(False), value
    reward_dir = checkpoint.resolve_model_dir(cfg.reward)
    reward = RewardModel.from_pretrained(reward_dir)
    reward.requires_grad_(False)
    if cfg.adapter == "lora":
        backbone = add_lora(
            reward.backbone,
            r=cfg.lora_r,
            alpha=2.0 * cfg.lora_r,
            dropout=0.0,
            targets=("all-linear",),
        )
        value = ValueModel(
            backbone,
            head=copy.deepcopy(reward.head).requires_grad_(True),
            gain=float(reward.gain),
            bias=float(reward.bias),
        )
        reward.backbone = backbone.get_base_model()  # the same weights, LoRA layers inside
        return reward, value
    value = ValueModel.from_pretrained(reward_dir)
    value.requires_grad_(True)
    for p in (
        value.backbone.get_output_embeddings().parameters()
        if value.backbone.get_output_embeddings() is not None
        else []
    ):
        if p is not value.backbone.get_input_embeddings().weight:
            p.requires_grad_(False)
    return reward, value


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters and buffers of ``model`` (what a checkpoint must restore)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {
        k: v.detach().cpu()
        for k, v in model.state_dict().items()
        if k in names or k in ("gain", "bias")
    }


def _check_vocabulary(tokenizer: PreTrainedTokenizerBase, policy: nn.Module) -> None:
    size = policy.get_input_embeddings().weight.shape[0]
    if size < len(tokenizer):
        raise ConfigError(
            f"policy: its vocabulary ({size}) is smaller than its tokenizer's ({len(tokenizer)})"
        )
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ConfigError("policy: its tokenizer's PAD token equals EOS; PPO needs them distinct")


def _prompts(
    cfg: Config, tokenizer: PreTrainedTokenizerBase, engine: Engine
) -> tuple[list[str], list[str], str]:
    from rlfm.data.prompts import builtin_prompts, load_prompts, split_prompts

    if cfg.prompts is None:
        train, held_out = builtin_prompts(cfg.eval_share, cfg.seed)
        return train, held_out, "built-in held-out dialogue contexts"
    prompts = load_prompts(cfg.prompts, tokenizer)
    train, held_out = split_prompts(prompts, cfg.eval_share, cfg.seed)
    return train, held_out, str(cfg.prompts)


def _whiten_global(
    engine: Engine, x: torch.Tensor, mask: torch.Tensor, shift_mean: bool
) -> torch.Tensor:
    """Whiten over the masked-in entries of ``x`` on all processes (one global minibatch)."""
    m = mask.to(x.dtype)
    sums = engine.all_reduce_sum(torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()]).double())
    moments = moments_from_sums(sums[0], sums[1], sums[2])
    return whiten(x, mask, shift_mean, moments=(moments[0].to(x.dtype), moments[1].to(x.dtype)))


def _optimise(
    cfg: Config,
    engine: Engine,
    ro: Rollout,
    policy: nn.Module,
    value_model: nn.Module,
    p_opt: torch.optim.Optimizer,
    v_opt: torch.optim.Optimizer,
    p_sched: torch.optim.lr_scheduler.LRScheduler,
    v_sched: torch.optim.lr_scheduler.LRScheduler,
    kl_coef: float,
    update: int,
    mb_size: int,
    n_micro: int,
    micro: int,
) -> dict[str, float]:
    """``ppo_epochs`` passes of minibatch steps over one rollout; returns mean statistics."""
    B = ro.samples.response_ids.shape[0]  # this process's rollout rows
    rewards_all = shaped_rewards(ro.scores, ro.kl, ro.samples.response_mask, kl_coef)
    g = torch.Generator().manual_seed(cfg.seed * 7919 + update)  # the same on every process
    sums: dict[str, float] = {}
    count = 0
    for epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(B, generator=g).to(ro.scores.device)
        for start in range(0, B, mb_size):
            idx = perm[start : start + mb_size]
            s = ro.samples.select(idx)
            mask = s.response_mask
            rewards = _whiten_global(engine, rewards_all[idx], mask, shift_mean=False)
            advantages, returns = gae(rewards, ro.values[idx], mask, cfg.gamma, cfg.lam)
            advantages = _whiten_global(engine, advantages, mask, shift_mean=True)
            n_tokens = mask.sum().clamp(min=1)
            for i in range(n_micro):
                sl = slice(i * micro, (i + 1) * micro)
                part = s.select(sl)
                last = i == n_micro - 1
                m = part.response_mask
                weight = m.sum() / n_tokens  # token-weighted mean over micro-batches
                # policy, then value model: one model's activations alive at a time
                with engine.micro_step(policy, last):
                    with engine.autocast():
                        logits = response_logits(policy, part)
                        logprobs = token_logprobs(logits, part.response_ids, cfg.temperature)
                    p_loss, p_stats = policy_loss(
                        logprobs, ro.logprobs[idx][sl], advantages[sl], m, cfg.clip_eps
                    )
                    (p_loss * weight).backward()
                logits = logits.detach()
                with engine.micro_step(value_model, last):
                    with engine.autocast():
                        values = response_values(value_model, part).float()
                    v_loss, v_stats = value_loss(
                        values, ro.values[idx][sl], returns[sl], m, cfg.clip_eps
                    )
                    (v_loss * weight).backward()
                with torch.no_grad():
                    step_stats = {
                        "policy_loss": float(p_loss),
                        "value_loss": float(v_loss),
                        "entropy": float(masked_mean(token_entropy(logits, cfg.temperature), m)),
                        **{k: float(v) for k, v in (p_stats | v_stats).items()},
                    }
                    if epoch == 0:
                        step_stats["explained_variance"] = explained_variance(
                            ro.values[idx][sl], returns[sl], m
                        )
                for k, v in step_stats.items():
                    if math.isfinite(v):
                        sums[k] = sums.get(k, 0.0) + v
                count += 1
            engine.step(policy, p_opt, p_sched, cfg.max_grad_norm)
            engine.step(value_model, v_opt, v_sched, cfg.max_grad_norm)
    first_epoch = max(1, count // cfg.ppo_epochs)
    return {k: v / (first_epoch if k == "explained_variance" else count) for k, v in sums.items()}


def _guards(row: dict[str, float], first_eos: float, tracker: Tracker) -> None:
    """Warnings that speak up before a run silently diverges."""
    problems = []
    if row["kl_k1"] < -max(1e-3, 3.0 * row.get("kl_k1_stderr", 0.0)):
        problems.append(
            f"mean KL is negative ({row['kl_k1']:.4f}, more than 3 standard errors below 0): the "
            "sampled responses are not samples of π. "
            "Likely cause: a sampling setting (temperature, top_k, top_p) that differs from the one "
            "the log-probs are computed with, or a tokenizer/model mismatch"
        )
    if not 0.5 <= row.get("ratio", 1.0) <= 2.0:
        problems.append(
            f"mean policy ratio {row['ratio']:.3f} is outside [0.5, 2]: updates are too large "
            "(lower --lr or --ppo-epochs)"
        )
    if first_eos > 0.2 and row["eos_fraction"] < 0.5 * first_eos:
        problems.append(
            f"the share of responses ending with EOS fell from {first_eos:.2f} to "
            f"{row['eos_fraction']:.2f}: the policy is learning to ramble (raise "
            "--missing-eos-penalty's magnitude or β)"
        )
    for p in problems:
        warnings.warn(p, stacklevel=2)
        tracker.print(f"[yellow]warning:[/] {p}")


def _check_reward_model(cfg: Config, tracker: Tracker) -> None:
    """Warn when the reward model's held-out pairwise accuracy is below 60%."""
    from rlfm.tracking import read_metrics

    run = Path(cfg.reward)
    for candidate in (run, run.parent.parent):  # a run dir, or a checkpoint inside one
        rows = read_metrics(candidate / "metrics.jsonl")
        accs = [
            r[k]
            for r in rows
            for k in r
            if "accuracy" in k and "gold" not in k and isinstance(r[k], float)
        ]
        if accs:
            if accs[-1] < 0.6:
                msg = (
                    f"the reward model's held-out pairwise accuracy is {accs[-1]:.1%} (< 60%): PPO "
                    "will optimise noise; train it longer or on more comparisons"
                )
                warnings.warn(msg, stacklevel=2)
                tracker.print(f"[yellow]warning:[/] {msg}")
            return


def _evaluate(
    prompts: list[str], collect: Callable[[list[str]], Rollout], engine: Engine, gold: bool
) -> dict[str, float]:
    """Score, KL and (on the built-in task) the gold labeler's score on held-out prompts."""
    mine = prompts[engine.rank :: engine.world_size]
    scores, kls, golds = [], [], []
    for i in range(0, len(mine), 32):
        ro = collect(mine[i : i + 32])
        scores.append(ro.scores)
        kls.append(ro.kl.sum(1))
        if gold:
            from rlfm.data.labelers import clean_reply, gold_score

            golds.append(
                torch.tensor(
                    [gold_score(p, clean_reply(r)) for p, r in zip(ro.prompts, ro.responses)]
                )
            )
    out = {
        "eval_score": engine.all_reduce_mean(torch.cat(scores).mean()),
        "eval_kl": engine.all_reduce_mean(torch.cat(kls).mean()),
    }
    if golds:
        out["eval_gold"] = engine.all_reduce_mean(torch.cat(golds).mean())
    return out


def _write_samples(path: Path, update: int, ro: Rollout, engine: Engine, n: int = 8) -> None:
    """A sample table (prompt, response, score, KL) for a look at what the policy does."""
    if not engine.is_main:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for i in range(min(n, len(ro.prompts))):
            row = {
                "update": update,
                "prompt": ro.prompts[i],
                "response": ro.responses[i],
                "score": float(ro.scores[i]),
                "kl": float(ro.kl[i].sum()),
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


@torch.no_grad()
def _gold_win_rate(
    cfg: Config,
    tokenizer: PreTrainedTokenizerBase,
    policy: nn.Module,
    reference: nn.Module | None,
    prompts: list[str],
    engine: Engine,
    tracker: Tracker,
) -> dict[str, float]:
    """The gold labeler's verdict on the held-out prompts: PPO's response against the SFT
    policy's, one each per prompt, sampled with the same temperature (built-in task only)."""
    from rlfm.data.labelers import clean_reply, gold_score
    from rlfm.evaluate.winrate import win_rate

    def responses(model: nn.Module) -> list[str]:
        return _sample(cfg, engine, tokenizer, model, prompts, batch_size=32).texts

    ppo = responses(sampling_model(policy))
    if reference is None:
        with disabled_adapter(policy):
            sft = responses(sampling_model(policy))
    else:
        sft = responses(reference)
    gold_ppo = [gold_score(p, clean_reply(r)) for p, r in zip(prompts, ppo)]
    gold_sft = [gold_score(p, clean_reply(r)) for p, r in zip(prompts, sft)]
    rate, low, high = win_rate(gold_ppo, gold_sft)
    tracker.print(
        f"[bold]gold labeler[/] on {len(prompts)} held-out prompts: PPO {sum(gold_ppo) / len(prompts):.3f} vs "
        f"SFT {sum(gold_sft) / len(prompts):.3f}; PPO wins {rate:.1%} (95% CI {low:.1%}–{high:.1%}, ties count half)"
    )
    return {
        "gold_ppo": sum(gold_ppo) / len(prompts),
        "gold_sft": sum(gold_sft) / len(prompts),
        "gold_win_rate": rate,
        "gold_win_rate_low": low,
        "gold_win_rate_high": high,
    }
