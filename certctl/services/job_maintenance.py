"""The job queue's upkeep: the processor's batches, the lease reaper, timeouts and approval expiry.

- `process_due_jobs` claims due Pending issuance/renewal jobs for this process (a lease each; SKIP LOCKED
  on PostgreSQL, so every server may run it) and executes at most `concurrency` at a time, renewing the
  leases of the batch while it runs.
- `reap_expired_leases` finds Running jobs whose holder stopped renewing (a killed or hung server) and puts
  them back to Pending at once, or fails them through `IssuanceService.fail_attempt` (job and certificate
  Failed) when the claim that died was the last attempt. A job whose lease is still valid is never touched.
- `time_out_waiting_jobs`: AwaitingCSR past its timeout (24 h) and AwaitingApproval past its timeout (168 h)
  become Failed; the pending approval request becomes expired (the reference never expired one, core.md
  §8 bug 8). A CSR timeout fails the certificate too (its renewal failed: the agent never answered); an
  approval timeout only releases it (nothing failed: nobody decided), so the next renewal scan asks again.
- `expire_orphaned_approvals`: a pending request whose job ended some other way is closed as expired.
Each change is one transaction with its audit event, made under the job's row lock after re-checking
that the job is still in the state the sweep saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.actor import Actor
from certctl.domain.enums import CertificateStatus, JobStatus
from certctl.domain.errors import CertctlError
from certctl.domain.models.jobs import ApprovalState
from certctl.services import audit
from certctl.services.issuance import IssuanceService, claim_issuing_jobs
from certctl.services.jobs import ISSUING_JOB_TYPES, close_pending_approval, release_certificate, transition_job
from certctl.store import jobs_repo, leases_repo, maintenance_repo
from certctl.store.rows import Row

log = logging.getLogger("certctl.jobs")
BATCH = 500


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{delta.total_seconds():g} s"


class JobMaintenanceService:
    def __init__(self, issuance: IssuanceService) -> None:
        self.issuance = issuance
        self.ctx = issuance.ctx

    # ---- the processor --------------------------------------------------------------------------
    async def process_due_jobs(
        self, *, concurrency: int = 25, budget: timedelta | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, int]:
        """Claim and execute due issuing jobs in batches of at most `concurrency` until none is due, the
        budget is spent, or `should_stop()` (shutdown: the batch in hand is finished, no new one claimed).
        Returns how many jobs ended in each status."""
        outcome: Counter[str] = Counter()
        started = time.monotonic()
        while not (should_stop is not None and should_stop()):
            job_ids = await claim_issuing_jobs(self.issuance, limit=concurrency)
            if not job_ids:
                break
            keeper = asyncio.create_task(self._keep_leases(job_ids))
            try:
                outcome.update(await asyncio.gather(*(self._execute(job_id) for job_id in job_ids)))
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            if budget is not None and time.monotonic() - started >= budget.total_seconds():
                break
        return dict(outcome)

    async def _execute(self, job_id: str) -> str:
        try:
            return await self.issuance.execute(job_id)
        except Exception as exc:  # one broken job must not stop its batch; its lease brings it back
            log.exception("job execution failed", extra={"job_id": job_id})
            reason = exc.message if isinstance(exc, CertctlError) else f"internal error ({type(exc).__name__})"
            try:
                return await self.issuance.fail_attempt(job_id, reason, retryable=True)
            except Exception:  # e.g. the database is gone: the lease runs out and the reaper requeues it
                log.exception("could not record the failed attempt", extra={"job_id": job_id})
                return JobStatus.RUNNING.value

    async def _keep_leases(self, job_ids: list[str]) -> None:
        """Renew the batch's leases every third of the lease while it runs (long issuer round trips)."""
        lease = self.issuance.lease
        while job_ids:
            await asyncio.sleep(lease.total_seconds() / 3)
            now = self.ctx.clock.now()
            try:
                async with self.ctx.db.transaction() as conn:
                    job_ids = await leases_repo.renew_job_leases(
                        conn, job_ids, self.issuance.holder, now=now, until=now + lease)
            except Exception:  # a missed renewal only risks a requeue, which is safe
                log.warning("could not renew job leases", exc_info=True)

    # ---- the lease reaper -----------------------------------------------------------------------
    async def reap_expired_leases(self) -> dict[str, int]:
        """Requeue (or fail, when no attempt is left) Running jobs whose lease has run out."""
        now = self.ctx.clock.now()
        outcome: Counter[str] = Counter()
        async with self.ctx.db.read() as conn:
            expired = await maintenance_repo.expired_lease_jobs(conn, now=now, limit=BATCH)
        for row in expired:
            holder = str(row["claimed_by"] or "")
            reason = (
                f"the server running this job ({holder or 'unknown'}) stopped renewing its lease, "
                f"which expired at {row['lease_expires_at'].isoformat()}"
            )
            if row["attempts"] >= row["max_attempts"]:
                # The claim that died was the last attempt: the same path as any final failure.
                status = await self.issuance.fail_attempt(
                    row["id"], reason + "; no attempts left", retryable=True, holder=row["claimed_by"])
                outcome["failed" if status == JobStatus.FAILED.value else "untouched"] += 1
                continue
            requeued = await self._requeue(row["id"], row["claimed_by"], now, reason)
            outcome["requeued" if requeued else "untouched"] += 1
        return dict(outcome)

    async def _requeue(self, job_id: str, holder: str | None, now: datetime, reason: str) -> bool:
        async with self.ctx.db.transaction() as conn:
            job = await jobs_repo.get_job(conn, job_id, for_update=True)
            lease = job["lease_expires_at"] if job is not None else None
            if job is None or job["status"] != JobStatus.RUNNING.value or job["claimed_by"] != holder \
                    or lease is None or lease >= now:
                return False  # finished, cancelled, or renewed by its holder since we looked
            await transition_job(conn, self.ctx.clock, job, JobStatus.PENDING, last_error=reason)
            await jobs_repo.update_job(conn, job_id, {"scheduled_at": now})  # a crash is no reason to wait
            await audit.record(conn, self.ctx.clock, Actor.system(), "job_lease_expired", "job", job_id, {
                "certificate_id": job["certificate_id"], "type": job["type"], "holder": holder,
                "lease_expired_at": lease.isoformat(), "attempt": job["attempts"],
                "max_attempts": job["max_attempts"], "to_status": JobStatus.PENDING.value,
            })
        return True

    # ---- timeouts -------------------------------------------------------------------------------
    async def time_out_waiting_jobs(
        self, *, awaiting_csr: timedelta = timedelta(hours=24), awaiting_approval: timedelta = timedelta(hours=168),
    ) -> dict[str, int]:
        """Fail jobs left waiting for a CSR or an approval longer than their timeout."""
        now = self.ctx.clock.now()
        outcome: Counter[str] = Counter()
        for status, timeout, reason in (
            (JobStatus.AWAITING_CSR, awaiting_csr, f"no CSR from an agent within {_human(awaiting_csr)}"),
            (JobStatus.AWAITING_APPROVAL, awaiting_approval,
             f"no approval decision within {_human(awaiting_approval)}"),
        ):
            before = now - timeout
            seen: set[str] = set()
            while True:
                async with self.ctx.db.read() as conn:
                    rows = [r for r in await maintenance_repo.jobs_waiting_since(
                        conn, status=status.value, before=before, limit=BATCH) if r["id"] not in seen]
                if not rows:
                    break
                for row in rows:
                    seen.add(row["id"])
                    if await self._time_out(row["id"], status, before, reason):
                        outcome[status.value] += 1
        return dict(outcome)

    async def _time_out(self, job_id: str, status: JobStatus, before: datetime, reason: str) -> bool:
        system = Actor.system()
        async with self.ctx.db.transaction() as conn:
            job = await jobs_repo.get_job(conn, job_id, for_update=True)
            if job is None or job["status"] != status.value or job["updated_at"] >= before:
                return False  # decided, answered or cancelled since we looked
            await transition_job(conn, self.ctx.clock, job, JobStatus.FAILED, last_error=reason)
            approval_id = await close_pending_approval(
                conn, self.ctx.clock, job_id, ApprovalState.EXPIRED, system.name, reason)
            if status is JobStatus.AWAITING_CSR:
                cert_status = await self._fail_certificate(conn, job)
            else:
                cert_status = await release_certificate(conn, self.ctx.clock, job["certificate_id"], job["type"])
            await audit.record(conn, self.ctx.clock, system, "job_timed_out", "job", job_id, {
                "certificate_id": job["certificate_id"], "type": job["type"], "from_status": status.value,
                "to_status": JobStatus.FAILED.value, "reason": reason, "waiting_since": job["updated_at"].isoformat(),
                "approval_id": approval_id, "certificate_status": cert_status,
            })
            if approval_id is not None:
                await audit.record(conn, self.ctx.clock, system, "approval_expired", "approval_request", approval_id, {
                    "certificate_id": job["certificate_id"], "job_id": job_id, "reason": reason,
                })
        return True

    async def _fail_certificate(self, conn: AsyncConnection, job: Row) -> str | None:
        """The renewal failed for good: the certificate leaves RenewalInProgress (or Pending) for Failed,
        unless another issuing job is still open for it (core.md §8 bug 12)."""
        cert_id = job["certificate_id"]
        if cert_id is None or job["type"] not in ISSUING_JOB_TYPES:
            return None
        cert = await jobs_repo.get_certificate(conn, cert_id, for_update=True)
        if cert is None or cert["status"] not in (
            CertificateStatus.RENEWAL_IN_PROGRESS.value, CertificateStatus.PENDING.value,
        ):
            return None
        if await jobs_repo.open_jobs_for_certificate(conn, cert_id, types=ISSUING_JOB_TYPES):
            return None
        await jobs_repo.update_certificate(conn, cert_id, {
            "status": CertificateStatus.FAILED.value, "updated_at": self.ctx.clock.now()})
        return CertificateStatus.FAILED.value

    # ---- approvals ------------------------------------------------------------------------------
    async def expire_orphaned_approvals(self) -> int:
        """Pending approval requests whose job already ended can never be decided: close them as expired."""
        async with self.ctx.db.read() as conn:
            orphans = await maintenance_repo.orphaned_pending_approvals(conn, limit=BATCH)
        closed = 0
        for orphan in orphans:
            async with self.ctx.db.transaction() as conn:
                approval = await jobs_repo.get_approval(conn, orphan["id"], for_update=True)
                if approval is None or approval["state"] != ApprovalState.PENDING.value:
                    continue
                now = self.ctx.clock.now()
                note = f"the job ended ({orphan['job_status']}) before a decision"
                await jobs_repo.update_approval(conn, orphan["id"], {
                    "state": ApprovalState.EXPIRED.value, "decided_by": Actor.system().name, "decided_at": now,
                    "decision_note": note, "updated_at": now,
                })
                await audit.record(conn, self.ctx.clock, Actor.system(), "approval_expired", "approval_request",
                                   orphan["id"], {"certificate_id": approval["certificate_id"],
                                                  "job_id": approval["job_id"], "reason": note})
                closed += 1
        return closed

