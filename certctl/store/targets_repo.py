"""Deployment targets: live listing, per-agent name lookups, unfinished-job counts."""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.enums import NON_TERMINAL_JOB_STATUSES
from certctl.store.rows import Row, page_rows
from certctl.store.schema import deployment_targets, jobs


async def page_live(conn: AsyncConnection, *, agent_id: str | None, limit: int, offset: int) -> tuple[list[Row], int]:
    t = deployment_targets.c
    where: list[ColumnElement[bool]] = [t.retired_at.is_(None)]
    if agent_id is not None:
        where.append(t.agent_id == agent_id)
    return await page_rows(conn, deployment_targets, *where, limit=limit, offset=offset)


async def live_name_owner(conn: AsyncConnection, agent_id: str, name: str) -> str | None:
    """The id of the live target of this agent with this name, if any."""
    t = deployment_targets.c
    result = await conn.execute(
        select(t.id).where(t.agent_id == agent_id, t.name == name, t.retired_at.is_(None)).limit(1)
    )
    return result.scalar_one_or_none()


async def unfinished_job_count(conn: AsyncConnection, target_id: str) -> int:
    j = jobs.c
    statuses = [s.value for s in NON_TERMINAL_JOB_STATUSES]
    result = await conn.execute(
        select(func.count()).select_from(jobs).where(j.target_id == target_id, j.status.in_(statuses))
    )
    return int(result.scalar_one())
