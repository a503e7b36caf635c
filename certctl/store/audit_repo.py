"""Audit events: insert and query only. The database rejects UPDATE and DELETE on this table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store.rows import Row, get_row, insert_many, page_rows
from certctl.store.schema import audit_events

_COLUMNS = ("id", "actor", "actor_type", "action", "resource_type", "resource_id", "details", "timestamp")
_COPY_MIN_ROWS = 10


async def add_events(conn: AsyncConnection, events: Sequence[Mapping[str, Any]]) -> None:
    if conn.dialect.name == "postgresql" and len(events) >= _COPY_MIN_ROWS:
        # The per-request trail arrives in batches of hundreds: binary COPY costs a fraction of INSERTs.
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        records = [
            tuple(orjson.dumps(e[c]).decode() if c == "details" else e[c] for c in _COLUMNS) for e in events
        ]
        await raw.copy_records_to_table("audit_events", records=records, columns=list(_COLUMNS))
        return
    await insert_many(conn, audit_events, events)


async def get_event(conn: AsyncConnection, event_id: str) -> Row | None:
    return await get_row(conn, audit_events, event_id)


async def list_events(
    conn: AsyncConnection,
    *,
    actor: str | None = None,
    action: str | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int,
    offset: int,
) -> tuple[list[Row], int]:
    c = audit_events.c
    where: list[ColumnElement[bool]] = []
    if actor:
        where.append(c.actor == actor)
    if action:
        where.append(c.action == action)
    if resource_type:
        where.append(c.resource_type == resource_type)
    if resource_id:
        where.append(c.resource_id == resource_id)
    if since:
        where.append(c.timestamp >= since)
    if until:
        where.append(c.timestamp <= until)
    return await page_rows(
        conn, audit_events, *where, limit=limit, offset=offset, order_by=(c.timestamp.desc(), c.id.desc())
    )
