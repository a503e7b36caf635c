"""The audit trail is append-only in the database itself, and never stores credentials or personal data."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from certctl.domain.actor import Actor
from certctl.domain.clock import FakeClock
from certctl.domain.enums import ActorType
from certctl.services import audit
from certctl.store import audit_repo
from certctl.store.database import Database
from tests.conftest import Api


async def _one_event(db: Database) -> None:
    async with db.transaction() as conn:
        await audit.record(conn, FakeClock(), Actor.system(), "probe_written", "probe", "p-1", {"n": 1})


async def _count(db: Database) -> int:
    async with db.read() as conn:
        return int(await conn.scalar(text("SELECT count(*) FROM audit_events")) or 0)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET action = 'rewritten'",
        "UPDATE audit_events SET details = '{}' WHERE resource_id = 'p-1'",
        "DELETE FROM audit_events",
        "DELETE FROM audit_events WHERE resource_id = 'p-1'",
    ],
)
async def test_audit_rows_cannot_be_changed_or_removed(database_url: str, statement: str) -> None:
    db = Database(database_url)
    try:
        await _one_event(db)
        before = await _count(db)
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.engine.begin() as conn:
                await conn.execute(text(statement))
        assert await _count(db) == before
        async with db.read() as conn:
            assert await conn.scalar(text("SELECT action FROM audit_events WHERE resource_id = 'p-1'")) == (
                "probe_written"
            )
        # Appending still works after a refused change.
        await _one_event(db)
        assert await _count(db) == before + 1
    finally:
        await db.dispose()


async def test_truncate_is_refused_on_postgresql(database_url: str, backend: str) -> None:
    db = Database(database_url)
    try:
        await _one_event(db)
        if backend == "postgresql":
            with pytest.raises(DBAPIError, match="append-only"):
                async with db.engine.begin() as conn:
                    await conn.execute(text("TRUNCATE audit_events"))
        else:
            # SQLite has no TRUNCATE; its truncate optimisation is DELETE without WHERE, which the trigger blocks.
            with pytest.raises(DBAPIError, match="append-only"):
                async with db.engine.begin() as conn:
                    await conn.execute(text("DELETE FROM audit_events"))
        assert await _count(db) >= 1
    finally:
        await db.dispose()


SENSITIVE: dict[str, Any] = {
    "api_key": "cc_live_abcdef",
    "password": "hunter2",
    "client_secret": "s3cr3t",
    "Authorization": "Bearer cc_live_abcdef",
    "bootstrap_token": "boot-123",
    "email": "alice@example.com",
    "ip_address": "203.0.113.9",
    "phone": "+1 555 0100",
    "config": {"hmac_key": "k-hmac", "username": "svc", "nested": [{"private_key": "-----BEGIN"}]},
    "key_algorithm": "ECDSA",
    "key_size": 256,
    "common_name": "api.example.com",
}
SECRET_VALUES = ("cc_live_abcdef", "hunter2", "s3cr3t", "boot-123", "alice@example.com", "203.0.113.9", "+1 555 0100",
                 "k-hmac", "-----BEGIN")


async def test_details_are_redacted_before_they_are_stored(api: Api) -> None:
    actor = Actor("alice", ActorType.USER, admin=True)
    async with api.services.ctx.db.transaction() as conn:
        await audit.record(
            conn, FakeClock(datetime(2026, 3, 1, tzinfo=UTC)), actor, "secret_things", "probe", "p-9", SENSITIVE
        )
    listed = await api.admin.get("/api/v1/audit", params={"action": "secret_things"})
    [event] = listed.json()["data"]
    stored = (await api.admin.get(f"/api/v1/audit/{event['id']}")).json()
    assert stored["actor"] == "alice" and stored["resource_id"] == "p-9"
    text_form = str(stored["details"])
    for value in SECRET_VALUES:
        assert value not in text_form, f"{value!r} reached the audit trail"
    details = stored["details"]
    for key in ("api_key", "password", "client_secret", "Authorization", "bootstrap_token"):
        assert details[key] == "[REDACTED:CREDENTIAL]", key
    for key in ("email", "ip_address", "phone"):
        assert details[key] == "[REDACTED:PII]", key
    assert details["config"]["hmac_key"] == "[REDACTED:CREDENTIAL]"
    assert details["config"]["nested"][0]["private_key"] == "[REDACTED:CREDENTIAL]"
    assert details["config"]["username"] == "svc"
    # Fields that merely contain "key" in their name, and ordinary data, are kept.
    assert (details["key_algorithm"], details["key_size"], details["common_name"]) == ("ECDSA", 256, "api.example.com")
    assert "config.nested.private_key" in details["redacted_keys"] and "email" in details["redacted_keys"]

    # The raw row holds the redacted form too, not just the API's view of it.
    async with api.services.ctx.db.read() as conn:
        raw = await conn.scalar(text("SELECT details FROM audit_events WHERE id = :id"), {"id": event["id"]})
    for value in SECRET_VALUES:
        assert value not in str(raw)


async def test_request_bodies_are_hashed_never_stored(api: Api) -> None:
    body = {"name": "o-secretive", "email": "carol.private@example.com"}
    response = await api.admin.post("/api/v1/owners", json=body)
    assert response.status_code == 201, response.text
    await api.services.audit_sink.flush()
    async with api.services.ctx.db.read() as conn:
        rows = (await conn.execute(text("SELECT action, details FROM audit_events"))).all()
    assert {row.action for row in rows} >= {"api_post", "owner_created"}
    for row in rows:
        assert "carol.private@example.com" not in str(row.details), row.action


async def test_batched_events_round_trip(api: Api) -> None:
    """A sink-sized batch (COPY on PostgreSQL, INSERT on SQLite) reads back field for field."""
    at = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    batch = [
        audit.build_event(Actor("bob"), "api_get", "api", f"/api/v1/teams/{i}",
                          {"status": 200, "nested": {"n": i}, "list": [1, "x"]}, at)
        for i in range(45)
    ]
    async with api.services.ctx.db.transaction() as conn:
        await audit_repo.add_events(conn, batch)
    for sent in (batch[0], batch[44]):
        event = (await api.admin.get(f"/api/v1/audit/{sent['id']}")).json()
        assert event["details"] == sent["details"]
        assert event["resource_id"] == sent["resource_id"] and event["actor_type"] == "User"
        assert datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")) == at
