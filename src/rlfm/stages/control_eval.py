"""Evaluate a control policy: play episodes with it and report their return (and cost).

The policy is a run directory of ``rlfm control ppo`` / ``rlfm control prefs`` (its newest
intact checkpoint) or a checkpoint or snapshot directory; the environment is the one it was
trained on unless ``--env`` names another with the same spaces. Episodes use reset seeds
seed, seed + 1, ... and the deterministic policy (the mean action, the arg-max) unless
``--stochastic``. ``--video`` renders the first episode and writes it as an animated GIF
(Pillow; MuJoCo tasks render off-screen with ``MUJOCO_GL=egl`` or ``osmesa`` on a machine
without a display).

    rlfm control eval --model runs/cartpole --episodes 10 --video
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from rlfm import checkpoint
from rlfm.config import check
from rlfm.errors import ConfigError
from rlfm.models.control import ActorCritic
from rlfm.offline.envs import run_episodes


@dataclass(frozen=True)
class Config:
    """Play episodes with a trained control policy."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    model: Path = Path("runs/control/ppo")
    """A control run directory, or a checkpoint / policy snapshot directory."""
    env: str | None = None
    """Gymnasium id to play in. Default: the environment the policy was trained on."""
    episodes: int = 10
    """Episodes to play."""
    seed: int = 0
    """Reset seed of the first episode (the next ones count up)."""
    stochastic: bool = False
    """Sample actions instead of taking the most likely one."""
    video: bool = False
    """Render the first episode into <model>/videos/episode.gif."""
    fps: int = 30
    """Frames per second of the video."""

    def __post_init__(self) -> None:
        check(self.episodes >= 1, "episodes", f"must be ≥ 1, got {self.episodes}")
        check(self.fps >= 1, "fps", f"must be ≥ 1, got {self.fps}")


def trained_env(model_dir: Path) -> str:
    """The environment id a checkpoint or snapshot was trained on (its run's config.yaml)."""
    for folder in (model_dir, *model_dir.parents[:3]):
        path = folder / "config.yaml"
        if path.is_file():
            env = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("env")
            if env:
                return str(env)
    raise ConfigError(f"env: cannot tell which environment {model_dir} was trained on; pass --env")


def save_gif(frames: list[np.ndarray], path: Path, fps: int) -> Path:
    """Write RGB frames (H, W, 3) as an animated GIF."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=1000 / fps, loop=0)
    return path


def run(cfg: Config) -> dict[str, float]:
    """Play the episodes; print and return mean return, its std, length and cost."""
    model_dir = checkpoint.resolve_model_dir(cfg.model)
    model = ActorCritic.from_pretrained(model_dir)
    model.eval()
    env_id = cfg.env or trained_env(model_dir)
    episodes = run_episodes(
        env_id,
        lambda obs: model.predict(obs, deterministic=not cfg.stochastic),
        [cfg.seed + i for i in range(cfg.episodes)],
        render=cfg.video,
    )
    returns = np.array([e.total_return for e in episodes])
    result = {
        "return": float(returns.mean()),
        "return_std": float(returns.std()),
        "length": float(np.mean([e.length for e in episodes])),
        "cost": float(np.mean([e.total_cost for e in episodes])),
    }
    lines = [
        f"rlfm control eval: {model_dir} on {env_id}, {cfg.episodes} "
        f"{'stochastic' if cfg.stochastic else 'deterministic'} episodes",
        f"return {result['return']:.1f} ± {result['return_std']:.1f} (min {returns.min():.1f}, "
        f"max {returns.max():.1f}), length {result['length']:.0f}, cost {result['cost']:.1f}",
    ]
    if cfg.video:
        root = Path(cfg.model) if Path(cfg.model).is_dir() else model_dir
        gif = save_gif(episodes[0].frames, root / "videos" / "episode.gif", cfg.fps)
        result["video_frames"] = float(len(episodes[0].frames))
        lines.append(f"video: {gif} ({len(episodes[0].frames)} frames)")
    print("\n".join(lines))
    print(json.dumps({k: round(v, 4) for k, v in result.items()}))
    return result
