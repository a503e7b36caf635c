"""/api/v1/stats/*: aggregates over certificates, agents, jobs, versions and notifications."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from certctl.domain.clock import FakeClock
from certctl.store import rows, schema
from tests import factories
from tests.conftest import Api, make_settings, start_api, stop_api

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
async def clocked(database_url: str, tmp_path: Path) -> Any:
    """An API whose clock stands still at NOW, so day buckets are predictable."""
    running, lifespan = await start_api(make_settings(database_url, tmp_path / "data"), clock=FakeClock(NOW))
    try:
        yield running
    finally:
        await stop_api(running, lifespan)


async def insert(api: Api, table: Any, values: list[dict[str, Any]]) -> None:
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_many(conn, table, values)


async def seed_certs(api: Api, specs: list[tuple[str, datetime | None]], prefix: str = "s") -> list[str]:
    team = await factories.team(api.admin)
    owner = await factories.owner(api.admin, team_id=team["id"])
    made = []
    for i, (status, expires) in enumerate(specs):
        made.append({
            "id": f"{prefix}-{i}", "name": f"{prefix}-{i}", "common_name": f"s{i}.example.com", "sans": [],
            "environment": "",
            "owner_id": owner["id"], "team_id": team["id"], "issuer_id": "iss-local",
            "renewal_policy_id": "rp-default", "status": status, "expires_at": expires, "tags": {}, "source": "",
            "created_at": NOW - timedelta(days=40), "updated_at": NOW - timedelta(days=40),
        })
    await insert(api, schema.managed_certificates, made)
    return [m["id"] for m in made]


async def test_summary(clocked: Api) -> None:
    api = clocked
    empty = (await api.user.get("/api/v1/stats/summary")).json()
    assert empty["total_certificates"] == 0 and empty["total_agents"] == 0
    assert empty["completed_at"] == "2026-06-15T12:00:00Z"

    cert_ids = await seed_certs(api, [
        ("Active", NOW + timedelta(days=90)),   # healthy
        ("Active", NOW + timedelta(days=10)),   # expiring
        ("Expiring", NOW + timedelta(days=29)),  # expiring
        ("Active", NOW - timedelta(days=1)),    # expired by date
        ("Expired", NOW - timedelta(days=5)),   # expired
        ("Revoked", NOW - timedelta(days=5)),   # revoked, not counted as expired
        ("Archived", NOW + timedelta(days=5)),  # archived: left out of everything
        ("Pending", None),
    ])
    await insert(api, schema.agents, [{"retired_at": None, **agent} for agent in [
        {"id": "a1", "name": "a1", "registered_at": NOW, "last_heartbeat_at": NOW - timedelta(minutes=1),
         "created_at": NOW, "updated_at": NOW},
        {"id": "a2", "name": "a2", "registered_at": NOW, "last_heartbeat_at": NOW - timedelta(minutes=10),
         "created_at": NOW, "updated_at": NOW},
        {"id": "a3", "name": "a3", "registered_at": NOW, "last_heartbeat_at": None,
         "created_at": NOW, "updated_at": NOW},
        {"id": "a4", "name": "a4", "registered_at": NOW, "last_heartbeat_at": NOW, "retired_at": NOW,
         "created_at": NOW, "updated_at": NOW},
    ]])
    job_statuses = ["Pending", "AwaitingCSR", "AwaitingApproval", "Running", "Completed", "Completed", "Failed",
                    "Cancelled"]
    await insert(api, schema.jobs, [
        {"id": f"j{i}", "type": "Renewal", "certificate_id": cert_ids[0], "status": s, "scheduled_at": NOW,
         "created_at": NOW, "updated_at": NOW}
        for i, s in enumerate(job_statuses)
    ])
    await insert(api, schema.notification_events, [
        {"id": f"n{i}", "type": "ExpirationWarning", "channel": "Email", "status": s, "created_at": NOW}
        for i, s in enumerate(["dead", "dead", "sent", "failed"])
    ])
    summary = (await api.user.get("/api/v1/stats/summary")).json()
    assert summary == {
        "total_certificates": 7, "expiring_certificates": 2, "expired_certificates": 2,
        "revoked_certificates": 1, "active_agents": 1, "offline_agents": 2, "total_agents": 3,
        "pending_jobs": 4, "failed_jobs": 1, "complete_jobs": 2, "notifications_dead": 2,
        "completed_at": "2026-06-15T12:00:00Z",
    }
    assert (await api.anon.get("/api/v1/stats/summary")).status_code == 401


async def test_certificates_by_status(clocked: Api) -> None:
    api = clocked
    assert (await api.user.get("/api/v1/stats/certificates-by-status")).json() == {"status_counts": []}
    await seed_certs(api, [("Active", None), ("Active", None), ("active", None), ("Revoked", None),
                           ("Pending", None)])
    body = (await api.user.get("/api/v1/stats/certificates-by-status")).json()
    assert body == {"status_counts": [
        {"status": "Pending", "count": 1}, {"status": "Active", "count": 3}, {"status": "Revoked", "count": 1},
    ]}


async def test_expiration_timeline(clocked: Api) -> None:
    api = clocked
    await seed_certs(api, [
        ("Active", NOW + timedelta(hours=1)),           # today
        ("Active", NOW + timedelta(days=1, hours=3)),   # 2026-06-16
        ("Expiring", NOW + timedelta(days=1, hours=5)),  # 2026-06-16
        ("Active", NOW + timedelta(days=6, hours=11)),  # 2026-06-21 23:00, last day of a 7-day window
        ("Active", NOW + timedelta(days=6, hours=12)),  # 2026-06-22: outside 7 days
        ("Active", NOW - timedelta(hours=1)),           # already expired
        ("Revoked", NOW + timedelta(days=2)),
        ("Archived", NOW + timedelta(days=2)),
        ("Pending", None),
    ])
    body = (await api.user.get("/api/v1/stats/expiration-timeline", params={"days": 7})).json()
    assert body == {"buckets": [
        {"date": "2026-06-15", "count": 1}, {"date": "2026-06-16", "count": 2}, {"date": "2026-06-17", "count": 0},
        {"date": "2026-06-18", "count": 0}, {"date": "2026-06-19", "count": 0}, {"date": "2026-06-20", "count": 0},
        {"date": "2026-06-21", "count": 1},
    ]}
    default = (await api.user.get("/api/v1/stats/expiration-timeline")).json()["buckets"]
    assert len(default) == 30 and sum(b["count"] for b in default) == 5
    assert len((await api.user.get("/api/v1/stats/expiration-timeline", params={"days": 365})).json()["buckets"]) \
        == 365


@pytest.mark.parametrize("path", ["expiration-timeline", "job-trends", "issuance-rate"])
async def test_days_out_of_range_is_400(clocked: Api, path: str) -> None:
    for days in ("0", "366", "-1", "x", "1.5"):
        response = await clocked.user.get(f"/api/v1/stats/{path}", params={"days": days})
        assert response.status_code == 400, (path, days)
        assert "days" in response.json()["message"]
    assert (await clocked.anon.get(f"/api/v1/stats/{path}")).status_code == 401


async def test_job_trends(clocked: Api) -> None:
    api = clocked
    cert_ids = await seed_certs(api, [("Active", None)])

    def job(i: int, status: str, finished: datetime | None, updated: datetime = NOW) -> dict[str, Any]:
        return {"id": f"jt{i}", "type": "Deployment", "certificate_id": cert_ids[0], "status": status,
                "scheduled_at": NOW - timedelta(days=10), "completed_at": finished,
                "created_at": NOW - timedelta(days=10), "updated_at": updated}

    await insert(api, schema.jobs, [
        job(1, "Completed", NOW - timedelta(hours=2)),
        job(2, "Completed", NOW - timedelta(hours=3)),
        job(3, "Failed", NOW - timedelta(hours=4)),
        job(4, "Failed", NOW - timedelta(days=2)),
        job(5, "Completed", NOW - timedelta(days=3)),      # outside a 3-day window
        job(6, "Running", None),
        job(7, "Failed", None, updated=NOW - timedelta(days=1)),  # finished time taken from updated_at
    ])
    body = (await api.user.get("/api/v1/stats/job-trends", params={"days": 3})).json()
    assert body == {"trends": [
        {"date": "2026-06-13", "completed": 0, "failed": 1, "completed_count": 0, "failed_count": 1,
         "success_rate": 0.0},
        {"date": "2026-06-14", "completed": 0, "failed": 1, "completed_count": 0, "failed_count": 1,
         "success_rate": 0.0},
        {"date": "2026-06-15", "completed": 2, "failed": 1, "completed_count": 2, "failed_count": 1,
         "success_rate": 66.67},
    ]}
    assert len((await api.user.get("/api/v1/stats/job-trends")).json()["trends"]) == 30


async def test_issuance_rate_counts_issued_versions(clocked: Api) -> None:
    api = clocked
    cert_ids = await seed_certs(api, [("Active", None)])

    def version(i: int, created: datetime) -> dict[str, Any]:
        return {"id": f"v{i}", "certificate_id": cert_ids[0], "serial_number": f"{i:x}", "not_before": created,
                "not_after": created + timedelta(days=90), "fingerprint_sha256": f"fp{i}", "pem_chain": "x",
                "created_at": created}

    await insert(api, schema.certificate_versions, [
        version(1, NOW - timedelta(minutes=5)),
        version(2, NOW - timedelta(hours=12, minutes=1)),  # 2026-06-14 23:59
        version(3, NOW - timedelta(days=1)),
        version(4, NOW - timedelta(days=5)),                # outside 2 days
    ])
    body = (await api.user.get("/api/v1/stats/issuance-rate", params={"days": 2})).json()
    assert body == {"rate": [
        {"date": "2026-06-14", "count": 2, "issued_count": 2},
        {"date": "2026-06-15", "count": 1, "issued_count": 1},
    ]}
    default = (await api.user.get("/api/v1/stats/issuance-rate")).json()["rate"]
    assert len(default) == 30 and sum(p["count"] for p in default) == 4


async def test_big_figures_are_reused_briefly(clocked: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from certctl.services import stats as stats_module

    api = clocked
    monkeypatch.setattr(stats_module, "BIG_ROWS", 3)
    await seed_certs(api, [("Active", None), ("Active", None)])
    assert (await api.user.get("/api/v1/stats/summary")).json()["total_certificates"] == 2  # small: live
    await seed_certs(api, [("Active", None)], prefix="b")
    assert (await api.user.get("/api/v1/stats/summary")).json()["total_certificates"] == 3  # big: kept
    await seed_certs(api, [("Active", None)], prefix="c")
    assert (await api.user.get("/api/v1/stats/summary")).json()["total_certificates"] == 3, "reused"
    monkeypatch.setattr(stats_module, "REUSE_SECONDS", 0.0)
    api.services.stats._memo.clear()
    assert (await api.user.get("/api/v1/stats/summary")).json()["total_certificates"] == 4
