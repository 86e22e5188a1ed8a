"""A stage's run directory: what it holds, who writes it, how a run stops and resumes.

Every training stage's ``train()`` has the same frame::

    with Run(cfg, "pretrain", total=cfg.steps) as run:
        if run.finished:                       # "already finished at step N": nothing written
            return run.summary
        ... data; the model (from run.resume when resuming) ...
        step = run.track(model, tokenizer, optimizer=opt, scheduler=sched, data=sampler)
        while step < cfg.steps:
            ... one optimizer step ...
            step += 1
            run.tracker.log(step, row)
            run.checkpoint(step)               # every save_every, at the end, on SIGINT/SIGTERM
        return run.finish(summary)

The directory::

    run.json        the stage that owns the directory, the rlfm version, the command line
    config.yaml     the settings that actually run (written after the checks below)
    .lock           held by the one process writing the directory
    checkpoints/    checkpoint.py: atomic, verified by a manifest
    metrics.jsonl   one row per logged step; samples.jsonl: generated text; both carry "step"
    summary.json    the final metrics, written when the run finishes (they also go into the
                    model card, README.md, of the newest checkpoint: model_card.py)

Checks when a run opens, before any long work:

1. ``out`` is a directory that can be written (a file at that path, a read-only parent, a full
   disk: one line naming the path).
2. One writer: an exclusive ``fcntl`` lock on ``.lock`` for the run's lifetime. A second
   process exits at once naming the holder's PID. The kernel frees the lock when its holder
   dies, so a killed run's lock is simply taken over.
3. The stage: a directory holding another stage's run (``run.json``, or for runs older than
   ``run.json`` the fields of its ``config.yaml``) or a model directory is refused.
4. Resuming (an intact checkpoint exists): every setting that defines the run must equal the
   stored one, else a ConfigError lists each changed field (old → new) before any work.
   Settings that may change (more steps, the eval/save/log intervals, the device, the
   Config's ``RESUMABLE`` fields) are applied and logged. A start with no checkpoint yet
   starts over (its leftover logs are removed), saying what changed.
5. A finished run (``summary.json`` at the newest checkpoint's step = ``total``) says so and
   writes nothing.

Signals: the first SIGINT (Ctrl-C) or SIGTERM (a cluster's preemption) lets the current
optimizer step finish; :meth:`Run.checkpoint` then writes a checkpoint and raises
:class:`rlfm.errors.Interrupted`, which the CLI turns into exit status 130 / 143 naming the
saved step. A second signal stops at once; checkpoints are renamed into place, so whatever was
written stays intact.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sys
import threading
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml
from rich.markup import escape

from rlfm import __version__, checkpoint
from rlfm.config import renamed_values, resumable_fields, save_yaml, to_dict
from rlfm.engine import Engine
from rlfm.errors import ConfigError, Interrupted, RlfmError, RunError
from rlfm.model_card import write_model_card
from rlfm.tracking import Meter, Tracker, keep_rows_until, read_metrics

COMMAND: ContextVar[str | None] = ContextVar("rlfm_command", default=None)
"""The command that started the runs of this context, as its user wrote it: set by the command
line (``rlfm ppo --policy ...``) and the Python API (``rlfm.api.ppo(policy=...)``)."""


def invocation() -> str:
    """The command that started this run (:data:`COMMAND`, else the process's arguments)."""
    return COMMAND.get() or " ".join(sys.argv)


RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
LOGS = ("metrics.jsonl", "samples.jsonl")
"""Row logs of a run: every row carries "step"; rows after the resumed step are dropped."""


class Run:
    """One stage's run in its output directory (see the module docstring)."""

    def __init__(self, cfg: Any, stage: str, *, total: int, derived: tuple[str, ...] = ()) -> None:
        """``total``: the step the run ends at. ``derived``: files or folders of ``out`` the
        stage builds from its settings (e.g. the reward stage's generated preference set),
        removed when a run starts over."""
        self.cfg, self.stage, self.total = cfg, stage, total
        self.out = Path(cfg.out)
        self.derived = derived
        self.engine: Engine
        self.resume: Path | None = None
        self.finished = False
        self.summary: dict[str, Any] = {}
        self.notes: list[str] = []  # decisions to show in the stage's banner
        self.tracker: Tracker | None = None
        self._lock: Any = None
        self._stop: int | None = None
        self._handlers: dict[int, Any] = {}
        self._model: Any = None
        self._tokenizer: Any = None
        self._state: dict[str, Any] = {}
        self._created = False  # this process created ``out``

    # ------------------------------------------------------------------ opening
    def __enter__(self) -> Run:
        self.engine = Engine.create(self.cfg.device, self.cfg.precision)
        try:
            self.engine.seed(self.cfg.seed)
            self._collective(self._prepare_directory)
            self._collective(self._take_lock)
            self._collective(self._check_stage)
            self.resume = checkpoint.latest_checkpoint(self.out, checksums=True)
            self._collective(self._check_settings)
            self._check_finished()
            if not self.finished:
                self._collective(self._write_identity)
            self._install_signal_handlers()
        except BaseException:
            self._close(clean=False)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._close(clean=exc_type is None)
        if (
            exc_type is not None
            and issubclass(exc_type, RlfmError)
            and self._created
            and self.engine.is_main
            and not checkpoint.checkpoints(self.out)
        ):  # a user error before any work was saved: leave no trace of a run that never began
            shutil.rmtree(self.out, ignore_errors=True)

    def _close(self, clean: bool) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers = {}
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        if hasattr(self, "engine"):
            self.engine.close(clean=clean)

    def _collective(self, fn: Any) -> None:
        """Run ``fn`` on the main process; every process raises what it raised."""
        problem: RlfmError | None = None
        if self.engine.is_main:
            try:
                fn()
            except RlfmError as e:
                problem = e
        problem = self.engine.broadcast_object(problem)
        if problem is not None:
            raise problem

    def _prepare_directory(self) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise RunError(f"out: {out} is a file, not a directory; choose another --out")
        try:
            self._created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test-{os.getpid()}"
            probe.write_bytes(b"rlfm")
            probe.unlink()
        except OSError as e:
            raise RunError(
                f"out: cannot write to {out}: {checkpoint.os_error_message(e, out)}"
            ) from None

    def _take_lock(self) -> None:
        path = self.out / LOCK_FILE
        f = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunError(
                f"out: {self.out} is in use by another rlfm process (PID {holder}); wait for it "
                "to finish, stop it, or choose another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f

    def _check_stage(self) -> None:
        out = self.out
        run_file = out / RUN_FILE
        if run_file.is_file():
            try:
                owner = json.loads(run_file.read_text(encoding="utf-8")).get("stage")
            except (OSError, ValueError) as e:
                raise RunError(f"out: cannot read {run_file}: {e}") from None
            if owner != self.stage:
                raise RunError(
                    f"out: {out} holds a `rlfm {owner}` run, not a `rlfm {self.stage}` run; "
                    "choose another --out"
                )
            return
        if (out / "config.json").is_file() or (out / "adapter_config.json").is_file():
            raise RunError(
                f"out: {out} holds a model (config.json), not a run directory; choose another "
                "--out (a model is never overwritten)"
            )
        stored = self._stored_config()
        if stored is not None:  # a run older than run.json: recognise it by its fields
            fields = {f for f in self._field_names()} | set(getattr(self.cfg, "RENAMED", {}))
            foreign = sorted(set(stored) - fields)
            if foreign:
                raise RunError(
                    f"out: {out} holds another stage's run (its config.yaml has "
                    f"{', '.join(foreign[:4])}, which `rlfm {self.stage}` does not); choose "
                    "another --out"
                )

    def _field_names(self) -> list[str]:
        import dataclasses

        return [f.name for f in dataclasses.fields(self.cfg)]

    def _stored_config(self) -> dict[str, Any] | None:
        path = self.out / "config.yaml"
        if not path.is_file():
            return None
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
            raise RunError(f"out: cannot read {path}: {e}") from None
        return data if isinstance(data, dict) else None

    def _check_settings(self) -> None:
        stored = self._stored_config()
        if stored is None:
            return
        old = stored_settings(type(self.cfg), stored)
        new = to_dict(self.cfg)
        may_change = resumable_fields(type(self.cfg))
        changed = [k for k in new if k in old and _norm(old[k]) != _norm(new[k])]
        defining = [k for k in changed if k not in may_change]
        listing = "; ".join(f"{k}: {_show(old[k])} → {_show(new[k])}" for k in defining)
        if self.resume is None:
            if defining:
                self.notes.append(f"starting over (no checkpoint yet): {listing}")
            return
        if defining:
            raise ConfigError(
                f"out: {self.out} is a run with other settings; resuming it with these would "
                f"not continue it: {listing}. Use the run's own settings (its config.yaml) to "
                "resume, or choose another --out for a new run"
            )
        for k in changed:
            self.notes.append(f"resuming with {k}: {_show(old[k])} → {_show(new[k])}")

    def _check_finished(self) -> None:
        if self.resume is None:
            return
        step = _step_of(self.resume)
        path = self.out / SUMMARY_FILE
        if step == self.total and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return  # a damaged summary: finish the run again
            if data.get("step") == step:
                self.finished = True
                self.summary = data.get("metrics", {})
                if self.engine.is_main:
                    print(
                        f"rlfm {self.stage}: {self.out} already finished at step {step}; nothing "
                        "to do (raise the number of steps to train further)",
                        file=sys.stderr,
                    )

    def _write_identity(self) -> None:
        try:
            if self.resume is None:  # a fresh start: nothing of an earlier, checkpoint-less try
                for name in (*LOGS, SUMMARY_FILE, "tb", *self.derived):
                    path = self.out / name
                    if path.is_dir():
                        shutil.rmtree(path)
                    elif path.exists():
                        path.unlink()
            else:
                for name in LOGS:
                    keep_rows_until(self.out / name, _step_of(self.resume))
            info = {
                "stage": self.stage,
                "rlfm_version": __version__,
                "command": invocation(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            _write_json(self.out / RUN_FILE, info)
            save_yaml(self.cfg, self.out / "config.yaml")
        except OSError as e:
            raise RunError(
                f"out: cannot write to {self.out}: {checkpoint.os_error_message(e, self.out)}"
            ) from None

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop is not None:  # the second signal: stop at once
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self._stop = signum
        if self.engine.is_main:
            print(
                f"\nrlfm {self.stage}: {signal.Signals(signum).name} received: finishing this "
                "step and saving a checkpoint (send it again to stop at once)",
                file=sys.stderr,
            )

    @property
    def stopping(self) -> bool:
        """True (on every process) once any process got SIGINT or SIGTERM."""
        return self.engine.any_process(self._stop is not None)

    def check_stop(self) -> None:
        """Raise Interrupted if a stop was asked for (between the phases after training: the
        final checkpoint already exists, so nothing is lost)."""
        if self.stopping:
            raise Interrupted(
                self._stop or signal.SIGTERM,
                f"stopped; {self.out} is complete up to its newest checkpoint; rerun the same "
                "command to finish",
            )

    # ------------------------------------------------------------------ state and checkpoints
    def track(self, model: Any, tokenizer: Any = None, **state: Any) -> int:
        """Register what a checkpoint holds: the model (saved with ``save_pretrained``), the
        tokenizer, and objects with ``state_dict()`` / ``load_state_dict()`` (optimizers,
        schedules, data samplers, ...). When resuming, their states and this process's RNG are
        restored. Opens the tracker. Returns the step to continue from."""
        self._model, self._tokenizer, self._state = model, tokenizer, state
        step = 0
        if self.resume is not None:
            saved = checkpoint.load_trainer_state(self.resume, self.engine)
            other_version = "it was written by another rlfm version; choose another --out"
            missing = [name for name in state if name not in saved]
            if missing:
                raise RunError(
                    f"checkpoint {self.resume} lacks {', '.join(missing)}: {other_version}"
                )
            for name, obj in state.items():
                try:
                    obj.load_state_dict(saved[name])
                except (KeyError, RuntimeError, TypeError, ValueError) as e:
                    # e.g. an optimizer saved with other parameter groups
                    raise RunError(
                        f"checkpoint {self.resume}: its {name} state does not fit this run "
                        f"({e}); {other_version}"
                    ) from e
            step = int(saved["step"])
        self.tracker = Tracker(
            self.out,
            enabled=self.engine.is_main,
            total_steps=self.total,
            start_step=step,
            description=self.stage,
        )
        if self.stopping:
            raise Interrupted(self._stop or signal.SIGTERM, "stopped before the first step")
        return step

    def logged(self) -> dict[str, Any]:
        """Every metric logged so far (the latest value of each), the same on every process:
        a resumed run's summary then holds what was logged before it was stopped."""
        merged: dict[str, Any] = {}
        if self.engine.is_main and self.resume is not None:
            for row in read_metrics(self.out / "metrics.jsonl"):
                merged |= {k: v for k, v in row.items() if k != "step"}
        return self.engine.broadcast_object(merged)

    def train_row(
        self, loss: float, grad_norm: float, scheduler: Any, data: Any, meter: Meter
    ) -> dict[str, float]:
        """What a training step logs (collective): the loss (already reduced over processes by
        the stage), the learning rate, the gradient norm, the throughput since the last row
        (``meter``) and the epochs of the data seen."""
        return {
            "loss": loss,
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            **meter.rates(self.engine),
            "epoch": data.epochs,
        }

    def due(self, step: int, every: int) -> bool:
        """True every ``every`` steps and at the last step."""
        return step % every == 0 or step == self.total

    def save(self, step: int) -> Path:
        """Write a checkpoint of everything :meth:`track` registered, with its model card
        (collective)."""
        return checkpoint.save_checkpoint(
            self.out,
            step,
            engine=self.engine,
            model=self._model,
            tokenizer=self._tokenizer,
            config=self.cfg,
            trainer_state={name: obj.state_dict() for name, obj in self._state.items()},
            keep=self.cfg.keep_checkpoints,
            card=self._card(metrics=None, final=False),
        )

    def _card(self, metrics: dict[str, Any] | None, final: bool) -> dict[str, Any]:
        return dict(
            stage=self.stage, cfg=self.cfg, command=invocation(), metrics=metrics, final=final
        )

    def checkpoint(self, step: int) -> None:
        """After optimizer step ``step``: save every ``save_every`` steps and at the end; after
        SIGINT/SIGTERM save now and raise Interrupted."""
        stop = self.stopping
        if stop or self.due(step, self.cfg.save_every):
            path = self.save(step)
            if stop:
                signum = self._stop or signal.SIGTERM
                raise Interrupted(
                    signum,
                    f"stopped by {signal.Signals(signum).name} after step {step}; saved {path}; "
                    "rerun the same command to resume",
                )

    # ------------------------------------------------------------------ outputs
    def banner(self, batch: str, step: int) -> str:
        """The lines every stage's start-up message ends with: device, processes, precision,
        the batch (``batch``), the decisions taken when opening, and where it resumes."""
        e = self.engine
        lines = [f"device {e.device} × {e.world_size} process(es), {e.precision}, {batch}"]
        lines += [f"note: {escape(n)}" for n in self.notes]
        if self.resume is not None:
            lines.append(f"resuming from {self.resume} (step {step})")
        return "\n".join(lines)

    def append(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Append rows (each with "step") to a JSONL log of the run (main process)."""
        if self.engine.is_main and rows:
            from rlfm.tracking import append_jsonl

            append_jsonl(self.out / name, rows)

    def print(self, *args: Any) -> None:
        """Print on the main process (above the progress bar once it exists)."""
        if self.tracker is not None:
            self.tracker.print(*args)
        elif self.engine.is_main:
            from rlfm.tracking import console

            console.print(*args)

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write ``summary.json`` (the run is then finished) and close the tracker."""
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None
        if self.engine.is_main:
            ckpt = checkpoint.latest_checkpoint(self.out)
            plain = {k: v for k, v in summary.items() if isinstance(v, int | float | str)}
            if ckpt is not None:  # its model card, now with the final metrics
                write_model_card(ckpt, **self._card(metrics=plain, final=True))
            _write_json(
                self.out / SUMMARY_FILE,
                {"step": _step_of(ckpt) if ckpt else 0, "metrics": plain, "model": str(ckpt)},
            )
        self.summary = summary
        return summary


def stored_settings(cls: type, stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config.yaml's values under today's field names (renamed fields mapped)."""
    out: dict[str, Any] = {}
    for key, value in stored.items():
        name = str(key).replace("-", "_")
        if name in getattr(cls, "RENAMED", {}):
            out |= renamed_values(cls, name, value)
        else:
            out[name] = value
    return out


def _step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("_")[-1])


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def _norm(value: Any) -> Any:
    """Settings compared as written: paths without trailing slashes, tuples as lists."""
    if isinstance(value, str) and ("/" in value or value.startswith(".")):
        return os.path.normpath(value)
    return value


def _show(value: Any) -> str:
    return "none" if value is None else repr(value) if isinstance(value, str) else str(value)


def prepare_output_dir(
    out: str | Path, *, overwrite: bool, inputs: tuple[Path, ...] = (), create: bool = True
) -> Path:
    """A directory a command writes a model into: refused when it is (or lies inside, or
    holds) one of the command's ``inputs``, or is not empty unless ``overwrite``. With
    ``create`` it is then emptied (``overwrite``) and created; without, only checked."""
    out = Path(out)
    target = out.resolve()
    for src in inputs:
        src = Path(src).resolve()
        if target == src or src in target.parents or target in src.parents:
            raise RunError(
                f"out: {out} overlaps the input {src}; a command never writes into its own "
                "input: choose another --out"
            )
    if out.exists() and not out.is_dir():
        raise RunError(f"out: {out} is a file; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunError(
                f"out: {out} is not empty; choose another --out, or pass --overwrite to replace "
                "what it holds"
            )
        if create:
            shutil.rmtree(out)
    if not create:
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"out: cannot create {out}: {checkpoint.os_error_message(e, out)}") from None
    return out
