"""/api/v1/audit: the trail, filterable by actor, action, resource and time (the reference only pages)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter

from certctl.api.deps import PageDep, ServicesDep
from certctl.domain.models.audit import AuditEvent
from certctl.domain.models.common import Page

router = APIRouter(prefix="/api/v1/audit", tags=["Audit"])


@router.get("")
async def list_audit_events(
    services: ServicesDep,
    page: PageDep,
    actor: str | None = None,
    action: str | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Page[AuditEvent]:
    items, total = await services.audit.list(
        page, actor=actor, action=action, resource_type=resource_type, resource_id=resource_id,
        since=since, until=until,
    )
    return Page[AuditEvent](data=items, total=total, page=page.page, per_page=page.per_page)


@router.get("/{event_id}")
async def get_audit_event(event_id: str, services: ServicesDep) -> AuditEvent:
    return await services.audit.get(event_id)
