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
from rlfm.losses.ppo import explained_variance, minibatch_normalized, policy_loss, value_loss
from rlfm.models.control import ActorCritic, PolicyOutput, RunningMeanStd
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
        """Scaled rewards of a rollout, updating the statistics step by step. (T, N) -> (T, N).
        (NumPy, step by step: the statistics after step t scale step t's rewards.)"""
        T, N = rewards.shape  # time, environments
        r = rewards.double().numpy()
        ended = done.numpy()
        out = np.empty((T, N))
        for t in range(T):
            self.returns = self.returns * self.gamma + r[t]
            self.rms.update(self.returns)
            out[t] = r[t] / math.sqrt(float(self.rms.var) + 1e-8)
            self.returns[ended[t]] = 0.0
        return torch.from_numpy(np.clip(out, -self.clip, self.clip)).to(rewards.dtype)

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

    ``sde_sample_freq``: with a gSDE policy, new exploration matrices every this many steps
    (and at the start of every rollout, so no noise state outlives a rollout); −1: once per
    rollout (Stable-Baselines3's convention).
    """

    def __init__(
        self, envs: Any, seed: int, record: bool = False, sde_sample_freq: int = -1
    ) -> None:
        self.envs, self.n = envs, envs.num_envs
        self.sde_sample_freq = sde_sample_freq
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
        statistics are updated before each step's observations are normalised.

        Per step only what the next action needs runs (normalise, the policy network, a
        sample); log π_old(a|s) and the values V(s), V_c(s) of the whole rollout are computed
        afterwards in one batch each, from the same network outputs and observations (the
        model does not change while it collects)."""
        N = self.n
        O = self.obs.shape[-1]  # noqa: E741  (observation size)
        xs, raws, outs, acts = [], [], [], []  # outs: PolicyOutput per step
        exploration = None
        rewards = np.zeros((T, N), dtype=np.float32)
        terminated = np.zeros((T, N), dtype=bool)
        truncated = np.zeros((T, N), dtype=bool)
        costs = np.zeros((T, N), dtype=np.float32)
        final_obs: list[tuple[int, int, np.ndarray]] = []  # (t, env, observation) at time cuts
        has_cost = False
        episodes: list[dict[str, float]] = []
        normalize = update_stats and model.normalize_obs
        for t in range(T):
            raw_np = np.array(self.obs, dtype=np.float32).reshape(N, O)
            if normalize:
                model.obs_rms.update(raw_np)
            raw = torch.from_numpy(raw_np)
            x = model.normalize(raw_np)
            if model.sde and (
                t == 0 or (self.sde_sample_freq > 0 and t % self.sde_sample_freq == 0)
            ):
                exploration = model.exploration(N)  # gSDE's θ, held until the next draw
            out = model.policy(x)
            actions = model.sample(out, exploration=exploration)
            xs.append(x)
            raws.append(raw)
            outs.append(out)
            acts.append(actions)
            env_actions = model.env_actions(actions)
            obs, r, term, trunc, infos = self.envs.step(env_actions)
            done = term | trunc
            c = step_costs(infos, done)
            if c is not None:
                has_cost = True
                costs[t] = c
                self.ep_cost += c
            rewards[t] = r
            terminated[t] = term
            truncated[t] = trunc
            self.ep_return += r
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
            if done.any():
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
        x_all = torch.stack(xs)  # (T, N, O)
        actions_all = torch.stack(acts)  # (T, N) or (T, N, A)
        logprobs = model.log_prob(PolicyOutput.cat(outs), actions_all.flatten(0, 1))
        x_last = model.normalize(np.asarray(self.obs).reshape(N, O))
        # V of every observation and of the one after the last step, in one batch: (T + 1, N)
        v = model.value(torch.cat([x_all.flatten(0, 1), x_last])).view(T + 1, N)
        values, next_values = v[:-1], v[1:].clone()
        cost_values = next_cost_values = None
        if model.cf is not None:
            cv = model.cost_value(torch.cat([x_all.flatten(0, 1), x_last])).view(T + 1, N)
            cost_values, next_cost_values = cv[:-1], cv[1:].clone()
        if final_obs:  # episodes cut by a time limit: bootstrap from their final observation
            xf = model.normalize(np.stack([o for _, _, o in final_obs]))
            ts = torch.tensor([t for t, _, _ in final_obs])
            ns = torch.tensor([i for _, i, _ in final_obs])
            next_values[ts, ns] = model.value(xf)
            if next_cost_values is not None:
                next_cost_values[ts, ns] = model.cost_value(xf)
        terminated_t = torch.from_numpy(terminated)
        return Rollout(
            obs=x_all,
            raw_obs=torch.stack(raws),
            actions=actions_all,
            logprobs=logprobs.view(T, N),
            values=values,
            next_values=next_values,
            rewards=torch.from_numpy(rewards),
            terminated=terminated_t,
            done=terminated_t | torch.from_numpy(truncated),
            costs=torch.from_numpy(costs) if has_cost else None,
            cost_values=cost_values,
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


def adam(params: Any, lr: float, eps: float = 1e-5) -> torch.optim.Adam:
    """Adam for control networks (eps 1e-5, as the PPO implementations Engstrom et al. 2020
    studied), with PyTorch's fused kernel: one pass over all parameters instead of a dozen
    small operations per tensor — on a 256-256 actor-critic that is 4× faster per step, and
    a PPO update of Hopper takes 80 such steps per 512 environment steps."""
    return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)


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
    a minibatch exceeds 1.5 × ``target_kl`` (as Stable-Baselines3). Returns mean statistics.

    Each epoch shuffles the rollout once (one gather per tensor) and normalises the advantages
    of all its minibatches at once (losses/ppo.py: minibatch_normalized); a minibatch is then
    a slice."""
    B = obs.shape[0]  # rollout steps, all environments
    assert advantages.shape == values.shape == returns.shape == logprobs.shape == (B,)
    with_cost = cost_values is not None and cost_returns is not None
    totals: dict[str, float] = {}
    n_steps = 0
    stop = False
    value_clip = s.value_clip if s.value_clip > 0 else None
    for _ in range(s.epochs):
        order = torch.randperm(B)
        o, a, lp, v, ret = (
            obs[order],
            actions[order],
            logprobs[order],
            values[order],
            returns[order],
        )
        adv = advantages[order]
        if s.normalize_advantages:
            adv = minibatch_normalized(adv, s.batch_size)
        if with_cost:
            cv, cret = cost_values[order], cost_returns[order]  # type: ignore[index]
        for start in range(0, B, s.batch_size):
            mb = slice(start, start + s.batch_size)
            with engine.micro_step(model, last=True):
                logp, entropy = model.log_prob_entropy(o[mb], a[mb])
                pl, pstats = policy_loss(logp, lp[mb], adv[mb], None, s.clip_eps)
                vl, _ = value_loss(model.value(o[mb]), v[mb], ret[mb], None, value_clip)
                ent = entropy.mean()
                loss = pl + s.vf_coef * vl - s.ent_coef * ent
                row = {"policy_loss": pl, "value_loss": vl, "entropy": ent}
                if with_cost:
                    cl, _ = value_loss(model.cost_value(o[mb]), cv[mb], cret[mb], None, value_clip)
                    loss = loss + s.vf_coef * cl
                    row["cost_value_loss"] = cl
                engine.backward(loss)
            grad_norm = engine.step(model, optimizer, None, s.max_grad_norm)
            row |= {"approx_kl": pstats["approx_kl"], "clip_frac": pstats["clip_frac"]}
            for k, t in row.items():
                totals[k] = totals.get(k, 0.0) + float(t.detach())
            totals["grad_norm"] = totals.get("grad_norm", 0.0) + grad_norm
            n_steps += 1
            if s.target_kl is not None and float(pstats["approx_kl"]) > 1.5 * s.target_kl:
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
    "adam",
    "ReturnNormalizer",
    "Rollout",
    "UpdateSettings",
    "evaluate",
    "make_env",
    "make_model",
    "ppo_update",
    "summarize",
]
