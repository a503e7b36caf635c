"""Issuing certificates through jobs: the CSR intake, the numbered issuance sequence, and attempt failures.

A job reaches `execute` in Running, claimed by this process (`holder`) with a lease. The sequence:
  1. read the job, certificate, issuer, profile (a job that is no longer ours is left alone);
  2. take the key: the agent's CSR stored on the job (agent key generation), or a key generated
     here and sealed (server key generation); with agent generation and no CSR yet, the job goes
     to AwaitingCSR and the sequence stops;
  3. resolve the issuing CA (local GenericCA issuers); an issuer type with a connector in
     `certctl.connectors.issuers.registry` (ACME) takes `_issue_by_connector` instead: a CSR (the agent's, or
     one made here for a server key), the CA's answer awaited outside any transaction within the job's
     lease, then step 5 with the CA's leaf and chain (no certctl CA id). CA errors fail the attempt with the
     connector's verdict on retrying. Types with neither fail the job permanently with that reason;
  4. draw a random serial and sign (name constraints of every CA above are enforced by the leaf
     template before signing);
  5. in one transaction: re-check the job is still ours and Running, store the version (unique per
     job and per CA+serial), the sealed key if any, the certificate's new status and expiry,
     complete the job, queue a deployment job per mapped target, and audit `certificate_issued`.
A crash anywhere before step 5 commits leaves the job Running with a lease; the job reaper puts it
back to Pending once the lease has run out and the sequence runs again with a fresh serial. The
unique job_id on versions makes a second stored version for one job impossible.

An agent's CSR for a local CA (`submit_csr`) runs the whole sequence in the request. On PostgreSQL its usual
case takes two statements (`_submit_csr_fast`): one read of everything the checks need, then, after the checks
and the signature, one statement that completes the job only if it is still the AwaitingCSR job that was read
and writes everything else from that (one statement is one transaction). Anything unusual, or a job that changed
in between, goes to the general path (SQLAlchemy, the job locked), which answers as it always did.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.connectors.issuers.base import IssueRequest, IssuerError
from certctl.domain.actor import Actor
from certctl.domain.enums import CertificateStatus, ExtendedKeyUsage, IssuerType, JobStatus, JobType
from certctl.domain.errors import (
    CertctlError,
    ConflictError,
    ForbiddenError,
    GoneError,
    NotFoundError,
    ValidationError,
)
from certctl.domain.ids import new_id
from certctl.domain.models.agent_work import CSRAccepted
from certctl.domain.models.jobs import plan_job_transition
from certctl.domain.models.profiles import CertificateProfile
from certctl.observability import metrics
from certctl.observability.calls import issuer_call, traced_job
from certctl.pki.ca import IssuingCA
from certctl.pki.csr_build import build_csr
from certctl.pki.csr_policy import CheckedCSR, check_csr, general_name, key_facts
from certctl.pki.leaf import LeafRequest, build_leaf, generate_leaf_key, private_key_pem
from certctl.pki.serials import new_serial, serial_hex
from certctl.services import audit
from certctl.services.ca_service import CAService, RootMissing
from certctl.services.context import ServiceContext
from certctl.services.issuer_connectors import IssuerConnectors
from certctl.services.jobs import ISSUING_JOB_TYPES, transition_job
from certctl.store import audit_repo, issuance_repo, job_queue_repo, jobs_repo, rows
from certctl.store.rows import Row
from certctl.store.schema import agents

DEFAULT_VALIDITY = timedelta(days=90)
LEASE = timedelta(minutes=5)
# Without a profile the reference issues serverAuth + clientAuth leaves.
DEFAULT_EKUS = (ExtendedKeyUsage.SERVER_AUTH, ExtendedKeyUsage.CLIENT_AUTH)
MAX_BACKOFF = timedelta(hours=24)


def process_holder() -> str:
    """Names this server process in job leases (host, pid, and a random part for pid reuse)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def retry_delay(base_seconds: int, attempts: int, rng: random.Random | None = None) -> timedelta:
    """Exponential backoff with ±20 % jitter: base, 2 x base, 4 x base, ... capped at 24 h."""
    exponent = max(0, attempts - 1)
    delay = min(float(base_seconds) * (2 ** min(exponent, 20)), MAX_BACKOFF.total_seconds())
    jitter = (rng or random).uniform(0.8, 1.2)
    return timedelta(seconds=min(delay * jitter, MAX_BACKOFF.total_seconds()))


def _serial_collision(exc: Exception) -> bool:
    """A unique-serial violation (the store turns integrity errors into ConflictError; the cause says which)."""
    cause = exc.__cause__ if isinstance(exc, ConflictError) else exc
    if not isinstance(cause, IntegrityError):
        return False
    text = str(cause.orig if cause.orig is not None else cause)
    return "uq_versions_ca_serial" in text or "certificate_versions.serial_number" in text


class _ProfileCache:
    """Parsed profiles by (id, updated_at): validating a profile model on every issuance costs more than signing."""

    def __init__(self) -> None:
        self._parsed: dict[tuple[str, Any], CertificateProfile] = {}

    def get(self, row: Mapping[Any, Any]) -> CertificateProfile:
        key = (row["id"], row["updated_at"])
        profile = self._parsed.get(key)
        if profile is None:
            if len(self._parsed) > 1024:
                self._parsed.clear()
            profile = self._parsed[key] = CertificateProfile.model_validate(dict(row))
        return profile


class PermanentIssuanceError(CertctlError):
    """The job cannot succeed by trying again (bad CSR, name constraints, unsupported issuer)."""


@dataclass(frozen=True)
class _Plan:
    job: Mapping[Any, Any]
    cert: Mapping[Any, Any]
    issuer: Mapping[Any, Any]
    profile: CertificateProfile | None
    policy: Mapping[Any, Any] | None


class IssuanceService:
    def __init__(self, ctx: ServiceContext, cas: CAService) -> None:
        self.ctx = ctx
        self.cas = cas
        self.holder = process_holder()
        self._profiles = _ProfileCache()
        self._parsed_names: dict[tuple[str, ...], tuple[x509.GeneralName, ...]] = {}
        self.connectors = IssuerConnectors(ctx)
        # How long a claim holds without renewal; a crashed holder's jobs are requeued after it (job reaper).
        lease_seconds = ctx.settings.extra.get("CERTCTL_JOB_LEASE_SECONDS") or LEASE.total_seconds()
        self.lease = timedelta(seconds=int(lease_seconds))

    # ---- CSR intake (agent key generation) ------------------------------------------------------
    async def submit_csr(
        self, actor: Actor, agent_id: str, csr_pem: str, certificate_id: str | None, job_id: str | None = None
    ) -> CSRAccepted:
        """Validate an agent's CSR against the certificate and its profile, then issue at once.

        A rejected CSR is a 400 naming the rule and leaves the job waiting in AwaitingCSR.
        """
        if self.ctx.db.dialect == "postgresql":
            accepted = await self._submit_csr_fast(actor, agent_id, csr_pem, certificate_id, job_id)
            if accepted is not None:
                return accepted
        for _ in range(3):  # a serial collision (2^-127 per pair) rolls everything back and draws again
            try:
                return await self._submit_csr_once(actor, agent_id, csr_pem, certificate_id, job_id)
            except RootMissing as missing:  # the issuer's first issuance: its root, then the CSR again
                await self.cas.create_root(missing.issuer)
            except (ConflictError, IntegrityError) as exc:
                if not _serial_collision(exc):
                    raise
        raise ConflictError("could not draw a unique serial number; try again")

    async def _submit_csr_once(
        self, actor: Actor, agent_id: str, csr_pem: str, certificate_id: str | None, job_id: str | None
    ) -> CSRAccepted:
        now = self.ctx.clock.now()
        csr_pem = csr_pem.strip() + "\n"
        async with self.ctx.db.transaction() as conn:
            agent = await rows.get_row(conn, agents, agent_id)
            if agent is None:
                raise NotFoundError.of("agent", agent_id)
            if agent["retired_at"] is not None:
                raise GoneError(f"agent '{agent_id}' is retired")
            job = await self._job_awaiting_csr(conn, certificate_id, job_id)
            if job["agent_id"] not in (None, agent_id) or (
                job["agent_id"] is None
                and not await issuance_repo.agent_owns_certificate(conn, agent_id, job["certificate_id"])
            ):
                raise ForbiddenError(
                    f"agent '{agent_id}' does not deploy certificate '{job['certificate_id']}' "
                    "and may not submit its CSR"
                )
            plan = await self._plan(conn, job)
            checked = self._check(csr_pem, plan)
            submitted = audit.build_event(actor, "csr_submitted", "job", job["id"], {
                "certificate_id": job["certificate_id"], "agent_id": agent_id, "key_algorithm": checked.key_label,
                "attempt": job["attempts"] + 1,
            }, now)
            if plan.issuer["type"] == IssuerType.GENERIC_CA.value:
                # The local CA signs in well under a millisecond: the whole sequence is this one transaction,
                # so the answer carries the stored certificate and a failure leaves nothing behind.
                ca = await self.cas.issuing_ca(conn, plan.issuer, create=False)
                with issuer_call(plan.issuer["type"], plan.issuer["id"], job_id=job["id"]):
                    leaf = build_leaf(ca, self._leaf_request(plan, checked.public_key), new_serial())
                running = {**dict(job), **plan_job_transition(job["status"], JobStatus.RUNNING, now,
                                                              attempts=job["attempts"]),
                           "csr_pem": csr_pem, "agent_id": agent_id}
                version_id = await self._commit_issued(
                    conn, _Plan(running, plan.cert, plan.issuer, plan.profile, plan.policy), ca.id, ca.chain_pem,
                    leaf, None, checked.key_algorithm.value, checked.key_size, earlier_events=[submitted],
                )
                return CSRAccepted(status="accepted", job_id=job["id"], job_status=JobStatus.COMPLETED.value,
                                   certificate_id=job["certificate_id"], version_id=version_id,
                                   serial_number=serial_hex(leaf.serial_number))
            # Another issuer answers in its own time: the job runs now, outside this request's transaction.
            await transition_job(conn, self.ctx.clock, job, JobStatus.RUNNING)
            await jobs_repo.update_job(conn, job["id"], {
                "csr_pem": csr_pem, "agent_id": agent_id, "claimed_by": self.holder,
                "lease_expires_at": now + self.lease,
            })
            await audit_repo.add_events(conn, [submitted])
        status = await self.execute(job["id"])
        async with self.ctx.db.read() as conn:
            version = await issuance_repo.version_of_job(conn, job["id"])
        return CSRAccepted(
            status="accepted", job_id=job["id"], job_status=status, certificate_id=job["certificate_id"],
            version_id=version["id"] if version else None, serial_number=version["serial_number"] if version else None,
        )

    async def _submit_csr_fast(
        self, actor: Actor, agent_id: str, csr_pem: str, certificate_id: str | None, job_id: str | None
    ) -> CSRAccepted | None:
        """PostgreSQL, the usual case (a local CA, nothing unusual): one read, the checks and the signature,
        one atomic write (see `issuance_repo.store_agent_issuance`). None when anything is out of the ordinary
        or the job changed meanwhile: the general path then decides, with the job locked, and answers exactly
        as it always did (errors included). A rejected CSR is refused here (400) as there."""
        if not certificate_id and not job_id:
            return None
        csr_pem = csr_pem.strip() + "\n"
        for _ in range(2):
            async with self.ctx.db.read() as conn:
                found = await issuance_repo.csr_intake(conn, agent_id, certificate_id=certificate_id, job_id=job_id,
                                                       issuing_types=ISSUING_JOB_TYPES)
                plan = self._fast_plan(found, agent_id, certificate_id)
                if plan is None:
                    return None
                ca_id = self.cas.signing_ca_id(plan.issuer, found.cas)
                if ca_id is None:
                    return None
                ca = self.cas.loaded(ca_id)
                if ca is not None:
                    return await self._sign_and_store(conn, actor, agent_id, csr_pem, plan, ca, found.targets)
            # The CA's first use in this process: load it (on a connection of its own, after this one went
            # back to the pool, so that concurrent first requests cannot exhaust it), then read again.
            async with self.ctx.db.read() as conn:
                await self.cas.load_by_id(conn, ca_id)
        return None

    def _fast_plan(self, found: issuance_repo.CSRIntake, agent_id: str, certificate_id: str | None) -> _Plan | None:
        """The plan when the general path would go on to check the CSR and sign without a question; else None."""
        job, cert, issuer = found.job, found.cert, found.issuer
        if (not found.agent_found or not found.agent_live or job is None or cert is None or issuer is None
                or job["status"] != JobStatus.AWAITING_CSR.value or job["type"] not in ISSUING_JOB_TYPES
                or (certificate_id and job["certificate_id"] != certificate_id)
                or job["agent_id"] not in (None, agent_id) or (job["agent_id"] is None and not found.agent_owns)
                or not issuer["enabled"]):
            return None
        profile = self._profiles.get(found.profile) if found.profile is not None else None
        if profile is not None and not profile.enabled:
            return None
        return _Plan(job=job, cert=cert, issuer=issuer, profile=profile, policy=None)

    async def _sign_and_store(
        self, conn: AsyncConnection, actor: Actor, agent_id: str, csr_pem: str, plan: _Plan, ca: IssuingCA,
        targets: list[tuple[str, str]],
    ) -> CSRAccepted | None:
        now = self.ctx.clock.now()
        job, cert, issuer = plan.job, plan.cert, plan.issuer
        checked = self._check(csr_pem, plan)
        plan_job_transition(plan_job_transition(job["status"], JobStatus.RUNNING, now)["status"],
                            JobStatus.COMPLETED, now)  # legal moves, as the general path checks them
        with issuer_call(issuer["type"], issuer["id"], job_id=job["id"]):
            leaf = build_leaf(ca, self._leaf_request(plan, checked.public_key), new_serial())
        version = self._version_values(leaf, ca.chain_pem, csr_pem, ca.id, job["id"], cert["id"],
                                       checked.key_algorithm.value, checked.key_size, now)
        submitted = audit.build_event(actor, "csr_submitted", "job", job["id"], {
            "certificate_id": job["certificate_id"], "agent_id": agent_id, "key_algorithm": checked.key_label,
            "attempt": job["attempts"] + 1,
        }, now)
        issued = audit.build_event(Actor.system(), "certificate_issued", "certificate", cert["id"], {
            **self._issued_details(job, cert, version, ca.id, "agent"), "deployment_jobs": [],
        }, now)  # deployment_jobs: the jobs the write really queues, filled in by it
        target_ids = [target_id for target_id, _ in targets]
        stored = await issuance_repo.store_agent_issuance(
            conn, job=job, now=now, csr_pem=csr_pem, agent_id=agent_id, version=version,
            renewal=cert["expires_at"] is not None or job["type"] == JobType.RENEWAL.value,
            deployment_job_ids=[new_id("job") for _ in target_ids], deployment_targets=target_ids,
            submitted=submitted, issued=issued,
        )
        if not stored.completed:
            return None  # the job changed since it was read, or the serial was taken: the general path decides
        metrics.job_outcome(job["type"], "completed")
        return CSRAccepted(status="accepted", job_id=job["id"], job_status=JobStatus.COMPLETED.value,
                           certificate_id=job["certificate_id"], version_id=version["id"],
                           serial_number=version["serial_number"])

    async def _job_awaiting_csr(self, conn: AsyncConnection, certificate_id: str | None, job_id: str | None) -> Row:
        if job_id:
            job = await jobs_repo.get_job(conn, job_id, for_update=True)
            if job is None:
                raise NotFoundError.of("job", job_id)
            if certificate_id and job["certificate_id"] != certificate_id:
                raise ValidationError(f"job '{job_id}' is not for certificate '{certificate_id}'")
        elif certificate_id:
            job = await issuance_repo.awaiting_csr_job(conn, certificate_id, ISSUING_JOB_TYPES)
            if job is None:
                if await jobs_repo.get_certificate(conn, certificate_id) is None:
                    raise NotFoundError.of("certificate", certificate_id)
                raise ConflictError(f"certificate '{certificate_id}' has no job waiting for a CSR")
        else:
            raise ValidationError("certificate_id is required")
        if job["status"] != JobStatus.AWAITING_CSR.value or job["type"] not in ISSUING_JOB_TYPES:
            raise ConflictError(f"job '{job['id']}' is {job['status']}, not waiting for a CSR")
        return job

    # ---- the issuance sequence -----------------------------------------------------------------
    @traced_job
    async def execute(self, job_id: str) -> str:
        """Run one issuing job that this process holds; returns the job's status afterwards."""
        async with self.ctx.db.read() as conn:  # 1. read
            job = await jobs_repo.get_job(conn, job_id)
            if job is None or job["status"] != JobStatus.RUNNING.value or job["claimed_by"] != self.holder:
                return job["status"] if job is not None else "missing"
            try:
                plan = await self._plan(conn, job)
                mode = (plan.profile.key_generation_mode if plan.profile else "") or self.ctx.settings.keygen_mode
                if mode == "agent" and not job["csr_pem"]:
                    return await self._await_csr(job)
                ca = await self.cas.issuing_ca(conn, plan.issuer) if plan.issuer["type"] == \
                    IssuerType.GENERIC_CA.value else None
            except PermanentIssuanceError as exc:
                return await self.fail_attempt(job_id, exc.message, retryable=False)
            except CertctlError as exc:
                return await self.fail_attempt(job_id, exc.message, retryable=True)
        if ca is None and self.connectors.handles(plan.issuer["type"]):
            return await self._issue_by_connector(plan)
        if ca is None:
            return await self.fail_attempt(
                job_id, f"issuer type {plan.issuer['type']} has no certctl connector yet", retryable=False)
        try:  # 2-4. key, request, serial, sign
            key_pem = None
            if job["csr_pem"]:
                checked = self._check(job["csr_pem"], plan)
                public_key, key_algorithm, key_size = checked.public_key, checked.key_algorithm, checked.key_size
            else:
                rules = [(r.algorithm.value, r.min_size) for r in plan.profile.allowed_key_algorithms] \
                    if plan.profile else []
                if rules and rules[0][0].upper() == "RSA":
                    # RSA key generation takes 50-500 ms and releases the GIL: off the event loop, so the API
                    # and the rest of the processor's batch keep moving (EC keys take microseconds).
                    private_key, key_algorithm, key_size = await asyncio.to_thread(generate_leaf_key, rules)
                else:
                    private_key, key_algorithm, key_size = generate_leaf_key(rules)
                public_key = private_key.public_key()
                key_pem = private_key_pem(private_key)
            request = self._leaf_request(plan, public_key)
        except ValidationError as exc:
            return await self.fail_attempt(job_id, exc.message, retryable=False)
        for _ in range(3):  # a serial collision (2^-127 per pair) just draws again
            serial = new_serial()
            try:
                with issuer_call(plan.issuer["type"], plan.issuer["id"], job_id=job_id):
                    leaf = build_leaf(ca, request, serial)
            except ValidationError as exc:
                return await self.fail_attempt(job_id, exc.message, retryable=False)
            try:
                return await self._store(plan, ca.id, ca.chain_pem, leaf, key_pem, key_algorithm.value, key_size)
            except (ConflictError, IntegrityError) as exc:
                if not _serial_collision(exc):
                    raise
        return await self.fail_attempt(job_id, "could not draw a unique serial number", retryable=True)

    async def _issue_by_connector(self, plan: _Plan) -> str:
        """Steps 2-5 through an issuer connector (ACME): CSR, the CA's answer, then the same storing step."""
        job = plan.job
        try:
            connector = self.connectors.for_issuer(plan.issuer)
            key_pem = None
            if job["csr_pem"]:
                csr_pem = job["csr_pem"]
                checked = self._check(csr_pem, plan)
                key_algorithm, key_size = checked.key_algorithm, checked.key_size
            else:
                rules = [(r.algorithm.value, r.min_size) for r in plan.profile.allowed_key_algorithms] \
                    if plan.profile else []
                private_key, key_algorithm, key_size = await asyncio.to_thread(generate_leaf_key, rules)
                key_pem = private_key_pem(private_key)
                csr_pem = build_csr(private_key, str(plan.cert["common_name"]), self._names(plan.cert))
            replaces = await self.connectors.replaces_for(plan.issuer, plan.cert["id"]) \
                if job["type"] == JobType.RENEWAL.value else None
        except ValidationError as exc:
            return await self.fail_attempt(job["id"], exc.message, retryable=False)
        try:
            with issuer_call(plan.issuer["type"], plan.issuer["id"], job_id=job["id"]):  # span + duration histogram
                result = await connector.issue(IssueRequest(
                    csr_pem=csr_pem, common_name=str(plan.cert["common_name"]),
                    sans=tuple(str(s) for s in plan.cert["sans"] or ()), replaces=replaces,
                    certificate_id=plan.cert["id"], job_id=job["id"]))
            leaf = x509.load_pem_x509_certificate(result.leaf_pem.encode())
        except IssuerError as exc:
            return await self.fail_attempt(job["id"], exc.message, retryable=exc.retryable)
        except CertctlError as exc:
            return await self.fail_attempt(job["id"], exc.message, retryable=False)
        try:
            status = await self._store(plan, None, result.chain_pem, leaf, key_pem, key_algorithm.value, key_size,
                                       details={**result.details, "issuer_type": plan.issuer["type"]})
        except ConflictError as exc:  # the CA's certificate is in the inventory already (same fingerprint)
            return await self.fail_attempt(job["id"], f"the CA's certificate cannot be stored: {exc.message}",
                                           retryable=False)
        if status == JobStatus.COMPLETED.value:
            async with self.ctx.db.read() as conn:
                version = await issuance_repo.version_of_job(conn, job["id"])
            if version is not None:
                await self.connectors.after_issue(plan.issuer, plan.cert["id"], version["id"], result)
        return status

    async def _store(
        self, plan: _Plan, ca_id: str | None, chain_pem: str, leaf: x509.Certificate, key_pem: str | None,
        key_algorithm: str, key_size: int, details: Mapping[str, Any] | None = None,
    ) -> str:
        """5. one transaction: the job is still ours, then everything `_commit_issued` writes."""
        async with self.ctx.db.transaction() as conn:
            job = await jobs_repo.get_job(conn, plan.job["id"], for_update=True)
            if job is None or job["status"] != JobStatus.RUNNING.value or job["claimed_by"] != self.holder:
                # Cancelled, or reaped and taken by someone else while we signed: what we signed is dropped.
                return job["status"] if job is not None else "missing"
            await self._commit_issued(conn, _Plan(job, plan.cert, plan.issuer, plan.profile, plan.policy), ca_id,
                                      chain_pem, leaf, key_pem, key_algorithm, key_size, details=details)
        return JobStatus.COMPLETED.value

    async def _commit_issued(
        self, conn: AsyncConnection, plan: _Plan, ca_id: str | None, chain_pem: str, leaf: x509.Certificate,
        key_pem: str | None, key_algorithm: str, key_size: int, *, earlier_events: list[dict[str, Any]] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> str:
        """In the caller's transaction: version (+ sealed key), certificate, job Completed, deployments, audit.

        `plan.job` is the job as it is now in Running (possibly not written yet); returns the version id.
        """
        now = self.ctx.clock.now()
        job, cert = plan.job, plan.cert
        version = self._version_values(leaf, chain_pem, job["csr_pem"] or "", ca_id, job["id"], cert["id"],
                                       key_algorithm, key_size, now)
        version_id: str = version["id"]
        await issuance_repo.insert_version(conn, version)
        if key_pem is not None:
            await issuance_repo.insert_private_key(conn, {
                "version_id": version_id, "sealed_key": self.ctx.sealer.seal({"private_key_pem": key_pem}),
                "created_at": now,
            })
        # A certificate revoked or archived while its renewal ran keeps that status; the version is kept
        # for the record (and the revocation of its serial is the operator's next step).
        if await issuance_repo.activate_certificate(
            conn, cert["id"], expires_at=leaf.not_valid_after_utc, now=now,
            renewal=cert["expires_at"] is not None or job["type"] == JobType.RENEWAL.value,
        ):
            deployments = await self._queue_deployments(conn, cert, job)
        else:
            deployments = []
        changes = plan_job_transition(job["status"], JobStatus.COMPLETED, now, attempts=job["attempts"])
        metrics.job_outcome(job["type"], "completed")  # counted when this transaction commits
        await jobs_repo.update_job(conn, job["id"], {
            **changes, "attempts": job["attempts"], "started_at": job["started_at"] or now,
            "csr_pem": job["csr_pem"], "agent_id": job["agent_id"], "last_error": None,
        })
        issued = audit.build_event(Actor.system(), "certificate_issued", "certificate", cert["id"], {
            **self._issued_details(job, cert, version, ca_id, "server" if key_pem is not None else "agent"),
            "deployment_jobs": deployments, **(details or {}),
        }, now)
        await audit_repo.add_events(conn, [*(earlier_events or []), issued])
        return version_id

    @staticmethod
    def _version_values(
        leaf: x509.Certificate, chain_pem: str, csr_pem: str, ca_id: str | None, job_id: str, certificate_id: str,
        key_algorithm: str, key_size: int, now: Any,
    ) -> dict[str, Any]:
        """The version row of a freshly signed leaf."""
        return {
            "id": new_id("certver"), "certificate_id": certificate_id, "serial_number": serial_hex(leaf.serial_number),
            "not_before": leaf.not_valid_before_utc, "not_after": leaf.not_valid_after_utc,
            "fingerprint_sha256": leaf.fingerprint(hashes.SHA256()).hex(),
            "pem_chain": leaf.public_bytes(serialization.Encoding.PEM).decode() + chain_pem, "csr_pem": csr_pem,
            "key_algorithm": key_algorithm, "key_size": key_size, "created_at": now, "ca_id": ca_id, "job_id": job_id,
        }

    @staticmethod
    def _issued_details(
        job: Mapping[Any, Any], cert: Mapping[Any, Any], version: Mapping[str, Any], ca_id: str | None,
        key_generation: str,
    ) -> dict[str, Any]:
        """`certificate_issued`'s details but the deployment jobs (and an outside CA's own details)."""
        return {
            "job_id": job["id"], "job_type": job["type"], "version_id": version["id"],
            "serial_number": version["serial_number"], "ca_id": ca_id, "issuer_id": cert["issuer_id"],
            "not_after": version["not_after"].isoformat(), "fingerprint_sha256": version["fingerprint_sha256"],
            "key_algorithm": version["key_algorithm"], "key_generation": key_generation,
        }

    async def _queue_deployments(
        self, conn: AsyncConnection, cert: Mapping[Any, Any], job: Mapping[Any, Any]
    ) -> list[str]:
        """One Pending deployment job per live mapped target that has none open (it will ship the newest)."""
        targets = await issuance_repo.targets_needing_deployment(conn, cert["id"])
        if not targets:
            return []
        now = self.ctx.clock.now()
        created = [{
            "id": new_id("job"), "type": JobType.DEPLOYMENT.value, "certificate_id": cert["id"],
            "target_id": t["id"], "agent_id": t["agent_id"], "status": JobStatus.PENDING.value, "attempts": 0,
            "max_attempts": job["max_attempts"], "last_error": None, "deployment_result": None,
            "scheduled_at": now, "started_at": None, "completed_at": None, "created_at": now, "updated_at": now,
        } for t in targets]
        await issuance_repo.insert_jobs(conn, created)
        return [j["id"] for j in created]

    async def _await_csr(self, job: Row) -> str:
        async with self.ctx.db.transaction() as conn:
            locked = await jobs_repo.get_job(conn, job["id"], for_update=True)
            if locked is None or locked["status"] != JobStatus.RUNNING.value or locked["claimed_by"] != self.holder:
                return locked["status"] if locked is not None else "missing"
            await transition_job(conn, self.ctx.clock, locked, JobStatus.AWAITING_CSR)
            await jobs_repo.update_job(conn, job["id"], {"attempts": max(0, locked["attempts"] - 1)})
        return JobStatus.AWAITING_CSR.value

    # ---- failures -------------------------------------------------------------------------------
    async def fail_attempt(self, job_id: str, error: str, *, retryable: bool, holder: str | None = None) -> str:
        """One attempt failed: retry later with backoff while attempts remain, else the job and the
        certificate go to Failed (the reference left both stuck). Returns the job's new status."""
        holder = holder or self.holder
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            job = await jobs_repo.get_job(conn, job_id, for_update=True)
            if job is None or job["status"] != JobStatus.RUNNING.value or job["claimed_by"] != holder:
                return job["status"] if job is not None else "missing"
            cert = await jobs_repo.get_certificate(conn, job["certificate_id"]) if job["certificate_id"] else None
            policy = await jobs_repo.get_renewal_policy(conn, cert["renewal_policy_id"]) if cert else None
            if retryable and job["attempts"] < job["max_attempts"]:
                delay = retry_delay(int(policy["retry_interval_seconds"]) if policy else 60, job["attempts"])
                await transition_job(conn, self.ctx.clock, job, JobStatus.PENDING, last_error=error)
                await jobs_repo.update_job(conn, job_id, {"scheduled_at": now + delay})
                await audit.record(conn, self.ctx.clock, Actor.system(), "job_retry_scheduled", "job", job_id, {
                    "certificate_id": job["certificate_id"], "attempt": job["attempts"],
                    "max_attempts": job["max_attempts"], "retry_at": (now + delay).isoformat(), "error": error,
                })
                return JobStatus.PENDING.value
            await transition_job(conn, self.ctx.clock, job, JobStatus.FAILED, last_error=error)
            cert_status = None
            if cert is not None and job["type"] in ISSUING_JOB_TYPES and cert["status"] in (
                CertificateStatus.RENEWAL_IN_PROGRESS.value, CertificateStatus.PENDING.value,
            ):
                cert_status = CertificateStatus.FAILED.value
                await jobs_repo.update_certificate(conn, cert["id"], {"status": cert_status, "updated_at": now})
            await audit.record(conn, self.ctx.clock, Actor.system(), "job_failed", "job", job_id, {
                "certificate_id": job["certificate_id"], "type": job["type"], "attempts": job["attempts"],
                "max_attempts": job["max_attempts"], "error": error, "retryable": retryable,
                "certificate_status": cert_status,
            })
        return JobStatus.FAILED.value

    # ---- pieces ---------------------------------------------------------------------------------
    async def _plan(self, conn: AsyncConnection, job: Row) -> _Plan:
        if not job["certificate_id"]:
            raise PermanentIssuanceError(f"job '{job['id']}' has no certificate")
        found = await issuance_repo.plan_rows(conn, job["certificate_id"])
        if found is None:
            raise PermanentIssuanceError(f"job '{job['id']}' has no certificate")
        cert, issuer, profile_row, policy = found
        if issuer is None:
            raise PermanentIssuanceError(f"issuer '{cert['issuer_id']}' of certificate '{cert['id']}' is gone")
        if not issuer["enabled"]:
            raise PermanentIssuanceError(f"issuer '{issuer['id']}' is disabled")
        profile = self._profiles.get(profile_row) if profile_row is not None else None
        if profile is not None and not profile.enabled:
            raise PermanentIssuanceError(f"profile '{profile.id}' is disabled")
        return _Plan(job=job, cert=cert, issuer=issuer, profile=profile, policy=policy)

    def _names(self, cert: Mapping[Any, Any]) -> list[x509.GeneralName]:
        values = (str(cert["common_name"]), *(str(v) for v in cert["sans"] or ()))
        known = self._parsed_names.get(values)  # the CSR check and the leaf both need them: parsed once
        if known is not None:
            return list(known)
        names: list[x509.GeneralName] = []
        for value in values:
            name = general_name(value)
            if name is not None and name not in names:
                names.append(name)
        if len(self._parsed_names) >= 256:
            self._parsed_names.clear()
        self._parsed_names[values] = tuple(names)
        return names

    def _validity(self, plan: _Plan) -> timedelta:
        config_days = (plan.issuer["config"] or {}).get("validity_days")
        validity = timedelta(days=int(config_days)) if config_days else DEFAULT_VALIDITY
        if plan.profile is not None and plan.profile.max_ttl_seconds:
            validity = min(validity, timedelta(seconds=plan.profile.max_ttl_seconds))
        return validity

    def _check(self, csr_pem: str, plan: _Plan) -> CheckedCSR:
        return check_csr(csr_pem, plan.profile, allowed_names=self._names(plan.cert),
                         ttl_seconds=int(self._validity(plan).total_seconds()))

    def _leaf_request(self, plan: _Plan, public_key: Any) -> LeafRequest:
        now = self.ctx.clock.now()
        names = self._names(plan.cert)
        common_name = str(plan.cert["common_name"])
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]) \
            if 0 < len(common_name) <= 64 else x509.Name([])
        key_facts(public_key)  # refuses key types a leaf cannot have
        ekus = tuple(plan.profile.allowed_ekus) if plan.profile and plan.profile.allowed_ekus else DEFAULT_EKUS
        return LeafRequest(
            subject=subject, public_key=public_key, sans=tuple(names), ekus=ekus,
            not_before=now, not_after=now + self._validity(plan),
            must_staple=bool(plan.profile and plan.profile.must_staple),
        )


async def claim_issuing_jobs(service: IssuanceService, *, limit: int) -> list[str]:
    """Claim due Pending issuance/renewal jobs for this process (Running, leased); returns their ids."""
    now = service.ctx.clock.now()
    async with service.ctx.db.transaction() as conn:
        claimed = await job_queue_repo.claim_due(
            conn, types=ISSUING_JOB_TYPES, now=now, limit=limit, holder=service.holder, lease_until=now + service.lease,
        )
    return [job["id"] for job in claimed]


async def run_due_issuing_jobs(service: IssuanceService, *, limit: int = 25) -> dict[str, int]:
    """Claim and execute due issuing jobs one after the other; returns how many ended in each status."""
    outcome: dict[str, int] = {}
    for job_id in await claim_issuing_jobs(service, limit=limit):
        status = await service.execute(job_id)
        outcome[status] = outcome.get(status, 0) + 1
    return outcome
