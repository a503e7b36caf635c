"""/api/v1/network-scan-targets: CRUD plus `POST /{id}/scan`, which scans now and answers when done."""

from __future__ import annotations

from fastapi import Response

from certctl.api.crud import crud_router
from certctl.api.deps import ActorDep, ServicesDep
from certctl.domain.models.discovery import (
    NetworkScanResult,
    NetworkScanTarget,
    NetworkScanTargetCreate,
    NetworkScanTargetUpdate,
)

router = crud_router(
    prefix="/api/v1/network-scan-targets",
    tag="Network Scan",
    service=lambda services: services.network_scan_targets,
    model=NetworkScanTarget,
    create_model=NetworkScanTargetCreate,
    update_model=NetworkScanTargetUpdate,
)


@router.post(
    "/{id}/scan", status_code=202, response_model=NetworkScanResult, summary="Trigger network scan",
    responses={200: {"description": "scan completed, no certificates found"},
               409: {"description": "this target is being scanned"}},
)
async def trigger_network_scan(
    id: str, services: ServicesDep, actor: ActorDep, response: Response
) -> NetworkScanResult:
    result = await services.network_scan.scan_target(actor, id)
    if result.certificates_found == 0:
        response.status_code = 200  # the reference: 202 with certificates, 200 without
    return result
