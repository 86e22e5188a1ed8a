"""rlfm's Decision Transformer against the reference recipe on a Hopper medium dataset:
training steps/s, evaluation episodes/s and the normalised score each reaches, interleaved
rounds, each side in its own process, ratios printed (rlfm rate / reference rate).

Reference: ``transformers.DecisionTransformerModel`` (a GPT-2 backbone fed ``inputs_embeds``,
as the original code does) trained by the original code's recipe: its batch sampler (an
episode drawn with probability ∝ its length, a uniform start, the window left-padded to K with
an attention mask, returns-to-go summed from the start each time, padded actions −10), MSE on
the action predictions at real steps, AdamW with ``transformers``' default fused kernel
(``adamw_torch_fused`` since torch 2.8), linear warm-up, gradients clipped to 0.25; evaluated
one episode at a time, each step the last K steps left-padded to K (the original
``get_action``). rlfm: ``rlfm dt train`` as a user runs it (its own sampler, right padding, no
mask, the last block only at state tokens, fused AdamW) and ``rlfm dt eval`` (all episodes
side by side).

Same work on both sides: the dataset (``rlfm offline make --kind medium`` of Hopper-v5), the
paper's model (K = 20, 128 wide, 3 layers, 1 head, ReLU, dropout 0.1), batch 64, lr 1e-4,
weight decay 1e-4, the same warm-up, returns-to-go / 1000, the same precision (``--precision``:
fp32 as the paper, or bf16 autocast on both sides, rlfm's default where the CPU runs it fast;
training only: evaluation runs in fp32 on both sides, ``rlfm dt eval``'s default),
the same torch threads (``--threads``: 1, or the machine's default count), the same number of
steps; evaluation at the paper's Hopper target return 3600 on the same reset seeds,
scored 100·(R − ref_min)/(ref_max − ref_min) with the dataset's reference scores. Training
rates are steps over the training loop's time (data sampling included, evaluation excluded);
evaluation rates are episodes over the evaluation's time, and environment steps over it (a
policy whose episodes end sooner plays more episodes per second, so the steps/s row compares
the per-step work whatever each side's episode lengths). A like-for-like evaluation row runs
rlfm one episode at a time too.

    rlfm offline make --env Hopper-v5 --kind medium --policy runs/learning/hopper-seed0 \\
        --dataset-id rlfm/hopper-medium-v0 --steps 100000
    python benchmarks/dt_speed.py --dataset rlfm/hopper-medium-v0 --steps 2000 --rounds 2

``--out`` writes the result rows (training steps/s, evaluation episodes/s, normalised score;
rlfm against the reference, with their ratios and targets) as a JSON list.
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
K, H, L, B = 20, 128, 3, 64
LR, WD, CLIP, SCALE, TARGET = 1e-4, 1e-4, 0.25, 1000.0, 3600.0
EVAL_SEED = 20_000


def paper_settings(steps: int, warmup: int, precision: str = "fp32") -> dict:
    return dict(
        context=K,
        hidden=H,
        layers=L,
        heads=1,
        dropout=0.1,
        activation="relu",
        batch_size=B,
        lr=LR,
        weight_decay=WD,
        warmup_steps=warmup,
        max_grad_norm=CLIP,
        return_scale=SCALE,
        steps=steps,
        precision=precision,
        device="cpu",
    )


def total_rate(runs) -> float:
    """Total work over total time of runs given as (work, rate) pairs."""
    runs = list(runs)
    return sum(w for w, _ in runs) / sum(w / r for w, r in runs)


def env_steps_per_s(run: dict, episodes: int, prefix: str = "") -> float:
    """Environment steps per second of a run's evaluation (``prefix`` "like_for_like_": rlfm's
    one-at-a-time one): its steps over the time its ``episodes`` took."""
    return run[f"{prefix}eval_env_steps"] * run[f"{prefix}eval_episodes_per_s"] / episodes


def set_threads(threads: int) -> None:
    """``threads`` torch threads (0: the machine's default count)."""
    import torch

    if threads:
        torch.set_num_threads(threads)


def rlfm_child(
    dataset: str,
    steps: int,
    warmup: int,
    episodes: int,
    seed: int,
    prec: str,
    threads: int,
    out: Path,
) -> dict:
    from rlfm.stages import dt, dt_eval
    from rlfm.tracking import read_metrics

    set_threads(threads)
    cfg = dt.Config(
        dataset=(dataset,),
        out=out,
        seed=seed,
        eval_episodes=0,
        log_every=steps,
        save_every=steps,
        **paper_settings(steps, warmup, prec),
    )
    dt.train(cfg)
    (row,) = [r for r in read_metrics(out / "metrics.jsonl") if "steps_per_s" in r]
    result = dt_eval.evaluate(
        dt_eval.Config(
            model=out,
            target_returns=(str(TARGET),),
            episodes=episodes,
            out=out / "result.json",
            seed=EVAL_SEED,
            device="cpu",
        )
    )
    (r,) = result["tasks"][0]["results"]
    one_at_a_time, one_at_a_time_steps = rlfm_one_at_a_time(dataset, out, episodes)
    return {
        "train_steps_per_s": row["steps_per_s"],
        "eval_episodes_per_s": result["episodes_per_s"],
        "eval_env_steps": round(r["length_mean"] * episodes),
        "return": r["return_mean"],
        "score": r["normalised_score"],
        "like_for_like_eval_episodes_per_s": one_at_a_time,
        "like_for_like_eval_env_steps": one_at_a_time_steps,
    }


def rlfm_one_at_a_time(dataset: str, out: Path, episodes: int) -> tuple[float, int]:
    """rlfm's evaluation of the trained model, one episode after another (like for like):
    episodes/s and the environment steps they ran."""
    from rlfm.checkpoint import resolve_model_dir
    from rlfm.data.trajectories import load_episodes
    from rlfm.evaluate.episodes import evaluate_model
    from rlfm.models.decision_transformer import DecisionTransformer

    model = DecisionTransformer.from_pretrained(resolve_model_dir(out)).eval()
    d = load_episodes(dataset)
    t0 = time.perf_counter()
    steps = 0
    for i in range(episodes):
        (e,) = evaluate_model(model, d.env_spec, d.name, [(TARGET, None)], 1, seed=EVAL_SEED + i)
        steps += e.length
    return episodes / (time.perf_counter() - t0), steps


def reference_child(
    dataset: str, steps: int, warmup: int, episodes: int, seed: int, prec: str, threads: int
) -> dict:
    import gymnasium as gym
    import numpy as np
    import torch
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    from rlfm.data.trajectories import load_episodes

    set_threads(threads)
    torch.manual_seed(seed)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16")
    rng = np.random.default_rng(seed)
    d = load_episodes(dataset)
    S, A = d.observations.shape[1], d.actions.shape[1]
    mean, std = d.observations.mean(0), d.observations.std(0) + 1e-6
    starts, lengths = d.starts, d.lengths
    max_ep_len = 1000
    model = DecisionTransformerModel(
        DecisionTransformerConfig(
            state_dim=S,
            act_dim=A,
            hidden_size=H,
            max_ep_len=max_ep_len,
            n_layer=L,
            n_head=1,
            n_inner=4 * H,
            activation_function="relu",
            n_positions=1024,
            resid_pdrop=0.1,
            attn_pdrop=0.1,
            embd_pdrop=0.1,
            action_tanh=True,
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 1.0))

    def get_batch() -> tuple[torch.Tensor, ...]:
        """The original code's sampler (gym/experiment.py: get_batch), re-implemented."""
        eps = rng.choice(len(lengths), size=B, p=lengths / lengths.sum())
        s_, a_, r_, t_, m_ = [], [], [], [], []
        for e in eps:
            n, o = int(lengths[e]), int(starts[e])
            si = int(rng.integers(0, n))
            s = d.observations[o + si : o + min(si + K, n)]
            a = d.actions[o + si : o + min(si + K, n)]
            rtg = np.cumsum(d.rewards[o + si : o + n][::-1])[::-1][: len(s)]  # from si on
            t = np.minimum(np.arange(si, si + len(s)), max_ep_len - 1)
            pad = K - len(s)
            s_.append(np.concatenate([np.zeros((pad, S)), (s - mean) / std]))
            a_.append(np.concatenate([np.full((pad, A), -10.0), a]))
            r_.append(np.concatenate([np.zeros(pad), rtg]) / SCALE)
            t_.append(np.concatenate([np.zeros(pad, dtype=np.int64), t]))
            m_.append(np.concatenate([np.zeros(pad), np.ones(len(s))]))
        f = lambda x: torch.as_tensor(np.stack(x), dtype=torch.float32)  # noqa: E731
        return f(s_), f(a_), f(r_)[..., None], torch.as_tensor(np.stack(t_)), f(m_)

    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        states, actions, rtg, timesteps, mask = get_batch()
        with autocast:
            pred = model(
                states=states,
                actions=actions,
                returns_to_go=rtg,
                timesteps=timesteps,
                attention_mask=mask.long(),
                return_dict=True,
            ).action_preds
        real = mask > 0
        loss = ((pred[real].float() - actions[real]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        sched.step()
    train_s = time.perf_counter() - t0

    model.eval()
    returns, env_steps = [], 0
    t0 = time.perf_counter()
    with torch.no_grad():  # fp32 on both sides (rlfm dt eval's default), whatever --precision
        for ep in range(episodes):  # the original evaluate_episode_rtg with get_action
            env = gym.make(d.env_spec)
            obs, _ = env.reset(seed=EVAL_SEED + ep)
            states = torch.as_tensor((obs - mean) / std, dtype=torch.float32).view(1, S)
            acts = torch.zeros(0, A)
            rtg = torch.tensor([[TARGET / SCALE]])
            ts = torch.zeros(1, 1, dtype=torch.long)
            total, done, t = 0.0, False, 0
            while not done:
                acts = torch.cat([acts, torch.zeros(1, A)])
                s, a, r, tt = states[-K:], acts[-K:], rtg[-K:], ts[0, -K:]
                pad = K - s.shape[0]
                out = model(
                    states=torch.cat([torch.zeros(pad, S), s])[None],
                    actions=torch.cat([torch.ones(pad, A) * -10.0, a])[None],
                    returns_to_go=torch.cat([torch.zeros(pad, 1), r])[None],
                    timesteps=torch.cat([torch.zeros(pad, dtype=torch.long), tt])[None],
                    attention_mask=torch.cat([torch.zeros(pad), torch.ones(s.shape[0])]).long()[
                        None
                    ],
                    return_dict=True,
                )
                action = out.action_preds[0, -1]
                acts[-1] = action
                obs, reward, term, trunc, _ = env.step(action.numpy())
                total, done, t = total + float(reward), term or trunc, t + 1
                new = torch.as_tensor((obs - mean) / std, dtype=torch.float32).view(1, S)
                states = torch.cat([states, new])
                rtg = torch.cat([rtg, rtg[-1:] - reward / SCALE])
                ts = torch.cat([ts, torch.tensor([[min(t, max_ep_len - 1)]])], dim=1)
            returns.append(total)
            env_steps += t
            env.close()
    eval_s = time.perf_counter() - t0
    ret = float(np.mean(returns))
    lo, hi = d.ref_min_score, d.ref_max_score
    return {
        "train_steps_per_s": steps / train_s,
        "eval_episodes_per_s": episodes / eval_s,
        "eval_env_steps": env_steps,
        "return": ret,
        "score": 100 * (ret - lo) / (hi - lo),
    }


def main() -> None:
    from _common import add_child_args

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="rlfm/hopper-medium-v0", help="a Hopper medium dataset")
    p.add_argument("--steps", type=int, default=1000, help="training steps per run")
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps (both sides)")
    p.add_argument("--episodes", type=int, default=5, help="evaluation episodes per run")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (seed = round)")
    p.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="both sides (paper: fp32)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads, both sides (0: default)")
    add_child_args(p, ("rlfm", "reference"))
    a = p.parse_args()
    job = (a.dataset, a.steps, a.warmup, a.episodes, a.seed, a.precision, a.threads)
    if a.child == "rlfm":
        print("RESULT " + json.dumps(rlfm_child(*job, a.run_dir)))
        return
    if a.child == "reference":
        print("RESULT " + json.dumps(reference_child(*job)))
        return
    from _common import interleaved_rounds, ratio_row, table, write_row_list

    def args(side: str, r: int, tmp: Path) -> list[str]:
        run_dir = ["--run-dir", str(tmp / f"rlfm-{r}")] if side == "rlfm" else []
        return [
            *["--dataset", a.dataset, "--steps", str(a.steps), "--warmup", str(a.warmup)],
            *["--episodes", str(a.episodes), "--seed", str(r), *run_dir],
            *["--precision", a.precision, "--threads", str(a.threads)],
        ]

    runs = interleaved_rounds(__file__, ("rlfm", "reference"), a.rounds, args)
    rows = [
        [
            f"{x['side']} (round {x['round']})",
            f"{x['train_steps_per_s']:.2f}",
            f"{x['eval_episodes_per_s']:.3f}",
            f"{env_steps_per_s(x, a.episodes):.0f}",
            f"{x['eval_env_steps'] / a.episodes:.0f}",
            f"{x['return']:.0f}",
            f"{x['score']:.1f}",
            f"{x['peak_rss_mib']:.0f}",
        ]
        for x in runs
    ]
    import torch

    threads = f"{a.threads or torch.get_num_threads()} thread(s)"
    heads = [
        "run",
        "train steps/s",
        "eval episodes/s",
        "eval env steps/s",
        "episode length",
        "return",
        "score",
        "peak RSS MiB",
    ]
    print(
        f"\n{a.dataset}: {a.steps:,} training steps per run, target {TARGET:g}, {a.precision}, {threads}"
    )
    print(table(heads, rows))
    summary = {}
    for side in ("rlfm", "reference"):
        mine = [x for x in runs if x["side"] == side]
        summary[side] = {
            "train_steps_per_s": total_rate((a.steps, x["train_steps_per_s"]) for x in mine),
            "eval_episodes_per_s": total_rate((a.episodes, x["eval_episodes_per_s"]) for x in mine),
            "eval_steps_per_s": total_rate(
                (x["eval_env_steps"], env_steps_per_s(x, a.episodes)) for x in mine
            ),
            "score_mean": statistics.mean(x["score"] for x in mine),
            "score_std": statistics.pstdev(x["score"] for x in mine),
        }
    mine = [x for x in runs if x["side"] == "rlfm"]
    summary["rlfm"]["like_for_like_eval_episodes_per_s"] = total_rate(
        (a.episodes, x["like_for_like_eval_episodes_per_s"]) for x in mine
    )
    summary["rlfm"]["like_for_like_eval_steps_per_s"] = total_rate(
        (x["like_for_like_eval_env_steps"], env_steps_per_s(x, a.episodes, "like_for_like_"))
        for x in mine
    )
    ours, ref = summary["rlfm"], summary["reference"]
    train_ratio = ours["train_steps_per_s"] / ref["train_steps_per_s"]
    print(f"training steps/s ratio rlfm / reference: {train_ratio:.2f}× (target ≥ 1.5×)")
    print(
        "evaluation episodes/s ratio: "
        f"{ours['like_for_like_eval_episodes_per_s'] / ref['eval_episodes_per_s']:.2f}× one "
        f"episode at a time (like for like), "
        f"{ours['eval_episodes_per_s'] / ref['eval_episodes_per_s']:.2f}× side by side; "
        "per environment step (whatever each side's episode lengths): "
        f"{ours['like_for_like_eval_steps_per_s'] / ref['eval_steps_per_s']:.2f}× one at a time"
    )
    print(
        f"normalised score: rlfm {ours['score_mean']:.1f} ± {ours['score_std']:.1f}, reference "
        f"{ref['score_mean']:.1f} ± {ref['score_std']:.1f} (mean ± std over rounds)"
    )
    settings = (
        "transformers.DecisionTransformerModel, the original code's sampler and get_action; "
        f"K={K}, {H} wide, {L} layers, batch {B}, {a.precision}, {threads}, {a.rounds} round(s)"
    )
    size = f"{a.dataset}, {a.steps} steps, {a.episodes} episodes"

    def row(metric: str, x: float, y: float, target: float | None) -> dict:
        return ratio_row("Decision Transformer", size, "reference", settings, metric, x, y, target)

    rows_out = [
        row("training steps/s", ours["train_steps_per_s"], ref["train_steps_per_s"], 1.5),
        row(
            "eval episodes/s (one at a time)",
            ours["like_for_like_eval_episodes_per_s"],
            ref["eval_episodes_per_s"],
            1.5,
        ),
        row(
            "eval episodes/s (rlfm side by side)",
            ours["eval_episodes_per_s"],
            ref["eval_episodes_per_s"],
            None,
        ),
        row(
            "eval env steps/s (one at a time)",
            ours["like_for_like_eval_steps_per_s"],
            ref["eval_steps_per_s"],
            None,
        ),
        row("normalised score at target 3600", ours["score_mean"], ref["score_mean"], None),
    ]
    result = {"args": vars(a) | {"run_dir": None, "out": None}, "runs": runs, "summary": summary}
    print(json.dumps(result))
    write_row_list(a.out, rows_out)


if __name__ == "__main__":
    main()
