"""Make an offline RL dataset in Minari format with D4RL's recipes (offline/datasets.py).

random = uniform actions; expert = the final policy of a full PPO run; medium = that run's
policy at about a third of the expert's normalised return; medium-replay = every episode the
run trained on up to the medium policy. Without ``--policy`` the PPO run is made here first,
in ``--work`` (the env's preset from configs/control/ when one exists, with snapshots and
recorded episodes), and reused — and resumed after a kill — by every later call. On a
constrained task, ``--cost-limits`` makes one PPO-Lagrangian run per limit and the episodes are
shared among them, spreading the data over the reward–cost plane.

The dataset is written into Minari's local folder ($MINARI_DATASETS_PATH, default
~/.minari/datasets); ``minari.load_dataset(ID)`` reads it back.

    rlfm offline make --env CartPole-v1 --kind expert --dataset-id rlfm/cartpole-expert-v0
    rlfm offline make --env rlfm/SafetyHopperVelocity-v5 --kind expert \\
        --dataset-id rlfm/hopper-velocity-expert-v0 --cost-limits 10 40 80
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from rlfm.config import check, from_dict, load_yaml
from rlfm.offline.datasets import KINDS, Kind, check_dataset_id, datasets_root, make_dataset
from rlfm.offline.envs import check_env_id

PRESETS = Path(__file__).resolve().parents[3] / "configs" / "control"


@dataclass(frozen=True)
class Config:
    """Make a Minari dataset of a Gymnasium environment."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    env: str = "CartPole-v1"
    """Gymnasium environment id."""
    kind: Kind = "expert"
    """random, medium, medium-replay or expert."""
    dataset_id: str = "rlfm/cartpole-expert-v0"
    """Minari dataset id, namespace/name-vN."""
    policy: tuple[Path, ...] = ()
    """`rlfm control ppo` run directories to take the policies from. Default: train one."""
    work: Path | None = None
    """Where the PPO runs are trained when --policy is not given. Default:
    <datasets>/.rlfm-policies/<env>."""
    ppo_config: Path | None = None
    """YAML preset of the PPO runs trained here. Default: configs/control/<task>.yaml."""
    ppo_steps: int | None = None
    """Environment steps of the PPO runs trained here. Default: the preset's."""
    cost_limits: tuple[float, ...] = ()
    """Constrained tasks: one PPO-Lagrangian run per cost limit."""
    steps: int = 100_000
    """Transitions in the dataset, at least (whole episodes)."""
    ref_episodes: int = 20
    """Episodes that estimate ref_min_score (random) and ref_max_score (expert)."""
    seed: int = 0
    """Seed of the PPO runs and of the episodes' resets."""

    def __post_init__(self) -> None:
        check(self.kind in KINDS, "kind", f"{self.kind!r} is not one of {', '.join(KINDS)}")
        check(self.steps >= 1, "steps", f"must be ≥ 1, got {self.steps}")
        check(self.ref_episodes >= 1, "ref_episodes", f"must be ≥ 1, got {self.ref_episodes}")
        check(
            self.ppo_steps is None or self.ppo_steps >= 1,
            "ppo_steps",
            f"must be ≥ 1, got {self.ppo_steps}",
        )
        for p in self.policy:
            check(Path(p).is_dir(), "policy", f"{p} is not a directory")


def preset_for(env_id: str) -> Path | None:
    """configs/control/<task>.yaml for an env id ("Hopper-v5", "rlfm/SafetyHopperVelocity-v5"
    -> hopper.yaml), if there is one."""
    name = env_id.split("/")[-1].split("-")[0].lower()
    name = name.removeprefix("safety").removesuffix("velocity")
    path = PRESETS / f"{name}.yaml"
    return path if path.is_file() else None


def train_policies(cfg: Config) -> list[Path]:
    """Train (or resume, or reuse) the PPO run(s) a dataset needs: one per cost limit."""
    from rlfm.stages import control_ppo

    work = cfg.work or datasets_root() / ".rlfm-policies" / cfg.env.replace("/", "_")
    preset = cfg.ppo_config or preset_for(cfg.env)
    base = control_ppo.Config()
    if preset is not None:
        base = from_dict(control_ppo.Config, load_yaml(preset), base, source=str(preset))
    changes: dict = {"env": cfg.env, "seed": cfg.seed, "snapshots": True, "record_episodes": True}
    if cfg.ppo_steps is not None:
        changes["steps"] = cfg.ppo_steps
    runs = []
    for limit in cfg.cost_limits or (None,):
        out = work / ("ppo" if limit is None else f"ppo-cost{limit:g}")
        run_cfg = dataclasses.replace(base, out=out, cost_limit=limit, **changes)
        control_ppo.train(run_cfg)
        runs.append(out)
    return runs


def run(cfg: Config) -> dict[str, float]:
    """Make the dataset; print where it is and its size."""
    check_env_id(cfg.env)
    check_dataset_id(cfg.dataset_id)  # before any training
    policies = list(cfg.policy)
    if not policies and (cfg.kind != "random" or cfg.cost_limits):
        policies = train_policies(cfg)
    elif not policies:
        policies = []
    dataset = make_dataset(
        cfg.env,
        cfg.kind,
        cfg.dataset_id,
        policies=policies,
        steps=cfg.steps,
        ref_episodes=cfg.ref_episodes,
        seed=cfg.seed,
    )
    meta = dataset.storage.metadata
    print(
        f"rlfm offline make: {cfg.dataset_id}: {dataset.total_episodes} episodes, "
        f"{dataset.total_steps} steps in {datasets_root() / cfg.dataset_id}\n"
        f"ref_min_score {meta.get('ref_min_score')}, ref_max_score {meta.get('ref_max_score')}"
    )
    return {"episodes": float(dataset.total_episodes), "steps": float(dataset.total_steps)}
