"""Leases: the scheduler's leader lock (one row per loop in `scheduler_leases`) and the renewal of job leases.

Leader lock: one atomic statement per attempt, the same on both back ends,

    INSERT INTO scheduler_leases ... ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, ...
        WHERE scheduler_leases.holder = :me OR scheduler_leases.expires_at < :now
    RETURNING holder

so a row is taken when it is missing, renewed when it is ours, and stolen only once it has expired.
When the WHERE fails nothing is written and nothing is returned: someone else holds a valid lease.
PostgreSQL resolves concurrent inserts of one name through the primary key; SQLite serializes writers
(BEGIN IMMEDIATE).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store.rows import Row
from certctl.store.schema import jobs, scheduler_leases

_l = scheduler_leases.c
_j = jobs.c


async def try_acquire(conn: AsyncConnection, name: str, holder: str, *, now: datetime, until: datetime) -> bool:
    """Take, renew or steal (if expired) the lease `name` for `holder` until `until`; True when held."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(scheduler_leases).values(name=name, holder=holder, expires_at=until, updated_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[_l.name],
        set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at,
              "updated_at": stmt.excluded.updated_at},
        where=(_l.holder == holder) | (_l.expires_at < now),
    ).returning(_l.holder)
    taken = (await conn.execute(stmt)).scalar_one_or_none()
    return taken == holder


async def renew(
    conn: AsyncConnection, names: Sequence[str], holder: str, *, now: datetime, until: datetime
) -> list[str]:
    """Extend the still-valid leases of `names` held by `holder`; returns the names still held.

    An expired lease is not revived here: someone may have taken it over already (try_acquire does that)."""
    if not names:
        return []
    result = await conn.execute(
        update(scheduler_leases)
        .where(_l.name.in_(list(names)), _l.holder == holder, _l.expires_at >= now)
        .values(expires_at=until, updated_at=now)
        .returning(_l.name)
    )
    return sorted(result.scalars().all())


async def release(conn: AsyncConnection, names: Sequence[str], holder: str) -> None:
    """Give leases up (shutdown), so another server takes over at its next tick rather than after expiry."""
    if names:
        await conn.execute(delete(scheduler_leases).where(_l.name.in_(list(names)), _l.holder == holder))


async def all_leases(conn: AsyncConnection) -> list[Row]:
    return list((await conn.execute(select(scheduler_leases).order_by(_l.name))).mappings())


async def renew_job_leases(
    conn: AsyncConnection, job_ids: Sequence[str], holder: str, *, now: datetime, until: datetime
) -> list[str]:
    """Extend the leases of Running jobs this holder still owns; returns those ids.

    A lease that has already expired is never revived: the reaper may be requeueing that job, and a
    requeued job belongs to whoever claims it next."""
    if not job_ids:
        return []
    result = await conn.execute(
        update(jobs)
        .where(_j.id.in_(list(job_ids)), _j.status == "Running", _j.claimed_by == holder,
               _j.lease_expires_at >= now)
        .values(lease_expires_at=until)
        .returning(_j.id)
    )
    return sorted(result.scalars().all())
