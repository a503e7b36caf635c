"""/api/v1/agents: registration, listing, heartbeat and soft retirement.

Registration also accepts the agent bootstrap token (actor `agent-bootstrap`, resolved by the
auth middleware for this one route only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from certctl.api.deps import ActorDep, AdminDep, PageDep, ServicesDep, actor_of, services_of
from certctl.api.hot_routes import HotHandler, json_body, model_response, optional_json_body
from certctl.domain.models.agent_work import (
    CertificatePickup,
    CSRAccepted,
    CSRSubmit,
    JobStatusAccepted,
    JobStatusReport,
    WorkList,
)
from certctl.domain.models.agents import Agent, AgentRegister, AgentRegistered, Heartbeat, RetireAgentResponse
from certctl.domain.models.common import Page, StatusBody

router = APIRouter(prefix="/api/v1/agents", tags=["Agents"])

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})


@router.get("", summary="List agents (not retired)")
async def list_agents(services: ServicesDep, page: PageDep) -> Page[Agent]:
    items, total = await services.agents.list(page)
    return Page[Agent](data=items, total=total, page=page.page, per_page=page.per_page)


@router.post("", status_code=201, summary="Register agent", responses={409: {"description": "name taken"}})
async def register_agent(body: AgentRegister, services: ServicesDep, actor: ActorDep) -> AgentRegistered:
    """The answer carries the agent's own API key (`api_key`), shown this once."""
    return await services.agents.register(actor, body)


# Declared before `/{id}` so the literal path wins.
@router.get("/retired", summary="List retired agents")
async def list_retired_agents(services: ServicesDep, page: PageDep) -> Page[Agent]:
    items, total = await services.agents.list(page, retired=True)
    return Page[Agent](data=items, total=total, page=page.page, per_page=page.per_page)


@router.get("/{id}", summary="Get agent")
async def get_agent(id: str, services: ServicesDep) -> Agent:
    return await services.agents.get(id)


@router.post("/{id}/heartbeat", summary="Agent heartbeat", responses={410: {"description": "agent retired"}})
async def heartbeat(id: str, services: ServicesDep, actor: ActorDep, body: Heartbeat | None = None) -> StatusBody:
    await services.agents.heartbeat(actor, id, body or Heartbeat())
    return StatusBody(status="ok")


@router.post("/{id}/rotate-key", summary="Give the agent a new API key (admin)")
async def rotate_agent_key(id: str, request: Request, services: ServicesDep, actor: AdminDep) -> AgentRegistered:
    rotated = await services.agents.rotate_key(actor, id)
    cache = getattr(request.app.state, "agent_keys", None)
    if cache is not None:
        cache.forget(id)
    return rotated


@router.get("/{id}/work", summary="Get pending work (AwaitingCSR and deployment jobs)")
async def agent_work(id: str, services: ServicesDep, actor: ActorDep) -> WorkList:
    return await services.agent_work.work(actor, id)


@router.post(
    "/{id}/csr", status_code=202, summary="Submit CSR",
    responses={400: {"description": "CSR rejected; the error names the profile rule"},
               403: {"description": "the agent does not deploy this certificate"},
               409: {"description": "no job is waiting for a CSR"}},
)
async def submit_csr(id: str, body: CSRSubmit, services: ServicesDep, actor: ActorDep) -> CSRAccepted:
    return await services.issuance.submit_csr(actor, id, body.csr_pem, body.certificate_id, body.job_id)


@router.post(
    "/{id}/jobs/{job_id}/status", summary="Report a deployment job's status",
    responses={403: {"description": "not this agent's job"}, 409: {"description": "not a deployment job, or illegal"}},
)
async def report_job_status(
    id: str, job_id: str, body: JobStatusReport, services: ServicesDep, actor: ActorDep
) -> JobStatusAccepted:
    return await services.agent_work.report_status(actor, id, job_id, body)


@router.get("/{id}/certificates/{cert_id}", summary="Pick up the signed certificate")
async def pickup_certificate(id: str, cert_id: str, services: ServicesDep) -> CertificatePickup:
    return await services.agent_work.pickup(id, cert_id)


@router.delete(
    "/{id}",
    response_model=RetireAgentResponse,
    summary="Soft-retire agent",
    responses={
        204: {"description": "already retired"},
        403: {"description": "reserved sentinel agent"},
        409: {"description": "blocked_by_dependencies, with counts"},
    },
)
async def retire_agent(
    id: str,
    services: ServicesDep,
    actor: ActorDep,
    force: Annotated[str | None, Query()] = None,
    reason: Annotated[str | None, Query(max_length=1024)] = None,
) -> Any:
    # Like Go's strconv.ParseBool: anything unparsable is false, so a typo never cascades.
    result = await services.agents.retire(actor, id, force=force in _TRUE, reason=reason)
    if result is None:
        return Response(status_code=204)
    return result


# Every agent polls every 30 s and heartbeats every minute: these skip FastAPI's routing (see api/hot_routes.py).
async def _heartbeat_hot(request: Request) -> Response:
    body = await optional_json_body(request, Heartbeat)
    return model_response(await heartbeat(request.path_params["id"], services_of(request), actor_of(request), body))


async def _agent_work_hot(request: Request) -> Response:
    return model_response(await agent_work(request.path_params["id"], services_of(request), actor_of(request)))


async def _submit_csr_hot(request: Request) -> Response:
    body = await json_body(request, CSRSubmit)
    accepted = await submit_csr(request.path_params["id"], body, services_of(request), actor_of(request))
    return model_response(accepted, status_code=202)


HOT_HANDLERS: dict[Callable[..., Any], HotHandler] = {
    heartbeat: _heartbeat_hot, agent_work: _agent_work_hot, submit_csr: _submit_csr_hot,
}
