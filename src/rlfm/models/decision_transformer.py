"""The Decision Transformer (Chen et al. 2021), the Constrained Decision Transformer (Liu et al.
2023), and the behaviour-cloning MLP their baselines use.

**Tokens.** A window of K steps of an episode becomes 3K tokens (DT) or 4K tokens (CDT)::

    DT:   R̂_1 s_1 a_1  R̂_2 s_2 a_2  ...  R̂_K s_K a_K
    CDT:  R̂_1 Ĉ_1 s_1 a_1  ...  R̂_K Ĉ_K s_K a_K

with R̂_t = Σ_{t'≥t} r_t' the return-to-go and Ĉ_t = Σ_{t'≥t} c_t' the cost-to-go. Each
modality has its own linear embedding (a discrete action: an embedding table, i.e. a linear map
of its one-hot vector); a learned embedding of the episode timestep t is added to every token
of step t; a LayerNorm follows (the original code's ``embed_ln``). A causal transformer reads
the tokens; the action a_t is predicted from the hidden state of the **state token** s_t, which
has seen R̂_t (and Ĉ_t) and s_t but not a_t.

**Heads.** Box actions: tanh, in the unit box [−1, 1]^A (actions are rescaled to it from the
space's bounds and back). Discrete actions: logits (softmax). CDT's stochastic policy: a
diagonal Gaussian N(μ, σ²) over the unit-box action (log σ ∈ [−5, 2]), or the softmax for
discrete actions, trained with likelihood plus entropy (losses/dt.py) and a learned temperature
``log_temperature``; it acts with the mean (the mode for discrete actions). CDT's prediction
heads read the action token (which has seen R̂_t, Ĉ_t, s_t, a_t) and predict the step's reward
r_t and cost c_t.

**Inputs are in environment units**: raw observations (normalised inside with the dataset's
per-dimension mean and standard deviation, stored as buffers), raw returns- and costs-to-go
(divided by ``return_scale`` / ``cost_scale`` inside), actions in the environment's units
(rescaled to the unit box inside). So a saved model is everything needed to act.

**Multi-task.** ``tasks > 1`` adds a learned task embedding to every token (a task token's
worth of information at no extra sequence length); each task has its own state statistics and
action bounds; observations and actions of smaller tasks are zero-padded to the largest.

**Backbone.** A small pre-LayerNorm GPT written here rather than ``transformers``' GPT-2 with
``inputs_embeds``, because: (1) the original DT code removes GPT-2's position embeddings (the
timestep embedding is the only position signal) and ``GPT2Model`` always adds them; (2)
windows are padded on the *right*, so with causal attention a real token never sees padding
and no attention mask is needed at all — PyTorch's fused causal attention kernel runs (in
training with dropout, the written-out causal softmax of ``models/attention.py`` with its
cheaper dropout mask), and the outputs at real tokens equal those of the unpadded window
exactly (the original pads on the left and masks); (3) the last block computes only the tokens
a loss or an action reads (the state tokens, and the action tokens when prediction heads are
on), which saves about a quarter of a 3-layer model's work, and without prediction heads the
window's last action token (which no output reads, and which no other token sees) is not
computed at all; (4) nothing depends on a library's private modeling code. The blocks' linear
layers go through ``models/linear.py`` (oneDNN's products on a CPU in float32 at the paper's
width and batch; the same formula as ``F.linear``), and a single head's attention in training
there reads q, k and v from the packed projection and writes their gradients back into one
buffer (``packed_attention``: the same formula and dropout draws as the written-out one).

**Deviations from the papers** (everything else follows the original code's Gym setup: K=20,
128 wide, 3 layers, 1 head, ReLU MLP of width 4·128, dropout 0.1, LayerNorm on embeddings):
right padding instead of left padding with a mask (same outputs, see above); no state and
return prediction heads in DT (the paper's loss does not use them); timesteps beyond
``max_timestep`` − 1 use the last embedding instead of failing; CDT's Gaussian log σ is
clamped to [−5, 2] (OSRL declares these bounds but does not apply them), its log-likelihood and
entropy are summed over action dimensions (OSRL averages them) so the target entropy −|A| is
the usual SAC one; the prediction heads regress the step reward and cost (OSRL classifies the
step cost as 0/1 and predicts the next state); OSRL's ``50 − Ĉ`` transform of the cost-to-go is
replaced by dividing by ``cost_scale``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rlfm.errors import ModelError
from rlfm.models.attention import causal_mask, dropout, explicit_attention, packed_attention
from rlfm.models.linear import fast_path, linear, relu_mlp

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass
class DTConfig:
    """Sizes and data-derived constants of a (constrained) decision transformer."""

    state_dim: int
    """Observation dimensions (the largest task's)."""
    action_dim: int
    """Box: action dimensions (the largest task's); Discrete: number of actions."""
    discrete: bool = False
    """Discrete actions (softmax head) instead of Box actions (tanh head)."""
    cost_tokens: bool = False
    """CDT: a cost-to-go token per step."""
    stochastic: bool = False
    """CDT: Gaussian (or softmax) policy trained by likelihood + entropy."""
    prediction_heads: bool = False
    """CDT: reward and cost prediction heads on the action token."""
    context: int = 20
    """K: steps per window."""
    hidden: int = 128
    layers: int = 3
    heads: int = 1
    dropout: float = 0.1
    activation: Literal["relu", "gelu"] = "relu"
    max_timestep: int = 1000
    """Size of the timestep embedding (longer episodes reuse its last entry)."""
    tasks: int = 1
    return_scale: float = 1000.0
    """R̂ is divided by this before its embedding."""
    cost_scale: float = 1.0
    """Ĉ is divided by this before its embedding."""
    init_temperature: float = 0.1
    task_names: list[str] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> int:
        return 4 if self.cost_tokens else 3


class Dropout(nn.Module):
    """:func:`dropout` while training, the identity in eval mode (as ``nn.Dropout``)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p) if self.training else x


def train_dropout(drop: Dropout, x: torch.Tensor) -> torch.Tensor:
    """``drop(x)`` in training; in eval mode ``x`` without a module call (acting makes many
    small calls)."""
    return drop(x) if drop.training else x


class Block(nn.Module):
    """A pre-LayerNorm transformer block with causal self-attention."""

    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.ln_1 = nn.LayerNorm(h)
        self.qkv = nn.Linear(h, 3 * h)
        self.proj = nn.Linear(h, h)
        self.ln_2 = nn.LayerNorm(h)
        self.fc = nn.Linear(h, 4 * h)
        self.fc_proj = nn.Linear(4 * h, h)
        self.act = nn.ReLU() if cfg.activation == "relu" else nn.GELU(approximate="tanh")
        self.drop = Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, rows: torch.Tensor | None = None, last: bool = False
    ) -> torch.Tensor:
        """x: (B, L, h) -> (B, L, h); with ``rows`` (R,) only those positions are computed
        (they attend to everything up to themselves) -> (B, R, h); with ``last`` only the last
        position (it attends to every token, no mask) -> (B, 1, h)."""
        B, L, h = x.shape  # batch, tokens, width
        nh = self.heads
        a = self.ln_1(x)
        at: torch.Tensor | slice | None = slice(L - 1, L) if last else rows
        q, packed = self.project(a, at)
        p = self.dropout if self.training else 0.0
        training = self.training and torch.is_grad_enabled()
        if nh == 1 and not last and training and fast_path(a, self.qkv.weight):
            # the gradients of q, k, v written into one buffer (models/attention.py)
            y = packed_attention(packed, causal_mask(L, rows, x.device), q, dropout_p=p)
            return self.finish(x, y, at)
        q, k, v = packed.split(h, dim=-1) if q is None else (q, *packed.split(h, dim=-1))
        k = k.view(B, L, nh, h // nh).transpose(1, 2)  # (B, nh, L, d)
        v = v.view(B, L, nh, h // nh).transpose(1, 2)
        q = q.view(B, q.shape[1], nh, h // nh).transpose(1, 2)  # (B, nh, L or R, d)
        if last:  # the last token sees every key
            y = F.scaled_dot_product_attention(q, k, v)
        elif rows is None and p == 0:  # PyTorch's fused causal kernel
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif p > 0:
            y = explicit_attention(
                q, k, v, causal_mask(L, rows, x.device), causal=False, dropout_p=p
            )
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(L, rows, x.device))
        return self.finish(x, y.transpose(1, 2).reshape(B, q.shape[2], h), at)

    def project(
        self, a: torch.Tensor, rows: torch.Tensor | slice | None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The LayerNorm'd input's projections: without ``rows``, (None, [q k v] at every
        token) (B, L, 3h); with them, (q at the rows (B, R, h), [k v] at every token (B, L, 2h))."""
        w, b = self.qkv.weight, self.qkv.bias
        if rows is None:
            return None, linear(a, w, b)
        h = a.shape[-1]
        return linear(a[:, rows], w[:h], b[:h]), linear(a, w[h:], b[h:])

    def finish(
        self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | slice | None
    ) -> torch.Tensor:
        """The residual sums after attention: x (B, L, h) the block's input, y (B, L or R, h)
        the attention output at ``rows`` (all without) -> the block's output there."""
        if rows is not None:
            x = x[:, rows]
        x = x + train_dropout(self.drop, linear(y, self.proj.weight, self.proj.bias))
        return x + train_dropout(self.drop, self.mlp(self.ln_2(x)))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.act, nn.ReLU):
            return relu_mlp(x, self.fc, self.fc_proj)
        return self.fc_proj(self.act(self.fc(x)))


def interleave(tokens: list[torch.Tensor]) -> torch.Tensor:
    """n modalities' (B, T, h) embeddings -> (B, n·T, h) in step order: with (R̂, s, a) the
    sequence is R̂_1 s_1 a_1 R̂_2 s_2 a_2 ..."""
    B, T, h = tokens[0].shape
    return torch.stack(tokens, dim=2).reshape(B, len(tokens) * T, h)


@dataclass
class DTOutput:
    """What a forward pass returns, at every step of the window."""

    action: torch.Tensor  # (B, T, A) unit-box action (tanh / Gaussian mean) or (B, T, N) logits
    log_std: torch.Tensor | None = None  # (B, T, A) Gaussian log σ (stochastic Box policies)
    reward: torch.Tensor | None = None  # (B, T) predicted r_t / return_scale (prediction heads)
    cost: torch.Tensor | None = None  # (B, T) predicted c_t / cost_scale (prediction heads)


class DecisionTransformer(nn.Module):
    """DT (``cost_tokens=False``) or CDT (``cost_tokens=True``); see the module docstring."""

    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        if cfg.hidden % cfg.heads:
            raise ModelError(f"hidden {cfg.hidden} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        h, S, A = cfg.hidden, cfg.state_dim, cfg.action_dim
        self.embed_timestep = nn.Embedding(cfg.max_timestep, h)
        self.embed_return = nn.Linear(1, h)
        self.embed_cost = nn.Linear(1, h) if cfg.cost_tokens else None
        self.embed_state = nn.Linear(S, h)
        self.embed_action = nn.Embedding(A, h) if cfg.discrete else nn.Linear(A, h)
        self.embed_task = nn.Embedding(cfg.tasks, h) if cfg.tasks > 1 else None
        self.embed_ln = nn.LayerNorm(h)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(h)
        gaussian = cfg.stochastic and not cfg.discrete
        self.predict_action = nn.Linear(h, 2 * A if gaussian else A)
        self.predict_reward = nn.Linear(h, 1) if cfg.prediction_heads else None
        self.predict_cost = nn.Linear(h, 1) if cfg.prediction_heads else None
        self.log_temperature = (
            nn.Parameter(torch.tensor(math.log(cfg.init_temperature))) if cfg.stochastic else None
        )
        # data statistics, saved with the weights (one row per task)
        self.register_buffer("state_mean", torch.zeros(cfg.tasks, S))
        self.register_buffer("state_std", torch.ones(cfg.tasks, S))
        self.register_buffer("action_low", -torch.ones(cfg.tasks, A))
        self.register_buffer("action_high", torch.ones(cfg.tasks, A))
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: residual projections scaled by 1/√(2·layers)
            for proj in (block.proj, block.fc_proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    # ---------------------------------------------------------------- units
    def task_rows(self, task: torch.Tensor | None, B: int) -> torch.Tensor:
        """Task index of each window, (B,) long (all 0 for a single-task model)."""
        if task is None:
            return torch.zeros(B, dtype=torch.long, device=self.state_mean.device)
        return task.long()

    def per_task(self, statistic: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
        """A per-task buffer's row of each window, (B, ...); without ``task`` its first row
        (1, ...), which broadcasts over the windows (no copy: acting one step at a time makes
        many small calls)."""
        return statistic[:1] if task is None else statistic[task.long()]

    def unit_actions(self, actions: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Box actions in environment units -> the unit box [−1, 1]. (B, T, A) -> (B, T, A)."""
        low = self.per_task(self.action_low, task)[:, None]
        high = self.per_task(self.action_high, task)[:, None]
        span = (high - low).clamp(min=1e-8)  # padded dimensions of smaller tasks: low = high
        return (2 * (actions - low) / span - 1).clamp(-1, 1)

    def env_actions(self, unit: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Unit-box actions -> environment units. (B, A) -> (B, A)."""
        low, high = self.per_task(self.action_low, task), self.per_task(self.action_high, task)
        return low + (unit.clamp(-1, 1) + 1) * (high - low) / 2

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        costs_to_go: torch.Tensor | None = None,
        task: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> DTOutput:
        """Predictions at every step of right-padded windows (or only the last with
        ``last_only``, for acting).

        states (B, T, S) raw observations; actions (B, T, A) environment-unit Box actions or
        (B, T) discrete indices (the last step's action may be anything: it is never seen when
        predicting it); returns_to_go, costs_to_go (B, T) raw; timesteps (B, T) long; task (B,).
        """
        cfg = self.cfg
        B, T, _ = states.shape  # batch, steps
        assert cfg.context >= T, f"{T} steps exceed the context of {cfg.context}"
        assert returns_to_go.shape == (B, T) and timesteps.shape == (B, T)
        assert (costs_to_go is not None) == cfg.cost_tokens, "cost-to-go iff cost tokens"
        t = None if task is None and self.embed_task is None else self.task_rows(task, B)
        mean, std = self.per_task(self.state_mean, t), self.per_task(self.state_std, t)
        s = (states - mean[:, None]) / std[:, None]
        time = self.embed_timestep(timesteps.long().clamp(0, cfg.max_timestep - 1))  # (B, T, h)
        if self.embed_task is not None:
            time = time + self.embed_task(t)[:, None]
        a = actions.long() if cfg.discrete else self.unit_actions(actions, t)
        tokens = [self.embed_return(returns_to_go[..., None] / cfg.return_scale)]
        if self.embed_cost is not None:
            tokens.append(self.embed_cost(costs_to_go[..., None] / cfg.cost_scale))
        tokens += [self.embed_state(s), self.embed_action(a)]
        n = len(tokens)
        x = interleave([e + time for e in tokens])
        read_actions = self.predict_reward is not None and not last_only
        if not read_actions:  # nothing reads the last action token, and it comes last
            x = x[:, :-1]
        x = train_dropout(self.drop, self.embed_ln(x))
        for block in self.blocks[:-1]:
            x = block(x)
        # the last block computes only the tokens read below
        if last_only:  # the last state token, which is the window's last token
            x, Ts = self.ln_f(self.blocks[-1](x, last=True)), 1
        else:
            state_rows = torch.arange(n - 2, n * T, n, device=x.device)  # (T,)
            read = [state_rows]
            if read_actions:
                read.append(state_rows + 1)  # action tokens
            x = self.ln_f(self.blocks[-1](x, torch.cat(read)))  # (B, len(rows), h)
            Ts = T
        hs = x[:, :Ts]  # (B, Ts, h) state tokens
        head = self.predict_action(hs)
        out = DTOutput(action=head)
        if cfg.stochastic and not cfg.discrete:
            mean, log_std = head.chunk(2, dim=-1)
            out = DTOutput(action=mean, log_std=log_std.clamp(LOG_STD_MIN, LOG_STD_MAX))
        elif not cfg.discrete:
            out = DTOutput(action=torch.tanh(head))
        if read_actions:
            ha = x[:, Ts:]  # (B, T, h) action tokens
            out.reward = self.predict_reward(ha).squeeze(-1)
            out.cost = self.predict_cost(ha).squeeze(-1)
        return out

    def temperature(self) -> torch.Tensor:
        """λ = exp(log λ) (stochastic policies)."""
        assert self.log_temperature is not None, "a deterministic model has no temperature"
        return self.log_temperature.exp()

    def policy_terms(
        self, out: DTOutput, actions: torch.Tensor, task: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log π(a_t | ·) of the data's actions and the policy's entropy at each step, summed
        over action dimensions (padded dimensions of smaller tasks excluded). -> (B, T), (B, T)."""
        if self.cfg.discrete:
            logp = torch.log_softmax(out.action.float(), dim=-1)  # (B, T, N)
            chosen = logp.gather(-1, actions.long()[..., None]).squeeze(-1)
            return chosen, -(logp.exp() * logp).sum(-1)
        assert out.log_std is not None, "policy_terms needs a stochastic model"
        target = self.unit_actions(actions, task)
        mean, log_std = out.action.float(), out.log_std.float()
        z = (target - mean) / log_std.exp()
        logp = -0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)  # (B, T, A)
        entropy = log_std + 0.5 * math.log(2 * math.pi * math.e)
        dims = self.action_dims(task, actions.shape[0]).to(logp.dtype)[:, None]  # (B, 1, A)
        return (logp * dims).sum(-1), (entropy * dims).sum(-1)

    def action_dims(self, task: torch.Tensor | None, B: int) -> torch.Tensor:
        """(B, A) 1 where the window's task has that action dimension (padded ones have equal
        bounds low = high = 0)."""
        t = self.task_rows(task, B)
        return (self.action_high[t] > self.action_low[t]).float()

    @torch.inference_mode()
    def act(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        costs_to_go: torch.Tensor | None = None,
        task: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The action at the last step of each history, in environment units: (B, A) float or
        (B,) long. Histories longer than the context keep their last K steps."""
        K = self.cfg.context
        cut = (lambda x: x[:, -K:]) if states.shape[1] > K else (lambda x: x)
        out = self(
            cut(states),
            cut(actions),
            cut(returns_to_go),
            cut(timesteps),
            None if costs_to_go is None else cut(costs_to_go),
            task,
            last_only=True,
        )
        a = out.action[:, -1]
        if self.cfg.discrete:
            return a.argmax(-1)
        return self.env_actions(a.float(), task)

    # ---------------------------------------------------------------- saving
    def save_pretrained(self, directory: str | Path, **_: Any) -> None:
        """Write ``config.json`` and ``model.safetensors`` (weights and data statistics)."""
        save_model(self, directory, "decision_transformer", asdict(self.cfg))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DecisionTransformer:
        meta, state = read_model(directory, "decision_transformer")
        model = cls(DTConfig(**meta))
        model.load_state_dict(state)
        return model


# ---------------------------------------------------------------------------- behaviour cloning


@dataclass
class BCConfig:
    """A behaviour-cloning MLP policy a = π(s) (BC-All), or one per cost threshold (BC-Safe)."""

    state_dim: int
    action_dim: int
    discrete: bool = False
    hidden: int = 256
    layers: int = 2
    thresholds: list[float] = field(default_factory=list)
    """BC-Safe: the cost threshold of each policy; empty = one policy for every threshold."""


class BCPolicy(nn.Module):
    """MLP policies on normalised observations (tanh for Box, logits for Discrete)."""

    def __init__(self, cfg: BCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims = [cfg.state_dim] + [cfg.hidden] * cfg.layers

        def mlp() -> nn.Sequential:
            mods: list[nn.Module] = []
            for a, b in zip(dims, dims[1:]):
                mods += [nn.Linear(a, b), nn.ReLU()]
            return nn.Sequential(*mods, nn.Linear(dims[-1], cfg.action_dim))

        self.nets = nn.ModuleList(mlp() for _ in range(max(1, len(cfg.thresholds))))
        self.register_buffer("state_mean", torch.zeros(1, cfg.state_dim))
        self.register_buffer("state_std", torch.ones(1, cfg.state_dim))
        self.register_buffer("action_low", -torch.ones(1, cfg.action_dim))
        self.register_buffer("action_high", torch.ones(1, cfg.action_dim))

    def policy_index(self, threshold: float | None) -> int:
        """Which policy acts under ``threshold`` (BC-Safe: the one trained for it)."""
        if not self.cfg.thresholds:
            return 0
        for i, c in enumerate(self.cfg.thresholds):
            if threshold is not None and math.isclose(c, threshold):
                return i
        have = ", ".join(f"{c:g}" for c in self.cfg.thresholds)
        raise ModelError(
            f"cost threshold {threshold}: this BC-Safe model has policies for {have} only "
            "(train it with --cost-thresholds including it)"
        )

    def forward(self, states: torch.Tensor, index: int = 0) -> torch.Tensor:
        """(..., S) raw observations -> (..., A) unit-box actions (tanh) or logits."""
        s = (states - self.state_mean[0]) / self.state_std[0]
        out = self.nets[index](s)
        return out if self.cfg.discrete else torch.tanh(out)

    def unit_actions(self, actions: torch.Tensor) -> torch.Tensor:
        low, high = self.action_low[0], self.action_high[0]
        return (2 * (actions - low) / (high - low).clamp(min=1e-8) - 1).clamp(-1, 1)

    @torch.no_grad()
    def act_states(self, states: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """(B, S) observations -> (B, A) environment-unit actions or (B,) indices."""
        out = self(states, self.policy_index(threshold))
        if self.cfg.discrete:
            return out.argmax(-1)
        low, high = self.action_low[0], self.action_high[0]
        return low + (out.float() + 1) * (high - low) / 2

    def save_pretrained(self, directory: str | Path, **_: Any) -> None:
        save_model(self, directory, "bc_policy", asdict(self.cfg))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> BCPolicy:
        meta, state = read_model(directory, "bc_policy")
        model = cls(BCConfig(**meta))
        model.load_state_dict(state)
        return model


# ---------------------------------------------------------------------------- files


def save_model(model: nn.Module, directory: str | Path, kind: str, config: dict) -> None:
    """``config.json`` ({"model_type": kind, ...config}) and ``model.safetensors``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    meta = {"model_type": kind, **config}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def read_model(directory: str | Path, kind: str | None = None) -> tuple[dict, dict]:
    """The config (without model_type) and state dict saved by :func:`save_model`."""
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        state = load_file(str(directory / WEIGHTS_FILE))
    except (OSError, ValueError) as e:
        raise ModelError(f"model: cannot load {directory}: {e}") from None
    found = meta.pop("model_type", None)
    if kind is not None and found != kind:
        raise ModelError(f"model: {directory} holds a {found!r} model, not a {kind!r} one")
    return meta, state


def load_policy(directory: str | Path) -> DecisionTransformer | BCPolicy:
    """A saved DT/CDT or BC model, whichever ``directory`` holds."""
    meta, _ = read_model(directory)
    kind = json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8"))["model_type"]
    del meta
    if kind == "decision_transformer":
        return DecisionTransformer.from_pretrained(directory)
    if kind == "bc_policy":
        return BCPolicy.from_pretrained(directory)
    raise ModelError(
        f"model: {directory} holds a {kind!r} model, not a decision transformer or BC policy"
    )
