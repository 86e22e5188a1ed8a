"""Small helpers shared by the benchmark scripts: child processes with their own peak memory,
this machine's matmul peak, and a plain-text table.

- :func:`run_child` runs one contender in its own process and reads that process's peak
  resident memory from the kernel (``os.wait4``), so contenders never share an import cache or
  a memory high-water mark.
- :func:`matmul_flops` measures what this machine's matrix multiply reaches (FLOP/s) in a given
  dtype with all the threads torch uses: the denominator of a model-FLOPs utilisation.
- :func:`table` formats rows as aligned columns.

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


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned plain-text table: first column left-aligned, the others right-aligned."""
    cells = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        )

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])])


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
    return {
        "workload": workload,
        "size": size,
        "peer": peer,
        "peer_settings": peer_settings,
        "metric": metric,
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
