"""Request dependencies: the service container, the calling actor, paging.

All are `async def`: FastAPI runs a plain `def` dependency in its thread pool, which costs
about a quarter of a millisecond per request for work that never blocks.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request

from certctl.domain.actor import Actor
from certctl.domain.errors import ForbiddenError, UnauthorizedError
from certctl.domain.models.common import PageParams
from certctl.services.container import Services


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def actor_of(request: Request) -> Actor:
    # Set by AuthMiddleware in the ASGI scope's state.
    actor: Actor | None = request.scope.get("state", {}).get("actor")
    if actor is None:
        raise UnauthorizedError("missing or invalid API key")
    return actor


async def get_services(request: Request) -> Services:
    return services_of(request)


async def get_actor(request: Request) -> Actor:
    return actor_of(request)


async def require_admin(actor: Annotated[Actor, Depends(get_actor)]) -> Actor:
    if not actor.admin:
        raise ForbiddenError("this operation requires an admin API key")
    return actor


async def get_page(
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=500)] = 50,
) -> PageParams:
    return PageParams(page=page, per_page=per_page)


ServicesDep = Annotated[Services, Depends(get_services)]
ActorDep = Annotated[Actor, Depends(get_actor)]
AdminDep = Annotated[Actor, Depends(require_admin)]
PageDep = Annotated[PageParams, Depends(get_page)]


def page_envelope(data: list[Any], total: int, page: PageParams) -> dict[str, Any]:
    return {"data": data, "total": total, "page": page.page, "per_page": page.per_page}
