"""/api/v1/approvals: issuance approval requests and their two-person decisions."""

from __future__ import annotations

from fastapi import APIRouter

from certctl.api.deps import ActorDep, PageDep, ServicesDep
from certctl.domain.models.common import Page
from certctl.domain.models.jobs import ApprovalDecisionBody, ApprovalDecisionResult, ApprovalRequest

router = APIRouter(prefix="/api/v1/approvals", tags=["Approvals"])


@router.get("")
async def list_approvals(
    services: ServicesDep,
    page: PageDep,
    state: str | None = None,
    certificate_id: str | None = None,
    requested_by: str | None = None,
) -> Page[ApprovalRequest]:
    items, total = await services.approvals.list(
        page, state=state, certificate_id=certificate_id, requested_by=requested_by
    )
    return Page[ApprovalRequest](data=items, total=total, page=page.page, per_page=page.per_page)


@router.get("/{id}")
async def get_approval(id: str, services: ServicesDep) -> ApprovalRequest:
    return await services.approvals.get(id)


@router.post("/{id}/approve")
async def approve(
    id: str, services: ServicesDep, actor: ActorDep, body: ApprovalDecisionBody | None = None
) -> ApprovalDecisionResult:
    return await services.approvals.approve(actor, id, body.note if body else "")


@router.post("/{id}/reject")
async def reject(
    id: str, services: ServicesDep, actor: ActorDep, body: ApprovalDecisionBody | None = None
) -> ApprovalDecisionResult:
    return await services.approvals.reject(actor, id, body.note if body else "")
