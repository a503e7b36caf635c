"""SQL of the ACME server: spent nonces, accounts, EAB keys, orders, authorizations, challenges."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.errors import ConflictError, UnavailableError
from certctl.store import rows
from certctl.store.database import (
    DRIVER_UNAVAILABLE,
    Database,
    describe_integrity_error,
    driver_call,
    driver_connection,
)
from certctl.store.rows import Row, cached_statement
from certctl.store.schema import (
    acme_accounts,
    acme_authorizations,
    acme_challenges,
    acme_eab_keys,
    acme_nonces,
    acme_orders,
    audit_events,
    certificate_profiles,
    certificate_versions,
    intermediate_cas,
    issuers,
    managed_certificates,
    owners,
    renewal_policies,
    teams,
)

Rec = Mapping[Any, Any]  # a row as a RowMapping or as a dict built from a driver record
_OPEN_ORDER_STATUSES = ("pending", "ready", "processing")


# ---- PostgreSQL: driver connections of the ACME server's own ---------------------------------------------
Conn = Any  # an AsyncConnection, or (PostgreSQL) an asyncpg connection from DriverPool
_CONNECT_PARAMETERS = frozenset(inspect.signature(asyncpg.connect).parameters)


class DriverPool:
    """asyncpg connections for the ACME server's per-request statements (PostgreSQL), apart from SQLAlchemy's
    pool: checking a connection out of SQLAlchemy's async pool and back (greenlet hops, pool events, the reset on
    return) costs about 0.1 ms of CPU, more than most of these statements; here it is a list pop. At most `size`
    connections, opened on first use and kept; the connection arguments and JSON codecs are the engine's (so rows
    read here and through SQLAlchemy look the same). A connection whose use ended in an error that may leave it
    busy or inside a transaction (a cancelled request, a lost server) is closed, not reused."""

    def __init__(self, db: Database, size: int) -> None:
        self._db = db
        self._size = max(1, size)
        self._idle: list[asyncpg.Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        raw = await self._acquire()
        try:
            yield raw
        except BaseException as exc:
            if not isinstance(exc, Exception) or isinstance(exc, DRIVER_UNAVAILABLE) or raw.is_in_transaction():
                raw.terminate()
            raise
        finally:
            self._release(raw)

    async def _acquire(self) -> asyncpg.Connection:
        while True:
            while self._idle:
                raw = self._idle.pop()
                if not raw.is_closed():
                    return raw
                self._open -= 1
            if self._open < self._size:
                self._open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken and cancelled at once: pass the turn on
                raise

    def _release(self, raw: asyncpg.Connection) -> None:
        if raw.is_closed():
            self._open -= 1
        else:
            self._idle.append(raw)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self) -> asyncpg.Connection:
        engine = self._db.engine
        _, params = engine.dialect.create_connect_args(engine.url)
        try:
            raw = await asyncpg.connect(**{k: v for k, v in params.items() if k in _CONNECT_PARAMETERS})
        except (*DRIVER_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise UnavailableError("the database is unavailable; retry shortly") from exc
        # The engine's JSON handling (SQLAlchemy's asyncpg codecs with the engine's orjson deserializer).
        await raw.set_type_codec("json", encoder=str.encode, decoder=orjson.loads, schema="pg_catalog",
                                 format="binary")
        await raw.set_type_codec("jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog",
                                 format="binary")
        return raw

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for raw in idle:
            self._open -= 1
            await raw.close()


def _jsonb_encode(text: str) -> bytes:
    return b"\x01" + text.encode()


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(data[1:])  # the leading byte is jsonb's binary format version


def _is_pg(conn: Conn) -> bool:
    return isinstance(conn, asyncpg.Connection) or conn.dialect.name == "postgresql"


async def _driver(conn: Conn, method: str, sql: str, *args: Any) -> Any:
    """`fetch`/`fetchrow`/`fetchval` of a statement on the driver connection (a DriverPool one, or the one under
    a SQLAlchemy connection), with driver errors mapped as the store maps them elsewhere."""
    raw = conn if isinstance(conn, asyncpg.Connection) else await driver_connection(conn)
    return await driver_call(conn, getattr(raw, method)(sql, *args))


# ---- PostgreSQL: the per-request statements straight to asyncpg ---------------------------------------
# Every ACME request spends a nonce and most read one row set; through SQLAlchemy each statement costs more
# Python CPU (compile cache lookup, parameter and result processing, the autocommit dance) than PostgreSQL's own
# work. These go to asyncpg as prepared statements (kept per connection), outside any transaction: a single
# statement is its own transaction, so a spend, or an insert with its audit row in one statement, is atomic.
_ACCOUNT_COLUMNS = tuple(c.name for c in acme_accounts.c)
_ACCOUNT_SELECT = ", ".join(f'a."{c}"' for c in _ACCOUNT_COLUMNS)
_SPENT = ("WITH spent AS (INSERT INTO acme_nonces (value, expires_at) VALUES ($1, $2) "
          "ON CONFLICT (value) DO NOTHING RETURNING 1) ")
_PG_SPEND = _SPENT + "SELECT count(*) FROM spent"
_PG_SPEND_ACCOUNT = (_SPENT + f"SELECT (SELECT count(*) FROM spent) AS _fresh, {_ACCOUNT_SELECT} "
                     "FROM (SELECT 1) AS one LEFT JOIN acme_accounts a ON a.id = $3")
_PG_SPEND_THUMBPRINT = (_SPENT + f"SELECT (SELECT count(*) FROM spent) AS _fresh, {_ACCOUNT_SELECT} "
                        "FROM (SELECT 1) AS one LEFT JOIN acme_accounts a ON a.profile_id = $3 AND a.thumbprint = $4")


def _columns(alias: str, table: Any, prefix: str = "") -> str:
    return ", ".join(f'{alias}."{c.name}" AS "{prefix}{c.name}"' for c in table.c)


_PG_ORDER_AUTHZS = (f"SELECT {_columns('o', acme_orders)}, z.id AS _authz_id, z.status AS _authz_status, "
                    "z.expires_at AS _authz_expires_at FROM acme_orders o "
                    "LEFT JOIN acme_authorizations z ON z.order_id = o.id WHERE o.id = $1 ORDER BY z.id")
_PG_AUTHZ_CHALLENGES = (f"SELECT {_columns('z', acme_authorizations)}, {_columns('c', acme_challenges, '_c_')} "
                        "FROM acme_authorizations z LEFT JOIN acme_challenges c ON c.authz_id = z.id "
                        "WHERE z.id = $1 ORDER BY c.id")
_PG_VERSION_OWNER = ("SELECT v.id, v.pem_chain, v.ca_id, o.account_id FROM certificate_versions v "
                     "LEFT JOIN acme_orders o ON o.version_id = v.id WHERE v.id = $1 LIMIT 1")


def _account_of(record: Any) -> dict[str, Any] | None:
    return {c: record[c] for c in _ACCOUNT_COLUMNS} if record["id"] is not None else None


# ---- nonces -----------------------------------------------------------------------------------------
async def spend_nonce(
    conn: Conn, value: str, expires_at: datetime, account_id: str | None = None,
) -> tuple[bool, Mapping[Any, Any] | None]:
    """Record a nonce as used: (False, ...) when it was used before, on any replica. With `account_id` the
    account row is read too: on PostgreSQL in the same statement (one round trip per ACME request)."""
    if _is_pg(conn):
        if account_id is None:
            return bool(await _driver(conn, "fetchval", _PG_SPEND, value, expires_at)), None
        record = await _driver(conn, "fetchrow", _PG_SPEND_ACCOUNT, value, expires_at, account_id)
        return bool(record["_fresh"]), _account_of(record)
    dialect = conn.dialect.name
    stmt = cached_statement(("acme_spend_nonce", dialect), lambda: sqlite_insert(acme_nonces)
                            .on_conflict_do_nothing(index_elements=["value"]))
    result = await conn.execute(stmt, {"value": value, "expires_at": expires_at})
    fresh = bool(result.rowcount == 1)
    account = await get_account(conn, account_id) if fresh and account_id is not None else None
    return fresh, account


async def spend_nonce_for_key(
    conn: Conn, value: str, expires_at: datetime, profile_id: str, thumbprint: str,
) -> tuple[bool, Mapping[Any, Any] | None]:
    """Spend a nonce and read the profile's account of a key thumbprint (newAccount): one statement on
    PostgreSQL."""
    if _is_pg(conn):
        record = await _driver(conn, "fetchrow", _PG_SPEND_THUMBPRINT, value, expires_at, profile_id, thumbprint)
        return bool(record["_fresh"]), _account_of(record)
    fresh, _ = await spend_nonce(conn, value, expires_at)
    return fresh, await account_by_thumbprint(conn, profile_id, thumbprint) if fresh else None


# A read-only request's resource read with its nonce spend and account (PostgreSQL): one round trip instead of
# two. The rows are used only once the caller has verified the request's signature.
_PREFETCH_READS = {
    "order": (_PG_ORDER_AUTHZS.replace("$1", "$4").replace(" ORDER BY z.id", ""), "_authz_id"),
    "authz": (_PG_AUTHZ_CHALLENGES.replace("$1", "$4").replace(" ORDER BY c.id", ""), "_c_id"),
    "cert": (_PG_VERSION_OWNER.replace("$1", "$4"), "id"),
}
_PG_SPEND_PREFETCH = {
    kind: (_SPENT + "SELECT (SELECT count(*) FROM spent) AS _fresh, "
           + ", ".join(f'a."{c}" AS "_a_{c}"' for c in _ACCOUNT_COLUMNS)
           + f", r.* FROM (SELECT 1) AS one LEFT JOIN acme_accounts a ON a.id = $3 "
           f"LEFT JOIN LATERAL ({inner}) AS r ON true ORDER BY r.{order_by}")
    for kind, (inner, order_by) in _PREFETCH_READS.items()}


async def spend_nonce_prefetch(
    conn: Conn, value: str, expires_at: datetime, account_id: str, kind: str, resource_id: str,
) -> tuple[bool, dict[str, Any] | None, Any]:
    """PostgreSQL, one statement: the nonce spent, the account read and the resource of `kind` read (as
    `order_with_authzs`, `authz_with_challenges` or `version_with_owner` return it; a missing version as False)."""
    found = list(await _driver(conn, "fetch", _PG_SPEND_PREFETCH[kind], value, expires_at, account_id, resource_id))
    first = found[0]
    account = {c: first[f"_a_{c}"] for c in _ACCOUNT_COLUMNS} if first["_a_id"] is not None else None
    rows = [r for r in found if r["id"] is not None]
    if kind == "order":
        resource: Any = _order_of_rows(rows)
    elif kind == "authz":
        resource = _authz_of_rows(rows)
    else:
        resource = {k: rows[0][k] for k in ("id", "pem_chain", "ca_id", "account_id")} if rows else False
    return bool(first["_fresh"]), account, resource


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


_PG_ACCOUNT_BY_THUMBPRINT = (f"SELECT {_ACCOUNT_SELECT} FROM acme_accounts a "
                             "WHERE a.profile_id = $1 AND a.thumbprint = $2")


async def account_by_thumbprint(conn: Conn, profile_id: str, thumbprint: str) -> Rec | None:
    if isinstance(conn, asyncpg.Connection):  # a DriverPool connection
        record = await _driver(conn, "fetchrow", _PG_ACCOUNT_BY_THUMBPRINT, profile_id, thumbprint)
        return dict(record) if record is not None else None
    a = acme_accounts.c
    stmt = cached_statement(("acme_account_by_thumb",), lambda: select(acme_accounts).where(
        a.profile_id == bindparam("p"), a.thumbprint == bindparam("t")))
    found: Row | None = (await conn.execute(stmt, {"p": profile_id, "t": thumbprint})).mappings().first()
    return found


async def insert_account(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await rows.insert_row(conn, acme_accounts, values)


_ACCOUNT_INSERT_COLUMNS = ("id", "profile_id", "thumbprint", "jwk", "status", "contact", "terms_agreed",
                           "eab_key_id", "created_at", "updated_at")
_AUDIT_COLUMNS = ("id", "actor", "actor_type", "action", "resource_type", "resource_id", "details", "timestamp")
_PG_INSERT_ACCOUNT_AUDITED = (
    "WITH acc AS (INSERT INTO acme_accounts (" + ", ".join(f'"{c}"' for c in _ACCOUNT_INSERT_COLUMNS) + ") "
    "VALUES ($1, $2, $3, $4::jsonb, $5, $6::jsonb, $7, $8, $9, $10) "
    "ON CONFLICT (profile_id, thumbprint) DO NOTHING RETURNING id), "
    "ev AS (INSERT INTO audit_events (" + ", ".join(f'"{c}"' for c in _AUDIT_COLUMNS) + ") "
    "SELECT $11::text, $12::text, $13::text, $14::text, $15::text, $16::text, $17::jsonb, $18::timestamptz "
    "FROM acc) SELECT count(*) FROM acc")


async def insert_account_audited(
    conn: Conn, values: Mapping[str, Any], event: Mapping[str, Any],
) -> bool:
    """PostgreSQL: the account and its audit event in one statement (so one transaction); False, and nothing
    written, when the profile already has an account for this key (a concurrent newAccount won)."""
    assert _is_pg(conn)
    # JSON columns go to the driver as text, as SQLAlchemy's serializer hands them over.
    args = [orjson.dumps(values[c]).decode() if c in ("jwk", "contact") else values[c] for c in _ACCOUNT_INSERT_COLUMNS]
    args += _driver_args(audit_events, _AUDIT_COLUMNS, event)
    return bool(await _driver(conn, "fetchval", _PG_INSERT_ACCOUNT_AUDITED, *args))


async def update_account(conn: AsyncConnection, account_id: str, values: Mapping[str, Any]) -> None:
    await rows.update_row(conn, acme_accounts, account_id, values)


async def lock_account(conn: AsyncConnection, account_id: str) -> Row | None:
    return await rows.get_row_for_update(conn, acme_accounts, account_id)


async def cancel_account_work(conn: AsyncConnection, account_id: str, now: datetime, error: Any) -> tuple[int, int]:
    """RFC 8555 §7.3.6, in the caller's transaction: the account's open (pending, ready, processing) orders become
    invalid with `error`, its pending authorizations deactivated. Returns (orders, authorizations) changed.
    Authorizations are reached through the account's orders (indexed by account; authorizations by order)."""
    o, z = acme_orders.c, acme_authorizations.c
    of_account = select(o.id).where(o.account_id == account_id).scalar_subquery()
    authzs = await conn.execute(update(acme_authorizations).where(z.order_id.in_(of_account), z.status == "pending")
                                .values(status="deactivated", updated_at=now))
    orders = await conn.execute(update(acme_orders).where(o.account_id == account_id,
                                                          o.status.in_(_OPEN_ORDER_STATUSES))
                                .values(status="invalid", error=error, updated_at=now))
    return int(orders.rowcount or 0), int(authzs.rowcount or 0)


async def valid_authorizations(
    conn: AsyncConnection, account_id: str, now: datetime, values: Sequence[str],
) -> set[tuple[str, str, bool]]:
    """The (identifier type, value, wildcard) of the account's valid, unexpired authorizations for these values
    (reached through the account's orders, which are indexed by account)."""
    o, z = acme_orders.c, acme_authorizations.c
    stmt = select(z.identifier_type, z.identifier_value, z.wildcard).select_from(
        acme_authorizations.join(acme_orders, o.id == z.order_id)).where(
        o.account_id == account_id, z.account_id == account_id, z.status == "valid", z.expires_at > now,
        z.identifier_value.in_(list(values)))
    return {(r[0], r[1], bool(r[2])) for r in await conn.execute(stmt)}


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


_OPEN = "('" + "', '".join(_OPEN_ORDER_STATUSES) + "')"
_AUDIT_INSERT = "INSERT INTO audit_events (" + ", ".join(f'"{c}"' for c in _AUDIT_COLUMNS) + ") "
_PG_INSERT_ORDER_AUDITED = f"""
WITH ok AS (
  SELECT $14::int = 0 OR (SELECT count(*) FROM acme_orders WHERE account_id = $2 AND status IN {_OPEN}
                          AND expires_at > $8) < $14 AS ok),
o AS (
  INSERT INTO acme_orders (id, account_id, profile_id, status, identifiers, not_before, not_after, expires_at, error,
                           certificate_id, version_id, replaces, replaces_order_id, created_at, updated_at)
  SELECT $1, $2, $3, $4, $5::jsonb, $6, $7, $9, NULL, NULL, NULL, NULL, NULL, $8, $8 FROM ok WHERE ok.ok
  RETURNING id),
z AS (
  INSERT INTO acme_authorizations (id, order_id, account_id, identifier_type, identifier_value, wildcard, status,
                                   expires_at, created_at, updated_at)
  SELECT u.id, o.id, $2, u.kind, u.value, u.wildcard, $10, $11, $8, $8
  FROM o, unnest($15::text[], $16::text[], $17::text[], $18::bool[]) AS u(id, kind, value, wildcard)),
c AS (
  INSERT INTO acme_challenges (id, authz_id, type, token, status, validated_at, error, validation_record,
                               created_at, updated_at)
  SELECT u.id, u.authz_id, u.type, u.token, $12, $13, NULL, NULL, $8, $8
  FROM o, unnest($19::text[], $20::text[], $21::text[], $22::text[]) AS u(id, authz_id, type, token)),
ev AS (
  {_AUDIT_INSERT}
  SELECT $23::text, $24::text, $25::text, $26::text, $27::text, $28::text, $29::jsonb, $30::timestamptz FROM o)
SELECT count(*) FROM o"""


async def insert_order_audited(
    conn: Conn, order: Mapping[str, Any], authzs: Sequence[Mapping[str, Any]],
    challenges: Sequence[Mapping[str, Any]], event: Mapping[str, Any], *, open_limit: int,
) -> bool:
    """PostgreSQL: an order (no `replaces`), its authorizations and challenges and its audit event in one
    statement, written only while the account has fewer than `open_limit` open orders (0: no limit); False,
    and nothing written, when it has that many. Authorizations share one status and expiry, challenges one
    status and validation time, as a new order's do."""
    assert _is_pg(conn) and order["replaces_order_id"] is None
    assert len({a["status"] for a in authzs}) == 1 and len({c["status"] for c in challenges}) == 1
    args = [
        order["id"], order["account_id"], order["profile_id"], order["status"],
        orjson.dumps(order["identifiers"]).decode(), order["not_before"], order["not_after"], order["created_at"],
        order["expires_at"], authzs[0]["status"], authzs[0]["expires_at"], challenges[0]["status"],
        challenges[0]["validated_at"], open_limit,
        [a["id"] for a in authzs], [a["identifier_type"] for a in authzs],
        [a["identifier_value"] for a in authzs], [a["wildcard"] for a in authzs],
        [c["id"] for c in challenges], [c["authz_id"] for c in challenges], [c["type"] for c in challenges],
        [c["token"] for c in challenges],
        *_driver_args(audit_events, _AUDIT_COLUMNS, event),
    ]
    return bool(await _driver(conn, "fetchval", _PG_INSERT_ORDER_AUDITED, *args))


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
    conn: Conn, order_id: str,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """An order and its authorizations' (id, status, expires_at) in one statement."""
    if _is_pg(conn):
        found = list(await _driver(conn, "fetch", _PG_ORDER_AUTHZS, order_id))
    else:
        found = await _order_authz_rows(conn, order_id)
    return _order_of_rows(found)


def _order_of_rows(found: Sequence[Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    if not found:
        return None, []
    order = {c.name: found[0][c.name] for c in acme_orders.c}
    authzs = [{"id": r["_authz_id"], "status": r["_authz_status"], "expires_at": r["_authz_expires_at"]}
              for r in found if r["_authz_id"] is not None]
    return order, authzs


async def _order_authz_rows(conn: AsyncConnection, order_id: str) -> list[Any]:
    o, z = acme_orders.c, acme_authorizations.c
    stmt = cached_statement(("acme_order_authzs",), lambda: select(
        acme_orders, z.id.label("_authz_id"), z.status.label("_authz_status"),
        z.expires_at.label("_authz_expires_at"),
    ).select_from(acme_orders.outerjoin(acme_authorizations, z.order_id == o.id))
        .where(o.id == bindparam("o")).order_by(z.id))
    return list((await conn.execute(stmt, {"o": order_id})).mappings().all())


async def authz_with_challenges(
    conn: Conn, authz_id: str,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """An authorization and its challenges in one statement."""
    z, c = acme_authorizations.c, acme_challenges.c
    if _is_pg(conn):
        found = list(await _driver(conn, "fetch", _PG_AUTHZ_CHALLENGES, authz_id))
    else:
        stmt = cached_statement(("acme_authz_challs",), lambda: select(
            acme_authorizations, *(col.label(f"_c_{col.name}") for col in acme_challenges.c),
        ).select_from(acme_authorizations.outerjoin(acme_challenges, c.authz_id == z.id))
            .where(z.id == bindparam("z")).order_by(c.id))
        found = list((await conn.execute(stmt, {"z": authz_id})).mappings().all())
    return _authz_of_rows(found)


def _authz_of_rows(found: Sequence[Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
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


_PG_CHALLENGE_AUTHZ = (f"SELECT {_columns('c', acme_challenges)}, {_columns('z', acme_authorizations, '_z_')} "
                       "FROM acme_challenges c JOIN acme_authorizations z ON z.id = c.authz_id WHERE c.id = $1")


async def challenge_with_authz(conn: Conn, challenge_id: str) -> tuple[Rec | None, Rec | None]:
    """A challenge and its authorization (one statement on PostgreSQL)."""
    if not _is_pg(conn):
        challenge = await get_challenge(conn, challenge_id)
        return challenge, await get_authz(conn, challenge["authz_id"]) if challenge is not None else None
    record = await _driver(conn, "fetchrow", _PG_CHALLENGE_AUTHZ, challenge_id)
    if record is None:
        return None, None
    return ({c.name: record[c.name] for c in acme_challenges.c},
            {c.name: record[f"_z_{c.name}"] for c in acme_authorizations.c})


# A challenge response in one statement: the challenge with its authorization (and how many authorizations its
# order has), and the claim pending → processing, made only for the owning account while the authorization is
# pending and unexpired. The row values are the statement's snapshot, from before the claim.
_PG_RESPOND_CHALLENGE = (
    "WITH cl AS (UPDATE acme_challenges c SET status = 'processing', updated_at = $2 "
    "FROM acme_authorizations z WHERE c.id = $1 AND c.status = 'pending' AND z.id = c.authz_id "
    "AND z.account_id = $3 AND z.status = 'pending' AND z.expires_at > $2 RETURNING c.id) "
    f"SELECT {_columns('c', acme_challenges)}, {_columns('z', acme_authorizations, '_z_')}, "
    "(SELECT count(*) FROM cl) AS _claimed, "
    "(SELECT count(*) FROM acme_authorizations n WHERE n.order_id = z.order_id) AS _authz_count "
    "FROM acme_challenges c JOIN acme_authorizations z ON z.id = c.authz_id WHERE c.id = $1")


async def respond_challenge(
    conn: Conn, challenge_id: str, account_id: str, now: datetime,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, bool, int]:
    """PostgreSQL, one statement: (challenge, authorization, claimed, authorizations in the order). When claimed
    the challenge is returned as it now is (processing)."""
    record = await _driver(conn, "fetchrow", _PG_RESPOND_CHALLENGE, challenge_id, now, account_id)
    if record is None:
        return None, None, False, 0
    challenge = {c.name: record[c.name] for c in acme_challenges.c}
    claimed = bool(record["_claimed"])
    if claimed:
        challenge.update(status="processing", updated_at=now)
    return (challenge, {c.name: record[f"_z_{c.name}"] for c in acme_authorizations.c}, claimed,
            int(record["_authz_count"]))


# The outcome of a challenge whose order has one authorization, in one statement (its own transaction): no other
# authorization can change the order's readiness, so no locks are needed first (see _PG_LOCK_OUTCOME for orders
# with several). Row locks taken by the updates serialize it with a concurrent outcome of another challenge of
# the same authorization (each update re-checks its `status = ...` condition on the newest row version).
_PG_RECORD_SINGLE = f"""
WITH ch AS (
  UPDATE acme_challenges SET status = $2, validated_at = $3, error = $4::jsonb, validation_record = $5::jsonb,
         updated_at = $6 WHERE id = $1 AND status = 'processing' RETURNING *),
z AS (
  UPDATE acme_authorizations SET status = $2, updated_at = $6
  WHERE id = $7 AND status = 'pending' AND EXISTS (SELECT 1 FROM ch) RETURNING id),
others AS (
  UPDATE acme_challenges SET status = 'invalid', updated_at = $6
  WHERE $2 = 'valid' AND authz_id = (SELECT id FROM z) AND id <> $1 AND status = 'pending'),
o AS (
  UPDATE acme_orders SET status = CASE WHEN $2 = 'valid' THEN 'ready' ELSE 'invalid' END,
         error = CASE WHEN $2 = 'valid' THEN error ELSE $4::jsonb END, updated_at = $6
  WHERE id = $8 AND status = 'pending' AND EXISTS (SELECT 1 FROM ch)
    AND ($2 <> 'valid' OR NOT EXISTS (SELECT 1 FROM acme_authorizations
                                      WHERE order_id = $8 AND id <> $7 AND status <> 'valid'))
  RETURNING status),
ev AS (
  {_AUDIT_INSERT}
  SELECT $9::text, $10::text, $11::text, $12::text, $13::text, $14::text, $15::jsonb, $16::timestamptz FROM ch)
SELECT {", ".join(f'ch."{c.name}"' for c in acme_challenges.c)}, (SELECT status FROM o) AS _order_status FROM ch"""


async def record_single_outcome(
    conn: Conn, challenge_id: str, authz_id: str, order_id: str, changes: Mapping[str, Any],
    event: Mapping[str, Any],
) -> tuple[dict[str, Any] | None, str | None]:
    """PostgreSQL, one statement, for a challenge whose order has exactly one authorization: the outcome as
    `record_outcome` writes it, only while the challenge is processing. Returns (the challenge as recorded, the
    order's new status or None), or (None, None) when the challenge was no longer processing."""
    found = await _driver(conn, "fetchrow", _PG_RECORD_SINGLE,
                          *_outcome_args(challenge_id, authz_id, order_id, changes, event))
    if found is None:
        return None, None
    return {c.name: found[c.name] for c in acme_challenges.c}, found["_order_status"]


# Recording a validation outcome: the challenge, its authorization and its order locked in one statement, then
# every change in a second one (a fresh snapshot taken after the locks: a concurrent outcome for another
# authorization of the same order, committed while this one waited, is seen when deciding `ready`).
_PG_LOCK_OUTCOME = ("SELECT c.status AS challenge_status, c.type, z.id AS authz_id, z.status AS authz_status, "
                    "z.identifier_value, z.account_id, o.id AS order_id, o.status AS order_status "
                    "FROM acme_challenges c JOIN acme_authorizations z ON z.id = c.authz_id "
                    "JOIN acme_orders o ON o.id = z.order_id WHERE c.id = $1 FOR UPDATE")
_PG_RECORD_OUTCOME = f"""
WITH ch AS (
  UPDATE acme_challenges SET status = $2, validated_at = $3, error = $4::jsonb, validation_record = $5::jsonb,
         updated_at = $6 WHERE id = $1 RETURNING id),
z AS (
  UPDATE acme_authorizations SET status = $2, updated_at = $6 WHERE id = $7 AND status = 'pending' RETURNING id),
others AS (
  UPDATE acme_challenges SET status = 'invalid', updated_at = $6
  WHERE $2 = 'valid' AND authz_id = (SELECT id FROM z) AND id <> $1 AND status = 'pending'),
o AS (
  UPDATE acme_orders SET status = CASE WHEN $2 = 'valid' THEN 'ready' ELSE 'invalid' END,
         error = CASE WHEN $2 = 'valid' THEN error ELSE $4::jsonb END, updated_at = $6
  WHERE id = $8 AND status = 'pending'
    AND ($2 <> 'valid' OR NOT EXISTS (SELECT 1 FROM acme_authorizations
                                      WHERE order_id = $8 AND id <> $7 AND status <> 'valid'))
  RETURNING status),
ev AS (
  {_AUDIT_INSERT}
  SELECT $9::text, $10::text, $11::text, $12::text, $13::text, $14::text, $15::jsonb, $16::timestamptz)
SELECT (SELECT status FROM o) AS order_status"""


async def lock_outcome(conn: AsyncConnection, challenge_id: str) -> Rec | None:
    """PostgreSQL, in the caller's driver-level transaction: the challenge, authorization and order locked."""
    record = await driver_call(conn, (await driver_connection(conn)).fetchrow(_PG_LOCK_OUTCOME, challenge_id))
    return dict(record) if record is not None else None


async def record_outcome(
    conn: AsyncConnection, locked: Rec, challenge_id: str, changes: Mapping[str, Any],
    event: Mapping[str, Any],
) -> str | None:
    """PostgreSQL, after `lock_outcome` in the same transaction: the challenge's outcome, its authorization (when
    pending; the other pending challenges of a valid one become invalid), the order (ready when every
    authorization is valid, invalid on a failure; only when pending) and the audit event, in one statement.
    Returns the order's new status, or None when it did not change."""
    raw = await driver_connection(conn)
    return await driver_call(conn, raw.fetchval(  # type: ignore[no-any-return]
        _PG_RECORD_OUTCOME, *_outcome_args(challenge_id, locked["authz_id"], locked["order_id"], changes, event)))


def _outcome_args(
    challenge_id: str, authz_id: str, order_id: str, changes: Mapping[str, Any], event: Mapping[str, Any],
) -> list[Any]:
    """$1-$16 of _PG_RECORD_SINGLE and _PG_RECORD_OUTCOME."""
    error, record = _driver_args(acme_challenges, ("error", "validation_record"), changes)
    return [challenge_id, changes["status"], changes["validated_at"], error, record, changes["updated_at"],
            authz_id, order_id, *_driver_args(audit_events, _AUDIT_COLUMNS, event)]


@asynccontextmanager
async def driver_transaction(conn: AsyncConnection) -> AsyncIterator[None]:
    """PostgreSQL: one transaction around statements sent with the driver (committed at the end, rolled back
    on an error). SQLAlchemy statements on the same connection join it when the connection is in autocommit
    mode (SQLAlchemy then opens no transaction of its own). Constraint violations become a ConflictError."""
    try:
        async with (await driver_connection(conn)).transaction():
            yield
    except IntegrityError as exc:
        raise ConflictError(describe_integrity_error(exc)) from exc


async def stale_processing_challenges(conn: AsyncConnection, before: datetime, limit: int) -> list[str]:
    c = acme_challenges.c
    result = await conn.execute(select(c.id).where(c.status == "processing", c.updated_at < before).limit(limit))
    return [r[0] for r in result]


async def set_other_challenges(conn: AsyncConnection, authz_id: str, keep_id: str, status: str, now: datetime) -> None:
    c = acme_challenges.c
    await conn.execute(update(acme_challenges).where(c.authz_id == authz_id, c.id != keep_id, c.status == "pending")
                       .values(status=status, updated_at=now))


# ---- finalize on PostgreSQL: the order locked with its authorizations, then one statement for the rest ----------
_PG_LOCK_ORDER = (f"SELECT {_columns('o', acme_orders)}, "
                  "(SELECT array_agg(z.id ORDER BY z.id) FROM acme_authorizations z WHERE z.order_id = o.id) "
                  "AS _authz_ids, "
                  "(SELECT array_agg(z.status ORDER BY z.id) FROM acme_authorizations z WHERE z.order_id = o.id) "
                  "AS _authz_statuses, "
                  "(SELECT array_agg(z.expires_at ORDER BY z.id) FROM acme_authorizations z "
                  "WHERE z.order_id = o.id) AS _authz_expires "
                  "FROM acme_orders o WHERE o.id = $1 FOR UPDATE OF o")


async def lock_order_with_authzs(conn: AsyncConnection, order_id: str) -> tuple[Rec | None, list[Rec]]:
    """PostgreSQL, in a driver-level transaction: the order locked, with its authorizations' (id, status,
    expires_at), in one statement."""
    record = await driver_call(conn, (await driver_connection(conn)).fetchrow(_PG_LOCK_ORDER, order_id))
    if record is None:
        return None, []
    order = {c.name: record[c.name] for c in acme_orders.c}
    authzs: list[Rec] = [{"id": i, "status": st, "expires_at": e} for i, st, e in zip(
        record["_authz_ids"] or (), record["_authz_statuses"] or (), record["_authz_expires"] or (), strict=True)]
    return order, authzs


_PG_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def _pg_type(column: Any) -> str:
    return str(column.type.dialect_impl(_PG_DIALECT).compile(dialect=_PG_DIALECT))


def _values_sql(table: Any, names: Sequence[str], first: int) -> str:
    """`(cols) VALUES ($first::type, ...)` for the named columns of a table."""
    types = {c.name: _pg_type(c) for c in table.c}
    cols = ", ".join(f'"{n}"' for n in names)
    return f"({cols}) VALUES (" + ", ".join(f"${first + i}::{types[n]}" for i, n in enumerate(names)) + ")"


_JSON_COLUMNS: dict[str, frozenset[str]] = {}


def _driver_args(table: Any, names: Sequence[str], values: Mapping[str, Any]) -> list[Any]:
    """Values as the driver takes them: JSON columns as text (SQLAlchemy's serializer does the same)."""
    json = _JSON_COLUMNS.get(table.name)
    if json is None:
        json = _JSON_COLUMNS[table.name] = frozenset(c.name for c in table.c if _pg_type(c) in ("JSONB", "JSON"))
    return [orjson.dumps(values[n]).decode() if n in json and values[n] is not None else values[n] for n in names]


_ISSUED_SQL: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}


async def store_issued(
    conn: AsyncConnection, certificate: Mapping[str, Any], version: Mapping[str, Any], event: Mapping[str, Any],
    order_id: str, order_changes: Mapping[str, Any],
) -> Rec:
    """PostgreSQL, in the driver-level transaction of `lock_order_with_authzs`: the managed certificate, its
    version, the `certificate_issued` audit event and the order's new state in one statement; returns the
    certificate row. A serial number the CA already used is a ConflictError naming the serial (retried)."""
    cert_names, version_names = tuple(certificate), tuple(version)
    sql = _ISSUED_SQL.get((cert_names, version_names))
    if sql is None:
        n_cert, n_version = len(cert_names), len(version_names)
        audit_first = 1 + n_cert + n_version
        order_first = audit_first + len(_AUDIT_COLUMNS)
        sql = _ISSUED_SQL[(cert_names, version_names)] = (
            f"WITH c AS (INSERT INTO managed_certificates {_values_sql(managed_certificates, cert_names, 1)} "
            f"RETURNING *), "
            f"v AS (INSERT INTO certificate_versions "
            f"{_values_sql(certificate_versions, version_names, 1 + n_cert)}), "
            f"e AS (INSERT INTO audit_events {_values_sql(audit_events, _AUDIT_COLUMNS, audit_first)}), "
            f"u AS (UPDATE acme_orders SET status = ${order_first}, certificate_id = ${order_first + 1}, "
            f"version_id = ${order_first + 2}, updated_at = ${order_first + 3}::timestamptz "
            f"WHERE id = ${order_first + 4}) "
            "SELECT * FROM c")
    args = [*_driver_args(managed_certificates, cert_names, certificate),
            *_driver_args(certificate_versions, version_names, version),
            *_driver_args(audit_events, _AUDIT_COLUMNS, event),
            order_changes["status"], order_changes["certificate_id"], order_changes["version_id"],
            order_changes["updated_at"], order_id]
    try:
        record = await driver_call(conn, (await driver_connection(conn)).fetchrow(sql, *args))
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "uq_versions_ca_serial":
            raise ConflictError(f"the serial number {version.get('serial_number')} is already used") from None
        raise ConflictError("the certificate conflicts with existing data") from None
    return dict(record)


# ---- certificates -----------------------------------------------------------------------------------
async def version_by_fingerprint(conn: AsyncConnection, fingerprint: str) -> Row | None:
    v = certificate_versions.c
    stmt = cached_statement(("acme_version_by_fp",), lambda: select(certificate_versions).where(
        v.fingerprint_sha256 == bindparam("f")))
    return (await conn.execute(stmt, {"f": fingerprint})).mappings().first()


async def version_with_owner(conn: Conn, version_id: str) -> Mapping[Any, Any] | None:
    """A version's chain and CA with the account of the order that produced it (NULL: not an ACME order)."""
    if _is_pg(conn):
        record = await _driver(conn, "fetchrow", _PG_VERSION_OWNER, version_id)
        return dict(record) if record is not None else None
    v, o = certificate_versions.c, acme_orders.c
    stmt = cached_statement(("acme_version_owner",), lambda: select(v.id, v.pem_chain, v.ca_id, o.account_id)
                            .select_from(certificate_versions.outerjoin(acme_orders, o.version_id == v.id))
                            .where(v.id == bindparam("v")).limit(1))
    found: Mapping[Any, Any] | None = (await conn.execute(stmt, {"v": version_id})).mappings().first()
    return found


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
