"""/api/v1/issuers: CRUD plus a configuration self-test. Configs are answered redacted."""

from __future__ import annotations

from fastapi import APIRouter, Response

from certctl.api.deps import ActorDep, PageDep, ServicesDep
from certctl.domain.models.common import Page
from certctl.domain.models.issuers import ConnectionTestResult, Issuer, IssuerCreate, IssuerUpdate

router = APIRouter(prefix="/api/v1/issuers", tags=["Issuers"])


@router.get("", summary="List issuers")
async def list_issuers(services: ServicesDep, page: PageDep) -> Page[Issuer]:
    items, total = await services.issuers.list(page)
    return Page[Issuer](data=items, total=total, page=page.page, per_page=page.per_page)


@router.post("", status_code=201, summary="Create issuer")
async def create_issuer(body: IssuerCreate, services: ServicesDep, actor: ActorDep) -> Issuer:
    return await services.issuers.create(actor, body)


@router.get("/{id}", summary="Get issuer")
async def get_issuer(id: str, services: ServicesDep) -> Issuer:
    return await services.issuers.get(id)


@router.put("/{id}", summary="Update issuer")
async def update_issuer(id: str, body: IssuerUpdate, services: ServicesDep, actor: ActorDep) -> Issuer:
    return await services.issuers.update(actor, id, body)


@router.delete("/{id}", status_code=204, summary="Delete issuer", responses={409: {"description": "in use"}})
async def delete_issuer(id: str, services: ServicesDep, actor: ActorDep) -> Response:
    await services.issuers.delete(actor, id)
    return Response(status_code=204)


@router.post("/{id}/test", summary="Test issuer configuration")
async def test_issuer(id: str, services: ServicesDep, actor: ActorDep) -> ConnectionTestResult:
    return await services.issuers.test(actor, id)
