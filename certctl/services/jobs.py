"""Jobs: listing, cancel, and the job-level approve/reject.

Every status change of a job goes through `transition_job`, which applies the domain's state
table (`plan_job_transition`). The helpers here are shared with the approval and certificate
action services so that a cancelled or rejected renewal always puts its certificate back the
same way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.config import Settings
from certctl.domain.actor import Actor
from certctl.domain.clock import Clock
from certctl.domain.enums import CertificateStatus, JobStatus, JobType
from certctl.domain.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from certctl.domain.ids import new_id
from certctl.domain.models.common import PageParams
from certctl.domain.models.jobs import ApprovalState, Job, check_initial_job_status, plan_job_transition
from certctl.observability import metrics
from certctl.services import audit
from certctl.services.context import ServiceContext
from certctl.store import jobs_repo
from certctl.store.rows import Row

ISSUING_JOB_TYPES = (JobType.ISSUANCE.value, JobType.RENEWAL.value)
_TRUE = ("1", "true", "yes", "on")


def approval_bypass_enabled(settings: Settings) -> bool:
    """`CERTCTL_APPROVAL_BYPASS` (dev/CI only): approvals are granted at once as `system-bypass`."""
    return settings.extra.get("CERTCTL_APPROVAL_BYPASS", "").strip().lower() in _TRUE


def keygen_mode(settings: Settings, profile: Row | None) -> str:
    """Where the key is made: the profile's `key_generation_mode`, else CERTCTL_KEYGEN_MODE."""
    if profile is not None and profile["key_generation_mode"]:
        return str(profile["key_generation_mode"])
    return settings.keygen_mode


async def status_after_approval(conn: AsyncConnection, settings: Settings, job: Row) -> JobStatus:
    """An approved issuing job waits for the agent's CSR in agent key generation, else is queued."""
    if job["type"] not in ISSUING_JOB_TYPES:
        return JobStatus.PENDING
    cert = await jobs_repo.get_certificate(conn, job["certificate_id"]) if job["certificate_id"] else None
    profile = await jobs_repo.get_profile(conn, cert["certificate_profile_id"]) \
        if cert is not None and cert["certificate_profile_id"] else None
    return JobStatus.AWAITING_CSR if keygen_mode(settings, profile) == "agent" else JobStatus.PENDING


async def create_job(
    conn: AsyncConnection,
    clock: Clock,
    *,
    job_type: JobType,
    status: JobStatus,
    certificate_id: str | None,
    max_attempts: int,
    target_id: str | None = None,
    agent_id: str | None = None,
) -> str:
    check_initial_job_status(status)
    now = clock.now()
    job_id = new_id("job")
    await jobs_repo.insert_job(conn, {
        "id": job_id, "type": job_type.value, "certificate_id": certificate_id, "target_id": target_id,
        "agent_id": agent_id, "status": status.value, "attempts": 0, "max_attempts": max_attempts,
        "last_error": None, "deployment_result": None, "scheduled_at": now, "started_at": None,
        "completed_at": None, "created_at": now, "updated_at": now,
    })
    return job_id


async def transition_job(
    conn: AsyncConnection, clock: Clock, job: Row, new: JobStatus, *, last_error: str | None = None
) -> dict[str, Any]:
    """Move one job through the state table; returns the column changes written."""
    changes = plan_job_transition(job["status"], new, clock.now(), attempts=job["attempts"])
    if last_error is not None:
        changes["last_error"] = last_error
    await jobs_repo.update_job(conn, job["id"], changes)
    if new.terminal or (new is JobStatus.PENDING and last_error is not None):  # an outcome, or a retry
        metrics.job_outcome(job["type"], "retry" if new is JobStatus.PENDING else new.value.lower())
    return changes


async def close_pending_approval(
    conn: AsyncConnection, clock: Clock, job_id: str, state: ApprovalState, decided_by: str, note: str
) -> str | None:
    """Settle the job's pending approval request, if it has one; returns its id."""
    pending = await jobs_repo.pending_approval_for_job(conn, job_id)
    if pending is None:
        return None
    now = clock.now()
    await jobs_repo.update_approval(conn, pending["id"], {
        "state": state.value, "decided_by": decided_by, "decided_at": now, "decision_note": note, "updated_at": now,
    })
    return str(pending["id"])


def restored_status(cert: Row, has_version: bool, now: datetime) -> CertificateStatus:
    """Where a certificate goes when its renewal is abandoned: what it was before it started."""
    expires_at: datetime | None = cert["expires_at"]
    if expires_at is not None and expires_at <= now:
        return CertificateStatus.EXPIRED
    if expires_at is not None or has_version:
        return CertificateStatus.ACTIVE
    return CertificateStatus.PENDING


async def release_certificate(
    conn: AsyncConnection, clock: Clock, certificate_id: str | None, job_type: str
) -> str | None:
    """After an issuing job ends without a certificate, take the cert out of RenewalInProgress.

    Only when no other issuing job is still open for it. Returns the new status, if changed.
    """
    if certificate_id is None or job_type not in ISSUING_JOB_TYPES:
        return None
    cert = await jobs_repo.get_certificate(conn, certificate_id, for_update=True)
    if cert is None or cert["status"] != CertificateStatus.RENEWAL_IN_PROGRESS.value:
        return None
    if await jobs_repo.open_jobs_for_certificate(conn, certificate_id, types=ISSUING_JOB_TYPES):
        return None
    now = clock.now()
    status = restored_status(cert, await jobs_repo.has_version(conn, certificate_id), now)
    await jobs_repo.update_certificate(conn, certificate_id, {"status": status.value, "updated_at": now})
    return status.value


async def abort_job(
    conn: AsyncConnection, clock: Clock, actor: Actor, job: Row, *, reason: str,
    approval_state: ApprovalState = ApprovalState.REJECTED,
) -> dict[str, Any]:
    """Cancel a non-terminal job, settle its pending approval, and release its certificate.

    Returns details for the caller's audit event; raises 409 if the job is already terminal.
    """
    await transition_job(conn, clock, job, JobStatus.CANCELLED, last_error=reason)
    approval_id = await close_pending_approval(conn, clock, job["id"], approval_state, actor.name, reason)
    cert_status = await release_certificate(conn, clock, job["certificate_id"], job["type"])
    details: dict[str, Any] = {
        "certificate_id": job["certificate_id"], "type": job["type"], "from_status": job["status"],
        "to_status": JobStatus.CANCELLED.value, "reason": reason,
    }
    if approval_id is not None:
        details["approval_id"] = approval_id
    if cert_status is not None:
        details["certificate_status"] = cert_status
    return details


def _parse_filter(enum: Any, value: str | None, name: str) -> str | None:
    if value is None or value == "":
        return None
    try:
        return str(enum.parse(value).value)
    except ValueError as exc:
        raise ValidationError(f"{name}: {exc}") from exc


class JobService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def get(self, job_id: str) -> Job:
        async with self.ctx.db.read() as conn:
            row = await jobs_repo.get_job(conn, job_id)
        if row is None:
            raise NotFoundError.of("job", job_id)
        return Job.model_validate(dict(row))

    async def list(
        self,
        page: PageParams,
        *,
        status: str | None = None,
        job_type: str | None = None,
        certificate_id: str | None = None,
        agent_id: str | None = None,
    ) -> tuple[list[Job], int]:
        status = _parse_filter(JobStatus, status, "status")
        job_type = _parse_filter(JobType, job_type, "type")
        async with self.ctx.db.read() as conn:
            found, total = await jobs_repo.list_jobs(
                conn, status=status, job_type=job_type, certificate_id=certificate_id or None,
                agent_id=agent_id or None, limit=page.per_page, offset=page.offset,
            )
        return [Job.model_validate(dict(r)) for r in found], total

    async def cancel(self, actor: Actor, job_id: str) -> None:
        async with self.ctx.db.transaction() as conn:
            job = await self._locked(conn, job_id)
            details = await abort_job(conn, self.ctx.clock, actor, job, reason=f"cancelled by {actor.name}")
            await audit.record(conn, self.ctx.clock, actor, "job_cancelled", "job", job_id, details)

    async def approve(self, actor: Actor, job_id: str) -> None:
        async with self.ctx.db.transaction() as conn:
            job = await self._locked(conn, job_id)
            self._require_awaiting_approval(job)
            approval = await jobs_repo.pending_approval_for_job(conn, job_id)
            await self.refuse_self_approval(conn, actor, job, approval)
            target = await status_after_approval(conn, self.ctx.settings, job)
            await transition_job(conn, self.ctx.clock, job, target)
            approval_id = await close_pending_approval(
                conn, self.ctx.clock, job_id, ApprovalState.APPROVED, actor.name, "approved through the job"
            )
            await audit.record(conn, self.ctx.clock, actor, "job_approved", "job", job_id, {
                "certificate_id": job["certificate_id"], "type": job["type"],
                "from_status": job["status"], "to_status": target.value, "approval_id": approval_id,
            })
        self.ctx.jobs_queued()

    async def reject(self, actor: Actor, job_id: str, reason: str) -> None:
        async with self.ctx.db.transaction() as conn:
            job = await self._locked(conn, job_id)
            self._require_awaiting_approval(job)
            message = f"rejected by {actor.name}" + (f": {reason}" if reason else "")
            details = await abort_job(conn, self.ctx.clock, actor, job, reason=message)
            await audit.record(conn, self.ctx.clock, actor, "job_rejected", "job", job_id, details)

    # ---- checks ---------------------------------------------------------------------------------
    async def _locked(self, conn: AsyncConnection, job_id: str) -> Row:
        job = await jobs_repo.get_job(conn, job_id, for_update=True)
        if job is None:
            raise NotFoundError.of("job", job_id)
        return job

    @staticmethod
    def _require_awaiting_approval(job: Row) -> None:
        if job["status"] != JobStatus.AWAITING_APPROVAL.value:
            raise ConflictError(f"job '{job['id']}' is {job['status']}, not AwaitingApproval")

    @staticmethod
    async def refuse_self_approval(conn: AsyncConnection, actor: Actor, job: Row, approval: Row | None) -> None:
        """Neither the certificate's owner nor the person who asked may approve (two-person integrity)."""
        who = actor.name.strip().lower()
        if approval is not None and approval["requested_by"].strip().lower() == who:
            raise ForbiddenError("two-person integrity: the requester cannot approve their own request")
        if job["certificate_id"] is None:
            return
        cert = await jobs_repo.get_certificate(conn, job["certificate_id"])
        owner = await jobs_repo.get_owner(conn, cert["owner_id"]) if cert is not None else None
        if owner is not None and who in {owner["name"].strip().lower(), (owner["email"] or "").strip().lower()}:
            raise ForbiddenError(
                "self-approval is forbidden: the certificate owner cannot approve their own renewal"
            )
