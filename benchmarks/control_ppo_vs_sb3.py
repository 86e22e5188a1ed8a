"""rlfm control ppo against Stable-Baselines3's PPO on Hopper-v5: environment steps/s and the
return reached at equal steps, same machine, interleaved rounds, ratio printed.

The same work on both sides: the rl-baselines3-zoo's published Hopper hyperparameters
(hyperparams/ppo.yml, Hopper-v3; rlfm's configs/control/hopper-zoo.yaml is the same recipe): one
environment, 512-step rollouts, minibatches of 32, 5 epochs, γ 0.999, λ 0.99, lr 9.8e-5,
entropy 0.0023, value coefficient 0.84 (SB3's value loss is E[(V − R)²]; rlfm's is ½·E[...],
so rlfm's preset says 1.67: the same objective), gradient clip 0.7, separate 256-256 ReLU
networks, log-std −2, no orthogonal initialisation, observation and reward normalisation
(SB3: VecNormalize with the same γ, as the zoo makes it), fp32 on both sides.

Each side at its best documented settings for this model: SB3 on the CPU (its documentation:
PPO with an MLP policy is meant to run on the CPU), one environment in a ``DummyVecEnv`` (with
one environment a subprocess only adds a pipe), one torch thread; rlfm as ``rlfm control ppo``
runs (one torch thread). Every child gets ``OMP_NUM_THREADS=1``.

Rounds interleave the two sides (the order alternates from round to round), each run in its
own process, with the seed of its round on both sides. Rates are environment steps over the
training time (rlfm: its logged ``steps_per_s`` over the whole run, evaluation and checkpoint
excluded; SB3: ``model.learn`` wall time); the ratio is total steps over total time per side.
The return is the mean of 10 deterministic episodes after training, with the same reset seeds
on both sides; "equal or better return" is met unless rlfm's is lower by more than two standard
errors of the per-seed differences (returns at equal steps vary by seed more than by library).

    pip install -e '.[bench]'
    python benchmarks/control_ppo_vs_sb3.py --steps 100000 --rounds 3 --out sb3.json

``--out`` writes the result rows (steps/s and return, rlfm against SB3, with their ratios and
targets) as a JSON list. ``--sb3-curve 1000000`` trains SB3 alone with the same recipe and
prints its evaluation return every ``--curve-every`` steps (what rlfm's Hopper curve is set
against: benchmarks/control_learning.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
EVAL_SEED = 1_000_000  # rlfm evaluates with reset seeds seed + EVAL_SEED + i


def rlfm_child(steps: int, seed: int, out: Path) -> dict:
    import dataclasses

    from rlfm.config import from_dict, load_yaml
    from rlfm.stages import control_ppo
    from rlfm.tracking import read_metrics

    cfg = from_dict(control_ppo.Config, load_yaml(ROOT / "configs/control/hopper-zoo.yaml"))
    cfg = dataclasses.replace(
        cfg, out=out, steps=steps, seed=seed, eval_every=steps, log_every=steps, save_every=steps
    )
    summary = control_ppo.train(cfg)
    (row,) = [r for r in read_metrics(out / "metrics.jsonl") if "steps_per_s" in r]
    return {"steps_per_s": row["steps_per_s"], "return": summary["eval_return"]}


def make_sb3(seed: int) -> tuple:
    """SB3's PPO with the zoo's Hopper recipe on Hopper-v5 (one thread) and its VecNormalize."""
    import gymnasium as gym
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
        seed=seed,
        verbose=0,
    )
    return model, env


def sb3_return(model, env, seed: int, episodes: int = 10) -> float:  # noqa: ANN001
    """Mean return of deterministic episodes (reset seeds seed + EVAL_SEED + i), observations
    normalised with the VecNormalize statistics frozen."""
    import gymnasium as gym
    import numpy as np

    training = env.training
    env.training = False
    returns = []
    for i in range(episodes):
        e = gym.make("Hopper-v5")
        obs, _ = e.reset(seed=seed + EVAL_SEED + i)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(env.normalize_obs(obs[None]), deterministic=True)
            obs, r, term, trunc, _ = e.step(action[0])
            total, done = total + float(r), term or trunc
        returns.append(total)
    env.training = training
    return float(np.mean(returns))


def sb3_child(steps: int, seed: int) -> dict:
    model, env = make_sb3(seed)
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    train_s = time.perf_counter() - t0
    env.norm_reward = False
    return {"steps_per_s": steps / train_s, "return": sb3_return(model, env, seed)}


def return_row(runs: list[dict], steps: int, settings: str) -> dict:
    """The return row: "equal or better return" is judged on the rounds' paired differences
    (rlfm − SB3 at the same seed): met unless rlfm's mean is worse by more than two standard
    errors of the mean difference (with one round, unless it is lower at all)."""
    from _common import ratio_row

    by_seed = {(x["side"], x["seed"]): x["return"] for x in runs}
    diffs = [by_seed["rlfm", s] - by_seed["sb3", s] for (side, s) in by_seed if side == "rlfm"]
    mean_diff = statistics.mean(diffs)
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    ours = statistics.mean(by_seed[k] for k in by_seed if k[0] == "rlfm")
    theirs = statistics.mean(by_seed[k] for k in by_seed if k[0] == "sb3")
    row = ratio_row(
        "control PPO, Hopper-v5",
        f"{steps} steps",
        "stable-baselines3",
        settings,
        "eval return at equal steps (10 det. episodes)",
        ours,
        theirs,
    )
    row["target"] = "not worse: paired difference ≥ −2 s.e."
    row["met"] = bool(mean_diff >= -2 * se)
    row["paired_difference"] = {"mean": mean_diff, "se": se, "per_seed": diffs}
    return row


def main() -> None:
    from _common import add_child_args

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20_000, help="environment steps per run")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (seed = round)")
    p.add_argument(
        "--sb3-curve",
        type=int,
        metavar="STEPS",
        help="instead: SB3 alone for STEPS steps (seed --curve-seed), 10 deterministic episodes "
        "every --curve-every steps, one JSON line each (the learning curve quoted for Hopper)",
    )
    p.add_argument("--curve-every", type=int, default=100_000)
    p.add_argument("--curve-seed", type=int, default=0)
    add_child_args(p, ("rlfm", "sb3"))
    a = p.parse_args()
    if a.sb3_curve:
        model, env = make_sb3(a.curve_seed)
        t0 = time.perf_counter()
        while model.num_timesteps < a.sb3_curve:
            model.learn(total_timesteps=a.curve_every, reset_num_timesteps=False)
            ret = sb3_return(model, env, a.curve_seed)
            row = {"step": model.num_timesteps, "eval_return": ret}
            print(json.dumps(row | {"seconds": round(time.perf_counter() - t0)}), flush=True)
        return
    if a.child == "rlfm":
        print("RESULT " + json.dumps(rlfm_child(a.steps, a.seed, a.run_dir)))
        return
    if a.child == "sb3":
        print("RESULT " + json.dumps(sb3_child(a.steps, a.seed)))
        return
    from _common import interleaved_rounds, ratio_row, table, write_row_list

    def args(side: str, r: int, tmp: Path) -> list[str]:
        run_dir = ["--run-dir", str(tmp / f"rlfm-{r}")] if side == "rlfm" else []
        return ["--steps", str(a.steps), "--seed", str(r), *run_dir]

    runs = [
        x | {"seed": x["round"]}
        for x in interleaved_rounds(__file__, ("rlfm", "sb3"), a.rounds, args)
    ]
    rows = [
        [
            f"{x['side']} (round {x['round']}, seed {x['seed']})",
            f"{x['steps_per_s']:.0f}",
            f"{x['return']:.1f}",
            f"{x['peak_rss_mib']:.0f}",
        ]
        for x in runs
    ]
    summary = {}
    for side in ("rlfm", "sb3"):
        mine = [x for x in runs if x["side"] == side]
        total_s = sum(a.steps / x["steps_per_s"] for x in mine)
        rets = [x["return"] for x in mine]
        summary[side] = {
            "steps_per_s": a.steps * len(mine) / total_s,
            "return_mean": statistics.mean(rets),
            "return_std": statistics.pstdev(rets),
        }
    print(f"\nHopper-v5, {a.steps:,} environment steps per run, zoo hyperparameters, fp32")
    print(table(["run", "env steps/s", "return (10 det. episodes)", "peak RSS MiB"], rows))
    ratio = summary["rlfm"]["steps_per_s"] / summary["sb3"]["steps_per_s"]
    for side, s in summary.items():
        print(
            f"{side}: {s['steps_per_s']:.0f} steps/s over all rounds, return "
            f"{s['return_mean']:.1f} ± {s['return_std']:.1f} (mean ± std over rounds)"
        )
    print(f"steps/s ratio rlfm / SB3: {ratio:.2f}× (target ≥ 1.5× at equal or better return)")
    settings = f"PPO, rl-zoo Hopper hyperparameters, DummyVecEnv + VecNormalize, CPU, 1 thread, {a.rounds} round(s)"
    ours, theirs = summary["rlfm"], summary["sb3"]
    rows_out = [
        ratio_row(
            "control PPO, Hopper-v5",
            f"{a.steps} steps",
            "stable-baselines3",
            settings,
            "env steps/s",
            ours["steps_per_s"],
            theirs["steps_per_s"],
            1.5,
        ),
        return_row(runs, a.steps, settings),
    ]
    print(json.dumps({"steps": a.steps, "runs": runs, "summary": summary, "ratio": ratio}))
    write_row_list(a.out, rows_out)


if __name__ == "__main__":
    main()
