"""Certificate lifecycle actions: renew, deploy, revoke and the bulk forms.

Literal paths (`bulk-*`) are POST-only and never collide with `/certificates/{id}` reads.
"""

from __future__ import annotations

from fastapi import APIRouter

from certctl.api.deps import ActorDep, AdminDep, ServicesDep
from certctl.domain.models.jobs import (
    ActionStatus,
    BulkReassignBody,
    BulkReassignResult,
    BulkRenewBody,
    BulkRenewResult,
    BulkRevokeBody,
    BulkRevokeResult,
    DeployBody,
    DeployResult,
    RenewResult,
    RevokeBody,
)

router = APIRouter(tags=["Certificates"])


@router.post("/api/v1/certificates/bulk-revoke")
async def bulk_revoke(body: BulkRevokeBody, services: ServicesDep, actor: AdminDep) -> BulkRevokeResult:
    return await services.certificate_actions.bulk_revoke(actor, body)


@router.post("/api/v1/est/certificates/bulk-revoke", tags=["EST"])
async def bulk_revoke_est(body: BulkRevokeBody, services: ServicesDep, actor: AdminDep) -> BulkRevokeResult:
    return await services.certificate_actions.bulk_revoke(actor, body, est_only=True)


@router.post("/api/v1/certificates/bulk-renew")
async def bulk_renew(body: BulkRenewBody, services: ServicesDep, actor: ActorDep) -> BulkRenewResult:
    return await services.certificate_actions.bulk_renew(actor, body)


@router.post("/api/v1/certificates/bulk-reassign")
async def bulk_reassign(body: BulkReassignBody, services: ServicesDep, actor: ActorDep) -> BulkReassignResult:
    return await services.certificate_actions.bulk_reassign(actor, body)


@router.post("/api/v1/certificates/{id}/renew", status_code=202)
async def renew(
    id: str, services: ServicesDep, actor: ActorDep, force: bool = False
) -> RenewResult:
    return await services.certificate_actions.renew(actor, id, force=force)


@router.post("/api/v1/certificates/{id}/deploy", status_code=202)
async def deploy(
    id: str, services: ServicesDep, actor: ActorDep, body: DeployBody | None = None
) -> DeployResult:
    return await services.certificate_actions.deploy(actor, id, body.target_id if body else None)


@router.post("/api/v1/certificates/{id}/revoke")
async def revoke(
    id: str, services: ServicesDep, actor: ActorDep, body: RevokeBody | None = None
) -> ActionStatus:
    return await services.certificate_actions.revoke(actor, id, (body or RevokeBody()).reason)
