"""Status publication rows: the CRL cache and its generation events, OCSP responders, and the OCSP status lookup."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, func, literal, null, select, text, union_all
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store import rows
from certctl.store.rows import Row
from certctl.store.schema import (
    certificate_revocations,
    certificate_versions,
    crl_cache,
    crl_generation_events,
    intermediate_cas,
    ocsp_responders,
)
from certctl.store.types import UTCDateTime

_rev = certificate_revocations.c
_crl = crl_cache.c
_evt = crl_generation_events.c
_ca = intermediate_cas.c


async def lock(conn: AsyncConnection, key: str) -> None:
    """Serialise work on `key` across servers until the transaction ends.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: nothing to do, since a certctl write
    transaction starts with BEGIN IMMEDIATE and so already excludes every other writer.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


# ---- CRL cache ----------------------------------------------------------------------------------
_META = (_crl.ca_id, _crl.issuer_id, _crl.crl_number, _crl.this_update, _crl.next_update, _crl.etag, _crl.entries,
         _crl.revocations_seen, _crl.generated_at)


async def crl_meta(conn: AsyncConnection, ca_id: str) -> Row | None:
    """The cached CRL's description without its (possibly large) DER."""
    result = await conn.execute(select(*_META).where(_crl.ca_id == ca_id))
    return result.mappings().first()


async def crl_der(conn: AsyncConnection, ca_id: str) -> tuple[bytes, str] | None:
    result = await conn.execute(select(_crl.crl_der, _crl.etag).where(_crl.ca_id == ca_id))
    found = result.first()
    return (bytes(found[0]), str(found[1])) if found is not None else None


async def highest_crl_number(conn: AsyncConnection, ca_id: str) -> int:
    """The highest CRL number ever published for a CA, cache row or event log: the next one must be above it."""
    cached = (await conn.execute(select(_crl.crl_number).where(_crl.ca_id == ca_id))).scalar()
    logged = (await conn.execute(select(func.max(_evt.crl_number)).where(_evt.ca_id == ca_id))).scalar()
    return max(int(cached or 0), int(logged or 0))


async def save_crl(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    """Insert or replace the CA's cached CRL."""
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = insert(crl_cache).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[_crl.ca_id], set_={k: statement.excluded[k] for k in values if k != "ca_id"}
    )
    await conn.execute(statement)


async def insert_crl_event(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await rows.insert_row(conn, crl_generation_events, values)


async def crl_cache_rows(conn: AsyncConnection) -> list[Row]:
    """Every CA with its cached CRL's description (NULLs when none was generated yet)."""
    result = await conn.execute(
        select(_ca.id.label("ca_id"), _ca.owning_issuer_id.label("issuer_id"), _ca.name.label("ca_name"),
               _ca.state, _crl.crl_number, _crl.this_update, _crl.next_update, _crl.etag, _crl.entries,
               _crl.revocations_seen, _crl.generated_at)
        .select_from(intermediate_cas.outerjoin(crl_cache, _crl.ca_id == _ca.id))
        .order_by(_ca.owning_issuer_id, _ca.created_at, _ca.id)
    )
    return list(result.mappings())


async def recent_crl_events(conn: AsyncConnection, ca_id: str, limit: int = 5) -> list[Row]:
    result = await conn.execute(
        select(_evt.crl_number, _evt.entries, _evt.duration_ms, _evt.trigger, _evt.error, _evt.created_at)
        .where(_evt.ca_id == ca_id).order_by(_evt.created_at.desc(), _evt.id.desc()).limit(limit)
    )
    return list(result.mappings())


async def revocations_for_crl(conn: AsyncConnection, ca_id: str) -> Sequence[Any]:
    """(serial_number, revoked_at, reason_code, not_after, short_lived) of every revocation by the CA.

    Plain tuples, not mappings: a CRL may list a million entries.
    """
    result = await conn.execute(
        select(_rev.serial_number, _rev.revoked_at, _rev.reason_code, _rev.not_after, _rev.short_lived)
        .where(_rev.ca_id == ca_id).order_by(_rev.revoked_at, _rev.serial_number)
    )
    return result.all()


async def count_revocations(conn: AsyncConnection, ca_id: str) -> int:
    result = await conn.execute(select(func.count()).select_from(certificate_revocations).where(_rev.ca_id == ca_id))
    return int(result.scalar_one())


# ---- OCSP -----------------------------------------------------------------------------------------
async def serial_statuses(conn: AsyncConnection, ca_id: str, serials: Sequence[str]) -> list[Row]:
    """What the database knows of these canonical serials of one CA, in one round trip.

    Rows (serial_number, kind, revoked_at, reason_code, short_lived) with kind 'r' for a revocation,
    'v' for a certificate version the CA signed, 'c' for a CA certificate it signed.
    """
    versions = certificate_versions.c
    revoked = select(_rev.serial_number, literal("r").label("kind"), _rev.revoked_at, _rev.reason_code,
                     _rev.short_lived).where(_rev.ca_id == ca_id, _rev.serial_number.in_(serials))
    issued = select(versions.serial_number, literal("v"), null().cast(UTCDateTime), null().cast(Integer),
                    literal(False)).where(versions.ca_id == ca_id, versions.serial_number.in_(serials))
    children = select(_ca.serial_number, literal("c"), null().cast(UTCDateTime), null().cast(Integer),
                      literal(False)).where(_ca.parent_ca_id == ca_id, _ca.serial_number.in_(serials))
    result = await conn.execute(union_all(revoked, issued, children))
    return list(result.mappings())


async def newest_revocation_time(conn: AsyncConnection) -> datetime | None:
    value: datetime | None = (await conn.execute(select(func.max(_rev.created_at)))).scalar()
    return value


async def revocations_since(conn: AsyncConnection, since: datetime) -> list[Row]:
    """(ca_id, serial_number, created_at) of the revocations recorded at or after `since` (index range scan)."""
    result = await conn.execute(
        select(_rev.ca_id, _rev.serial_number, _rev.created_at).where(_rev.created_at >= since)
        .order_by(_rev.created_at)
    )
    return list(result.mappings())


async def get_responder(conn: AsyncConnection, ca_id: str) -> Row | None:
    result = await conn.execute(select(ocsp_responders).where(ocsp_responders.c.ca_id == ca_id))
    return result.mappings().first()


async def save_responder(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = insert(ocsp_responders).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[ocsp_responders.c.ca_id],
        set_={k: statement.excluded[k] for k in values if k not in ("ca_id", "created_at")},
    )
    await conn.execute(statement)
