"""``rlfm label export --db DB --project P --format rankings|pairs --out prefs.jsonl
[--screened-only] [--min-agreement X]``: what ``rlfm reward train --data`` reads
(feedback/export.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlfm.config import check
from rlfm.feedback.commands._common import DEFAULT_DB, require
from rlfm.feedback.export import Aggregate, ExportResult, Format, export_labels


@dataclass(frozen=True)
class Config:
    """Export labels for training."""

    db: str = DEFAULT_DB
    """The labelling database: a file path (SQLite) or an SQLAlchemy URL."""
    project: str = ""
    """The project whose labels to export."""
    format: Format = "rankings"
    """rankings or pairs (reward model data), demonstrations (SFT rows), toxicity."""
    out: Path = Path("prefs.jsonl")
    """The JSONL file to write (replaced atomically)."""
    screened_only: bool = False
    """Only labels of labelers who pass screening (`rlfm label stats` shows who does)."""
    min_agreement: float | None = None
    """Only items whose labelers agree on at least this share of output pairs (0..1)."""
    aggregate: Aggregate = "none"
    """none: one ranking per labeler; ranked-pairs or bradley-terry: one per item, combined."""

    def __post_init__(self) -> None:
        check(
            self.min_agreement is None or 0 <= self.min_agreement <= 1,
            "min_agreement",
            f"must be in [0, 1], got {self.min_agreement}",
        )


def run(cfg: Config) -> ExportResult:
    require(cfg.project, "--project", "name the project to export")
    r = export_labels(
        cfg.db,
        cfg.project,
        cfg.out,
        cfg.format,
        screened_only=cfg.screened_only,
        min_agreement=cfg.min_agreement,
        aggregate=cfg.aggregate,
    )
    left = f" ({r.left_out} of {r.labels} labels left out by the filters)" if r.left_out else ""
    print(f"wrote {r.rows} {cfg.format} rows from {r.labels - r.left_out} labels to {r.path}{left}")
    return r
