"""Agents: registration, heartbeats, soft retirement with a dependency preflight, and staleness.

Work polling and CSR submission belong to the job pipeline, not here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from certctl.domain.actor import Actor
from certctl.domain.enums import AgentStatus
from certctl.domain.errors import ConflictError, ForbiddenError, GoneError, NotFoundError, ValidationError
from certctl.domain.ids import new_id
from certctl.domain.keys import agent_key, hash_key
from certctl.domain.models.agents import (
    SENTINEL_AGENT_IDS,
    Agent,
    AgentDependencyCounts,
    AgentRegister,
    AgentRegistered,
    Heartbeat,
    RetireAgentResponse,
)
from certctl.domain.models.common import PageParams
from certctl.services import audit
from certctl.services.context import ServiceContext
from certctl.services.jobs import abort_job
from certctl.store import agents_repo, audit_repo, rows
from certctl.store.schema import agents

_METADATA = ("version", "hostname", "os", "architecture", "ip_address")


class AgentService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    # ---- reads ----------------------------------------------------------------------------------
    async def get(self, agent_id: str) -> Agent:
        async with self.ctx.db.read() as conn:
            row = await rows.get_row(conn, agents, agent_id)
        if row is None:
            raise NotFoundError.of("agent", agent_id)
        return Agent.model_validate(dict(row))

    async def list(self, page: PageParams, *, retired: bool = False) -> tuple[list[Agent], int]:
        async with self.ctx.db.read() as conn:
            found, total = await agents_repo.page_agents(
                conn, retired=retired, limit=page.per_page, offset=page.offset
            )
        return [Agent.model_validate(dict(r)) for r in found], total

    # ---- registration ---------------------------------------------------------------------------
    async def register(self, actor: Actor, data: AgentRegister) -> AgentRegistered:
        """Create the agent row (Offline until its first heartbeat) with a credential of its own.

        The key is returned once and only its SHA-256 is kept. The agent authenticates with it
        for its own `/api/v1/agents/{id}/...` routes only, so a leaked agent key is not an
        operator key (the reference gave agents the shared server key).
        """
        agent_id = data.id or new_id("agent")
        if agent_id in SENTINEL_AGENT_IDS:
            raise ValidationError(f"agent id '{agent_id}' is reserved for a discovery source")
        now = self.ctx.clock.now()
        values: dict[str, Any] = {
            "id": agent_id,
            "name": data.name,
            "hostname": data.hostname,
            "status": AgentStatus.OFFLINE.value,
            "last_heartbeat_at": None,
            "registered_at": now,
            "api_key_hash": hash_key(api_key := agent_key(agent_id)),
            "os": data.os,
            "architecture": data.architecture,
            "ip_address": data.ip_address,
            "version": data.version,
            "created_at": now,
            "updated_at": now,
        }
        async with self.ctx.db.transaction() as conn:
            if await rows.exists(conn, agents, agent_id):
                raise ConflictError(f"agent '{agent_id}' already exists")
            if await agents_repo.name_taken(conn, data.name):
                raise ConflictError(f"an agent named '{data.name}' already exists")
            await rows.insert_row(conn, agents, values)
            await audit.record(
                conn, self.ctx.clock, actor, "agent_registered", "agent", agent_id,
                {"name": data.name, "hostname": data.hostname},
            )
            row = await rows.get_row(conn, agents, agent_id)
        assert row is not None
        return AgentRegistered.model_validate({**dict(row), "api_key": api_key})

    async def credential_hash(self, agent_id: str) -> str | None:
        """The stored hash of the agent's own key (for the auth layer), None for an unknown agent."""
        async with self.ctx.db.read() as conn:
            row = await rows.get_row(conn, agents, agent_id)
        return str(row["api_key_hash"]) if row is not None and row["api_key_hash"] else None

    async def rotate_key(self, actor: Actor, agent_id: str) -> AgentRegistered:
        """A new key for the agent (the old one stops working at once, on every server within a minute)."""
        now = self.ctx.clock.now()
        api_key = agent_key(agent_id)
        async with self.ctx.db.transaction() as conn:
            current = await rows.get_row_for_update(conn, agents, agent_id)
            if current is None:
                raise NotFoundError.of("agent", agent_id)
            if current["retired_at"] is not None:
                raise GoneError(f"agent '{agent_id}' is retired")
            await rows.update_row(conn, agents, agent_id, {"api_key_hash": hash_key(api_key), "updated_at": now})
            await audit.record(conn, self.ctx.clock, actor, "agent_key_rotated", "agent", agent_id, {})
            row = await rows.get_row(conn, agents, agent_id)
        assert row is not None
        return AgentRegistered.model_validate({**dict(row), "api_key": api_key})

    # ---- heartbeat ------------------------------------------------------------------------------
    async def heartbeat(self, actor: Actor, agent_id: str, beat: Heartbeat) -> None:
        """Mark the agent Online now and keep the metadata it reports.

        A heartbeat arrives every minute per agent, so the audit trail records only what
        changes (coming online, new metadata); every call is still in the API audit log.
        """
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            current = await rows.get_row_for_update(conn, agents, agent_id)
            if current is None:
                raise NotFoundError.of("agent", agent_id)
            if current["retired_at"] is not None:
                raise GoneError(f"agent '{agent_id}' is retired; shut down this agent")
            reported = {k: v for k, v in beat.model_dump(exclude_none=True).items() if v != ""}
            changed = sorted(k for k in _METADATA if k in reported and reported[k] != current[k])
            values: dict[str, Any] = {"status": AgentStatus.ONLINE.value, "last_heartbeat_at": now, **reported}
            if changed or current["status"] != AgentStatus.ONLINE.value:
                values["updated_at"] = now
            await rows.update_row(conn, agents, agent_id, values)
            if current["status"] != AgentStatus.ONLINE.value:
                await audit.record(
                    conn, self.ctx.clock, actor, "agent_status_changed", "agent", agent_id,
                    {"from": current["status"], "to": AgentStatus.ONLINE.value},
                )
            if changed:
                await audit.record(
                    conn, self.ctx.clock, actor, "agent_metadata_changed", "agent", agent_id,
                    {"fields": changed},
                )

    # ---- retirement -----------------------------------------------------------------------------
    async def retire(
        self, actor: Actor, agent_id: str, *, force: bool = False, reason: str | None = None
    ) -> RetireAgentResponse | None:
        """Soft-retire the agent; None when it was already retired (the API answers 204).

        Without `force`, any active target, certificate deployed through one, or unfinished job
        blocks the retire (409 with the counts). With `force` (and a reason) the same
        transaction retires the agent's targets and cancels its unfinished jobs.
        """
        if agent_id in SENTINEL_AGENT_IDS:
            raise ForbiddenError(f"agent '{agent_id}' is a reserved discovery identity and cannot be retired")
        reason = (reason or "").strip() or None
        if force and reason is None:
            raise ValidationError("force=true requires a non-empty reason")
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            current = await rows.get_row_for_update(conn, agents, agent_id)
            if current is None:
                raise NotFoundError.of("agent", agent_id)
            if current["retired_at"] is not None:
                return None
            targets, certs, jobs = await agents_repo.dependency_counts(conn, agent_id)
            counts = AgentDependencyCounts(active_targets=targets, active_certificates=certs, pending_jobs=jobs)
            if counts.any and not force:
                raise ConflictError(
                    f"agent '{agent_id}' still has {targets} active target(s), {certs} certificate(s) deployed "
                    f"through them and {jobs} unfinished job(s); retire with force=true and a reason to "
                    "retire its targets and cancel its jobs",
                    extra={"error": "blocked_by_dependencies", "counts": counts.model_dump()},
                )
            details: dict[str, Any] = {"cascade": force, "counts": counts.model_dump()}
            if force:
                why = f"agent {agent_id} retired: {reason}"
                details["retired_targets"] = await agents_repo.retire_agent_targets(conn, agent_id, now, why)
                # Through the job state machine: approvals are settled and certificates leave
                # RenewalInProgress, as when a person cancels the job.
                open_jobs = await agents_repo.open_agent_jobs(conn, agent_id)
                for job in open_jobs:
                    await abort_job(conn, self.ctx.clock, actor, job, reason=why)
                details["cancelled_jobs"] = [job["id"] for job in open_jobs]
            if reason is not None:
                details["reason"] = reason
            await rows.update_row(conn, agents, agent_id, {
                "retired_at": now, "retired_reason": reason, "updated_at": now,
            })
            await audit.record(conn, self.ctx.clock, actor, "agent_retired", "agent", agent_id, details)
        return RetireAgentResponse(retired_at=now, already_retired=False, cascade=force, counts=counts)

    # ---- staleness sweep (called by the scheduler) ----------------------------------------------
    async def mark_stale_agents_offline(self) -> tuple[str, ...]:
        """Live agents silent for longer than the offline threshold become Offline; returns their ids."""
        now = self.ctx.clock.now()
        silent_since = now - timedelta(seconds=self.ctx.settings.agent_offline_after_seconds)
        system = Actor.system()
        async with self.ctx.db.transaction() as conn:
            stale = await agents_repo.stale_agent_ids(conn, silent_since)
            await agents_repo.mark_offline(conn, stale, now)
            details = {"to": AgentStatus.OFFLINE.value, "reason": "no heartbeat",
                       "threshold_seconds": self.ctx.settings.agent_offline_after_seconds}
            await audit_repo.add_events(conn, [
                audit.build_event(system, "agent_status_changed", "agent", agent_id, details, now) for agent_id in stale
            ])
        return tuple(stale)
