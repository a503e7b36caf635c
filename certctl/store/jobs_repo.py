"""Jobs, approval requests, and the certificate/target rows the lifecycle actions read and change."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, select
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.enums import NON_TERMINAL_JOB_STATUSES
from certctl.store.rows import Row, get_row, get_row_for_update, insert_row, list_rows, page_rows, update_row
from certctl.store.schema import (
    certificate_profiles,
    certificate_target_mappings,
    certificate_versions,
    deployment_targets,
    issuance_approval_requests,
    jobs,
    managed_certificates,
    owners,
    renewal_policies,
    teams,
)

_NON_TERMINAL = [s.value for s in NON_TERMINAL_JOB_STATUSES]
# Bind-parameter lists stay well under SQLite's and asyncpg's limits (32k).
_IN_CHUNK = 1000


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ---- jobs -------------------------------------------------------------------------------------

async def insert_job(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await insert_row(conn, jobs, values)


async def get_job(conn: AsyncConnection, job_id: str, *, for_update: bool = False) -> Row | None:
    if for_update:
        return await get_row_for_update(conn, jobs, job_id)
    return await get_row(conn, jobs, job_id)


async def update_job(conn: AsyncConnection, job_id: str, values: Mapping[str, Any]) -> None:
    await update_row(conn, jobs, job_id, values)


async def list_jobs(
    conn: AsyncConnection,
    *,
    status: str | None = None,
    job_type: str | None = None,
    certificate_id: str | None = None,
    agent_id: str | None = None,
    limit: int,
    offset: int,
) -> tuple[list[Row], int]:
    c = jobs.c
    where: list[ColumnElement[bool]] = []
    if status:
        where.append(c.status == status)
    if job_type:
        where.append(c.type == job_type)
    if certificate_id:
        where.append(c.certificate_id == certificate_id)
    if agent_id:
        where.append(c.agent_id == agent_id)
    return await page_rows(
        conn, jobs, *where, limit=limit, offset=offset, order_by=(c.created_at.desc(), c.id.desc())
    )


async def open_jobs_for_certificate(
    conn: AsyncConnection, certificate_id: str, *, types: Sequence[str] | None = None, target_id: str | None = None
) -> list[Row]:
    """Non-terminal jobs of a certificate, oldest first, locked on PostgreSQL."""
    c = jobs.c
    stmt = select(jobs).where(c.certificate_id == certificate_id, c.status.in_(_NON_TERMINAL))
    if types is not None:
        stmt = stmt.where(c.type.in_(list(types)))
    if target_id is not None:
        stmt = stmt.where(c.target_id == target_id)
    stmt = stmt.order_by(c.created_at, c.id)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    result = await conn.execute(stmt)
    return list(result.mappings().all())


# ---- approval requests -------------------------------------------------------------------------

async def insert_approval(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await insert_row(conn, issuance_approval_requests, values)


async def get_approval(conn: AsyncConnection, approval_id: str, *, for_update: bool = False) -> Row | None:
    if for_update:
        return await get_row_for_update(conn, issuance_approval_requests, approval_id)
    return await get_row(conn, issuance_approval_requests, approval_id)


async def update_approval(conn: AsyncConnection, approval_id: str, values: Mapping[str, Any]) -> None:
    await update_row(conn, issuance_approval_requests, approval_id, values)


async def pending_approval_for_job(conn: AsyncConnection, job_id: str) -> Row | None:
    c = issuance_approval_requests.c
    found = await list_rows(conn, issuance_approval_requests, c.job_id == job_id, c.state == "pending", limit=1)
    return found[0] if found else None


async def latest_approval_for_job(conn: AsyncConnection, job_id: str) -> Row | None:
    c = issuance_approval_requests.c
    found = await list_rows(
        conn, issuance_approval_requests, c.job_id == job_id, order_by=(c.created_at.desc(), c.id.desc()), limit=1
    )
    return found[0] if found else None


async def list_approvals(
    conn: AsyncConnection,
    *,
    state: str | None = None,
    certificate_id: str | None = None,
    requested_by: str | None = None,
    limit: int,
    offset: int,
) -> tuple[list[Row], int]:
    c = issuance_approval_requests.c
    where: list[ColumnElement[bool]] = []
    if state:
        where.append(c.state == state)
    if certificate_id:
        where.append(c.certificate_id == certificate_id)
    if requested_by:
        where.append(c.requested_by == requested_by)
    return await page_rows(
        conn, issuance_approval_requests, *where, limit=limit, offset=offset,
        order_by=(c.created_at.desc(), c.id.desc()),
    )


# ---- certificates and what they point at --------------------------------------------------------

async def get_certificate(conn: AsyncConnection, certificate_id: str, *, for_update: bool = False) -> Row | None:
    if for_update:
        return await get_row_for_update(conn, managed_certificates, certificate_id)
    return await get_row(conn, managed_certificates, certificate_id)


async def update_certificate(conn: AsyncConnection, certificate_id: str, values: Mapping[str, Any]) -> None:
    await update_row(conn, managed_certificates, certificate_id, values)


async def has_version(conn: AsyncConnection, certificate_id: str) -> bool:
    stmt = select(exists().where(certificate_versions.c.certificate_id == certificate_id))
    return bool((await conn.execute(stmt)).scalar())


async def get_profile(conn: AsyncConnection, profile_id: str) -> Row | None:
    return await get_row(conn, certificate_profiles, profile_id)


async def get_renewal_policy(conn: AsyncConnection, policy_id: str) -> Row | None:
    return await get_row(conn, renewal_policies, policy_id)


async def get_owner(conn: AsyncConnection, owner_id: str) -> Row | None:
    return await get_row(conn, owners, owner_id)


async def get_team(conn: AsyncConnection, team_id: str) -> Row | None:
    return await get_row(conn, teams, team_id)


async def get_target(conn: AsyncConnection, target_id: str) -> Row | None:
    return await get_row(conn, deployment_targets, target_id)


async def mapped_targets(conn: AsyncConnection, certificate_id: str) -> list[Row]:
    """Every target mapped to the certificate (retired and disabled ones included), by name."""
    t = deployment_targets.c
    stmt = (
        select(deployment_targets)
        .join(certificate_target_mappings, certificate_target_mappings.c.target_id == t.id)
        .where(certificate_target_mappings.c.certificate_id == certificate_id)
        .order_by(t.name, t.id)
    )
    result = await conn.execute(stmt)
    return list(result.mappings().all())


async def is_mapped(conn: AsyncConnection, certificate_id: str, target_id: str) -> bool:
    m = certificate_target_mappings.c
    stmt = select(exists().where(m.certificate_id == certificate_id, m.target_id == target_id))
    return bool((await conn.execute(stmt)).scalar())


async def add_mapping(conn: AsyncConnection, certificate_id: str, target_id: str, at: datetime) -> None:
    await insert_row(
        conn, certificate_target_mappings,
        {"certificate_id": certificate_id, "target_id": target_id, "created_at": at},
    )


async def existing_certificate_ids(conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(ids):
        result = await conn.execute(select(managed_certificates.c.id).where(managed_certificates.c.id.in_(chunk)))
        found.update(result.scalars().all())
    return found


async def select_certificate_ids(
    conn: AsyncConnection,
    *,
    profile_id: str | None = None,
    owner_id: str | None = None,
    agent_id: str | None = None,
    issuer_id: str | None = None,
    team_id: str | None = None,
    certificate_ids: Sequence[str] | None = None,
    source: str | None = None,
) -> list[str]:
    """IDs of the certificates matching every given selector (AND), oldest first.

    `agent_id` matches certificates mapped to a target that agent runs. `certificate_ids`
    intersects with the rest; it is queried in chunks so a long list never exceeds the
    driver's bind-parameter limit.
    """
    c = managed_certificates.c
    where: list[ColumnElement[bool]] = []
    if profile_id:
        where.append(c.certificate_profile_id == profile_id)
    if owner_id:
        where.append(c.owner_id == owner_id)
    if issuer_id:
        where.append(c.issuer_id == issuer_id)
    if team_id:
        where.append(c.team_id == team_id)
    if source is not None:
        where.append(c.source == source)
    if agent_id:
        m, t = certificate_target_mappings.c, deployment_targets.c
        where.append(
            exists().where(and_(m.certificate_id == c.id, m.target_id == t.id, t.agent_id == agent_id))
        )
    base = select(c.id, c.created_at).where(*where)
    rows: list[tuple[Any, str]] = []
    if certificate_ids is None:
        result = await conn.execute(base)
        rows = [(r.created_at, r.id) for r in result]
    else:
        for chunk in _chunks(certificate_ids):
            result = await conn.execute(base.where(c.id.in_(chunk)))
            rows.extend((r.created_at, r.id) for r in result)
    rows.sort()
    return [row_id for _, row_id in rows]

