"""Certificate lifecycle actions: renew, deploy, revoke, and their bulk forms.

These change state, create job rows and audit; they never sign. The job processor, the agents
and the CA engine pick the jobs up later. Each single action is one transaction with its audit
event. A bulk action resolves the matching certificates in SQL, then runs the single action per
certificate in its own transaction, so one failure never undoes the others, and ends with one
summary audit event.

Revocation here is the inventory side (status, reason, open jobs cancelled); telling the issuer
and publishing the CRL/OCSP status belong to the CA engine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.actor import Actor
from certctl.domain.enums import CertificateStatus, JobStatus, JobType, RevocationReason
from certctl.domain.errors import CertctlError, ConflictError, NotFoundError, ValidationError
from certctl.domain.ids import new_id
from certctl.domain.models.jobs import (
    ActionStatus,
    ApprovalState,
    BulkEnqueuedJob,
    BulkError,
    BulkReassignBody,
    BulkReassignResult,
    BulkRenewBody,
    BulkRenewResult,
    BulkRevokeBody,
    BulkRevokeResult,
    BulkSelector,
    DeployResult,
    RenewResult,
)
from certctl.domain.models.profiles import SHORT_LIVED_TTL_SECONDS
from certctl.services import audit
from certctl.services.approvals import request_approval
from certctl.services.context import ServiceContext
from certctl.services.jobs import ISSUING_JOB_TYPES, abort_job, create_job, keygen_mode
from certctl.store import ca_repo, issuance_repo, jobs_repo
from certctl.store.rows import Row

RESOURCE = "certificate"
# Renewing these makes no sense: archived/revoked are final, an expired one must be re-issued
# as a new certificate (the reference refuses it too).
_NOT_RENEWABLE = {CertificateStatus.ARCHIVED.value, CertificateStatus.EXPIRED.value, CertificateStatus.REVOKED.value}
_NOT_DEPLOYABLE = {CertificateStatus.ARCHIVED.value, CertificateStatus.REVOKED.value}
_BULK_RENEW_SKIP = _NOT_RENEWABLE | {CertificateStatus.RENEWAL_IN_PROGRESS.value}
_BULK_REVOKE_SKIP = {CertificateStatus.REVOKED.value, CertificateStatus.ARCHIVED.value}


class _Skip(Exception):
    """A bulk member that is left alone on purpose (counted in total_skipped)."""


class CertificateActionService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        # Set by the container: called with the CA ids that revoked something, after the commit.
        self.after_revoke: Callable[[set[str]], Awaitable[None]] | None = None
        # Set by the container: tells an outside CA (ACME revokeCert) after the commit, per certificate.
        self.revoke_at_issuer: Callable[[str], Awaitable[int]] | None = None

    # ---- renew ------------------------------------------------------------------------------------
    async def renew(self, actor: Actor, certificate_id: str, *, force: bool = False) -> RenewResult:
        async with self.ctx.db.transaction() as conn:
            cert = await self._locked_cert(conn, certificate_id)
            result = await self._renew_in(conn, actor, cert, force=force)
        if result.job_status is JobStatus.PENDING:
            self.ctx.jobs_queued()
        return result

    async def _renew_in(self, conn: AsyncConnection, actor: Actor, cert: Row, *, force: bool) -> RenewResult:
        cert_id = cert["id"]
        if cert["status"] in _NOT_RENEWABLE:
            raise ValidationError(f"certificate '{cert_id}' is {cert['status']} and cannot be renewed")
        open_jobs = await jobs_repo.open_jobs_for_certificate(conn, cert_id, types=ISSUING_JOB_TYPES)
        in_progress = cert["status"] == CertificateStatus.RENEWAL_IN_PROGRESS.value or bool(open_jobs)
        if in_progress and not force:
            raise ConflictError(
                f"certificate '{cert_id}' already has a renewal in progress; use ?force=true to start over"
            )
        superseded = []
        for job in open_jobs:
            # A forced renewal replaces the open one rather than running two side by side.
            await abort_job(conn, self.ctx.clock, actor, job, reason=f"superseded by a forced renewal ({actor.name})")
            superseded.append(job["id"])

        policy = await jobs_repo.get_renewal_policy(conn, cert["renewal_policy_id"])
        max_attempts = max(1, int(policy["max_retries"])) if policy is not None else 3
        profile = (
            await jobs_repo.get_profile(conn, cert["certificate_profile_id"])
            if cert["certificate_profile_id"] else None
        )
        job_type = JobType.ISSUANCE if cert["expires_at"] is None else JobType.RENEWAL
        needs_approval = bool(profile is not None and profile["requires_approval"])
        if needs_approval:
            status = JobStatus.AWAITING_APPROVAL
        elif keygen_mode(self.ctx.settings, profile) == "agent":
            status = JobStatus.AWAITING_CSR
        else:
            status = JobStatus.PENDING
        job_id = await create_job(
            conn, self.ctx.clock, job_type=job_type, status=status, certificate_id=cert_id,
            max_attempts=max_attempts,
        )
        now = self.ctx.clock.now()
        await jobs_repo.update_certificate(
            conn, cert_id, {"status": CertificateStatus.RENEWAL_IN_PROGRESS.value, "updated_at": now}
        )
        approval_id = None
        if needs_approval:
            assert profile is not None
            approval_id, status = await request_approval(
                self.ctx, conn, actor, certificate_id=cert_id, job_id=job_id, profile_id=profile["id"],
                metadata={
                    "common_name": cert["common_name"], "sans": ",".join(cert["sans"] or []),
                    "issuer_id": cert["issuer_id"], "job_type": job_type.value,
                },
            )
        await audit.record(conn, self.ctx.clock, actor, "certificate_renewal_triggered", RESOURCE, cert_id, {
            "job_id": job_id, "job_type": job_type.value, "job_status": status.value, "force": force,
            "previous_status": cert["status"], "approval_id": approval_id, "superseded_jobs": superseded,
        })
        return RenewResult(status="renewal_triggered", job_id=job_id, job_status=status, approval_id=approval_id)

    # ---- deploy -----------------------------------------------------------------------------------
    async def deploy(self, actor: Actor, certificate_id: str, target_id: str | None) -> DeployResult:
        async with self.ctx.db.transaction() as conn:
            cert = await self._locked_cert(conn, certificate_id)
            if cert["status"] in _NOT_DEPLOYABLE:
                raise ValidationError(f"certificate '{certificate_id}' is {cert['status']} and cannot be deployed")
            if not await jobs_repo.has_version(conn, certificate_id):
                raise ValidationError(f"certificate '{certificate_id}' has no issued version to deploy yet")
            newly_mapped = False
            if target_id is not None:
                target = await jobs_repo.get_target(conn, target_id)
                if target is None:
                    raise ValidationError(f"target_id '{target_id}' does not exist")
                self._check_target_usable(target)
                if not await jobs_repo.is_mapped(conn, certificate_id, target_id):
                    await jobs_repo.add_mapping(conn, certificate_id, target_id, self.ctx.clock.now())
                    newly_mapped = True
                targets = [target]
            else:
                mapped = await jobs_repo.mapped_targets(conn, certificate_id)
                targets = [t for t in mapped if t["retired_at"] is None and t["enabled"]]
                if not targets:
                    raise ValidationError(
                        f"certificate '{certificate_id}' has no active deployment target; pass target_id to map one"
                    )
            policy = await jobs_repo.get_renewal_policy(conn, cert["renewal_policy_id"])
            max_attempts = max(1, int(policy["max_retries"])) if policy is not None else 3
            job_ids: list[str] = []
            reused: list[str] = []
            for target in targets:
                # One open deployment per (certificate, target): a second click is not a second job.
                existing = await jobs_repo.open_jobs_for_certificate(
                    conn, certificate_id, types=(JobType.DEPLOYMENT.value,), target_id=target["id"]
                )
                if existing:
                    job_ids.append(existing[0]["id"])
                    reused.append(existing[0]["id"])
                    continue
                job_ids.append(await create_job(
                    conn, self.ctx.clock, job_type=JobType.DEPLOYMENT, status=JobStatus.PENDING,
                    certificate_id=certificate_id, target_id=target["id"], agent_id=target["agent_id"],
                    max_attempts=max_attempts,
                ))
            await audit.record(conn, self.ctx.clock, actor, "certificate_deployment_triggered", RESOURCE,
                               certificate_id, {
                                   "job_ids": job_ids, "reused_job_ids": reused,
                                   "target_ids": [t["id"] for t in targets],
                                   "newly_mapped_target_id": target_id if newly_mapped else None,
                               })
        return DeployResult(status="deployment_triggered", job_ids=job_ids)

    @staticmethod
    def _check_target_usable(target: Row) -> None:
        if target["retired_at"] is not None:
            raise ValidationError(f"target '{target['id']}' is retired")
        if not target["enabled"]:
            raise ValidationError(f"target '{target['id']}' is disabled")

    # ---- revoke -----------------------------------------------------------------------------------
    async def revoke(self, actor: Actor, certificate_id: str, reason: RevocationReason) -> ActionStatus:
        async with self.ctx.db.transaction() as conn:
            cert = await self._locked_cert(conn, certificate_id)
            cas = await self._revoke_in(conn, actor, cert, reason)
        await self._publish_revocations(cas)
        if self.revoke_at_issuer is not None:
            await self.revoke_at_issuer(certificate_id)
        return ActionStatus(status="revoked")

    async def _revoke_in(
        self, conn: AsyncConnection, actor: Actor, cert: Row, reason: RevocationReason
    ) -> set[str]:
        """Revoke in the caller's transaction; returns the ids of the CAs whose status changed."""
        cert_id = cert["id"]
        if cert["status"] == CertificateStatus.REVOKED.value:
            raise ConflictError(f"certificate '{cert_id}' is already revoked")
        if cert["status"] == CertificateStatus.ARCHIVED.value:
            raise ValidationError(f"certificate '{cert_id}' is archived and cannot be revoked")
        now = self.ctx.clock.now()
        # Revoked first, so cancelling its renewal does not put it back to Active.
        await jobs_repo.update_certificate(conn, cert_id, {
            "status": CertificateStatus.REVOKED.value, "revoked_at": now,
            "revocation_reason": reason.value, "updated_at": now,
        })
        revoked_serials, cas = await self._record_revocations(conn, actor, cert, reason)
        cancelled = []
        for job in await jobs_repo.open_jobs_for_certificate(conn, cert_id):
            await abort_job(conn, self.ctx.clock, actor, job, reason="certificate revoked",
                            approval_state=ApprovalState.REJECTED)
            cancelled.append(job["id"])
        await audit.record(conn, self.ctx.clock, actor, "certificate_revoked", RESOURCE, cert_id, {
            "reason": reason.value, "reason_code": reason.code, "previous_status": cert["status"],
            "cancelled_jobs": cancelled, "revoked_serials": revoked_serials,
        })
        return cas

    async def _record_revocations(
        self, conn: AsyncConnection, actor: Actor, cert: Row, reason: RevocationReason
    ) -> tuple[list[str], set[str]]:
        """One revocation record per issued version still valid (RFC 5280 §5.3.1 reason code), which CRL
        and OCSP publish; the CAs concerned are remembered so the caller can refresh them after commit."""
        now = self.ctx.clock.now()
        profile = await jobs_repo.get_profile(conn, cert["certificate_profile_id"]) \
            if cert["certificate_profile_id"] else None
        short_lived = bool(profile is not None and profile["allow_short_lived"]
                           and 0 < profile["max_ttl_seconds"] < SHORT_LIVED_TTL_SECONDS)
        serials: list[str] = []
        cas: set[str] = set()
        for version in await issuance_repo.versions_of_certificate(conn, cert["id"]):
            if version["not_after"] <= now:
                continue  # expired: no relying party may accept it any more
            if await ca_repo.revocation_for(conn, cert["issuer_id"], version["serial_number"]) is not None:
                continue
            await ca_repo.insert_revocation(conn, {
                "id": new_id("rev"), "issuer_id": cert["issuer_id"], "ca_id": version["ca_id"],
                "serial_number": version["serial_number"], "certificate_id": cert["id"], "version_id": version["id"],
                "reason": reason.value, "reason_code": reason.code, "revoked_at": now, "revoked_by": actor.name,
                "not_after": version["not_after"], "short_lived": short_lived,
                "issuer_notified": version["ca_id"] is not None,  # our own CA knows at once
                "created_at": now,
            })
            serials.append(version["serial_number"])
            if version["ca_id"] is not None:
                cas.add(version["ca_id"])
        return serials, cas

    async def _publish_revocations(self, cas: set[str]) -> None:
        """After commit: CRLs rebuilt and OCSP caches dropped for the CAs that just revoked something."""
        if cas and self.after_revoke is not None:
            await self.after_revoke(cas)

    # ---- bulk -------------------------------------------------------------------------------------
    async def bulk_revoke(self, actor: Actor, body: BulkRevokeBody, *, est_only: bool = False) -> BulkRevokeResult:
        reason = body.reason

        async def one(conn: AsyncConnection, cert: Row) -> set[str]:
            if cert["status"] in _BULK_REVOKE_SKIP:
                raise _Skip
            return await self._revoke_in(conn, actor, cert, reason)

        matched, done, skipped, errors = await self._run_bulk(body, one, source="EST" if est_only else None)
        await self._publish_revocations(set().union(*(cas for _, cas in done)))
        if self.revoke_at_issuer is not None:
            for certificate_id, _ in done:
                await self.revoke_at_issuer(certificate_id)
        result = BulkRevokeResult(
            total_matched=matched, total_revoked=len(done), total_skipped=skipped,
            total_failed=len(errors), errors=errors,
        )
        action = "est_bulk_revoke" if est_only else "bulk_revocation_initiated"
        await self._summary(actor, action, body, {"reason": reason.value, **result.model_dump(exclude={"errors"})})
        return result

    async def bulk_renew(self, actor: Actor, body: BulkRenewBody) -> BulkRenewResult:
        async def one(conn: AsyncConnection, cert: Row) -> str:
            if cert["status"] in _BULK_RENEW_SKIP:
                raise _Skip
            # Same path as a single renewal, approval gate included: bulk must not bypass it.
            return (await self._renew_in(conn, actor, cert, force=False)).job_id

        matched, done, skipped, errors = await self._run_bulk(body, one)
        result = BulkRenewResult(
            total_matched=matched, total_enqueued=len(done), total_skipped=skipped, total_failed=len(errors),
            enqueued_jobs=[BulkEnqueuedJob(certificate_id=c, job_id=str(j)) for c, j in done], errors=errors,
        )
        await self._summary(actor, "bulk_renewal_initiated", body,
                            result.model_dump(exclude={"errors", "enqueued_jobs"}))
        if done:
            self.ctx.jobs_queued()
        return result

    async def bulk_reassign(self, actor: Actor, body: BulkReassignBody) -> BulkReassignResult:
        async with self.ctx.db.read() as conn:
            if await jobs_repo.get_owner(conn, body.owner_id) is None:
                raise ValidationError(f"owner_id '{body.owner_id}' does not exist")
            if body.team_id is not None and await jobs_repo.get_team(conn, body.team_id) is None:
                raise ValidationError(f"team_id '{body.team_id}' does not exist")

        async def one(conn: AsyncConnection, cert: Row) -> None:
            changes: dict[str, Any] = {}
            if cert["owner_id"] != body.owner_id:
                changes["owner_id"] = body.owner_id
            if body.team_id is not None and cert["team_id"] != body.team_id:
                changes["team_id"] = body.team_id
            if not changes:
                raise _Skip
            changes["updated_at"] = self.ctx.clock.now()
            await jobs_repo.update_certificate(conn, cert["id"], changes)
            await audit.record(conn, self.ctx.clock, actor, "certificate_reassigned", RESOURCE, cert["id"], {
                "from_owner_id": cert["owner_id"], "to_owner_id": body.owner_id,
                "from_team_id": cert["team_id"], "to_team_id": body.team_id or cert["team_id"],
            })

        selector = BulkSelector(certificate_ids=body.certificate_ids)
        matched, done, skipped, errors = await self._run_bulk(selector, one)
        result = BulkReassignResult(
            total_matched=matched, total_reassigned=len(done), total_skipped=skipped,
            total_failed=len(errors), errors=errors,
        )
        await self._summary(actor, "bulk_reassignment_initiated", selector, {
            "owner_id": body.owner_id, "team_id": body.team_id, **result.model_dump(exclude={"errors"}),
        })
        return result

    async def _run_bulk(
        self,
        selector: BulkSelector,
        one: Callable[[AsyncConnection, Row], Awaitable[Any]],
        *,
        source: str | None = None,
    ) -> tuple[int, list[tuple[str, Any]], int, list[BulkError]]:
        """Apply `one` to each matching certificate in its own transaction.

        Returns (matched, [(certificate_id, result)], skipped, errors). Explicit IDs that name no
        certificate at all are reported as errors; IDs that exist but miss the other selectors
        are simply not matched.
        """
        if selector.is_empty:
            raise ValidationError(
                "at least one selector is required: profile_id, owner_id, agent_id, issuer_id, team_id "
                "or certificate_ids"
            )
        ids = selector.certificate_ids
        async with self.ctx.db.read() as conn:
            matched_ids = await jobs_repo.select_certificate_ids(
                conn, profile_id=selector.profile_id, owner_id=selector.owner_id, agent_id=selector.agent_id,
                issuer_id=selector.issuer_id, team_id=selector.team_id, certificate_ids=ids, source=source,
            )
            existing = await jobs_repo.existing_certificate_ids(conn, ids) if ids else set()
        errors = [
            BulkError(certificate_id=i, error=f"certificate '{i}' not found") for i in ids or [] if i not in existing
        ]
        done: list[tuple[str, Any]] = []
        skipped = 0
        for cert_id in matched_ids:
            try:
                async with self.ctx.db.transaction() as conn:
                    cert = await jobs_repo.get_certificate(conn, cert_id, for_update=True)
                    if cert is None:  # deleted since it was matched
                        raise NotFoundError.of("certificate", cert_id)
                    outcome = await one(conn, cert)
            except _Skip:
                skipped += 1
            except CertctlError as exc:
                errors.append(BulkError(certificate_id=cert_id, error=exc.message))
            else:
                done.append((cert_id, outcome))  # only once its transaction has committed
        return len(matched_ids), done, skipped, errors

    async def _summary(self, actor: Actor, action: str, selector: BulkSelector, details: dict[str, Any]) -> None:
        async with self.ctx.db.transaction() as conn:
            await audit.record(conn, self.ctx.clock, actor, action, RESOURCE, "bulk",
                               {**selector.audit_details(), **details})

    # ---- shared -----------------------------------------------------------------------------------
    async def _locked_cert(self, conn: AsyncConnection, certificate_id: str) -> Row:
        cert = await jobs_repo.get_certificate(conn, certificate_id, for_update=True)
        if cert is None:
            raise NotFoundError.of("certificate", certificate_id)
        return cert
