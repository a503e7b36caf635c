"""The audit trail.

Service-level events (`team_created`, `certificate_revoked`, …) are written inside the same
transaction as the change they describe, so a change without its audit record cannot exist.
Per-request API events (`api_get`, …) go through `AuditSink`, which batches them off the request
path and drains on shutdown so none are lost on a clean stop.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.actor import Actor
from certctl.domain.clock import Clock
from certctl.domain.errors import NotFoundError
from certctl.domain.ids import new_id
from certctl.domain.models.audit import AuditEvent
from certctl.domain.models.common import PageParams
from certctl.domain.redaction import redact_audit_details
from certctl.store import audit_repo
from certctl.store.database import Database

log = logging.getLogger("certctl.audit")


def build_event(
    actor: Actor,
    action: str,
    resource_type: str,
    resource_id: str,
    details: dict[str, Any] | None,
    at: datetime,
) -> dict[str, Any]:
    return {
        "id": new_id("audit"),
        "actor": actor.name,
        "actor_type": actor.actor_type.value,
        "action": action,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "details": redact_audit_details(details or {}),
        "timestamp": at,
    }


async def record(
    conn: AsyncConnection,
    clock: Clock,
    actor: Actor,
    action: str,
    resource_type: str,
    resource_id: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Write one audit event in the caller's transaction."""
    await audit_repo.add_events(conn, [build_event(actor, action, resource_type, resource_id, details, clock.now())])


class AuditService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, event_id: str) -> AuditEvent:
        async with self.db.read() as conn:
            row = await audit_repo.get_event(conn, event_id)
        if row is None:
            raise NotFoundError.of("audit event", event_id)
        return AuditEvent.model_validate(row)

    async def list(
        self,
        page: PageParams,
        *,
        actor: str | None = None,
        action: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[list[AuditEvent], int]:
        async with self.db.read() as conn:
            rows, total = await audit_repo.list_events(
                conn, actor=actor, action=action, resource_type=resource_type, resource_id=resource_id,
                since=since, until=until, limit=page.per_page, offset=page.offset,
            )
        return [AuditEvent.model_validate(r) for r in rows], total


class AuditSink:
    """Batches per-request audit events; `close()` flushes everything still queued."""

    def __init__(
        self, db: Database, *, batch_size: int = 500, flush_interval: float = 0.25, linger: float = 0.05
    ) -> None:
        self.db = db
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        # After the first event, wait this long for others: one transaction per batch instead of one
        # per request is most of the audit trail's cost under a steady load.
        self.linger = linger
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-sink")

    def submit(self, event: dict[str, Any]) -> None:
        self._queue.put_nowait(event)

    async def _run(self) -> None:
        while not self._closing:
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout=self.flush_interval)
            except TimeoutError:
                continue
            batch = [first]
            if self._queue.qsize() < self.batch_size and not self._closing:
                await asyncio.sleep(self.linger)
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        for attempt in range(3):
            try:
                async with self.db.transaction() as conn:
                    await audit_repo.add_events(conn, batch)
                return
            except Exception:  # keep the sink alive; retry, then report loudly
                if attempt == 2:
                    log.exception("audit batch of %d events could not be written", len(batch))
                    return
                await asyncio.sleep(0.2 * (attempt + 1))

    async def flush(self) -> None:
        """Write everything submitted so far, including a batch the background writer is in the middle of."""
        batch: list[dict[str, Any]] = []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
            if len(batch) >= self.batch_size:
                await self._write_done(batch)
                batch = []
        if batch:
            await self._write_done(batch)
        await self._queue.join()

    async def _write_done(self, batch: list[dict[str, Any]]) -> None:
        try:
            await self._write(batch)
        finally:
            for _ in batch:
                self._queue.task_done()

    async def close(self, timeout: float = 30.0) -> None:
        """Let the writer finish its batch (never cancelled mid-write), then drain the queue."""
        self._closing = True
        if self._task is not None:
            await asyncio.wait_for(self._task, timeout=timeout)
        await asyncio.wait_for(self.flush(), timeout=timeout)
