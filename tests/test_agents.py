"""Agents: registration (API key or bootstrap token), listing, heartbeats, retirement and staleness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from certctl.domain.clock import FakeClock
from certctl.store import rows, schema
from certctl.store.schema import agents, deployment_targets, jobs, managed_certificates
from tests import factories
from tests.conftest import Api, make_settings, start_api, stop_api

BOOTSTRAP = "bootstrap-token-for-tests"


def _bearer(api: Api, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.app, client=("127.0.0.1", 50001)),
        base_url="https://testserver", headers={"Authorization": f"Bearer {token}"},
    )


async def _row(api: Api, table: Any, row_id: str) -> dict[str, Any]:
    async with api.services.ctx.db.read() as conn:
        row = await rows.get_row(conn, table, row_id)
    assert row is not None
    return dict(row)


async def _job(api: Api, agent_id: str | None, status: str, target_id: str | None = None) -> str:
    now = datetime.now(UTC)
    job_id = factories.unique("job")
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, jobs, {
            "id": job_id, "type": "Deployment", "agent_id": agent_id, "target_id": target_id, "status": status,
            "scheduled_at": now, "created_at": now, "updated_at": now,
        })
    return job_id


# ---- registration --------------------------------------------------------------------------------
async def test_register_get_list(api: Api) -> None:
    created = await factories.agent(api.admin, name="edge-01", hostname="edge-01.example.com", os="linux",
                                    architecture="amd64", ip_address="10.0.0.5", version="1.2.3")
    assert created["id"].startswith("agent-") and created["status"] == "Offline"
    assert created["last_heartbeat_at"] is None and created["registered_at"] is not None
    assert created["ip_address"] == "10.0.0.5" and created["retired_at"] is None
    assert "api_key_hash" not in created
    api_key = created.pop("api_key")  # the agent's own key: in the registration answer only
    assert api_key.startswith(f"cca.{created['id']}.")

    raw = await _row(api, agents, created["id"])
    assert len(raw["api_key_hash"]) == 64 and int(raw["api_key_hash"], 16) >= 0  # SHA-256 hex only
    assert api_key not in str(dict(raw))

    got = await api.admin.get(f"/api/v1/agents/{created['id']}")
    assert got.status_code == 200 and got.json() == created and "api_key" not in got.text
    listed = (await api.admin.get("/api/v1/agents")).json()
    assert listed["total"] == 1 and listed["data"] == [created]
    assert await api.audit_actions("agent") == ["agent_registered"]


async def test_register_with_bootstrap_token_or_any_key(api: Api) -> None:
    async with _bearer(api, BOOTSTRAP) as bootstrap:
        created = await factories.agent(bootstrap)
        # The bootstrap token opens registration only.
        assert (await bootstrap.get("/api/v1/agents")).status_code == 401
        assert (await bootstrap.get(f"/api/v1/agents/{created['id']}")).status_code == 401
        assert (await bootstrap.post(f"/api/v1/agents/{created['id']}/heartbeat", json={})).status_code == 401
    async with _bearer(api, "not-the-token") as wrong:
        assert (await wrong.post("/api/v1/agents", json={"name": "x", "hostname": "h"})).status_code == 401
    assert (await api.anon.post("/api/v1/agents", json={"name": "x", "hostname": "h"})).status_code == 401
    await factories.agent(api.user)  # a non-admin API key may register
    await api.services.audit_sink.flush()
    events = (await api.admin.get("/api/v1/audit", params={"action": "agent_registered"})).json()["data"]
    assert sorted((e["actor"], e["actor_type"]) for e in events) == [("agent-bootstrap", "Agent"), ("bob", "User")]


async def test_register_bad_input(api: Api) -> None:
    cases = [
        ({"hostname": "h"}, "name"),
        ({"name": "x"}, "hostname"),
        ({"name": "x" * 129, "hostname": "h"}, "name"),
        ({"name": "x", "hostname": ""}, "hostname"),
        ({"name": "x", "hostname": "h", "ip_address": "10.0.0.300"}, "ip_address"),
        ({"name": "x", "hostname": "h", "status": "Online"}, "status"),
        ({"name": "x", "hostname": "h", "api_key_hash": "00"}, "api_key_hash"),
        ({"name": 5, "hostname": "h"}, "name"),
        ({"id": "server-scanner", "name": "x", "hostname": "h"}, "reserved"),
    ]
    for body, expected in cases:
        response = await api.admin.post("/api/v1/agents", json=body)
        assert response.status_code == 400, (body, response.text)
        assert expected in response.json()["message"], (body, response.json())
    assert (await api.admin.get("/api/v1/agents")).json()["total"] == 0, "bad input left rows behind"
    assert (await api.admin.get("/api/v1/agents/nope")).status_code == 404

    await factories.agent(api.admin, name="dup", id="agent-fixed")
    clash = await api.admin.post("/api/v1/agents", json={"name": "dup", "hostname": "h"})
    assert clash.status_code == 409 and "dup" in clash.json()["message"]
    same_id = await api.admin.post("/api/v1/agents", json={"id": "agent-fixed", "name": "other", "hostname": "h"})
    assert same_id.status_code == 409
    ok_v6 = await api.admin.post("/api/v1/agents", json={"name": "v6", "hostname": "h", "ip_address": "2001:db8::1"})
    assert ok_v6.status_code == 201


# ---- heartbeat -----------------------------------------------------------------------------------
async def test_heartbeat(api: Api) -> None:
    agent = await factories.agent(api.admin, version="1.0.0")
    beat = {"version": "1.1.0", "hostname": "renamed.example.com", "os": "linux", "architecture": "arm64",
            "ip_address": "192.0.2.10"}
    response = await api.user.post(f"/api/v1/agents/{agent['id']}/heartbeat", json=beat)
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    got = (await api.admin.get(f"/api/v1/agents/{agent['id']}")).json()
    assert got["status"] == "Online" and got["last_heartbeat_at"] is not None
    assert {k: got[k] for k in beat} == beat

    # A plain heartbeat (no body, nothing new) changes only the timestamp and leaves no service event.
    assert (await api.user.post(f"/api/v1/agents/{agent['id']}/heartbeat")).status_code == 200
    assert (await api.user.post(f"/api/v1/agents/{agent['id']}/heartbeat", json=beat)).status_code == 200
    assert await api.audit_actions("agent") == ["agent_metadata_changed", "agent_status_changed",
                                                "agent_registered"]

    bad_ip = await api.user.post(f"/api/v1/agents/{agent['id']}/heartbeat", json={"ip_address": "nope"})
    assert bad_ip.status_code == 400 and "ip_address" in bad_ip.json()["message"]
    unknown = await api.user.post(f"/api/v1/agents/{agent['id']}/heartbeat", json={"uptime": 5})
    assert unknown.status_code == 400
    assert (await api.user.post("/api/v1/agents/nope/heartbeat", json={})).status_code == 404
    assert (await api.anon.post(f"/api/v1/agents/{agent['id']}/heartbeat", json={})).status_code == 401

    assert (await api.admin.delete(f"/api/v1/agents/{agent['id']}")).status_code == 200
    gone = await api.user.post(f"/api/v1/agents/{agent['id']}/heartbeat", json=beat)
    assert gone.status_code == 410 and "retired" in gone.json()["message"]


# ---- retirement ----------------------------------------------------------------------------------
async def test_clean_retire_then_idempotent(api: Api) -> None:
    agent = await factories.agent(api.admin)
    response = await api.admin.delete(f"/api/v1/agents/{agent['id']}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["cascade"] is False and body["already_retired"] is False and body["retired_at"]
    assert body["counts"] == {"active_targets": 0, "active_certificates": 0, "pending_jobs": 0}

    again = await api.admin.delete(f"/api/v1/agents/{agent['id']}", params={"force": "true", "reason": "x"})
    assert again.status_code == 204 and again.content == b""

    assert (await api.admin.get("/api/v1/agents")).json()["total"] == 0
    retired = (await api.admin.get("/api/v1/agents/retired")).json()
    assert retired["total"] == 1 and retired["data"][0]["id"] == agent["id"]
    assert retired["data"][0]["retired_at"] is not None and retired["data"][0]["retired_reason"] is None
    assert (await api.admin.get(f"/api/v1/agents/{agent['id']}")).json()["retired_at"] is not None
    assert await api.audit_actions("agent") == ["agent_retired", "agent_registered"]


async def test_retire_guards(api: Api) -> None:
    for sentinel in ("server-scanner", "cloud-aws-sm", "cloud-azure-kv", "cloud-gcp-sm"):
        refused = await api.admin.delete(f"/api/v1/agents/{sentinel}", params={"force": "true", "reason": "x"})
        assert refused.status_code == 403, sentinel
    assert (await api.admin.delete("/api/v1/agents/nope")).status_code == 404
    agent = await factories.agent(api.admin)
    no_reason = await api.admin.delete(f"/api/v1/agents/{agent['id']}", params={"force": "true", "reason": "  "})
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["message"]
    assert (await api.anon.delete(f"/api/v1/agents/{agent['id']}")).status_code == 401
    assert (await api.admin.get(f"/api/v1/agents/{agent['id']}")).json()["retired_at"] is None


async def test_blocked_retire_and_force_cascade(api: Api) -> None:
    agent = await factories.agent(api.admin)
    t1 = await factories.target(api.admin, agent_id=agent["id"])
    t2 = await factories.target(api.admin, agent_id=agent["id"])
    old = await factories.target(api.admin, agent_id=agent["id"])
    assert (await api.admin.delete(f"/api/v1/targets/{old['id']}")).status_code == 204  # already retired

    c1 = await factories.seed_certificate(api)
    c2 = await factories.seed_certificate(api)
    archived = await factories.seed_certificate(api, status="Archived")
    for cert, target in ((c1, t1), (c1, t2), (c2, t2), (archived, t1)):
        await factories.seed_mapping(api, cert["id"], target["id"])
    pending = await _job(api, agent["id"], "Pending")
    awaiting = await _job(api, agent["id"], "AwaitingCSR")
    done = await _job(api, agent["id"], "Completed")
    other_agent = await factories.agent(api.admin)
    untouched = await _job(api, other_agent["id"], "Pending")

    counts = {"active_targets": 2, "active_certificates": 2, "pending_jobs": 2}
    blocked = await api.admin.delete(f"/api/v1/agents/{agent['id']}")
    assert blocked.status_code == 409
    body = blocked.json()
    assert body["error"] == "blocked_by_dependencies" and body["counts"] == counts
    assert body["message"] and body["request_id"]
    # A malformed force is false, never a cascade.
    typo = await api.admin.delete(f"/api/v1/agents/{agent['id']}", params={"force": "yes", "reason": "x"})
    assert typo.status_code == 409

    forced = await api.admin.delete(f"/api/v1/agents/{agent['id']}",
                                    params={"force": "true", "reason": "host decommissioned"})
    assert forced.status_code == 200, forced.text
    assert forced.json()["cascade"] is True and forced.json()["counts"] == counts

    for target in (t1, t2):
        row = await _row(api, deployment_targets, target["id"])
        assert row["retired_at"] is not None and "host decommissioned" in row["retired_reason"]
    assert (await _row(api, deployment_targets, old["id"]))["retired_reason"] == "deleted"
    for job_id in (pending, awaiting):
        row = await _row(api, jobs, job_id)
        assert row["status"] == "Cancelled" and row["completed_at"] is not None
    assert (await _row(api, jobs, done))["status"] == "Completed"
    assert (await _row(api, jobs, untouched))["status"] == "Pending"
    agent_row = await _row(api, agents, agent["id"])
    assert agent_row["retired_reason"] == "host decommissioned"
    assert (await api.admin.get("/api/v1/targets", params={"agent_id": agent["id"]})).json()["total"] == 0

    await api.services.audit_sink.flush()
    event = (await api.admin.get("/api/v1/audit", params={"action": "agent_retired"})).json()["data"][0]
    assert event["details"]["cascade"] is True
    assert sorted(event["details"]["retired_targets"]) == sorted([t1["id"], t2["id"]])
    assert sorted(event["details"]["cancelled_jobs"]) == sorted([pending, awaiting])


async def test_agent_pagination(api: Api) -> None:
    created = [await factories.agent(api.admin) for _ in range(5)]
    for agent in created[:2]:
        await api.admin.delete(f"/api/v1/agents/{agent['id']}")
    live = (await api.admin.get("/api/v1/agents", params={"per_page": 2, "page": 2})).json()
    assert live["total"] == 3 and len(live["data"]) == 1
    retired = (await api.admin.get("/api/v1/agents/retired", params={"per_page": 1})).json()
    assert retired["total"] == 2 and len(retired["data"]) == 1
    assert (await api.admin.get("/api/v1/agents/retired", params={"per_page": 0})).status_code == 400
    assert (await api.anon.get("/api/v1/agents/retired")).status_code == 401


# ---- staleness -----------------------------------------------------------------------------------
@pytest.fixture
async def clocked(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Api, FakeClock]]:
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    running, lifespan = await start_api(make_settings(database_url, tmp_path / "data"), clock=clock)
    try:
        yield running, clock
    finally:
        await stop_api(running, lifespan)


async def test_mark_stale_agents_offline(clocked: tuple[Api, FakeClock]) -> None:
    api, clock = clocked
    ids = [(await factories.agent(api.admin))["id"] for _ in range(4)]
    quiet, chatty, retired, never = ids
    for agent_id in (quiet, chatty, retired):
        assert (await api.admin.post(f"/api/v1/agents/{agent_id}/heartbeat", json={})).status_code == 200
    assert (await api.admin.delete(f"/api/v1/agents/{retired}")).status_code == 200

    service = api.services.agents
    clock.advance(timedelta(seconds=60))
    assert await service.mark_stale_agents_offline() == ()
    await api.admin.post(f"/api/v1/agents/{chatty}/heartbeat", json={})
    clock.advance(timedelta(seconds=61))  # quiet: 121 s silent; chatty: 61 s
    assert await service.mark_stale_agents_offline() == (quiet,)

    statuses = {a: (await api.admin.get(f"/api/v1/agents/{a}")).json()["status"] for a in ids}
    assert statuses == {quiet: "Offline", chatty: "Online", retired: "Online", never: "Offline"}
    assert await service.mark_stale_agents_offline() == ()  # already Offline: nothing to do

    await api.services.audit_sink.flush()
    events = (await api.admin.get("/api/v1/audit", params={"action": "agent_status_changed"})).json()["data"]
    offline = [e for e in events if e["details"].get("to") == "Offline"]
    assert [(e["resource_id"], e["actor"], e["actor_type"]) for e in offline] == [(quiet, "system", "System")]
    assert offline[0]["timestamp"].startswith("2026-03-01T12:02:01")

    # Coming back is one heartbeat away.
    await api.admin.post(f"/api/v1/agents/{quiet}/heartbeat", json={})
    assert (await api.admin.get(f"/api/v1/agents/{quiet}")).json()["status"] == "Online"


async def test_force_retire_releases_renewals_through_the_job_state_machine(api: Api) -> None:
    """A cascade-cancelled renewal settles its approval and takes the cert out of RenewalInProgress."""
    agent = await factories.agent(api.admin)
    cert = await factories.seed_certificate(api, status="RenewalInProgress")
    now = datetime.now(UTC)
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, jobs, {
            "id": "job-renew-1", "type": "Renewal", "certificate_id": cert["id"], "agent_id": agent["id"],
            "status": "AwaitingApproval", "scheduled_at": now, "created_at": now, "updated_at": now,
        })
        await rows.insert_row(conn, schema.issuance_approval_requests, {
            "id": "ar-1", "certificate_id": cert["id"], "job_id": "job-renew-1", "profile_id": "",
            "requested_by": "carol", "state": "pending", "metadata": {}, "created_at": now, "updated_at": now,
        })
    forced = await api.admin.delete(f"/api/v1/agents/{agent['id']}", params={"force": "true", "reason": "gone"})
    assert forced.status_code == 200, forced.text
    assert (await _row(api, jobs, "job-renew-1"))["status"] == "Cancelled"
    assert (await _row(api, schema.issuance_approval_requests, "ar-1"))["state"] == "rejected"
    assert (await _row(api, managed_certificates, cert["id"]))["status"] == "Active"
