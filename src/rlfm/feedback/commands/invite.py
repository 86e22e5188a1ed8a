"""``rlfm label invite --db DB --email E --role labeler|researcher --project P``: add a person to a
project and print their one-time invite link (someone with a password already just gets the
role)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlfm.feedback.auth import invite
from rlfm.feedback.commands._common import DEFAULT_DB, DEFAULT_URL, require
from rlfm.feedback.db import open_db, project_by_name


@dataclass(frozen=True)
class Config:
    """Invite a labeler or researcher to a project."""

    db: str = DEFAULT_DB
    """The labelling database: a file path (SQLite) or an SQLAlchemy URL."""
    email: str = ""
    """The person's email address (their login)."""
    role: Literal["labeler", "researcher"] = "labeler"
    """labeler (labels items) or researcher (labels the gold set, sees agreement, screens)."""
    project: str = ""
    """The project they join."""
    url: str = DEFAULT_URL
    """Where the app is served, as people reach it: the invite link starts with it."""


def run(cfg: Config) -> str | None:
    """Add the membership; print and return the invite link (None for an existing account)."""
    require(cfg.email, "--email", "give the person's email address")
    require(cfg.project, "--project", "name the project they join")
    db = open_db(cfg.db, create=False)
    try:
        with db.write() as s:
            project = project_by_name(s, cfg.project)
            link = invite(s, cfg.email, project=project, role=cfg.role)
    finally:
        db.close()
    if link is None:
        print(
            f"{cfg.email.strip().lower()} is now a {cfg.role} of {cfg.project} (they have an account)"
        )
        return None
    url = cfg.url.rstrip("/") + link.path
    print(f"{cfg.role} {link.email} of {cfg.project}: invite link (one use, valid 7 days):\n{url}")
    return url
