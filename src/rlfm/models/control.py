"""Actor-critic networks for control: PPO on Gymnasium environments with Box observations and
Discrete or Box actions.

**Policy.** Discrete actions: a categorical distribution over the MLP's logits. Box actions: a
diagonal Gaussian N(μ_θ(s), σ²) whose log-std is a learned vector that does not depend on the
state (Schulman et al. 2017, the MuJoCo setup), so

    log π(a|s) = Σ_i [ −½·((a_i − μ_i) / σ_i)² − log σ_i − ½·log 2π ]
    H[π(·|s)]  = Σ_i [ ½ + ½·log 2π + log σ_i ]

Sampled actions are unbounded; they are clipped to the action space's bounds only for the
environment (:meth:`ActorCritic.env_actions`), and the unclipped sample is what PPO's ratio
uses (as in Stable-Baselines3 and CleanRL).

**Critics.** V(s) for the reward, and with ``cost_critic`` a second one V_c(s) for the cost
(PPO-Lagrangian). Policy and critics are separate MLPs (no shared trunk). Orthogonal
initialisation (gain √2 for hidden layers, 0.01 for the policy output, 1 for the value
outputs) is the default, as in the PPO implementations studied by Engstrom et al. (2020) and
Andrychowicz et al. (2021).

**Observation normalisation.** Running mean and variance of the observations seen in training
(:class:`RunningMeanStd`, Chan et al.'s parallel update) are buffers of the model, so they are
saved with every checkpoint and used, frozen, at evaluation: s ↦ clip((s − μ) / √(σ² + ε), ±c).

Directory layout (``save_pretrained`` / ``from_pretrained``): ``config.json`` (sizes, the action
space's kind and bounds) and ``model.safetensors`` (weights, log-std, normalisation buffers).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from rlfm.errors import ModelError

ActionKind = Literal["discrete", "continuous"]
_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(
    actions: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
) -> torch.Tensor:
    """log N(a; μ, diag σ²) summed over action dimensions. (B, A), (B, A), (A,) -> (B,)."""
    B, A = actions.shape  # batch, action dimensions
    assert mean.shape == (B, A) and log_std.shape == (A,), f"{tuple(mean.shape)}, {log_std.shape}"
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI).sum(-1)


def gaussian_entropy(log_std: torch.Tensor, batch: int) -> torch.Tensor:
    """Entropy of N(μ, diag σ²), the same for every state. (A,) -> (batch,)."""
    return (0.5 + 0.5 * _LOG_2PI + log_std).sum().expand(batch)


def categorical_log_prob_entropy(
    logits: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(a|s) and H[π(·|s)] of a categorical policy. (B, K) logits, (B,) actions -> (B,), (B,)."""
    B, K = logits.shape  # batch, actions
    assert actions.shape == (B,), f"actions {tuple(actions.shape)} != ({B},)"
    logp = torch.log_softmax(logits, -1)
    chosen = logp.gather(-1, actions.long()[:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return chosen, entropy


class RunningMeanStd(nn.Module):
    """Mean and variance of a stream of vectors, updated batch by batch (Chan et al. 1979)."""

    def __init__(self, shape: tuple[int, ...], epsilon: float = 1e-4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor | np.ndarray) -> None:
        """Fold a batch (n, *shape) into the statistics (Chan et al.'s parallel update):

            δ = x̄_B − μ,   n' = n + n_B,   μ' = μ + δ·n_B / n',
            σ'² = (σ²·n + σ_B²·n_B + δ²·n·n_B / n') / n'

        NumPy on the buffers' memory, with plain ufuncs (no ``np.mean``/``np.var`` wrappers):
        this runs at every environment step, where per-call overhead is most of the cost."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        mean, var, count = self.mean.numpy(), self.var.numpy(), self.count.numpy()
        batch = np.asarray(x, dtype=np.float64).reshape(-1, *mean.shape)
        n = batch.shape[0]
        if n == 1:  # one vector: its own mean, variance 0
            batch_mean, batch_m2 = batch[0], 0.0
        else:
            batch_mean = np.add.reduce(batch, 0) / n
            batch_m2 = np.add.reduce(np.square(batch - batch_mean), 0)  # = σ_B²·n_B
        delta = batch_mean - mean
        total = count + n
        m2 = var * count + batch_m2 + np.square(delta) * (count * n / total)
        mean += delta * (n / total)
        var[...] = m2 / total
        count[...] = total

    def normalize(self, x: torch.Tensor, clip: float, eps: float = 1e-8) -> torch.Tensor:
        """clip((x − μ) / √(σ² + ε), −clip, clip) in x's dtype."""
        std = (self.var + eps).sqrt_()  # in float64, as the statistics
        return ((x - self.mean.to(x.dtype)) / std.to(x.dtype)).clamp_(-clip, clip)


class MLP(nn.Sequential):
    """Linear layers with an activation between them. The forward pass calls each layer's
    ``forward`` directly, without ``nn.Module.__call__`` (no hooks on the layers): for a
    control policy's small batches the per-call bookkeeping of the layers cost as much as their
    arithmetic. Parameters and state-dict keys are those of the ``nn.Sequential``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer.forward(x)
        return x


def mlp(sizes: list[int], activation: str, out_gain: float, ortho: bool) -> MLP:
    """Linear layers of ``sizes`` with ``activation`` between them (none after the last)."""
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        linear = nn.Linear(a, b)
        last = i == len(sizes) - 2
        if ortho:
            nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(act())
    return MLP(*layers)


class ActorCritic(nn.Module):
    """π(a|s), V(s) and optionally V_c(s) as separate MLPs on normalised observations."""

    def __init__(
        self,
        obs_dim: int,
        action_kind: ActionKind,
        action_dim: int,
        *,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "tanh",
        log_std_init: float = 0.0,
        ortho_init: bool = True,
        cost_critic: bool = False,
        normalize_obs: bool = True,
        clip_obs: float = 10.0,
        action_low: list[float] | None = None,
        action_high: list[float] | None = None,
    ) -> None:
        super().__init__()
        if activation not in ("tanh", "relu"):
            raise ModelError(f"activation: {activation!r} is not one of tanh, relu")
        self.settings: dict[str, Any] = dict(
            obs_dim=obs_dim,
            action_kind=action_kind,
            action_dim=action_dim,
            hidden=list(hidden),
            activation=activation,
            log_std_init=log_std_init,
            ortho_init=ortho_init,
            cost_critic=cost_critic,
            normalize_obs=normalize_obs,
            clip_obs=clip_obs,
            action_low=action_low,
            action_high=action_high,
        )
        self.action_kind, self.action_dim = action_kind, action_dim
        self.normalize_obs, self.clip_obs = normalize_obs, clip_obs
        sizes = [obs_dim, *hidden]
        self.pi = mlp([*sizes, action_dim], activation, 0.01, ortho_init)
        self.vf = mlp([*sizes, 1], activation, 1.0, ortho_init)
        self.cf = mlp([*sizes, 1], activation, 1.0, ortho_init) if cost_critic else None
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))
        if action_kind == "discrete":
            self.log_std.requires_grad_(False)  # unused by a categorical policy
        self.obs_rms = RunningMeanStd((obs_dim,))
        low = torch.tensor(action_low if action_low is not None else [-math.inf] * action_dim)
        high = torch.tensor(action_high if action_high is not None else [math.inf] * action_dim)
        self.register_buffer("action_low", low.float())
        self.register_buffer("action_high", high.float())

    # ------------------------------------------------------------------ forward parts
    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw observations (B, obs_dim) -> the network's inputs (float32)."""
        obs = obs.float()
        return self.obs_rms.normalize(obs, self.clip_obs) if self.normalize_obs else obs

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s) of normalised observations. (B, obs_dim) -> (B,)."""
        return self.vf(obs).squeeze(-1)

    def cost_value(self, obs: torch.Tensor) -> torch.Tensor:
        """V_c(s) of normalised observations. (B, obs_dim) -> (B,)."""
        if self.cf is None:
            raise ModelError("this policy has no cost critic (it was trained without a cost)")
        return self.cf(obs).squeeze(-1)

    def log_prob_entropy(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log π(a|s) and H[π(·|s)] for normalised observations (B, obs_dim) and actions
        ((B,) indices or (B, A) vectors). -> (B,), (B,)."""
        out = self.pi(obs)
        if self.action_kind == "discrete":
            return categorical_log_prob_entropy(out, actions)
        return gaussian_log_prob(actions, out, self.log_std), gaussian_entropy(
            self.log_std, out.shape[0]
        )

    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions and their log-probs for normalised observations. (B, obs_dim) -> (B,) or
        (B, A), and (B,). Deterministic: the most likely action (the mean, the arg-max)."""
        out = self.pi(obs)
        actions = self.sample(out, deterministic)
        return actions, self.log_prob(out, actions)

    @torch.no_grad()
    def sample(self, out: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions from the policy network's output ``out`` = π-MLP(s): logits (B, K) -> (B,)
        indices; means (B, A) -> (B, A) vectors μ + σ·ε, ε ~ N(0, I) (the mean itself when
        ``deterministic``; the arg-max for logits)."""
        if self.action_kind == "discrete":
            if deterministic:
                return out.argmax(-1)
            return torch.multinomial(torch.softmax(out, -1), 1).squeeze(-1)
        return out if deterministic else out + torch.randn_like(out) * self.log_std.exp()

    def log_prob(self, out: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log π(a|s) from the policy network's output (logits or means, see :meth:`sample`).
        -> (B,)."""
        if self.action_kind == "discrete":
            return categorical_log_prob_entropy(out, actions)[0]
        return gaussian_log_prob(actions, out, self.log_std)

    def env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """What the environment is given: discrete indices as they are, continuous actions
        clipped to the action space's bounds."""
        if self.action_kind == "discrete":
            return actions.cpu().numpy()
        return actions.clamp(self.action_low, self.action_high).cpu().numpy()

    @torch.no_grad()
    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Environment actions for raw observations (B, obs_dim) (evaluation, datasets)."""
        x = self.normalize(torch.as_tensor(np.asarray(obs), dtype=torch.float32))
        return self.env_actions(self.act(x, deterministic)[0])

    # ------------------------------------------------------------------ files
    def save_pretrained(self, directory: str | Path, **_: Any) -> None:
        """Write ``config.json`` and ``model.safetensors``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
            str(directory / "model.safetensors"),
        )
        meta = {"kind": "actor_critic", **self.settings}
        (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ActorCritic:
        """Load a model written by :meth:`save_pretrained`."""
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            meta = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelError(f"model: cannot read {directory / 'config.json'}: {e}") from None
        if meta.get("kind") != "actor_critic":
            raise ModelError(
                f"model: {directory} holds a {meta.get('kind') or meta.get('model_type')!r} "
                "model, not a control policy (rlfm control ppo writes those)"
            )
        settings = {k: v for k, v in meta.items() if k != "kind"}
        settings["hidden"] = tuple(settings["hidden"])
        model = cls(
            settings.pop("obs_dim"),
            settings.pop("action_kind"),
            settings.pop("action_dim"),
            **settings,
        )
        try:
            model.load_state_dict(load_file(str(directory / "model.safetensors")))
        except Exception as e:  # a damaged or foreign file
            raise ModelError(f"model: cannot load {directory / 'model.safetensors'}: {e}") from None
        return model
