"""rlfm control ppo against Stable-Baselines3's PPO on Hopper-v5, same machine, one run.

Both sides use the rl-baselines3-zoo's published Hopper hyperparameters (hyperparams/ppo.yml,
Hopper-v3; rlfm's configs/control/hopper.yaml is the same recipe): one environment, 512-step
rollouts, minibatches of 32, 5 epochs, γ 0.999, λ 0.99, lr 9.8e-5, entropy 0.0023, value
coefficient 0.84, gradient clip 0.7, separate 256-256 ReLU networks, log-std −2, no orthogonal
initialisation, observation and reward normalisation (SB3: VecNormalize), CPU, one torch
thread each (SB3's own recommendation for MLP policies on CPU is the CPU device).

Each side runs in its own process, for the same number of environment steps and seed. Rates
are environment steps over the training time (rlfm: its logged steps_per_s over the whole run,
evaluation excluded; SB3: ``model.learn`` wall time). The return is the mean of 10
deterministic episodes after training, with the same reset seeds on both sides.

    pip install -e '.[bench]'
    python benchmarks/control_ppo_vs_sb3.py --steps 100000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
EVAL_SEEDS = [1_000_000 + i for i in range(10)]  # rlfm's evaluation seeds (seed 0)


def rlfm_child(steps: int, out: Path) -> dict:
    import dataclasses

    from rlfm.config import from_dict, load_yaml
    from rlfm.stages import control_ppo
    from rlfm.tracking import read_metrics

    cfg = from_dict(control_ppo.Config, load_yaml(ROOT / "configs/control/hopper.yaml"))
    cfg = dataclasses.replace(
        cfg, out=out, steps=steps, eval_every=steps, log_every=steps, save_every=steps
    )
    summary = control_ppo.train(cfg)
    (row,) = [r for r in read_metrics(out / "metrics.jsonl") if "steps_per_s" in r]
    return {"steps_per_s": row["steps_per_s"], "return": summary["eval_return"]}


def sb3_child(steps: int) -> dict:
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    torch.set_num_threads(1)
    env = VecNormalize(DummyVecEnv([lambda: gym.make("Hopper-v5")]), gamma=0.999)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=512,
        batch_size=32,
        n_epochs=5,
        gamma=0.999,
        gae_lambda=0.99,
        learning_rate=9.80828e-05,
        ent_coef=0.00229519,
        clip_range=0.2,
        max_grad_norm=0.7,
        vf_coef=0.835671,
        policy_kwargs=dict(
            log_std_init=-2,
            ortho_init=False,
            activation_fn=torch.nn.ReLU,
            net_arch=dict(pi=[256, 256], vf=[256, 256]),
        ),
        device="cpu",
        seed=0,
        verbose=0,
    )
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    train_s = time.perf_counter() - t0
    env.training, env.norm_reward = False, False
    returns = []
    for seed in EVAL_SEEDS:
        e = gym.make("Hopper-v5")
        obs, _ = e.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(env.normalize_obs(obs[None]), deterministic=True)
            obs, r, term, trunc, _ = e.step(action[0])
            total, done = total + float(r), term or trunc
        returns.append(total)
    return {"steps_per_s": steps / train_s, "return": float(np.mean(returns))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--child", choices=["rlfm", "sb3"])
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if a.child == "rlfm":
        print("RESULT " + json.dumps(rlfm_child(a.steps, a.out)))
        return
    if a.child == "sb3":
        print("RESULT " + json.dumps(sb3_child(a.steps)))
        return
    from _common import run_child, table

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("rlfm", "sb3"):
            cmd = [sys.executable, __file__, "--child", side, "--steps", str(a.steps)]
            cmd += ["--out", str(Path(tmp) / "rlfm-run")] if side == "rlfm" else []
            res = run_child(cmd, Path(tmp) / f"{side}.log")
            lines = [x for x in res.log.read_text().splitlines() if x.startswith("RESULT ")]
            if res.returncode != 0 or not lines:
                print(f"{side} failed:\n{res.tail()}")
                raise SystemExit(1)
            results[side] = json.loads(lines[-1][7:]) | {"peak_rss_mib": res.peak_rss_mib}
    rows = [
        [side, f"{r['steps_per_s']:.0f}", f"{r['return']:.1f}", f"{r['peak_rss_mib']:.0f}"]
        for side, r in results.items()
    ]
    print(f"Hopper-v5, {a.steps:,} environment steps, zoo hyperparameters, one run each")
    print(table(["", "env steps/s", "return (10 det. episodes)", "peak RSS MiB"], rows))
    ratio = results["rlfm"]["steps_per_s"] / results["sb3"]["steps_per_s"]
    print(f"steps/s ratio rlfm / SB3: {ratio:.2f}× (target ≥ 1.5×)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
