"""Aggregates for the dashboard, computed by the database (GROUP BY / conditional sums), never by
loading rows. Day buckets are UTC calendar days; how a timestamp becomes a day differs per back end
(`_day`), everything else is portable SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Date, and_, case, cast, func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store.schema import agents, certificate_versions, jobs, managed_certificates, notification_events


def _day(conn: AsyncConnection, column: Any) -> ColumnElement[Any]:
    """The UTC calendar day of a timestamp column (a date, or `YYYY-MM-DD` text on SQLite)."""
    if conn.dialect.name == "postgresql":
        # A cast to date is several times cheaper than to_char over a million rows; str(date) is ISO.
        return cast(func.timezone("UTC", column), Date)
    # SQLite keeps naive-UTC ISO text ("YYYY-MM-DD HH:MM:SS.ffffff"); the day is its first 10 characters.
    return func.substr(column, 1, 10)


def _count_if(condition: ColumnElement[bool]) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


async def certificate_summary(
    conn: AsyncConnection, *, now: datetime, expiring_before: datetime, archived: str, revoked: str, expired: str
) -> dict[str, int]:
    c = managed_certificates.c
    live = c.status.not_in((archived, revoked))
    is_expired = and_(live, (c.status == expired) | (c.expires_at < now))
    is_expiring = and_(live, c.status != expired, c.expires_at >= now, c.expires_at < expiring_before)
    stmt = select(
        _count_if(c.status != archived).label("total"),
        _count_if(c.status == revoked).label("revoked"),
        _count_if(is_expired).label("expired"),
        _count_if(is_expiring).label("expiring"),
    )
    row = (await conn.execute(stmt)).one()
    return {key: int(row._mapping[key]) for key in ("total", "revoked", "expired", "expiring")}


async def agent_summary(conn: AsyncConnection, *, active_since: datetime) -> dict[str, int]:
    a = agents.c
    stmt = select(
        func.count().label("total"),
        _count_if(a.last_heartbeat_at >= active_since).label("active"),
    ).where(a.retired_at.is_(None))
    row = (await conn.execute(stmt)).one()
    total, active = int(row.total), int(row.active)
    return {"total": total, "active": active, "offline": total - active}


async def job_summary(
    conn: AsyncConnection, *, pending: Sequence[str], failed: str, completed: str
) -> dict[str, int]:
    j = jobs.c
    stmt = select(
        _count_if(j.status.in_(pending)).label("pending"),
        _count_if(j.status == failed).label("failed"),
        _count_if(j.status == completed).label("completed"),
    )
    row = (await conn.execute(stmt)).one()
    return {"pending": int(row.pending), "failed": int(row.failed), "completed": int(row.completed)}


async def notifications_with_status(conn: AsyncConnection, status: str) -> int:
    stmt = select(func.count()).select_from(notification_events).where(notification_events.c.status == status)
    return int((await conn.execute(stmt)).scalar_one())


async def certificates_by_status(conn: AsyncConnection) -> list[tuple[str, int]]:
    c = managed_certificates.c
    stmt = select(c.status, func.count()).group_by(c.status)
    return [(str(status), int(count)) for status, count in (await conn.execute(stmt)).all()]


async def expirations_by_day(
    conn: AsyncConnection, *, start: datetime, end: datetime, exclude_statuses: Sequence[str]
) -> dict[str, int]:
    c = managed_certificates.c
    day = _day(conn, c.expires_at).label("day")
    stmt = (
        select(day, func.count())
        .where(c.expires_at >= start, c.expires_at < end, c.status.not_in(exclude_statuses))
        .group_by(day)
    )
    return {str(d): int(n) for d, n in (await conn.execute(stmt)).all()}


async def job_outcomes_by_day(
    conn: AsyncConnection, *, since: datetime, completed: str, failed: str
) -> dict[str, tuple[int, int]]:
    """Per day: (completed, failed) jobs, by when they finished."""
    j = jobs.c
    finished_at = func.coalesce(j.completed_at, j.updated_at)
    day = _day(conn, finished_at).label("day")
    stmt = (
        select(
            day,
            _count_if(j.status == completed).label("completed"),
            _count_if(j.status == failed).label("failed"),
        )
        .where(j.status.in_((completed, failed)), finished_at >= since)
        .group_by(day)
    )
    return {str(row.day): (int(row.completed), int(row.failed)) for row in (await conn.execute(stmt)).all()}


async def issuances_by_day(conn: AsyncConnection, *, since: datetime) -> dict[str, int]:
    """Per day: certificate versions issued (every issuance and renewal stores one)."""
    v = certificate_versions.c
    day = _day(conn, v.created_at).label("day")
    stmt = select(day, func.count(literal(1))).where(v.created_at >= since).group_by(day)
    return {str(d): int(n) for d, n in (await conn.execute(stmt)).all()}
