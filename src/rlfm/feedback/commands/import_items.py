"""``rlfm label import``: add items to a project, from a file or sampled from a policy.

    rlfm label import --db DB --project P --completions file.jsonl
    rlfm label import --db DB --project P --prompts prompts.jsonl --policy runs/demo/sft --k 4

``--completions``: one object a line, ``{"prompt": "...", "completions": ["...", ...]}`` (any
K ≥ 2; optional ``"id"`` and ``"meta"``; a row without ``completions`` asks for a written
demonstration). ``--prompts``: rows ``{"prompt": ...}`` (optional ``"id"``, ``"meta"``); the
policy (a model directory, checkpoint or run) samples K replies per prompt with rlfm's sampler
(rollout.py); duplicate replies of a prompt are kept once, and a prompt left with fewer than two
different replies is not imported (the count is printed). ``--gold`` marks the items as the
screening set. A bad row stops the import naming the file and row, and nothing of that file is
stored (one transaction).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlfm.errors import ConfigError, DataError
from rlfm.feedback.commands._common import DEFAULT_DB, require
from rlfm.feedback.db import open_db, project_by_name
from rlfm.feedback.labels import ImportedItem, add_items, check_import_row, import_file


@dataclass(frozen=True)
class Config:
    """Import items to label: completions from a file, or prompts sampled by a policy."""

    db: str = DEFAULT_DB
    """The labelling database: a file path (SQLite) or an SQLAlchemy URL."""
    project: str = ""
    """The project the items go to."""
    completions: Path | None = None
    """A JSONL file of {"prompt", "completions"} rows."""
    prompts: Path | None = None
    """A JSONL file of {"prompt"} rows whose completions --policy samples."""
    policy: Path | None = None
    """The policy that samples completions for --prompts: a model directory, checkpoint or run."""
    k: int | None = None
    """Completions sampled per prompt (default: the project's K)."""
    gold: bool = False
    """Mark these items as the gold (screening) set: researchers label them for reference and
    every labeler of the project gets them."""
    max_new_tokens: int = 48
    """--policy: tokens sampled per completion at most."""
    temperature: float = 1.0
    """--policy: sampling temperature."""
    clean: bool = True
    """--policy: cut each reply at its first blank line and trim it (a blank line ends a speech
    in the built-in task's play layout); --no-clean keeps the text as sampled."""
    seed: int = 0
    """--policy: seed of the sampler."""
    device: str = "auto"
    """--policy: auto, cpu or cuda."""
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    """--policy: compute precision of the sampling."""

    def __post_init__(self) -> None:
        if self.k is not None and self.k < 2:
            raise ConfigError(f"k: must be ≥ 2, got {self.k}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: must be ≥ 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ConfigError(
                f"temperature: must be > 0 to sample K different replies, got {self.temperature}"
            )


def read_prompts(path: Path) -> list[ImportedItem]:
    """The rows of a prompts file, checked ({"prompt"}, optional "id", "meta")."""
    from rlfm.data.rows import file_rows

    if not path.is_file():
        raise DataError(f"--prompts {path}: no such file")
    rows = file_rows(path)
    if not rows:
        raise DataError(f"{path}: holds no rows")
    items = []
    for r in rows:
        if isinstance(r.value, dict) and "completions" in r.value:
            raise DataError(
                f"{r.where}: has 'completions'; --prompts takes prompts only (import completions "
                "with --completions)"
            )
        items.append(check_import_row(r.value, r.where, "rank"))
    return items


def sample_items(
    prompts: list[ImportedItem],
    policy: Path,
    k: int,
    *,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    clean: bool = True,
    seed: int = 0,
    device: str = "auto",
    precision: str = "fp32",
) -> tuple[list[ImportedItem], int]:
    """``k`` sampled completions for each prompt (distinct ones, in sampled order); prompts with
    fewer than two distinct replies are dropped: (items, prompts dropped)."""
    import torch

    from rlfm.checkpoint import resolve_model_dir
    from rlfm.data.labelers import clean_reply
    from rlfm.engine import Engine
    from rlfm.models.adapters import load_model, sampling_model
    from rlfm.models.heads import load_model_tokenizer
    from rlfm.rollout import generate

    path = resolve_model_dir(policy)
    engine = Engine.create(device, precision)  # type: ignore[arg-type]
    tokenizer = load_model_tokenizer(path)
    model = sampling_model(load_model(path)).to(engine.device).eval()
    g = torch.Generator(device=engine.device).manual_seed(seed)
    flat = [it.prompt for it in prompts for _ in range(k)]
    with engine.autocast():
        texts = generate(
            model,
            tokenizer,
            flat,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            batch_size=64,
            generator=g,
        ).texts
    out, dropped = [], 0
    for j, it in enumerate(prompts):
        replies = [clean_reply(t) if clean else t for t in texts[j * k : (j + 1) * k]]
        distinct = list(dict.fromkeys(replies))
        if len(distinct) < 2:
            dropped += 1
            continue
        out.append(ImportedItem(it.prompt, distinct, "rank", it.external_id, it.meta, it.source))
    return out, dropped


def run(cfg: Config) -> int:
    """Import; print and return the number of items added."""
    require(cfg.project, "--project", "name the project the items go to")
    if (cfg.completions is None) == (cfg.prompts is None):
        raise ConfigError("give either --completions FILE or --prompts FILE --policy MODEL")
    if cfg.prompts is not None and cfg.policy is None:
        raise ConfigError("--prompts needs --policy: the model that samples the completions")
    if cfg.completions is not None and cfg.policy is not None:
        raise ConfigError("--policy samples completions for --prompts; --completions has them")
    db = open_db(cfg.db, create=False)
    try:
        if cfg.completions is not None:
            with db.write() as s:
                project = project_by_name(s, cfg.project)
                n = import_file(s, project, cfg.completions, gold=cfg.gold)
            print(f"imported {n} items from {cfg.completions} into {cfg.project!r}")
            return n
        assert cfg.prompts is not None and cfg.policy is not None
        with db.read() as s:
            project = project_by_name(s, cfg.project)
            k, task = cfg.k or project.k, project.task
        prompts = read_prompts(cfg.prompts)  # every row checked before the model is loaded
        items, dropped = sample_items(
            prompts,
            cfg.policy,
            k,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            clean=cfg.clean,
            seed=cfg.seed,
            device=cfg.device,
            precision=cfg.precision,
        )
        items = [
            ImportedItem(i.prompt, i.completions, task, i.external_id, i.meta, i.source)
            for i in items
        ]
        with db.write() as s:
            project = project_by_name(s, cfg.project)
            n = add_items(s, project, items, gold=cfg.gold, name=str(cfg.prompts))
    finally:
        db.close()
    note = f"; {dropped} prompts left out (fewer than 2 different replies)" if dropped else ""
    print(
        f"imported {n} items ({k} sampled completions per prompt) from {cfg.prompts} into {cfg.project!r}{note}"
    )
    return n
