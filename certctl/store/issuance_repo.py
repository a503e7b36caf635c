"""SQL of the issuance path: versions, server-generated keys, agent work, and revocation targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import and_, bindparam, exists, not_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store import rows
from certctl.store.rows import Row
from certctl.store.schema import (
    certificate_private_keys,
    certificate_profiles,
    certificate_target_mappings,
    certificate_versions,
    deployment_targets,
    issuers,
    jobs,
    managed_certificates,
    renewal_policies,
)

_v = certificate_versions.c
_j = jobs.c


async def insert_version(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await rows.insert_row(conn, certificate_versions, values)


async def insert_private_key(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await rows.insert_row(conn, certificate_private_keys, values)


async def version_of_job(conn: AsyncConnection, job_id: str) -> Row | None:
    result = await conn.execute(select(certificate_versions).where(_v.job_id == job_id))
    return result.mappings().first()


async def versions_of_certificate(conn: AsyncConnection, certificate_id: str) -> list[Row]:
    result = await conn.execute(
        select(_v.id, _v.ca_id, _v.serial_number, _v.not_after)
        .where(_v.certificate_id == certificate_id).order_by(_v.created_at, _v.id)
    )
    return list(result.mappings())


def _agent_targets(agent_id: Any) -> Any:
    """Certificates mapped to a live target of the agent."""
    t, m = deployment_targets.c, certificate_target_mappings.c
    return (
        select(m.certificate_id)
        .join(deployment_targets, t.id == m.target_id)
        .where(t.agent_id == agent_id, t.retired_at.is_(None))
    )


async def agent_owns_certificate(conn: AsyncConnection, agent_id: str, certificate_id: str) -> bool:
    t, m = deployment_targets.c, certificate_target_mappings.c
    stmt = rows.cached_statement(("agent_owns",), lambda: select(exists().where(
        m.certificate_id == bindparam("certificate_id"), t.id == m.target_id, t.agent_id == bindparam("agent_id"),
        t.retired_at.is_(None),
    )))
    return bool((await conn.execute(stmt, {"certificate_id": certificate_id, "agent_id": agent_id})).scalar())


async def agent_work(conn: AsyncConnection, agent_id: str, issuing_types: Sequence[str], limit: int = 500) -> list[Row]:
    """AwaitingCSR issuing jobs for certificates the agent deploys (or assigned to it), and its Pending
    deployment jobs; with the certificate's names and the target's type and (redacted) config."""
    mc, t = managed_certificates.c, deployment_targets.c

    def build() -> Any:  # built once: every agent polls this every 30 s
        agent: Any = bindparam("agent_id")
        csr_wanted = and_(
            _j.status == "AwaitingCSR", _j.type.in_(tuple(issuing_types)),
            or_(_j.agent_id == agent, and_(_j.agent_id.is_(None), _j.certificate_id.in_(_agent_targets(agent)))),
        )
        deploy_wanted = and_(_j.status == "Pending", _j.type == "Deployment", _j.agent_id == agent)
        return (
            select(_j.id, _j.type, _j.certificate_id, _j.target_id, _j.status, mc.common_name, mc.sans,
                   t.type.label("target_type"), t.config.label("target_config"),
                   t.encrypted_config.label("target_encrypted_config"))
            .select_from(jobs.outerjoin(managed_certificates, mc.id == _j.certificate_id)
                         .outerjoin(deployment_targets, t.id == _j.target_id))
            .where(or_(csr_wanted, deploy_wanted))
            .order_by(_j.scheduled_at, _j.id)
            .limit(bindparam("limit"))
        )

    stmt = rows.cached_statement(("agent_work", tuple(issuing_types)), build)
    return list((await conn.execute(stmt, {"agent_id": agent_id, "limit": limit})).mappings())


async def awaiting_csr_job(conn: AsyncConnection, certificate_id: str, issuing_types: Sequence[str]) -> Row | None:
    lock = conn.dialect.name == "postgresql"

    def build() -> Any:
        stmt = (
            select(jobs)
            .where(_j.certificate_id == bindparam("certificate_id"), _j.status == "AwaitingCSR",
                   _j.type.in_(tuple(issuing_types)))
            .order_by(_j.created_at.desc(), _j.id.desc()).limit(1)
        )
        return stmt.with_for_update() if lock else stmt

    stmt = rows.cached_statement(("awaiting_csr_job", tuple(issuing_types), lock), build)
    return (await conn.execute(stmt, {"certificate_id": certificate_id})).mappings().first()


_PLAN_TABLES = (("c", managed_certificates), ("i", issuers), ("p", certificate_profiles), ("r", renewal_policies))


def _plan_statement() -> Any:
    mc = managed_certificates.c
    columns = [col.label(f"{prefix}_{col.name}") for prefix, table in _PLAN_TABLES for col in table.c]
    return (
        select(*columns)
        .select_from(
            managed_certificates
            .outerjoin(issuers, issuers.c.id == mc.issuer_id)
            .outerjoin(certificate_profiles, certificate_profiles.c.id == mc.certificate_profile_id)
            .outerjoin(renewal_policies, renewal_policies.c.id == mc.renewal_policy_id)
        )
        .where(mc.id == bindparam("certificate_id"))
    )


async def plan_rows(
    conn: AsyncConnection, certificate_id: str
) -> tuple[Row, Row | None, Row | None, Row | None] | None:
    """The certificate with its issuer, profile and renewal policy, in one round trip."""
    stmt = rows.cached_statement(("plan_rows",), _plan_statement)
    record = (await conn.execute(stmt, {"certificate_id": certificate_id})).mappings().first()
    if record is None:
        return None
    parts: list[dict[str, Any] | None] = []
    for prefix, table in _PLAN_TABLES:
        part = {col.name: record[f"{prefix}_{col.name}"] for col in table.c}
        parts.append(part if part["id"] is not None else None)
    cert, issuer, profile, policy = parts
    assert cert is not None
    return cert, issuer, profile, policy  # type: ignore[return-value]  # plain dicts read like rows


async def activate_certificate(
    conn: AsyncConnection, certificate_id: str, *, expires_at: Any, now: Any, renewal: bool
) -> bool:
    """A new version is live: Active with its expiry, unless the certificate was revoked or archived meanwhile."""
    mc = managed_certificates.c

    def build() -> Any:
        values: dict[str, Any] = {"status": "Active", "expires_at": bindparam("expires_at"),
                                  "updated_at": bindparam("now")}
        if renewal:
            values["last_renewal_at"] = bindparam("now")
        return (update(managed_certificates)
                .where(mc.id == bindparam("certificate_id"), not_(mc.status.in_(("Revoked", "Archived"))))
                .values(values))

    stmt = rows.cached_statement(("activate_certificate", renewal), build)
    result = await conn.execute(stmt, {"certificate_id": certificate_id, "expires_at": expires_at, "now": now})
    return result.rowcount > 0


async def targets_needing_deployment(conn: AsyncConnection, certificate_id: str) -> list[Row]:
    """Live, enabled targets mapped to the certificate with no open deployment job of it."""
    t, m = deployment_targets.c, certificate_target_mappings.c

    def build() -> Any:
        open_deploy = exists().where(
            _j.certificate_id == bindparam("certificate_id"), _j.target_id == t.id, _j.type == "Deployment",
            _j.status.in_(("Pending", "AwaitingCSR", "AwaitingApproval", "Running")),
        )
        return (
            select(t.id, t.agent_id)
            .join(certificate_target_mappings, m.target_id == t.id)
            .where(m.certificate_id == bindparam("certificate_id"), t.retired_at.is_(None), t.enabled.is_(True),
                   not_(open_deploy))
            .order_by(t.name, t.id)
        )

    stmt = rows.cached_statement(("targets_needing_deployment",), build)
    return list((await conn.execute(stmt, {"certificate_id": certificate_id})).mappings())


async def insert_jobs(conn: AsyncConnection, values: Sequence[Mapping[str, Any]]) -> None:
    await rows.insert_many(conn, jobs, values)
