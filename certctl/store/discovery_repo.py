"""Discovery: the dedup upsert of discovered certificates, scans, triage reads, network scan targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store.rows import Row, insert_many, page_rows
from certctl.store.schema import (
    agents,
    certificate_versions,
    discovered_certificates,
    discovery_scans,
    network_scan_targets,
)

_CHUNK = 500  # IN-list size per lookup: well under SQLite's and asyncpg's parameter limits

# Columns a repeated sighting refreshes; status, managed_certificate_id and first_seen_at are kept.
REFRESHED = (
    "common_name", "sans", "serial_number", "issuer_dn", "subject_dn", "not_before", "not_after", "key_algorithm",
    "key_size", "is_ca", "pem_data", "source_format", "discovery_scan_id", "last_seen_at", "updated_at",
)


async def existing_ids(
    conn: AsyncConnection, agent_id: str, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """Of (fingerprint, source_path) keys, those this agent already has: key → row id."""
    d = discovered_certificates.c
    found: dict[tuple[str, str], str] = {}
    fingerprints = sorted({fingerprint for fingerprint, _ in keys})
    wanted = set(keys)
    for start in range(0, len(fingerprints), _CHUNK):
        chunk = fingerprints[start:start + _CHUNK]
        result = await conn.execute(
            select(d.id, d.fingerprint_sha256, d.source_path).where(d.agent_id == agent_id,
                                                                     d.fingerprint_sha256.in_(chunk))
        )
        for row_id, fingerprint, path in result.all():
            if (fingerprint, path) in wanted:
                found[(fingerprint, path)] = row_id
    return found


async def insert_discovered(conn: AsyncConnection, values: Sequence[Mapping[str, Any]]) -> None:
    await insert_many(conn, discovered_certificates, values)


async def refresh_discovered(conn: AsyncConnection, values: Sequence[Mapping[str, Any]]) -> None:
    """One executemany UPDATE for rows seen again (each mapping has `id` and the REFRESHED columns)."""
    if not values:
        return
    d = discovered_certificates.c
    stmt = (
        update(discovered_certificates)
        .where(d.id == bindparam("b_id"))
        .values({name: bindparam(f"b_{name}") for name in REFRESHED})
    )
    params = [{"b_id": v["id"], **{f"b_{name}": v[name] for name in REFRESHED}} for v in values]
    await conn.execute(stmt, params)


async def page_discovered(
    conn: AsyncConnection, *, agent_id: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[Row], int]:
    d = discovered_certificates.c
    where: list[ColumnElement[bool]] = []
    if agent_id is not None:
        where.append(d.agent_id == agent_id)
    if status is not None:
        where.append(d.status == status)
    return await page_rows(conn, discovered_certificates, *where, limit=limit, offset=offset,
                           order_by=(d.created_at.desc(), d.id.desc()))


async def page_scans(
    conn: AsyncConnection, *, agent_id: str | None, limit: int, offset: int
) -> tuple[list[Row], int]:
    s = discovery_scans.c
    where: list[ColumnElement[bool]] = [] if agent_id is None else [s.agent_id == agent_id]
    return await page_rows(conn, discovery_scans, *where, limit=limit, offset=offset,
                           order_by=(s.started_at.desc(), s.id.desc()))


async def status_counts(conn: AsyncConnection) -> dict[str, int]:
    d = discovered_certificates.c
    result = await conn.execute(select(d.status, func.count()).group_by(d.status))
    return {status: int(count) for status, count in result.all()}


async def version_has_fingerprint(conn: AsyncConnection, certificate_id: str, fingerprint: str) -> bool:
    v = certificate_versions.c
    result = await conn.execute(
        select(v.id).where(v.certificate_id == certificate_id, v.fingerprint_sha256 == fingerprint).limit(1)
    )
    return result.first() is not None


async def agent_name_taken(conn: AsyncConnection, name: str) -> bool:
    result = await conn.execute(select(agents.c.id).where(agents.c.name == name).limit(1))
    return result.first() is not None


async def enabled_targets(conn: AsyncConnection) -> list[Row]:
    t = network_scan_targets.c
    result = await conn.execute(select(network_scan_targets).where(t.enabled.is_(True)).order_by(t.id))
    return list(result.mappings().all())
