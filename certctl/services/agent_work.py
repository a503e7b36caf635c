"""An agent's side of the job queue: its work list and the pickup of a signed certificate."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.actor import Actor
from certctl.domain.enums import ActorType, JobStatus, JobType
from certctl.domain.errors import ConflictError, ForbiddenError, GoneError, NotFoundError
from certctl.domain.models.agent_work import (
    CertificatePickup,
    JobStatusAccepted,
    JobStatusReport,
    WorkItem,
    WorkList,
)
from certctl.observability import metrics
from certctl.pki.export import pem_parts
from certctl.services import audit
from certctl.services.connector_config import unseal
from certctl.services.context import ServiceContext
from certctl.services.issuance import retry_delay
from certctl.services.jobs import ISSUING_JOB_TYPES, transition_job
from certctl.store import issuance_repo, jobs_repo, metrics_repo, rows
from certctl.store.certificates_repo import latest_version
from certctl.store.schema import agents

AGENT_HOLDER = "agent:"


class AgentWorkService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def work(self, actor: Actor, agent_id: str) -> WorkList:
        """The agent's jobs. The agent itself (its own key) gets its targets' full configs, secrets included,
        since it must use them; anyone else sees the redacted view."""
        reveal = actor.actor_type is ActorType.AGENT and actor.name == agent_id
        async with self.ctx.db.read() as conn:
            await self._live_agent(conn, agent_id)
            found = await issuance_repo.agent_work(conn, agent_id, ISSUING_JOB_TYPES)
        items = []
        for r in found:
            config = r["target_config"]
            if reveal and r["target_encrypted_config"]:
                config = unseal(self.ctx.sealer, {"id": r["target_id"], "config": r["target_config"],
                                                  "encrypted_config": r["target_encrypted_config"]}, "target")
            items.append(WorkItem.model_validate({**dict(r), "sans": list(r["sans"] or []), "target_config": config}))
        return WorkList(jobs=items, count=len(items))

    async def pickup(self, agent_id: str, certificate_id: str) -> CertificatePickup:
        async with self.ctx.db.read() as conn:
            await self._live_agent(conn, agent_id)
            if await jobs_repo.get_certificate(conn, certificate_id) is None:
                raise NotFoundError.of("certificate", certificate_id)
            version = await latest_version(conn, certificate_id)
        if version is None:
            raise NotFoundError(f"certificate '{certificate_id}' has no issued version yet")
        parts = pem_parts(version["pem_chain"])
        return CertificatePickup(
            certificate_pem=version["pem_chain"], chain_pem=parts.chain_pem, version_id=version["id"],
            serial_number=version["serial_number"], not_before=version["not_before"],
            not_after=version["not_after"], fingerprint_sha256=version["fingerprint_sha256"],
        )

    @staticmethod
    async def _retry_base(conn: AsyncConnection, certificate_id: str | None) -> int:
        """Deployments retry on the certificate's renewal-policy interval, like issuance."""
        cert = await jobs_repo.get_certificate(conn, certificate_id) if certificate_id else None
        policy = await jobs_repo.get_renewal_policy(conn, cert["renewal_policy_id"]) if cert is not None else None
        return int(policy["retry_interval_seconds"]) if policy is not None else 60

    @staticmethod
    async def _live_agent(conn: AsyncConnection, agent_id: str) -> None:
        agent = await rows.get_row(conn, agents, agent_id)
        if agent is None:
            raise NotFoundError.of("agent", agent_id)
        if agent["retired_at"] is not None:
            raise GoneError(f"agent '{agent_id}' is retired")

    async def report_status(
        self, actor: Actor, agent_id: str, job_id: str, report: JobStatusReport
    ) -> JobStatusAccepted:
        """An agent's account of a deployment job: Running when it starts, then Completed or Failed.

        Completed records the deployment on the certificate (`last_deployment_at`) and the verification
        on the job; Failed is retried with backoff while attempts remain, then the job is Failed.
        """
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            await self._live_agent(conn, agent_id)
            job = await jobs_repo.get_job(conn, job_id, for_update=True)
            if job is None:
                raise NotFoundError.of("job", job_id)
            if job["agent_id"] != agent_id:
                raise ForbiddenError(f"job '{job_id}' is not assigned to agent '{agent_id}'")
            if job["type"] != JobType.DEPLOYMENT.value:
                raise ConflictError(f"job '{job_id}' is a {job['type']} job; agents report deployment jobs only")
            if report.status == "Running":
                if job["status"] == JobStatus.RUNNING.value:
                    return JobStatusAccepted(status="ok", job_id=job_id, job_status=JobStatus.RUNNING)  # a repeat
                await transition_job(conn, self.ctx.clock, job, JobStatus.RUNNING)
                await jobs_repo.update_job(conn, job_id, {"claimed_by": AGENT_HOLDER + agent_id})
                await audit.record(conn, self.ctx.clock, actor, "deployment_started", "job", job_id, {
                    "certificate_id": job["certificate_id"], "target_id": job["target_id"], "agent_id": agent_id})
                return JobStatusAccepted(status="ok", job_id=job_id, job_status=JobStatus.RUNNING)
            if job["status"] == JobStatus.PENDING.value:  # finished before saying it started
                started = await transition_job(conn, self.ctx.clock, job, JobStatus.RUNNING)
                job = await jobs_repo.get_job(conn, job_id, for_update=True)
                assert job is not None and started["status"] == job["status"]
            verification = report.verification
            details: dict[str, Any] = {
                "certificate_id": job["certificate_id"], "target_id": job["target_id"], "agent_id": agent_id,
                "verification": verification.status if verification else None,
            }
            if report.status == "Completed":
                await transition_job(conn, self.ctx.clock, job, JobStatus.COMPLETED)
                await jobs_repo.update_job(conn, job_id, {
                    "deployment_result": report.deployment_result,
                    "verification_status": verification.status if verification else "skipped",
                    "verified_at": now if verification and verification.status == "success" else None,
                    "verification_fingerprint": verification.fingerprint if verification else None,
                    "verification_error": verification.error if verification else None,
                })
                if job["certificate_id"]:
                    await jobs_repo.update_certificate(conn, job["certificate_id"], {"last_deployment_at": now})
                metrics.deployment_reported(await metrics_repo.target_type(conn, job["target_id"]), ok=True)
                await audit.record(conn, self.ctx.clock, actor, "deployment_completed", "job", job_id, details)
                return JobStatusAccepted(status="ok", job_id=job_id, job_status=JobStatus.COMPLETED)
            error = (report.error or "the agent reported a failure").strip()
            retry = job["attempts"] < job["max_attempts"]
            if retry:
                base = await self._retry_base(conn, job["certificate_id"])
                await transition_job(conn, self.ctx.clock, job, JobStatus.PENDING, last_error=error)
                await jobs_repo.update_job(conn, job_id, {"scheduled_at": now + retry_delay(base, job["attempts"])})
            else:
                await transition_job(conn, self.ctx.clock, job, JobStatus.FAILED, last_error=error)
            await jobs_repo.update_job(conn, job_id, {
                "deployment_result": report.deployment_result,
                "verification_status": verification.status if verification else None,
                "verification_fingerprint": verification.fingerprint if verification else None,
                "verification_error": verification.error if verification else None,
            })
            metrics.deployment_reported(await metrics_repo.target_type(conn, job["target_id"]), ok=False)
            await audit.record(conn, self.ctx.clock, actor, "deployment_failed", "job", job_id,
                               {**details, "error": error, "will_retry": retry})
            return JobStatusAccepted(status="ok", job_id=job_id,
                                     job_status=JobStatus.PENDING if retry else JobStatus.FAILED)
