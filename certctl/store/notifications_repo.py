"""Notification rows: listing, the dedup insert, delivery claims (one sender per row), the outbox cursor and
what the expiry scan and the digest read.

Claims: PostgreSQL takes due rows `FOR UPDATE SKIP LOCKED`, so replicas claim disjoint rows without waiting;
SQLite serializes writers (BEGIN IMMEDIATE), so select-then-update in one transaction is already exclusive. A
claim is a lease (`claimed_by`, `claim_expires_at`): the row stays `pending`/`failed` while it is sent, and a
sender that died leaves it to be claimed again once the lease has passed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store.rows import Row, get_row, page_rows
from certctl.store.schema import (
    audit_events,
    jobs,
    managed_certificates,
    notification_cursors,
    notification_events,
    owners,
    renewal_policies,
)

_n = notification_events.c
_a = audit_events.c
_c = managed_certificates.c


async def page(
    conn: AsyncConnection, *, limit: int, offset: int, status: str | None = None, certificate_id: str | None = None,
    channel: str | None = None, type_: str | None = None,
) -> tuple[list[Row], int]:
    where = [column == value for column, value in (
        (_n.status, status), (_n.certificate_id, certificate_id), (_n.channel, channel), (_n.type, type_),
    ) if value is not None]
    return await page_rows(conn, notification_events, *where, limit=limit, offset=offset,
                           order_by=(_n.created_at.desc(), _n.id.desc()))


async def get(conn: AsyncConnection, notification_id: str, *, for_update: bool = False) -> Row | None:
    if not for_update:
        return await get_row(conn, notification_events, notification_id)
    stmt = select(notification_events).where(_n.id == notification_id)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return (await conn.execute(stmt)).mappings().first()


async def update_row(conn: AsyncConnection, notification_id: str, values: Mapping[str, Any]) -> None:
    await conn.execute(update(notification_events).where(_n.id == notification_id).values(**values))


async def insert_new(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Insert the rows whose (dedup_key, channel) is not there yet; the ids of those inserted."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    inserted: list[str] = []
    for row in rows:
        stmt = dialect.insert(notification_events).values(**row).on_conflict_do_nothing(
            index_elements=["dedup_key", "channel"])
        result = await conn.execute(stmt)
        if result.rowcount:
            inserted.append(str(row["id"]))
    return inserted


async def existing_keys(conn: AsyncConnection, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (dedup_key, channel) pairs already have a row."""
    wanted = list(keys)
    if not wanted:
        return set()
    stmt = select(_n.dedup_key, _n.channel).where(tuple_(_n.dedup_key, _n.channel).in_(wanted))
    return {(str(k), str(c)) for k, c in (await conn.execute(stmt)).all()}


# ---- delivery -------------------------------------------------------------------------------------------------

async def claim_due(
    conn: AsyncConnection, *, retries: bool, now: datetime, limit: int, holder: str, lease_until: datetime,
) -> list[Row]:
    """Lease up to `limit` due rows to `holder`: new ones (`pending`), or with `retries` failed ones whose
    next_retry_at has come. Returns them as they were."""
    due = and_(_n.status == "failed", _n.next_retry_at.is_not(None), _n.next_retry_at <= now) if retries \
        else (_n.status == "pending")
    free = or_(_n.claim_expires_at.is_(None), _n.claim_expires_at < now)
    stmt = select(notification_events).where(due, free).order_by(_n.created_at, _n.id).limit(limit)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    rows = list((await conn.execute(stmt)).mappings())
    if rows:
        await conn.execute(
            update(notification_events).where(_n.id.in_([r["id"] for r in rows]))
            .values(claimed_by=holder, claim_expires_at=lease_until)
        )
    return rows


async def finish(conn: AsyncConnection, notification_id: str, holder: str, values: Mapping[str, Any]) -> bool:
    """Record a delivery outcome if `holder` still holds the row's lease (else someone else took it over)."""
    result = await conn.execute(
        update(notification_events)
        .where(_n.id == notification_id, _n.claimed_by == holder, _n.status.in_(("pending", "failed")))
        .values(**values, claimed_by=None, claim_expires_at=None)
    )
    return bool(result.rowcount)


# ---- the audit outbox -----------------------------------------------------------------------------------------

async def get_cursor(conn: AsyncConnection, name: str, *, for_update: bool = False) -> Row | None:
    stmt = select(notification_cursors).where(notification_cursors.c.name == name)
    if for_update and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return (await conn.execute(stmt)).mappings().first()


async def set_cursor(conn: AsyncConnection, name: str, timestamp: datetime, event_id: str, *, exists: bool) -> None:
    c = notification_cursors.c
    if exists:
        await conn.execute(update(notification_cursors).where(c.name == name)
                           .values(timestamp=timestamp, event_id=event_id))
    else:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        await conn.execute(dialect.insert(notification_cursors).values(name=name, timestamp=timestamp,
                                                                       event_id=event_id)
                           .on_conflict_do_nothing(index_elements=["name"]))


async def audit_events_since(
    conn: AsyncConnection, since: datetime, actions: Sequence[str], limit: int,
    after: tuple[datetime, str] | None = None,
) -> list[Row]:
    """Events with the given actions at or after `since` (and after the (timestamp, id) `after`, the keyset of
    the page before), oldest first (ix_audit_action_timestamp: only events of those actions are read)."""
    where = [_a.timestamp >= since, _a.action.in_(actions)]
    if after is not None:
        where.append(or_(_a.timestamp > after[0], and_(_a.timestamp == after[0], _a.id > after[1])))
    stmt = select(audit_events).where(*where).order_by(_a.timestamp, _a.id).limit(limit)
    return list((await conn.execute(stmt)).mappings())


async def certificates_with_owners(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, Row]:
    """id -> the certificate's name, common name, expiry and its owner's id and email."""
    wanted = list(set(ids))
    if not wanted:
        return {}
    stmt = (
        select(_c.id, _c.name, _c.common_name, _c.expires_at, _c.status, _c.owner_id,
               owners.c.email.label("owner_email"))
        .select_from(managed_certificates.outerjoin(owners, owners.c.id == _c.owner_id))
        .where(_c.id.in_(wanted))
    )
    return {str(r["id"]): r for r in (await conn.execute(stmt)).mappings()}


# ---- expiry scan and digest -----------------------------------------------------------------------------------

async def expiring_certificates(
    conn: AsyncConnection, until: datetime, *, after: tuple[datetime, str] | None = None, limit: int = 500,
) -> list[Row]:
    """Live certificates (not Archived or Revoked) expiring before `until`, with their policy's alert settings
    and their owner's email: `limit` of them in (expires_at, id) order, after the keyset `after`."""
    rp = renewal_policies.c
    stmt = (
        select(_c.id, _c.name, _c.common_name, _c.expires_at, _c.status, _c.owner_id,
               owners.c.email.label("owner_email"), rp.alert_thresholds_days, rp.alert_channels,
               rp.alert_severity_map)
        .select_from(managed_certificates
                     .join(renewal_policies, rp.id == _c.renewal_policy_id)
                     .outerjoin(owners, owners.c.id == _c.owner_id))
        .where(_c.expires_at.is_not(None), _c.expires_at < until, _c.status.not_in(("Archived", "Revoked")))
        .order_by(_c.expires_at, _c.id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(or_(_c.expires_at > after[0], and_(_c.expires_at == after[0], _c.id > after[1])))
    return list((await conn.execute(stmt)).mappings())


async def largest_threshold(conn: AsyncConnection) -> int:
    """The largest alert threshold of any renewal policy (the expiry scan's horizon)."""
    largest = 0
    for (thresholds,) in (await conn.execute(select(renewal_policies.c.alert_thresholds_days))).all():
        for value in thresholds or []:
            if isinstance(value, int):
                largest = max(largest, value)
    return largest


async def owner_emails(conn: AsyncConnection) -> list[str]:
    stmt = select(owners.c.email).where(owners.c.email != "").distinct().order_by(owners.c.email)
    return [str(e) for (e,) in (await conn.execute(stmt)).all()]


async def failed_jobs_since(conn: AsyncConnection, since: datetime) -> int:
    stmt = select(func.count()).select_from(jobs).where(jobs.c.status == "Failed", jobs.c.updated_at >= since)
    return int((await conn.execute(stmt)).scalar_one())
