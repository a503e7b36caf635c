"""Endpoint health checks and their probe history."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store.rows import Row, insert_row, list_rows
from certctl.store.schema import endpoint_health_checks, endpoint_health_history

_h = endpoint_health_history.c


async def enabled_checks(conn: AsyncConnection) -> list[Row]:
    return await list_rows(conn, endpoint_health_checks, endpoint_health_checks.c.enabled.is_(True))


async def insert_history(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await insert_row(conn, endpoint_health_history, values)


async def history(conn: AsyncConnection, health_check_id: str, limit: int) -> tuple[list[Row], int]:
    """Newest first, at most `limit`; and how many there are."""
    stmt = (
        select(endpoint_health_history).where(_h.health_check_id == health_check_id)
        .order_by(_h.checked_at.desc(), _h.id.desc()).limit(limit)
    )
    found = list((await conn.execute(stmt)).mappings().all())
    if len(found) < limit:
        return found, len(found)
    count = select(func.count()).select_from(endpoint_health_history).where(_h.health_check_id == health_check_id)
    return found, int((await conn.execute(count)).scalar_one())


async def purge_history(conn: AsyncConnection, before: datetime) -> int:
    result = await conn.execute(delete(endpoint_health_history).where(_h.checked_at < before))
    return int(result.rowcount or 0)


async def status_counts(conn: AsyncConnection) -> dict[str, int]:
    c = endpoint_health_checks.c
    result = await conn.execute(select(c.status, func.count()).group_by(c.status))
    return {str(status): int(count) for status, count in result.all()}
