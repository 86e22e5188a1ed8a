"""``rlfm label admin create --db DB --email E``: make an admin; print their one-time invite link.

There is no default password and no sign-up: the admin opens the link and sets a password.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlfm.feedback.auth import invite
from rlfm.feedback.commands._common import DEFAULT_DB, DEFAULT_URL, require
from rlfm.feedback.db import open_db


@dataclass(frozen=True)
class Config:
    """Create an admin account and print its invite link."""

    db: str = DEFAULT_DB
    """The labelling database: a file path (SQLite) or an SQLAlchemy URL."""
    email: str = ""
    """The admin's email address (their login)."""
    url: str = DEFAULT_URL
    """Where the app is served, as people reach it: the invite link starts with it."""


def run(cfg: Config) -> str | None:
    """Create the admin; print and return the invite link (None: they have a password already)."""
    require(cfg.email, "--email", "give the admin's email address")
    db = open_db(cfg.db)
    try:
        with db.write() as s:
            link = invite(s, cfg.email, admin=True)
    finally:
        db.close()
    if link is None:
        print(f"{cfg.email.strip().lower()} is now an admin (they log in with their password)")
        return None
    url = cfg.url.rstrip("/") + link.path
    print(f"admin {link.email}: invite link (one use, valid 7 days):\n{url}")
    return url
