"""Discovery use cases: agents' reports, the dedup upsert shared with the network scanner, and triage.

A report is one transaction: the `discovery_scans` row, every discovered certificate (new rows Unmanaged,
rows seen again refreshed with `last_seen_at`; triage status kept), and the `discovery_scan_completed`
audit event. Every entry is checked before the transaction opens, so a bad entry is a 400 with nothing
written. When an entry carries `pem_data`, the certificate itself is the authority: its fingerprint must
match and the stored fields are read from it, not taken from the agent's description.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.connectors.discovery.filesystem import DiscoveredEntry, describe_certificate, pem_certificates
from certctl.domain.actor import Actor
from certctl.domain.clock import Clock
from certctl.domain.enums import CertificateStatus
from certctl.domain.errors import ConflictError, ForbiddenError, GoneError, NotFoundError, ValidationError
from certctl.domain.ids import new_id
from certctl.domain.models.agents import SENTINEL_AGENT_IDS
from certctl.domain.models.common import PageParams
from certctl.domain.models.discovery import (
    DiscoveredCertificate,
    DiscoveryEntry,
    DiscoveryReport,
    DiscoveryScan,
    DiscoveryStatus,
    DiscoverySummary,
    StatusMessage,
)
from certctl.pki.serials import canonical_serial
from certctl.services import audit
from certctl.services.context import ServiceContext
from certctl.store import discovery_repo, rows
from certctl.store.schema import agents, discovered_certificates, discovery_scans, managed_certificates

STORED_SCAN_ERRORS = 100  # error lines kept on the scan row (errors_count counts them all)
_THREAD_THRESHOLD = 200  # entries above which PEM parsing moves off the event loop


def entry_values(entry: DiscoveredEntry) -> dict[str, Any]:
    """The `discovered_certificates` columns of one described certificate."""
    return {
        "fingerprint_sha256": entry.fingerprint_sha256,
        "common_name": entry.common_name,
        "sans": list(entry.sans),
        "serial_number": entry.serial_number,
        "issuer_dn": entry.issuer_dn,
        "subject_dn": entry.subject_dn,
        "not_before": entry.not_before,
        "not_after": entry.not_after,
        "key_algorithm": entry.key_algorithm,
        "key_size": entry.key_size,
        "is_ca": entry.is_ca,
        "pem_data": entry.pem_data,
        "source_path": entry.source_path,
        "source_format": entry.source_format,
    }


def _from_pem(entry: DiscoveryEntry, where: str) -> dict[str, Any]:
    if "PRIVATE KEY" in entry.pem_data:
        raise ValidationError(f"{where}.pem_data holds a private key; report certificates only (nothing was stored)")
    certs, problems = pem_certificates(entry.pem_data.encode())
    if problems or len(certs) != 1:
        raise ValidationError(f"{where}.pem_data must be exactly one PEM CERTIFICATE block that parses")
    try:
        described = describe_certificate(certs[0], source_path=entry.source_path, source_format=entry.source_format)
    except ValueError as exc:
        raise ValidationError(f"{where}.pem_data: {exc}") from None
    if described.fingerprint_sha256 != entry.fingerprint_sha256:
        raise ValidationError(f"{where}.fingerprint_sha256 is not the SHA-256 of the certificate in pem_data")
    return entry_values(described)


def _from_fields(entry: DiscoveryEntry, where: str) -> dict[str, Any]:
    try:
        serial = canonical_serial(entry.serial_number) if entry.serial_number else ""
    except ValueError:
        raise ValidationError(f"{where}.serial_number is not a hexadecimal serial number") from None
    values = entry.model_dump()
    values["serial_number"] = serial
    return values


def prepare_entries(entries: Iterable[DiscoveryEntry]) -> list[dict[str, Any]]:
    """Column values per entry, deduplicated on (fingerprint, path) (the last wins); raises ValidationError."""
    prepared: dict[tuple[str, str], dict[str, Any]] = {}
    for index, entry in enumerate(entries):
        where = f"certificates[{index}]"
        values = _from_pem(entry, where) if entry.pem_data else _from_fields(entry, where)
        prepared[(values["fingerprint_sha256"], values["source_path"])] = values
    return list(prepared.values())


def dedupe_values(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    by_key = {(e["fingerprint_sha256"], e["source_path"]): dict(e) for e in entries}
    return list(by_key.values())


async def record_scan(
    conn: AsyncConnection,
    clock: Clock,
    actor: Actor,
    *,
    agent_id: str,
    entries: list[dict[str, Any]],
    directories: list[str],
    errors: list[str],
    duration_ms: int,
    started_at: datetime,
    network_scan_target_id: str | None = None,
    audit_details: Mapping[str, Any] | None = None,
) -> DiscoveryScan:
    """Store one scan and upsert its certificates in the caller's transaction (agent row already checked).

    The dedup key is (fingerprint, agent, source path) (connectors.md §5). Callers serialize reports of
    one agent by locking its row first, so two reports never race to insert the same key.
    """
    now = clock.now()
    scan_id = new_id("dscan")
    existing = await discovery_repo.existing_ids(
        conn, agent_id, [(e["fingerprint_sha256"], e["source_path"]) for e in entries]
    )
    new_rows: list[dict[str, Any]] = []
    seen_rows: list[dict[str, Any]] = []
    for entry in entries:
        common = {**entry, "discovery_scan_id": scan_id, "last_seen_at": now, "updated_at": now}
        row_id = existing.get((entry["fingerprint_sha256"], entry["source_path"]))
        if row_id is not None:
            seen_rows.append({**common, "id": row_id})
        else:
            new_rows.append({
                **common, "id": new_id("dcert"), "agent_id": agent_id, "status": DiscoveryStatus.UNMANAGED.value,
                "managed_certificate_id": None, "first_seen_at": now, "dismissed_at": None, "created_at": now,
            })
    scan: dict[str, Any] = {
        "id": scan_id,
        "agent_id": agent_id,
        "network_scan_target_id": network_scan_target_id,
        "directories": directories,
        "certificates_found": len(entries),
        "certificates_new": len(new_rows),
        "errors_count": len(errors),
        "errors": errors[:STORED_SCAN_ERRORS],
        "scan_duration_ms": duration_ms,
        "started_at": started_at,
        "completed_at": now,
    }
    await rows.insert_row(conn, discovery_scans, scan)
    await discovery_repo.insert_discovered(conn, new_rows)
    await discovery_repo.refresh_discovered(conn, seen_rows)
    details = {
        "agent_id": agent_id, "certificates_found": len(entries), "certificates_new": len(new_rows),
        "errors_count": len(errors), "directories": directories[:20], **(audit_details or {}),
    }
    await audit.record(conn, clock, actor, "discovery_scan_completed", "discovery_scan", scan_id, details)
    return DiscoveryScan.model_validate(scan)


class DiscoveryService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    # ---- agent reports ----------------------------------------------------------------------------------------
    async def submit_report(self, actor: Actor, agent_id: str, report: DiscoveryReport) -> DiscoveryScan:
        if agent_id in SENTINEL_AGENT_IDS:
            raise ForbiddenError(f"agent '{agent_id}' is reserved for the server's own discovery sources")
        if report.agent_id != agent_id:
            raise ValidationError(
                f"agent_id '{report.agent_id}' in the body does not match the agent '{agent_id}' in the path"
            )
        if len(report.certificates) > _THREAD_THRESHOLD:
            entries = await asyncio.to_thread(prepare_entries, report.certificates)
        else:
            entries = prepare_entries(report.certificates)
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            agent = await rows.get_row_for_update(conn, agents, agent_id)  # one report per agent at a time
            if agent is None:
                raise NotFoundError.of("agent", agent_id)
            if agent["retired_at"] is not None:
                raise GoneError(f"agent '{agent_id}' is retired; shut down this agent")
            return await record_scan(
                conn, self.ctx.clock, actor, agent_id=agent_id, entries=entries, directories=report.directories,
                errors=report.errors, duration_ms=report.scan_duration_ms,
                started_at=now - timedelta(milliseconds=report.scan_duration_ms),
            )

    # ---- reads ------------------------------------------------------------------------------------------------
    async def list(
        self, page: PageParams, *, agent_id: str | None = None, status: str | None = None
    ) -> tuple[list[DiscoveredCertificate], int]:
        wanted = None
        if status is not None:
            try:
                wanted = DiscoveryStatus.parse(status).value
            except ValueError as exc:
                raise ValidationError(f"status: {exc}") from None
        async with self.ctx.db.read() as conn:
            found, total = await discovery_repo.page_discovered(
                conn, agent_id=agent_id, status=wanted, limit=page.per_page, offset=page.offset
            )
        return [DiscoveredCertificate.model_validate(dict(r)) for r in found], total

    async def get(self, discovered_id: str) -> DiscoveredCertificate:
        async with self.ctx.db.read() as conn:
            row = await rows.get_row(conn, discovered_certificates, discovered_id)
        if row is None:
            raise NotFoundError.of("discovered certificate", discovered_id)
        return DiscoveredCertificate.model_validate(dict(row))

    async def list_scans(
        self, page: PageParams, *, agent_id: str | None = None
    ) -> tuple[builtins.list[DiscoveryScan], int]:
        async with self.ctx.db.read() as conn:
            found, total = await discovery_repo.page_scans(
                conn, agent_id=agent_id, limit=page.per_page, offset=page.offset
            )
        return [DiscoveryScan.model_validate(dict(r)) for r in found], total

    async def summary(self) -> DiscoverySummary:
        async with self.ctx.db.read() as conn:
            counts = await discovery_repo.status_counts(conn)
        return DiscoverySummary(**{status.value: counts.get(status.value, 0) for status in DiscoveryStatus})

    # ---- triage -----------------------------------------------------------------------------------------------
    async def claim(self, actor: Actor, discovered_id: str, managed_certificate_id: str) -> StatusMessage:
        """Unmanaged or Dismissed → Managed, linked to an existing managed certificate.

        Repeating the same claim is a no-op (200); a claim into another certificate while linked is a 409,
        as is a claim into an archived certificate.
        """
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            row = await rows.get_row_for_update(conn, discovered_certificates, discovered_id)
            if row is None:
                raise NotFoundError.of("discovered certificate", discovered_id)
            certificate = await rows.get_row(conn, managed_certificates, managed_certificate_id)
            if certificate is None:
                raise NotFoundError.of("managed certificate", managed_certificate_id)
            if certificate["status"] == CertificateStatus.ARCHIVED.value:
                raise ConflictError(f"managed certificate '{managed_certificate_id}' is archived")
            if row["status"] == DiscoveryStatus.MANAGED.value:
                if row["managed_certificate_id"] == managed_certificate_id:
                    return StatusMessage(
                        status="claimed",
                        message=f"already linked to managed certificate '{managed_certificate_id}'",
                    )
                raise ConflictError(
                    f"discovered certificate '{discovered_id}' is already claimed by managed certificate "
                    f"'{row['managed_certificate_id']}'"
                )
            matches = await discovery_repo.version_has_fingerprint(
                conn, managed_certificate_id, row["fingerprint_sha256"]
            )
            await rows.update_row(conn, discovered_certificates, discovered_id, {
                "status": DiscoveryStatus.MANAGED.value, "managed_certificate_id": managed_certificate_id,
                "dismissed_at": None, "updated_at": now,
            })
            await audit.record(
                conn, self.ctx.clock, actor, "discovered_certificate_claimed", "discovered_certificate",
                discovered_id, {
                    "managed_certificate_id": managed_certificate_id, "previous_status": row["status"],
                    "fingerprint_sha256": row["fingerprint_sha256"], "agent_id": row["agent_id"],
                    "matches_a_version": matches,
                },
            )
        return StatusMessage(status="claimed", message=f"linked to managed certificate '{managed_certificate_id}'")

    async def dismiss(self, actor: Actor, discovered_id: str) -> StatusMessage:
        """Unmanaged → Dismissed (repeat: no-op). A claimed certificate is not dismissed (409)."""
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            row = await rows.get_row_for_update(conn, discovered_certificates, discovered_id)
            if row is None:
                raise NotFoundError.of("discovered certificate", discovered_id)
            if row["status"] == DiscoveryStatus.MANAGED.value:
                raise ConflictError(
                    f"discovered certificate '{discovered_id}' is claimed by managed certificate "
                    f"'{row['managed_certificate_id']}' and cannot be dismissed"
                )
            if row["status"] == DiscoveryStatus.DISMISSED.value:
                return StatusMessage(status="dismissed", message="already dismissed")
            await rows.update_row(conn, discovered_certificates, discovered_id, {
                "status": DiscoveryStatus.DISMISSED.value, "dismissed_at": now, "updated_at": now,
            })
            await audit.record(
                conn, self.ctx.clock, actor, "discovered_certificate_dismissed", "discovered_certificate",
                discovered_id, {
                    "previous_status": row["status"], "fingerprint_sha256": row["fingerprint_sha256"],
                    "agent_id": row["agent_id"],
                },
            )
        return StatusMessage(status="dismissed", message="excluded from the triage queue")
