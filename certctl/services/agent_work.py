"""An agent's side of the job queue: its work list and the pickup of a signed certificate."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.errors import GoneError, NotFoundError
from certctl.domain.models.agent_work import CertificatePickup, WorkItem, WorkList
from certctl.pki.export import pem_parts
from certctl.services.context import ServiceContext
from certctl.services.jobs import ISSUING_JOB_TYPES
from certctl.store import issuance_repo, jobs_repo, rows
from certctl.store.certificates_repo import latest_version
from certctl.store.schema import agents


class AgentWorkService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def work(self, agent_id: str) -> WorkList:
        async with self.ctx.db.read() as conn:
            await self._live_agent(conn, agent_id)
            found = await issuance_repo.agent_work(conn, agent_id, ISSUING_JOB_TYPES)
        # target_config is the redacted view: secrets reach an agent through its own channel (issue 4).
        items = [WorkItem.model_validate({**dict(r), "sans": list(r["sans"] or [])}) for r in found]
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
    async def _live_agent(conn: AsyncConnection, agent_id: str) -> None:
        agent = await rows.get_row(conn, agents, agent_id)
        if agent is None:
            raise NotFoundError.of("agent", agent_id)
        if agent["retired_at"] is not None:
            raise GoneError(f"agent '{agent_id}' is retired")
