"""Small helpers shared by the benchmark scripts: child processes with their own peak memory,
this machine's matmul peak, and a plain-text table.

- :func:`run_child` runs one contender in its own process and reads that process's peak
  resident memory from the kernel (``os.wait4``), so contenders never share an import cache or
  a memory high-water mark.
- :func:`matmul_flops` measures what this machine's matrix multiply reaches (FLOP/s) in a given
  dtype with all the threads torch uses: the denominator of a model-FLOPs utilisation.
- :func:`table` formats rows as aligned columns.
- ``SIZES``: the model sizes every benchmark runs at (tiny, small, ~100M).
- :class:`MemoryAboveImports`: the one memory method (peak RSS above the RSS after all imports).
- :class:`StepStamps`: the one way training is timed (the end of every optimizer step).
- :func:`wait_for_idle`, :func:`cpu_busy_s`: what else the machine was doing.
- :func:`result_row`: one row of the results table (medians of the rounds, ratio, target).
- :func:`interleaved_rounds`, :func:`add_child_args`, :func:`ratio_row`, :func:`write_row_list`,
  :func:`curve_plot`: the control and Decision Transformer comparisons' rounds, single-figure
  rows (a plain JSON list; ``run_all.py`` reads both forms) and learning curves.

Benchmarks report ratios measured in one run: on a shared machine absolute figures drift.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ChildResult:
    """How one child process ended."""

    returncode: int
    """Exit status (negative: killed by that signal; -9 also when it ran past its time limit)."""
    wall_s: float
    """Seconds from start to exit."""
    peak_rss_mib: float
    """Peak resident memory of the child (and any children it waited for), MiB."""
    log: Path
    """File holding the child's stdout and stderr."""

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the child's output."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def run_child(
    cmd: Sequence[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> ChildResult:
    """Run ``cmd`` with stdout+stderr to ``log``; return its status, wall time and peak RSS.

    The peak RSS comes from ``os.wait4`` on this very child (``ru_maxrss``, KiB on Linux), not
    from ``RUSAGE_CHILDREN``, which would be the maximum over every child waited for so far.
    A child still running after ``timeout_s`` is killed (SIGKILL) and reported as such.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if timeout_s is not None and time.perf_counter() - start > timeout_s:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen consistent
    return ChildResult(
        returncode=proc.returncode,
        wall_s=time.perf_counter() - start,
        peak_rss_mib=usage.ru_maxrss / 1024,
        log=log,
    )


def matmul_flops(dtype_name: str, sizes: Sequence[int] = (2048, 4096), repeats: int = 3) -> float:
    """Best FLOP/s of square ``n × n`` matmuls in ``dtype_name`` ("float32", "bfloat16").

    Each size is run once untimed, then ``repeats`` times; one product costs 2·n³ FLOPs. The
    best run over all sizes is returned: on a shared machine the fastest run is the one least
    disturbed by other work, so it is the best estimate of what the hardware can do.
    """
    import torch

    dtype = getattr(torch, dtype_name)
    best = 0.0
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        c = torch.empty(n, n, dtype=dtype)
        torch.matmul(a, b, out=c)  # warm-up: thread pool, kernel selection, page faults
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b, out=c)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def matmul_peaks() -> dict[str, float]:
    """:func:`matmul_flops` in float32 and bfloat16. On a CPU without bf16 units (AVX2 only)
    bfloat16 is emulated at a few GFLOP/s, where one 4096² product takes minutes: it is then
    measured on 512² products only, which is enough to show how slow it is."""
    import torch

    from rlfm.engine import bf16_supported

    fast = bf16_supported(torch.device("cpu"))
    bf16 = matmul_flops("bfloat16") if fast else matmul_flops("bfloat16", (512,), 1)
    return {"float32": matmul_flops("float32"), "bfloat16": bf16}


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned plain-text table: first column left-aligned, the others right-aligned."""
    cells = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        )

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])])


# ---------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Size:
    """A model size every benchmark can run at: an rlfm preset at a vocabulary and context."""

    name: str
    """The name ``--size`` takes: tiny, small, 100m."""
    preset: str
    """The rlfm preset whose shape (layers, width, heads) the model has."""
    vocab: int
    """BPE vocabulary trained for it."""
    context: int
    """Positions of the model (and pre-training's window)."""
    about: str
    """One line: its shape, for tables."""


SIZES: dict[str, Size] = {
    s.name: s
    for s in [
        Size("tiny", "tiny", 4096, 256, "2 layers × 128, vocabulary 4,096 (~0.95M parameters)"),
        Size("small", "small", 8192, 256, "4 layers × 256, vocabulary 8,192 (~5.3M parameters)"),
        # GPT-3 Small's shape (Brown et al. 2020, Table 2.1: 12 layers × 768, 12 heads) with a
        # shorter context and a smaller vocabulary: 85M in the blocks + 12.6M embedding ≈ 98M
        Size("100m", "gpt3-small", 16384, 256, "GPT-3 Small shape, 12 layers × 768, "
             "vocabulary 16,384, context 256 (~98M parameters)"),
    ]
}  # fmt: skip


def size_config(size: Size | str, tokenizer, context: int | None = None, dropout: float = 0.0):
    """The Hugging Face config of ``size`` for ``tokenizer`` (its vocabulary and special ids)."""
    from rlfm.models.presets import model_config

    size = SIZES[size] if isinstance(size, str) else size
    return model_config(
        size.preset,
        vocab_size=len(tokenizer),
        context=context or size.context,
        dropout=dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# ---------------------------------------------------------------------------- memory


def proc_status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field of this process (VmRSS: now, VmHWM: peak), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


class MemoryAboveImports:
    """The one memory method of every benchmark: peak resident memory (VmHWM) minus the
    resident memory right after all imports (VmRSS), both read by the contender's own process.

    Create it after the imports; :meth:`peak` reads the figure at the end of the run.
    """

    def __init__(self) -> None:
        self.baseline = proc_status_mib("VmRSS")

    def peak(self) -> float:
        """MiB the run added to the process at its peak."""
        return proc_status_mib("VmHWM") - self.baseline


# ---------------------------------------------------------------------------- timing


class StepStamps:
    """Stamps the end of every optimizer step of any ``torch.optim.Optimizer`` in this process
    (a global post-step hook), so that every contender is timed the same way, from outside its
    training loop: ``rate`` is the work of the steps after the warm-up over the time from the
    end of the last warm-up step to the end of the last step (data loading, forward, backward,
    clipping and the step itself are all inside it; so is any per-step logging a contender does).
    """

    def __init__(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.ends: list[float] = []
        register_optimizer_step_post_hook(lambda *_: self.ends.append(time.perf_counter()))

    def seconds(self, warmup: int) -> tuple[int, float]:
        """(timed steps, their seconds) after ``warmup`` steps."""
        if len(self.ends) <= warmup:
            raise RuntimeError(f"{len(self.ends)} optimizer steps, need more than {warmup}")
        return len(self.ends) - warmup, self.ends[-1] - self.ends[warmup - 1]

    def rate(self, warmup: int, work_per_step: float) -> float:
        """Total work over total time after ``warmup`` steps (work per second)."""
        steps, seconds = self.seconds(warmup)
        return steps * work_per_step / seconds


# ---------------------------------------------------------------------------- the machine


def cpu_busy_s() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine since boot, CPU seconds of this process's waited-for
    children): the difference over a benchmark is the CPU time other work took meanwhile."""
    import resource

    ticks = os.sysconf("SC_CLK_TCK")
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (sum(fields[:8]) - idle) / ticks, children.ru_utime + children.ru_stime


def others_share(before: tuple[float, float], after: tuple[float, float], wall_s: float) -> float:
    """Share of the machine's CPUs (0..1) that work other than this process's children used
    between two :func:`cpu_busy_s` readings ``wall_s`` seconds apart."""
    busy = after[0] - before[0]
    ours = after[1] - before[1]
    return max(0.0, busy - ours) / (wall_s * (os.cpu_count() or 1))


def wait_for_idle(threshold: float, budget_s: float, poll_s: float = 15.0) -> dict:
    """Wait until the 1-minute load average is below ``threshold``, for at most ``budget_s``.

    Returns what was seen: the load at the start and at the end of the wait, the seconds waited
    and whether the machine was idle when the wait ended.
    """
    start = time.perf_counter()
    first = os.getloadavg()[0]
    load = first
    while load >= threshold and time.perf_counter() - start < budget_s:
        time.sleep(min(poll_s, max(0.0, budget_s - (time.perf_counter() - start))))
        load = os.getloadavg()[0]
    return {
        "load_at_start": first,
        "load": load,
        "waited_s": time.perf_counter() - start,
        "idle": load < threshold,
        "threshold": threshold,
    }


# ---------------------------------------------------------------------------- results


def spread(values: Sequence[float]) -> dict:
    """Median (the typical run) and range of one contender's figure over the rounds."""
    import statistics

    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def result_row(
    *,
    workload: str,
    size: str,
    peer: str,
    peer_settings: str,
    metric: str,
    rlfm: Sequence[float],
    peer_value: Sequence[float],
    target: float | None = None,
    lower_is_better: bool = False,
    kind: str = "like-for-like",
    precision: str = "",
    note: str = "",
) -> dict:
    """One row of ``benchmarks/results/*.json``: the median of each side's rounds, their ratio
    (rlfm / peer), the target and whether it is met. ``lower_is_better``: a memory figure,
    whose target is a ceiling on the ratio; otherwise the target is a floor. ``kind``:
    "like-for-like" (the same work on both sides) or "recipe vs recipe" (each side's own
    recipe, e.g. rlfm's LoRA value model against TRL's full one)."""
    a, b = spread(rlfm), spread(peer_value)
    ratio = a["median"] / b["median"] if b["median"] else float("nan")
    met = None
    if target is not None:
        met = ratio <= target if lower_is_better else ratio >= target
    return _row(
        (workload, size, peer, peer_settings, metric),
        a["median"],
        b["median"],
        ratio,
        None if target is None else f"{'≤' if lower_is_better else '≥'} {target:g}×",
        met,
    ) | {
        "kind": kind,
        "precision": precision,
        "rlfm_rounds": [float(v) for v in rlfm],
        "peer_rounds": [float(v) for v in peer_value],
        "note": note,
    }


PEER_ATTENTION = ("sdpa", "eager")
"""The attention implementations a transformers-based peer is run with (``--peer-attention``):
SDPA, transformers' default and what its documentation recommends for speed, and "eager" (the
plain formula), which is faster on a CPU in bf16 at short sequences. The headline row compares
with the faster of the two (the peer at its best); the other is an extra row."""


def add_peer_attention_arg(parser: argparse.ArgumentParser) -> None:
    """``--peer-attention``: which of :data:`PEER_ATTENTION` the peer runs with (default both)."""
    parser.add_argument(
        "--peer-attention",
        nargs="+",
        choices=PEER_ATTENTION,
        default=list(PEER_ATTENTION),
        help="the peer's attn_implementation(s); the headline uses the faster",
    )


def fastest_first(runs: dict[str, Sequence[dict]], rate: str) -> list[str]:
    """The keys of ``runs`` (each a contender's rounds) by their median ``rate``, fastest first."""
    return sorted(runs, key=lambda k: -spread([x[rate] for x in runs[k]])["median"])


def peer_variant_rows(
    rlfm_runs: Sequence[dict],
    peer_runs: dict[str, Sequence[dict]],
    *,
    rate: str,
    metric: str,
    settings: str,
    target: float | None,
    **common,
) -> list[dict]:
    """Rows against a peer run with several attention implementations (``peer_runs``: each
    implementation's rounds): the rate and memory against the fastest one (median ``rate``)
    with ``target``, then the rate against each other one as an extra row."""
    rows = []
    for i, attn in enumerate(fastest_first(peer_runs, rate)):
        runs = peer_runs[attn]
        kind = (
            "like-for-like" if i == 0 else "like-for-like, extra row: the peer's slower attention"
        )
        row = dict(common, peer_settings=f"{settings}, attn_implementation={attn}", kind=kind)
        rlfm = [x[rate] for x in rlfm_runs]
        rows.append(
            result_row(**row, metric=metric, rlfm=rlfm, peer_value=[x[rate] for x in runs],
                       target=target if i == 0 else None)
        )  # fmt: skip
        if i == 0:
            rows.append(memory_row(rlfm_runs, runs, **row))
    return rows


def memory_row(rlfm_runs: Sequence[dict], peer_runs: Sequence[dict], **common) -> dict:
    """The memory row of a comparison: each round's ``peak_mib`` (peak RSS above the RSS after
    imports, :class:`MemoryAboveImports`) on each side; lower is better."""
    return result_row(
        **common,
        metric="peak MiB above imports",
        rlfm=[x["peak_mib"] for x in rlfm_runs],
        peer_value=[x["peak_mib"] for x in peer_runs],
        lower_is_better=True,
    )


def write_rows(path: Path | None, rows: list[dict], details: dict | None = None) -> None:
    """Write a script's rows (and anything else it measured) as JSON, for ``run_all.py``."""
    import json

    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows, "details": details or {}}, indent=1, default=str))


def print_rows(rows: list[dict]) -> None:
    """The rows as a plain-text table (median of the rounds, with their range)."""

    def fig(x: float) -> str:
        return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"

    out = []
    for r in rows:
        ra, pa = r["rlfm_rounds"], r["peer_rounds"]
        met = "" if r["met"] is None else ("met" if r["met"] else "NOT met")
        out.append([
            f"{r['workload']} ({r['kind']})", r["size"], r["peer"], r["metric"],
            f"{fig(r['rlfm'])} [{fig(min(ra))}–{fig(max(ra))}]",
            f"{fig(r['peer_value'])} [{fig(min(pa))}–{fig(max(pa))}]",
            f"{r['ratio']:.2f}×", r["target"] or "", met,
        ])  # fmt: skip
    print(table(["workload", "size", "peer", "metric", "rlfm", "peer", "ratio", "target", ""], out))


def curve_plot(
    png: Path,
    series: dict[str, tuple[Sequence[float], Sequence[float], tuple | None]],
    title: str,
    xlabel: str,
    ylabel: str,
    hline: tuple[float, str] | None = None,
) -> Path:
    """Lines y(x) into a PNG, one per ``series`` entry ``name: (xs, ys, band)``, where ``band``
    is None or (lows, highs) shaded around the line; ``hline`` = (y, label) is drawn dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, (xs, ys, band) in series.items():
        (line,) = ax.plot(xs, ys, marker="o", markersize=2, label=name)
        if band is not None:
            ax.fill_between(xs, band[0], band[1], color=line.get_color(), alpha=0.2)
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle="--", label=hline[1])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def ratio_row(
    workload: str,
    size: str,
    peer: str,
    peer_settings: str,
    metric: str,
    rlfm: float,
    peer_value: float | None,
    target: float | None = None,
    *,
    higher_is_better: bool = True,
) -> dict:
    """One result row: rlfm's figure, the peer's, their ratio (rlfm / peer) and whether the
    target is met. ``target`` is a floor on the ratio (a ceiling when ``higher_is_better`` is
    False); with no peer (``peer_value`` None) it is a floor (or ceiling) on rlfm's figure.
    The ratio is None unless both figures are positive (a ratio of negative returns misleads)."""
    ratio = rlfm / peer_value if peer_value is not None and peer_value > 0 < rlfm else None
    x = ratio if peer_value is not None else rlfm
    met = None
    if target is not None and x is not None:
        met = bool(x >= target) if higher_is_better else bool(x <= target)
    return _row((workload, size, peer, peer_settings, metric), rlfm, peer_value, ratio, target, met)


def _row(
    what: tuple[str, str, str, str, str],
    rlfm: float,
    peer_value: float | None,
    ratio: float | None,
    target: float | str | None,
    met: bool | None,
) -> dict:
    """The keys every result row has, in the table's order: ``what`` is (workload, size, peer,
    peer_settings, metric)."""
    keys = ("workload", "size", "peer", "peer_settings", "metric")
    return dict(zip(keys, what, strict=True)) | {
        "rlfm": rlfm,
        "peer_value": peer_value,
        "ratio": ratio,
        "target": target,
        "met": met,
    }


def write_row_list(path: Path | None, rows: list[dict]) -> None:
    """Write result rows (:func:`ratio_row`) to ``path`` as a JSON list, if a path is given."""
    import json

    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


import argparse  # noqa: E402  (the helpers below)
from collections.abc import Callable  # noqa: E402


def interleaved_rounds(
    script: str,
    sides: tuple[str, str],
    rounds: int,
    args: Callable[[str, int, Path], list[str]],
) -> list[dict]:
    """Run ``python SCRIPT --child SIDE ...ARGS(side, round, tmp)`` for both sides in every
    round, in alternating order (each side first in every other round), each in its own
    process with one OpenMP thread. A child reports by printing ``RESULT {json}`` as its last
    such line; returns one dict per run: side, round, the child's JSON and its peak RSS. A
    failed child stops the benchmark with its output's tail."""
    import json
    import sys
    import tempfile

    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                cmd = [sys.executable, script, "--child", side, *args(side, r, Path(tmp))]
                res = run_child(cmd, Path(tmp) / f"{side}-{r}.log", env=env)
                lines = [x for x in res.log.read_text().splitlines() if x.startswith("RESULT ")]
                if res.returncode != 0 or not lines:
                    print(f"{side} (round {r}) failed:\n{res.tail()}")
                    raise SystemExit(1)
                row = json.loads(lines[-1][7:]) | {"peak_rss_mib": res.peak_rss_mib}
                runs.append({"side": side, "round": r, **row})
                print(f"round {r} {side}: {row}", flush=True)
    return runs


def add_child_args(parser: argparse.ArgumentParser, sides: tuple[str, str]) -> None:
    """The flags of :func:`interleaved_rounds`' children (hidden from ``--help``) and ``--out``
    (the result rows, :func:`write_row_list`) on an ``argparse`` parser."""
    hide = argparse.SUPPRESS
    parser.add_argument("--child", choices=list(sides), help=hide)
    parser.add_argument("--seed", type=int, default=0, help=hide)
    parser.add_argument("--run-dir", type=Path, help=hide)
    parser.add_argument("--out", "--json", type=Path, help="write the result rows here (JSON list)")
