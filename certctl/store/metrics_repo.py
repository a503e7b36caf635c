"""Aggregates read at each metrics scrape: one GROUP BY each, on indexed columns."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store.schema import deployment_targets, jobs


async def job_queue(conn: AsyncConnection, statuses: Sequence[str]) -> list[tuple[str, str, int, datetime | None]]:
    """(type, status, count, oldest created_at) of the jobs in `statuses`."""
    j = jobs.c
    stmt = (
        select(j.type, j.status, func.count(), func.min(j.created_at))
        .where(j.status.in_(statuses))
        .group_by(j.type, j.status)
    )
    return [(str(t), str(s), int(n), oldest) for t, s, n, oldest in (await conn.execute(stmt)).all()]


async def target_type(conn: AsyncConnection, target_id: str | None) -> str:
    """A deployment target's type (the label of the deployment counters); `unknown` once it is gone."""
    if target_id is None:
        return "unknown"
    stmt = select(deployment_targets.c.type).where(deployment_targets.c.id == target_id)
    found = (await conn.execute(stmt)).scalar_one_or_none()
    return str(found) if found is not None else "unknown"
