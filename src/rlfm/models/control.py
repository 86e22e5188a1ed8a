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

**Generalised state-dependent exploration** (``sde``; gSDE, Raffin, Kober & Stulp 2022,
"Smooth Exploration for Robotic Reinforcement Learning"): the noise is a linear function of
the policy network's last hidden features z(s) ∈ R^H, a = μ(s) + θᵀz(s), with a matrix
θ ∈ R^{H×A}, θ_ji ~ N(0, σ_ji²), held for several steps (:meth:`ActorCritic.exploration`,
resampled by the rollout every ``sde_sample_freq`` steps), so exploration is smooth in time
and shrinks where the features do. For one step the action is Gaussian with a state-dependent
standard deviation, which is what log-probabilities and the entropy use:

    σ_i(s) = √(Σ_j z_j(s)²·σ_ji² + ε),   ε = 10⁻⁶

with log σ (H × A) learned and z(s) detached there (Stable-Baselines3's defaults: full σ, no
gradient into the features through the variance).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from rlfm.errors import ModelError

ActionKind = Literal["discrete", "continuous"]
_LOG_2PI = math.log(2 * math.pi)


SDE_EPS = 1e-6
"""ε added to gSDE's variance (Stable-Baselines3's)."""


def gaussian_log_prob(
    actions: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
) -> torch.Tensor:
    """log N(a; μ, diag σ²) summed over action dimensions. (B, A), (B, A), log σ (A,) or
    per state (B, A) -> (B,)."""
    B, A = actions.shape  # batch, action dimensions
    assert mean.shape == (B, A) and log_std.shape in ((A,), (B, A)), (
        f"{tuple(mean.shape)}, {tuple(log_std.shape)}"
    )
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI).sum(-1)


def gaussian_entropy(log_std: torch.Tensor, batch: int) -> torch.Tensor:
    """Entropy of N(μ, diag σ²). log σ (A,), the same for every state, or (batch, A) -> (batch,)."""
    if log_std.ndim == 2:
        return (0.5 + 0.5 * _LOG_2PI + log_std).sum(-1)
    return (0.5 + 0.5 * _LOG_2PI + log_std).sum().expand(batch)


def sde_log_std(features: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """gSDE's per-state log σ_i(s) = ½·log(Σ_j z_j²·σ_ji² + ε). (B, H) features z(s), (H, A)
    log σ -> (B, A)."""
    B, H = features.shape  # batch, features
    assert log_std.shape[0] == H, f"log_std {tuple(log_std.shape)} vs {H} features"
    return 0.5 * torch.log(features.square() @ torch.exp(2 * log_std) + SDE_EPS)


@dataclass
class PolicyOutput:
    """What the policy network gives for a batch of B observations."""

    out: torch.Tensor  # (B, K) logits or (B, A) Gaussian means
    log_std: torch.Tensor | None = None  # (A,) or, with gSDE, (B, A) log σ; None for logits
    features: torch.Tensor | None = None  # (B, H) gSDE's features z(s)

    @staticmethod
    def cat(parts: list[PolicyOutput]) -> PolicyOutput:
        """Outputs of several batches as one (a state-independent log σ is shared)."""
        first = parts[0]
        log_std = first.log_std
        if log_std is not None and log_std.ndim == 2:
            log_std = torch.cat([p.log_std for p in parts])  # type: ignore[misc]
        features = None if first.features is None else torch.cat([p.features for p in parts])  # type: ignore[misc]
        return PolicyOutput(torch.cat([p.out for p in parts]), log_std, features)


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

    def normalize(self, x: np.ndarray, clip: float, eps: float = 1e-8) -> np.ndarray:
        """clip((x − μ) / √(σ² + ε), −clip, clip) of a float32 array: √ in float64, as the
        statistics, rounded to float32; subtraction and division in float32. NumPy, because
        collection calls it at every environment step, where NumPy's per-call cost is a fifth
        of the same seven operations' in torch."""
        mean, var = self.mean.numpy(), self.var.numpy()
        std = np.sqrt(var + eps).astype(np.float32)
        return np.clip((x - mean.astype(np.float32)) / std, -clip, clip)


class MLP(nn.Sequential):
    """Linear layers with an activation between them. The forward pass calls each layer's
    ``forward`` directly, without ``nn.Module.__call__`` (no hooks on the layers): for a
    control policy's small batches the per-call bookkeeping of the layers cost as much as their
    arithmetic. Parameters and state-dict keys are those of the ``nn.Sequential``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer.forward(x)
        return x

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output and the last hidden layer's activations (the input of the last layer)."""
        layers = list(self)
        for layer in layers[:-1]:
            x = layer.forward(x)
        return layers[-1].forward(x), x


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
        sde: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ("tanh", "relu"):
            raise ModelError(f"activation: {activation!r} is not one of tanh, relu")
        if sde and action_kind != "continuous":
            raise ModelError("sde: state-dependent exploration needs continuous (Box) actions")
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
            sde=sde,
        )
        self.action_kind, self.action_dim, self.sde = action_kind, action_dim, sde
        self.normalize_obs, self.clip_obs = normalize_obs, clip_obs
        sizes = [obs_dim, *hidden]
        self.pi = mlp([*sizes, action_dim], activation, 0.01, ortho_init)
        self.vf = mlp([*sizes, 1], activation, 1.0, ortho_init)
        self.cf = mlp([*sizes, 1], activation, 1.0, ortho_init) if cost_critic else None
        # log σ: one per action dimension, or gSDE's (H × A) matrix
        std_shape = (hidden[-1], action_dim) if sde else (action_dim,)
        self.log_std = nn.Parameter(torch.full(std_shape, float(log_std_init)))
        if action_kind == "discrete":
            self.log_std.requires_grad_(False)  # unused by a categorical policy
        self.obs_rms = RunningMeanStd((obs_dim,))
        low = torch.tensor(action_low if action_low is not None else [-math.inf] * action_dim)
        high = torch.tensor(action_high if action_high is not None else [math.inf] * action_dim)
        self.register_buffer("action_low", low.float())
        self.register_buffer("action_high", high.float())

    # ------------------------------------------------------------------ forward parts
    def normalize(self, obs: np.ndarray) -> torch.Tensor:
        """Raw observations (B, obs_dim) (an array, or anything NumPy reads) -> the network's
        inputs, a float32 tensor of its own."""
        x = np.asarray(obs, dtype=np.float32)
        x = self.obs_rms.normalize(x, self.clip_obs) if self.normalize_obs else x.copy()
        return torch.from_numpy(x)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s) of normalised observations. (B, obs_dim) -> (B,)."""
        return self.vf(obs).squeeze(-1)

    def cost_value(self, obs: torch.Tensor) -> torch.Tensor:
        """V_c(s) of normalised observations. (B, obs_dim) -> (B,)."""
        if self.cf is None:
            raise ModelError("this policy has no cost critic (it was trained without a cost)")
        return self.cf(obs).squeeze(-1)

    def policy(self, obs: torch.Tensor) -> PolicyOutput:
        """The policy's distribution at normalised observations (B, obs_dim): logits, or
        Gaussian means with their log σ (and gSDE's features)."""
        if self.action_kind == "discrete":
            return PolicyOutput(self.pi(obs))
        if not self.sde:
            return PolicyOutput(self.pi(obs), self.log_std)
        out, features = self.pi.forward_features(obs)
        return PolicyOutput(out, sde_log_std(features.detach(), self.log_std), features.detach())

    def log_prob_entropy(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log π(a|s) and H[π(·|s)] for normalised observations (B, obs_dim) and actions
        ((B,) indices or (B, A) vectors). -> (B,), (B,)."""
        p = self.policy(obs)
        if self.action_kind == "discrete":
            return categorical_log_prob_entropy(p.out, actions)
        assert p.log_std is not None
        return self.log_prob(p, actions), gaussian_entropy(p.log_std, p.out.shape[0])

    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions and their log-probs for normalised observations. (B, obs_dim) -> (B,) or
        (B, A), and (B,). Deterministic: the most likely action (the mean, the arg-max)."""
        p = self.policy(obs)
        actions = self.sample(p, deterministic)
        return actions, self.log_prob(p, actions)

    @torch.no_grad()
    def sample(
        self,
        p: PolicyOutput,
        deterministic: bool = False,
        exploration: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Actions from the policy's output: indices (B,) for logits, vectors (B, A) μ + σ·ε,
        ε ~ N(0, I), for a Gaussian (the mean itself when ``deterministic``; the arg-max for
        logits). With gSDE's ``exploration`` matrices θ (B, H, A) (:meth:`exploration`) the
        noise is θᵀz(s) instead — for one step the same distribution, but held θ make it
        smooth in time."""
        if self.action_kind == "discrete":
            if deterministic:
                return p.out.argmax(-1)
            return torch.multinomial(torch.softmax(p.out, -1), 1).squeeze(-1)
        if deterministic:
            return p.out
        if exploration is not None:
            assert p.features is not None, "exploration matrices need gSDE's features"
            return p.out + torch.bmm(p.features[:, None], exploration)[:, 0]
        assert p.log_std is not None
        return p.out + torch.randn_like(p.out) * p.log_std.exp()

    @torch.no_grad()
    def exploration(self, n: int) -> torch.Tensor:
        """n gSDE exploration matrices θ, θ_ji ~ N(0, σ_ji²). -> (n, H, A)."""
        assert self.sde, "exploration matrices are gSDE's"
        std = self.log_std.exp()
        return torch.randn(n, *std.shape) * std

    def log_prob(self, p: PolicyOutput, actions: torch.Tensor) -> torch.Tensor:
        """log π(a|s) of actions under the policy's output :meth:`policy`. -> (B,)."""
        if self.action_kind == "discrete":
            return categorical_log_prob_entropy(p.out, actions)[0]
        assert p.log_std is not None
        return gaussian_log_prob(actions, p.out, p.log_std)

    def env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """What the environment is given: discrete indices as they are, continuous actions
        clipped to the action space's bounds."""
        if self.action_kind == "discrete":
            return actions.cpu().numpy()
        return actions.clamp(self.action_low, self.action_high).cpu().numpy()

    @torch.no_grad()
    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Environment actions for raw observations (B, obs_dim) (evaluation, datasets)."""
        x = self.normalize(obs)
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
