"""Issuance approval requests: two-person integrity for renewals on `requires_approval` profiles.

A request is made by a manual renewal (see certificate_actions); a different person approves
(the job is released to the queue) or rejects (the job is cancelled and the certificate goes
back to where it was). Decided requests never change again; the audit trail keeps who and why.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.actor import Actor
from certctl.domain.enums import ActorType, JobStatus
from certctl.domain.errors import ConflictError, ForbiddenError, NotFoundError, UnauthorizedError, ValidationError
from certctl.domain.models.common import PageParams
from certctl.domain.models.jobs import ApprovalDecisionResult, ApprovalRequest, ApprovalState
from certctl.services import audit
from certctl.services.context import ServiceContext
from certctl.services.jobs import (
    JobService,
    abort_job,
    approval_bypass_enabled,
    status_after_approval,
    transition_job,
)
from certctl.store import jobs_repo
from certctl.store.rows import Row

BYPASS_ACTOR = Actor("system-bypass", ActorType.SYSTEM, admin=True)
RESOURCE = "approval_request"


def _details(approval: Mapping[Any, Any], **extra: Any) -> dict[str, Any]:
    return {
        "certificate_id": approval["certificate_id"], "job_id": approval["job_id"],
        "profile_id": approval["profile_id"], "requested_by": approval["requested_by"], **extra,
    }


async def request_approval(
    ctx: ServiceContext,
    conn: AsyncConnection,
    actor: Actor,
    *,
    certificate_id: str,
    job_id: str,
    profile_id: str,
    metadata: dict[str, str],
) -> tuple[str, JobStatus]:
    """Record a pending request for a job created in AwaitingApproval, in the caller's transaction.

    With `CERTCTL_APPROVAL_BYPASS` the request is approved at once by `system-bypass` (audited
    as `approval_bypassed` so an auditor can find every such approval). Returns the request id
    and the job's status afterwards.
    """
    now = ctx.clock.now()
    approval_id = f"ar-{uuid.uuid4()}"
    values = {
        "id": approval_id, "certificate_id": certificate_id, "job_id": job_id, "profile_id": profile_id,
        "requested_by": actor.name, "state": ApprovalState.PENDING.value, "decided_by": None,
        "decided_at": None, "decision_note": None, "metadata": metadata, "created_at": now, "updated_at": now,
    }
    await jobs_repo.insert_approval(conn, values)
    await audit.record(conn, ctx.clock, actor, "approval_requested", RESOURCE, approval_id, _details(values))
    if not approval_bypass_enabled(ctx.settings):
        return approval_id, JobStatus.AWAITING_APPROVAL
    approval = await jobs_repo.get_approval(conn, approval_id)
    assert approval is not None
    job_status = await _approve(
        ctx, conn, BYPASS_ACTOR, approval, "auto-approved by CERTCTL_APPROVAL_BYPASS", "approval_bypassed"
    )
    return approval_id, job_status


async def _approve(
    ctx: ServiceContext, conn: AsyncConnection, actor: Actor, approval: Row, note: str, action: str
) -> JobStatus:
    job = await jobs_repo.get_job(conn, approval["job_id"], for_update=True)
    if job is None or job["status"] != JobStatus.AWAITING_APPROVAL.value:
        found = "gone" if job is None else job["status"]
        raise ConflictError(f"the approval's job '{approval['job_id']}' is {found}, not AwaitingApproval")
    target = await status_after_approval(conn, ctx.settings, job)
    await transition_job(conn, ctx.clock, job, target)
    now = ctx.clock.now()
    await jobs_repo.update_approval(conn, approval["id"], {
        "state": ApprovalState.APPROVED.value, "decided_by": actor.name, "decided_at": now,
        "decision_note": note, "updated_at": now,
    })
    await audit.record(
        conn, ctx.clock, actor, action, RESOURCE, approval["id"],
        _details(approval, note=note, job_status=target.value),
    )
    return target


class ApprovalService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def get(self, approval_id: str) -> ApprovalRequest:
        async with self.ctx.db.read() as conn:
            row = await jobs_repo.get_approval(conn, approval_id)
        if row is None:
            raise NotFoundError.of("approval request", approval_id)
        return ApprovalRequest.model_validate(dict(row))

    async def list(
        self,
        page: PageParams,
        *,
        state: str | None = None,
        certificate_id: str | None = None,
        requested_by: str | None = None,
    ) -> tuple[list[ApprovalRequest], int]:
        wanted: str | None = None
        if state:
            try:
                wanted = ApprovalState.parse(state).value
            except ValueError as exc:
                raise ValidationError(f"state: {exc}") from exc
        async with self.ctx.db.read() as conn:
            found, total = await jobs_repo.list_approvals(
                conn, state=wanted, certificate_id=certificate_id or None, requested_by=requested_by or None,
                limit=page.per_page, offset=page.offset,
            )
        return [ApprovalRequest.model_validate(dict(r)) for r in found], total

    async def approve(self, actor: Actor, approval_id: str, note: str) -> ApprovalDecisionResult:
        async with self.ctx.db.transaction() as conn:
            approval = await self._decidable(conn, actor, approval_id)
            job = await jobs_repo.get_job(conn, approval["job_id"])
            if job is not None:
                # Same rule as /jobs/{id}/approve: neither the requester nor the certificate's owner approves.
                await JobService.refuse_self_approval(conn, actor, job, approval)
            await _approve(self.ctx, conn, actor, approval, note, "approval_approved")
        self.ctx.jobs_queued()
        return ApprovalDecisionResult(id=approval_id, decided_by=actor.name, action="approved")

    async def reject(self, actor: Actor, approval_id: str, note: str) -> ApprovalDecisionResult:
        async with self.ctx.db.transaction() as conn:
            approval = await self._decidable(conn, actor, approval_id)
            job = await jobs_repo.get_job(conn, approval["job_id"], for_update=True)
            details: dict[str, Any] = {}
            if job is not None and not JobStatus(job["status"]).terminal:
                reason = "approval rejected" + (f": {note}" if note else "")
                details = await abort_job(conn, self.ctx.clock, actor, job, reason=reason)
            else:
                # The job already ended (e.g. the reaper failed it): the request is still answered.
                now = self.ctx.clock.now()
                await jobs_repo.update_approval(conn, approval_id, {
                    "state": ApprovalState.REJECTED.value, "decided_by": actor.name, "decided_at": now,
                    "decision_note": note, "updated_at": now,
                })
            # abort_job settles the request with its generic reason; the decider's note wins.
            now = self.ctx.clock.now()
            await jobs_repo.update_approval(conn, approval_id, {"decision_note": note, "updated_at": now})
            await audit.record(
                conn, self.ctx.clock, actor, "approval_rejected", RESOURCE, approval_id,
                _details(approval, note=note, certificate_status=details.get("certificate_status")),
            )
        return ApprovalDecisionResult(id=approval_id, decided_by=actor.name, action="rejected")

    async def _decidable(self, conn: AsyncConnection, actor: Actor, approval_id: str) -> Row:
        if not actor.authenticated or actor.name == "anonymous":
            raise UnauthorizedError("deciding an approval needs an authenticated, named API key")
        approval = await jobs_repo.get_approval(conn, approval_id, for_update=True)
        if approval is None:
            raise NotFoundError.of("approval request", approval_id)
        if approval["state"] != ApprovalState.PENDING.value:
            raise ConflictError(f"approval request '{approval_id}' is already {approval['state']}")
        if approval["requested_by"].strip().lower() == actor.name.strip().lower():
            raise ForbiddenError("two-person integrity: the requester cannot decide their own approval request")
        return approval
