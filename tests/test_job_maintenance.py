"""Every job transition with the path that makes it: the state table (legal and illegal moves), then each path
end to end on SQLite and PostgreSQL with a FakeClock: claims, retries with their backoff schedule, failure,
lease expiry and the reaper, a second server taking over, CSR and approval timeouts, approval expiry, cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from certctl.domain.enums import JobStatus
from certctl.domain.errors import ConflictError, UnavailableError
from certctl.domain.models.jobs import JOB_TRANSITIONS, plan_job_transition
from certctl.services.issuance import IssuanceService, claim_issuing_jobs
from certctl.store import leases_repo
from tests import factories
from tests.conftest import Api
from tests.pki_helpers import make_csr
from tests.scheduler_helpers import (
    approvals_of,
    audit_rows,
    cert,
    clock_of,
    clocked_api,
    job,
    update_job,
    versions_of_job,
)

# ---- the state table ----------------------------------------------------------------------------------------

S = JobStatus
NOW = datetime(2026, 3, 1, tzinfo=UTC)
# Every legal move and the code path that makes it; None marks a move the table allows that no path uses.
REASONS: dict[tuple[JobStatus, JobStatus], str | None] = {
    (S.PENDING, S.RUNNING): "claimed by a server's job processor (attempt counted, lease taken)",
    (S.PENDING, S.CANCELLED): "cancelled by a person, a forced renewal, a revocation or an agent's retirement",
    (S.PENDING, S.AWAITING_CSR): None,  # jobs wait for a CSR from AwaitingApproval or Running instead
    (S.PENDING, S.FAILED): None,  # a job fails from Running (a claim) or from a waiting status (timeout)
    (S.AWAITING_CSR, S.RUNNING): "the agent's CSR arrived and passed the profile checks",
    (S.AWAITING_CSR, S.CANCELLED): "cancelled while waiting for the agent",
    (S.AWAITING_CSR, S.FAILED): "no CSR within CERTCTL_JOB_AWAITING_CSR_TIMEOUT (job timeouts loop)",
    (S.AWAITING_APPROVAL, S.PENDING): "approved by a second person (server key generation)",
    (S.AWAITING_APPROVAL, S.AWAITING_CSR): "approved by a second person (agent key generation)",
    (S.AWAITING_APPROVAL, S.CANCELLED): "rejected, or cancelled",
    (S.AWAITING_APPROVAL, S.FAILED): "no decision within CERTCTL_JOB_AWAITING_APPROVAL_TIMEOUT; request expired",
    (S.RUNNING, S.PENDING): "a retryable attempt failed (retry at the backoff time), or its lease expired",
    (S.RUNNING, S.AWAITING_CSR): "agent key generation and no CSR yet (the attempt is not counted)",
    (S.RUNNING, S.COMPLETED): "signed and stored with its version in one transaction",
    (S.RUNNING, S.FAILED): "a permanent error, or a retryable one with no attempt left (job and certificate Failed)",
    (S.RUNNING, S.CANCELLED): "cancelled while running: what is being signed is dropped",
    (S.FAILED, S.PENDING): None,  # retries are scheduled before a job fails; Failed is final for issuing jobs
}
LEGAL = {(a, b) for a, targets in JOB_TRANSITIONS.items() for b in targets}


def test_every_legal_move_has_a_documented_path() -> None:
    assert set(REASONS) == LEGAL
    for status in (S.COMPLETED, S.CANCELLED):
        assert not JOB_TRANSITIONS[status], f"{status} is terminal"


@pytest.mark.parametrize(("current", "new"), [(a, b) for a in S for b in S if (a, b) not in LEGAL])
def test_every_illegal_move_is_refused_with_its_reason(current: JobStatus, new: JobStatus) -> None:
    with pytest.raises(ConflictError) as caught:
        plan_job_transition(current, new, NOW, attempts=1)
    message = caught.value.message
    if current.terminal:
        assert message == f"job is already {current.value}; it cannot become {new.value}"
    else:
        assert message == f"a job in status {current.value} cannot become {new.value}"


@pytest.mark.parametrize(("current", "new"), sorted(LEGAL, key=lambda t: (t[0].value, t[1].value)))
def test_every_legal_move_stamps_what_it_should(current: JobStatus, new: JobStatus) -> None:
    now = NOW
    changes = plan_job_transition(current, new, now, attempts=2)
    assert changes["status"] == new.value and changes["updated_at"] == now
    assert ("attempts" in changes) == (new is S.RUNNING)
    if new is S.RUNNING:
        assert changes["attempts"] == 3 and changes["started_at"] == now
    else:
        assert changes["claimed_by"] is None and changes["lease_expires_at"] is None  # the lease ends with Running
    assert (changes.get("completed_at") == now) == new.terminal


# ---- fixtures -----------------------------------------------------------------------------------------------

@pytest.fixture
async def server_api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """Server key generation, job lease 60 s, on a FakeClock."""
    async with clocked_api(database_url, tmp_path / "srv", keygen_mode="server",
                           extra={"CERTCTL_JOB_LEASE_SECONDS": "60"}) as api:
        yield api


@pytest.fixture
async def agent_api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with clocked_api(database_url, tmp_path / "agent") as api:
        yield api


async def renew(api: Api, cert_id: str, client: Any = None) -> dict[str, Any]:
    response = await (client or api.admin).post(f"/api/v1/certificates/{cert_id}/renew")
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def queued(api: Api, **policy: Any) -> tuple[dict[str, Any], str]:
    values = {"expires_at": clock_of(api).now() + timedelta(days=20)}
    if policy:
        values["renewal_policy_id"] = await factories.seed_renewal_policy(api, **policy)
    c = await factories.seed_certificate(api, **values)
    return c, (await renew(api, c["id"]))["job_id"]


# ---- claims, retries with backoff, failure --------------------------------------------------------------------

async def test_retries_follow_the_backoff_schedule_then_fail_job_and_certificate(
    server_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = server_api
    clock = clock_of(api)
    maintenance = api.services.job_maintenance
    c, job_id = await queued(api, max_retries=3, retry_interval_seconds=60)

    async def unavailable(*_: Any) -> Any:
        raise UnavailableError("the CA key store is unreachable")

    monkeypatch.setattr(api.services.cas, "issuing_ca", unavailable)
    expected = [60, 120]  # base x 2^(attempt-1), each ±20 % jitter
    for attempt, base in enumerate(expected, 1):
        assert await maintenance.process_due_jobs() == {"Pending": 1}
        row = await job(api, job_id)
        assert row["status"] == "Pending" and row["attempts"] == attempt and row["claimed_by"] is None
        assert "unreachable" in row["last_error"]
        delay = (row["scheduled_at"] - clock.now()).total_seconds()
        assert base * 0.8 <= delay <= base * 1.2, (attempt, delay)
        clock.advance(timedelta(seconds=delay - 1))
        assert await maintenance.process_due_jobs() == {}  # not due yet: nobody claims it
        clock.advance(timedelta(seconds=1))
    assert await maintenance.process_due_jobs() == {"Failed": 1}
    row = await job(api, job_id)
    assert row["status"] == "Failed" and row["attempts"] == 3 and row["completed_at"] == clock.now()
    assert (await cert(api, c["id"]))["status"] == "Failed"  # core.md §8 bug 12: not left RenewalInProgress
    assert len(await audit_rows(api, "job_retry_scheduled", job_id)) == 2
    [failed] = await audit_rows(api, "job_failed", job_id)
    assert failed["actor"] == "system" and failed["details"]["attempts"] == 3
    assert await versions_of_job(api, job_id) == 0


async def test_a_permanent_error_fails_at_once(server_api: Api) -> None:
    api = server_api
    _, job_id = await queued(api, max_retries=5, retry_interval_seconds=60)
    assert (await api.admin.put("/api/v1/issuers/iss-local", json={"enabled": False})).status_code == 200
    assert await api.services.job_maintenance.process_due_jobs() == {"Failed": 1}
    row = await job(api, job_id)
    assert row["attempts"] == 1 and "disabled" in row["last_error"]


async def test_running_goes_to_awaiting_csr_without_spending_an_attempt(server_api: Api) -> None:
    api = server_api
    profile = await factories.seed_profile(api, key_generation_mode="server")
    c = await factories.seed_certificate(api, certificate_profile_id=profile)
    job_id = (await renew(api, c["id"]))["job_id"]
    async with api.services.ctx.db.transaction() as conn:  # the profile changes to agent keys while queued
        from sqlalchemy import update

        from certctl.store.schema import certificate_profiles
        await conn.execute(update(certificate_profiles).where(certificate_profiles.c.id == profile)
                           .values(key_generation_mode="agent"))
    assert await api.services.job_maintenance.process_due_jobs() == {"AwaitingCSR": 1}
    row = await job(api, job_id)
    assert row["status"] == "AwaitingCSR" and row["attempts"] == 0 and row["claimed_by"] is None


# ---- leases and the reaper -------------------------------------------------------------------------------------

async def test_the_reaper_requeues_only_expired_leases_and_the_dead_holder_stores_nothing(server_api: Api) -> None:
    api = server_api
    clock = clock_of(api)
    maintenance = api.services.job_maintenance
    c, job_id = await queued(api, max_retries=3)
    dead = IssuanceService(api.services.ctx, api.services.cas)  # a second server that will "die"
    assert await claim_issuing_jobs(dead, limit=10) == [job_id]
    row = await job(api, job_id)
    assert row["status"] == "Running" and row["claimed_by"] == dead.holder
    assert row["lease_expires_at"] == clock.now() + timedelta(seconds=60)

    assert await maintenance.reap_expired_leases() == {}
    clock.advance(timedelta(seconds=60))
    assert await maintenance.reap_expired_leases() == {}  # expires_at == now: still valid
    assert (await job(api, job_id))["status"] == "Running"
    clock.advance(timedelta(seconds=1))
    assert await maintenance.reap_expired_leases() == {"requeued": 1}
    row = await job(api, job_id)
    assert row["status"] == "Pending" and row["attempts"] == 1 and row["claimed_by"] is None
    assert row["scheduled_at"] == clock.now() and dead.holder in row["last_error"]
    [event] = await audit_rows(api, "job_lease_expired", job_id)
    assert event["details"]["holder"] == dead.holder and event["details"]["to_status"] == "Pending"

    # This server picks it up and completes it.
    assert await maintenance.process_due_jobs() == {"Completed": 1}
    # The "dead" server wakes up and finishes its signing: it no longer holds the job, so nothing is stored.
    assert await dead.execute(job_id) == "Completed"
    assert await versions_of_job(api, job_id) == 1
    assert (await job(api, job_id))["attempts"] == 2
    assert (await cert(api, c["id"]))["status"] == "Active"


async def test_the_reaper_fails_the_job_when_the_dead_claim_was_the_last_attempt(server_api: Api) -> None:
    api = server_api
    c, job_id = await queued(api, max_retries=1)
    dead = IssuanceService(api.services.ctx, api.services.cas)
    assert await claim_issuing_jobs(dead, limit=10) == [job_id]
    clock_of(api).advance(timedelta(minutes=2))
    assert await api.services.job_maintenance.reap_expired_leases() == {"failed": 1}
    row = await job(api, job_id)
    assert row["status"] == "Failed" and row["attempts"] == 1 and "no attempts left" in row["last_error"]
    assert (await cert(api, c["id"]))["status"] == "Failed"
    [failed] = await audit_rows(api, "job_failed", job_id)
    assert "lease" in failed["details"]["error"]


async def test_a_renewed_lease_is_never_reaped_and_an_expired_one_is_never_revived(server_api: Api) -> None:
    api = server_api
    clock = clock_of(api)
    _, job_id = await queued(api)
    issuance = api.services.issuance
    assert await claim_issuing_jobs(issuance, limit=10) == [job_id]
    clock.advance(timedelta(seconds=50))
    async with api.services.ctx.db.transaction() as conn:
        renewed = await leases_repo.renew_job_leases(
            conn, [job_id], issuance.holder, now=clock.now(), until=clock.now() + issuance.lease)
    assert renewed == [job_id]
    clock.advance(timedelta(seconds=50))  # past the first lease, inside the renewed one
    assert await api.services.job_maintenance.reap_expired_leases() == {}
    assert (await job(api, job_id))["status"] == "Running"
    clock.advance(timedelta(seconds=11))
    async with api.services.ctx.db.transaction() as conn:
        late = await leases_repo.renew_job_leases(
            conn, [job_id], issuance.holder, now=clock.now(), until=clock.now() + issuance.lease)
        other = await leases_repo.renew_job_leases(
            conn, [job_id], "someone-else", now=clock.now(), until=clock.now() + issuance.lease)
    assert late == [] and other == []
    assert await api.services.job_maintenance.reap_expired_leases() == {"requeued": 1}


# ---- timeouts and approval expiry -------------------------------------------------------------------------------

async def test_awaiting_csr_times_out_and_fails_the_certificate(agent_api: Api) -> None:
    api = agent_api
    clock = clock_of(api)
    maintenance = api.services.job_maintenance
    c = await factories.seed_certificate(api, expires_at=clock.now() + timedelta(days=20))
    agent_id = await factories.seed_agent(api)
    await factories.seed_mapping(api, c["id"], await factories.seed_target(api, agent_id))
    job_id = (await renew(api, c["id"]))["job_id"]
    assert (await job(api, job_id))["status"] == "AwaitingCSR"

    clock.advance(timedelta(hours=24))
    assert await maintenance.time_out_waiting_jobs() == {}
    clock.advance(timedelta(seconds=1))
    assert await maintenance.time_out_waiting_jobs() == {"AwaitingCSR": 1}
    row = await job(api, job_id)
    assert row["status"] == "Failed" and row["last_error"] == "no CSR from an agent within 24 h"
    assert (await cert(api, c["id"]))["status"] == "Failed"
    [event] = await audit_rows(api, "job_timed_out", job_id)
    assert event["details"]["certificate_status"] == "Failed" and event["actor"] == "system"

    csr_pem, _ = make_csr([c["common_name"]])
    late = await api.admin.post(f"/api/v1/agents/{agent_id}/csr", json={"csr_pem": csr_pem, "certificate_id": c["id"]})
    assert late.status_code == 409, late.text  # nothing waits for it any more
    assert await versions_of_job(api, job_id) == 0


async def test_awaiting_approval_times_out_expires_the_request_and_releases_the_certificate(agent_api: Api) -> None:
    api = agent_api
    clock = clock_of(api)
    profile = await factories.seed_profile(api, requires_approval=True)
    c = await factories.seed_certificate(api, certificate_profile_id=profile,
                                         expires_at=clock.now() + timedelta(days=20))
    made = await renew(api, c["id"], api.user)  # bob asks
    job_id, approval_id = made["job_id"], made["approval_id"]

    timeouts = {"awaiting_approval": timedelta(hours=2)}
    clock.advance(timedelta(hours=2))
    assert await api.services.job_maintenance.time_out_waiting_jobs(**timeouts) == {}
    clock.advance(timedelta(seconds=1))
    assert await api.services.job_maintenance.time_out_waiting_jobs(**timeouts) == {"AwaitingApproval": 1}
    row = await job(api, job_id)
    assert row["status"] == "Failed" and row["last_error"] == "no approval decision within 2 h"
    [approval] = await approvals_of(api, c["id"])
    assert approval["state"] == "expired" and approval["decided_by"] == "system"
    assert approval["decided_at"] == clock.now()
    assert (await cert(api, c["id"]))["status"] == "Active"  # nothing failed: nobody decided
    assert len(await audit_rows(api, "approval_expired", approval_id)) == 1
    assert len(await audit_rows(api, "job_timed_out", job_id)) == 1

    late = await api.admin.post(f"/api/v1/approvals/{approval_id}/approve")
    assert late.status_code == 409 and "expired" in late.json()["message"]


async def test_a_decided_or_answered_job_is_not_timed_out(agent_api: Api) -> None:
    api = agent_api
    clock = clock_of(api)
    profile = await factories.seed_profile(api, requires_approval=True)
    c = await factories.seed_certificate(api, certificate_profile_id=profile)
    made = await renew(api, c["id"], api.user)
    clock.advance(timedelta(hours=160))
    assert (await api.admin.post(f"/api/v1/approvals/{made['approval_id']}/approve")).status_code == 200
    clock.advance(timedelta(hours=10))  # 170 h after the request, but only 10 h waiting for the CSR
    assert await api.services.job_maintenance.time_out_waiting_jobs() == {}
    assert (await job(api, made["job_id"]))["status"] == "AwaitingCSR"


async def test_orphaned_pending_approvals_are_expired(agent_api: Api) -> None:
    api = agent_api
    profile = await factories.seed_profile(api, requires_approval=True)
    c = await factories.seed_certificate(api, certificate_profile_id=profile)
    made = await renew(api, c["id"], api.user)
    await update_job(api, made["job_id"], status="Failed")  # ended by a path that forgot its request
    assert await api.services.job_maintenance.expire_orphaned_approvals() == 1
    [approval] = await approvals_of(api, c["id"])
    assert approval["state"] == "expired" and "Failed" in approval["decision_note"]
    assert await api.services.job_maintenance.expire_orphaned_approvals() == 0


# ---- cancel from every non-terminal status ---------------------------------------------------------------------

@pytest.mark.parametrize("status", ["Pending", "Running", "AwaitingApproval", "AwaitingCSR"])
async def test_cancel_from_each_waiting_or_running_status(server_api: Api, status: str) -> None:
    api = server_api
    if status == "AwaitingApproval":
        profile = await factories.seed_profile(api, requires_approval=True)
        c = await factories.seed_certificate(api, certificate_profile_id=profile)
        job_id = (await renew(api, c["id"], api.user))["job_id"]
    elif status == "AwaitingCSR":
        profile = await factories.seed_profile(api, key_generation_mode="agent")
        c = await factories.seed_certificate(api, certificate_profile_id=profile)
        job_id = (await renew(api, c["id"]))["job_id"]
    else:
        c, job_id = await queued(api)
        if status == "Running":
            assert await claim_issuing_jobs(api.services.issuance, limit=10) == [job_id]
    assert (await job(api, job_id))["status"] == status
    assert (await api.admin.post(f"/api/v1/jobs/{job_id}/cancel")).status_code == 200
    row = await job(api, job_id)
    assert row["status"] == "Cancelled" and row["claimed_by"] is None
    assert (await cert(api, c["id"]))["status"] == "Active"
    if status == "Running":
        assert await api.services.issuance.execute(job_id) == "Cancelled"  # the signer drops its work
        assert await versions_of_job(api, job_id) == 0
    again = await api.admin.post(f"/api/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already Cancelled" in again.json()["message"]

