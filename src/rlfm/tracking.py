"""What a stage reports while it runs: ``metrics.jsonl``, TensorBoard events, a progress bar,
and the one JSONL writer every log uses.

Only the main process writes. On resume, rows logged after the checkpoint being resumed from
are dropped (:func:`keep_rows_until`, called by run.py) so each log reads as one uninterrupted
run.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)


def quiet_libraries() -> None:
    """Silence the progress bars and info logs of transformers and datasets (rlfm shows its own)."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except ImportError:
        pass


def reset_peak_memory() -> None:
    """Start measuring this process's peak memory afresh (Linux: the resident-set high-water
    mark is reset through /proc/self/clear_refs; CUDA: the allocator's peak)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb() -> dict[str, float]:
    """This process's peak memory since :func:`reset_peak_memory`, in MiB: ``rss`` (resident
    set, CPU; Linux) and ``cuda`` (allocated tensors) where measurable."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["rss"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` file (a torn last line from a kill is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Append rows to a JSON-lines file (UTF-8, one object per line, flushed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def keep_rows_until(path: str | Path, step: int) -> None:
    """Drop the rows of a JSONL log whose "step" is after ``step`` (and a torn last line)."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8"
    )
    tmp.replace(path)


class Meter:
    """Work done by the training steps since the last log row, and their time: each logged rate
    is total work over total time, summed over processes (never a mean of per-step rates).

        meter.start()
        ... one optimizer step ...
        meter.stop(tokens=n, samples=b)          # this process's work in the step
        meter.rates(engine) -> {"tokens_per_s": ..., "samples_per_s": ...}   (then reset)
    """

    def __init__(self) -> None:
        self.seconds, self.work, self._t0 = 0.0, {}, 0.0
        self.totals: dict[str, float] = {}  # the last rates' global work (e.g. for padding)

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self, **work: float) -> None:
        self.seconds += time.perf_counter() - self._t0
        for k, v in work.items():
            self.work[k] = self.work.get(k, 0.0) + float(v)

    def rates(self, engine: Any) -> dict[str, float]:
        """``<work>_per_s`` over all processes since the last call (collective)."""
        import torch

        names = sorted(self.work)
        summed = engine.all_reduce_sum(
            torch.tensor([self.work[k] for k in names] or [0.0], dtype=torch.float64)
        )
        self.totals = {k: float(v) for k, v in zip(names, summed)}
        seconds = max(engine.all_reduce_mean(self.seconds), 1e-9)  # processes step together
        self.seconds, self.work = 0.0, {}
        return {f"{k}_per_s": v / seconds for k, v in self.totals.items()}


class Tracker:
    """Logs scalars to ``<out>/metrics.jsonl`` and ``<out>/tb``; shows a progress bar."""

    def __init__(
        self,
        out: str | Path,
        *,
        enabled: bool = True,
        total_steps: int = 0,
        start_step: int = 0,
        tensorboard: bool = True,
        description: str = "train",
    ) -> None:
        self.out = Path(out)
        self.enabled = enabled
        self.metrics_path = self.out / "metrics.jsonl"
        self._tb = None
        self._progress: Progress | None = None
        self._task = None
        self._last_print = 0.0
        self.total_steps = total_steps
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self._file = self.metrics_path.open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out / "tb"), purge_step=start_step + 1)
        if sys.stderr.isatty() and total_steps > 0:
            self._progress = Progress(
                TextColumn(f"[bold]{description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._progress.add_task(
                description, total=total_steps, completed=start_step, status=""
            )
            self._progress.start()

    def log(self, step: int, metrics: dict[str, float], *, show: bool = True) -> None:
        """Append one row (``step`` plus ``metrics``) and update the bar's status line; with no
        metrics, only move the bar."""
        if not self.enabled:
            return
        if not metrics:
            self.advance(step)
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if show:
            status = "  ".join(_short(k, v) for k, v in metrics.items() if k != "lr")
            if self._progress is not None:
                self._progress.update(self._task, completed=step, status=status)
            elif time.monotonic() - self._last_print > 5 or step >= self.total_steps:
                self._last_print = time.monotonic()
                total = f"/{self.total_steps}" if self.total_steps else ""
                console.print(f"step {step}{total}  {status}")

    def advance(self, step: int) -> None:
        """Move the progress bar to ``step`` without logging."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def print(self, *args: Any) -> None:
        """Print above the progress bar (main process only)."""
        if self.enabled:
            (self._progress.console if self._progress else console).print(*args)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.stop()
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _plain(v: Any) -> Any:
    return float(v) if hasattr(v, "item") else v


def _short(k: str, v: Any) -> str:
    if isinstance(v, float):
        if k.startswith("tokens_per_s") or abs(v) >= 1000:
            return f"{k} {v:,.0f}"
        return f"{k} {v:.4g}"
    return f"{k} {v}"
