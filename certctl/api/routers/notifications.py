"""/api/v1/notifications (list, get, read, requeue) and /api/v1/digest (preview, send)."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from certctl.api.deps import ActorDep, AdminDep, PageDep, ServicesDep
from certctl.domain.models.common import Page, StatusBody
from certctl.domain.models.notifications import NotificationEvent

router = APIRouter(prefix="/api/v1", tags=["Notifications"])


@router.get("/notifications", response_model=Page[NotificationEvent], summary="List notifications")
async def list_notifications(
    services: ServicesDep, page: PageDep, status: str | None = None, certificate_id: str | None = None,
    channel: str | None = None, type: str | None = None,
) -> Any:
    items, total = await services.notifications.list_notifications(
        page, status=status, certificate_id=certificate_id, channel=channel, type_=type)
    return Page[NotificationEvent](data=items, total=total, page=page.page, per_page=page.per_page)


@router.get("/notifications/{id}", response_model=NotificationEvent, summary="Get notification")
async def get_notification(id: str, services: ServicesDep) -> Any:
    return await services.notifications.get(id)


@router.post("/notifications/{id}/read", response_model=StatusBody, summary="Mark notification as read")
async def mark_notification_read(id: str, services: ServicesDep, actor: ActorDep) -> Any:
    await services.notifications.mark_read(actor, id)
    return StatusBody(status="read")


@router.post("/notifications/{id}/requeue", response_model=StatusBody, summary="Requeue a dead notification")
async def requeue_notification(id: str, services: ServicesDep, actor: AdminDep) -> Any:
    await services.notifications.requeue(actor, id)
    return StatusBody(status="requeued")


_NOT_CONFIGURED: dict[int | str, dict[str, Any]] = {503: {"description": "Digest service not configured"}}


@router.get("/digest/preview", response_class=HTMLResponse, tags=["Digest"], summary="Preview digest email",
            responses=_NOT_CONFIGURED)
async def preview_digest(services: ServicesDep) -> HTMLResponse:
    return HTMLResponse(await services.notifications.digest_html())


@router.post("/digest/send", tags=["Digest"], summary="Send digest email", responses=_NOT_CONFIGURED)
async def send_digest(services: ServicesDep, actor: AdminDep) -> dict[str, str]:
    sent = await services.notifications.send_digest(actor)
    return {"status": "sent", "message": f"digest sent to {sent} recipient(s)"}
