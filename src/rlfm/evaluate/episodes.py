"""Episodes of a return- (and cost-) conditioned policy in its environment, many at once.

The environment is made from the dataset's own stored spec (Minari's environment recovery:
``gym.make(spec)``, wrappers included), so any dataset whose environment is importable works.
All episodes of an evaluation run side by side: each step, the histories of the episodes still
running go through the model as one batch. Episode i of every target starts from the same
seed, so targets are compared on the same initial states.

Deployment follows both papers: R̂_0 is the target return and Ĉ_0 the cost threshold; after
each step R̂ ← R̂ − r_t and Ĉ ← Ĉ − c_t, with c_t the environment's ``info["cost"]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlfm.errors import DataError


@dataclass
class History:
    """What a policy sees at step t of a batch of running episodes (all at the same t)."""

    states: torch.Tensor  # (B, L, S) raw observations s_{t−L+1}..s_t (zero-padded to the model's S)
    actions: torch.Tensor  # (B, L, A) float or (B, L) long; the last one is a placeholder
    returns_to_go: torch.Tensor  # (B, L) R̂ of the same steps
    costs_to_go: torch.Tensor  # (B, L) Ĉ of the same steps
    timesteps: torch.Tensor  # (B, L) long
    thresholds: torch.Tensor  # (B,) each episode's cost threshold (nan without one)


Policy = Callable[[History], torch.Tensor]
"""Maps a History to the next actions: (B, A) environment units or (B,) indices."""


@dataclass
class Episode:
    """One finished episode."""

    target_return: float
    cost_threshold: float | None
    ret: float
    cost: float
    length: int


def env_factory(spec: Any, where: str) -> Callable[[], Any]:
    """A function making the environment of ``spec`` (an EnvSpec or an id); errors name
    ``where`` (the dataset) and what failed, before any episode starts."""
    import gymnasium as gym

    if spec is None:
        raise DataError(
            f"dataset: {where} stores no environment spec, so its environment cannot be "
            "recovered; pass --env ID"
        )

    def make() -> Any:
        return gym.make(spec)

    try:
        make().close()
    except Exception as e:  # a missing module, an unregistered id, a missing simulator ...
        name = getattr(spec, "id", spec)
        raise DataError(
            f"dataset: {where}: its environment {name!r} cannot be made "
            f"({type(e).__name__}: {e}); install what it needs or pass --env ID"
        ) from None
    return make


@torch.no_grad()
def run_episodes(
    policy: Policy,
    make_env: Callable[[], Any],
    conditions: list[tuple[float, float | None]],
    episodes: int,
    *,
    state_dim: int,
    action_dim: int,
    discrete: bool,
    window: int = 1,
    seed: int = 0,
    max_steps: int | None = None,
    device: torch.device | str = "cpu",
    need_cost: bool = False,
) -> list[Episode]:
    """Run ``episodes`` episodes per (target return, cost threshold) condition, all at once.

    ``state_dim``/``action_dim``: the model's (observations and actions of a smaller task are
    zero-padded to them). ``window``: the last steps a policy sees (the model's context K, 1
    for an MLP). ``max_steps``: cut episodes there (default: the environment's own
    time limit, else 1000). Returns the episodes in condition-major order.
    """
    envs = [make_env() for _ in range(len(conditions) * episodes)]
    N = len(envs)
    limit = max_steps or getattr(envs[0].spec, "max_episode_steps", None) or 1000
    dev = torch.device(device)
    S, A = state_dim, action_dim
    # histories in NumPy (writing one step is a few scalar stores); each step's window goes to
    # the policy as tensor views of them (torch.from_numpy, no copy while all episodes run)
    states = np.zeros((N, limit + 1, S), dtype=np.float32)
    actions = (
        np.zeros((N, limit + 1), dtype=np.int64)
        if discrete
        else np.zeros((N, limit + 1, A), dtype=np.float32)
    )
    rtg = np.zeros((N, limit + 1), dtype=np.float32)
    ctg = np.zeros((N, limit + 1), dtype=np.float32)
    targets = [c for c in conditions for _ in range(episodes)]
    thresholds = torch.tensor([np.nan if c is None else c for _, c in targets])
    for i, env in enumerate(envs):
        obs, _ = env.reset(seed=seed + i % episodes)
        states[i, 0, : np.size(obs)] = np.ravel(obs)
        rtg[i, 0] = targets[i][0]
        ctg[i, 0] = 0.0 if targets[i][1] is None else targets[i][1]
    ret, cost, length = np.zeros(N), np.zeros(N), np.zeros(N, dtype=np.int64)
    running = np.ones(N, dtype=bool)
    a_env = getattr(envs[0].action_space, "shape", None)
    t = 0
    while running.any() and t < limit:
        idx = np.flatnonzero(running)
        rows: Any = slice(None) if len(idx) == N else idx
        first = max(0, t + 1 - window)
        at = (rows, slice(first, t + 1))  # the running episodes' last `window` steps
        h = History(
            states=torch.from_numpy(states[at]).to(dev),
            actions=torch.from_numpy(actions[at]).to(dev),
            returns_to_go=torch.from_numpy(rtg[at]).to(dev),
            costs_to_go=torch.from_numpy(ctg[at]).to(dev),
            timesteps=torch.arange(first, t + 1, device=dev).expand(len(idx), t + 1 - first),
            thresholds=thresholds[torch.as_tensor(idx)].to(dev),
        )
        act = policy(h).cpu().numpy()
        for j, i in enumerate(idx):
            a = act[j]
            if discrete:
                env_a: Any = int(a)
            else:
                env_a = a[: a_env[0]].astype(envs[i].action_space.dtype)
            obs, r, terminated, truncated, info = envs[i].step(env_a)
            c = info.get("cost")
            if c is None:
                if need_cost:
                    raise DataError(
                        f"environment {envs[i].spec.id if envs[i].spec else '?'}: its step info "
                        'has no "cost"; a constrained evaluation needs info["cost"]'
                    )
                c = 0.0
            actions[i, t] = a
            states[i, t + 1, : np.size(obs)] = np.ravel(obs)
            rtg[i, t + 1] = rtg[i, t] - float(r)
            ctg[i, t + 1] = ctg[i, t] - float(c)
            ret[i] += float(r)
            cost[i] += float(c)
            length[i] += 1
            if terminated or truncated:
                running[i] = False
        t += 1
    for env in envs:
        env.close()
    return [
        Episode(targets[i][0], targets[i][1], float(ret[i]), float(cost[i]), int(length[i]))
        for i in range(N)
    ]


def policy_of(model: torch.nn.Module, task_index: int = 0) -> tuple[Policy, int]:
    """The Policy of a DT/CDT or BC model, and the steps of history it reads (its window)."""
    from rlfm.models.decision_transformer import BCPolicy, DecisionTransformer

    if isinstance(model, BCPolicy):

        def bc(h: History) -> torch.Tensor:
            kappas = [None if math.isnan(c) else c for c in h.thresholds.tolist()]
            actions = None
            for kappa in dict.fromkeys(kappas):  # each threshold's policy on its episodes
                rows = [i for i, c in enumerate(kappas) if c == kappa]
                a = model.act_states(h.states[rows, -1], kappa)
                if actions is None:
                    actions = a.new_zeros((len(kappas), *a.shape[1:]))
                actions[rows] = a
            assert actions is not None
            return actions

        return bc, 1
    assert isinstance(model, DecisionTransformer)
    cost = model.cfg.cost_tokens

    def dt(h: History) -> torch.Tensor:
        task = torch.full(
            (h.states.shape[0],), task_index, dtype=torch.long, device=h.states.device
        )
        return model.act(
            h.states,
            h.actions,
            h.returns_to_go,
            h.timesteps,
            h.costs_to_go if cost else None,
            task if model.cfg.tasks > 1 else None,
        )

    return dt, model.cfg.context


def evaluate_model(
    model: torch.nn.Module,
    env_spec: Any,
    where: str,
    conditions: list[tuple[float, float | None]],
    episodes: int,
    *,
    task_index: int = 0,
    seed: int = 0,
    max_steps: int | None = None,
    device: torch.device | str = "cpu",
) -> list[Episode]:
    """Episodes of ``model`` (eval mode) in the environment of ``env_spec`` under each
    condition; ``where`` names the dataset in errors."""
    make = env_factory(env_spec, where)
    policy, window = policy_of(model, task_index)
    cfg = model.cfg
    was_training = model.training
    model.eval()
    try:
        return run_episodes(
            policy,
            make,
            conditions,
            episodes,
            state_dim=cfg.state_dim,
            action_dim=cfg.action_dim,
            discrete=cfg.discrete,
            window=window,
            seed=seed,
            max_steps=max_steps,
            device=device,
            need_cost=any(c is not None for _, c in conditions),
        )
    finally:
        model.train(was_training)
