"""``rlfm label serve --db runs/labels.db [--host 127.0.0.1] [--port 8000]``: the labelling app.

The schema is migrated on start. Passwords and session cookies must not cross a network in
clear text, so serving plain HTTP is for the loopback address (one machine, or behind an SSH
tunnel); for a team, give ``--certfile``/``--keyfile`` (HTTPS by uvicorn), or put a TLS proxy in
front and pass ``--behind-proxy`` (it then trusts the proxy's X-Forwarded-Proto/-For headers
from ``--forwarded-allow-ips``). Session cookies are marked Secure on HTTPS.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from rlfm.config import check
from rlfm.errors import ConfigError
from rlfm.feedback.commands._common import DEFAULT_DB


@dataclass(frozen=True)
class Config:
    """Serve the labelling web app."""

    db: str = DEFAULT_DB
    """The labelling database: a file path (SQLite, created if new) or an SQLAlchemy URL."""
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8000
    """Port to listen on."""
    certfile: Path | None = None
    """TLS certificate (PEM): serve HTTPS."""
    keyfile: Path | None = None
    """TLS private key (PEM) of --certfile."""
    behind_proxy: bool = False
    """A TLS-terminating reverse proxy forwards to this server: trust its X-Forwarded-* headers."""
    forwarded_allow_ips: str = "127.0.0.1"
    """With --behind-proxy: the proxy's address(es), comma-separated."""
    log_level: str = "info"
    """uvicorn's log level (warning: no access log)."""

    def __post_init__(self) -> None:
        check(1 <= self.port <= 65535, "port", f"must be in 1..65535, got {self.port}")
        check(
            (self.certfile is None) == (self.keyfile is None),
            "certfile",
            "--certfile and --keyfile go together",
        )


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8, ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(cfg: Config) -> None:
    import uvicorn

    from rlfm.feedback.app import create_app
    from rlfm.feedback.db import User, open_db

    tls = cfg.certfile is not None
    if not (is_loopback(cfg.host) or tls or cfg.behind_proxy):
        raise ConfigError(
            f"host: serving plain HTTP on {cfg.host} would send passwords and session cookies "
            "in clear text; give --certfile and --keyfile, or --behind-proxy when a TLS proxy "
            "forwards to this server"
        )
    for f in (cfg.certfile, cfg.keyfile):
        if f is not None and not f.is_file():
            raise ConfigError(f"certfile: {f} does not exist")
    db = open_db(cfg.db)
    with db.read() as s:
        admins = s.scalar(select(func.count()).select_from(User).where(User.is_admin))
    scheme = "https" if tls else "http"
    print(f"rlfm label serve: {scheme}://{cfg.host}:{cfg.port} (database {db.display})", flush=True)
    if not admins:
        print(
            f"no admin yet: rlfm label admin create --db {cfg.db} --email YOU@EXAMPLE.ORG "
            f"--url {scheme}://{cfg.host}:{cfg.port}",
            flush=True,
        )
    try:
        uvicorn.run(
            create_app(db),
            host=cfg.host,
            port=cfg.port,
            ssl_certfile=str(cfg.certfile) if cfg.certfile else None,
            ssl_keyfile=str(cfg.keyfile) if cfg.keyfile else None,
            proxy_headers=cfg.behind_proxy,
            forwarded_allow_ips=cfg.forwarded_allow_ips if cfg.behind_proxy else None,
            log_level=cfg.log_level,
            server_header=False,
        )
    finally:
        db.close()
