"""/api/v1/targets: CRUD (delete retires) plus a configuration and agent-liveness test."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from certctl.api.deps import ActorDep, PageDep, ServicesDep
from certctl.domain.models.common import Page
from certctl.domain.models.issuers import ConnectionTestResult
from certctl.domain.models.targets import DeploymentTarget, TargetCreate, TargetUpdate

router = APIRouter(prefix="/api/v1/targets", tags=["Targets"])


@router.get("", summary="List live targets")
async def list_targets(
    services: ServicesDep, page: PageDep, agent_id: Annotated[str | None, Query(max_length=128)] = None
) -> Page[DeploymentTarget]:
    items, total = await services.targets.list(page, agent_id=agent_id)
    return Page[DeploymentTarget](data=items, total=total, page=page.page, per_page=page.per_page)


@router.post("", status_code=201, summary="Create target")
async def create_target(body: TargetCreate, services: ServicesDep, actor: ActorDep) -> DeploymentTarget:
    return await services.targets.create(actor, body)


@router.get("/{id}", summary="Get target")
async def get_target(id: str, services: ServicesDep) -> DeploymentTarget:
    return await services.targets.get(id)


@router.put("/{id}", summary="Update target")
async def update_target(id: str, body: TargetUpdate, services: ServicesDep, actor: ActorDep) -> DeploymentTarget:
    return await services.targets.update(actor, id, body)


@router.delete("/{id}", status_code=204, summary="Retire target", responses={409: {"description": "unfinished jobs"}})
async def delete_target(
    id: str, services: ServicesDep, actor: ActorDep, reason: Annotated[str | None, Query(max_length=1024)] = None
) -> Response:
    await services.targets.delete(actor, id, reason)
    return Response(status_code=204)


@router.post("/{id}/test", summary="Test target configuration and agent liveness")
async def test_target(id: str, services: ServicesDep, actor: ActorDep) -> ConnectionTestResult:
    return await services.targets.test(actor, id)
