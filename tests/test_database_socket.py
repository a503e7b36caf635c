"""PostgreSQL on the same host over its Unix socket (`postgresql://user@/db?host=/run/postgresql`), the connection
docs/operator/postgresql.md recommends: the SQLAlchemy engine and the ACME server's own asyncpg connections both
reach the database through the socket, not TCP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from certctl.store import acme_repo
from certctl.store.database import Database
from tests.conftest import PG_ADMIN_URL, _pg_admin


async def _socket_directory() -> str:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        directories = await conn.fetchval("SHOW unix_socket_directories")
    finally:
        await conn.close()
    return str(directories).split(",")[0].strip()


@pytest.fixture
async def socket_url(pg_template: str) -> AsyncIterator[str]:
    name = f"certctl_sock_{uuid.uuid4().hex[:10]}"
    await _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield f"postgresql://postgres@/{name}?host={await _socket_directory()}"
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# A backend on a Unix socket has no client address; over TCP it has 127.0.0.1.
CLIENT_ADDRESS = "SELECT client_addr IS NULL AND client_port = -1 FROM pg_stat_activity WHERE pid = pg_backend_pid()"


async def test_a_unix_socket_url_reaches_postgresql_through_the_socket(socket_url: str) -> None:
    db = Database(socket_url)
    try:
        async with db.transaction() as conn:
            over_socket = (await conn.exec_driver_sql(CLIENT_ADDRESS)).scalar()
            tables = (await conn.exec_driver_sql("SELECT count(*) FROM alembic_version")).scalar()
        assert over_socket is True and tables == 1
        pool = acme_repo.DriverPool(db, 1)
        async with pool.connection() as raw:
            assert await raw.fetchval(CLIENT_ADDRESS) is True
        await pool.aclose()
    finally:
        await db.dispose()
