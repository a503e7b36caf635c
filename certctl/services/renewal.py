"""The scheduled renewal scan (core.md §4, done as the reference's docs intend) and certificate expiry sweeps.

One scan, in this order:
  1. every certificate past its expiry that is not being renewed, revoked or archived becomes Expired
     (Pending, Active, Expiring or Failed before);
  2. per renewal policy, with that policy's `renewal_window_days` (the reference hard-codes 31 days):
     a. when `auto_renew` is on: each certificate inside the window that is Active or Expiring, on an
        enabled issuer and without an open issuance/renewal job gets a renewal through the very same
        path as a manual `POST /renew` (`CertificateActionService._renew_in`), requested by `system`.
        A `requires_approval` profile therefore puts the job in AwaitingApproval with an approval request
        that a named person must decide (the requester being `system`, no human is excluded, but `system`
        itself can never decide it). A renewal whose approval was rejected inside the current window is not
        asked for again in that window: the rejection stands until the certificate changes;
     b. every certificate inside the window still Active becomes Expiring (auto_renew off, a rejected or
        skipped renewal), so the inventory shows what needs a person.
ARI (RFC 9773): before step 2, the ACME windows whose Retry-After has passed are fetched again
(`IssuerConnectors.refresh_renewal_info`); a certificate whose newest version has an ARI moment (`renew_at`, picked
inside the CA's window) is renewed when that moment has come, even outside the policy window (the CA may ask for
early renewal), and is left alone inside the policy window until then (trigger `ari` in `renewal_job_created`).
Renewals go CHUNK to a transaction, each in a savepoint of its own with its audit events (one that fails
leaves the others); status changes go in batches, each with one audit event per certificate. Failed
certificates are left to an operator (a manual renew), like the reference; they still become Expired when
their time is up.

`expire_short_lived` is the frequent sweep for short-lived profiles (TTL under an hour): their
certificates become Expired within seconds of their end instead of at the next hourly scan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.actor import Actor
from certctl.domain.enums import NON_TERMINAL_JOB_STATUSES, CertificateStatus, JobStatus
from certctl.domain.errors import CertctlError, ConflictError
from certctl.domain.models.jobs import RenewResult
from certctl.services import audit
from certctl.services.certificate_actions import CertificateActionService
from certctl.services.context import ServiceContext
from certctl.services.issuer_connectors import IssuerConnectors
from certctl.services.jobs import ISSUING_JOB_TYPES
from certctl.store import acme_client_repo, audit_repo, jobs_repo, maintenance_repo
from certctl.store.database import describe_integrity_error
from certctl.store.rows import Row

log = logging.getLogger("certctl.renewal")
BATCH = 500
CHUNK = 50  # renewals per transaction: certificate locks held for a fraction of a second
_RENEWABLE = (CertificateStatus.ACTIVE.value, CertificateStatus.EXPIRING.value)
_CAN_EXPIRE = (
    CertificateStatus.PENDING.value, CertificateStatus.ACTIVE.value,
    CertificateStatus.EXPIRING.value, CertificateStatus.FAILED.value,
)


@dataclass
class RenewalScanReport:
    renewals: list[str] = field(default_factory=list)  # job ids created
    awaiting_approval: int = 0
    marked_expiring: int = 0
    marked_expired: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    errors: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def summary(self) -> dict[str, Any]:
        return {
            "renewals": len(self.renewals), "awaiting_approval": self.awaiting_approval,
            "marked_expiring": self.marked_expiring, "marked_expired": self.marked_expired,
            "skipped": dict(self.skipped), "errors": self.errors,
        }


class RenewalService:
    def __init__(self, ctx: ServiceContext, actions: CertificateActionService,
                 connectors: IssuerConnectors | None = None) -> None:
        self.ctx = ctx
        self.actions = actions
        self.connectors = connectors  # ARI windows of ACME issuers

    async def scan(self) -> RenewalScanReport:
        now = self.ctx.clock.now()
        report = RenewalScanReport()
        report.marked_expired = await self._mark(
            statuses=_CAN_EXPIRE, to=CertificateStatus.EXPIRED, expires_before=now, reason="expired")
        if self.connectors is not None:
            await self.connectors.refresh_renewal_info()
            await self.connectors.retry_revocations()  # revokeCert the CA has not accepted yet
            await self._renew_ari_due(now, report)
        async with self.ctx.db.read() as conn:
            policies = await maintenance_repo.renewal_policies_in_use(conn)
        for policy in policies:
            window = timedelta(days=int(policy["renewal_window_days"]))
            if policy["auto_renew"]:
                await self._renew_window(policy["id"], window, now, report)
            report.marked_expiring += await self._mark(
                statuses=(CertificateStatus.ACTIVE.value,), to=CertificateStatus.EXPIRING,
                expires_before=now + window, expires_after=now, policy_id=policy["id"],
                reason=f"inside the {window.days}-day renewal window of policy {policy['id']}",
            )
        if report.renewals or report.marked_expiring or report.marked_expired or report.errors:
            log.info("renewal scan", extra=report.summary())
        return report

    async def expire_short_lived(self) -> int:
        """Certificates of short-lived profiles whose time is up become Expired."""
        return await self._mark(
            statuses=_RENEWABLE, to=CertificateStatus.EXPIRED, expires_before=self.ctx.clock.now(),
            short_lived_only=True, reason="short-lived certificate expired",
        )

    # ---- renewals -------------------------------------------------------------------------------
    async def _renew_window(self, policy_id: str, window: timedelta, now: datetime, report: RenewalScanReport) -> None:
        after: tuple[datetime, str] | None = None
        while True:
            async with self.ctx.db.read() as conn:
                batch = await maintenance_repo.renewal_candidates(
                    conn, policy_id=policy_id, statuses=_RENEWABLE, issuing_types=ISSUING_JOB_TYPES,
                    now=now, horizon=now + window, after=after, limit=BATCH,
                )
            if batch:
                after = (batch[-1]["expires_at"], batch[-1]["id"])
                await self._renew_many([(candidate["id"], window, None) for candidate in batch], now, report)
            if len(batch) < BATCH:
                return

    async def _renew_ari_due(self, now: datetime, report: RenewalScanReport) -> None:
        async with self.ctx.db.read() as conn:
            due = await acme_client_repo.ari_due_certificates(
                conn, now=now, statuses=_RENEWABLE, issuing_types=ISSUING_JOB_TYPES,
                open_statuses=[s.value for s in NON_TERMINAL_JOB_STATUSES], limit=BATCH)
        await self._renew_many([(row["id"], timedelta(0), row["renew_at"]) for row in due], now, report)

    async def _renew_many(self, items: list[tuple[str, timedelta, datetime | None]], now: datetime,
                          report: RenewalScanReport) -> None:
        """Renew (certificate id, window, ARI moment) items, CHUNK to a transaction: one commit (one WAL flush)
        for many renewals is what lets a backlog of 100,000 go through in minutes. Each renewal has a savepoint
        of its own, so one that fails leaves the others of its chunk; the report counts a chunk once it has
        committed."""
        for start in range(0, len(items), CHUNK):
            chunk = items[start:start + CHUNK]
            outcomes: list[tuple[str, RenewResult | str | CertctlError]] = []
            try:
                async with self.ctx.db.transaction() as conn:
                    for cert_id, window, ari_at in chunk:
                        outcome: RenewResult | str | CertctlError
                        try:
                            async with conn.begin_nested():
                                outcome = await self._renew_one(conn, cert_id, window, now, ari_at=ari_at)
                        except IntegrityError as exc:  # as one transaction of its own would have said it
                            outcome = ConflictError(describe_integrity_error(exc))
                        except CertctlError as exc:
                            outcome = exc
                        outcomes.append((cert_id, outcome))
            except CertctlError as exc:  # the chunk did not commit: none of its renewals exists
                report.errors += len(chunk)
                log.warning("scheduled renewals not created", extra={"count": len(chunk), "error": exc.message})
                continue
            for cert_id, outcome in outcomes:
                if isinstance(outcome, CertctlError):
                    report.errors += 1
                    log.warning("scheduled renewal not created",
                                extra={"certificate_id": cert_id, "error": outcome.message})
                elif isinstance(outcome, str):
                    report.skip(outcome)
                else:
                    report.renewals.append(outcome.job_id)
                    if outcome.job_status is JobStatus.AWAITING_APPROVAL:
                        report.awaiting_approval += 1

    async def _renew_one(self, conn: AsyncConnection, cert_id: str, window: timedelta, now: datetime, *,
                         ari_at: datetime | None = None) -> RenewResult | str:
        """The renewal of one certificate in the caller's transaction, or why it was skipped."""
        system = Actor.system()
        cert = await jobs_repo.get_certificate(conn, cert_id, for_update=True)
        expires_at: datetime | None = cert["expires_at"] if cert is not None else None
        if cert is None or cert["status"] not in _RENEWABLE or expires_at is None \
                or not now < expires_at <= now + (window if ari_at is None else expires_at - now):
            return "changed"  # renewed, revoked or edited since the batch was read
        if ari_at is None:
            renew_at = await acme_client_repo.renew_at_of(conn, cert_id)
            if renew_at is not None and now < renew_at < expires_at:
                return "ari_window_later"  # the CA's window (RFC 9773) decides when
        if await jobs_repo.open_jobs_for_certificate(conn, cert_id, types=ISSUING_JOB_TYPES):
            return "open_job"
        rejected_at = await maintenance_repo.latest_rejection(conn, cert_id)
        if rejected_at is not None and rejected_at >= expires_at - window:
            return "approval_rejected"
        result = await self.actions._renew_in(conn, system, cert, force=False)
        await audit.record(conn, self.ctx.clock, system, "renewal_job_created", "certificate", cert_id, {
            "job_id": result.job_id, "job_type": self._job_type(cert), "job_status": result.job_status.value,
            "trigger": "scheduled" if ari_at is None else "ari", "renewal_window_days": window.days,
            **({"ari_renew_at": ari_at.isoformat()} if ari_at is not None else {}),
            "expires_at": expires_at.isoformat(), "days_left": (expires_at - now).days,
            "approval_id": result.approval_id,
        })
        return result

    @staticmethod
    def _job_type(cert: Row) -> str:
        return "Issuance" if cert["expires_at"] is None else "Renewal"

    # ---- status sweeps --------------------------------------------------------------------------
    async def _mark(
        self,
        *,
        statuses: tuple[str, ...],
        to: CertificateStatus,
        expires_before: datetime,
        reason: str,
        expires_after: datetime | None = None,
        policy_id: str | None = None,
        short_lived_only: bool = False,
    ) -> int:
        """Move matching certificates to `to` in batches; one audit event per certificate."""
        changed = 0
        system = Actor.system()
        while True:
            now = self.ctx.clock.now()
            async with self.ctx.db.transaction() as conn:
                batch = await maintenance_repo.lock_certificates_to_mark(
                    conn, statuses=statuses, expires_before=expires_before, expires_after=expires_after,
                    policy_id=policy_id, short_lived_only=short_lived_only, limit=BATCH,
                )
                await maintenance_repo.set_certificate_status(conn, [c["id"] for c in batch], to.value, now)
                await audit_repo.add_events(conn, [
                    audit.build_event(system, "certificate_status_changed", "certificate", c["id"], {
                        "from": c["status"], "to": to.value, "reason": reason,
                        "expires_at": c["expires_at"].isoformat(),
                    }, now) for c in batch
                ])
            changed += len(batch)
            if len(batch) < BATCH:
                return changed
