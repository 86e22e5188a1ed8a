"""``rlfm label project create --db DB --name P [--k 4] [--ties] [--overlap 3]``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlfm.config import check
from rlfm.feedback.commands._common import DEFAULT_DB, require
from rlfm.feedback.db import open_db
from rlfm.feedback.labels import create_project


@dataclass(frozen=True)
class Config:
    """Create a labelling project."""

    db: str = DEFAULT_DB
    """The labelling database: a file path (SQLite) or an SQLAlchemy URL."""
    name: str = ""
    """The project's name (unique)."""
    task: Literal["rank", "toxicity"] = "rank"
    """rank: order K outputs, rate each 1-7, answer the yes/no questions; toxicity: rate the
    toxicity of the input and of each output (RealToxicityPrompts instructions)."""
    k: int = 4
    """Outputs per prompt sampled by `rlfm label import --policy` (imported files may hold any
    K ≥ 2)."""
    ties: bool = False
    """Let labelers rank outputs as equally good."""
    overlap: int = 3
    """How many labelers label each item."""
    pass_threshold: float = 0.6
    """Screening: the agreement with the gold set (0..1) a labeler needs to pass."""

    def __post_init__(self) -> None:
        check(self.k >= 2, "k", f"must be ≥ 2, got {self.k}")
        check(self.overlap >= 1, "overlap", f"must be ≥ 1, got {self.overlap}")
        check(
            0 <= self.pass_threshold <= 1,
            "pass_threshold",
            f"must be in [0, 1], got {self.pass_threshold}",
        )


def run(cfg: Config) -> int:
    """Create the project; returns its id."""
    require(cfg.name, "--name", "give the project a name")
    db = open_db(cfg.db)
    try:
        with db.write() as s:
            p = create_project(
                s,
                cfg.name,
                task=cfg.task,
                k=cfg.k,
                ties=cfg.ties,
                overlap=cfg.overlap,
                pass_threshold=cfg.pass_threshold,
            )
            pid = p.id
    finally:
        db.close()
    ties = "ties allowed" if cfg.ties else "no ties"
    print(
        f"project {cfg.name!r} (id {pid}): task {cfg.task}, K={cfg.k}, {ties}, "
        f"{cfg.overlap} labelers per item, pass threshold {cfg.pass_threshold:g}"
    )
    return pid
