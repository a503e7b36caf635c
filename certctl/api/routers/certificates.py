"""/api/v1/certificates: the managed-certificate inventory, its versions, deployments and exports.

The list is the hottest read of the API, so it is encoded straight to JSON bytes with orjson
(only the requested fields); single records go through the typed `ManagedCertificate` model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pydantic
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from certctl.api.deps import ActorDep, PageDep, ServicesDep, actor_of, services_of
from certctl.api.errors import error_response
from certctl.api.hot_routes import HotHandler, json_body, model_response
from certctl.domain.enums import CertificateStatus
from certctl.domain.errors import RateLimitedError, ValidationError
from certctl.domain.models.certificates import (
    CertificateCreate,
    CertificateDeployment,
    CertificateList,
    CertificateListParams,
    CertificateUpdate,
    CertificateVersion,
    ManagedCertificate,
    PemExport,
    Pkcs12ExportRequest,
)
from certctl.domain.models.common import Page, PageParams
from certctl.services.certificates import CertificateFilter, CertificateListing, ListQuery

router = APIRouter(prefix="/api/v1/certificates", tags=["Certificates"])

_JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
_LIST_DESCRIPTION = """\
Filters: status, environment, owner_id, team_id, issuer_id, agent_id (certificates mapped to that
agent's targets), profile_id, expires_before/expires_after, created_after, updated_after (ISO 8601).
`sort=[-]field` (notAfter, expiresAt, createdAt, updatedAt, commonName, name, status, environment),
`fields=a,b` (sparse objects; `id` always included).

Two paging modes: `page`/`per_page` → `{data, total, page, per_page}`; or keyset paging with
`page_size` (and `cursor` from the previous response) → `{data, next_cursor, page_size}`, which
stays fast at any depth and works with every sort and filter."""


def _json(body: object, status_code: int = 200) -> Response:
    return Response(orjson.dumps(body, option=_JSON_OPTIONS), status_code=status_code,
                    media_type="application/json")


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI `parameters` for a query-string model parsed by hand in the handler."""
    schema = model.model_json_schema()
    return [
        {"name": name, "in": "query", "required": False, "schema": prop}
        for name, prop in schema["properties"].items()
    ]


@router.get(
    "", response_model=CertificateList, summary="List certificates", description=_LIST_DESCRIPTION,
    openapi_extra={"parameters": _query_parameters(CertificateListParams)},
)
async def list_certificates(request: Request) -> Response:
    # The query string is validated by the model in one pass (FastAPI's per-parameter machinery
    # costs more than the database round trip on this endpoint); errors keep the usual 400 body.
    try:
        params = CertificateListParams.model_validate(dict(request.query_params))
    except pydantic.ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    services = services_of(request)
    status = params.status
    if status is not None:
        try:
            status = CertificateStatus.parse(status).value
        except ValueError as exc:
            raise ValidationError(f"status: {exc}") from None
    query = ListQuery(
        flt=CertificateFilter(
            status=status, environment=params.environment, owner_id=params.owner_id, team_id=params.team_id,
            issuer_id=params.issuer_id, agent_id=params.agent_id, profile_id=params.profile_id,
            expires_before=params.expires_before, expires_after=params.expires_after,
            created_after=params.created_after, updated_after=params.updated_after,
        ),
        sort=params.sort,
        fields=params.fields,
    )
    if params.cursor is not None or params.page_size is not None:
        if params.page is not None or params.per_page is not None:
            raise ValidationError("use either page/per_page or cursor/page_size, not both")
        size = params.page_size or 50
        listing: CertificateListing = await services.certificates.list_keyset(query, params.cursor, size)
        return _json({"data": listing.items, "next_cursor": listing.next_cursor, "page_size": size})
    paging = PageParams(page=params.page or 1, per_page=params.per_page or 50)
    listing = await services.certificates.list_page(query, paging)
    return _json({"data": listing.items, "total": listing.total, "page": paging.page, "per_page": paging.per_page})


@router.post("", status_code=201, summary="Create certificate")
async def create_certificate(body: CertificateCreate, services: ServicesDep, actor: ActorDep) -> ManagedCertificate:
    return await services.certificates.create(actor, body)


@router.get("/{id}", summary="Get certificate")
async def get_certificate(id: str, services: ServicesDep) -> ManagedCertificate:
    return await services.certificates.get(id)


# The inventory's busiest calls skip FastAPI's routing (see api/hot_routes.py); the list parses its own query.
async def _create_certificate_hot(request: Request) -> Response:
    body = await json_body(request, CertificateCreate)
    created = await create_certificate(body, services_of(request), actor_of(request))
    return model_response(created, status_code=201)


async def _get_certificate_hot(request: Request) -> Response:
    return model_response(await get_certificate(request.path_params["id"], services_of(request)))


HOT_HANDLERS: dict[Callable[..., Any], HotHandler] = {
    list_certificates: list_certificates, create_certificate: _create_certificate_hot,
    get_certificate: _get_certificate_hot,
}


@router.put("/{id}", summary="Update certificate (partial; status is changed by renew/revoke/archive)")
async def update_certificate(
    id: str, body: CertificateUpdate, services: ServicesDep, actor: ActorDep
) -> ManagedCertificate:
    return await services.certificates.update(actor, id, body)


@router.delete("/{id}", status_code=204, summary="Archive certificate")
async def archive_certificate(id: str, services: ServicesDep, actor: ActorDep) -> Response:
    await services.certificates.archive(actor, id)
    return Response(status_code=204)


@router.get("/{id}/versions", summary="List certificate versions (newest first)")
async def list_versions(id: str, services: ServicesDep, page: PageDep) -> Page[CertificateVersion]:
    items, total = await services.certificates.versions(id, page)
    return Page[CertificateVersion](data=items, total=total, page=page.page, per_page=page.per_page)


@router.get("/{id}/deployments", summary="List the certificate's deployment jobs (newest first)")
async def list_deployments(id: str, services: ServicesDep, page: PageDep) -> Page[CertificateDeployment]:
    items, total = await services.certificates.deployments(id, page)
    return Page[CertificateDeployment](data=items, total=total, page=page.page, per_page=page.per_page)


def _rate_limited(exc: RateLimitedError) -> Response:
    wait = int(exc.extra.get("retry_after_seconds", 1))
    return error_response(429, exc.message, headers={"Retry-After": str(wait)}, extra=exc.extra)


@router.get(
    "/{id}/export/pem",
    response_model=PemExport,
    summary="Export certificate as PEM (no private key)",
    responses={200: {"content": {"application/x-pem-file": {}}}, 429: {"description": "export limit reached"}},
)
async def export_pem(
    id: str, services: ServicesDep, actor: ActorDep, download: bool = False
) -> Response:
    try:
        exported = await services.certificates.export_pem(actor, id)
    except RateLimitedError as exc:
        return _rate_limited(exc)
    if download:
        return Response(
            exported.full_pem,
            media_type="application/x-pem-file",
            headers={"Content-Disposition": f'attachment; filename="{_safe_filename(id)}.pem"'},
        )
    return _json(exported.model_dump())


@router.post(
    "/{id}/export/pkcs12",
    summary="Export certificate and chain as a PKCS#12 trust store (AES-256, no private key)",
    responses={200: {"content": {"application/x-pkcs12": {}}}, 429: {"description": "export limit reached"}},
)
async def export_pkcs12(id: str, body: Pkcs12ExportRequest, services: ServicesDep, actor: ActorDep) -> Response:
    try:
        bundle = await services.certificates.export_pkcs12(actor, id, body.password)
    except RateLimitedError as exc:
        return _rate_limited(exc)
    return Response(
        bundle,
        media_type="application/x-pkcs12",
        headers={"Content-Disposition": f'attachment; filename="{_safe_filename(id)}.p12"'},
    )


def _safe_filename(certificate_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in certificate_id) or "certificate"
