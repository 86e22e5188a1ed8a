"""One checkpoint format for every stage: atomic, verified, resumable, loadable by Hugging Face.

Layout of ``<out>/checkpoints/step_N/``::

    config.json, model.safetensors, ...   save_pretrained weights (+ adapter files)
    tokenizer.json, ...                    the tokenizer, so the directory is a complete HF model
    README.md                              the model card (model_card.py; not in the manifest:
                                           it is rewritten with the final metrics)
    config.yaml                            the stage's resolved config
    trainer_state.pt                       step, optimizer, scheduler, data position, extras
    rng_rank{R}.pt                         RNG states of process R
    manifest.json                          size and SHA-256 of every file above, written last

A checkpoint is written into ``checkpoints/.tmp-step_N`` and renamed into place when complete,
so a process killed at any moment leaves the previous checkpoints intact. A checkpoint whose
files no longer match its manifest (a truncated or damaged file, a missing one) is skipped with
a warning and the newest intact one is used instead; one that predates manifests is accepted
when its trainer state loads. Only the newest ``keep`` checkpoints are kept. An OS fault while
saving (disk full, permission denied) leaves no partial directory and raises a RunError that
names the path and the newest intact checkpoint, on every process.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from rlfm.config import save_yaml
from rlfm.engine import Engine
from rlfm.errors import ModelError, RunError
from rlfm.model_card import CARD, write_model_card

_STEP = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.pt"
MANIFEST = "manifest.json"


def checkpoints(out: str | Path) -> list[Path]:
    """Checkpoint directories under ``out/checkpoints`` (renamed into place, so complete when
    written), oldest first. See :func:`latest_checkpoint` for the newest *intact* one."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name))]
    return [p for _, p in sorted(found)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name not in (MANIFEST, CARD))


def write_manifest(ckpt: Path) -> None:
    """Record size and SHA-256 of every file of ``ckpt`` in ``manifest.json`` (written last)."""
    entries = {
        str(p.relative_to(ckpt)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in _files(ckpt)
    }
    (ckpt / MANIFEST).write_text(json.dumps({"files": entries}, indent=1) + "\n", encoding="utf-8")


def verify(ckpt: str | Path, checksums: bool = True) -> str | None:
    """What is wrong with checkpoint ``ckpt`` (None when intact): a file missing, of the wrong
    size or (with ``checksums``) of the wrong content. A checkpoint without a manifest (written
    before manifests existed) is intact when its trainer state loads."""
    ckpt = Path(ckpt)
    manifest = ckpt / MANIFEST
    if not manifest.is_file():
        try:
            torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
        except Exception as e:  # torch raises several kinds for a damaged file
            return f"{STATE_FILE} cannot be read ({type(e).__name__}: {e})"
        return None
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} cannot be read ({e})"
    for name, entry in entries.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{name} has {size:,} bytes, the manifest says {entry['bytes']:,}"
        if checksums and _sha256(path) != entry["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest"
    return None


def latest_checkpoint(out: str | Path, checksums: bool = False) -> Path | None:
    """The newest intact checkpoint under ``out`` (a damaged newer one is skipped with a
    warning), or None."""
    for ckpt in reversed(checkpoints(out)):
        problem = verify(ckpt, checksums=checksums)
        if problem is None:
            return ckpt
        warnings.warn(
            f"checkpoint {ckpt} is damaged ({problem}); using the one before it", stacklevel=2
        )
    return None


def _fsync_tree(path: Path) -> None:
    """Flush every file below ``path`` to disk, so the rename publishes complete data."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def os_error_message(e: OSError, path: Path | str) -> str:
    """One line for an OS fault at ``path``: what happened, in words, and where."""
    what = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "read-only file system",
        errno.ENOTDIR: "a path component is not a directory",
        errno.EISDIR: "is a directory",
    }.get(e.errno or 0, e.strerror or str(e))
    return f"{what} ({e.filename or path})"


def save_checkpoint(
    out: str | Path,
    step: int,
    *,
    engine: Engine,
    model: torch.nn.Module,
    tokenizer: Any | None,
    config: Any,
    trainer_state: dict[str, Any],
    keep: int = 3,
    card: dict[str, Any] | None = None,
) -> Path:
    """Write ``out/checkpoints/step_{step}`` atomically with its manifest; prune to the newest
    ``keep``.

    Collective: every process must call it (each saves its RNG state). ``trainer_state`` holds
    whatever the stage needs to resume (optimizer and scheduler state dicts, data position, ...).
    ``card``: the fields of its model card (:func:`rlfm.model_card.card_text`), if any.
    """
    root = Path(out) / "checkpoints"
    final = root / f"step_{step}"
    tmp = root / f".tmp-step_{step}"
    problem: str | None = None
    try:
        if engine.is_main:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
    except OSError as e:
        problem = os_error_message(e, tmp)
    problem = engine.broadcast_object(problem)
    if problem is None:
        try:
            torch.save(engine.rng_state(), tmp / f"rng_rank{engine.rank}.pt")
        except OSError as e:
            problem = os_error_message(e, tmp)
    problem = _first_problem(engine, problem)
    if problem is None and engine.is_main:
        try:
            Engine.unwrap(model).save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            save_yaml(config, tmp / "config.yaml")
            if card is not None:
                write_model_card(tmp, shown_as=final, **card)
            torch.save({"step": step, **trainer_state}, tmp / STATE_FILE)
            write_manifest(tmp)
            _fsync_tree(tmp)
            _publish(tmp, final)
        except OSError as e:
            problem = os_error_message(e, tmp)
        except RuntimeError as e:  # torch.save reports a full disk as "unexpected pos ..."
            problem = f"{e} ({tmp}; is the disk full?)"
    problem = engine.broadcast_object(problem)
    if problem is not None:
        if engine.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        intact = latest_checkpoint(out)
        raise RunError(
            f"cannot write checkpoint {final}: {problem}. "
            + (
                f"The newest intact checkpoint is {intact}."
                if intact
                else "No checkpoint is saved."
            )
        )
    if engine.is_main:
        for stale in checkpoints(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
    engine.barrier()
    return final


def _first_problem(engine: Engine, problem: str | None) -> str | None:
    """A problem any process had (each process writes its own RNG file)."""
    return next((p for p in engine.gather_objects(problem) if p is not None), None)


def _publish(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; a checkpoint of the same step is swapped out, then removed."""
    if not final.exists():
        tmp.rename(final)
        return
    old = final.with_name(f".old-{final.name}")
    if old.exists():
        shutil.rmtree(old)
    final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old)


def load_trainer_state(ckpt: str | Path, engine: Engine) -> dict[str, Any]:
    """Read a checkpoint's trainer state and restore this process's RNG states."""
    ckpt = Path(ckpt)
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
    rng = ckpt / f"rng_rank{engine.rank}.pt"
    if rng.exists():
        engine.set_rng_state(torch.load(rng, map_location="cpu", weights_only=False))
    return state


def resolve_model_dir(path: str | Path) -> Path:
    """A loadable HF model directory for ``path``: the directory itself when it holds a model
    (``config.json``), or the newest intact checkpoint of an rlfm run directory."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model: {path} does not exist")
    if not path.is_dir():
        raise ModelError(f"model: {path} is not a directory")
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path
    ckpt = latest_checkpoint(path)
    if ckpt is not None:
        return ckpt
    if checkpoints(path):
        raise ModelError(f"model: every checkpoint under {path / 'checkpoints'} is damaged")
    raise ModelError(
        f"model: {path} holds neither a Hugging Face model (no config.json) nor rlfm "
        f"checkpoints (no {path / 'checkpoints'}/step_N)"
    )
