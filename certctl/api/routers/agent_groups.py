"""/api/v1/agent-groups and their members."""

from typing import Any

from certctl.api.crud import crud_router
from certctl.api.deps import PageDep, ServicesDep
from certctl.domain.models.agent_groups import AgentGroup, AgentGroupCreate, AgentGroupUpdate
from certctl.domain.models.agents import Agent
from certctl.domain.models.common import Page

router = crud_router(
    prefix="/api/v1/agent-groups", tag="Agent Groups", service=lambda s: s.agent_groups,
    model=AgentGroup, create_model=AgentGroupCreate, update_model=AgentGroupUpdate,
)


@router.get("/{id}/members", response_model=Page[Agent], summary="List agent group members")
async def list_members(id: str, services: ServicesDep, page: PageDep) -> Any:
    items, total = await services.agent_groups.members(id, page)
    return Page[Agent](data=items, total=total, page=page.page, per_page=page.per_page)
