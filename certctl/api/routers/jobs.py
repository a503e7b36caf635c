"""/api/v1/jobs: list (paged in SQL, newest first), get, cancel, approve, reject."""

from __future__ import annotations

from fastapi import APIRouter

from certctl.api.deps import ActorDep, PageDep, ServicesDep
from certctl.domain.models.common import Page
from certctl.domain.models.jobs import ActionStatus, Job, JobRejectBody

router = APIRouter(prefix="/api/v1/jobs", tags=["Jobs"])


@router.get("")
async def list_jobs(
    services: ServicesDep,
    page: PageDep,
    status: str | None = None,
    type: str | None = None,
    certificate_id: str | None = None,
    agent_id: str | None = None,
) -> Page[Job]:
    items, total = await services.jobs.list(
        page, status=status, job_type=type, certificate_id=certificate_id, agent_id=agent_id
    )
    return Page[Job](data=items, total=total, page=page.page, per_page=page.per_page)


@router.get("/{id}")
async def get_job(id: str, services: ServicesDep) -> Job:
    return await services.jobs.get(id)


@router.post("/{id}/cancel")
async def cancel_job(id: str, services: ServicesDep, actor: ActorDep) -> ActionStatus:
    await services.jobs.cancel(actor, id)
    return ActionStatus(status="job_cancelled")


@router.post("/{id}/approve")
async def approve_job(id: str, services: ServicesDep, actor: ActorDep) -> ActionStatus:
    await services.jobs.approve(actor, id)
    return ActionStatus(status="job_approved")


@router.post("/{id}/reject")
async def reject_job(
    id: str, services: ServicesDep, actor: ActorDep, body: JobRejectBody | None = None
) -> ActionStatus:
    await services.jobs.reject(actor, id, body.reason if body else "")
    return ActionStatus(status="job_rejected")
