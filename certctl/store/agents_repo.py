"""Agents: listing, dependency counts for retirement, the retire cascade and the staleness sweep."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.enums import NON_TERMINAL_JOB_STATUSES, AgentStatus, CertificateStatus
from certctl.store.rows import Row, page_rows
from certctl.store.schema import agents, certificate_target_mappings, deployment_targets, jobs, managed_certificates

_NON_TERMINAL = [s.value for s in NON_TERMINAL_JOB_STATUSES]


async def page_agents(conn: AsyncConnection, *, retired: bool, limit: int, offset: int) -> tuple[list[Row], int]:
    c = agents.c
    if retired:
        return await page_rows(
            conn, agents, c.retired_at.is_not(None), limit=limit, offset=offset,
            order_by=(c.retired_at.desc(), c.id),
        )
    return await page_rows(conn, agents, c.retired_at.is_(None), limit=limit, offset=offset)


async def name_taken(conn: AsyncConnection, name: str) -> bool:
    result = await conn.execute(select(agents.c.id).where(agents.c.name == name).limit(1))
    return result.first() is not None


async def dependency_counts(conn: AsyncConnection, agent_id: str) -> tuple[int, int, int]:
    """(active targets, certificates mapped to those targets, unfinished jobs bound to the agent)."""
    t, m, cert, j = deployment_targets.c, certificate_target_mappings.c, managed_certificates.c, jobs.c
    active_targets = and_(t.agent_id == agent_id, t.retired_at.is_(None))
    targets_q = select(func.count()).select_from(deployment_targets).where(active_targets)
    certs_q = (
        select(func.count(func.distinct(m.certificate_id)))
        .select_from(
            certificate_target_mappings.join(deployment_targets, t.id == m.target_id).join(
                managed_certificates, cert.id == m.certificate_id
            )
        )
        .where(active_targets, cert.status != CertificateStatus.ARCHIVED.value)
    )
    jobs_q = select(func.count()).select_from(jobs).where(j.agent_id == agent_id, j.status.in_(_NON_TERMINAL))
    counts = (await conn.execute(select(targets_q.scalar_subquery(), certs_q.scalar_subquery(),
                                        jobs_q.scalar_subquery()))).one()
    return int(counts[0]), int(counts[1]), int(counts[2])


async def retire_agent_targets(conn: AsyncConnection, agent_id: str, now: datetime, reason: str) -> list[str]:
    t = deployment_targets.c
    result = await conn.execute(
        update(deployment_targets)
        .where(t.agent_id == agent_id, t.retired_at.is_(None))
        .values(retired_at=now, retired_reason=reason, updated_at=now)
        .returning(t.id)
    )
    return sorted(result.scalars().all())


async def open_agent_jobs(conn: AsyncConnection, agent_id: str) -> list[Row]:
    """The agent's unfinished jobs, locked for the retire cascade."""
    j = jobs.c
    stmt = select(jobs).where(j.agent_id == agent_id, j.status.in_(_NON_TERMINAL)).order_by(j.id)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return list((await conn.execute(stmt)).mappings().all())


async def stale_agent_ids(conn: AsyncConnection, silent_since: datetime) -> list[str]:
    """Live agents (Online or Degraded) whose last heartbeat is older than `silent_since`, locked for update."""
    c = agents.c
    stmt = select(c.id).where(
        c.retired_at.is_(None),
        c.status.in_([AgentStatus.ONLINE.value, AgentStatus.DEGRADED.value]),
        (c.last_heartbeat_at < silent_since) | c.last_heartbeat_at.is_(None),
    ).order_by(c.id)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return list((await conn.execute(stmt)).scalars().all())


async def mark_offline(conn: AsyncConnection, agent_ids: Sequence[str], now: datetime) -> None:
    if agent_ids:
        await conn.execute(
            update(agents).where(agents.c.id.in_(list(agent_ids)))
            .values(status=AgentStatus.OFFLINE.value, updated_at=now)
        )
