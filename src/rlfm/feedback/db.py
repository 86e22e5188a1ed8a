"""The labelling database: tables, connection, migrations, transactions.

``--db`` is a file path (SQLite, in WAL mode) or any SQLAlchemy URL
(``postgresql+psycopg://user@host/db``). :func:`open_db` connects and brings the schema to the
newest Alembic revision (``feedback/migrations/``), so every ``rlfm label`` command and the
server apply migrations on start.

Transactions (:meth:`Database.write`, :meth:`Database.read`) are the unit of safety: a
submission, an import file or an invite is stored whole or not at all. On SQLite every write
transaction starts with ``BEGIN IMMEDIATE`` (it takes the write lock up front and waits for it,
up to ``busy_timeout``, instead of failing when two writers meet). Races that reads cannot
exclude are closed by unique constraints: one annotation per assignment, one assignment per
(item, labeler), one holder per (item, overlap slot).

Tables (one row each):
    users         a person: email, Argon2 password hash (NULL until the invite is used), admin?
    projects      name, task (rank or toxicity), K, ties allowed, overlap, screening threshold
    memberships   (project, user) with a role (researcher or labeler) and the self-assessment
    invites       one-time invite token (SHA-256 stored), role, project, expiry, used_at
    sessions      login session token (SHA-256 stored), CSRF token, expiry
    login_attempts  failed and successful logins, for rate limiting
    items         a prompt and its outputs (kind rank, toxicity or demonstration), gold?
    assignments   an item given to a labeler: the shown order (permutation), slot, status
    annotations   a submitted label, in the item's original output order; time on task
    demo_ratings  a researcher's 1-7 rating of a labeler's demonstration
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from rlfm.errors import RlfmError


class LabelError(RlfmError, ValueError):
    """A labelling request a user can get wrong (unknown project, bad submission, ...).

    ``status`` is the HTTP status the web app answers with (400, 403, 404, 409, 422, 429).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def utcnow() -> datetime:
    """Now, in UTC, without tzinfo (stored the same way on SQLite and PostgreSQL)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    task: Mapped[str] = mapped_column(String(20), default="rank")
    k: Mapped[int] = mapped_column(Integer, default=4)
    ties: Mapped[bool] = mapped_column(Boolean, default=False)
    overlap: Mapped[int] = mapped_column(Integer, default=3)
    pass_threshold: Mapped[float] = mapped_column(Float, default=0.6)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(20))
    self_assessment: Mapped[str | None] = mapped_column(Text, nullable=True)


class Invite(Base):
    __tablename__ = "invites"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class LoginSession(Base):
    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class LoginAttempt(Base):
    __tablename__ = "login_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    ip: Mapped[str] = mapped_column(String(64), index=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("project_id", "external_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    kind: Mapped[str] = mapped_column(String(20))
    prompt: Mapped[str] = mapped_column(Text)
    completions: Mapped[list[str]] = mapped_column(JSON)
    meta: Mapped[Any] = mapped_column(JSON, nullable=True)
    gold: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("item_id", "user_id"),
        UniqueConstraint("item_id", "slot"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="open")
    permutation: Mapped[list[int]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Annotation(Base):
    __tablename__ = "annotations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(
        ForeignKey("assignments.id", ondelete="CASCADE"), unique=True
    )
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    label: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The validated label, outputs in the item's original order (labels.py documents it)."""
    digest: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the label: a repeated submission of the same label is recognised."""
    client_ms: Mapped[int] = mapped_column(Integer)
    """Time on task the page measured (visible time only), in milliseconds."""
    server_ms: Mapped[int] = mapped_column(Integer)
    """Time from the assignment being given to its submission, in milliseconds."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class DemoRating(Base):
    __tablename__ = "demo_ratings"
    __table_args__ = (UniqueConstraint("annotation_id", "rater_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    score: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# ---------------------------------------------------------------------------- connecting


def db_url(db: str | Path) -> str:
    """The SQLAlchemy URL of ``--db``: a URL as it is, a path as ``sqlite:///<absolute path>``."""
    s = str(db)
    if "://" in s:
        try:
            make_url(s)
        except ArgumentError as e:
            raise LabelError(f"--db {s!r}: not a valid database URL ({e})") from None
        return s
    return f"sqlite:///{Path(s).expanduser().resolve()}"


def _sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


class Database:
    """A connected, migrated labelling database. ``write()``/``read()`` give transactions."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._write = sessionmaker(
            engine.execution_options(rlfm_write=True), expire_on_commit=False
        )
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._writer: contextlib.AbstractContextManager = (
            threading.RLock() if self.is_sqlite else contextlib.nullcontext()
        )

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed at the end of the block, rolled back on any error."""
        # SQLite has one writer at a time: threads of this process queue on a lock (first come,
        # first served) instead of SQLite's busy handler, which polls with growing sleeps
        with self._writer, self._write() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A read transaction, ended at the end of the block (objects read stay usable)."""
        with self._read() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()

    @property
    def display(self) -> str:
        """The URL with any password hidden, for messages."""
        return make_url(self.url).render_as_string(hide_password=True)


def open_db(db: str | Path, *, create: bool = True, pool_size: int = 10) -> Database:
    """Connect to ``db`` (path or URL) and migrate its schema to the newest revision.

    ``create=False`` refuses a SQLite path that does not exist (commands that only read or add
    to an existing database say so instead of creating an empty one).
    """
    url = db_url(db)
    path = _sqlite_path(url)
    if path is not None:
        if not path.exists() and not create:
            raise LabelError(
                f"--db {db}: no such database file (create it with `rlfm label admin create` "
                "or `rlfm label project create`)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        try:
            engine = create_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
        except ModuleNotFoundError as e:
            raise LabelError(f"--db {db}: the database driver is not installed ({e})") from None
        except ArgumentError as e:
            raise LabelError(f"--db {db}: {e}") from None
    database = Database(url, engine)
    try:
        migrate(database)
    except OperationalError as e:
        engine.dispose()
        reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
        raise LabelError(f"--db {database.display}: cannot open the database: {reason}") from None
    return database


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # rlfm issues BEGIN itself (below); pysqlite's own transaction handling is switched off
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process kill
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    write = conn.get_execution_options().get("rlfm_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# ---------------------------------------------------------------------------- migrations


def alembic_config(database: Database) -> Any:
    """An Alembic config for ``database`` (script location: this package's migrations/)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    return cfg


def migrate(database: Database, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (default: the newest), in one transaction."""
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = alembic_config(database)
    heads = set(ScriptDirectory.from_config(cfg).get_heads())
    with database.engine.connect() as conn:
        current = _current_revision(conn)
        if current is not None and current not in _known_revisions(cfg):
            raise LabelError(
                f"--db {database.display}: schema revision {current!r} is newer than this "
                "version of rlfm knows; upgrade rlfm"
            )
        if current in heads and revision == "head":
            return
    with database.engine.execution_options(rlfm_write=True).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def _current_revision(conn: Any) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    from sqlalchemy import text

    rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows[0] if rows else None


def _known_revisions(cfg: Any) -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}


# ---------------------------------------------------------------------------- lookups


def project_by_name(session: Session, name: str) -> Project:
    """The project called ``name``; LabelError listing the projects there are otherwise."""
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        names = session.scalars(select(Project.name).order_by(Project.name)).all()
        have = ", ".join(repr(n) for n in names) if names else "none yet"
        raise LabelError(f"--project {name!r}: no such project (projects: {have})", 404)
    return project
