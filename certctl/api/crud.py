"""Router factory for plain inventory resources (list, create, get, update, delete).

No `from __future__ import annotations` here: FastAPI reads these handlers' annotations at
definition time, and they name the classes passed in.
"""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel

from certctl.api.deps import ActorDep, PageDep, ServicesDep, require_admin
from certctl.domain.models.common import Page
from certctl.services.container import Services
from certctl.services.crud import CrudService


def crud_router(
    *,
    prefix: str,
    tag: str,
    service: Callable[[Services], CrudService[Any]],
    model: type[BaseModel],
    create_model: type[BaseModel],
    update_model: type[BaseModel],
    admin_writes: bool = False,
    update_method: str = "PUT",
) -> APIRouter:
    write_deps = [Depends(require_admin)] if admin_writes else []
    router = APIRouter(prefix=prefix, tags=[tag])
    page_model: Any = Page[model]  # type: ignore[valid-type]

    @router.get("", response_model=page_model, summary=f"List {tag.lower()}")
    async def list_items(services: ServicesDep, page: PageDep) -> Any:
        items, total = await service(services).list(page)
        return page_model(data=items, total=total, page=page.page, per_page=page.per_page)

    @router.post("", status_code=201, response_model=model, dependencies=write_deps, summary=f"Create {tag.lower()}")
    async def create_item(body: create_model, services: ServicesDep, actor: ActorDep) -> Any:  # type: ignore[valid-type]
        return await service(services).create(actor, body)

    @router.get("/{id}", response_model=model, summary=f"Get one of {tag.lower()}")
    async def get_item(id: str, services: ServicesDep) -> Any:
        return await service(services).get(id)

    @router.api_route(
        "/{id}", methods=[update_method], response_model=model, dependencies=write_deps,
        summary=f"Update one of {tag.lower()}",
    )
    async def update_item(id: str, body: update_model, services: ServicesDep, actor: ActorDep) -> Any:  # type: ignore[valid-type]
        return await service(services).update(actor, id, body)

    @router.delete("/{id}", status_code=204, dependencies=write_deps, summary=f"Delete one of {tag.lower()}")
    async def delete_item(id: str, services: ServicesDep, actor: ActorDep) -> Response:
        await service(services).delete(actor, id)
        return Response(status_code=204)

    return router
