"""/api/v1/health-checks: endpoint TLS health checks, their summary, history and acknowledgement."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response

from certctl.api.deps import ActorDep, PageDep, ServicesDep
from certctl.domain.models.common import Page
from certctl.domain.models.health_checks import (
    EndpointHealthCheck,
    HealthCheckAcknowledge,
    HealthCheckCreate,
    HealthCheckUpdate,
    HealthHistoryPage,
    HealthSummary,
)

router = APIRouter(prefix="/api/v1/health-checks", tags=["Health Monitoring"])


@router.get("", response_model=Page[EndpointHealthCheck], summary="List endpoint health checks")
async def list_health_checks(
    services: ServicesDep, page: PageDep, status: str | None = None, certificate_id: str | None = None,
    network_scan_target_id: str | None = None, enabled: bool | None = None,
) -> Any:
    items, total = await services.health_checks.list_checks(
        page, status=status, certificate_id=certificate_id, network_scan_target_id=network_scan_target_id,
        enabled=enabled,
    )
    return Page[EndpointHealthCheck](data=items, total=total, page=page.page, per_page=page.per_page)


@router.post("", status_code=201, response_model=EndpointHealthCheck, summary="Create health check")
async def create_health_check(body: HealthCheckCreate, services: ServicesDep, actor: ActorDep) -> Any:
    return await services.health_checks.create(actor, body)


@router.get("/summary", response_model=HealthSummary, summary="Health check summary")
async def health_check_summary(services: ServicesDep) -> Any:
    return await services.health_checks.summary()


@router.get("/{id}", response_model=EndpointHealthCheck, summary="Get health check")
async def get_health_check(id: str, services: ServicesDep) -> Any:
    return await services.health_checks.get(id)


@router.put("/{id}", response_model=EndpointHealthCheck, summary="Update health check")
async def update_health_check(id: str, body: HealthCheckUpdate, services: ServicesDep, actor: ActorDep) -> Any:
    return await services.health_checks.update(actor, id, body)


@router.delete("/{id}", status_code=204, summary="Delete health check")
async def delete_health_check(id: str, services: ServicesDep, actor: ActorDep) -> Response:
    await services.health_checks.delete(actor, id)
    return Response(status_code=204)


@router.post("/{id}/acknowledge", response_model=EndpointHealthCheck, summary="Acknowledge incident")
async def acknowledge_health_check(
    id: str, services: ServicesDep, actor: ActorDep,
    body: Annotated[HealthCheckAcknowledge | None, Body()] = None,
) -> Any:
    return await services.health_checks.acknowledge(actor, id, body or HealthCheckAcknowledge())


@router.get("/{id}/history", response_model=HealthHistoryPage, summary="Get probe history")
async def health_check_history(
    id: str, services: ServicesDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    return await services.health_checks.history(id, limit)
