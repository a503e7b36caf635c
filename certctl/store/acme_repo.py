"""SQL of the ACME server: spent nonces, accounts, EAB keys, orders, authorizations, challenges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store import rows
from certctl.store.rows import Row, cached_statement
from certctl.store.schema import (
    acme_accounts,
    acme_authorizations,
    acme_challenges,
    acme_eab_keys,
    acme_nonces,
    acme_orders,
    certificate_profiles,
    certificate_versions,
    intermediate_cas,
    issuers,
    managed_certificates,
    owners,
    renewal_policies,
    teams,
)

_OPEN_ORDER_STATUSES = ("pending", "ready", "processing")


# ---- nonces -----------------------------------------------------------------------------------------
async def spend_nonce(
    conn: AsyncConnection, value: str, expires_at: datetime, account_id: str | None = None,
) -> tuple[bool, Mapping[Any, Any] | None]:
    """Record a nonce as used: (False, ...) when it was used before, on any replica. With `account_id` the
    account row is read too: on PostgreSQL in the same statement (one round trip per ACME request)."""
    dialect = conn.dialect.name
    params = {"value": value, "expires_at": expires_at, "account_id": account_id or ""}
    if dialect == "postgresql" and account_id is not None:
        stmt = cached_statement(("acme_spend_nonce_account",), _spend_with_account)
        row = (await conn.execute(stmt, params)).mappings().first()
        assert row is not None
        found = {c.name: row[c.name] for c in acme_accounts.c} if row["id"] is not None else None
        return bool(row["_fresh"]), found
    stmt = cached_statement(("acme_spend_nonce", dialect), lambda: (
        pg_insert(acme_nonces) if dialect == "postgresql" else sqlite_insert(acme_nonces)
    ).on_conflict_do_nothing(index_elements=["value"]))
    result = await conn.execute(stmt, {"value": value, "expires_at": expires_at})
    fresh = bool(result.rowcount == 1)
    account = await get_account(conn, account_id) if fresh and account_id is not None else None
    return fresh, account


def _spend_with_account() -> Any:
    spent = (pg_insert(acme_nonces).values(value=bindparam("value"), expires_at=bindparam("expires_at"))
             .on_conflict_do_nothing(index_elements=["value"]).returning(acme_nonces.c.value).cte("spent"))
    fresh = select(func.count()).select_from(spent).scalar_subquery().label("_fresh")
    one = select(literal(1).label("one")).subquery("one")
    return select(fresh, *acme_accounts.c).select_from(
        one.outerjoin(acme_accounts, acme_accounts.c.id == bindparam("account_id")))


async def delete_expired_nonces(conn: AsyncConnection, now: datetime) -> int:
    result = await conn.execute(delete(acme_nonces).where(acme_nonces.c.expires_at <= now))
    return int(result.rowcount or 0)


# ---- profiles and inventory defaults ----------------------------------------------------------------
async def get_profile(conn: AsyncConnection, profile_id: str) -> Row | None:
    return await rows.get_row(conn, certificate_profiles, profile_id)


async def first_enabled_profile_id(conn: AsyncConnection) -> str | None:
    p = certificate_profiles.c
    result = await conn.execute(select(p.id).where(p.enabled.is_(True)).order_by(p.created_at, p.id).limit(1))
    return result.scalar_one_or_none()


async def ensure_inventory_rows(
    conn: AsyncConnection, *, team: Mapping[str, Any], owner: Mapping[str, Any], policy: Mapping[str, Any]
) -> None:
    """The team, owner and renewal policy ACME certificates are filed under, made once when missing."""
    for table, values in ((teams, team), (owners, owner), (renewal_policies, policy)):
        if await rows.get_row(conn, table, values["id"]) is None:
            await rows.insert_row(conn, table, values)


# ---- accounts ---------------------------------------------------------------------------------------
async def get_account(conn: AsyncConnection, account_id: str) -> Row | None:
    return await rows.get_row(conn, acme_accounts, account_id)


async def account_by_thumbprint(conn: AsyncConnection, profile_id: str, thumbprint: str) -> Row | None:
    a = acme_accounts.c
    stmt = cached_statement(("acme_account_by_thumb",), lambda: select(acme_accounts).where(
        a.profile_id == bindparam("p"), a.thumbprint == bindparam("t")))
    return (await conn.execute(stmt, {"p": profile_id, "t": thumbprint})).mappings().first()


async def insert_account(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await rows.insert_row(conn, acme_accounts, values)


async def update_account(conn: AsyncConnection, account_id: str, values: Mapping[str, Any]) -> None:
    await rows.update_row(conn, acme_accounts, account_id, values)


async def lock_account(conn: AsyncConnection, account_id: str) -> Row | None:
    return await rows.get_row_for_update(conn, acme_accounts, account_id)


# ---- EAB keys ---------------------------------------------------------------------------------------
async def insert_eab_key(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await rows.insert_row(conn, acme_eab_keys, values)


async def get_eab_key(conn: AsyncConnection, key_id: str, *, for_update: bool = False) -> Row | None:
    if for_update:
        return await rows.get_row_for_update(conn, acme_eab_keys, key_id)
    return await rows.get_row(conn, acme_eab_keys, key_id)


async def bind_eab_key(conn: AsyncConnection, key_id: str, account_id: str, now: datetime) -> bool:
    """Bind an unused key to its account; False when another account took it first."""
    k = acme_eab_keys.c
    result = await conn.execute(update(acme_eab_keys).where(k.id == key_id, k.account_id.is_(None))
                                .values(account_id=account_id, used_at=now))
    return bool(result.rowcount == 1)


async def list_eab_keys(conn: AsyncConnection) -> list[Row]:
    return await rows.list_rows(conn, acme_eab_keys, order_by=(acme_eab_keys.c.created_at, acme_eab_keys.c.id))


async def delete_eab_key(conn: AsyncConnection, key_id: str) -> bool:
    return await rows.delete_row(conn, acme_eab_keys, key_id)


# ---- orders -----------------------------------------------------------------------------------------
async def insert_order(
    conn: AsyncConnection, order: Mapping[str, Any], authzs: Sequence[Mapping[str, Any]],
    challenges: Sequence[Mapping[str, Any]],
) -> None:
    await rows.insert_row(conn, acme_orders, order)
    await rows.insert_many(conn, acme_authorizations, authzs)
    await rows.insert_many(conn, acme_challenges, challenges)


async def get_order(conn: AsyncConnection, order_id: str, *, for_update: bool = False) -> Row | None:
    if for_update:
        return await rows.get_row_for_update(conn, acme_orders, order_id)
    return await rows.get_row(conn, acme_orders, order_id)


async def update_order(conn: AsyncConnection, order_id: str, values: Mapping[str, Any]) -> None:
    await rows.update_row(conn, acme_orders, order_id, values)


async def authz_ids_of_order(conn: AsyncConnection, order_id: str) -> list[Row]:
    z = acme_authorizations.c
    stmt = cached_statement(("acme_authz_of_order",), lambda: select(z.id, z.status, z.expires_at).where(
        z.order_id == bindparam("o")).order_by(z.id))
    return list((await conn.execute(stmt, {"o": order_id})).mappings().all())


async def order_with_authzs(
    conn: AsyncConnection, order_id: str,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """An order and its authorizations' (id, status, expires_at) in one statement."""
    o, z = acme_orders.c, acme_authorizations.c
    stmt = cached_statement(("acme_order_authzs",), lambda: select(
        acme_orders, z.id.label("_authz_id"), z.status.label("_authz_status"),
        z.expires_at.label("_authz_expires_at"),
    ).select_from(acme_orders.outerjoin(acme_authorizations, z.order_id == o.id))
        .where(o.id == bindparam("o")).order_by(z.id))
    found = list((await conn.execute(stmt, {"o": order_id})).mappings().all())
    if not found:
        return None, []
    order = {c.name: found[0][c.name] for c in acme_orders.c}
    authzs = [{"id": r["_authz_id"], "status": r["_authz_status"], "expires_at": r["_authz_expires_at"]}
              for r in found if r["_authz_id"] is not None]
    return order, authzs


async def authz_with_challenges(
    conn: AsyncConnection, authz_id: str,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """An authorization and its challenges in one statement."""
    z, c = acme_authorizations.c, acme_challenges.c
    stmt = cached_statement(("acme_authz_challs",), lambda: select(
        acme_authorizations, *(col.label(f"_c_{col.name}") for col in acme_challenges.c),
    ).select_from(acme_authorizations.outerjoin(acme_challenges, c.authz_id == z.id))
        .where(z.id == bindparam("z")).order_by(c.id))
    found = list((await conn.execute(stmt, {"z": authz_id})).mappings().all())
    if not found:
        return None, []
    authz = {col.name: found[0][col.name] for col in acme_authorizations.c}
    challenges = [{col.name: r[f"_c_{col.name}"] for col in acme_challenges.c}
                  for r in found if r["_c_id"] is not None]
    return authz, challenges


async def order_ids_of_account(conn: AsyncConnection, account_id: str, *, after: str | None, limit: int) -> list[str]:
    o = acme_orders.c
    stmt = select(o.id).where(o.account_id == account_id)
    if after:
        stmt = stmt.where(o.id > after)
    result = await conn.execute(stmt.order_by(o.id).limit(limit))
    return [r[0] for r in result]


async def count_open_orders(conn: AsyncConnection, account_id: str, now: datetime) -> int:
    o = acme_orders.c
    stmt = cached_statement(("acme_open_orders",), lambda: select(func.count()).select_from(acme_orders).where(
        o.account_id == bindparam("a"), o.status.in_(_OPEN_ORDER_STATUSES), o.expires_at > bindparam("now")))
    return int((await conn.execute(stmt, {"a": account_id, "now": now})).scalar_one())


async def order_of_version(conn: AsyncConnection, version_id: str) -> Row | None:
    o = acme_orders.c
    stmt = cached_statement(("acme_order_of_version",), lambda: select(acme_orders).where(
        o.version_id == bindparam("v")).limit(1))
    return (await conn.execute(stmt, {"v": version_id})).mappings().first()


async def replacing_order(conn: AsyncConnection, order_id: str) -> Row | None:
    o = acme_orders.c
    result = await conn.execute(select(acme_orders).where(o.replaces_order_id == order_id))
    return result.mappings().first()


async def expire_orders(conn: AsyncConnection, now: datetime) -> int:
    """Open orders past their expiry become invalid (RFC 8555 §7.1.6), with their open authorizations."""
    o, z = acme_orders.c, acme_authorizations.c
    await conn.execute(update(acme_authorizations).where(z.status == "pending", z.expires_at <= now)
                       .values(status="expired", updated_at=now))
    result = await conn.execute(update(acme_orders).where(o.status.in_(("pending", "ready")), o.expires_at <= now)
                                .values(status="invalid", updated_at=now))
    return int(result.rowcount or 0)


# ---- authorizations and challenges ------------------------------------------------------------------
async def get_authz(conn: AsyncConnection, authz_id: str, *, for_update: bool = False) -> Row | None:
    if for_update:
        return await rows.get_row_for_update(conn, acme_authorizations, authz_id)
    return await rows.get_row(conn, acme_authorizations, authz_id)


async def update_authz(conn: AsyncConnection, authz_id: str, values: Mapping[str, Any]) -> None:
    await rows.update_row(conn, acme_authorizations, authz_id, values)


async def challenges_of_authz(conn: AsyncConnection, authz_id: str) -> list[Row]:
    c = acme_challenges.c
    stmt = cached_statement(("acme_chall_of_authz",), lambda: select(acme_challenges).where(
        c.authz_id == bindparam("z")).order_by(c.id))
    return list((await conn.execute(stmt, {"z": authz_id})).mappings().all())


async def get_challenge(conn: AsyncConnection, challenge_id: str, *, for_update: bool = False) -> Row | None:
    if for_update:
        return await rows.get_row_for_update(conn, acme_challenges, challenge_id)
    return await rows.get_row(conn, acme_challenges, challenge_id)


async def update_challenge(conn: AsyncConnection, challenge_id: str, values: Mapping[str, Any]) -> None:
    await rows.update_row(conn, acme_challenges, challenge_id, values)


async def challenge_context(conn: AsyncConnection, challenge_id: str) -> Row | None:
    """A challenge with what validating it needs: its authorization, order and account key thumbprint."""
    c, z, a = acme_challenges.c, acme_authorizations.c, acme_accounts.c
    stmt = cached_statement(("acme_chall_ctx",), lambda: select(
        c.id, c.type, c.token, c.status, c.authz_id, z.order_id, z.account_id, z.identifier_type,
        z.identifier_value, z.status.label("authz_status"), z.expires_at.label("authz_expires_at"),
        a.thumbprint,
    ).select_from(acme_challenges.join(acme_authorizations, z.id == c.authz_id)
                  .join(acme_accounts, a.id == z.account_id)).where(c.id == bindparam("c")))
    return (await conn.execute(stmt, {"c": challenge_id})).mappings().first()


async def stale_processing_challenges(conn: AsyncConnection, before: datetime, limit: int) -> list[str]:
    c = acme_challenges.c
    result = await conn.execute(select(c.id).where(c.status == "processing", c.updated_at < before).limit(limit))
    return [r[0] for r in result]


async def set_other_challenges(conn: AsyncConnection, authz_id: str, keep_id: str, status: str, now: datetime) -> None:
    c = acme_challenges.c
    await conn.execute(update(acme_challenges).where(c.authz_id == authz_id, c.id != keep_id, c.status == "pending")
                       .values(status=status, updated_at=now))


# ---- certificates -----------------------------------------------------------------------------------
async def version_by_fingerprint(conn: AsyncConnection, fingerprint: str) -> Row | None:
    v = certificate_versions.c
    stmt = cached_statement(("acme_version_by_fp",), lambda: select(certificate_versions).where(
        v.fingerprint_sha256 == bindparam("f")))
    return (await conn.execute(stmt, {"f": fingerprint})).mappings().first()


async def version_with_owner(conn: AsyncConnection, version_id: str) -> Row | None:
    """A version's chain and CA with the account of the order that produced it (NULL: not an ACME order)."""
    v, o = certificate_versions.c, acme_orders.c
    stmt = cached_statement(("acme_version_owner",), lambda: select(v.id, v.pem_chain, v.ca_id, o.account_id)
                            .select_from(certificate_versions.outerjoin(acme_orders, o.version_id == v.id))
                            .where(v.id == bindparam("v")).limit(1))
    return (await conn.execute(stmt, {"v": version_id})).mappings().first()


async def versions_by_serial(conn: AsyncConnection, serial: str) -> list[Row]:
    v = certificate_versions.c
    stmt = cached_statement(("acme_versions_by_serial",), lambda: select(certificate_versions).where(
        v.serial_number == bindparam("s")))
    return list((await conn.execute(stmt, {"s": serial})).mappings().all())


async def get_version(conn: AsyncConnection, version_id: str) -> Row | None:
    return await rows.get_row(conn, certificate_versions, version_id)


async def get_certificate(conn: AsyncConnection, certificate_id: str) -> Row | None:
    return await rows.get_row(conn, managed_certificates, certificate_id)


async def insert_certificate(conn: AsyncConnection, values: Mapping[str, Any]) -> Row:
    stmt = cached_statement(("acme_insert_cert",), lambda: managed_certificates.insert().returning(
        *managed_certificates.c))
    return (await conn.execute(stmt, dict(values))).mappings().one()


async def get_ca(conn: AsyncConnection, ca_id: str) -> Row | None:
    return await rows.get_row(conn, intermediate_cas, ca_id)


async def get_issuer(conn: AsyncConnection, issuer_id: str) -> Row | None:
    return await rows.get_row(conn, issuers, issuer_id)
