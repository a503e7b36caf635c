"""SQL of the issuance path: versions, server-generated keys, agent work, and revocation targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from sqlalchemy import and_, bindparam, exists, not_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.errors import ConflictError
from certctl.store import rows
from certctl.store.database import driver_call, driver_connection
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


# ---- an agent's CSR on PostgreSQL: one read, one write ------------------------------------------
# The CSR intake is the busiest write of a fleet: every renewal of every agent-keyed certificate.
# Through SQLAlchemy it took about a dozen statements plus BEGIN/COMMIT, each costing more Python CPU
# (compile cache lookup, parameter and result processing) than PostgreSQL's own work. Here it is two
# statements sent to asyncpg as prepared statements (asyncpg keeps them per connection): one read of
# everything the checks need, and one atomic write (a single statement is its own transaction) that
# completes the job only if it is still the AwaitingCSR job that was read, and stores everything else
# from that update, so nothing is written when another request won. services/issuance.py falls back to
# the general path (SQLAlchemy, one transaction, the job locked) for anything unusual.

_OPEN_DEPLOYMENT = "('Pending', 'AwaitingCSR', 'AwaitingApproval', 'Running')"
# `(status = 'AwaitingCSR') IS TRUE` is `status = 'AwaitingCSR'` that no index can serve: with thousands of jobs
# waiting (a renewal wave), or statistics that say none are, PostgreSQL otherwise walks ix_jobs_status_scheduled
# over every waiting job instead of taking the one job by its key or certificate.


def _select_list(alias: str, table: Any) -> str:
    return ", ".join(f'{alias}."{c.name}" AS "{alias}_{c.name}"' for c in table.c)


_INTAKE_TABLES = (("j", jobs), ("c", managed_certificates), ("i", issuers), ("p", certificate_profiles))


def _intake_sql(by_job: bool) -> str:
    job_source = (  # $2: the job id, or the certificate id and $3 the issuing job types
        "LEFT JOIN jobs j ON j.id = $2" if by_job else
        "LEFT JOIN LATERAL (SELECT * FROM jobs WHERE certificate_id = $2 AND (status = 'AwaitingCSR') IS TRUE "
        "AND type = ANY($3::text[]) ORDER BY created_at DESC, id DESC LIMIT 1) j ON true"
    )
    return f"""
SELECT a.id IS NOT NULL AS agent_found, a.retired_at IS NULL AS agent_live,
  {", ".join(_select_list(alias, table) for alias, table in _INTAKE_TABLES)},
  EXISTS (SELECT 1 FROM certificate_target_mappings m JOIN deployment_targets t ON t.id = m.target_id
          WHERE m.certificate_id = j.certificate_id AND t.agent_id = $1 AND t.retired_at IS NULL) AS agent_owns,
  (SELECT json_agg(json_build_array(ca.id, ca.state, ca.parent_ca_id) ORDER BY ca.created_at, ca.id)
     FROM intermediate_cas ca WHERE ca.owning_issuer_id = c.issuer_id) AS cas,
  (SELECT json_agg(json_build_array(t.id, t.agent_id) ORDER BY t.name, t.id)
     FROM deployment_targets t JOIN certificate_target_mappings m ON m.target_id = t.id
    WHERE m.certificate_id = c.id AND t.retired_at IS NULL AND t.enabled
      AND NOT EXISTS (SELECT 1 FROM jobs d WHERE d.certificate_id = c.id AND d.target_id = t.id
                      AND d.type = 'Deployment' AND d.status IN {_OPEN_DEPLOYMENT})) AS targets
FROM (SELECT 1) AS one
LEFT JOIN agents a ON a.id = $1
{job_source}
LEFT JOIN managed_certificates c ON c.id = j.certificate_id
LEFT JOIN issuers i ON i.id = c.issuer_id
LEFT JOIN certificate_profiles p ON p.id = c.certificate_profile_id
"""


_INTAKE_BY_JOB = _intake_sql(True)
# (first position, column names) of each table's columns in an intake record (after agent_found, agent_live).
_INTAKE_SLICES: list[tuple[int, tuple[str, ...]]] = []
for _alias, _table in _INTAKE_TABLES:
    _INTAKE_SLICES.append((2 + sum(len(n) for _, n in _INTAKE_SLICES), tuple(c.name for c in _table.c)))
_INTAKE_BY_CERTIFICATE = _intake_sql(False)


@dataclass(frozen=True)
class CSRIntake:
    """What an agent's CSR submission is checked against, read in one statement (PostgreSQL)."""

    agent_found: bool
    agent_live: bool
    job: dict[str, Any] | None
    cert: dict[str, Any] | None
    issuer: dict[str, Any] | None
    profile: dict[str, Any] | None
    agent_owns: bool
    cas: list[tuple[str, str, str | None]]  # (id, state, parent_ca_id) of every CA of the issuer
    targets: list[tuple[str, str]]  # (target id, agent id) of live targets with no open deployment job


async def csr_intake(
    conn: AsyncConnection, agent_id: str, *, certificate_id: str | None, job_id: str | None,
    issuing_types: Sequence[str],
) -> CSRIntake:
    """PostgreSQL only: the agent, the job (by id, else the newest AwaitingCSR issuing job of the
    certificate), its certificate, issuer and profile, whether the agent deploys the certificate,
    the issuer's CAs and the targets a new version would be deployed to."""
    raw = await driver_connection(conn)
    if job_id:
        record = await driver_call(conn, raw.fetchrow(_INTAKE_BY_JOB, agent_id, job_id))
    else:
        record = await driver_call(conn, raw.fetchrow(_INTAKE_BY_CERTIFICATE, agent_id, certificate_id,
                                                    list(issuing_types)))
    values = tuple(record)
    parts: list[dict[str, Any] | None] = []
    for start, names in _INTAKE_SLICES:  # by position: name lookups of ~70 columns cost more than the query
        part = dict(zip(names, values[start:start + len(names)], strict=True))
        parts.append(part if part["id"] is not None else None)
    job, cert, issuer, profile = parts
    return CSRIntake(
        agent_found=record["agent_found"], agent_live=record["agent_live"], job=job, cert=cert, issuer=issuer,
        profile=profile, agent_owns=record["agent_owns"],
        cas=[(r[0], r[1], r[2]) for r in record["cas"] or ()],
        targets=[(r[0], r[1]) for r in record["targets"] or ()],
    )


_STORE_AGENT_ISSUANCE = f"""
WITH job_done AS (
  UPDATE jobs SET status = 'Completed', attempts = attempts + 1, started_at = $3::timestamptz,
         completed_at = $3::timestamptz, updated_at = $3::timestamptz, claimed_by = NULL, lease_expires_at = NULL,
         csr_pem = $4::text, agent_id = $5::text, last_error = NULL
   WHERE id = $1::text AND (status = 'AwaitingCSR') IS TRUE AND updated_at = $2::timestamptz
  RETURNING id, certificate_id, max_attempts
), version AS (
  INSERT INTO certificate_versions (id, certificate_id, serial_number, not_before, not_after, fingerprint_sha256,
                                    pem_chain, csr_pem, key_algorithm, key_size, created_at, ca_id, job_id)
  SELECT $6::text, job_done.certificate_id, $7::text, $8::timestamptz, $9::timestamptz, $10::text, $11::text,
         $4::text, $12::text, $13::integer, $3::timestamptz, $14::text, job_done.id
    FROM job_done
  RETURNING id
), activated AS (
  UPDATE managed_certificates mc
     SET status = 'Active', expires_at = $9::timestamptz, updated_at = $3::timestamptz,
         last_renewal_at = CASE WHEN $15::boolean THEN $3::timestamptz ELSE mc.last_renewal_at END
    FROM job_done
   WHERE mc.id = job_done.certificate_id AND mc.status NOT IN ('Revoked', 'Archived')
  RETURNING mc.id
), deployments AS (
  INSERT INTO jobs (id, type, certificate_id, target_id, agent_id, status, attempts, max_attempts, scheduled_at,
                    created_at, updated_at)
  SELECT u.job_id, 'Deployment', a.id, t.id, t.agent_id, 'Pending', 0, job_done.max_attempts, $3::timestamptz,
         $3::timestamptz, $3::timestamptz
    FROM activated a, job_done,
         unnest($16::text[], $17::text[]) AS u(job_id, target_id)
    JOIN deployment_targets t ON t.id = u.target_id
   WHERE t.retired_at IS NULL AND t.enabled
     AND EXISTS (SELECT 1 FROM certificate_target_mappings m WHERE m.certificate_id = a.id AND m.target_id = t.id)
     AND NOT EXISTS (SELECT 1 FROM jobs d WHERE d.certificate_id = a.id AND d.target_id = t.id
                     AND d.type = 'Deployment' AND d.status IN {_OPEN_DEPLOYMENT})
  RETURNING id
), deployment_list AS (
  SELECT coalesce(jsonb_agg(d.id ORDER BY array_position($16::text[], d.id)), '[]'::jsonb) AS ids
    FROM deployments d
), audited AS (
  INSERT INTO audit_events (id, actor, actor_type, action, resource_type, resource_id, details, timestamp)
  SELECT e.id, e.actor, e.actor_type, e.action, e.resource_type, e.resource_id,
         CASE WHEN e.action = 'certificate_issued'
              THEN jsonb_set(e.details, '{{deployment_jobs}}', deployment_list.ids) ELSE e.details END,
         $3::timestamptz
    FROM job_done, deployment_list,
         (VALUES ($18::text, $19::text, $20::text, $21::text, $22::text, $23::text, $24::jsonb),
                 ($25::text, $26::text, $27::text, $28::text, $29::text, $30::text, $31::jsonb))
           AS e(id, actor, actor_type, action, resource_type, resource_id, details)
  RETURNING id
)
SELECT (SELECT count(*) FROM job_done) AS completed, (SELECT count(*) FROM version) AS versions,
       (SELECT count(*) FROM activated) AS activated, (SELECT ids FROM deployment_list) AS deployments,
       (SELECT count(*) FROM audited) AS audited
"""

_AUDIT_FIELDS = ("id", "actor", "actor_type", "action", "resource_type", "resource_id")


@dataclass(frozen=True)
class StoredIssuance:
    """The outcome of `store_agent_issuance`: `completed` False means nothing was written."""

    completed: bool
    activated: bool = False
    deployment_job_ids: tuple[str, ...] = ()
    serial_taken: bool = False


async def store_agent_issuance(
    conn: AsyncConnection, *, job: Mapping[str, Any], now: Any, csr_pem: str, agent_id: str,
    version: Mapping[str, Any], renewal: bool, deployment_job_ids: Sequence[str], deployment_targets: Sequence[str],
    submitted: Mapping[str, Any], issued: Mapping[str, Any],
) -> StoredIssuance:
    """PostgreSQL only, in one statement (so one transaction): the job, still AwaitingCSR and unchanged since
    `job` was read (same updated_at), becomes Completed; the version is stored; the certificate becomes Active
    with the version's expiry unless it was revoked or archived meanwhile; a Pending deployment job is queued
    for each given target still live, enabled, mapped and without an open one; both audit events are written,
    `issued`'s `deployment_jobs` being the jobs actually queued. Nothing at all is written when the job changed.
    A serial number already used by the CA (`serial_taken`) also writes nothing."""
    if conn.in_transaction():  # the statement must be its own transaction, not part of one that may roll back
        raise RuntimeError("store_agent_issuance needs a connection outside any transaction")
    raw = await driver_connection(conn)
    try:
        record = await driver_call(conn, raw.fetchrow(
            _STORE_AGENT_ISSUANCE, job["id"], job["updated_at"], now, csr_pem, agent_id,
            version["id"], version["serial_number"], version["not_before"], version["not_after"],
            version["fingerprint_sha256"], version["pem_chain"], version["key_algorithm"], version["key_size"],
            version["ca_id"], renewal, list(deployment_job_ids), list(deployment_targets),
            *(submitted[f] for f in _AUDIT_FIELDS), orjson.dumps(submitted["details"]).decode(),
            *(issued[f] for f in _AUDIT_FIELDS), orjson.dumps(issued["details"]).decode(),
        ))
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "uq_versions_ca_serial":
            return StoredIssuance(completed=False, serial_taken=True)
        raise ConflictError(f"the issued certificate conflicts with a stored one ({exc.constraint_name})") from exc
    if not record["completed"]:
        return StoredIssuance(completed=False)
    return StoredIssuance(completed=True, activated=bool(record["activated"]),
                          deployment_job_ids=tuple(record["deployments"]))
