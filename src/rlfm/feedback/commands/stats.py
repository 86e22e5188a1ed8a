"""``rlfm label stats --db DB --project P``: agreement between labelers and screening, in the
terminal (feedback/stats.py defines every figure)."""

from __future__ import annotations

from dataclasses import dataclass

from rlfm.feedback.commands._common import DEFAULT_DB, require
from rlfm.feedback.db import open_db, project_by_name
from rlfm.feedback.stats import ProjectStats, format_stats, project_stats


@dataclass(frozen=True)
class Config:
    """Print a project's agreement statistics."""

    db: str = DEFAULT_DB
    """The labelling database: a file path (SQLite) or an SQLAlchemy URL."""
    project: str = ""
    """The project."""
    per_item: bool = False
    """Also list every item: its labelers' agreement and their aggregate ranking."""


def run(cfg: Config) -> ProjectStats:
    require(cfg.project, "--project", "name the project")
    db = open_db(cfg.db, create=False)
    try:
        with db.read() as s:
            st = project_stats(s, project_by_name(s, cfg.project))
    finally:
        db.close()
    print(format_stats(st, per_item=cfg.per_item))
    return st
