"""The CA hierarchy of a local issuer (admin only): /issuers/{id}/intermediates and /intermediates/{id}."""

from __future__ import annotations

from fastapi import APIRouter

from certctl.api.deps import AdminDep, ServicesDep
from certctl.domain.models.intermediates import (
    IntermediateCA,
    IntermediateCACreate,
    IntermediateCAList,
    RetireIntermediateBody,
    RetireIntermediateResult,
)

router = APIRouter(tags=["IntermediateCAs"])


@router.post("/api/v1/issuers/{id}/intermediates", status_code=201,
             summary="Register a root or sign a child CA under the issuer")
async def create_intermediate(
    id: str, body: IntermediateCACreate, services: ServicesDep, actor: AdminDep
) -> IntermediateCA:
    return await services.intermediates.create(actor, id, body)


@router.get("/api/v1/issuers/{id}/intermediates", summary="List the CA hierarchy of an issuer")
async def list_intermediates(id: str, services: ServicesDep, actor: AdminDep) -> IntermediateCAList:
    return IntermediateCAList(data=await services.intermediates.list(id))


@router.get("/api/v1/intermediates/{id}", summary="Get one CA of a hierarchy")
async def get_intermediate(id: str, services: ServicesDep, actor: AdminDep) -> IntermediateCA:
    return await services.intermediates.get(id)


@router.post("/api/v1/intermediates/{id}/retire", summary="Retire a CA (active -> retiring -> retired)")
async def retire_intermediate(
    id: str, services: ServicesDep, actor: AdminDep, body: RetireIntermediateBody | None = None
) -> RetireIntermediateResult:
    return await services.intermediates.retire(actor, id, body or RetireIntermediateBody())
