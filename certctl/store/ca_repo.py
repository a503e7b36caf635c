"""The CA hierarchy rows (`intermediate_cas`) and the revocation records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store import rows
from certctl.store.rows import Row
from certctl.store.schema import certificate_revocations, certificate_versions, intermediate_cas

_ca = intermediate_cas.c
_rev = certificate_revocations.c


async def get_ca(conn: AsyncConnection, ca_id: str, *, for_update: bool = False) -> Row | None:
    if for_update:
        return await rows.get_row_for_update(conn, intermediate_cas, ca_id)
    return await rows.get_row(conn, intermediate_cas, ca_id)


async def insert_ca(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await rows.insert_row(conn, intermediate_cas, values)


async def update_ca(conn: AsyncConnection, ca_id: str, values: Mapping[str, Any]) -> bool:
    return await rows.update_row(conn, intermediate_cas, ca_id, values)


async def active_root(conn: AsyncConnection, issuer_id: str) -> Row | None:
    result = await conn.execute(
        select(intermediate_cas).where(
            _ca.owning_issuer_id == issuer_id, _ca.parent_ca_id.is_(None), _ca.state == "active"
        )
    )
    return result.mappings().first()


async def cas_of_issuer(conn: AsyncConnection, issuer_id: str) -> list[Row]:
    return await rows.list_rows(conn, intermediate_cas, _ca.owning_issuer_id == issuer_id,
                                order_by=(_ca.created_at, _ca.id))


async def all_cas(conn: AsyncConnection) -> list[Row]:
    return await rows.list_rows(conn, intermediate_cas, order_by=(_ca.created_at, _ca.id))


async def children(conn: AsyncConnection, ca_id: str, *, states: tuple[str, ...] | None = None) -> list[Row]:
    where = [_ca.parent_ca_id == ca_id]
    if states:
        where.append(_ca.state.in_(states))
    return await rows.list_rows(conn, intermediate_cas, *where, order_by=(_ca.created_at, _ca.id))


async def name_taken(conn: AsyncConnection, issuer_id: str, name: str) -> bool:
    return bool(await rows.count_rows(conn, intermediate_cas, _ca.owning_issuer_id == issuer_id, _ca.name == name))


async def serial_in_use(conn: AsyncConnection, ca_id: str, serial: str) -> bool:
    cv = certificate_versions.c
    found = await conn.execute(
        select(cv.id).where(cv.ca_id == ca_id, cv.serial_number == serial).limit(1)
    )
    if found.first() is not None:
        return True
    child = await conn.execute(select(_ca.id).where(_ca.parent_ca_id == ca_id, _ca.serial_number == serial).limit(1))
    return child.first() is not None


# ---- revocations --------------------------------------------------------------------------------
async def insert_revocation(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await rows.insert_row(conn, certificate_revocations, values)


async def revocation_for(conn: AsyncConnection, issuer_id: str, serial: str) -> Row | None:
    result = await conn.execute(
        select(certificate_revocations).where(_rev.issuer_id == issuer_id, _rev.serial_number == serial)
    )
    return result.mappings().first()


async def revocations_of_ca(conn: AsyncConnection, ca_id: str) -> list[Row]:
    result = await conn.execute(
        select(_rev.serial_number, _rev.revoked_at, _rev.reason, _rev.reason_code, _rev.not_after, _rev.short_lived)
        .where(_rev.ca_id == ca_id).order_by(_rev.revoked_at, _rev.serial_number)
    )
    return list(result.mappings())


async def count_revocations_of_ca(conn: AsyncConnection, ca_id: str) -> int:
    result = await conn.execute(select(func.count()).select_from(certificate_revocations).where(_rev.ca_id == ca_id))
    return int(result.scalar_one())


async def mark_issuer_notified(conn: AsyncConnection, revocation_id: str) -> None:
    await conn.execute(update(certificate_revocations).where(_rev.id == revocation_id).values(issuer_notified=True))


async def delete_cas_of_issuer(conn: AsyncConnection, issuer_id: str) -> list[str]:
    """Delete an issuer's CA rows, children before parents (the parent link restricts); returns their ids."""
    deleted: list[str] = []
    while True:
        has_child = select(_ca.parent_ca_id).where(_ca.parent_ca_id.is_not(None))
        leaves = list((await conn.execute(
            select(_ca.id).where(_ca.owning_issuer_id == issuer_id, _ca.id.not_in(has_child))
        )).scalars())
        if not leaves:
            return deleted
        await conn.execute(delete(intermediate_cas).where(_ca.id.in_(leaves)))
        deleted.extend(leaves)
