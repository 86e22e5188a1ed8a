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
  3. ``ppo_epochs`` passes over the rollout in shuffled minibatches of ``minibatch`` responses
     (of similar lengths, each trimmed of the padding none of its rows needs: see
     ``group_by_length``), one optimizer step per minibatch (policy and value model each), each
     minibatch cut into micro-batches of ``micro_batch_size`` for gradient accumulation.
     Per minibatch: rewards are whitened without shifting their mean, GAE (γ, λ) gives
     advantages and returns (= advantages + values), advantages are whitened. Clipped policy
     loss (ε) and clipped value loss; Adam (eps 1e-5), learning rates annealed linearly to 0
     over ``updates``.
     With ``--ptx-coef γ > 0`` (InstructGPT's PPO-ptx) every policy step also adds
     γ × the mean next-token loss of ``ptx_batch`` windows of pre-training text (``--ptx-data``,
     default the built-in corpus's training plays), drawn by a resumable sampler.
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

The reward model (``--reward``) is an ``rlfm reward train`` run, or any local one-label
``AutoModelForSequenceClassification`` directory (or LoRA adapter onto one) with its own tokenizer
(models/heads.py). One that shares the policy's tokenizer scores the sampled token ids; one with
another tokenizer scores each prompt and decoded response, re-tokenized, and the value model then
starts from the policy (a value model on the reward model's weights could not read the policy's
tokens).

The learning rates default per adapter (``DEFAULT_LR``): a LoRA adapter starts at B = 0 and
moves only through a low-rank update, so it needs a larger step than full fine-tuning to change
the policy as fast.

Deviation from the papers: the pre-training mix (InstructGPT's PPO-ptx, γ = 27.8 on a summed
loss there) is off by default (``ptx_coef`` 0), as in Stiennon et al. and Ziegler et al.; its γ
here weighs a per-token mean loss.

One process:   rlfm ppo --policy runs/demo/sft --reward runs/demo/rm --out runs/demo/ppo
N processes:   torchrun --nproc_per_node 8 -m rlfm ppo --policy sft/ --reward rm/ \\
                   --rollout-batch 512 --minibatch 64 --micro-batch-size 8 --out runs/ppo
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from rlfm import checkpoint
from rlfm.config import AdapterSettings, RunSettings, check, lora_alpha, settings
from rlfm.data.blocks import BlockSampler, gather_windows, tokenize_stream
from rlfm.data.order import EpochOrder
from rlfm.engine import Engine
from rlfm.errors import ConfigError, ModelError, RunError
from rlfm.evaluate.overoptimisation import plot_overoptimisation
from rlfm.evaluate.plots import plot_metrics
from rlfm.gold import GoldLabeler
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
    fit_vocabulary,
    is_peft_model,
    load_model,
    sampling_model,
)
from rlfm.models.heads import (
    ValueModel,
    head_format,
    load_model_tokenizer,
    same_token_ids,
    tokenizer_of,
)
from rlfm.optim import adamw
from rlfm.rollout import (
    Generation,
    Samples,
    generate,
    length_grouped,
    model_positions,
    prompt_budget,
)
from rlfm.run import Run
from rlfm.stages import pretrain
from rlfm.stages.reward_score import load_reward_model

RewardFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]
BEST = "best"
"""<out>/best: the policy of the update with the best held-out gold score (a model directory)."""
VERDICT = "gold_verdict.jsonl"
"""<out>/gold_verdict.jsonl: per held-out prompt, the SFT, best and last policies' replies and
their gold (and proxy) scores: what the win rates are computed from."""

DEFAULT_LR = {"full": (1e-5, 5e-5), "lora": (2e-4, 1e-3)}
"""(policy, value model) peak learning rates per adapter when --lr / --value-lr are not given."""


@settings(
    RunSettings,
    AdapterSettings,
    eval_every=10,
    save_every=10,
    log_every=1,
    keep_checkpoints=2,
)
class Config:
    """Fine-tune a policy with PPO against a reward model, with a KL penalty to the SFT policy."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    policy: Path = Path("runs/demo/sft")
    """The SFT policy: an rlfm run or checkpoint, a Hugging Face model or an adapter directory."""
    reward: Path = Path("runs/demo/rm")
    """The reward model: an `rlfm reward train` run or checkpoint, or any local
    AutoModelForSequenceClassification directory with one label (or a LoRA adapter onto one).
    A reward model with another tokenizer than the policy's scores the decoded text."""
    out: Path = Path("runs/demo/ppo")
    """Output directory. Running again on the same directory resumes from its newest checkpoint."""
    prompts: Path | None = None
    """Prompts (JSONL/JSON/Parquet/`datasets` rows with `prompt` or `messages`, or a .txt file of
    one prompt per line). Default: the built-in held-out dialogue contexts."""
    val_fraction: float = 0.1
    """Share of the prompts held out for evaluation."""
    eval_size: int | None = None
    """Held-out prompts evaluated (the first this many of the held-out share; default: all)."""
    value_from: Literal["reward", "policy"] = "reward"
    """Where the value model starts: the reward model (its head already scores responses), or
    the SFT policy with a new scalar head. With --adapter lora it is a LoRA adapter on those
    weights: on the reward model's own weights (no extra copy), or on a copy of the policy's.
    A reward model with another tokenizer cannot read the policy's tokens: the value model then
    starts from the policy."""
    updates: int = 40
    """PPO updates (rollout, then ppo_epochs of optimisation)."""
    rollout_batch: int = 32
    """Prompts sampled per update, over all processes (evaluation samples this many at a time)."""
    minibatch: int = 8
    """Responses per optimizer step, over all processes."""
    micro_batch_size: int | None = None
    """Responses per forward/backward pass per process (default: the whole per-process minibatch)."""
    ppo_epochs: int = 4
    """Passes over each rollout batch."""
    group_by_length: bool = True
    """Minibatches of similar lengths (rows drawn at random, sorted within groups of four
    minibatches, the minibatches in random order), each trimmed of the padding columns none of
    its rows needs: the same losses on less padding. Off: minibatches drawn at random."""
    max_prompt_tokens: int = 128
    """Prompts are cut to their last this many tokens."""
    max_new_tokens: int = 48
    """Tokens per response at most (a response stops at EOS)."""
    temperature: float = 1.0
    """Sampling temperature; log-probs are computed with the same temperature. 1 samples the
    policy itself, as the labelling step does: the reward model learned from such replies,
    so PPO starts where the reward model is right (at 0.7 the same PPO run beat SFT on 70% of
    held-out prompts by the gold rule, at 1.0 on 84%)."""
    lr: float | None = None
    """Peak learning rate of the policy (annealed linearly to 0). Default: 1e-5 (full),
    2e-4 (lora)."""
    value_lr: float | None = None
    """Peak learning rate of the value model (annealed linearly to 0). Default: 5e-5 (full),
    1e-3 (lora)."""
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
    ptx_coef: float = 0.0
    """γ of InstructGPT's PPO-ptx: every policy step adds γ × the mean next-token loss of
    pre-training text, so the policy keeps the language it was pre-trained on. 0: off."""
    ptx_data: Path | None = None
    """Pre-training text of the ptx term (as `rlfm pretrain --data`: text files, a directory,
    JSONL/Parquet rows with a `text` column, a saved `datasets` directory), of which the
    training share `rlfm pretrain` takes with the same seed. Default: the built-in corpus's
    training plays."""
    ptx_batch: int = 8
    """Windows of pre-training text per policy step, over all processes."""
    ptx_context: int = 128
    """Tokens per window of pre-training text."""
    missing_eos_penalty: float = -1.0
    """Score of a response that did not end with EOS (in the reward model's normalised units)."""
    gold: Path | None = None
    """The gold labeler that judges held-out replies (a gold.json, as the pipeline writes: the
    built-in text rule plus fluency under a language model). Default: the text rule alone on
    the built-in prompts; no gold judgement on --prompts."""

    RESUMABLE = ("updates",)
    RENAMED = {"eval_share": "val_fraction"}

    def __post_init__(self) -> None:
        for name in ("updates", "rollout_batch", "minibatch", "ppo_epochs"):
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
        check(self.adapter != "prefix", "adapter", "PPO trains the policy full or with lora")
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be ≥ 1")
        check(self.max_prompt_tokens >= 1, "max_prompt_tokens", "must be ≥ 1")
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        for name in ("lr", "value_lr"):
            v = getattr(self, name)
            check(v is None or v > 0, name, f"must be > 0, got {v}")
        check(self.kl_coef >= 0, "kl_coef", f"must be ≥ 0, got {self.kl_coef}")
        check(
            self.kl_target is None or self.kl_target > 0,
            "kl_target",
            f"must be > 0 or none, got {self.kl_target}",
        )
        check(self.kl_horizon >= 1, "kl_horizon", "must be ≥ 1")
        check(self.ptx_coef >= 0, "ptx_coef", f"must be ≥ 0, got {self.ptx_coef}")
        for name in ("ptx_batch", "ptx_context"):
            check(getattr(self, name) >= 1, name, f"must be ≥ 1, got {getattr(self, name)}")
        if self.ptx_data is not None:
            check(Path(self.ptx_data).exists(), "ptx_data", f"{self.ptx_data} does not exist")
        check(self.eval_size is None or self.eval_size >= 1, "eval_size", "must be ≥ 1")
        check(0 < self.clip_eps < 1, "clip_eps", f"must be in (0, 1), got {self.clip_eps}")
        check(0 < self.gamma <= 1, "gamma", f"must be in (0, 1], got {self.gamma}")
        check(0 <= self.lam <= 1, "lam", f"must be in [0, 1], got {self.lam}")
        check(
            0 < self.val_fraction < 1, "val_fraction", f"must be in (0, 1), got {self.val_fraction}"
        )
        check(self.gold is None or Path(self.gold).is_file(), "gold", f"{self.gold} is no file")

    @property
    def learning_rates(self) -> tuple[float, float]:
        """The (policy, value model) peak learning rates that run."""
        policy_lr, value_lr = DEFAULT_LR[self.adapter]
        return self.lr or policy_lr, self.value_lr or value_lr


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


# ---------------------------------------------------------------------------- the models


@dataclass
class Models:
    """PPO's four roles. With LoRA the reference is the policy with its adapter disabled, and
    with ``shared_weights`` the value model is a LoRA adapter on the reward model's own weights
    (its score is then read with that adapter disabled)."""

    policy: nn.Module  # trainable (all weights, or a LoRA adapter)
    reference: nn.Module | None  # frozen SFT copy; None = the policy with its adapter disabled
    reward: nn.Module | None  # frozen reward model; None when a reward function scores
    value: nn.Module  # trainable value model
    shared_weights: bool  # the value adapter sits on the reward model's weights
    retokenize: bool = False  # the reward model has its own tokenizer: it scores decoded text


def load_models(
    cfg: Config,
    policy_dir: Path,
    resume: Path | None,
    reward_fn: RewardFn | None,
    tokenizer: PreTrainedTokenizerBase,
) -> Models:
    """The policy (from the checkpoint when resuming), the reference, reward and value models.
    A reward model whose tokenizer is not the policy's (``tokenizer``) scores decoded text, and
    the value model then starts from the policy; one saved without a tokenizer reads the
    policy's tokens."""
    policy = (
        load_model(resume, trainable=True)
        if resume is not None
        else load_model(policy_dir, merge=True)
    )
    if cfg.adapter == "lora" and resume is None:
        policy = add_lora(
            policy,
            r=cfg.lora_r,
            alpha=lora_alpha(cfg),
            dropout=0.0,
            targets=cfg.lora_targets,
            base_path=policy_dir,
        )
    if cfg.adapter == "full" and is_peft_model(policy):
        raise ConfigError(f"adapter: {resume} holds a LoRA checkpoint; rerun with --adapter lora")
    reference = (
        None if cfg.adapter == "lora" else load_model(policy_dir, merge=True).requires_grad_(False)
    )
    retokenize = False
    if reward_fn is None:
        reward_tok = tokenizer_of(checkpoint.resolve_model_dir(cfg.reward))
        retokenize = reward_tok is not None and not same_token_ids(reward_tok, tokenizer)
    value_from = "policy" if retokenize else cfg.value_from
    reward, value = _reward_and_value(cfg, reward_fn, policy_dir, value_from)
    shared = cfg.adapter == "lora" and value_from == "reward" and reward_fn is None
    return Models(policy, reference, reward, value, shared, retokenize)


def _reward_and_value(
    cfg: Config, reward_fn: RewardFn | None, policy_dir: Path, value_from: str
) -> tuple[nn.Module | None, nn.Module]:
    """The frozen reward model (None with a reward function) and the trainable value model."""
    lora_r = cfg.lora_r if cfg.adapter == "lora" else 0
    if reward_fn is not None or value_from == "policy":
        value = ValueModel.from_backbone(
            policy_dir, lora_rank=lora_r, lora_alpha=lora_alpha(cfg), seed=cfg.seed
        )
        if reward_fn is not None:
            return None, value
        return load_reward_model(cfg.reward), value
    reward_dir = checkpoint.resolve_model_dir(cfg.reward)
    reward = load_reward_model(reward_dir)
    if cfg.adapter == "lora":
        backbone = add_lora(
            reward.backbone,
            r=cfg.lora_r,
            alpha=lora_alpha(cfg),
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
    return reward, value


class TrainableState:
    """A model's trainable parameters (and normalisation buffers) as checkpoint state."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        return {
            k: v.detach().cpu()
            for k, v in self.model.state_dict().items()
            if k in names or k in ("gain", "bias")
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:  # e.g. a value model saved under other module names by an earlier rlfm
            raise RunError(
                f"the checkpoint's value-model state lacks {', '.join(missing[:3])}: it was "
                "written by another rlfm version; choose another --out"
            )
        self.model.load_state_dict(state, strict=False)


@dataclass
class Progress:
    """Run facts a resumed run must remember: the EOS share of the first update (the guard
    compares later updates with it) and the update whose held-out gold score was the best so
    far, with its evaluation (its policy is saved in <out>/best)."""

    first_eos: float | None = None
    best_update: int | None = None
    best: dict[str, float] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"first_eos": self.first_eos, "best_update": self.best_update, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_eos = state["first_eos"]
        self.best_update, self.best = state.get("best_update"), state.get("best")


@dataclass
class PretrainingMix:
    """The ptx term's data: the pre-training text as one token stream, with a resumable sampler
    of windows (its state goes into every checkpoint)."""

    stream: torch.Tensor  # (N,) token ids
    sampler: BlockSampler
    rows: slice  # this process's rows of each global batch
    context: int

    @classmethod
    def load(
        cls, cfg: Config, engine: Engine, tokenizer: PreTrainedTokenizerBase, positions: int
    ) -> PretrainingMix:
        if cfg.ptx_context > positions:
            raise ConfigError(
                f"ptx_context: {cfg.ptx_context} exceeds the policy's {positions} positions"
            )
        docs, _, _ = pretrain.load_corpus(cfg.ptx_data, engine, seed=cfg.seed)  # training share
        stream = tokenize_stream(tokenizer, docs)
        sampler = BlockSampler(len(stream), cfg.ptx_context, cfg.ptx_batch, cfg.seed, "ptx_data")
        return cls(stream, sampler, engine.shard(cfg.ptx_batch), cfg.ptx_context)

    def next_batch(self) -> torch.Tensor:
        """This process's rows of the next global batch of windows: (b, context + 1)."""
        starts = self.sampler.next_batch()[self.rows]
        return gather_windows(self.stream, starts, self.context + 1)


@dataclass
class Learner:
    """What the updates optimise: the policy and the value model (DDP-wrapped when there are
    several processes), each with its optimizer and learning-rate schedule."""

    policy: nn.Module
    value: nn.Module
    policy_opt: torch.optim.Optimizer
    value_opt: torch.optim.Optimizer
    policy_sched: torch.optim.lr_scheduler.LRScheduler
    value_sched: torch.optim.lr_scheduler.LRScheduler

    @classmethod
    def create(cls, cfg: Config, engine: Engine, models: Models) -> Learner:
        """Adam (eps 1e-5, no weight decay) per model; learning rates annealed linearly to 0."""
        steps = cfg.updates * cfg.ppo_epochs * (cfg.rollout_batch // cfg.minibatch)
        policy_lr, value_lr = cfg.learning_rates
        optimizers = [
            adamw(m, lr, weight_decay=0.0, eps=1e-5)  # fused: one pass over all parameters
            for m, lr in ((models.policy, policy_lr), (models.value, value_lr))
        ]
        schedules = [
            torch.optim.lr_scheduler.LambdaLR(o, lambda step: max(0.0, 1.0 - step / steps))
            for o in optimizers
        ]
        return cls(
            engine.prepare(models.policy), engine.prepare(models.value), *optimizers, *schedules
        )

    def step(self, engine: Engine, max_grad_norm: float) -> None:
        engine.step(self.policy, self.policy_opt, self.policy_sched, max_grad_norm)
        engine.step(self.value, self.value_opt, self.value_sched, max_grad_norm)


# ---------------------------------------------------------------------------- the stage


def train(cfg: Config, reward_fn: RewardFn | None = None) -> dict[str, float]:
    """Run PPO; returns the final evaluation metrics.

    ``reward_fn(prompts, responses) -> (N,) scores`` replaces the reward model (for tests and
    programmatic use); the value model is then initialised from the policy.
    """
    with Run(cfg, "ppo", total=cfg.updates, derived=(BEST, VERDICT)) as run:
        if run.finished:
            return run.summary
        engine, resume = run.engine, run.resume
        policy_dir = checkpoint.resolve_model_dir(cfg.policy)
        if head_format(policy_dir) is not None:
            raise ModelError(
                f"policy: {policy_dir} is a reward or value model (a score head), not a "
                "policy; give the SFT policy as --policy and the reward model as --reward"
            )
        tokenizer = load_model_tokenizer(policy_dir)
        models = load_models(cfg, policy_dir, resume, reward_fn, tokenizer)
        for m in (models.policy, models.reference, models.reward, models.value):
            if m is not None:
                m.eval()  # dropout off during RL; gradients still flow
                m.to(engine.device)
        _check_tokenizers(tokenizer, models, cfg, run)
        budget = prompt_budget(
            model_positions(models.policy), cfg.max_new_tokens, cfg.max_prompt_tokens
        )

        train_prompts, eval_prompts, source = _prompts(cfg, tokenizer)
        eval_prompts = eval_prompts[: cfg.eval_size]
        too_long = sum(
            len(tokenizer(p)["input_ids"]) > budget for p in train_prompts + eval_prompts
        )
        if too_long:
            run.notes.append(
                f"{too_long} of {len(train_prompts) + len(eval_prompts)} prompts are longer than "
                f"{budget} tokens: they are cut from the left (--max-prompt-tokens)"
            )
        order = EpochOrder(len(train_prompts), cfg.rollout_batch, cfg.seed, name="prompts")
        rows = engine.shard(cfg.rollout_batch)
        mb = engine.shard(cfg.minibatch)
        mb_size = mb.stop - mb.start
        n_micro = engine.micro_batches(cfg.minibatch, cfg.micro_batch_size)

        learner = Learner.create(cfg, engine, models)
        kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        progress = Progress()
        ptx = None
        extra: dict[str, Any] = {}
        if cfg.ptx_coef > 0:
            ptx = PretrainingMix.load(cfg, engine, tokenizer, model_positions(models.policy))
            extra["ptx_data"] = ptx.sampler
        update = run.track(
            models.policy,
            tokenizer,
            value=TrainableState(models.value),
            policy_optimizer=learner.policy_opt,
            value_optimizer=learner.value_opt,
            policy_scheduler=learner.policy_sched,
            value_scheduler=learner.value_sched,
            kl_controller=kl_ctl,
            data=order,
            progress=progress,
            **extra,
        )
        n_train = sum(p.numel() for p in models.policy.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in models.policy.parameters())
        policy_lr, value_lr = cfg.learning_rates
        run.print(
            f"[bold]rlfm ppo[/]  policy {policy_dir}  reward "
            f"{'(function)' if reward_fn else cfg.reward}\n"
            f"prompts: {source}: {len(train_prompts):,} training, {len(eval_prompts):,} held out\n"
            f"policy {cfg.adapter}: {n_train:,} of {n_all:,} parameters trained "
            f"({100 * n_train / n_all:.2f}%)\n"
            + run.banner(
                f"rollout {cfg.rollout_batch} → minibatches of {cfg.minibatch} "
                f"({cfg.rollout_batch // cfg.minibatch} steps × {cfg.ppo_epochs} epochs) → "
                f"{n_micro} micro-batch(es) per process; peak lr {policy_lr:g} (policy), "
                f"{value_lr:g} (value)",
                update,
            )
        )
        if reward_fn is None:
            _check_reward_model(cfg, run)

        def rollout(prompts: list[str], draw: Any = None, values: bool = True) -> Rollout:
            return collect(cfg, engine, tokenizer, models, prompts, reward_fn, draw, values)

        gold = _gold_labeler(cfg, reward_fn, engine, run)

        def judge(at: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
            """The held-out evaluation of the policy at update ``at``."""
            draws = eval_draws(cfg, engine, at)
            return evaluate(eval_prompts, rollout, engine, gold, rows, cfg.rollout_batch, draws)

        metrics: dict[str, float] = run.logged()
        if update == 0:  # the SFT policy's own held-out numbers: the start of every curve
            row, held_out = judge(0)
            run.tracker.log(0, row)
            run.append("samples.jsonl", held_out_rows(0, held_out))
        while update < cfg.updates:
            t0 = time.perf_counter()
            # the update's random numbers, drawn for the global batch: the same responses
            # whatever the number of processes
            g = rollout_draws(cfg, engine, update)
            shard = (rows.start, cfg.rollout_batch)
            ro = rollout([train_prompts[i] for i in order.next_batch()[rows].tolist()], (g, shard))
            gen_time = time.perf_counter() - t0
            n_gen_tokens = engine.all_reduce_sum(ro.samples.response_mask.sum().float())
            stats = optimise(
                cfg,
                engine,
                ro,
                learner,
                kl_coef=kl_ctl.kl_coef,
                update=update,
                mb_size=mb_size,
                n_micro=n_micro,
                ptx=ptx,
            )
            train_time = time.perf_counter() - t0 - gen_time
            update += 1
            row = update_metrics(ro, stats, engine, kl_ctl.kl_coef)
            row |= {
                "gen_tokens_per_s": float(n_gen_tokens) / max(gen_time, 1e-9),
                "train_tokens_per_s": float(n_gen_tokens) * cfg.ppo_epochs / max(train_time, 1e-9),
                "lr": learner.policy_sched.get_last_lr()[0],
            }
            kl_ctl.update(row["kl"], cfg.rollout_batch)
            if progress.first_eos is None:
                progress.first_eos = row["eos_fraction"]
            _guards(row, progress.first_eos, run)
            if run.due(update, cfg.eval_every):
                ev, held_out = judge(update)
                row |= ev
                run.append(
                    "samples.jsonl", sample_table(update, ro) + held_out_rows(update, held_out)
                )
                if gold is not None and keep_if_best(
                    update, ev, progress, models.policy, tokenizer, run
                ):
                    row["best_update"] = update
            if run.due(update, cfg.log_every) or "eval_score" in row:
                run.tracker.log(update, row)
            else:
                run.tracker.advance(update)
            metrics |= row
            run.checkpoint(update)
        if engine.is_main:
            plots = cfg.out / "plots"
            keys = ["score", "objective", "eval_score", "eval_gold"]
            plot_metrics(cfg.out / "metrics.jsonl", plots / "reward.png", keys)
            plot_metrics(cfg.out / "metrics.jsonl", plots / "kl.png", ["kl", "kl_k3", "eval_kl"])
            if gold is not None:
                plot_overoptimisation(cfg.out / "metrics.jsonl", plots / "overoptimisation.png")
        summary = {
            k: v
            for k, v in metrics.items()
            if k.startswith("eval_") or k in ("score", "kl", "beta")
        }
        run.check_stop()
        if gold is not None and engine.is_main:
            summary |= gold_verdict(
                cfg, engine, tokenizer, models, eval_prompts, gold, progress, reward_fn, run
            )
        return run.finish(summary)


@torch.no_grad()
def _sample(
    cfg: Config,
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    model: nn.Module,
    prompts: list[str],
    batch_size: int | None = None,
    draw: tuple[torch.Generator, tuple[int, int]] | None = None,
) -> Generation:
    """Responses to ``prompts`` as PPO samples them: temperature ``cfg.temperature``, top_k 0,
    top_p 1, each row stopping at EOS, prompts cut to their last ``max_prompt_tokens`` tokens.
    ``draw``: a generator and this process's (offset, total) rows of the global batch."""
    generator, shard = draw if draw is not None else (None, None)
    with engine.autocast():
        return generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            max_prompt_tokens=cfg.max_prompt_tokens,
            batch_size=batch_size,
            generator=generator,
            shard=shard,
        )


@torch.no_grad()
def collect(
    cfg: Config,
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    models: Models,
    prompts: list[str],
    reward_fn: RewardFn | None,
    draw: tuple[torch.Generator, tuple[int, int]] | None = None,
    values: bool = True,
) -> Rollout:
    """Sample responses from the policy and score them: log π, log π_SFT, values, the reward
    model's score (the missing-EOS penalty where a response never ended), per-token KL.
    ``values=False`` (held-out judgement, which never trains on them) leaves the values at 0
    and saves the value model's forward pass."""
    policy = models.policy
    gen = _sample(cfg, engine, tokenizer, sampling_model(policy), prompts, draw=draw)
    s = gen.samples
    with engine.autocast():
        logprobs = token_logprobs(response_logits(policy, s), s.response_ids, cfg.temperature)
        if models.reference is None:
            with disabled_adapter(policy):
                ref = token_logprobs(response_logits(policy, s), s.response_ids, cfg.temperature)
        else:
            ref = token_logprobs(
                response_logits(models.reference, s), s.response_ids, cfg.temperature
            )
        v = (
            response_values(models.value, s).float()
            if values
            else torch.zeros_like(s.response_mask, dtype=torch.float32)
        )
        if reward_fn is not None:
            raw = reward_fn(prompts, gen.texts).float().to(engine.device)
        elif models.retokenize:  # its own tokenizer: the prompt and decoded response as text
            raw = models.reward.score(gen.texts, prompts).float().to(engine.device)
        else:
            ids, mask, _ = s.sequences()
            if models.shared_weights:  # the reward model's weights carry the value's LoRA layers
                with disabled_adapter(models.value.backbone):
                    raw = models.reward(ids, mask).float()
            else:
                raw = models.reward(ids, mask).float()
    scores = torch.where(s.ended, raw, torch.full_like(raw, cfg.missing_eos_penalty))
    kl = kl_per_token(logprobs, ref, cfg.kl_estimator) * s.response_mask
    return Rollout(s, prompts, gen.texts, logprobs, ref, v, scores, kl)


def update_metrics(
    ro: Rollout, stats: dict[str, float], engine: Engine, beta: float
) -> dict[str, float]:
    """What one update logs: score, KL (both estimators, and the k1 mean's standard error), β,
    response length, EOS share, the optimisation statistics, the objective."""
    m = ro.samples.response_mask
    k1 = ((ro.logprobs - ro.ref_logprobs) * m).sum(1)
    k3 = kl_per_token(ro.logprobs, ro.ref_logprobs, "k3").mul(m).sum(1)
    row = {
        "score": engine.all_reduce_mean(ro.scores.mean()),
        "kl": engine.all_reduce_mean(ro.kl.sum(1).mean()),
        "kl_k1": engine.all_reduce_mean(k1.mean()),
        # its standard error over the rollout: how far below 0 sampling noise alone reaches
        "kl_k1_stderr": math.sqrt(
            engine.all_reduce_mean(k1.var() if len(k1) > 1 else k1.new_zeros(()))
            / (len(k1) * engine.world_size)
        ),
        "kl_k3": engine.all_reduce_mean(k3.mean()),
        "beta": beta,
        "response_length": engine.all_reduce_mean(m.sum(1).float().mean()),
        "eos_fraction": engine.all_reduce_mean(ro.samples.ended.float().mean()),
        **stats,  # already over all processes
    }
    row["objective"] = row["score"] - row["beta"] * row["kl"]
    return row


def _check_tokenizers(
    tokenizer: PreTrainedTokenizerBase, models: Models, cfg: Config, run: Run
) -> None:
    """The policy's tokenizer fits its vocabulary and has PAD ≠ EOS; notes on how the reward
    model reads the responses."""
    note = fit_vocabulary(models.policy, tokenizer, what="policy")
    if note:
        run.notes.append(note)
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ConfigError("policy: its tokenizer's PAD token equals EOS; PPO needs them distinct")
    if models.reward is not None and models.reward.load_note:
        run.notes.append(models.reward.load_note)
    if models.retokenize:
        run.notes.append(
            f"the reward model {cfg.reward} has its own tokenizer: it scores each prompt and "
            "decoded response, re-tokenized"
            + ("; the value model starts from the policy" if cfg.value_from == "reward" else "")
        )


def _prompts(cfg: Config, tokenizer: PreTrainedTokenizerBase) -> tuple[list[str], list[str], str]:
    """Training and held-out prompts, and where they came from."""
    from rlfm.data.prompts import builtin_prompts, load_prompts, split_prompts

    if cfg.prompts is None:
        train, held_out = builtin_prompts(cfg.val_fraction, cfg.seed)
        return train, held_out, "built-in held-out dialogue contexts"
    prompts = load_prompts(cfg.prompts, tokenizer)
    train, held_out = split_prompts(prompts, cfg.val_fraction, cfg.seed)
    return train, held_out, str(cfg.prompts)


def _whiten_global(
    engine: Engine, x: torch.Tensor, mask: torch.Tensor, shift_mean: bool
) -> torch.Tensor:
    """Whiten over the masked-in entries of ``x`` on all processes (one global minibatch)."""
    m = mask.to(x.dtype)
    sums = engine.all_reduce_sum(torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()]).double())
    moments = moments_from_sums(sums[0], sums[1], sums[2])
    return whiten(x, mask, shift_mean, moments=(moments[0].to(x.dtype), moments[1].to(x.dtype)))


def optimise(
    cfg: Config,
    engine: Engine,
    ro: Rollout,
    learner: Learner,
    *,
    kl_coef: float,
    update: int,
    mb_size: int,
    n_micro: int,
    ptx: PretrainingMix | None = None,
) -> dict[str, float]:
    """``ppo_epochs`` passes of minibatch steps over one rollout; returns the statistics' token
    means over all passes and processes (explained variance: over the first pass), and with
    ``ptx`` the mean of its loss (``ptx_loss``) over the policy steps."""
    B = ro.samples.response_ids.shape[0]  # this process's rollout rows
    micro = mb_size // n_micro
    rewards_all = shaped_rewards(ro.scores, ro.kl, ro.samples.response_mask, kl_coef)
    g = torch.Generator().manual_seed(cfg.seed * 7919 + update)  # the same on every process
    names = (
        "policy_loss",
        "value_loss",
        "entropy",
        "clip_frac",
        "approx_kl",
        "ratio",
        "value_clip_frac",
        "explained_variance",
    )
    sums = torch.zeros(len(names) + 2, dtype=torch.float64)  # token-weighted sums, tokens ×2
    ptx_sums = torch.zeros(2, dtype=torch.float64)  # ptx loss (process mean) summed, steps
    lengths = ro.samples.lengths()
    for epoch in range(cfg.ppo_epochs):
        if cfg.group_by_length:
            batches = length_grouped(lengths, mb_size, g)
        else:
            batches = list(torch.randperm(B, generator=g).split(mb_size))
        for idx in batches:
            idx = idx.to(ro.scores.device)
            s = ro.samples.select(idx)
            old_logprobs, old_values = ro.logprobs[idx], ro.values[idx]  # gathered once
            mask = s.response_mask
            rewards = _whiten_global(engine, rewards_all[idx], mask, shift_mean=False)
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            advantages = _whiten_global(engine, advantages, mask, shift_mean=True)
            n_tokens = mask.sum().clamp(min=1)
            if ptx is not None:  # γ × the mean of the processes' losses, synced with the last
                with engine.micro_step(learner.policy, last=False):
                    windows = ptx.next_batch().to(ro.scores.device)
                    x_loss = pretrain.lm_loss(learner.policy, windows, None)
                    engine.backward(x_loss, cfg.ptx_coef / engine.world_size)
                ptx_sums += torch.tensor([float(x_loss.detach()), 1.0]) / engine.world_size
            for i in range(n_micro):
                sl = slice(i * micro, (i + 1) * micro)
                part = s.select(sl).trimmed() if cfg.group_by_length else s.select(sl)
                R = part.response_ids.shape[1]  # per-token tensors below: their first R columns
                last = i == n_micro - 1
                m = part.response_mask
                # token-weighted mean over this process's micro-batches, averaged over processes
                weight = m.sum() / n_tokens / engine.world_size
                # policy, then value model: one model's activations alive at a time
                with engine.micro_step(learner.policy, last):
                    logits = response_logits(learner.policy, part)
                    logprobs = token_logprobs(logits, part.response_ids, cfg.temperature)
                    p_loss, p_stats = policy_loss(
                        logprobs, old_logprobs[sl, :R], advantages[sl, :R], m, cfg.clip_eps
                    )
                    engine.backward(p_loss, weight)
                logits = logits.detach()
                with engine.micro_step(learner.value, last):
                    values = response_values(learner.value, part).float()
                    v_loss, v_stats = value_loss(
                        values, old_values[sl, :R], returns[sl, :R], m, cfg.clip_eps
                    )
                    engine.backward(v_loss, weight)
                with torch.no_grad():
                    stats = {
                        "policy_loss": float(p_loss),
                        "value_loss": float(v_loss),
                        "entropy": float(masked_mean(token_entropy(logits, cfg.temperature), m)),
                        **{k: float(v) for k, v in (p_stats | v_stats).items()},
                    }
                    n = float(m.sum())
                    for j, name in enumerate(names[:-1]):
                        sums[j] += stats[name] * n
                    sums[-2] += n
                    if epoch == 0:
                        ev = explained_variance(old_values[sl, :R], returns[sl, :R], m)
                        if math.isfinite(ev):
                            sums[len(names) - 1] += ev * n
                            sums[-1] += n
            learner.step(engine, cfg.max_grad_norm)
    both = engine.all_reduce_sum(torch.cat([sums, ptx_sums]))  # one collective
    total, ptx_total = both[: len(sums)], both[len(sums) :]
    out = {name: float(total[j] / total[-2].clamp(min=1)) for j, name in enumerate(names[:-1])}
    if total[-1] > 0:
        out["explained_variance"] = float(total[len(names) - 1] / total[-1])
    if ptx is not None:
        out["ptx_loss"] = float(ptx_total[0] / ptx_total[1])
    return out


def _guards(row: dict[str, float], first_eos: float, run: Run) -> None:
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
        run.print(f"[yellow]warning:[/] {p}")


def _check_reward_model(cfg: Config, run: Run) -> None:
    """Warn when the reward model's held-out pairwise accuracy is below 60%."""
    from rlfm.tracking import read_metrics

    where = Path(cfg.reward)
    for candidate in (where, where.parent.parent):  # a run dir, or a checkpoint inside one
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
                run.print(f"[yellow]warning:[/] {msg}")
            return


def evaluate(
    prompts: list[str],
    rollout: Callable[..., Rollout],
    engine: Engine,
    gold: GoldLabeler | None,
    rows: slice,
    batch: int,
    draws: Callable[[int], torch.Generator],
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score, KL and (with a gold labeler) the gold score on held-out prompts: the means over
    all prompts, and one row per prompt (prompt, response, score, KL, gold) in the prompts'
    order. The prompts go in global batches of ``batch`` (the rollout batch), each process
    answering its ``rows`` of each (a process may hold none of the last); batch ``c`` samples
    with ``draws(c)`` (:func:`eval_draws`) for the whole batch, each process taking its rows'
    share — as a training rollout does — so the replies are the same whatever the number of
    processes, and never come from the global random stream."""
    from rlfm.data.labelers import clean_reply

    held_out: list[tuple[int, dict[str, Any]]] = []
    for c, start in enumerate(range(0, len(prompts), batch)):
        chunk = prompts[start : start + batch]
        lo, hi = min(rows.start, len(chunk)), min(rows.stop, len(chunk))
        if lo == hi:
            continue
        ro = rollout(chunk[lo:hi], (draws(c), (lo, len(chunk))), values=False)
        golds = (
            gold.scores(ro.prompts, [clean_reply(r) for r in ro.responses])
            if gold is not None
            else [math.nan] * len(ro.prompts)
        )
        held_out += [
            (start + lo + j, {"prompt": p, "response": r, "score": sc, "kl": kl, "gold": g})
            for j, (p, r, sc, kl, g) in enumerate(
                zip(ro.prompts, ro.responses, ro.scores.tolist(), ro.kl.sum(1).tolist(), golds)
            )
        ]
    gathered = sorted(r for part in engine.gather_objects(held_out) for r in part)
    rows_out = [r for _, r in gathered]
    n = len(rows_out)
    out = {
        "eval_score": sum(r["score"] for r in rows_out) / n,
        "eval_kl": sum(r["kl"] for r in rows_out) / n,
    }
    if gold is not None:
        out["eval_gold"] = sum(r["gold"] for r in rows_out) / n
    return out, rows_out


# PPO's random numbers, one stream per use, never the global one: an update's rollout, each
# held-out evaluation and the final judgement draw from their own generators, so none depends on
# how often another ran (evaluation interval, resume)
FINAL_DRAWS = 999_983
"""The "update" whose rollout stream samples the final judgement's replies."""
EVAL_STREAM = 2**40
"""Offset of the held-out evaluations' seeds from the rollouts'."""


def rollout_draws(cfg: Config, engine: Engine, update: int) -> torch.Generator:
    """The random numbers of ``update``'s rollout, drawn for the global batch: the same on every
    process, each taking its rows' share (``collect``'s ``draw``)."""
    return torch.Generator(engine.device).manual_seed(cfg.seed * 1_000_003 + update)


def eval_draws(cfg: Config, engine: Engine, update: int) -> Callable[[int], torch.Generator]:
    """The random numbers of the held-out evaluation at ``update``: for its global batch ``c``
    (:func:`evaluate`), a generator of its own, the same on every process. The replies judged
    at an update are the same whatever the evaluation interval and the number of processes."""

    def batch(c: int) -> torch.Generator:
        seed = (EVAL_STREAM + (cfg.seed * 1_000_003 + update) * 2**16 + c) % 2**64
        return torch.Generator(engine.device).manual_seed(seed)

    return batch


def held_out_rows(step: int, held_out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation's replies as samples.jsonl rows (``split`` "held-out")."""
    return [{"step": step, "split": "held-out", **r} for r in held_out]


def sample_table(step: int, ro: Rollout, n: int = 8) -> list[dict[str, Any]]:
    """A sample table (prompt, response, score, KL) for a look at what the policy does."""
    return [
        {
            "step": step,
            "split": "train",
            "prompt": ro.prompts[i],
            "response": ro.responses[i],
            "score": float(ro.scores[i]),
            "kl": float(ro.kl[i].sum()),
        }
        for i in range(min(n, len(ro.prompts)))
    ]


# ---------------------------------------------------------------------------- gold judgement


def _gold_labeler(
    cfg: Config, reward_fn: RewardFn | None, engine: Engine, run: Run
) -> GoldLabeler | None:
    """The gold labeler of --gold; the text rule on the built-in task; else None."""
    from rlfm.gold import load_gold

    if cfg.gold is None and (reward_fn is not None or cfg.prompts is not None):
        return None
    gold = load_gold(cfg.gold, engine.device)
    run.print(gold.describe)
    return gold


def keep_if_best(
    update: int,
    ev: dict[str, float],
    progress: Progress,
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    run: Run,
) -> bool:
    """When this evaluation's gold score beats every earlier one, remember it and save the
    policy as <out>/best (a model directory; written beside and renamed into place)."""
    if progress.best is not None and ev["eval_gold"] <= progress.best["eval_gold"]:
        return False
    progress.best_update, progress.best = update, dict(ev)
    if run.engine.is_main:
        final, tmp = run.out / BEST, run.out / f".tmp-{BEST}"
        if tmp.exists():
            shutil.rmtree(tmp)
        Engine.unwrap(policy).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "best.json").write_text(
            json.dumps({"update": update, **ev}, indent=2) + "\n", encoding="utf-8"
        )
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    run.engine.barrier()
    return True


def _sft_rows(out: Path) -> dict[str, dict[str, Any]]:
    """The SFT policy's held-out replies of the evaluation before the first update."""
    from rlfm.tracking import read_metrics

    rows = read_metrics(out / "samples.jsonl")
    return {r["prompt"]: r for r in rows if r.get("split") == "held-out" and r["step"] == 0}


@torch.no_grad()
def gold_verdict(
    cfg: Config,
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    models: Models,
    prompts: list[str],
    gold: GoldLabeler,
    progress: Progress,
    reward_fn: RewardFn | None,
    run: Run,
) -> dict[str, float]:
    """The gold labeler's verdict on the held-out prompts: the best policy's replies (sampled
    afresh, so the choice of the best update does not flatter it) and the last evaluation's
    against the SFT policy's replies of the evaluation before the first update, one each per
    prompt (ties count half); written to <out>/gold_verdict.jsonl."""
    from rlfm.data.labelers import clean_reply
    from rlfm.data.preferences import write_rankings
    from rlfm.evaluate.winrate import win_rate
    from rlfm.tracking import read_metrics

    sft = _sft_rows(cfg.out)
    last = {
        r["prompt"]: r
        for r in read_metrics(cfg.out / "samples.jsonl")
        if r.get("split") == "held-out" and r["step"] == cfg.updates
    }
    if set(sft) != set(prompts) or set(last) != set(prompts):  # its samples.jsonl was lost
        raise ModelError(
            f"{cfg.out}/samples.jsonl lacks the held-out replies of update 0 or {cfg.updates}; "
            "run PPO again in a new --out"
        )
    best_update = progress.best_update if progress.best_update is not None else cfg.updates
    policy = models.policy
    if best_update != cfg.updates:
        policy = load_model(cfg.out / BEST).to(engine.device).eval()
    best_models = replace(models, policy=policy)
    g = rollout_draws(cfg, engine, FINAL_DRAWS)
    fresh: list[Rollout] = [
        collect(
            cfg,
            engine,
            tokenizer,
            best_models,
            prompts[i : i + cfg.rollout_batch],
            reward_fn,
            (g, (0, len(prompts))),
            values=False,
        )
        for i in range(0, len(prompts), cfg.rollout_batch)
    ]
    replies = [r for ro in fresh for r in ro.responses]
    best_gold = gold.scores(prompts, [clean_reply(r) for r in replies])
    rows = [
        {
            "prompt": p,
            "sft": sft[p]["response"],
            "sft_gold": sft[p]["gold"],
            "sft_score": sft[p]["score"],
            "best": reply,
            "best_gold": bg,
            "best_score": float(sc),
            "best_kl": float(kl),
            "last": last[p]["response"],
            "last_gold": last[p]["gold"],
            "last_score": last[p]["score"],
        }
        for p, reply, bg, sc, kl in zip(
            prompts,
            replies,
            best_gold,
            [x for ro in fresh for x in ro.scores.tolist()],
            [x for ro in fresh for x in ro.kl.sum(1).tolist()],
        )
    ]
    write_rankings(cfg.out / VERDICT, rows)  # the one atomic JSON-lines writer
    n = len(rows)
    sft_gold = [r["sft_gold"] for r in rows]
    rate, low, high = win_rate(best_gold, sft_gold)
    last_rate, last_low, last_high = win_rate([r["last_gold"] for r in rows], sft_gold)
    mean = lambda key: sum(r[key] for r in rows) / n  # noqa: E731
    run.print(
        f"[bold]gold labeler[/] on {n} held-out prompts, PPO's best update ({best_update} of "
        f"{cfg.updates}, by held-out gold score) against SFT: gold {mean('best_gold'):.3f} vs "
        f"{mean('sft_gold'):.3f}; PPO wins {rate:.1%} (95% CI {low:.1%}–{high:.1%}, ties count "
        f"half)\nthe last update ({cfg.updates}): gold {mean('last_gold'):.3f}; wins "
        f"{last_rate:.1%} (95% CI {last_low:.1%}–{last_high:.1%})"
    )
    return {
        "gold_ppo": mean("best_gold"),
        "gold_sft": mean("sft_gold"),
        "gold_win_rate": rate,
        "gold_win_rate_low": low,
        "gold_win_rate_high": high,
        "best_update": float(best_update),
        "best_eval_gold": (progress.best or {}).get("eval_gold", math.nan),
        "best_kl": mean("best_kl"),
        "best_score": mean("best_score"),
        "gold_last": mean("last_gold"),
        "gold_win_rate_last": last_rate,
        "gold_win_rate_last_low": last_low,
        "gold_win_rate_last_high": last_high,
        "eval_prompts": float(n),
    }
