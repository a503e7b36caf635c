"""Managed certificates, their versions, target mappings and deployment jobs.

The list query is the hot path of the inventory (tens of thousands of certificates, dashboards
polling it): filters, sort and both pagination modes are done in SQL, and every sort walks an
index whose leading columns are the sort key (see the `ix_certs_*` indexes in schema.py).
Keyset ("cursor") pages compare the whole sort key as a row value, `(key..., id) > (:v..., :id)`,
which PostgreSQL and SQLite both answer with one index range scan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.enums import JobType
from certctl.domain.errors import ValidationError
from certctl.store.rows import Row
from certctl.store.schema import (
    audit_events,
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
_DATETIME_KEYS = frozenset({"created_at", "updated_at", "expires_at"})
_NULLABLE_KEYS = frozenset({"expires_at"})
# Columns every list query must read besides the requested ones (the keyset needs its key).
_ALWAYS = ("id",)


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
        return tuple(getattr(self, name) for name in self.__dataclass_fields__)


@dataclass(frozen=True)
class Sort:
    column: str = "created_at"
    descending: bool = False


def _where(flt: CertificateFilter) -> list[ColumnElement[bool]]:
    c = certs.c
    where: list[ColumnElement[bool]] = []
    for column, value in (
        (c.status, flt.status),
        (c.environment, flt.environment),
        (c.owner_id, flt.owner_id),
        (c.team_id, flt.team_id),
        (c.issuer_id, flt.issuer_id),
        (c.certificate_profile_id, flt.profile_id),
    ):
        if value is not None:
            where.append(column == value)
    if flt.expires_before is not None:
        where.append(c.expires_at < flt.expires_before)
    if flt.expires_after is not None:
        where.append(c.expires_at > flt.expires_after)
    if flt.created_after is not None:
        where.append(c.created_at > flt.created_after)
    if flt.updated_after is not None:
        where.append(c.updated_at > flt.updated_after)
    if flt.agent_id is not None:
        mapped = (
            select(mappings.c.certificate_id)
            .join(deployment_targets, deployment_targets.c.id == mappings.c.target_id)
            .where(deployment_targets.c.agent_id == flt.agent_id)
        )
        where.append(c.id.in_(mapped))
    return where


def _order(sort: Sort) -> list[Any]:
    columns = [certs.c[name] for name in SORT_KEYS[sort.column]]
    if sort.descending:
        # PostgreSQL's default (DESC NULLS FIRST) is the exact reverse of ASC NULLS LAST, so one
        # index serves both directions; spelled out so SQLite orders NULLs the same way.
        return [col.desc().nulls_first() if col.name in _NULLABLE_KEYS else col.desc() for col in columns]
    return [col.asc().nulls_last() if col.name in _NULLABLE_KEYS else col.asc() for col in columns]


def _columns(fields: Sequence[str], sort: Sort | None) -> list[Any]:
    wanted = list(dict.fromkeys([*_ALWAYS, *fields, *(SORT_KEYS[sort.column] if sort else ())]))
    return [certs.c[name] for name in wanted if name != "target_ids"]


async def list_page(
    conn: AsyncConnection,
    flt: CertificateFilter,
    sort: Sort,
    fields: Sequence[str],
    *,
    limit: int,
    offset: int,
) -> list[Row]:
    stmt = select(*_columns(fields, None)).where(*_where(flt)).order_by(*_order(sort)).limit(limit).offset(offset)
    return list((await conn.execute(stmt)).mappings().all())


async def count(conn: AsyncConnection, flt: CertificateFilter) -> int:
    stmt = select(func.count()).select_from(certs).where(*_where(flt))
    return int((await conn.execute(stmt)).scalar_one())


def keyset_of(row: Row, sort: Sort) -> list[str | None]:
    """The sort-key values of `row`, as JSON-safe strings, for a cursor."""
    values: list[str | None] = []
    for name in SORT_KEYS[sort.column]:
        value = row[name]
        values.append(value.isoformat() if isinstance(value, datetime) else value)
    return values


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
        elif name in _DATETIME_KEYS:
            try:
                parsed.append(datetime.fromisoformat(value))
            except ValueError:
                raise ValidationError("cursor is malformed") from None
        else:
            parsed.append(value)
    return parsed


def _after(sort: Sort, values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after `values` in the (total) sort order, as one row-value comparison."""
    columns = [certs.c[name] for name in SORT_KEYS[sort.column]]
    left, right = tuple_(*columns), tuple_(*values)
    return left < right if sort.descending else left > right


async def list_keyset(
    conn: AsyncConnection,
    flt: CertificateFilter,
    sort: Sort,
    fields: Sequence[str],
    *,
    after: Sequence[Any] | None,
    limit: int,
) -> list[Row]:
    """One keyset page. A nullable sort key splits the order into a non-NULL part and a NULL part
    (NULLs last ascending, first descending); each part is a plain index range, walked in turn."""
    where = _where(flt)
    order = _order(sort)
    columns = _columns(fields, sort)
    lead = certs.c[SORT_KEYS[sort.column][0]]
    nullable = sort.column in _NULLABLE_KEYS
    parsed = _parse_keyset(sort, after) if after is not None else None

    if not nullable:
        cond = [_after(sort, parsed)] if parsed is not None else []
        stmt = select(*columns).where(*where, *cond).order_by(*order).limit(limit)
        return list((await conn.execute(stmt)).mappings().all())

    id_col = certs.c.id
    in_null_part = parsed is not None and parsed[0] is None
    null_first = sort.descending
    parts: list[ColumnElement[bool]] = []
    if null_first:
        # 1) NULL rows by id desc, 2) non-NULL rows by key desc.
        if parsed is None:
            parts = [lead.is_(None), lead.is_not(None)]
        elif in_null_part:
            parts = [and_(lead.is_(None), id_col < parsed[1]), lead.is_not(None)]
        else:
            parts = [and_(lead.is_not(None), _after(sort, parsed))]
    elif parsed is None:
        parts = [lead.is_not(None), lead.is_(None)]
    elif in_null_part:
        parts = [and_(lead.is_(None), id_col > parsed[1])]
    else:
        parts = [and_(lead.is_not(None), _after(sort, parsed)), lead.is_(None)]

    found: list[Row] = []
    for part in parts:
        stmt = select(*columns).where(*where, part).order_by(*order).limit(limit - len(found))
        found.extend((await conn.execute(stmt)).mappings().all())
        if len(found) >= limit:
            break
    return found


async def target_ids_for(conn: AsyncConnection, certificate_ids: Sequence[str]) -> dict[str, list[str]]:
    """Mapped targets of a whole page of certificates in one query."""
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


async def name_owner(conn: AsyncConnection, name: str) -> str | None:
    """The id of the certificate called `name`, if any."""
    stmt = select(certs.c.id).where(certs.c.name == name)
    return (await conn.execute(stmt)).scalar_one_or_none()


async def insert_certificate(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await conn.execute(insert(certs).values(**values))


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
    conn: AsyncConnection, certificate_id: str, target_ids: Sequence[str], at: datetime
) -> None:
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
