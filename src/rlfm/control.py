"""Rollouts and PPO updates of control policies on Gymnasium environments — the counterpart of
rollout.py for language models, shared by ``rlfm control ppo`` and ``rlfm control prefs``.

- :class:`Collector` steps N environments with the current policy for T steps and returns a
  :class:`Rollout` (time-major tensors). It owns what must survive a checkpoint for a run to
  resume exactly: the environments' states mid-episode, the current observations, the
  episodes in progress (and, when recording for offline datasets, their steps).
- :class:`ReturnNormalizer` scales rewards by the running standard deviation of the discounted
  return, as Stable-Baselines3's VecNormalize (Engstrom et al. 2020 found this reward scaling
  among the code-level details PPO's MuJoCo results depend on).
- :func:`ppo_update` runs the epochs of minibatch steps of PPO's clipped objective with the
  losses of losses/ppo.py.
- :func:`evaluate` plays episodes with the deterministic policy.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rlfm.engine import Engine
from rlfm.losses.ppo import explained_variance, policy_loss, value_loss
from rlfm.losses.sequence import whiten
from rlfm.models.control import ActorCritic, RunningMeanStd
from rlfm.offline.envs import env_state, make_env, set_env_state, step_costs


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread: a control MLP's ops are microseconds long, and a second
    thread costs more in hand-offs than it saves (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Rollout:
    """T steps of N environments, time-major."""

    obs: torch.Tensor  # (T, N, O) float32 normalised observations the policy saw
    raw_obs: torch.Tensor  # (T, N, O) float32 observations as the environment gave them
    actions: torch.Tensor  # (T, N) int64 or (T, N, A) float32 sampled (unclipped) actions
    logprobs: torch.Tensor  # (T, N) float32 log π_old(a_t|s_t)
    values: torch.Tensor  # (T, N) float32 V(s_t)
    next_values: torch.Tensor  # (T, N) float32 V(s'_t): V(s_{t+1}), or of the final obs at a cut
    rewards: torch.Tensor  # (T, N) float32 the environment's rewards
    terminated: torch.Tensor  # (T, N) bool the MDP ended (no bootstrap)
    done: torch.Tensor  # (T, N) bool terminated or truncated (an episode ended)
    costs: torch.Tensor | None = None  # (T, N) float32 info["cost"], on constrained tasks
    cost_values: torch.Tensor | None = None  # (T, N) float32 V_c(s_t)
    next_cost_values: torch.Tensor | None = None  # (T, N) float32 V_c(s'_t)
    episodes: list[dict[str, float]] = field(default_factory=list)
    """Episodes that ended in this rollout: return, length, cost."""


class ReturnNormalizer:
    """r_t ↦ clip(r_t / √(Var[G] + ε), ±clip) where G_t = γ·G_{t−1} + r_t is each environment's
    running discounted return (reset when its episode ends)."""

    def __init__(self, n_envs: int, gamma: float, clip: float = 10.0) -> None:
        self.rms = RunningMeanStd(())
        self.returns = np.zeros(n_envs, dtype=np.float64)
        self.gamma, self.clip = gamma, clip

    def __call__(self, rewards: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """Scaled rewards of a rollout, updating the statistics step by step. (T, N) -> (T, N)."""
        T, N = rewards.shape  # time, environments
        out = torch.empty_like(rewards)
        for t in range(T):
            self.returns = self.returns * self.gamma + rewards[t].double().numpy()
            self.rms.update(torch.from_numpy(self.returns))
            out[t] = (rewards[t] / math.sqrt(float(self.rms.var) + 1e-8)).clamp(
                -self.clip, self.clip
            )
            self.returns[done[t].numpy()] = 0.0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rms": self.rms.state_dict(), "returns": self.returns.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rms.load_state_dict(state["rms"])
        self.returns = np.asarray(state["returns"], dtype=np.float64)


class Collector:
    """Steps a Gymnasium vector environment with a policy (see the module docstring).

    ``record``: keep every step of every episode (raw observation, the action the environment
    got, reward, termination, truncation, cost) and hand finished ones out through
    :meth:`take_recorded` — the training episodes a medium-replay dataset is made of.
    """

    def __init__(self, envs: Any, seed: int, record: bool = False) -> None:
        self.envs, self.n = envs, envs.num_envs
        self.obs, _ = envs.reset(seed=seed)
        self.ep_return = np.zeros(self.n)
        self.ep_cost = np.zeros(self.n)
        self.ep_length = np.zeros(self.n, dtype=np.int64)
        self.record = record
        self._steps: list[list[tuple]] = [[] for _ in range(self.n)]
        self._recorded: list[dict[str, np.ndarray]] = []
        self.seed = seed
        self.notes: list[str] = []
        self.finished: list[dict[str, float]] = []  # episodes ended since the stage last took them

    @torch.no_grad()
    def collect(self, model: ActorCritic, T: int, update_stats: bool = True) -> Rollout:
        """T steps of every environment with actions sampled from ``model``; observation
        statistics are updated before each step's observations are normalised."""
        N = self.n
        O = self.obs.shape[-1]  # noqa: E741  (observation size)
        cost_critic = model.cf is not None
        buf: dict[str, list[torch.Tensor]] = {k: [] for k in ("obs", "raw", "act", "logp", "v")}
        rewards = torch.zeros(T, N)
        terminated = torch.zeros(T, N, dtype=torch.bool)
        truncated = torch.zeros(T, N, dtype=torch.bool)
        costs = torch.zeros(T, N)
        cost_values: list[torch.Tensor] = []
        final_obs: list[tuple[int, int, np.ndarray]] = []  # (t, env, observation) at time cuts
        has_cost = False
        episodes: list[dict[str, float]] = []
        for t in range(T):
            raw = torch.as_tensor(self.obs, dtype=torch.float32).reshape(N, O)
            if update_stats and model.normalize_obs:
                model.obs_rms.update(raw)
            x = model.normalize(raw)
            actions, logp = model.act(x)
            buf["obs"].append(x)
            buf["raw"].append(raw)
            buf["act"].append(actions)
            buf["logp"].append(logp)
            buf["v"].append(model.value(x))
            if cost_critic:
                cost_values.append(model.cost_value(x))
            env_actions = model.env_actions(actions)
            obs, r, term, trunc, infos = self.envs.step(env_actions)
            done = term | trunc
            c = step_costs(infos, done)
            if c is not None:
                has_cost = True
                costs[t] = torch.from_numpy(c).float()
            rewards[t] = torch.as_tensor(r, dtype=torch.float32)
            terminated[t] = torch.as_tensor(term)
            truncated[t] = torch.as_tensor(trunc)
            self.ep_return += r
            self.ep_cost += c if c is not None else 0.0
            self.ep_length += 1
            if self.record:
                for i in range(N):
                    cost_i = float(c[i]) if c is not None else None
                    self._steps[i].append(
                        (
                            self.obs[i],
                            env_actions[i],
                            float(r[i]),
                            bool(term[i]),
                            bool(trunc[i]),
                            cost_i,
                        )
                    )
            for i in np.flatnonzero(done):
                last = infos["final_obs"][i]
                if trunc[i] and not term[i]:
                    final_obs.append((t, int(i), last))
                episodes.append(
                    {
                        "return": float(self.ep_return[i]),
                        "length": float(self.ep_length[i]),
                        "cost": float(self.ep_cost[i]),
                    }
                )
                if self.record:
                    self._finish_recording(int(i), last)
                self.ep_return[i] = self.ep_cost[i] = 0.0
                self.ep_length[i] = 0
            self.obs = obs
        self.finished += episodes
        done_all = terminated | truncated
        values = torch.stack(buf["v"])  # (T, N)
        x_last = model.normalize(torch.as_tensor(self.obs, dtype=torch.float32).reshape(N, O))
        next_values = torch.cat([values[1:], model.value(x_last)[None]])
        next_cost_values = None
        if cost_critic:
            cv = torch.stack(cost_values)
            next_cost_values = torch.cat([cv[1:], model.cost_value(x_last)[None]])
        if final_obs:  # episodes cut by a time limit: bootstrap from their final observation
            xs = model.normalize(torch.as_tensor(np.stack([o for _, _, o in final_obs])).float())
            ts = torch.tensor([t for t, _, _ in final_obs])
            ns = torch.tensor([i for _, i, _ in final_obs])
            next_values[ts, ns] = model.value(xs)
            if next_cost_values is not None:
                next_cost_values[ts, ns] = model.cost_value(xs)
        return Rollout(
            obs=torch.stack(buf["obs"]),
            raw_obs=torch.stack(buf["raw"]),
            actions=torch.stack(buf["act"]),
            logprobs=torch.stack(buf["logp"]),
            values=values,
            next_values=next_values,
            rewards=rewards,
            terminated=terminated,
            done=done_all,
            costs=costs if has_cost else None,
            cost_values=torch.stack(cost_values) if cost_critic else None,
            next_cost_values=next_cost_values,
            episodes=episodes,
        )

    # ------------------------------------------------------------------ recording
    def _finish_recording(self, i: int, final_obs: np.ndarray) -> None:
        steps = self._steps[i]
        self._steps[i] = []
        obs, act, rew, term, trunc, cost = zip(*steps)
        episode = {
            "observations": np.stack([*obs, final_obs]).astype(np.float32),
            "actions": np.stack(act),
            "rewards": np.asarray(rew, dtype=np.float64),
            "terminations": np.asarray(term, dtype=bool),
            "truncations": np.asarray(trunc, dtype=bool),
        }
        if cost[0] is not None:
            episode["costs"] = np.asarray(cost, dtype=np.float64)
        self._recorded.append(episode)

    def take_recorded(self) -> list[dict[str, np.ndarray]]:
        """The recorded episodes that ended since the last call."""
        out, self._recorded = self._recorded, []
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "envs": [env_state(e) for e in self.envs.envs],
            "obs": np.array(self.obs, copy=True),
            "ep_return": self.ep_return.copy(),
            "ep_cost": self.ep_cost.copy(),
            "ep_length": self.ep_length.copy(),
            "steps": [list(s) for s in self._steps],
            "finished": list(self.finished),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lost = [i for i, s in enumerate(state["envs"]) if s is None]
        for i, s in enumerate(state["envs"]):
            if s is not None:
                self.envs.envs[i] = set_env_state(self.envs.envs[i], s)
        self.obs = np.array(state["obs"], copy=True)
        self.ep_return = state["ep_return"].copy()
        self.ep_cost = state["ep_cost"].copy()
        self.ep_length = state["ep_length"].copy()
        self._steps = [list(s) for s in state["steps"]]
        self.finished = list(state["finished"])
        if lost:  # environments whose state cannot be saved restart their episodes
            obs, _ = self.envs.reset(seed=self.seed + 7919 * (1 + int(self.ep_length.sum())))
            for i in lost:
                self.obs[i] = obs[i]
                self.ep_return[i] = self.ep_cost[i] = 0.0
                self.ep_length[i] = 0
                self._steps[i] = []
            self.notes.append(
                f"{len(lost)} environment(s) cannot save their state mid-episode; their episodes "
                "restart on resume"
            )
            if len(lost) < self.n:  # reset() restarted every environment: put the rest back
                for i, s in enumerate(state["envs"]):
                    if s is not None:
                        self.envs.envs[i] = set_env_state(self.envs.envs[i], s)
                        self.obs[i] = state["obs"][i]


@dataclass
class UpdateSettings:
    """PPO's update hyperparameters (the fields of the same names of the stage's Config)."""

    epochs: int
    batch_size: int
    clip_eps: float
    value_clip: float
    ent_coef: float
    vf_coef: float
    normalize_advantages: bool
    target_kl: float | None
    max_grad_norm: float


def ppo_update(
    model: ActorCritic,
    optimizer: torch.optim.Optimizer,
    engine: Engine,
    obs: torch.Tensor,
    actions: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    s: UpdateSettings,
    cost_values: torch.Tensor | None = None,
    cost_returns: torch.Tensor | None = None,
) -> dict[str, float]:
    """Epochs of minibatch steps on PPO's loss over a flattened rollout of B steps:

        L = L_clip(θ) + c_v·L_V − c_e·H[π]      (+ c_v·L_{V_c} with a cost critic)

    obs (B, O), actions (B,) or (B, A), logprobs / advantages / values / returns (B,).
    Advantages are normalised per minibatch; an epoch stops early once the approximate KL of
    a minibatch exceeds 1.5 × ``target_kl`` (as Stable-Baselines3). Returns mean statistics."""
    B = obs.shape[0]  # rollout steps, all environments
    assert advantages.shape == values.shape == returns.shape == logprobs.shape == (B,)
    totals: dict[str, float] = {}
    n_steps = 0
    stop = False
    value_clip = s.value_clip if s.value_clip > 0 else math.inf
    for _ in range(s.epochs):
        order = torch.randperm(B)
        for start in range(0, B, s.batch_size):
            idx = order[start : start + s.batch_size]
            ones = torch.ones(len(idx))
            adv = advantages[idx]
            if s.normalize_advantages and len(idx) > 1:
                adv = whiten(adv, ones, shift_mean=True)
            with engine.micro_step(model, last=True):
                logp, entropy = model.log_prob_entropy(obs[idx], actions[idx])
                pl, pstats = policy_loss(logp, logprobs[idx], adv, ones, s.clip_eps)
                vl, _ = value_loss(
                    model.value(obs[idx]), values[idx], returns[idx], ones, value_clip
                )
                loss = pl + s.vf_coef * vl - s.ent_coef * entropy.mean()
                if cost_values is not None and cost_returns is not None:
                    cl, _ = value_loss(
                        model.cost_value(obs[idx]),
                        cost_values[idx],
                        cost_returns[idx],
                        ones,
                        value_clip,
                    )
                    loss = loss + s.vf_coef * cl
                    totals["cost_value_loss"] = totals.get("cost_value_loss", 0.0) + float(
                        cl.detach()
                    )
                engine.backward(loss)
            grad_norm = engine.step(model, optimizer, None, s.max_grad_norm)
            approx_kl = float(pstats["approx_kl"])
            for k, v in (
                ("policy_loss", float(pl.detach())),
                ("value_loss", float(vl.detach())),
                ("entropy", float(entropy.mean().detach())),
                ("approx_kl", approx_kl),
                ("clip_frac", float(pstats["clip_frac"])),
                ("grad_norm", grad_norm),
            ):
                totals[k] = totals.get(k, 0.0) + v
            n_steps += 1
            if s.target_kl is not None and approx_kl > 1.5 * s.target_kl:
                stop = True
                break
        if stop:
            break
    out = {k: v / max(n_steps, 1) for k, v in totals.items()}
    out["explained_variance"] = explained_variance(values, returns, torch.ones(B))
    out["minibatch_steps"] = float(n_steps)
    return out


@torch.no_grad()
def evaluate(
    model: ActorCritic,
    env_id: str,
    episodes: int,
    seed: int,
    env_kwargs: dict[str, Any] | None = None,
    deterministic: bool = True,
) -> list[dict[str, float]]:
    """Play ``episodes`` episodes (reset seeds seed, seed + 1, ...) side by side with the
    policy (the most likely action by default). -> one {return, length, cost} per episode."""
    from rlfm.offline.envs import run_episodes

    model.eval()
    try:
        out = run_episodes(
            env_id,
            lambda obs: model.predict(obs, deterministic),
            [seed + i for i in range(episodes)],
            env_kwargs=env_kwargs,
        )
    finally:
        model.train()
    return [
        {"return": e.total_return, "length": float(e.length), "cost": e.total_cost} for e in out
    ]


def summarize(episodes: list[dict[str, float]], prefix: str) -> dict[str, float]:
    """Mean (and standard deviation of the return) of episode statistics, keys ``prefix_*``."""
    if not episodes:
        return {}
    returns = np.array([e["return"] for e in episodes])
    return {
        f"{prefix}return": float(returns.mean()),
        f"{prefix}return_std": float(returns.std()),
        f"{prefix}length": float(np.mean([e["length"] for e in episodes])),
        f"{prefix}cost": float(np.mean([e["cost"] for e in episodes])),
    }


def make_model(env: Any, **settings: Any) -> ActorCritic:
    """An :class:`ActorCritic` sized for ``env``'s spaces (a made environment)."""
    from gymnasium import spaces

    from rlfm.offline.envs import action_bounds

    obs_dim = int(np.prod(env.observation_space.shape))
    space = env.action_space
    low, high = action_bounds(space)
    if isinstance(space, spaces.Discrete):
        return ActorCritic(obs_dim, "discrete", int(space.n), **settings)
    return ActorCritic(
        obs_dim, "continuous", int(space.shape[0]), action_low=low, action_high=high, **settings
    )


__all__ = [
    "Collector",
    "ReturnNormalizer",
    "Rollout",
    "UpdateSettings",
    "evaluate",
    "make_env",
    "make_model",
    "ppo_update",
    "summarize",
]
