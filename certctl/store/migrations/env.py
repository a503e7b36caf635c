"""Alembic environment: runs migrations on the async engine handed in by certctl.store.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from certctl.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `certctl db upgrade`, which supplies a connection")
_run(connection)
