"""Does the reward model still rank what PPO writes? Agreement with the gold labeler on a
pipeline run's own held-out PPO replies, and what labels of the policy's replies add.

    python benchmarks/reward_probe.py probe RUN [RM_DIR ...]
    python benchmarks/reward_probe.py relabel RUN POLICY --prompts 300 --out train+policy.jsonl

``probe``: every held-out prompt of ``RUN/ppo/samples.jsonl`` has one reply per evaluated update
(0, 6, 12, ...), each with its gold score. For each prompt, every pair of its replies with
different gold scores is a comparison; the reward model agrees when it orders the pair as gold
does, a tie counting half (``rlfm.evaluate.overoptimisation.pair_agreement``, which the report
applies to the scores PPO received). Printed per reward model (default ``RUN/rm``; more
directories: each, then their mean): agreement over all pairs, over the *late* pairs (both
replies from update 12 on, where PPO has moved away from the SFT policy that sampled the
labelled replies), and the mean reward per update next to the mean gold. An agreement of 0.5
on the late pairs is chance: the proxy no longer tells PPO's better replies from its worse
ones.

``relabel``: POLICY (e.g. ``RUN/ppo/checkpoints/step_30``) samples 4 replies at temperature 1
to the first N training prompts of the built-in task; the simulated labelers rank them with
the run's gold labeler (``RUN/labels/gold.json``); the rows are appended to the run's labelled
rankings and written to ``--out``, ready for ``rlfm reward train --data``. This is a round of
labels from the current policy, as InstructGPT's later rounds and iterated online RLHF collect
them, done offline.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch

LATE = 12
"""Pairs whose replies both come from this update or later count as late."""


def probe(run: Path, models: list[Path]) -> None:
    from rlfm.data.labelers import clean_reply
    from rlfm.evaluate.overoptimisation import gold_parts_by_update, judged_replies, pair_agreement
    from rlfm.stages.reward_score import load_reward_model

    rows = judged_replies(run / "ppo" / "samples.jsonl")
    if not rows:
        raise SystemExit(f"{run}/ppo/samples.jsonl has no held-out replies with gold scores")
    prompts, texts = [r["prompt"] for r in rows], [clean_reply(r["response"]) for r in rows]
    rewards = []
    for path in models or [run / "rm"]:
        model = load_reward_model(path)
        with torch.no_grad():
            rewards.append(
                [
                    x
                    for i in range(0, len(texts), 64)
                    for x in model.score(texts[i : i + 64], prompts[i : i + 64]).tolist()
                ]
            )
    named = list(zip([str(m) for m in models or [run / "rm"]], rewards))
    if len(rewards) > 1:
        named.append(("mean of the above", [sum(x) / len(x) for x in zip(*rewards)]))
    updates = sorted({r["step"] for r in rows})
    for name, reward in named:
        got = pair_agreement(
            [(r["prompt"], r["step"], r["gold"], x) for r, x in zip(rows, reward)], LATE
        )
        mean = {u: sum(x for r, x in zip(rows, reward) if r["step"] == u) for u in updates}
        n = collections.Counter(r["step"] for r in rows)
        print(
            f"{name}: agreement {got['all'][0]:.3f} ({got['all'][1]} pairs), late pairs "
            f"(updates ≥ {LATE}) {got['late'][0]:.3f} ({got['late'][1]})\n"
            "  mean reward by update  " + "  ".join(f"{u}: {mean[u] / n[u]:+.2f}" for u in updates)
        )
    gold = gold_parts_by_update(run / "ppo" / "samples.jsonl")
    print(
        "  mean gold by update    "
        + "  ".join(f"{int(g['update'])}: {g['gold']:+.2f}" for g in gold)
    )


def relabel(run: Path, policy: Path, n: int, out: Path, seed: int) -> None:
    from rlfm.builtin_task import sample_replies
    from rlfm.data.labelers import default_labelers, label_rows
    from rlfm.data.preferences import write_rankings
    from rlfm.engine import Engine
    from rlfm.gold import load_gold
    from rlfm.stages import reward
    from rlfm.tracking import read_metrics

    engine = Engine.create("auto", "auto")
    engine.seed(seed)
    cfg = reward.Config(model=policy, seed=seed)
    model, tokenizer = reward.load_policy(cfg, engine)
    prompts = reward.builtin_prompts(cfg, tokenizer)[0][:n]
    with engine.autocast():
        replies = sample_replies(model, tokenizer, prompts, 4, temperature=1.0, seed=seed + 777)
    gold = load_gold(run / "labels" / "gold.json")
    rows = label_rows(prompts, replies, default_labelers(1.0), seed=seed + 99, gold=gold)
    base = list(read_metrics(run / "labels" / "train.jsonl"))
    write_rankings(out, base + rows)
    print(f"{out}: {len(base)} rankings of {run}/labels + {len(rows)} of {policy}'s replies")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("probe", help="agreement with gold on the run's held-out PPO replies")
    a.add_argument("run", type=Path)
    a.add_argument("models", type=Path, nargs="*")
    b = sub.add_parser("relabel", help="add labelled rankings of a policy's replies")
    b.add_argument("run", type=Path)
    b.add_argument("policy", type=Path)
    b.add_argument("--prompts", type=int, default=300)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if args.cmd == "probe":
        probe(args.run, args.models)
    else:
        relabel(args.run, args.policy, args.prompts, args.out, args.seed)


if __name__ == "__main__":
    main()
