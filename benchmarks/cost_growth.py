"""How cost grows: tokens/s and peak memory against sequence length and model size, for
pre-training and PPO, beside the matmul peak of this CPU measured in the same run.

    python benchmarks/cost_growth.py --out benchmarks/results/cost-growth \\
        [--workloads pretrain,ppo] [--sizes tiny,small] [--lengths 64,128,256] \\
        [--new-tokens 16,32,64] [--budget 1800]

Each point is one run of the workload's benchmark script (``pretrain_throughput.py --context L``
at each size: rlfm against the bf16 Trainer; ``ppo_vs_trl.py --parts a --new-tokens R``: rlfm
against TRL's PPOTrainer, 4 epochs), one round with few steps: a curve's shape, not a headline
(the headline ratios are in RESULTS.md, from ``run_all.py``). PPO's tokens/s counts every token
of the rollout (prompt + response) per update: updates/s × prompts × (prompt + new tokens).

The matmul peak is measured first, by kernel: ``torch.matmul`` in fp32 and bf16 at 1024², 2048²
and 4096², and bf16 again with oneDNN (mkldnn) disabled, which shows which kernel reaches what
(the bf16 figure differs by kernel, which is how the same CPU is reported at very different bf16
peaks). Writes ``OUT.json`` (every point, the peaks and the load) and ``OUT-pretrain.png``,
``OUT-ppo.png`` (tokens/s and peak MiB against length, one line per size and contender, the
peaks printed beside).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SIZES, matmul_flops, run_child  # noqa: E402


def matmul_peaks(sizes=(1024, 2048, 4096)) -> dict[str, dict[str, float]]:
    """Best GFLOP/s of square matmuls per kernel path and size (``_common.matmul_flops``).
    bf16 without oneDNN (ATen's own fallback) is measured at 512² only: it runs at a few
    GFLOP/s, so a 4096² product would take minutes."""
    import torch

    out: dict[str, dict[str, float]] = {"fp32 matmul": {}, "bf16 matmul (oneDNN)": {}}
    for n in sizes:
        out["fp32 matmul"][str(n)] = matmul_flops("float32", (n,)) / 1e9
        out["bf16 matmul (oneDNN)"][str(n)] = matmul_flops("bfloat16", (n,)) / 1e9
    with torch.backends.mkldnn.flags(enabled=False):
        out["bf16 matmul (oneDNN off)"] = {"512": matmul_flops("bfloat16", (512,), 1) / 1e9}
    return out


def row_value(rows: list[dict], metric: str, peer_has: str = "") -> tuple[float, float] | None:
    """(rlfm, peer) of the like-for-like row with ``metric`` (and ``peer_has`` in its
    settings)."""
    for r in rows:
        if (
            r["metric"] == metric
            and r.get("kind", "like-for-like") == "like-for-like"
            and peer_has in r["peer_settings"]
        ):
            return r["rlfm"], r["peer_value"]
    return None


def run_point(workload: str, size: str, length: int, work: Path, timeout_s: float) -> dict:
    """One point: the benchmark script at ``size`` and ``length``; rlfm's and the peer's
    tokens/s and peak MiB above imports."""
    out = work / f"{workload}-{size}-{length}.json"
    if workload == "pretrain":
        args = ["pretrain_throughput.py", "--size", size, "--context", str(length), "--synthetic",
                "--rounds", "1", "--steps", "6", "--warmup", "2", "--batch-size", "8"]  # fmt: skip
    else:
        args = ["ppo_vs_trl.py", "--parts", "a", "--size", size, "--new-tokens", str(length),
                "--rounds", "1", "--updates", "1", "--warmup", "1", "--epochs", "4",
                "--prompts", "16"]  # fmt: skip
    load0 = os.getloadavg()[0]
    res = run_child(
        [sys.executable, str(HERE / args[0]), *args[1:], "--json", str(out)],
        work / f"{out.stem}.log",
        timeout_s=timeout_s,
    )
    point = {"workload": workload, "size": size, "length": length, "load_before": load0,
             "load_after": os.getloadavg()[0], "exit_status": res.returncode}  # fmt: skip
    if res.returncode != 0 or not out.is_file():
        return point | {"error": res.tail(10)}
    rows = json.loads(out.read_text())["rows"]
    if workload == "pretrain":
        tps = row_value(rows, "tokens/s")
        mem = row_value(rows, "peak MiB above imports")
    else:
        ups = row_value(rows, "updates/s")
        per_update = 16 * (24 + length)  # prompts × (prompt + new tokens)
        tps = None if ups is None else (ups[0] * per_update, ups[1] * per_update)
        mem = row_value(rows, "peak MiB above imports")
    return point | {
        "rlfm_tokens_s": tps and tps[0],
        "peer_tokens_s": tps and tps[1],
        "rlfm_mib": mem and mem[0],
        "peer_mib": mem and mem[1],
        "peer": rows[0]["peer"],
    }


def plot(points: list[dict], peaks: dict, workload: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in points if p["workload"] == workload and "error" not in p]
    if not pts:
        return
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [3, 3, 2]})
    peer = pts[0].get("peer", "peer")
    for size in dict.fromkeys(p["size"] for p in pts):
        sp = sorted((p for p in pts if p["size"] == size), key=lambda p: p["length"])
        xs = [p["length"] for p in sp]
        for ax, key in ((axes[0], "tokens_s"), (axes[1], "mib")):
            (line,) = ax.plot(xs, [p[f"rlfm_{key}"] for p in sp], "o-", label=f"rlfm, {size}")
            ax.plot(xs, [p[f"peer_{key}"] for p in sp], "s--", color=line.get_color(),
                    label=f"{peer}, {size}")  # fmt: skip
    xlabel = "context (tokens)" if workload == "pretrain" else "new tokens per response"
    for ax, ylabel in ((axes[0], "tokens/s"), (axes[1], "peak MiB above imports")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].axis("off")
    text = ["Measured matmul peak, GFLOP/s", "(square n×n, best of 3, this run)", ""]
    for kernel, by_n in peaks.items():
        text.append(kernel)
        text.append("   " + ", ".join(f"{n}²: {v:,.0f}" for n, v in by_n.items()))
    text += ["", "Sizes: " + "; ".join(f"{s}: {SIZES[s].about}" for s in
                                        dict.fromkeys(p["size"] for p in pts))]  # fmt: skip
    loads = [p["load_before"] for p in pts]
    text.append(f"1-min load during the points: {min(loads):.1f}–{max(loads):.1f}")
    axes[2].text(0, 1, "\n".join(text), va="top", fontsize=7.5, family="monospace", wrap=True)
    fig.suptitle(f"{workload}: cost against length and model size (one round per point)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="path stem of the JSON and plots")
    p.add_argument("--workloads", default="pretrain,ppo")
    p.add_argument("--sizes", default="tiny,small")
    p.add_argument("--lengths", default="64,128,256", help="pre-training contexts")
    p.add_argument("--new-tokens", default="16,32,64", help="PPO response lengths")
    p.add_argument("--budget", type=float, default=1800, help="seconds for all points")
    p.add_argument("--timeout", type=float, default=600, help="seconds per point at most")
    p.add_argument("--plot-only", action="store_true", help="plot OUT.json again, run nothing")
    a = p.parse_args()
    if a.plot_only:
        result = json.loads(a.out.with_suffix(".json").read_text())
        for workload in a.workloads.split(","):
            plot(
                result["points"], result["peaks_gflops"], workload, Path(f"{a.out}-{workload}.png")
            )
        return
    start = time.perf_counter()
    load0 = os.getloadavg()[0]
    peaks = matmul_peaks()
    print(json.dumps(peaks, indent=1), flush=True)
    result = {"peaks_gflops": peaks, "load_at_peaks": load0, "points": []}
    work = Path(tempfile.mkdtemp(prefix="cost-growth-"))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    workloads = a.workloads.split(",")
    for size in a.sizes.split(","):  # every workload at a size before the next size
        for workload in workloads:
            lengths = a.lengths if workload == "pretrain" else a.new_tokens
            for length in map(int, lengths.split(",")):
                left = a.budget - (time.perf_counter() - start)
                if left < 60:
                    print(f"budget spent: {workload} {size} {length} skipped", flush=True)
                    continue
                pt = run_point(workload, size, length, work, min(a.timeout, left))
                print(json.dumps(pt), flush=True)
                result["points"].append(pt)
                a.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    for workload in workloads:
        plot(result["points"], peaks, workload, Path(f"{a.out}-{workload}.png"))
    print(f"{time.perf_counter() - start:.0f} s; {a.out}.json, plots beside it; logs in {work}")


if __name__ == "__main__":
    main()
