"""Gymnasium environments for control and offline RL: making them (one clear error for a bad
id or an unsupported space), cost wrappers for constrained tasks, vectorised copies, and
capturing their state so a training run resumes mid-episode.

**Constrained tasks.** rlfm treats any environment whose step ``info`` carries ``"cost"`` as a
constrained task: PPO-Lagrangian keeps the mean episode cost under ``--cost-limit`` and offline
datasets record the cost of every step.

**Velocity-constrained MuJoCo tasks** (:func:`velocity_constrained`), as in Safety-Gymnasium's
"velocity" family (Ji et al. 2023, "Safety-Gymnasium"; the ``Safety*Velocity-v1`` tasks), the
MuJoCo tasks of the offline safe-RL benchmark OSRL/DSRL (Liu et al. 2023, "Datasets and
Benchmarks for Offline Safe Reinforcement Learning"): the reward is the original task's, and

    cost_t = 1[ v_t > v_max ]

where v_t is the forward velocity Gymnasium reports in ``info["x_velocity"]`` (for Ant, the
planar speed √(v_x² + v_y²), as Safety-Gymnasium's Ant) and v_max is Safety-Gymnasium's v1
threshold for the robot:

    Hopper 0.7402   Walker2d 2.3415   HalfCheetah 3.2096   Ant 2.6222   Swimmer 0.2282
    Humanoid 1.4149

(from ``safety_gymnasium/tasks/safe_velocity/safety_*_velocity_v1.py``). Each is registered with
Gymnasium as ``rlfm/Safety{Robot}Velocity-{version}`` (e.g. ``rlfm/SafetyHopperVelocity-v5``) so
``gymnasium.make`` and a Minari dataset's ``recover_environment()`` rebuild it from its spec.

**Bullet-Safety-Gym** (Gronauer 2022) provides the tasks of the Constrained Decision
Transformer's table — SafetyAntRun-v0, SafetyCarCircle-v0, SafetyCarRun-v0,
SafetyDroneCircle-v0, SafetyDroneRun-v0 — with the cost in ``info["cost"]``, so they work here
unchanged once installed. Its release pins an old gymnasium; install it without its
dependencies, plus PyBullet::

    .venv/bin/pip install --no-deps bullet-safety-gym && .venv/bin/pip install pybullet

rlfm imports ``bullet_safety_gym`` (which registers the tasks) when one of these ids is made.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from rlfm.errors import ConfigError
from rlfm.offline import speedrun

VELOCITY_THRESHOLDS: dict[str, float] = {
    "Hopper": 0.7402,
    "Walker2d": 2.3415,
    "HalfCheetah": 3.2096,
    "Ant": 2.6222,
    "Swimmer": 0.2282,
    "Humanoid": 1.4149,
}
"""Safety-Gymnasium's v1 velocity thresholds v_max per robot (see the module docstring)."""

BULLET_SAFETY_TASKS = (
    "SafetyAntRun-v0",
    "SafetyCarCircle-v0",
    "SafetyCarRun-v0",
    "SafetyDroneCircle-v0",
    "SafetyDroneRun-v0",
)
"""The Bullet-Safety-Gym tasks of the Constrained Decision Transformer's Table 1."""

BULLET_INSTALL = "pip install --no-deps bullet-safety-gym && pip install pybullet"


# ---------------------------------------------------------------------------- cost wrappers


class VelocityCost(gym.Wrapper):
    """Adds ``info["cost"] = 1[forward velocity > threshold]`` to every step (0 at reset)."""

    def __init__(self, env: Any, threshold: float, planar: bool = False) -> None:
        super().__init__(env)
        self.threshold, self.planar = float(threshold), planar

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "cost": 0.0}  # the same info keys at reset and step (Minari)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "x_velocity" not in info:
            raise ConfigError(
                f"env: {self.env.spec.id if self.env.spec else self.env} reports no "
                "info['x_velocity']; a velocity cost needs a Gymnasium MuJoCo locomotion task"
            )
        v = float(info["x_velocity"])
        if self.planar:
            v = float(np.hypot(v, float(info.get("y_velocity", 0.0))))
        return obs, reward, terminated, truncated, {**info, "cost": float(v > self.threshold)}


def make_velocity_env(base_id: str, threshold: float | None = None, **kwargs: Any) -> Any:
    """``base_id`` (e.g. "Hopper-v5") with :class:`VelocityCost` at Safety-Gymnasium's
    threshold for its robot (or ``threshold``). The entry point of the registered
    ``rlfm/Safety*Velocity-*`` ids."""
    robot = base_id.split("-")[0]
    if threshold is None:
        if robot not in VELOCITY_THRESHOLDS:
            raise ConfigError(
                f"env: no velocity threshold for {base_id!r}; robots with one: "
                f"{', '.join(VELOCITY_THRESHOLDS)}"
            )
        threshold = VELOCITY_THRESHOLDS[robot]
    return VelocityCost(_make(base_id, **kwargs), threshold, planar=robot == "Ant")


def velocity_id(env_id: str) -> str:
    """The registered id of the velocity-constrained version of a MuJoCo task:
    "Hopper-v5" -> "rlfm/SafetyHopperVelocity-v5"."""
    robot, _, version = env_id.partition("-")
    if robot not in VELOCITY_THRESHOLDS or not version:
        raise ConfigError(
            f"env: {env_id!r} has no velocity-constrained version; use one of "
            + ", ".join(f"{r}-v5" for r in VELOCITY_THRESHOLDS)
        )
    return f"rlfm/Safety{robot}Velocity-{version}"


def velocity_constrained(env_id: str, **kwargs: Any) -> Any:
    """The velocity-constrained version of a Gymnasium MuJoCo task, e.g.
    ``velocity_constrained("Hopper-v5")``: the task's reward, and ``info["cost"]`` = 1 at every
    step whose forward velocity exceeds Safety-Gymnasium's threshold (module docstring)."""
    return make_env(velocity_id(env_id), **kwargs)


def register_velocity_tasks() -> None:
    """Register ``rlfm/Safety{Robot}Velocity-{v4,v5}`` with Gymnasium (idempotent)."""
    for robot in VELOCITY_THRESHOLDS:
        for version in ("v4", "v5"):
            env_id = f"rlfm/Safety{robot}Velocity-{version}"
            if env_id not in gym.registry:
                gym.register(
                    env_id,
                    entry_point="rlfm.offline.envs:make_velocity_env",
                    kwargs={"base_id": f"{robot}-{version}"},
                    disable_env_checker=True,  # the wrapped task is checked when it is made
                )


register_velocity_tasks()
speedrun.register()  # rlfm/SpeedRun-v0, the decision-transformer demos' task


# ---------------------------------------------------------------------------- making


def _make(env_id: str, **kwargs: Any) -> Any:
    if env_id in BULLET_SAFETY_TASKS:
        try:
            import bullet_safety_gym  # noqa: F401  (registers the tasks)
        except ImportError as e:
            raise ConfigError(
                f"env: {env_id} comes from bullet-safety-gym, which is not installed ({e}); "
                f"install it with `{BULLET_INSTALL}`"
            ) from None
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as e:
        raise ConfigError(f"env: cannot make Gymnasium environment {env_id!r}: {e}") from None
    except ImportError as e:  # an extra the environment needs (box2d, atari, ...)
        raise ConfigError(f"env: {env_id!r} needs a package that is not installed: {e}") from None


def make_env(env_id: str, **kwargs: Any) -> Any:
    """``gymnasium.make(env_id)`` for control: an unknown id, a missing package, or an
    observation space that is not a flat Box, or an action space that is neither Box nor
    Discrete, is a ConfigError naming the environment and the space."""
    from gymnasium import spaces

    env = _make(env_id, **kwargs)
    obs, act = env.observation_space, env.action_space
    if not isinstance(obs, spaces.Box) or len(obs.shape) != 1:
        env.close()
        raise ConfigError(
            f"env: {env_id} observes {obs}; rlfm's control policies need a flat Box observation"
        )
    if not isinstance(act, spaces.Box | spaces.Discrete) or (
        isinstance(act, spaces.Box) and len(act.shape) != 1
    ):
        env.close()
        raise ConfigError(
            f"env: {env_id} acts in {act}; rlfm's control policies need a Discrete or a flat "
            "Box action space"
        )
    return env


def check_env_id(env_id: str) -> None:
    """A ConfigError naming ``env_id`` unless Gymnasium knows it (cheap: no environment made)."""
    if env_id in BULLET_SAFETY_TASKS:
        return  # registered when made (bullet_safety_gym is imported then)
    if env_id not in gym.registry:
        import difflib

        close = difflib.get_close_matches(env_id, list(gym.registry), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"env: {env_id!r} is not a registered Gymnasium environment{hint}")


def action_bounds(space: Any) -> tuple[list[float] | None, list[float] | None]:
    """The (low, high) bounds of a Box action space as lists (None for Discrete)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return None, None
    return [float(x) for x in space.low], [float(x) for x in space.high]


def has_cost(env: Any, seed: int = 0) -> bool:
    """Whether ``env``'s step info carries "cost" (one step of a fresh reset; the env is then
    reset again by its user)."""
    env.reset(seed=seed)
    info = env.step(env.action_space.sample())[4]
    return "cost" in info


# ---------------------------------------------------------------------------- vectorised


def make_vector_env(env_id: str, n: int, **kwargs: Any) -> SameStepEnvs:
    """``n`` copies of ``env_id`` stepped in this process, reset in the same step an episode
    ends (the final observation is in ``info["final_obs"]``): :class:`SameStepEnvs`."""
    make_env(env_id, **kwargs).close()  # one clear error before n copies
    return SameStepEnvs([make_env(env_id, **kwargs) for _ in range(n)])


class SameStepEnvs:
    """Environments stepped one after another in this process, each reset in the step its
    episode ends — Gymnasium's ``SyncVectorEnv`` with ``AutoresetMode.SAME_STEP``, with the same
    seeding (``reset(seed=s)`` seeds environment i with s + i), observations, rewards and flags,
    but only the infos rlfm's collector reads, in Gymnasium's vector layout: ``cost`` with its
    ``_cost`` mask (the step info's, or the reset info's for an environment that was just reset),
    ``final_obs`` and ``final_info["cost"]`` for finished episodes. ``SyncVectorEnv`` gathers
    every key of every step's info into arrays and copies the observations twice: on one
    Hopper-v5 that was 33 µs of a 145 µs step."""

    def __init__(self, envs: list[Any]) -> None:
        self.envs = envs
        self.num_envs = len(envs)
        self.single_observation_space = envs[0].observation_space
        self.single_action_space = envs[0].action_space

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        obs, costs = [], []
        for i, env in enumerate(self.envs):
            o, info = env.reset(seed=None if seed is None else seed + i)
            obs.append(o)
            costs.append(info.get("cost"))
        infos: dict[str, Any] = {}
        _put_cost(infos, costs)
        return np.stack(obs), infos

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        n = self.num_envs
        obs: list[Any] = [None] * n
        rewards = np.zeros(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        costs: list[Any] = [None] * n
        final_obs = final_costs = None
        for i, env in enumerate(self.envs):
            o, r, term, trunc, info = env.step(actions[i])
            rewards[i], terminated[i], truncated[i] = r, term, trunc
            cost = info.get("cost")
            if term or trunc:
                if final_obs is None:
                    final_obs, final_costs = np.full(n, None, dtype=object), [None] * n
                final_obs[i], final_costs[i] = o, cost  # type: ignore[index]
                o, info = env.reset()
                cost = info.get("cost")
            obs[i], costs[i] = o, cost
        infos: dict[str, Any] = {}
        _put_cost(infos, costs)
        if final_obs is not None:
            done = terminated | truncated
            infos["final_obs"], infos["_final_obs"] = final_obs, done
            infos["final_info"], infos["_final_info"] = {}, done
            _put_cost(infos["final_info"], final_costs)  # type: ignore[arg-type]
        return np.stack(obs), rewards, terminated, truncated, infos

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _put_cost(infos: dict[str, Any], costs: list[Any]) -> None:
    """``infos["cost"]`` and its ``_cost`` mask from per-environment costs (None: no cost)."""
    have = np.array([c is not None for c in costs])
    if have.any():
        infos["cost"] = np.array([0.0 if c is None else float(c) for c in costs])
        infos["_cost"] = have


def step_costs(infos: dict[str, Any], done: np.ndarray) -> np.ndarray | None:
    """Per-environment step costs from a SAME_STEP vector env's ``infos`` (a finished
    environment's step info is in ``final_info``), or None when the task has no cost."""
    n = len(done)
    if "cost" not in infos and "cost" not in infos.get("final_info", {}):
        return None
    costs = np.zeros(n, dtype=np.float64)
    if "cost" in infos:
        costs = np.where(infos.get("_cost", np.ones(n, bool)), infos["cost"], 0.0)
    final = infos.get("final_info", {})
    if done.any() and "cost" in final:
        costs = np.where(done & final.get("_cost", done), final["cost"], costs)
    return costs.astype(np.float64)


# ---------------------------------------------------------------------------- state


def _layers(env: Any) -> list[Any]:
    """``env`` and every wrapper inside it, outermost first (the bare environment last)."""
    out = [env]
    while hasattr(out[-1], "env"):
        out.append(out[-1].env)
    return out


_WRAPPER_KEYS_SKIPPED = ("env", "_action_space", "_observation_space", "_metadata", "_cached_spec")


def env_state(env: Any) -> dict[str, Any] | None:
    """The state of one environment mid-episode, to put it back with :func:`set_env_state`,
    or None when it cannot be captured.

    A plain Python environment (classic control, ...) is pickled whole. A MuJoCo environment
    pickles only as its constructor's arguments, so its physics (``MjData``), its random
    generator and each wrapper's own fields (a TimeLimit's step count, ...) are captured
    instead. Other environments that pickle as their arguments (EzPickle: Box2D, ...) cannot be
    captured: None."""
    from gymnasium.utils import EzPickle

    layers = _layers(env)
    bare = layers[-1]
    try:
        from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
    except ImportError:  # mujoco not installed
        MujocoEnv = ()  # noqa: N806
    if isinstance(bare, MujocoEnv):
        wrappers = []
        for w in layers[:-1]:
            fields = {}
            for k, v in vars(w).items():
                if k in _WRAPPER_KEYS_SKIPPED:
                    continue
                try:
                    fields[k] = pickle.dumps(v)
                except Exception:  # noqa: S112  (an unpicklable field: a renderer, a file, ...)
                    continue
            wrappers.append(fields)
        return {
            "kind": "mujoco",
            "data": pickle.dumps(bare.data),
            "np_random": bare.np_random.bit_generator.state,
            "wrappers": wrappers,
        }
    if isinstance(bare, EzPickle):
        return None
    try:
        return {"kind": "pickle", "env": pickle.dumps(env)}
    except Exception:
        return None


def set_env_state(env: Any, state: dict[str, Any]) -> Any:
    """Put a state from :func:`env_state` back; returns the environment to use from now on
    (a pickled one is a new object)."""
    if state["kind"] == "pickle":
        return pickle.loads(state["env"])
    import mujoco

    layers = _layers(env)
    bare = layers[-1]
    mujoco.mj_copyData(bare.data, bare.model, pickle.loads(state["data"]))
    bare.np_random.bit_generator.state = state["np_random"]
    for w, fields in zip(layers[:-1], state["wrappers"]):
        for k, v in fields.items():
            setattr(w, k, pickle.loads(v))
    return env


# ---------------------------------------------------------------------------- episodes


@dataclass
class Episode:
    """One played episode; the step arrays are kept only when recording."""

    total_return: float
    length: int
    total_cost: float
    seed: int
    observations: np.ndarray | None = None  # (T + 1, O) float32, the final observation last
    actions: np.ndarray | None = None  # (T,) or (T, A) the actions the environment got
    rewards: np.ndarray | None = None  # (T,) float64
    terminations: np.ndarray | None = None  # (T,) bool
    truncations: np.ndarray | None = None  # (T,) bool
    costs: np.ndarray | None = None  # (T,) float64, on constrained tasks
    frames: list[np.ndarray] = field(default_factory=list)  # RGB frames when rendering


def run_episodes(
    env_id: str,
    policy: Callable[[np.ndarray], np.ndarray],
    seeds: list[int],
    *,
    record: bool = False,
    render: bool = False,
    env_kwargs: dict[str, Any] | None = None,
) -> list[Episode]:
    """One episode per reset seed, all played side by side: ``policy`` maps the observations
    (n, O) of the environments still running to their actions. ``record`` keeps every step;
    ``render`` keeps RGB frames of the first episode."""
    kwargs = dict(env_kwargs or {})
    if render:
        kwargs["render_mode"] = "rgb_array"
    envs = [make_env(env_id, **kwargs) for _ in seeds]
    if not envs:
        return []
    first = [env.reset(seed=s) for env, s in zip(envs, seeds)]
    obs = [np.asarray(o) for o, _ in first]
    steps: list[list[tuple]] = [[] for _ in seeds]
    totals = [[0.0, 0, 0.0] for _ in seeds]  # return, length, cost
    frames: list[np.ndarray] = []
    if render:
        frames.append(envs[0].render())
    running = list(range(len(seeds)))
    while running:
        actions = policy(np.stack([obs[i] for i in running]))
        still = []
        for a, i in zip(actions, running):
            next_obs, r, term, trunc, info = envs[i].step(a)
            cost = float(info.get("cost", 0.0))
            totals[i][0] += float(r)
            totals[i][1] += 1
            totals[i][2] += cost
            if record:
                steps[i].append((obs[i], a, float(r), bool(term), bool(trunc), info.get("cost")))
            if render and i == 0:
                frames.append(envs[0].render())
            obs[i] = np.asarray(next_obs)
            if not (term or trunc):
                still.append(i)
        running = still
    out = []
    for i, s in enumerate(seeds):
        ep = Episode(totals[i][0], int(totals[i][1]), totals[i][2], s)
        if record:
            o, a, r, te, tr, c = zip(*steps[i])
            ep.observations = np.stack([*o, obs[i]]).astype(np.float32)
            ep.actions = np.stack(a)
            ep.rewards = np.asarray(r, dtype=np.float64)
            ep.terminations = np.asarray(te, dtype=bool)
            ep.truncations = np.asarray(tr, dtype=bool)
            if c[0] is not None:
                ep.costs = np.asarray(c, dtype=np.float64)
        if render and i == 0:
            ep.frames = frames
        out.append(ep)
    for env in envs:
        env.close()
    return out
