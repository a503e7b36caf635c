"""Certificate actions: renew, deploy, revoke (state, jobs and audit; no signing here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import factories
from tests.conftest import Api, make_settings, start_api, stop_api


async def cert_row(api: Api, cert_id: str) -> dict[str, Any]:
    from certctl.store import jobs_repo

    async with api.services.ctx.db.read() as conn:
        row = await jobs_repo.get_certificate(conn, cert_id)
    assert row is not None
    return dict(row)


async def jobs_of(api: Api, cert_id: str) -> list[dict[str, Any]]:
    response = await api.admin.get("/api/v1/jobs", params={"certificate_id": cert_id, "per_page": 500})
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


@pytest.fixture
async def server_keygen_api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    running, lifespan = await start_api(make_settings(database_url, tmp_path / "srv", keygen_mode="server"))
    try:
        yield running
    finally:
        await stop_api(running, lifespan)


# ---- renew ------------------------------------------------------------------------------------------

async def test_renew_creates_awaiting_csr_renewal_job_in_agent_mode(api: Api) -> None:
    cert = await factories.seed_certificate(api)
    response = await api.user.post(f"/api/v1/certificates/{cert['id']}/renew")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "renewal_triggered" and body["job_status"] == "AwaitingCSR"
    assert body["approval_id"] is None

    job = (await api.admin.get(f"/api/v1/jobs/{body['job_id']}")).json()
    assert job["type"] == "Renewal" and job["status"] == "AwaitingCSR"
    assert job["certificate_id"] == cert["id"] and job["max_attempts"] == 3 and job["attempts"] == 0
    assert (await cert_row(api, cert["id"]))["status"] == "RenewalInProgress"
    assert "certificate_renewal_triggered" in await api.audit_actions("certificate")


async def test_renew_without_expiry_is_issuance_and_uses_policy_retries(api: Api) -> None:
    policy_id = await factories.seed_renewal_policy(api, max_retries=7)
    cert = await factories.seed_certificate(api, status="Pending", expires_at=None, renewal_policy_id=policy_id)
    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")
    assert response.status_code == 202
    job = (await api.admin.get(f"/api/v1/jobs/{response.json()['job_id']}")).json()
    assert job["type"] == "Issuance" and job["max_attempts"] == 7


async def test_renew_of_api_created_certificate(api: Api) -> None:
    created = await factories.certificate(api.admin)
    response = await api.admin.post(f"/api/v1/certificates/{created['id']}/renew")
    assert response.status_code == 202, response.text
    assert (await cert_row(api, created["id"]))["status"] == "RenewalInProgress"


async def test_renew_in_server_keygen_mode_is_pending(server_keygen_api: Api) -> None:
    api = server_keygen_api
    cert = await factories.seed_certificate(api)
    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")
    assert response.status_code == 202
    assert response.json()["job_status"] == "Pending"


@pytest.mark.parametrize("status", ["Archived", "Expired", "Revoked"])
async def test_renew_refused_for_final_states(api: Api, status: str) -> None:
    cert = await factories.seed_certificate(api, status=status)
    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")
    assert response.status_code == 400
    assert status in response.json()["message"]
    assert await jobs_of(api, cert["id"]) == []


async def test_renew_in_progress_needs_force(api: Api) -> None:
    cert = await factories.seed_certificate(api)
    first = await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")
    assert first.status_code == 202
    again = await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")
    assert again.status_code == 409 and "force" in again.json()["message"]

    forced = await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew", params={"force": "true"})
    assert forced.status_code == 202
    jobs = {j["id"]: j for j in await jobs_of(api, cert["id"])}
    assert jobs[first.json()["job_id"]]["status"] == "Cancelled"
    assert "superseded" in jobs[first.json()["job_id"]]["last_error"]
    assert jobs[forced.json()["job_id"]]["status"] == "AwaitingCSR"
    assert (await cert_row(api, cert["id"]))["status"] == "RenewalInProgress"


async def test_renew_unknown_and_unauthenticated(api: Api) -> None:
    assert (await api.admin.post("/api/v1/certificates/nope/renew")).status_code == 404
    cert = await factories.seed_certificate(api)
    assert (await api.anon.post(f"/api/v1/certificates/{cert['id']}/renew")).status_code == 401
    bad_force = await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew", params={"force": "maybe"})
    assert bad_force.status_code == 400
    assert await jobs_of(api, cert["id"]) == []


async def test_renew_on_approval_profile_waits_for_approval(api: Api) -> None:
    profile_id = await factories.seed_profile(api, requires_approval=True)
    cert = await factories.seed_certificate(api, certificate_profile_id=profile_id)
    response = await api.user.post(f"/api/v1/certificates/{cert['id']}/renew")
    assert response.status_code == 202
    body = response.json()
    assert body["job_status"] == "AwaitingApproval" and body["approval_id"].startswith("ar-")
    approval = (await api.admin.get(f"/api/v1/approvals/{body['approval_id']}")).json()
    assert approval["state"] == "pending" and approval["requested_by"] == "bob"
    assert approval["job_id"] == body["job_id"] and approval["profile_id"] == profile_id
    assert approval["metadata"]["common_name"] == cert["common_name"]
    assert "approval_requested" in await api.audit_actions("approval_request")


async def test_approval_bypass_auto_approves_as_system(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "bypass", extra={"CERTCTL_APPROVAL_BYPASS": "true"})
    api, lifespan = await start_api(settings)
    try:
        profile_id = await factories.seed_profile(api, requires_approval=True)
        cert = await factories.seed_certificate(api, certificate_profile_id=profile_id)
        response = await api.user.post(f"/api/v1/certificates/{cert['id']}/renew")
        assert response.status_code == 202
        body = response.json()
        assert body["job_status"] == "AwaitingCSR"
        approval = (await api.admin.get(f"/api/v1/approvals/{body['approval_id']}")).json()
        assert approval["state"] == "approved" and approval["decided_by"] == "system-bypass"
        assert {"approval_requested", "approval_bypassed"} <= set(await api.audit_actions("approval_request"))
    finally:
        await stop_api(api, lifespan)


# ---- deploy -----------------------------------------------------------------------------------------

async def test_deploy_creates_one_job_per_active_mapped_target(api: Api) -> None:
    cert = await factories.seed_certificate(api)
    await factories.seed_version(api, cert["id"])
    agent = await factories.seed_agent(api)
    t1 = await factories.seed_target(api, agent)
    t2 = await factories.seed_target(api)
    retired = await factories.seed_target(api, agent, retired_at=datetime.now(UTC))
    for target in (t1, t2, retired):
        await factories.seed_mapping(api, cert["id"], target)

    response = await api.user.post(f"/api/v1/certificates/{cert['id']}/deploy")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "deployment_triggered" and len(body["job_ids"]) == 2
    jobs = [j for j in await jobs_of(api, cert["id"]) if j["type"] == "Deployment"]
    assert {j["target_id"] for j in jobs} == {t1, t2}
    assert all(j["status"] == "Pending" for j in jobs)
    by_target = {j["target_id"]: j for j in jobs}
    assert by_target[t1]["agent_id"] == agent  # the target's agent will claim it

    # A second click while those jobs are open does not queue duplicates.
    again = await api.user.post(f"/api/v1/certificates/{cert['id']}/deploy", json={})
    assert again.status_code == 202 and sorted(again.json()["job_ids"]) == sorted(body["job_ids"])
    assert len(await jobs_of(api, cert["id"])) == 2
    assert "certificate_deployment_triggered" in await api.audit_actions("certificate")


async def test_deploy_to_named_target_maps_it(api: Api) -> None:
    cert = await factories.seed_certificate(api)
    await factories.seed_version(api, cert["id"])
    target = await factories.seed_target(api)
    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/deploy", json={"target_id": target})
    assert response.status_code == 202
    from certctl.store import jobs_repo

    async with api.services.ctx.db.read() as conn:
        assert await jobs_repo.is_mapped(conn, cert["id"], target)
    # Mapped now: a plain deploy finds it.
    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/deploy")
    assert response.status_code == 202 and len(response.json()["job_ids"]) == 1


async def test_deploy_bad_input(api: Api) -> None:
    cert = await factories.seed_certificate(api)
    path = f"/api/v1/certificates/{cert['id']}/deploy"
    no_version = await api.admin.post(path)
    assert no_version.status_code == 400 and "version" in no_version.json()["message"]
    await factories.seed_version(api, cert["id"])

    no_targets = await api.admin.post(path)
    assert no_targets.status_code == 400 and "target" in no_targets.json()["message"]
    unknown_target = await api.admin.post(path, json={"target_id": "t-missing"})
    assert unknown_target.status_code == 400 and "t-missing" in unknown_target.json()["message"]
    retired = await factories.seed_target(api, retired_at=datetime.now(UTC))
    assert (await api.admin.post(path, json={"target_id": retired})).status_code == 400
    disabled = await factories.seed_target(api, enabled=False)
    assert (await api.admin.post(path, json={"target_id": disabled})).status_code == 400
    assert (await api.admin.post(path, json={"target": "x"})).status_code == 400
    assert (await api.admin.post(path, json={"target_id": 5})).status_code == 400
    assert (await api.admin.post("/api/v1/certificates/nope/deploy")).status_code == 404
    assert (await api.anon.post(path)).status_code == 401

    revoked = await factories.seed_certificate(api, status="Revoked")
    await factories.seed_version(api, revoked["id"])
    assert (await api.admin.post(f"/api/v1/certificates/{revoked['id']}/deploy")).status_code == 400
    assert await jobs_of(api, cert["id"]) == [], "bad input left jobs behind"


# ---- revoke -----------------------------------------------------------------------------------------

async def test_revoke_sets_reason_and_cancels_open_jobs(api: Api) -> None:
    cert = await factories.seed_certificate(api)
    renewal = (await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")).json()["job_id"]

    response = await api.user.post(f"/api/v1/certificates/{cert['id']}/revoke", json={"reason": "key_compromise"})
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "revoked"}
    row = await cert_row(api, cert["id"])
    assert row["status"] == "Revoked" and row["revocation_reason"] == "keyCompromise"
    assert row["revoked_at"] is not None
    job = (await api.admin.get(f"/api/v1/jobs/{renewal}")).json()
    assert job["status"] == "Cancelled" and job["completed_at"] is not None

    again = await api.user.post(f"/api/v1/certificates/{cert['id']}/revoke", json={"reason": "superseded"})
    assert again.status_code == 409
    assert "certificate_revoked" in await api.audit_actions("certificate")


async def test_revoke_without_body_is_unspecified(api: Api) -> None:
    cert = await factories.seed_certificate(api)
    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/revoke")
    assert response.status_code == 200
    assert (await cert_row(api, cert["id"]))["revocation_reason"] == "unspecified"


async def test_revoke_bad_input(api: Api) -> None:
    cert = await factories.seed_certificate(api)
    path = f"/api/v1/certificates/{cert['id']}/revoke"
    invalid = await api.admin.post(path, json={"reason": "because"})
    assert invalid.status_code == 400
    assert "keyCompromise" in invalid.json()["message"] and "privilegeWithdrawn" in invalid.json()["message"]
    assert (await api.admin.post(path, json={"reason": 1})).status_code == 400
    assert (await api.admin.post(path, json={"reason": "superseded", "when": "now"})).status_code == 400
    assert (await cert_row(api, cert["id"]))["status"] == "Active", "bad input changed the certificate"
    assert (await api.admin.post("/api/v1/certificates/nope/revoke", json={})).status_code == 404
    assert (await api.anon.post(path, json={})).status_code == 401

    archived = await factories.seed_certificate(api, status="Archived")
    response = await api.admin.post(f"/api/v1/certificates/{archived['id']}/revoke", json={"reason": "superseded"})
    assert response.status_code == 400


async def test_revoke_reason_any_case(api: Api) -> None:
    cert = await factories.seed_certificate(api, expires_at=datetime.now(UTC) + timedelta(days=5))
    path = f"/api/v1/certificates/{cert['id']}/revoke"
    response = await api.admin.post(path, json={"reason": "CESSATIONOFOPERATION"})
    assert response.status_code == 200
    assert (await cert_row(api, cert["id"]))["revocation_reason"] == "cessationOfOperation"
