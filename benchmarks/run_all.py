"""Run the benchmarks in sequence and render ``benchmarks/RESULTS.md``: one command, one table.

    python benchmarks/run_all.py --out benchmarks/results/<date>.json \\
        [--only sft,reward,...] [--sizes tiny,small,100m]

Workloads (``--only``; default all, in this order): ``pretrain`` (pretrain_throughput.py),
``sft`` (sft_vs_trl.py), ``reward`` (reward_vs_trl.py), ``ppo`` (ppo_vs_trl.py, part a: full
fine-tuning), ``ppo-lora`` (part b: LoRA memory), ``generation`` (part c), ``control``
(control_ppo_vs_sb3.py) and ``dt`` (dt_speed.py); the last two have no model size and run once. Sizes (``--sizes``): see
``_common.SIZES``; each workload runs at each size with the step counts of ``JOBS`` (the ~100M
model with a few steps).

Before the first script the machine's 1-minute load average must fall below ``--idle-load``
(waiting ``--idle-wait`` seconds at most), and before every later one for ``--idle-wait-each``
seconds at most; the load before and after each script, and the share of the CPUs that other
work took while it ran, are stored with its rows (a benchmark on a busy machine is still
recorded, with the load it ran under). ``--budget`` bounds the whole run: each script gets what
is left of it (and its own ceiling), and a script that no longer fits is recorded as skipped.

``--out`` receives a JSON list of rows, each with the keys ``workload``, ``size``, ``peer``,
``peer_settings``, ``metric``, ``rlfm``, ``peer_value``, ``ratio``, ``target``, ``met`` (and
more: the rounds, the kind of comparison, the load). If the file exists, the rows of the jobs
run now replace that job's old rows and the others are kept, so a run can be completed later
with ``--only``/``--sizes``; a job that fails, times out or is skipped keeps its last measured
rows, with a row beside them that says why it measured nothing this time. Everything else the
scripts measured goes to ``<out>.details.json``.
``benchmarks/RESULTS.md`` is rendered from the rows (``--render-only`` re-renders it without
running anything).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

REQUIRED_KEYS = (
    "workload",
    "size",
    "peer",
    "peer_settings",
    "metric",
    "rlfm",
    "peer_value",
    "ratio",
    "target",
    "met",
)
"""Keys every row of the ``--out`` file has (issue 15)."""

WORKLOADS = ("pretrain", "sft", "reward", "ppo", "ppo-lora", "generation", "control", "dt")
SIZE_NAMES = ("tiny", "small", "100m")
UNSIZED = ("control", "dt")
"""Workloads without a model size: run once, their rows keep the size they give."""


@dataclass(frozen=True)
class Job:
    """One script run: a workload at a size."""

    workload: str
    size: str
    script: str
    args: tuple[str, ...]
    timeout_s: float
    out_flag: str = "--json"
    """How the script is told where to write its rows."""
    precision: str = ""
    """``"fp32"`` for a workload of ``PRECISION_WORKLOADS`` run in fp32, else empty."""

    @property
    def name(self) -> str:
        return f"{self.workload}@{self.size}" + (f"/{self.precision}" if self.precision else "")


def _sized(workload: str, script: str, common: list[str], per_size: dict) -> list[Job]:
    return [
        Job(workload, size, script, tuple(["--size", size, *common, *extra]), timeout)
        for size, (extra, timeout) in per_size.items()
    ]


JOBS: list[Job] = [
    *_sized(
        "pretrain",
        "pretrain_throughput.py",
        ["--synthetic", "--rounds", "3"],  # rlfm's rounds spread by ±8% on this machine
        {
            "tiny": (["--steps", "20", "--warmup", "5"], 900),
            "small": (["--steps", "15", "--warmup", "5"], 1200),
            # 3 timed steps: rounds of one timed step spread by ±10% on this machine
            "100m": (["--steps", "5", "--warmup", "2", "--batch-size", "4"], 1800),
        },
    ),
    *_sized(
        "sft",
        "sft_vs_trl.py",
        ["--rounds", "3"],  # rounds spread by ±10% on this machine
        {
            "tiny": (["--steps", "30", "--warmup", "5"], 900),
            "small": (["--steps", "25", "--warmup", "5"], 1200),
            # batches of grouped lengths differ in cost by up to 5×: ≥ 10 timed steps, so that
            # neither side's rate hangs on which length buckets its few steps drew
            "100m": (["--steps", "12", "--warmup", "2", "--batch-size", "8"], 2400),
        },
    ),
    *_sized(
        "reward",
        "reward_vs_trl.py",
        ["--rounds", "2"],
        {
            "tiny": (["--steps", "12", "--warmup", "3"], 900),
            "small": (["--steps", "10", "--warmup", "3"], 1200),
            "100m": (["--steps", "8", "--warmup", "2"], 3600),  # 6 timed steps (see sft)
        },
    ),
    *_sized(
        "ppo",
        "ppo_vs_trl.py",
        ["--parts", "a", "--rounds", "2", "--epochs", "4"],
        {
            "tiny": (["--updates", "2", "--warmup", "1"], 900),
            "small": (["--updates", "2", "--warmup", "1"], 1200),
            "100m": (["--updates", "1", "--warmup", "1", "--prompts", "8"], 1800),
        },
    ),
    *_sized(
        "ppo-lora",
        "ppo_vs_trl.py",
        ["--parts", "b", "--rounds", "2", "--epochs", "4"],
        {
            "tiny": (["--warmup", "1"], 900),
            "small": (["--warmup", "1"], 1200),
            "100m": (["--warmup", "1", "--prompts", "8", "--lora-micro-batch", "2"], 1800),
        },
    ),
    *_sized(
        "generation",
        "ppo_vs_trl.py",
        ["--parts", "c", "--rounds", "2"],
        {
            "tiny": (["--gen-reps", "3"], 600),
            "small": (["--gen-reps", "3"], 600),
            "100m": (["--gen-reps", "2"], 1200),
        },
    ),
    # the machine's speed drifts by ±10% within minutes: more, shorter interleaved rounds
    Job(
        "control",
        "-",
        "control_ppo_vs_sb3.py",
        ("--steps", "40000", "--rounds", "3"),
        1200,
        out_flag="--out",
    ),
    # one-episode-at-a-time evaluation of 4 episodes took ~3 s a side and its ratio spread
    # 1.37-1.81x between runs of the same code: more episodes, one more round
    Job(
        "dt",
        "-",
        "dt_speed.py",
        ("--steps", "400", "--episodes", "10", "--rounds", "3"),
        1500,
        out_flag="--out",
    ),
]


# ---------------------------------------------------------------------------- rows


def check_row(row: dict) -> None:
    """Raise ``ValueError`` unless ``row`` has every key of ``REQUIRED_KEYS``."""
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise ValueError(f"row without {', '.join(missing)}: {row}")


def failed_row(job: Job, why: str) -> dict:
    """The row that stands for a job that produced no rows (failed, timed out, skipped)."""
    return {
        "workload": job.workload,
        "size": job.size,
        "peer": "",
        "peer_settings": "",
        "metric": "",
        "rlfm": None,
        "peer_value": None,
        "ratio": None,
        "target": None,
        "met": None,
        "kind": "",
        "note": why,
        "failed": True,
    }


def rows_from_output(job: Job, out_file: Path, log_tail: str) -> tuple[list[dict], dict]:
    """The rows a script wrote (``{"rows": [...], "details": {...}}`` or a plain list of rows),
    or, where it wrote none in that form, one row that says so and keeps its output's tail."""
    if not out_file.is_file():
        return [failed_row(job, f"no result file; output:\n{log_tail}")], {}
    try:
        data = json.loads(out_file.read_text())
    except json.JSONDecodeError as e:
        return [failed_row(job, f"unreadable result file ({e}); output:\n{log_tail}")], {}
    rows, details = (data, {}) if isinstance(data, list) else (data.get("rows"), data)
    if isinstance(details, dict) and "rows" in details:
        details = details.get("details", {})
    if not isinstance(rows, list) or not rows:
        return [failed_row(job, f"result file without rows; output:\n{log_tail}")], {"raw": data}
    good = []
    for r in rows:
        try:
            check_row(r)
            good.append(r)
        except (ValueError, TypeError):
            good.append(failed_row(job, f"a row without the required keys: {json.dumps(r)}"))
    return good, details


def job_of(row: dict) -> str:
    return row.get("job", f"{row['workload']}@{row['size']}")


def is_failed(row: dict) -> bool:
    """A row that stands for a run that measured nothing (older files: no value, no metric)."""
    return bool(row.get("failed")) or (row.get("rlfm") is None and not row.get("metric"))


def merge_rows(old: list[dict], new: list[dict], jobs_run: set[str]) -> list[dict]:
    """``old`` without the rows of ``jobs_run``, then ``new``, in workload and size order.

    A job whose new run measured nothing (it failed, timed out or was skipped) keeps the rows of
    its last run that did: a crash does not erase a measurement. Its failure row is added beside
    them and says that they are older."""
    measured = {job_of(r) for r in new if not is_failed(r)}
    failed = {job_of(r) for r in new if is_failed(r)} - measured
    kept = [
        r for r in old if job_of(r) not in jobs_run or (job_of(r) in failed and not is_failed(r))
    ]
    earlier = {job_of(r) for r in kept} & failed
    new = [
        r | {"note": f"{r['note']} (the rows of this job above are from its last measured run)"}
        if is_failed(r) and job_of(r) in earlier
        else r
        for r in new
    ]
    return sorted(kept + new, key=lambda r: (*row_order(r), is_failed(r)))


def row_order(row: dict) -> tuple:
    w = job_of(row).split("@")[0]
    return (
        WORKLOADS.index(w) if w in WORKLOADS else len(WORKLOADS),
        SIZE_NAMES.index(row["size"]) if row["size"] in SIZE_NAMES else len(SIZE_NAMES),
    )


# ---------------------------------------------------------------------------- rendering


def _fig(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    x = float(x)
    return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"


def _cell(value, rounds) -> str:
    """Median with the range of the rounds, e.g. ``1,234 [1,200–1,250]``."""
    if value is None:
        return "—"
    if rounds and len(rounds) > 1:
        return f"{_fig(value)} [{_fig(min(rounds))}–{_fig(max(rounds))}]"
    return _fig(value)


def _load(row: dict) -> str:
    load = row.get("load")
    if not load:
        return ""
    text = f"{load['before']:.1f} → {load['after']:.1f}"
    if load.get("others_cpu_share") is not None:
        text += f" ({100 * load['others_cpu_share']:.0f}% others)"
    return text


def _md(text) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ")


def render_markdown(rows: list[dict], meta: dict | None = None) -> str:
    """``RESULTS.md``: a short header (machine, matmul peaks, how to read it) and one table."""
    meta = meta or {}
    lines = ["# Benchmark results", ""]
    for run in meta.get("runs", [meta] if meta.get("command") else []):
        lines.append(f"- `{run['command']}` ({run.get('date', '')})")
        machine = run.get("machine")
        if machine:
            peaks = ", ".join(
                f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in machine.get("matmul_peak", {}).items()
            )
            lines.append(
                f"  on {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, torch "
                f"{machine.get('torch', '?')}; square-matmul peak measured at its start: {peaks} "
                f"(1-min load {machine.get('load', float('nan')):.1f})."
            )
    if len(lines) > 2:
        lines.append("")
    lines += [
        "Each figure is the median over interleaved rounds, each contender in its own process, "
        "with the range of the rounds in brackets; ratio = rlfm ÷ peer (for memory, lower is "
        "better and the target is a ceiling). *like-for-like*: the same work on both sides; "
        "*recipe vs recipe*: each side's own recipe. Load: the 1-minute load average before → "
        "after the script, and the share of the CPUs that other work took while it ran (the "
        "machine is shared; absolute figures drift, ratios less so).",
        "",
        "| workload | size | peer | peer settings | metric | rlfm | peer | ratio | target | met "
        "| load |",
        "|---|---|---|---|---|---:|---:|---:|---|---|---|",
    ]
    notes: list[str] = []
    for r in rows:
        check_row(r)
        kind = f" ({r['kind']})" if r.get("kind") else ""
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        ratio = "—" if r["ratio"] is None else f"{float(r['ratio']):.2f}×"
        workload = f"{r['workload']}{kind}"
        if r.get("note"):
            notes.append(r["note"])
            workload += f" [{len(notes)}]"
        settings = r["peer_settings"]
        if r.get("precision") and r["precision"] not in settings:
            settings += f"; {r['precision']}"
        lines.append(
            "| "
            + " | ".join(
                _md(c)
                for c in (
                    workload,
                    r["size"],
                    r["peer"],
                    settings,
                    r["metric"],
                    _cell(r["rlfm"], r.get("rlfm_rounds")),
                    _cell(r["peer_value"], r.get("peer_rounds")),
                    ratio,
                    r["target"] or "",
                    met,
                    _load(r),
                )
            )
            + " |"
        )  # fmt: skip
    if notes:
        lines.append("")
        for i, note in enumerate(notes, 1):
            text = " ".join(str(note).split())
            lines.append(f"{i}. {_md(text[:600])}{'…' if len(text) > 600 else ''}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- running


def machine_info() -> dict:
    """CPU model, cores, torch version, the matmul peak per precision, the load meanwhile."""
    import torch
    from _common import matmul_peaks

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = [f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f" {f}" in flags]
    peak = matmul_peaks()
    return {
        "cpu": f"{cpu} ({', '.join(isa)})" if isa else cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "matmul_peak": peak,
        "load": os.getloadavg()[0],
    }


def run_job(job: Job, workdir: Path, timeout_s: float, python: str) -> tuple[list[dict], dict]:
    """Run one script in its own process group, bounded by ``timeout_s``; its rows, stamped
    with the load, and its details."""
    from _common import cpu_busy_s, others_share, run_child

    stem = job.name.replace("/", "-")  # sft@tiny/fp32: one file, not a folder
    out_file = workdir / f"{stem}.json"
    out_file.unlink(missing_ok=True)
    cmd = [python, str(HERE / job.script), *job.args, job.out_flag, str(out_file)]
    print(f"\n== {job.name}: {shlex.join(cmd[1:])}  (at most {timeout_s:.0f} s)", flush=True)
    load_before, busy_before, t0 = os.getloadavg()[0], cpu_busy_s(), time.perf_counter()
    res = run_child(cmd, workdir / f"{stem}.log", timeout_s=timeout_s)
    wall = time.perf_counter() - t0
    load = {
        "before": load_before,
        "after": os.getloadavg()[0],
        "others_cpu_share": others_share(busy_before, cpu_busy_s(), wall),
        "wall_s": wall,
    }
    tail = res.tail(20)
    if res.returncode != 0:
        why = "timed out" if res.returncode == -9 else f"exit status {res.returncode}"
        rows, details = [failed_row(job, f"{why} after {wall:.0f} s; output:\n{tail}")], {}
    else:
        rows, details = rows_from_output(job, out_file, tail)
    print(tail, flush=True)
    stamp = {
        "job": job.name,
        "script": job.script,
        "command": shlex.join(["python", f"benchmarks/{job.script}", *job.args]),
        "load": load,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return [stamp | r for r in rows], details | {"exit_status": res.returncode, "load": load}


PRECISION_WORKLOADS = ("sft", "reward")
"""Workloads whose headline precision is bf16 where the CPU has bf16 units, else fp32. Their
fp32 runs are separate jobs (``sft@tiny/fp32``): a CPU without bf16 units adds rows beside the
bf16 ones a CPU with them measured, instead of replacing them."""


def select_jobs(only: list[str], sizes: list[str], precision: str | None = None) -> list[Job]:
    """The jobs of ``only`` at ``sizes``; ``precision`` (``bf16``/``fp32``; None: bf16 where
    this CPU has bf16 units, else fp32) for the workloads of ``PRECISION_WORKLOADS``."""
    jobs = [j for j in JOBS if j.workload in only and (j.workload in UNSIZED or j.size in sizes)]
    if precision is None and any(j.workload in PRECISION_WORKLOADS for j in jobs):
        import torch

        from rlfm.engine import bf16_supported

        precision = "bf16" if bf16_supported(torch.device("cpu")) else "fp32"
    suffix = "fp32" if precision == "fp32" else ""  # bf16 jobs keep their plain names
    return [
        replace(j, args=(*j.args, "--precision", precision), precision=suffix)
        if j.workload in PRECISION_WORKLOADS
        else j
        for j in jobs
    ]


def _csv(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{', '.join(bad)}: choose from {', '.join(choices)}")
        return items

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file of rows")
    p.add_argument(
        "--only",
        type=_csv(WORKLOADS),
        default=list(WORKLOADS),
        help=f"comma-separated workloads ({','.join(WORKLOADS)})",
    )
    p.add_argument(
        "--sizes",
        type=_csv(SIZE_NAMES),
        default=list(SIZE_NAMES),
        help=f"comma-separated sizes ({','.join(SIZE_NAMES)})",
    )
    p.add_argument(
        "--precision",
        choices=["bf16", "fp32"],
        default=None,
        help="sft and reward: both sides' precision (default: bf16 where the CPU has bf16 units, "
        "else fp32); fp32 rows are kept apart from bf16 ones",
    )
    p.add_argument("--budget", type=float, default=4 * 3600, help="seconds for the whole run")
    p.add_argument("--idle-load", type=float, default=1.0, help="1-min load average deemed idle")
    p.add_argument("--idle-wait", type=float, default=600, help="seconds to wait for it at first")
    p.add_argument(
        "--idle-wait-each",
        type=float,
        default=60,
        help="seconds to wait for it before each later script",
    )
    p.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--render-only", action="store_true", help="re-render RESULTS.md from --out")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    details_file = a.out.with_suffix(".details.json")
    old = json.loads(a.out.read_text()) if a.out.is_file() else []
    old_details = json.loads(details_file.read_text()) if details_file.is_file() else {}
    if a.render_only:
        a.results_md.write_text(render_markdown(old, old_details.get("meta")))
        print(f"rendered {a.results_md}")
        return
    jobs = select_jobs(a.only, a.sizes, a.precision)
    if a.dry_run:
        for j in jobs:
            print(j.name, shlex.join(["python", f"benchmarks/{j.script}", *j.args]))
        return

    from _common import wait_for_idle

    start = time.perf_counter()
    workdir = a.out.parent / f".{a.out.stem}-work"
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"waiting for the 1-min load to fall below {a.idle_load} (at most {a.idle_wait:.0f} s)")
    first_wait = wait_for_idle(a.idle_load, a.idle_wait)
    run = {
        "command": shlex.join(["python", "benchmarks/run_all.py", *(argv or sys.argv[1:])]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "first_wait": first_wait,
    }
    print(f"machine: {run['machine']}", flush=True)
    meta = {"runs": [*old_details.get("meta", {}).get("runs", []), run]}
    new_rows: list[dict] = []
    details = dict(old_details.get("jobs", {}))
    for i, job in enumerate(jobs):
        left = a.budget - (time.perf_counter() - start)
        if left < 120:
            new_rows.append(failed_row(job, f"skipped: the time budget ({a.budget:.0f} s) ran out")
                            | {"job": job.name})  # fmt: skip
            continue
        if i:
            wait_for_idle(a.idle_load, min(a.idle_wait_each, left / 10))
        rows, det = run_job(job, workdir, min(job.timeout_s, left), sys.executable)
        new_rows += rows
        details[job.name] = det
        # write after every job: a run stopped half-way keeps what it measured
        merged = merge_rows(old, new_rows, {j.name for j in jobs[: i + 1]})
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(merged, indent=1, default=str))
        details_file.write_text(json.dumps({"meta": meta, "jobs": details}, indent=1, default=str))
        a.results_md.write_text(render_markdown(merged, meta))
    merged = merge_rows(old, new_rows, {j.name for j in jobs})
    a.out.write_text(json.dumps(merged, indent=1, default=str))
    details_file.write_text(json.dumps({"meta": meta, "jobs": details}, indent=1, default=str))
    a.results_md.write_text(render_markdown(merged, meta))
    print(f"\n{len(new_rows)} rows; {a.out}, {a.results_md}; "
          f"{time.perf_counter() - start:.0f} s in all")  # fmt: skip


if __name__ == "__main__":
    main()
