"""Fixtures of the labelling app's tests: a database on SQLite and on a throwaway PostgreSQL
server, an app client, people and projects, a live server and headless Chromium."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from rlfm.feedback import auth
from rlfm.feedback import labels as lb
from rlfm.feedback.db import Base, Database, Project, User, open_db

# ---------------------------------------------------------------------------- PostgreSQL


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's initdb and pg_ctl: on PATH, else Debian's
    /usr/lib/postgresql/<version>/bin (newest first)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    url: str
    """URL of the server's "postgres" database (SQLAlchemy, psycopg driver)."""

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        dsn = self.url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def postgres_cluster(durable: bool = False) -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1 in a temporary folder (initdb + pg_ctl), stopped and
    removed after; ``durable=False`` (tests) turns fsync and synchronous commits off. PostgreSQL refuses to run as root: as root, the cluster belongs to the
    unprivileged user ``nobody`` and its commands run as that user (runuser). RuntimeError
    when no server binary exists."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL server binary (initdb, pg_ctl) found: apt-get install postgresql"
        )
    root = Path(tempfile.mkdtemp(prefix="rlfm-pg-"))
    root.chmod(0o755)
    data, log, pwfile = root / "data", root / "server.log", root / "pw"
    password = secrets.token_hex(16)
    pwfile.write_text(password + "\n")
    prefix: list[str] = []
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        for p in (root, pwfile):
            os.chown(p, nobody.pw_uid, nobody.pw_gid)
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        prefix = [runuser, "-u", "nobody", "--"]
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
         "--no-locale", "--auth=scram-sha-256", f"--pwfile={pwfile}"],
        check=True, capture_output=True, env=env, cwd=root,
    )  # fmt: skip
    port = free_port()
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c max_connections=200"
    if not durable:
        opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    started = subprocess.run(
        [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w",
         "-t", "60", "start"],
        capture_output=True, env=env, cwd=root, text=True,
    )  # fmt: skip
    if started.returncode != 0:
        detail = log.read_text() if log.exists() else started.stderr
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{detail}")
    try:
        yield PostgresServer(f"postgresql+psycopg://postgres:{password}@127.0.0.1:{port}/postgres")
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True, env=env, cwd=root,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server; the tests that need it are skipped, saying why, only
    where no server binary exists."""
    if postgres_bin() is None:
        msg = "no PostgreSQL server binary (initdb, pg_ctl) found: apt-get install postgresql"
        print(f"SKIP PostgreSQL tests: {msg}", file=sys.stderr)
        pytest.skip(msg)
    with postgres_cluster() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_db(postgres: PostgresServer) -> Iterator[Database]:
    """One migrated PostgreSQL database for the session (tests empty it: see ``db``)."""
    url = postgres.create_database(f"rlfm_{os.getpid()}")
    database = open_db(url)
    yield database
    database.close()


def _empty(database: Database) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with database.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, migrated labelling database: a SQLite file, and a PostgreSQL database."""
    if request.param == "sqlite":
        database = open_db(tmp_path / "labels.db")
        yield database
        database.close()
    else:
        database = request.getfixturevalue("postgres_db")
        _empty(database)
        yield database


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = open_db(tmp_path / "labels.db")
    yield database
    database.close()


# ---------------------------------------------------------------------------- people, projects

COMPLETIONS = [
    "Good my lord, I pray you, your lady sleeps in her chamber.",
    "Away, thou knave!",
    "She is gone to the orchard, sir.",
    "I know not.",
]


def add_project(db: Database, name: str = "p", *, items: int = 3, gold: int = 0, **kw) -> int:
    """A project with ``items`` ranking items of 4 outputs (ids i0, i1, ...) and ``gold`` gold
    items (g0, ...); its id."""
    with db.write() as s:
        p = lb.create_project(s, name, **kw)
        rows = [
            lb.check_import_row(
                {"id": f"i{n}", "prompt": f"Romeo.\nWhere is she {n}?\n\nNurse.\n",
                 "completions": COMPLETIONS}, f"row {n}", p.task)
            for n in range(items)
        ]  # fmt: skip
        lb.add_items(s, p, rows, gold=False, name="test")
        if gold:
            grows = [
                lb.check_import_row(
                    {"id": f"g{n}", "prompt": f"Juliet.\nGood night {n}!\n\nRomeo.\n",
                     "completions": COMPLETIONS}, f"gold {n}", p.task)
                for n in range(gold)
            ]  # fmt: skip
            lb.add_items(s, p, grows, gold=True, name="gold")
        return p.id


def add_person(
    db: Database,
    email: str,
    *,
    project: int | None = None,
    role: str = "labeler",
    admin: bool = False,
    password: str | None = None,
    self_assessment: str | None = "Any topic.",
) -> int:
    """A user (with ``password`` set, if given), a member of ``project``; their id."""
    from sqlalchemy import select

    from rlfm.feedback.db import Membership

    with db.write() as s:
        proj = s.get(Project, project) if project is not None else None
        auth.invite(s, email, admin=admin, project=proj, role=role if proj else None)
        user = s.scalar(select(User).where(User.email == email))
        assert user is not None
        if password is not None:
            user.password_hash = auth._hasher.hash(password)
        if proj is not None and self_assessment:
            m = s.scalar(
                select(Membership).where(
                    Membership.project_id == proj.id, Membership.user_id == user.id
                )
            )
            m.self_assessment = self_assessment
        return user.id


@dataclass
class Client:
    """A logged-in test client: ``http`` (Starlette's TestClient) and the session's CSRF token."""

    http: object
    csrf: str
    user_id: int

    def post(self, url: str, payload: object = None, **kw):
        headers = {"X-CSRF-Token": self.csrf, **kw.pop("headers", {})}
        if payload is not None:
            kw["content"] = json.dumps(payload)
            headers["Content-Type"] = "application/json"
        return self.http.post(url, headers=headers, **kw)

    def get(self, url: str, **kw):
        return self.http.get(url, **kw)


@pytest.fixture
def app_client(db: Database):
    """A factory of clients of the app on ``db``: ``app_client(user_id)`` is logged in as that
    user (a session made directly: logging in itself is tested in test_api.py);
    ``app_client()`` is anonymous."""
    from fastapi.testclient import TestClient

    from rlfm.feedback.app import SESSION_COOKIE, create_app

    app = create_app(db)
    clients = []

    def make(user_id: int | None = None, base_url: str = "http://testserver") -> Client:
        http = TestClient(app, base_url=base_url, follow_redirects=False)
        clients.append(http)
        csrf = ""
        if user_id is not None:
            with db.write() as s:
                user = s.get(User, user_id)
                token, row = auth.start_session(s, user)
                csrf = row.csrf_token
            http.cookies.set(SESSION_COOKIE, token)
        return Client(http, csrf, user_id or 0)

    yield make
    for c in clients:
        c.close()


def rank_payload(k: int = 4, ranking: list | None = None, **over) -> dict:
    """A valid ranking submission (shown order), with fields replaced by ``over``."""
    body = {
        "ranking": ranking if ranking is not None else list(range(k)),
        "ratings": [7 - i for i in range(k)],
        "flags": [dict.fromkeys(lb.FLAG_NAMES, False) for _ in range(k)],
        "notes": "",
        "time_ms": 1234,
    }
    body.update(over)
    return body


# ---------------------------------------------------------------------------- a live server


@dataclass
class LiveServer:
    url: str
    db_path: Path
    """The SQLite file served (for a database URL: the log file's folder)."""
    process: subprocess.Popen


@contextlib.contextmanager
def live_server(db: Path | str, log_dir: Path | None = None) -> Iterator[LiveServer]:
    """``rlfm label serve --db DB`` on 127.0.0.1 at a free port, as a user starts it, until the
    block ends (the server's output goes to ``serve.log`` beside a SQLite file, or in
    ``log_dir``)."""
    port = free_port()
    where = Path(db).parent if isinstance(db, Path) else Path(log_dir or tempfile.gettempdir())
    log_path = where / f"serve-{port}.log"
    log = open(log_path, "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlfm", "label", "serve", "--db", str(db), "--port", str(port),
         "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError(f"the server did not start: {log_path.read_text()}")
            time.sleep(0.2)
        yield LiveServer(url, db if isinstance(db, Path) else where, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by Playwright (never a downloaded browser)."""
    from rlfm.feedback.browser import chromium_path, launch

    path = chromium_path()
    if path is None:
        msg = "chromium not found (apt-get install chromium): browser tests skipped"
        print(f"SKIP {msg}", file=sys.stderr)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p, path)
        yield b
        b.close()
