"""One checkpoint format for every stage: atomic, resumable, loadable by Hugging Face.

Layout of ``<out>/checkpoints/step_N/``::

    config.json, model.safetensors, ...   save_pretrained weights (+ adapter files)
    tokenizer.json, ...                    the tokenizer, so the directory is a complete HF model
    config.yaml                            the stage's resolved config
    trainer_state.pt                       step, optimizer, scheduler, data position, extras
    rng_rank{R}.pt                         RNG states of process R

A checkpoint is written into ``checkpoints/.tmp-step_N`` and renamed into place when complete,
so a process killed at any moment leaves the previous checkpoints intact; a directory named
``step_N`` is always complete. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from rlfm.config import save_yaml
from rlfm.engine import Engine
from rlfm.errors import ModelError

_STEP = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.pt"


def checkpoints(out: str | Path) -> list[Path]:
    """Complete checkpoints under ``out/checkpoints``, oldest first."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint under ``out``, or None."""
    found = checkpoints(out)
    return found[-1] if found else None


def _fsync_tree(path: Path) -> None:
    """Flush every file below ``path`` to disk, so the rename publishes complete data."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


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
) -> Path:
    """Write ``out/checkpoints/step_{step}`` atomically; prune to the newest ``keep``.

    Collective: every process must call it (each saves its RNG state). ``trainer_state`` holds
    whatever the stage needs to resume (optimizer and scheduler state dicts, data position, ...).
    """
    root = Path(out) / "checkpoints"
    final = root / f"step_{step}"
    tmp = root / f".tmp-step_{step}"
    if engine.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    engine.barrier()
    torch.save(engine.rng_state(), tmp / f"rng_rank{engine.rank}.pt")
    engine.barrier()
    if engine.is_main:
        Engine.unwrap(model).save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_yaml(config, tmp / "config.yaml")
        torch.save({"step": step, **trainer_state}, tmp / STATE_FILE)
        _fsync_tree(tmp)
        if final.exists():  # the same step saved again: swap, then drop the old copy
            old = root / f".old-step_{step}"
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        for stale in checkpoints(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
    engine.barrier()
    return final


def load_trainer_state(ckpt: str | Path, engine: Engine) -> dict[str, Any]:
    """Read a checkpoint's trainer state and restore this process's RNG states."""
    ckpt = Path(ckpt)
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
    rng = ckpt / f"rng_rank{engine.rank}.pt"
    if rng.exists():
        engine.set_rng_state(torch.load(rng, map_location="cpu", weights_only=False))
    return state


def save_training(
    out: str | Path,
    step: int,
    *,
    engine: Engine,
    model: torch.nn.Module,
    tokenizer: Any | None,
    config: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data: Any,
    keep: int = 3,
) -> Path:
    """:func:`save_checkpoint` with the trainer state of a supervised stage: the optimizer, the
    learning-rate schedule and the data position (``data.state_dict()``)."""
    return save_checkpoint(
        out,
        step,
        engine=engine,
        model=model,
        tokenizer=tokenizer,
        config=config,
        trainer_state={
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "data": data.state_dict(),
        },
        keep=keep,
    )


def resume_training(
    ckpt: str | Path,
    engine: Engine,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data: Any,
) -> int:
    """Restore what :func:`save_training` wrote (and this process's RNG); returns the step."""
    state = load_trainer_state(ckpt, engine)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    data.load_state_dict(state["data"])
    return int(state["step"])


def resolve_model_dir(path: str | Path) -> Path:
    """A loadable HF model directory for ``path``: the directory itself when it holds a model
    (``config.json``), or the newest checkpoint of an rlfm run directory."""
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
    raise ModelError(
        f"model: {path} holds neither a Hugging Face model (no config.json) nor rlfm "
        f"checkpoints (no {path / 'checkpoints'}/step_N)"
    )
