"""Shared by the scheduler, renewal-scan, job-maintenance and crash-safety tests: apps on a FakeClock,
and small readers of jobs, certificates and audit rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from certctl.domain.clock import FakeClock
from certctl.store import jobs_repo
from certctl.store.schema import audit_events, certificate_versions, issuance_approval_requests
from tests.conftest import Api, make_settings, start_api, stop_api


def fake_clock() -> FakeClock:
    # Near real time, so rows the factories stamp with the wall clock sit where the fake clock expects them.
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@asynccontextmanager
async def clocked_api(
    database_url: str, data_dir: Path, clock: FakeClock | None = None, **overrides: Any
) -> AsyncIterator[Api]:
    """An app whose services read time from a FakeClock; the scheduler stays off unless `extra` turns it on."""
    settings = make_settings(database_url, data_dir, **overrides)
    running, lifespan = await start_api(settings, clock=clock or fake_clock())
    try:
        yield running
    finally:
        await stop_api(running, lifespan)


def clock_of(api: Api) -> FakeClock:
    clock = api.services.ctx.clock
    assert isinstance(clock, FakeClock)
    return clock


async def job(api: Api, job_id: str) -> dict[str, Any]:
    async with api.services.ctx.db.read() as conn:
        row = await jobs_repo.get_job(conn, job_id)
    assert row is not None, job_id
    return dict(row)


async def cert(api: Api, cert_id: str) -> dict[str, Any]:
    async with api.services.ctx.db.read() as conn:
        row = await jobs_repo.get_certificate(conn, cert_id)
    assert row is not None, cert_id
    return dict(row)


async def update_job(api: Api, job_id: str, **values: Any) -> None:
    async with api.services.ctx.db.transaction() as conn:
        await jobs_repo.update_job(conn, job_id, values)


async def jobs_of(api: Api, cert_id: str) -> list[dict[str, Any]]:
    async with api.services.ctx.db.read() as conn:
        found, _ = await jobs_repo.list_jobs(conn, certificate_id=cert_id, limit=100, offset=0)
    return [dict(r) for r in reversed(found)]  # oldest first


async def versions_of_job(api: Api, job_id: str) -> int:
    async with api.services.ctx.db.read() as conn:
        stmt = select(func.count()).select_from(certificate_versions).where(certificate_versions.c.job_id == job_id)
        return int((await conn.execute(stmt)).scalar_one())


async def approvals_of(api: Api, cert_id: str) -> list[dict[str, Any]]:
    c = issuance_approval_requests.c
    async with api.services.ctx.db.read() as conn:
        rows = (await conn.execute(
            select(issuance_approval_requests).where(c.certificate_id == cert_id).order_by(c.created_at, c.id)
        )).mappings().all()
    return [dict(r) for r in rows]


async def audit_rows(api: Api, action: str, resource_id: str | None = None) -> list[dict[str, Any]]:
    await api.services.audit_sink.flush()
    c = audit_events.c
    stmt = select(audit_events).where(c.action == action).order_by(c.timestamp, c.id)
    if resource_id is not None:
        stmt = stmt.where(c.resource_id == resource_id)
    async with api.services.ctx.db.read() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]
