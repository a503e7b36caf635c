"""Managed certificates, their versions, target mappings and deployment jobs.

The list query is the hot path of the inventory (up to millions of rows, dashboards polling it),
so reads of certificate records are built here as one SQL statement per page and run on the
driver connection underneath SQLAlchemy:

- one round trip per page: `target_ids` come from a correlated sub-select (one index probe per
  row of the page inside the same statement), and no BEGIN/ROLLBACK pair is sent for a read;
- the statement text depends only on the shape of the request (which filters, sort, fields), so
  the driver's prepared-statement cache serves it after the first call;
- JSON columns are passed through as the database's own JSON text (wrapped for orjson), never
  parsed and re-encoded.

Every sort walks an index whose leading columns are the sort key (the `ix_certs_*` indexes in
schema.py). Keyset pages compare the whole sort key as a row value, `(key..., id) > ($1, $2)`,
which PostgreSQL and SQLite both answer with one index range scan. Writes use SQLAlchemy Core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.enums import CertificateStatus, JobType
from certctl.domain.errors import ValidationError
from certctl.store import rows
from certctl.store.rows import Row
from certctl.store.schema import (
    audit_events,
    certificate_list_counts,
    certificate_target_mappings,
    certificate_versions,
    deployment_targets,
    jobs,
    managed_certificates,
)

certs = managed_certificates
mappings = certificate_target_mappings

# Sort key per sortable column: the column, then tie-breakers so the order is total.
# `name` is unique, so it needs no tie-breaker. Low-cardinality columns fall back to age order.
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "created_at": ("created_at", "id"),
    "updated_at": ("updated_at", "id"),
    "expires_at": ("expires_at", "id"),
    "common_name": ("common_name", "id"),
    "name": ("name",),
    "status": ("status", "created_at", "id"),
    "environment": ("environment", "created_at", "id"),
}
_DATETIME_COLUMNS = frozenset(
    {"created_at", "updated_at", "expires_at", "last_renewal_at", "last_deployment_at", "revoked_at"}
)
_JSON_COLUMNS = frozenset({"sans", "tags"})
_NULLABLE_KEYS = frozenset({"expires_at"})
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # how UTCDateTime stores instants on SQLite (naive UTC text)
_STATUS = {s.value: s.value for s in CertificateStatus}


@dataclass(frozen=True)
class CertificateFilter:
    status: str | None = None
    environment: str | None = None
    owner_id: str | None = None
    team_id: str | None = None
    issuer_id: str | None = None
    agent_id: str | None = None
    profile_id: str | None = None
    expires_before: datetime | None = None
    expires_after: datetime | None = None
    created_after: datetime | None = None
    updated_after: datetime | None = None

    def key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class Sort:
    column: str = "created_at"
    descending: bool = False


@dataclass
class CertificateRows:
    """A page of certificates as wire dicts (only the requested fields), plus the sort key of its
    last row when another page follows (for the next cursor)."""

    items: list[dict[str, Any]]
    last_key: list[Any] | None


class _Statement:
    """SQL text and its positional parameters for one back end."""

    def __init__(self, dialect: str) -> None:
        self.pg = dialect == "postgresql"
        self.params: list[Any] = []

    def bind(self, value: Any) -> str:
        if isinstance(value, datetime) and not self.pg:
            value = value.astimezone(UTC).strftime(_SQLITE_TIME)
        self.params.append(value)
        return self.placeholder(len(self.params))

    def placeholder(self, number: int) -> str:
        return f"${number}" if self.pg else "?"

    def targets_column(self) -> str:
        if self.pg:
            return ("ARRAY(SELECT m.target_id FROM certificate_target_mappings m "
                    "WHERE m.certificate_id = c.id ORDER BY m.target_id)")
        return ("(SELECT json_group_array(t.target_id) FROM (SELECT m.target_id FROM certificate_target_mappings m "
                "WHERE m.certificate_id = c.id ORDER BY m.target_id) t)")

    def column(self, name: str) -> str:
        if name == "target_ids":
            return f"{self.targets_column()} AS target_ids"
        if name in _JSON_COLUMNS and self.pg:
            return f"c.{name}::text AS {name}"
        return f"c.{name}"


def _where(stmt: _Statement, flt: CertificateFilter) -> list[str]:
    where: list[str] = []
    for column, value in (
        ("status", flt.status),
        ("environment", flt.environment),
        ("owner_id", flt.owner_id),
        ("team_id", flt.team_id),
        ("issuer_id", flt.issuer_id),
        ("certificate_profile_id", flt.profile_id),
    ):
        if value is not None:
            where.append(f"c.{column} = {stmt.bind(value)}")
    for column, op, moment in (
        ("expires_at", "<", flt.expires_before),
        ("expires_at", ">", flt.expires_after),
        ("created_at", ">", flt.created_after),
        ("updated_at", ">", flt.updated_after),
    ):
        if moment is not None:
            where.append(f"c.{column} {op} {stmt.bind(moment)}")
    if flt.agent_id is not None:
        where.append(
            "c.id IN (SELECT m.certificate_id FROM certificate_target_mappings m "
            "JOIN deployment_targets t ON t.id = m.target_id "
            f"WHERE t.agent_id = {stmt.bind(flt.agent_id)})"
        )
    return where


def _order(sort: Sort) -> str:
    parts = []
    for name in SORT_KEYS[sort.column]:
        direction = "DESC" if sort.descending else "ASC"
        if name in _NULLABLE_KEYS:
            # PostgreSQL's defaults (ASC NULLS LAST / DESC NULLS FIRST) are exact reverses, so one
            # index serves both directions; spelled out so SQLite orders NULLs the same way.
            direction += " NULLS FIRST" if sort.descending else " NULLS LAST"
        parts.append(f"c.{name} {direction}")
    return ", ".join(parts)


def _after(stmt: _Statement, sort: Sort, values: Sequence[Any]) -> str:
    """Rows strictly after `values` in the (total) sort order, as one row-value comparison."""
    names = SORT_KEYS[sort.column]
    left = ", ".join(f"c.{n}" for n in names)
    right = ", ".join(stmt.bind(v) for v in values)
    op = "<" if sort.descending else ">"
    return f"({left}) {op} ({right})" if len(names) > 1 else f"{left} {op} {right}"


def _converter(name: str, pg: bool, raw_json: bool) -> Callable[[Any], Any] | None:
    if name in _JSON_COLUMNS or (name == "target_ids" and not pg):
        return orjson.Fragment if raw_json else orjson.loads
    if name == "status":
        return _status
    if name in _DATETIME_COLUMNS and not pg:
        return _sqlite_time
    return None


def _status(value: str) -> str:
    return _STATUS.get(value) or CertificateStatus.parse(value).value


def _sqlite_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


async def _fetch(conn: AsyncConnection, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
    """Run one statement on the driver connection: no SQLAlchemy compile, no implicit BEGIN."""
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    if conn.dialect.name == "postgresql":
        return list(await raw.fetch(sql, *params))
    cursor = await raw.execute(sql, params)
    try:
        return list(await cursor.fetchall())
    finally:
        await cursor.close()


async def _select(
    conn: AsyncConnection,
    flt: CertificateFilter,
    sort: Sort,
    wanted: Sequence[str],
    *,
    extra_where: Sequence[Callable[[_Statement], str]] = (),
    limit: int,
    offset: int = 0,
    raw_json: bool = True,
) -> tuple[list[dict[str, Any]], list[Sequence[Any]], list[str]]:
    stmt = _Statement(conn.dialect.name)
    key_columns = [k for k in SORT_KEYS[sort.column] if k not in wanted]
    names = [*wanted, *key_columns]
    where = _where(stmt, flt) + [build(stmt) for build in extra_where]
    page = "FROM managed_certificates c"
    if where:
        page += " WHERE " + " AND ".join(where)
    page += f" ORDER BY {_order(sort)} LIMIT {stmt.bind(limit)}"
    if offset:
        page += f" OFFSET {stmt.bind(offset)}"
    if "target_ids" in names:
        # Limit first, then look up target_ids for the page's rows only: with OFFSET, a sub-select in
        # the same SELECT list would also run for every skipped row.
        plain = ", ".join(f"c.{n}" for n in _base_columns(names, sort))
        columns = ", ".join(stmt.column(n) for n in names)
        sql = f"SELECT {columns} FROM (SELECT {plain} {page}) c ORDER BY {_order(sort)}"
    else:
        sql = f"SELECT {', '.join(stmt.column(n) for n in names)} {page}"
    records = await _fetch(conn, sql, stmt.params)
    # Only the columns that need it are touched; the rest go from the driver's row as they are.
    converters = [(n, c) for n in wanted if (c := _converter(n, stmt.pg, raw_json)) is not None]
    items = []
    for record in records:
        item = dict(record) if stmt.pg else dict(zip(names, record, strict=True))
        for name, convert in converters:
            value = item[name]
            if value is not None:
                item[name] = convert(value)
        for name in key_columns:
            del item[name]
        items.append(item)
    return items, records, names


def _base_columns(names: Sequence[str], sort: Sort) -> list[str]:
    """Table columns the outer query of a limited page needs: the id, the asked-for ones, the sort keys."""
    wanted = ["id", *(n for n in names if n != "target_ids"), *SORT_KEYS[sort.column]]
    return list(dict.fromkeys(wanted))


def _key_of(record: Sequence[Any], names: list[str], sort: Sort, pg: bool) -> list[Any]:
    values = []
    for key in SORT_KEYS[sort.column]:
        value = record[names.index(key)]
        if key in _DATETIME_COLUMNS and not pg:
            value = _sqlite_time(value)
        values.append(value.isoformat() if isinstance(value, datetime) else value)
    return values


async def list_page(
    conn: AsyncConnection, flt: CertificateFilter, sort: Sort, wanted: Sequence[str], *, limit: int, offset: int
) -> list[dict[str, Any]]:
    items, _, _ = await _select(conn, flt, sort, wanted, limit=limit, offset=offset)
    return items


# Filters with an index led by their column and followed by (created_at, id): a background recount under one of
# them (or none) walks that index in steps of COUNT_STEP rows.
_STEPPED_FILTERS = frozenset({"status", "environment", "owner_id", "team_id", "issuer_id", "profile_id"})
COUNT_STEP = 20_000
COUNT_STEP_PAUSE = 0.01  # seconds between steps: a step costs ~2.5 ms, so the count takes at most ~1/5 of a core


async def count(conn: AsyncConnection, flt: CertificateFilter, *, background: bool = False) -> int:
    """The number of certificates matching `flt`.

    A background recount (see CertificateService._count) is a figure nobody waits for, so it must not take a core
    for long: counting 700,000 rows in one statement takes one for ~100 ms (every core, with parallel workers), and
    the requests served meanwhile pay for it in their tail latency. So it runs without parallel workers, and under
    no filter or one equality filter it is a series of short statements, each skipping COUNT_STEP rows along the
    filter's index (a few ms each), with a pause after each: one statement, or steps sent back to back, would keep
    a core busy for the whole count, and on a small machine the requests served meanwhile would queue.
    """
    if background and conn.dialect.name == "postgresql":
        await conn.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
    after: tuple[Any, Any] | None = None
    counted = 0
    given = {f.name for f in fields(flt) if getattr(flt, f.name) is not None}
    if background and given <= _STEPPED_FILTERS and len(given) <= 1:
        while True:
            stmt = _Statement(conn.dialect.name)
            sql = ("SELECT c.created_at, c.id FROM managed_certificates c" + _count_where(stmt, flt, after)
                   + f" ORDER BY c.created_at, c.id LIMIT 1 OFFSET {COUNT_STEP - 1}")
            rows = await _fetch(conn, sql, stmt.params)
            if not rows:
                break
            counted += COUNT_STEP
            after = (rows[0][0], rows[0][1])
            await asyncio.sleep(COUNT_STEP_PAUSE)
    stmt = _Statement(conn.dialect.name)
    sql = "SELECT count(*) FROM managed_certificates c" + _count_where(stmt, flt, after)
    return counted + int((await _fetch(conn, sql, stmt.params))[0][0])


def count_key(flt: CertificateFilter) -> str:
    """The filter as the key of its shared total (certificate_list_counts)."""
    return orjson.dumps([None if v is None else str(v) for v in flt.key()]).decode()


async def shared_count(conn: AsyncConnection, key: str) -> tuple[int, float] | None:
    """(total, counted_at epoch seconds) of a total some server process stored, if any."""
    _l = certificate_list_counts.c
    row = (await conn.execute(select(_l.total, _l.counted_at).where(_l.key == key))).first()
    return None if row is None else (int(row[0]), float(row[1]))


async def store_shared_count(conn: AsyncConnection, key: str, total: int, counted_at: float) -> None:
    """Keep the newest figure for `key` (a slower count that finished later does not replace a newer one)."""
    _l = certificate_list_counts.c
    insert_ = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert_(certificate_list_counts).values(key=key, total=total, counted_at=counted_at)
    await conn.execute(stmt.on_conflict_do_update(
        index_elements=[_l.key], set_={"total": stmt.excluded.total, "counted_at": stmt.excluded.counted_at},
        where=_l.counted_at < stmt.excluded.counted_at))


async def purge_shared_counts(conn: AsyncConnection, before: float) -> int:
    """Forget shared totals counted before `before` (epoch seconds): filters nobody lists any more."""
    _l = certificate_list_counts.c
    result = await conn.execute(delete(certificate_list_counts).where(_l.counted_at < before))
    return int(result.rowcount or 0)


def _count_where(stmt: _Statement, flt: CertificateFilter, after: tuple[Any, Any] | None) -> str:
    where = _where(stmt, flt)
    if after is not None:  # as read back from the database, so bound as it is
        stmt.params.extend(after)
        where.append(f"(c.created_at, c.id) > ({stmt.placeholder(len(stmt.params) - 1)}, "
                     f"{stmt.placeholder(len(stmt.params))})")
    return " WHERE " + " AND ".join(where) if where else ""


async def get_wire(conn: AsyncConnection, certificate_id: str, wanted: Sequence[str]) -> dict[str, Any] | None:
    """One certificate with its target_ids (JSON columns parsed), in one statement."""
    items, _, _ = await _select(
        conn, CertificateFilter(), Sort(), wanted,
        extra_where=[lambda stmt: f"c.id = {stmt.bind(certificate_id)}"], limit=1, raw_json=False,
    )
    return items[0] if items else None


def _parse_keyset(sort: Sort, values: Sequence[Any]) -> list[Any]:
    names = SORT_KEYS[sort.column]
    if len(values) != len(names):
        raise ValidationError("cursor does not belong to this sort order")
    parsed: list[Any] = []
    for name, value in zip(names, values, strict=True):
        if value is None and name in _NULLABLE_KEYS:
            parsed.append(None)
        elif not isinstance(value, str):
            raise ValidationError("cursor is malformed")
        elif name in _DATETIME_COLUMNS:
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                raise ValidationError("cursor is malformed") from None
            parsed.append(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
        else:
            parsed.append(value)
    return parsed


async def list_keyset(
    conn: AsyncConnection,
    flt: CertificateFilter,
    sort: Sort,
    wanted: Sequence[str],
    *,
    after: Sequence[Any] | None,
    limit: int,
) -> tuple[CertificateRows, bool]:
    """One keyset page of up to `limit` rows, and whether more follow.

    A nullable sort key splits the order into a non-NULL part and a NULL part (NULLs last
    ascending, first descending); each part is a plain index range, walked in turn, so a second
    statement only runs on the page where the parts meet.
    """
    key = _parse_keyset(sort, after) if after is not None else None
    parts = _keyset_parts(sort, key)
    want = limit + 1  # one row more than asked tells whether another page exists, without a count
    items: list[dict[str, Any]] = []
    tail: list[tuple[Sequence[Any], list[str]]] = []
    for extra in parts:
        found, records, names = await _select(conn, flt, sort, wanted, extra_where=extra, limit=want - len(items))
        items.extend(found)
        tail.extend((record, names) for record in records)
        if len(items) >= want:
            break
    more = len(items) > limit
    last_key = None
    if more:
        record, names = tail[limit - 1]
        last_key = _key_of(record, names, sort, conn.dialect.name == "postgresql")
    return CertificateRows(items=items[:limit], last_key=last_key), more


_Clause = Callable[[_Statement], str]


def _keyset_parts(sort: Sort, key: list[Any] | None) -> list[list[_Clause]]:
    """The WHERE clauses of each index range to walk, in order, after cursor position `key`."""
    if sort.column not in _NULLABLE_KEYS:
        return [[] if key is None else [lambda s: _after(s, sort, key)]]
    lead = f"c.{SORT_KEYS[sort.column][0]}"

    def is_null(_: _Statement) -> str:
        return f"{lead} IS NULL"

    def not_null(_: _Statement) -> str:
        return f"{lead} IS NOT NULL"

    if key is None:
        return [[is_null], [not_null]] if sort.descending else [[not_null], [is_null]]
    last_id = key[-1]

    def id_after(s: _Statement) -> str:
        return f"c.id {'<' if sort.descending else '>'} {s.bind(last_id)}"

    def key_after(s: _Statement) -> str:
        return _after(s, sort, key)

    in_null_part = key[0] is None
    if sort.descending:  # NULL rows first (by id desc), then the others by key desc
        return [[is_null, id_after], [not_null]] if in_null_part else [[not_null, key_after]]
    return [[is_null, id_after]] if in_null_part else [[not_null, key_after], [is_null]]


async def target_ids_for(conn: AsyncConnection, certificate_ids: Sequence[str]) -> dict[str, list[str]]:
    """Mapped targets of some certificates in one query."""
    if not certificate_ids:
        return {}
    stmt = (
        select(mappings.c.certificate_id, mappings.c.target_id)
        .where(mappings.c.certificate_id.in_(certificate_ids))
        .order_by(mappings.c.certificate_id, mappings.c.target_id)
    )
    result: dict[str, list[str]] = {}
    for cert_id, target_id in (await conn.execute(stmt)).all():
        result.setdefault(cert_id, []).append(target_id)
    return result


async def get(conn: AsyncConnection, certificate_id: str, *, for_update: bool = False) -> Row | None:
    stmt = select(certs).where(certs.c.id == certificate_id)
    if for_update and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return (await conn.execute(stmt)).mappings().first()


async def exists(conn: AsyncConnection, certificate_id: str) -> bool:
    stmt = select(certs.c.id).where(certs.c.id == certificate_id)
    return (await conn.execute(stmt)).first() is not None


async def id_or_name_taken(conn: AsyncConnection, certificate_id: str, name: str) -> tuple[bool, bool]:
    """Whether a certificate already has this id, and whether one already has this name."""
    stmt = rows.cached_statement(("id_or_name_taken",), lambda: select(certs.c.id, certs.c.name).where(
        (certs.c.id == bindparam("certificate_id")) | (certs.c.name == bindparam("name"))))
    found = (await conn.execute(stmt, {"certificate_id": certificate_id, "name": name})).all()
    return any(r.id == certificate_id for r in found), any(r.name == name for r in found)


async def name_owner(conn: AsyncConnection, name: str) -> str | None:
    """The id of the certificate called `name`, if any."""
    stmt = select(certs.c.id).where(certs.c.name == name)
    return (await conn.execute(stmt)).scalar_one_or_none()


async def insert_certificate(conn: AsyncConnection, values: Mapping[str, Any]) -> Row:
    """Insert one certificate and return the stored row (server defaults included), in one round trip."""
    # One statement per column set (the create path always sends the same set), not one per call.
    columns = tuple(sorted(values))
    stmt = rows.cached_statement(("insert_certificate", columns), lambda: insert(certs).values(
        {c: bindparam(f"v_{c}", type_=certs.c[c].type) for c in columns}).returning(*certs.c))
    result = await conn.execute(stmt, {f"v_{c}": values[c] for c in columns})
    return result.mappings().one()


async def update_certificate(conn: AsyncConnection, certificate_id: str, values: Mapping[str, Any]) -> bool:
    result = await conn.execute(update(certs).where(certs.c.id == certificate_id).values(**values))
    return result.rowcount > 0


async def unknown_targets(conn: AsyncConnection, target_ids: Sequence[str]) -> list[str]:
    """Of `target_ids`, those that do not exist or are retired."""
    if not target_ids:
        return []
    stmt = select(deployment_targets.c.id).where(
        deployment_targets.c.id.in_(target_ids), deployment_targets.c.retired_at.is_(None)
    )
    usable = set((await conn.execute(stmt)).scalars().all())
    return [t for t in target_ids if t not in usable]


async def replace_targets(
    conn: AsyncConnection, certificate_id: str, target_ids: Sequence[str], at: datetime, *, new: bool = False
) -> None:
    """Make `target_ids` the certificate's mapping set (`new`: it has none yet, skip the delete)."""
    if not new:
        await conn.execute(delete(mappings).where(mappings.c.certificate_id == certificate_id))
    unique_ids = list(dict.fromkeys(target_ids))
    if unique_ids:
        await conn.execute(
            insert(mappings),
            [{"certificate_id": certificate_id, "target_id": t, "created_at": at} for t in unique_ids],
        )


# ---- versions ---------------------------------------------------------------------------------

async def insert_version(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    """Append one issued version (rows are never changed afterwards)."""
    await conn.execute(insert(certificate_versions).values(**values))


async def latest_version(conn: AsyncConnection, certificate_id: str) -> Row | None:
    v = certificate_versions.c
    stmt = (
        select(certificate_versions)
        .where(v.certificate_id == certificate_id)
        .order_by(v.created_at.desc(), v.id.desc())
        .limit(1)
    )
    return (await conn.execute(stmt)).mappings().first()


async def list_versions(
    conn: AsyncConnection, certificate_id: str, *, limit: int, offset: int
) -> tuple[list[Row], int]:
    v = certificate_versions.c
    stmt = (
        select(certificate_versions)
        .where(v.certificate_id == certificate_id)
        .order_by(v.created_at.desc(), v.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows = list((await conn.execute(stmt)).mappings().all())
    if offset == 0 and len(rows) < limit:
        return rows, len(rows)
    total = await conn.execute(select(func.count()).select_from(certificate_versions).where(v.certificate_id
                                                                                             == certificate_id))
    return rows, int(total.scalar_one())


# ---- deployments ------------------------------------------------------------------------------

async def list_deployment_jobs(
    conn: AsyncConnection, certificate_id: str, *, limit: int, offset: int
) -> tuple[list[Row], int]:
    j = jobs.c
    where = (j.certificate_id == certificate_id, j.type == JobType.DEPLOYMENT.value)
    stmt = select(jobs).where(*where).order_by(j.created_at.desc(), j.id.desc()).limit(limit).offset(offset)
    rows = list((await conn.execute(stmt)).mappings().all())
    if offset == 0 and len(rows) < limit:
        return rows, len(rows)
    total = await conn.execute(select(func.count()).select_from(jobs).where(*where))
    return rows, int(total.scalar_one())


# ---- export rate limit ------------------------------------------------------------------------

async def actor_events_since(
    conn: AsyncConnection, actor: str, actions: Sequence[str], since: datetime
) -> tuple[int, datetime | None]:
    """How many of `actions` `actor` performed since `since`, and when the oldest of them was.

    Export limits are counted from the audit trail itself, so they hold across restarts and replicas.
    """
    a = audit_events.c
    stmt = select(func.count(), func.min(a.timestamp)).where(
        a.actor == actor, a.timestamp >= since, or_(*(a.action == act for act in actions))
    )
    row = (await conn.execute(stmt)).one()
    oldest = row[1]
    if isinstance(oldest, str):  # SQLite returns the aggregate without the column's type
        oldest = datetime.fromisoformat(oldest)
    return int(row[0]), oldest
