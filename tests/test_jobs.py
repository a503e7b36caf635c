"""Jobs: the state table, list/get, cancel, and the job-level approve/reject."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from certctl.domain.enums import JobStatus
from certctl.domain.errors import ConflictError
from certctl.domain.models.jobs import (
    INITIAL_JOB_STATUSES,
    JOB_TRANSITIONS,
    check_initial_job_status,
    plan_job_transition,
)
from tests import factories
from tests.conftest import Api

NOW = datetime(2026, 3, 1, tzinfo=UTC)


# ---- the state table ---------------------------------------------------------------------------

def test_every_status_has_a_row_and_terminal_ones_lead_nowhere_but_retry() -> None:
    assert set(JOB_TRANSITIONS) == set(JobStatus)
    assert JOB_TRANSITIONS[JobStatus.COMPLETED] == frozenset()
    assert JOB_TRANSITIONS[JobStatus.CANCELLED] == frozenset()
    assert JOB_TRANSITIONS[JobStatus.FAILED] == {JobStatus.PENDING}
    for status in JobStatus:
        if not status.terminal:
            assert JobStatus.CANCELLED in JOB_TRANSITIONS[status], status


def test_running_counts_an_attempt_and_terminal_stamps_completion() -> None:
    running = plan_job_transition("Pending", JobStatus.RUNNING, NOW, attempts=1)
    assert running == {"status": "Running", "updated_at": NOW, "started_at": NOW, "attempts": 2}
    done = plan_job_transition(JobStatus.RUNNING, JobStatus.COMPLETED, NOW)
    assert done["completed_at"] == NOW and "attempts" not in done
    requeued = plan_job_transition(JobStatus.FAILED, JobStatus.PENDING, NOW)
    assert requeued["completed_at"] is None and requeued["scheduled_at"] == NOW


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (JobStatus.COMPLETED, JobStatus.CANCELLED),
        (JobStatus.CANCELLED, JobStatus.PENDING),
        (JobStatus.FAILED, JobStatus.CANCELLED),
        (JobStatus.PENDING, JobStatus.COMPLETED),
        (JobStatus.AWAITING_APPROVAL, JobStatus.RUNNING),
    ],
)
def test_illegal_moves_are_conflicts(current: JobStatus, new: JobStatus) -> None:
    with pytest.raises(ConflictError):
        plan_job_transition(current, new, NOW)


def test_jobs_are_born_queued_waiting_or_held() -> None:
    assert {JobStatus.PENDING, JobStatus.AWAITING_CSR, JobStatus.AWAITING_APPROVAL} == INITIAL_JOB_STATUSES
    with pytest.raises(ConflictError):
        check_initial_job_status(JobStatus.RUNNING)


# ---- helpers -------------------------------------------------------------------------------------

async def renew(api: Api, cert_id: str, client: Any = None) -> dict[str, Any]:
    response = await (client or api.admin).post(f"/api/v1/certificates/{cert_id}/renew")
    assert response.status_code == 202, response.text
    data: dict[str, Any] = response.json()
    return data


async def cert_status(api: Api, cert_id: str) -> str:
    from certctl.store import jobs_repo

    async with api.services.ctx.db.read() as conn:
        row = await jobs_repo.get_certificate(conn, cert_id)
    assert row is not None
    return str(row["status"])


# ---- list / get ----------------------------------------------------------------------------------

async def test_list_filters_and_pages_newest_first(api: Api) -> None:
    a = await factories.seed_certificate(api)
    b = await factories.seed_certificate(api, status="Pending", expires_at=None)
    await factories.seed_version(api, a["id"])
    target = await factories.seed_target(api)
    first = (await renew(api, a["id"]))["job_id"]
    second = (await renew(api, b["id"]))["job_id"]
    deploy = await api.admin.post(f"/api/v1/certificates/{a['id']}/deploy", json={"target_id": target})
    third = deploy.json()["job_ids"][0]

    listed = (await api.user.get("/api/v1/jobs")).json()
    assert listed["total"] == 3 and [j["id"] for j in listed["data"]] == [third, second, first]

    paged = (await api.user.get("/api/v1/jobs", params={"per_page": 1, "page": 2})).json()
    assert paged["total"] == 3 and paged["per_page"] == 1 and [j["id"] for j in paged["data"]] == [second]

    by_type = (await api.user.get("/api/v1/jobs", params={"type": "deployment"})).json()
    assert [j["id"] for j in by_type["data"]] == [third]
    by_status = (await api.user.get("/api/v1/jobs", params={"status": "AwaitingCSR"})).json()
    assert {j["id"] for j in by_status["data"]} == {first, second}
    by_cert = (await api.user.get("/api/v1/jobs", params={"certificate_id": b["id"]})).json()
    assert [j["id"] for j in by_cert["data"]] == [second] and by_cert["data"][0]["type"] == "Issuance"
    agent_id = by_type["data"][0]["agent_id"]
    by_agent = (await api.user.get("/api/v1/jobs", params={"agent_id": agent_id})).json()
    assert [j["id"] for j in by_agent["data"]] == [third]

    got = await api.user.get(f"/api/v1/jobs/{first}")
    assert got.status_code == 200 and got.json()["certificate_id"] == a["id"]


async def test_list_and_get_bad_input(api: Api) -> None:
    bad_status = await api.admin.get("/api/v1/jobs", params={"status": "Sleeping"})
    assert bad_status.status_code == 400 and "AwaitingCSR" in bad_status.json()["message"]
    assert (await api.admin.get("/api/v1/jobs", params={"type": "Bake"})).status_code == 400
    assert (await api.admin.get("/api/v1/jobs", params={"per_page": 501})).status_code == 400
    assert (await api.admin.get("/api/v1/jobs", params={"page": 0})).status_code == 400
    assert (await api.admin.get("/api/v1/jobs/job-missing")).status_code == 404
    assert (await api.anon.get("/api/v1/jobs")).status_code == 401
    assert (await api.anon.get("/api/v1/jobs/job-missing")).status_code == 401


# ---- cancel --------------------------------------------------------------------------------------

async def test_cancel_renewal_puts_certificate_back(api: Api) -> None:
    active = await factories.seed_certificate(api)
    never_issued = await factories.seed_certificate(api, status="Pending", expires_at=None)
    job_a = (await renew(api, active["id"]))["job_id"]
    job_b = (await renew(api, never_issued["id"]))["job_id"]

    response = await api.user.post(f"/api/v1/jobs/{job_a}/cancel")
    assert response.status_code == 200 and response.json() == {"status": "job_cancelled"}
    job = (await api.admin.get(f"/api/v1/jobs/{job_a}")).json()
    assert job["status"] == "Cancelled" and job["completed_at"] is not None and "bob" in job["last_error"]
    assert await cert_status(api, active["id"]) == "Active"

    assert (await api.user.post(f"/api/v1/jobs/{job_b}/cancel")).status_code == 200
    assert await cert_status(api, never_issued["id"]) == "Pending"

    again = await api.user.post(f"/api/v1/jobs/{job_a}/cancel")
    assert again.status_code == 409 and "Cancelled" in again.json()["message"]
    assert (await api.user.post("/api/v1/jobs/job-missing/cancel")).status_code == 404
    assert (await api.anon.post(f"/api/v1/jobs/{job_b}/cancel")).status_code == 401
    assert (await api.audit_actions("job")).count("job_cancelled") == 2


async def test_cancel_of_version_holder_without_expiry_restores_active(api: Api) -> None:
    cert = await factories.seed_certificate(api, status="Pending", expires_at=None)
    await factories.seed_version(api, cert["id"])
    job_id = (await renew(api, cert["id"]))["job_id"]
    assert (await api.admin.post(f"/api/v1/jobs/{job_id}/cancel")).status_code == 200
    assert await cert_status(api, cert["id"]) == "Active"


async def test_cancel_deployment_leaves_certificate_alone(api: Api) -> None:
    cert = await factories.seed_certificate(api)
    await factories.seed_version(api, cert["id"])
    target = await factories.seed_target(api)
    renewal = (await renew(api, cert["id"]))["job_id"]
    deploy = await api.admin.post(f"/api/v1/certificates/{cert['id']}/deploy", json={"target_id": target})
    assert (await api.admin.post(f"/api/v1/jobs/{deploy.json()['job_ids'][0]}/cancel")).status_code == 200
    assert await cert_status(api, cert["id"]) == "RenewalInProgress"
    assert (await api.admin.get(f"/api/v1/jobs/{renewal}")).json()["status"] == "AwaitingCSR"


# ---- job-level approve / reject ------------------------------------------------------------------

async def held_job(api: Api, *, owner_name: str = "carol", requester: Any = None) -> tuple[dict[str, Any], str]:
    profile_id = await factories.seed_profile(api, requires_approval=True)
    team = await factories.team(api.admin)
    owner = await factories.owner(api.admin, name=owner_name, team_id=team["id"])
    cert = await factories.seed_certificate(
        api, certificate_profile_id=profile_id, owner_id=owner["id"], team_id=team["id"]
    )
    job_id = (await renew(api, cert["id"], requester or api.user))["job_id"]
    return cert, job_id


async def test_approve_job_releases_it_and_settles_the_request(api: Api) -> None:
    cert, job_id = await held_job(api)  # requested by bob, owned by carol
    response = await api.admin.post(f"/api/v1/jobs/{job_id}/approve")
    assert response.status_code == 200 and response.json() == {"status": "job_approved"}
    assert (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "AwaitingCSR"
    approvals = (await api.admin.get("/api/v1/approvals", params={"certificate_id": cert["id"]})).json()["data"]
    assert approvals[0]["state"] == "approved" and approvals[0]["decided_by"] == "alice"
    assert "job_approved" in await api.audit_actions("job")

    again = await api.admin.post(f"/api/v1/jobs/{job_id}/approve")
    assert again.status_code == 409


async def test_requester_and_owner_cannot_approve_job(api: Api) -> None:
    _, job_id = await held_job(api)  # requested by bob
    by_requester = await api.user.post(f"/api/v1/jobs/{job_id}/approve")
    assert by_requester.status_code == 403 and "two-person integrity" in by_requester.json()["message"]

    _, owned_by_alice = await held_job(api, owner_name="Alice")
    by_owner = await api.admin.post(f"/api/v1/jobs/{owned_by_alice}/approve")
    assert by_owner.status_code == 403 and "owner" in by_owner.json()["message"]
    assert (await api.admin.get(f"/api/v1/jobs/{owned_by_alice}")).json()["status"] == "AwaitingApproval"


async def test_approve_job_bad_cases(api: Api) -> None:
    cert = await factories.seed_certificate(api)
    job_id = (await renew(api, cert["id"]))["job_id"]
    not_held = await api.user.post(f"/api/v1/jobs/{job_id}/approve")
    assert not_held.status_code == 409 and "AwaitingApproval" in not_held.json()["message"]
    assert (await api.user.post("/api/v1/jobs/job-missing/approve")).status_code == 404
    assert (await api.anon.post(f"/api/v1/jobs/{job_id}/approve")).status_code == 401


async def test_reject_job_cancels_it_and_restores_certificate(api: Api) -> None:
    cert, job_id = await held_job(api)
    bad = await api.admin.post(f"/api/v1/jobs/{job_id}/reject", json={"why": "x"})
    assert bad.status_code == 400
    assert (await api.admin.post(f"/api/v1/jobs/{job_id}/reject", json={"reason": 3})).status_code == 400

    response = await api.admin.post(f"/api/v1/jobs/{job_id}/reject", json={"reason": "not this quarter"})
    assert response.status_code == 200 and response.json() == {"status": "job_rejected"}
    job = (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["status"] == "Cancelled" and "not this quarter" in job["last_error"]
    assert await cert_status(api, cert["id"]) == "Active"
    approvals = (await api.admin.get("/api/v1/approvals", params={"certificate_id": cert["id"]})).json()["data"]
    assert approvals[0]["state"] == "rejected"

    assert (await api.admin.post(f"/api/v1/jobs/{job_id}/reject")).status_code == 409
    assert (await api.admin.post("/api/v1/jobs/job-missing/reject")).status_code == 404
    assert (await api.anon.post(f"/api/v1/jobs/{job_id}/reject")).status_code == 401
    assert "job_rejected" in await api.audit_actions("job")
