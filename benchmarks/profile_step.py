"""Where a training step's time goes, on each side: a benchmark's own contenders (rlfm and its
peer, the same work as in the ``*_vs_*.py`` script) run under ``cProfile``, one after the
other, each in its own process.

    python benchmarks/profile_step.py --workload sft|reward|ppo [--size tiny] [--steps 40]
        [--case pairs|k4|k8] [--prompts 32] [--top 22] [--out FILE.txt]

- ``sft``: ``sft_vs_trl.py``'s children (full fine-tuning, batch 16; TRL with eager attention,
  its faster one on a CPU);
- ``reward``: ``reward_vs_trl.py``'s (``--case``: pairs, or rankings of 4 or 8);
- ``ppo``: ``ppo_vs_trl.py``'s part (a) (full fine-tuning, 4 epochs; ``--steps`` updates).

Precision: bf16 where the CPU has bf16 units, else fp32 (as the benchmarks); torch's default
threads. Each side runs twice: once plain, for the step time its benchmark's stamps measure,
once under the profiler (Python-heavy code slows more there). The report gives, per side, both
step times and, per step run (warm-up included), the time in the autograd backward and in the
forward: rlfm's training forward with its loss (the model's calls from its training loop, so
evaluation is left out), the peer's outermost model forward (its benchmarks do not evaluate).
It adds the *ceiling*: in the profiled runs, the peer's step over the part of rlfm's step that
is arithmetic the peer does too (training forward + backward; for PPO its epochs: forward,
backward and optimizer), the ratio rlfm would reach if all else it does cost nothing. (Plain
runs minutes apart differ by more than the profiler's overhead on a shared machine; the
profiler slows the peer's more Python-heavy step more, so the ceiling errs in rlfm's favour.)
Then the functions with the most cumulative time (what a part of the step costs, callees
included) and the most own time (where the CPU actually is).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BACKWARD = "<method 'run_backward' of 'torch._C._EngineBase' objects>"


def sides(a: argparse.Namespace, root: Path, precision: str) -> dict[str, tuple[list[str], int]]:
    """Each side's command line (the benchmark's own child, with the benchmark's defaults) and
    the optimizer steps (PPO: updates) it runs in all."""
    if a.workload == "sft":
        import sft_vs_trl

        args = sft_vs_trl.parse_args([f"--size={a.size}", f"--steps={a.steps}",
                                      f"--warmup={a.warmup}", f"--precision={precision}"])  # fmt: skip
        sft_vs_trl.prepare(args, root)
        return {
            "rlfm": (sft_vs_trl.child_command(args, root, "rlfm"), a.steps),
            "trl": (sft_vs_trl.child_command(args, root, "trl", "eager"), a.steps),
        }
    if a.workload == "reward":
        import reward_vs_trl as rw

        assets = rw.make_assets(root, 400, a.size)
        rl_file, trl_file = assets["files"][a.case]
        k = rw.CASES[a.case]
        per_step = rw.RANKINGS[a.case] * math.comb(k, 2)
        spec = {"model": assets["model"], "steps": a.steps, "warmup": a.warmup, "k": k,
                "precision": precision, "rankings": rw.RANKINGS[a.case],
                "pairs_per_step": per_step}  # fmt: skip
        (root / "rlfm").mkdir()
        rlfm_cmd = rw.rlfm_command(spec | {"data": rl_file, "out": str(root / "rlfm" / "r.json")})
        (root / "trl").mkdir()
        peer = spec | {"data": trl_file, "out": str(root / "trl" / "r.json"), "attention": "eager"}
        (root / "trl.spec.json").write_text(json.dumps(peer))
        trl_cmd = [
            sys.executable,
            str(HERE / "reward_vs_trl.py"),
            "--child",
            str(root / "trl.spec.json"),
        ]
        return {"rlfm": (rlfm_cmd, a.steps), "trl": (trl_cmd, a.steps)}
    import ppo_vs_trl

    args = ppo_vs_trl.parser().parse_args([f"--size={a.size}", f"--prompts={a.prompts}",
                                           f"--updates={a.steps}", "--warmup=1"])  # fmt: skip
    spec = ppo_vs_trl.full_ppo_spec(args, ppo_vs_trl.make_assets(root, args))
    out = {}
    for who in ("rlfm", "trl"):
        f = root / f"{who}.spec.json"
        f.write_text(json.dumps(spec | {"kind": f"{who}-ppo", "out": str(root / f"{who}-out"),
                                        "result": str(root / f"{who}.result.json")}))  # fmt: skip
        cmd = [sys.executable, str(HERE / "ppo_vs_trl.py"), "--child", str(f)]
        out[who] = (cmd, spec["updates"])
    return out


def step_seconds(a: argparse.Namespace, who: str, root: Path, stdout: str) -> tuple[float, str]:
    """The step time the benchmark's own stamps measured, and an extra line."""
    if a.workload == "sft":
        import sft_vs_trl

        line = [x for x in stdout.splitlines() if x.startswith("RESULT ")][-1]
        rate = json.loads(line[len("RESULT ") :])["samples_per_s"]
        return sft_vs_trl.parse_args([]).batch_size / rate, ""
    if a.workload == "reward":
        res = json.loads((root / who / "r.json").read_text())
        per_step = json.loads((root / "trl.spec.json").read_text())["pairs_per_step"]
        return per_step / res["rate"], ""
    import ppo_vs_trl

    res = json.loads((root / f"{who}.result.json").read_text())
    gens = f"generation s per update: {[round(g['s'], 2) for g in res['gens']]}"
    return 1 / ppo_vs_trl.update_rate(res, 1), gens


# rlfm's training forward (with its loss), as (callee, caller) pairs of (file, function): the
# time of the callee's calls made from the caller, so evaluation forwards are left out
TRAINING_FORWARD = {
    "sft": [("sft.py", "batch_loss"), ("sft.py", "train")],
    "reward": [("module.py", "_wrapped_call_impl"), ("reward.py", "train")],
}


def called_from(stats: pstats.Stats, callee: tuple[str, str], caller: tuple[str, str]) -> float:
    """Cumulative seconds of ``callee``'s calls made directly from ``caller``."""

    def match(key: tuple, want: tuple[str, str]) -> bool:
        return Path(key[0]).name == want[0] and key[2] == want[1]

    raw = stats.stats  # type: ignore[attr-defined]
    return sum(
        ct
        for key, value in raw.items()
        if match(key, callee)
        for who, (_cc, _nc, _tt, ct) in value[4].items()
        if match(who, caller)
    )


def cumulative(stats: pstats.Stats, function: tuple[str, str]) -> float:
    """Cumulative seconds of ``function`` (file name, function name), all its calls."""
    raw = stats.stats  # type: ignore[attr-defined]
    return sum(
        v[3] for k, v in raw.items() if Path(k[0]).name == function[0] and k[2] == function[1]
    )


def phases(stats: pstats.Stats, steps: int, workload: str, who: str) -> dict[str, float]:
    """Seconds per step run: ``backward``, ``forward`` (rlfm's training forward for SFT and
    reward models, else the outermost model forward, sampling and evaluation included) and, for
    rlfm, ``train``: the arithmetic the peer does too — training forward + backward (SFT,
    reward), the PPO epochs (``optimise``: forward, backward, optimizer) for PPO."""
    raw = stats.stats  # type: ignore[attr-defined]
    backward = sum(v[3] for k, v in raw.items() if k[2] == BACKWARD) / steps
    forward = max((v[3] for k, v in raw.items() if k[0].endswith("modeling_gpt2.py") and
                   k[2] == "forward"), default=0.0) / steps  # fmt: skip
    out = {"backward": backward, "forward": forward}
    if who == "rlfm" and workload in TRAINING_FORWARD:
        out["forward"] = called_from(stats, *TRAINING_FORWARD[workload]) / steps
        out["train"] = out["forward"] + backward
    elif who == "rlfm":
        out["train"] = cumulative(stats, ("ppo.py", "optimise")) / steps
    return out


def ceiling(rl: dict[str, float], peer: dict[str, float]) -> tuple[float, float]:
    """(share, ceiling) from the profiled runs: the share of rlfm's step that is the arithmetic
    the peer does too (``train``; at most 1), and the peer's step over that part of rlfm's step.
    Both steps come from the same kind of run; the profiler slows the peer's more Python-heavy
    step more, so the ceiling errs in rlfm's favour."""
    share = min(1.0, rl["train"] / rl["step"])
    return share, peer["step"] / (share * rl["step"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=["sft", "reward", "ppo"], default="ppo")
    p.add_argument("--size", default="tiny")
    p.add_argument("--steps", type=int, default=None, help="sft 60, reward 40, ppo 2 (updates)")
    p.add_argument("--warmup", type=int, default=5, help="untimed first steps (sft, reward)")
    p.add_argument("--case", choices=["pairs", "k4", "k8"], default="pairs", help="reward only")
    p.add_argument("--prompts", type=int, default=32, help="ppo: prompts per update (100m: 8)")
    p.add_argument("--top", type=int, default=22)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    a.steps = a.steps or {"sft": 60, "reward": 40, "ppo": 2}[a.workload]
    if a.workload != "ppo" and a.steps <= a.warmup:
        p.error(f"--steps ({a.steps}) must exceed --warmup ({a.warmup})")
    import torch

    from rlfm.engine import bf16_supported

    precision = "bf16" if a.workload != "ppo" and bf16_supported(torch.device("cpu")) else "fp32"
    root = Path(tempfile.mkdtemp(prefix=f"{a.workload}-prof-"))
    cmds = sides(a, root, precision)
    load = os.getloadavg()[0]
    command = " ".join(["python benchmarks/profile_step.py", *sys.argv[1:]])
    text = [f"# {a.workload}, {a.size} size, {precision}, default threads ({command}); "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 1-min load {load:.1f}; "
            "the two sides ran one after the other, each in its own process"]  # fmt: skip
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")

    def run(who: str, cmd: list[str]) -> tuple[float, str]:
        for old in (root / who / "rlfm-out", root / who / "trl-out", root / f"{who}-out"):
            shutil.rmtree(old, ignore_errors=True)  # a finished run directory would not train
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{who} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
        return step_seconds(a, who, root, r.stdout)

    got: dict[str, dict[str, float]] = {}
    unit = "update" if a.workload == "ppo" else "step"
    for who, (cmd, steps) in cmds.items():
        plain, _ = run(who, cmd)  # the step time without the profiler's overhead
        prof = root / f"{who}.prof"
        step_s, extra = run(who, [cmd[0], "-m", "cProfile", "-o", str(prof), *cmd[1:]])
        stats = pstats.Stats(str(prof))
        got[who] = phases(stats, steps, a.workload, who) | {"step": step_s, "plain": plain}
        fwd = "training forward and loss" if who == "rlfm" and a.workload != "ppo" else "forward"
        out = io.StringIO()
        print(f"\n### {who}: {plain:.3f} s per timed {unit} (the benchmark's stamps), "
              f"{step_s:.3f} s under the profiler; per {unit} run ({steps} in all, under the "
              f"profiler): backward {got[who]['backward']:.3f} s, {fwd} "
              f"{got[who]['forward']:.3f} s", file=out)  # fmt: skip
        if who == "rlfm" and a.workload == "ppo":
            print(f"its PPO epochs (optimise: forward, backward, optimizer) "
                  f"{got[who]['train']:.3f} s per update run", file=out)  # fmt: skip
        if extra:
            print(extra, file=out)
        for key in ("cumulative", "tottime"):
            print(f"\n-- by {key}", file=out)
            stats.stream = out  # type: ignore[attr-defined]
            stats.strip_dirs().sort_stats(key).print_stats(a.top)
        text.append(out.getvalue())
    rl, peer = got["rlfm"], got["trl"]
    share, top = ceiling(rl, peer)
    shared = "its PPO epochs" if a.workload == "ppo" else "forward + backward"
    line = f"ratio {peer['plain'] / rl['plain']:.2f}x"
    line += f" ({peer['step'] / rl['step']:.2f}x under the profiler)"
    line += (f"; under the profiler {shared} are {100 * share:.0f}% of rlfm's {unit}, so its "
             f"ceiling is TRL's {unit} {peer['step']:.3f} s / ({share:.2f} x rlfm's "
             f"{rl['step']:.3f} s) = {top:.2f}x")  # fmt: skip
    text.insert(1, line)
    report = "\n".join(text)
    print(report)
    if a.out:
        a.out.write_text(report)
    shutil.rmtree(root, ignore_errors=True)  # models, data and .prof files


if __name__ == "__main__":
    main()
