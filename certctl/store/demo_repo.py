"""Bulk writes for the `--demo` inventory: one lock, one emptiness check, executemany inserts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store.schema import managed_certificates

# Arbitrary constant naming "demo seeding" among PostgreSQL advisory locks.
_SEED_LOCK_ID = 0x63657274_64656D6F  # "certdemo"


async def lock_for_seeding(conn: AsyncConnection) -> None:
    """Serialise seeders (several server workers may boot together) until the transaction ends.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: a write statement that touches no row
    still takes the database's write lock, so a second seeder waits (busy_timeout) instead of
    reading a snapshot that is about to change.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:lock_id)"), {"lock_id": _SEED_LOCK_ID})
    else:
        await conn.execute(text("UPDATE managed_certificates SET id = id WHERE 1 = 0"))


async def certificate_count(conn: AsyncConnection) -> int:
    result = await conn.execute(select(func.count()).select_from(managed_certificates))
    return int(result.scalar_one())


async def existing_ids(conn: AsyncConnection, table: Table, ids: Iterable[str]) -> set[str]:
    wanted = list(ids)
    if not wanted:
        return set()
    result = await conn.execute(select(table.c.id).where(table.c.id.in_(wanted)))
    return {str(row[0]) for row in result}


async def bulk_insert(conn: AsyncConnection, batches: Sequence[tuple[Table, Sequence[Mapping[str, Any]]]]) -> None:
    """Insert each table's rows with one executemany, in the given (foreign-key) order."""
    for table, rows in batches:
        if rows:
            await conn.execute(table.insert(), [dict(row) for row in rows])
