"""Claiming due jobs for execution: one claimer per job, across processes and servers.

PostgreSQL: `FOR UPDATE SKIP LOCKED`, so concurrent claimers take disjoint jobs without waiting.
SQLite: writers are serialized by BEGIN IMMEDIATE, so a plain select-then-update in one
transaction is already exclusive.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store.rows import Row
from certctl.store.schema import jobs

_j = jobs.c


async def claim_due(
    conn: AsyncConnection,
    *,
    types: Sequence[str],
    now: datetime,
    limit: int,
    holder: str,
    lease_until: datetime,
) -> list[Row]:
    """Move up to `limit` due Pending jobs of `types` to Running for `holder`; returns them as they were."""
    stmt = (
        select(jobs)
        .where(_j.status == "Pending", _j.type.in_(types), _j.scheduled_at <= now)
        .order_by(_j.scheduled_at, _j.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    due = list((await conn.execute(stmt)).mappings())
    for job in due:
        await conn.execute(
            update(jobs).where(_j.id == job["id"]).values(
                status="Running", attempts=job["attempts"] + 1, started_at=now, updated_at=now,
                claimed_by=holder, lease_expires_at=lease_until,
            )
        )
    return due


async def expired_leases(conn: AsyncConnection, *, now: datetime, limit: int = 500) -> list[Row]:
    """Running jobs whose holder stopped renewing its lease (a crashed or killed server)."""
    stmt = (
        select(jobs)
        .where(_j.status == "Running", _j.lease_expires_at.is_not(None), _j.lease_expires_at < now)
        .order_by(_j.lease_expires_at, _j.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return list((await conn.execute(stmt)).mappings())
