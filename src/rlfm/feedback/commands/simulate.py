"""``rlfm label simulate --db DB --project P --labelers 3 [--seed S] [--gold gold.json]``: the
built-in simulated labelers answer every open assignment through the web form's code path
(feedback/simulate.py). ``--gold`` makes them perceive the gold labeler a pipeline saved (the
text rule plus fluency under its language model) instead of the text rule alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlfm.config import check
from rlfm.feedback.commands._common import DEFAULT_DB, require
from rlfm.feedback.simulate import SimulationResult, simulate


@dataclass(frozen=True)
class Config:
    """Let simulated labelers label a project."""

    db: str = DEFAULT_DB
    """The labelling database: a file path (SQLite) or an SQLAlchemy URL."""
    project: str = ""
    """The project to label."""
    labelers: int = 3
    """How many simulated labelers (careful, long-reply-loving, hasty, then again)."""
    seed: int = 0
    """Seed of their noise and of the shown order."""
    noise: float = 1.0
    """Scale of the labelers' noise (data/labelers.py)."""
    gold: Path | None = None
    """A gold labeler file (a pipeline's labels/gold.json: the text rule plus fluency under its
    language model). Default: the built-in text rule alone."""

    def __post_init__(self) -> None:
        check(self.labelers >= 1, "labelers", f"must be ≥ 1, got {self.labelers}")
        check(self.noise >= 0, "noise", f"must be ≥ 0, got {self.noise}")


def run(cfg: Config) -> SimulationResult:
    require(cfg.project, "--project", "name the project to label")
    from rlfm.data.labelers import text_gold

    gold = text_gold
    if cfg.gold is not None:
        from rlfm.gold import load_gold

        gold = load_gold(cfg.gold)
    result = simulate(cfg.db, cfg.project, cfg.labelers, cfg.seed, cfg.noise, gold)
    for email, n in result.submitted.items():
        print(f"{email}: {n} labels submitted")
    if result.gold_reference:
        print(f"simulated-researcher@rlfm.invalid: {result.gold_reference} gold items labelled")
    if result.skipped_demonstrations:
        print(
            f"{result.skipped_demonstrations} demonstration assignments skipped (they need a person)"
        )
    print(f"{result.total} labels submitted in project {cfg.project!r}")
    return result
