"""Where a PPO update's time goes, on each side: ``ppo_vs_trl.py``'s children (part a: full
fine-tuning, 4 epochs) run under ``cProfile``, one after the other, each in its own process.

    python benchmarks/profile_ppo.py [--size tiny] [--updates 2] [--prompts 32] [--top 25]
        [--out FILE.txt]

Prints, for rlfm and for TRL, the functions with the most cumulative time (what a part of the
update costs, callees included) and the most own time (where the CPU actually is).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def child(spec_file: Path, top: int) -> None:
    import ppo_vs_trl

    spec = json.loads(spec_file.read_text())
    fn = {"rlfm-ppo": ppo_vs_trl.child_rlfm_ppo, "trl-ppo": ppo_vs_trl.child_trl_ppo}[spec["kind"]]
    prof = cProfile.Profile()
    prof.enable()
    res = fn(spec)
    prof.disable()
    st = res["stamps"]
    walls = [b["wall"] - a["wall"] for a, b in zip(st, st[1:])]
    out = io.StringIO()
    print(f"### {spec['kind']}: s per update after the first: {[round(w, 2) for w in walls]}",
          file=out)  # fmt: skip
    print(f"generation s per update: {[round(g['s'], 2) for g in res['gens']]}", file=out)
    for key in ("cumulative", "tottime"):
        print(f"\n-- by {key}", file=out)
        pstats.Stats(prof, stream=out).strip_dirs().sort_stats(key).print_stats(top)
    print(out.getvalue(), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny")
    p.add_argument("--updates", type=int, default=2)
    p.add_argument("--prompts", type=int, default=32, help="prompts per update (run_all's 100m: 8)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a.child, a.top)
    import ppo_vs_trl

    root = Path(tempfile.mkdtemp(prefix="ppo-prof-"))
    ns = argparse.Namespace(size=a.size, prompts=a.prompts, prompt_tokens=24)
    assets = ppo_vs_trl.make_assets(root, ns)
    spec = {
        "prompt_ids": assets["prompt_ids"][: a.prompts], "prompts_file": assets["prompts_file"],
        "batch": a.prompts, "prompt_tokens": 24, "new_tokens": 32, "precision": "fp32", "lora_r": 8,
        "epochs": 4, "trl_checkpointing": False, "pad": assets["pad"], "eos": assets["eos"],
        "model": assets["model"], "rm": assets["rm"], "adapter": "full", "micro_batch": None,
        "updates": a.updates + 1,
    }  # fmt: skip
    text = []
    for kind in ("rlfm-ppo", "trl-ppo"):
        f = root / f"{kind}.spec.json"
        f.write_text(json.dumps(spec | {"kind": kind, "out": str(root / f"{kind}-out")}))
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
        r = subprocess.run([sys.executable, __file__, "--child", str(f), "--top", str(a.top)],
                           env=env, capture_output=True, text=True)  # fmt: skip
        text.append(r.stdout[r.stdout.find("### ") :] if "### " in r.stdout else r.stderr[-3000:])
    report = "\n\n".join(text)
    print(report)
    if a.out:
        a.out.write_text(report)


if __name__ == "__main__":
    main()
