"""Discovery: agents' reports (`/agents/{id}/discoveries`), the triage queue, scan history and the summary."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from certctl.api.deps import ActorDep, PageDep, ServicesDep
from certctl.domain.models.common import Page
from certctl.domain.models.discovery import (
    ClaimBody,
    DiscoveredCertificate,
    DiscoveryReport,
    DiscoveryScan,
    DiscoverySummary,
    StatusMessage,
)

router = APIRouter(prefix="/api/v1", tags=["Discovery"])


@router.post(
    "/agents/{id}/discoveries", status_code=202, summary="Submit discovery report",
    responses={403: {"description": "reserved sentinel agent"}, 404: {"description": "unknown agent"},
               410: {"description": "agent retired"}},
)
async def submit_discovery_report(
    id: str, body: DiscoveryReport, services: ServicesDep, actor: ActorDep
) -> DiscoveryScan:
    return await services.discovery.submit_report(actor, id, body)


@router.get("/discovered-certificates", summary="List discovered certificates (newest first)")
async def list_discovered_certificates(
    services: ServicesDep,
    page: PageDep,
    agent_id: Annotated[str | None, Query(max_length=128)] = None,
    status: Annotated[str | None, Query(max_length=32)] = None,
) -> Page[DiscoveredCertificate]:
    items, total = await services.discovery.list(page, agent_id=agent_id, status=status)
    return Page[DiscoveredCertificate](data=items, total=total, page=page.page, per_page=page.per_page)


@router.get("/discovered-certificates/{id}", summary="Get discovered certificate")
async def get_discovered_certificate(id: str, services: ServicesDep) -> DiscoveredCertificate:
    return await services.discovery.get(id)


@router.post(
    "/discovered-certificates/{id}/claim", summary="Claim discovered certificate",
    responses={404: {"description": "unknown discovered or managed certificate"},
               409: {"description": "claimed by another certificate, or the certificate is archived"}},
)
async def claim_discovered_certificate(
    id: str, body: ClaimBody, services: ServicesDep, actor: ActorDep
) -> StatusMessage:
    return await services.discovery.claim(actor, id, body.managed_certificate_id)


@router.post(
    "/discovered-certificates/{id}/dismiss", summary="Dismiss discovered certificate",
    responses={409: {"description": "claimed into a managed certificate"}},
)
async def dismiss_discovered_certificate(id: str, services: ServicesDep, actor: ActorDep) -> StatusMessage:
    return await services.discovery.dismiss(actor, id)


@router.get("/discovery-scans", summary="List discovery scans (newest first)")
async def list_discovery_scans(
    services: ServicesDep, page: PageDep, agent_id: Annotated[str | None, Query(max_length=128)] = None
) -> Page[DiscoveryScan]:
    items, total = await services.discovery.list_scans(page, agent_id=agent_id)
    return Page[DiscoveryScan](data=items, total=total, page=page.page, per_page=page.per_page)


@router.get("/discovery-summary", summary="Discovery status summary")
async def discovery_summary(services: ServicesDep) -> DiscoverySummary:
    return await services.discovery.summary()
