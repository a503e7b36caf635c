"""Sealed connector configs (issuers and targets), read for the start-up key check."""

from __future__ import annotations

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store.schema import deployment_targets, issuers

SEALED_TABLES: dict[str, Table] = {"issuer": issuers, "target": deployment_targets}


async def sealed_samples(conn: AsyncConnection, per_end: int) -> list[tuple[str, str, str]]:
    """(kind, id, sealed) for the `per_end` newest and oldest sealed rows of each table.

    Opening a sealed value costs one PBKDF2 derivation (a fresh salt per value), so start-up
    samples instead of opening every row: a lost or wrong key fails every row alike.
    """
    found: dict[tuple[str, str], str] = {}
    for kind, table in SEALED_TABLES.items():
        c = table.c
        for order in (c.updated_at.desc(), c.updated_at.asc()):
            stmt = (
                select(c.id, c.encrypted_config)
                .where(c.encrypted_config.is_not(None))
                .order_by(order, c.id)
                .limit(per_end)
            )
            for row_id, blob in (await conn.execute(stmt)).all():
                found[(kind, row_id)] = blob
    return [(kind, row_id, blob) for (kind, row_id), blob in sorted(found.items())]
