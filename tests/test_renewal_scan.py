"""The scheduled renewal scan (core.md §4 with §8 bugs 4 and 12 fixed) on SQLite and PostgreSQL, driven by a
FakeClock: each policy's window, auto_renew, Expiring/Expired, the approval gate with the system as requester,
rejections honoured for the window, skips, paging, and the short-lived expiry sweep."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from certctl.config import NamedKey
from certctl.domain.actor import Actor
from certctl.domain.errors import ConflictError, ForbiddenError
from tests import factories
from tests.conftest import TEST_KEYS, Api, _client
from tests.scheduler_helpers import approvals_of, audit_rows, cert, clock_of, clocked_api, job, jobs_of

SYSTEM_NAMED_KEY = "a-human-key-named-system-0123"


@pytest.fixture
async def server_api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    # One extra human key that happens to be called "system": it must not be able to approve what the system asked.
    keys = (*TEST_KEYS, NamedKey("system", SYSTEM_NAMED_KEY, True))
    async with clocked_api(database_url, tmp_path / "srv", keygen_mode="server", api_keys=keys) as api:
        yield api


@pytest.fixture
async def agent_api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with clocked_api(database_url, tmp_path / "agent") as api:
        yield api


class Seeder:
    """Certificates sharing one team and owner (fast), expiring a number of days after the fake now."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.org: dict[str, str] = {}

    async def cert(self, days: float | None, **values: Any) -> dict[str, Any]:
        if not self.org:
            team = await factories.team(self.api.admin)
            self.org = {"team_id": team["id"],
                        "owner_id": (await factories.owner(self.api.admin, team_id=team["id"]))["id"]}
        now = clock_of(self.api).now()
        expires = None if days is None else now + timedelta(days=days)
        return await factories.seed_certificate(self.api, expires_at=expires, **self.org, **values)


async def statuses(api: Api, certs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {label: (await cert(api, c["id"]))["status"] for label, c in certs.items()}


# ---- windows and auto_renew -------------------------------------------------------------------------------

async def test_each_policy_renews_inside_its_own_window(server_api: Api) -> None:
    api = server_api
    seed = Seeder(api)
    short = await factories.seed_renewal_policy(api, renewal_window_days=10, max_retries=2)
    long = await factories.seed_renewal_policy(api, renewal_window_days=40, max_retries=5)
    certs = {f"{name}-{days}": await seed.cert(days, renewal_policy_id=policy)
             for name, policy in (("short", short), ("long", long)) for days in (5, 20, 35, 50)}

    report = await api.services.renewal.scan()
    assert len(report.renewals) == 4 and report.marked_expiring == 0 and report.errors == 0
    assert await statuses(api, certs) == {
        "short-5": "RenewalInProgress", "short-20": "Active", "short-35": "Active", "short-50": "Active",
        "long-5": "RenewalInProgress", "long-20": "RenewalInProgress", "long-35": "RenewalInProgress",
        "long-50": "Active",
    }
    [short_job] = await jobs_of(api, certs["short-5"]["id"])
    assert (short_job["type"], short_job["status"], short_job["max_attempts"]) == ("Renewal", "Pending", 2)
    assert (await jobs_of(api, certs["long-35"]["id"]))[0]["max_attempts"] == 5
    [created] = await audit_rows(api, "renewal_job_created", certs["long-35"]["id"])
    assert created["actor"] == "system" and created["actor_type"] == "System"
    assert created["details"]["trigger"] == "scheduled" and created["details"]["renewal_window_days"] == 40
    assert created["details"]["days_left"] == 35
    [triggered] = await audit_rows(api, "certificate_renewal_triggered", certs["long-35"]["id"])
    assert triggered["actor"] == "system"  # the same path as a manual renewal

    again = await api.services.renewal.scan()
    assert again.renewals == [] and again.marked_expiring == 0  # open jobs: nothing twice

    assert await api.services.job_maintenance.process_due_jobs() == {"Completed": 4}
    for label in ("short-5", "long-5", "long-20", "long-35"):
        renewed = await cert(api, certs[label]["id"])
        assert renewed["status"] == "Active" and renewed["expires_at"] > clock_of(api).now() + timedelta(days=80)
    assert (await api.services.renewal.scan()).renewals == []


async def test_auto_renew_off_marks_expiring_and_expired_but_queues_nothing(server_api: Api) -> None:
    api = server_api
    clock = clock_of(api)
    seed = Seeder(api)
    manual = await factories.seed_renewal_policy(api, renewal_window_days=30, auto_renew=False)
    certs = {"inside": await seed.cert(10, renewal_policy_id=manual),
             "outside": await seed.cert(45, renewal_policy_id=manual),
             "past": await seed.cert(-1, renewal_policy_id=manual)}
    report = await api.services.renewal.scan()
    assert report.renewals == [] and report.marked_expiring == 1 and report.marked_expired == 1
    assert await statuses(api, certs) == {"inside": "Expiring", "outside": "Active", "past": "Expired"}
    assert all([await jobs_of(api, c["id"]) == [] for c in certs.values()])
    [event] = await audit_rows(api, "certificate_status_changed", certs["inside"]["id"])
    assert event["details"]["from"] == "Active" and event["details"]["to"] == "Expiring"

    repeat = await api.services.renewal.scan()
    assert (repeat.marked_expiring, repeat.marked_expired) == (0, 0)  # nothing to change twice
    clock.advance(timedelta(days=16))  # "outside" enters the window, "inside" expires
    await api.services.renewal.scan()
    assert await statuses(api, certs) == {"inside": "Expired", "outside": "Expiring", "past": "Expired"}


async def test_expiry_marks_all_but_renewing_revoked_and_archived(server_api: Api) -> None:
    api = server_api
    seed = Seeder(api)
    certs = {status: await seed.cert(-2, status=status) for status in (
        "Pending", "Active", "Expiring", "Failed", "RenewalInProgress", "Revoked", "Archived")}
    never_issued = await seed.cert(None, status="Pending")
    report = await api.services.renewal.scan()
    assert report.marked_expired == 4 and report.renewals == []  # an expired certificate is not renewed
    assert await statuses(api, certs) == {
        "Pending": "Expired", "Active": "Expired", "Expiring": "Expired", "Failed": "Expired",
        "RenewalInProgress": "RenewalInProgress", "Revoked": "Revoked", "Archived": "Archived",
    }
    assert (await cert(api, never_issued["id"]))["status"] == "Pending"


async def test_failed_open_job_and_disabled_issuer_are_skipped(server_api: Api) -> None:
    api = server_api
    seed = Seeder(api)
    failed = await seed.cert(5, status="Failed")
    busy = await seed.cert(5)
    manual = (await api.admin.post(f"/api/v1/certificates/{busy['id']}/renew")).json()["job_id"]
    report = await api.services.renewal.scan()
    assert report.renewals == []
    assert (await cert(api, failed["id"]))["status"] == "Failed"  # left to an operator, like the reference
    assert [j["id"] for j in await jobs_of(api, busy["id"])] == [manual]

    idle = await seed.cert(5)
    assert (await api.admin.put("/api/v1/issuers/iss-local", json={"enabled": False})).status_code == 200
    report = await api.services.renewal.scan()
    assert report.renewals == [] and (await cert(api, idle["id"]))["status"] == "Expiring"
    assert (await api.admin.put("/api/v1/issuers/iss-local", json={"enabled": True})).status_code == 200
    assert len((await api.services.renewal.scan()).renewals) == 1  # picked up once the issuer is back


async def test_agent_key_generation_waits_for_the_agents_csr(agent_api: Api) -> None:
    api = agent_api
    await Seeder(api).cert(3)
    report = await api.services.renewal.scan()
    [job_id] = report.renewals
    assert (await job(api, job_id))["status"] == "AwaitingCSR"


async def test_paging_through_many_candidates_with_skips(server_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api = server_api
    monkeypatch.setattr("certctl.services.renewal.BATCH", 2)
    seed = Seeder(api)
    certs = [await seed.cert(1 + i) for i in range(7)]
    for c in certs[1::3]:  # a few already busy: skipped inside the batches
        assert (await api.admin.post(f"/api/v1/certificates/{c['id']}/renew")).status_code == 202
    report = await api.services.renewal.scan()
    assert len(report.renewals) == 5 and report.errors == 0
    assert {(await cert(api, c["id"]))["status"] for c in certs} == {"RenewalInProgress"}



async def test_a_renewal_failing_half_way_leaves_nothing_and_its_chunk_commits(
    server_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renewals share a transaction (CHUNK of them), each in its own savepoint: one that fails after it wrote its
    job and status is rolled back alone, is counted as an error, and the others of its chunk are stored."""
    api = server_api
    monkeypatch.setattr("certctl.services.renewal.CHUNK", 3)
    seed = Seeder(api)
    certs = [await seed.cert(1 + i) for i in range(5)]
    doomed = certs[1]["id"]
    actions = api.services.renewal.actions
    real = actions._renew_in

    async def failing_after_its_writes(conn: Any, actor: Actor, c: Any, *, force: bool) -> Any:
        result = await real(conn, actor, c, force=force)
        if c["id"] == doomed:
            raise ConflictError("failed after the job was written")
        return result

    monkeypatch.setattr(actions, "_renew_in", failing_after_its_writes)
    report = await api.services.renewal.scan()
    assert report.errors == 1 and len(report.renewals) == 4
    assert await jobs_of(api, doomed) == []
    assert await audit_rows(api, "renewal_job_created", doomed) == []
    assert (await cert(api, doomed))["status"] == "Expiring"  # inside the window, marked after the renewals
    assert {(await cert(api, c["id"]))["status"] for c in certs if c["id"] != doomed} == {"RenewalInProgress"}
    assert {len(await jobs_of(api, c["id"])) for c in certs if c["id"] != doomed} == {1}

# ---- the approval gate --------------------------------------------------------------------------------------

async def gated(api: Api, seed: Seeder, days: float = 5) -> tuple[dict[str, Any], str, str]:
    profile = await factories.seed_profile(api, requires_approval=True)
    c = await seed.cert(days, certificate_profile_id=profile)
    report = await api.services.renewal.scan()
    [job_id] = report.renewals
    assert report.awaiting_approval == 1
    [approval] = await approvals_of(api, c["id"])
    return c, job_id, approval["id"]


async def test_scheduled_renewal_goes_through_the_approval_gate(server_api: Api) -> None:
    api = server_api
    c, job_id, approval_id = await gated(api, Seeder(api))
    assert (await job(api, job_id))["status"] == "AwaitingApproval"
    assert (await cert(api, c["id"]))["status"] == "RenewalInProgress"
    [approval] = await approvals_of(api, c["id"])
    assert approval["requested_by"] == "system" and approval["state"] == "pending"
    assert await api.services.job_maintenance.process_due_jobs() == {}  # nothing runs before a decision

    # The requester is the system: it can never decide, nor can a key that merely bears its name.
    with pytest.raises(ForbiddenError, match="two-person"):
        await api.services.approvals.approve(Actor.system(), approval_id, "self-approval")
    impostor = _client(api.app, SYSTEM_NAMED_KEY)
    try:
        refused = await impostor.post(f"/api/v1/approvals/{approval_id}/approve")
    finally:
        await impostor.aclose()
    assert refused.status_code == 403 and "two-person" in refused.json()["message"]
    assert (await api.anon.post(f"/api/v1/approvals/{approval_id}/approve")).status_code == 401

    # Any named person may approve: here bob, a non-admin key.
    approved = await api.user.post(f"/api/v1/approvals/{approval_id}/approve", json={"note": "go"})
    assert approved.status_code == 200 and approved.json()["decided_by"] == "bob"
    assert (await job(api, job_id))["status"] == "Pending"
    assert await api.services.job_maintenance.process_due_jobs() == {"Completed": 1}
    assert (await cert(api, c["id"]))["status"] == "Active"


async def test_a_rejection_holds_for_the_window_and_an_expired_request_is_asked_again(server_api: Api) -> None:
    api = server_api
    clock = clock_of(api)
    seed = Seeder(api)
    rejected, rejected_job, rejected_approval = await gated(api, seed, days=10)
    response = await api.admin.post(f"/api/v1/approvals/{rejected_approval}/reject", json={"note": "not now"})
    assert response.status_code == 200
    assert (await job(api, rejected_job))["status"] == "Cancelled"
    assert (await cert(api, rejected["id"]))["status"] == "Active"
    report = await api.services.renewal.scan()
    assert report.renewals == [] and report.skipped == {"approval_rejected": 1}
    assert (await cert(api, rejected["id"]))["status"] == "Expiring"  # visible as needing a person
    assert len(await approvals_of(api, rejected["id"])) == 1

    unanswered, unanswered_job, _ = await gated(api, seed, days=20)
    clock.advance(timedelta(hours=169))
    assert await api.services.job_maintenance.time_out_waiting_jobs() == {"AwaitingApproval": 1}
    assert (await job(api, unanswered_job))["status"] == "Failed"
    report = await api.services.renewal.scan()
    [again] = report.renewals
    assert report.awaiting_approval == 1 and report.skipped.get("approval_rejected") == 1
    states = [a["state"] for a in await approvals_of(api, unanswered["id"])]
    assert states == ["expired", "pending"]
    assert (await job(api, again))["status"] == "AwaitingApproval"


# ---- short-lived expiry -------------------------------------------------------------------------------------

async def test_short_lived_certificates_expire_within_the_sweep(server_api: Api) -> None:
    api = server_api
    clock = clock_of(api)
    seed = Seeder(api)
    short_lived = await factories.seed_profile(api, allow_short_lived=True, max_ttl_seconds=600)
    long_ttl = await factories.seed_profile(api, allow_short_lived=True, max_ttl_seconds=7200)
    fleeting = await seed.cert(5 / 1440, certificate_profile_id=short_lived)  # five minutes left
    regular = await seed.cert(5 / 1440, certificate_profile_id=long_ttl)
    assert await api.services.renewal.expire_short_lived() == 0
    clock.advance(timedelta(minutes=5))
    assert await api.services.renewal.expire_short_lived() == 1
    assert (await cert(api, fleeting["id"]))["status"] == "Expired"
    assert (await cert(api, regular["id"]))["status"] == "Active"  # left to the hourly scan
    [event] = await audit_rows(api, "certificate_status_changed", fleeting["id"])
    assert event["details"]["reason"] == "short-lived certificate expired"
    assert await api.services.renewal.expire_short_lived() == 0
