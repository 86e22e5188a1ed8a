"""Alembic environment: rlfm passes an open connection (``config.attributes["connection"]``)
from :func:`rlfm.feedback.db.migrate`; the migration runs inside its transaction."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from rlfm.feedback.db import Base

config = context.config
connection = config.attributes.get("connection")


def run(conn: object) -> None:
    context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run(connection)
else:  # the `alembic` command line, with sqlalchemy.url set
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        run(conn)
