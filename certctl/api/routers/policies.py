"""/api/v1/policies (compliance rules) and their stored violations."""

from typing import Any

from certctl.api.crud import crud_router
from certctl.api.deps import PageDep, ServicesDep
from certctl.domain.models.common import Page
from certctl.domain.models.policies import PolicyRule, PolicyRuleCreate, PolicyRuleUpdate, PolicyViolation

router = crud_router(
    prefix="/api/v1/policies", tag="Policies", service=lambda s: s.policies,
    model=PolicyRule, create_model=PolicyRuleCreate, update_model=PolicyRuleUpdate,
)


@router.get("/{id}/violations", response_model=Page[PolicyViolation], summary="List policy violations")
async def list_violations(id: str, services: ServicesDep, page: PageDep) -> Any:
    items, total = await services.policies.violations(id, page)
    return Page[PolicyViolation](data=items, total=total, page=page.page, per_page=page.per_page)
