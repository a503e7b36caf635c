"""Approval requests: listing, and two-person approve/reject with their effect on job and certificate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests import factories
from tests.conftest import Api, make_settings, start_api, stop_api


async def request(api: Api, client: Any = None, **cert_values: Any) -> dict[str, Any]:
    """Renew a certificate on a requires_approval profile; bob (non-admin) asks unless told otherwise."""
    profile_id = await factories.seed_profile(api, requires_approval=True)
    cert = await factories.seed_certificate(api, certificate_profile_id=profile_id, **cert_values)
    response = await (client or api.user).post(f"/api/v1/certificates/{cert['id']}/renew")
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert body["job_status"] == "AwaitingApproval"
    return {"cert": cert, "profile_id": profile_id, **body}


async def cert_status(api: Api, cert_id: str) -> str:
    from certctl.store import jobs_repo

    async with api.services.ctx.db.read() as conn:
        row = await jobs_repo.get_certificate(conn, cert_id)
    assert row is not None
    return str(row["status"])


async def test_list_and_get(api: Api) -> None:
    first = await request(api)
    second = await request(api, client=api.admin)
    listed = (await api.user.get("/api/v1/approvals")).json()
    assert listed["total"] == 2 and listed["page"] == 1 and listed["per_page"] == 50
    assert [a["id"] for a in listed["data"]] == [second["approval_id"], first["approval_id"]]

    by_requester = (await api.user.get("/api/v1/approvals", params={"requested_by": "alice"})).json()
    assert [a["id"] for a in by_requester["data"]] == [second["approval_id"]]
    by_cert = (await api.user.get("/api/v1/approvals", params={"certificate_id": first["cert"]["id"]})).json()
    assert [a["id"] for a in by_cert["data"]] == [first["approval_id"]]
    pending = (await api.user.get("/api/v1/approvals", params={"state": "PENDING"})).json()
    assert pending["total"] == 2
    assert (await api.user.get("/api/v1/approvals", params={"state": "approved"})).json()["total"] == 0
    paged = (await api.user.get("/api/v1/approvals", params={"per_page": 1, "page": 2})).json()
    assert paged["total"] == 2 and [a["id"] for a in paged["data"]] == [first["approval_id"]]

    got = await api.user.get(f"/api/v1/approvals/{first['approval_id']}")
    assert got.status_code == 200
    body = got.json()
    assert body["job_id"] == first["job_id"] and body["decided_by"] is None and body["decided_at"] is None


async def test_list_and_get_bad_input(api: Api) -> None:
    bad = await api.admin.get("/api/v1/approvals", params={"state": "maybe"})
    assert bad.status_code == 400 and "pending" in bad.json()["message"]
    assert (await api.admin.get("/api/v1/approvals", params={"per_page": 0})).status_code == 400
    assert (await api.admin.get("/api/v1/approvals/ar-missing")).status_code == 404
    assert (await api.anon.get("/api/v1/approvals")).status_code == 401


async def test_approve_by_second_person(api: Api) -> None:
    made = await request(api)
    response = await api.admin.post(f"/api/v1/approvals/{made['approval_id']}/approve", json={"note": "ok by me"})
    assert response.status_code == 200, response.text
    assert response.json() == {"id": made["approval_id"], "decided_by": "alice", "action": "approved"}

    approval = (await api.admin.get(f"/api/v1/approvals/{made['approval_id']}")).json()
    assert approval["state"] == "approved" and approval["decided_by"] == "alice"
    assert approval["decision_note"] == "ok by me" and approval["decided_at"] is not None
    job = (await api.admin.get(f"/api/v1/jobs/{made['job_id']}")).json()
    assert job["status"] == "AwaitingCSR"  # agent key generation is the default
    assert await cert_status(api, made["cert"]["id"]) == "RenewalInProgress"
    assert "approval_approved" in await api.audit_actions("approval_request")

    again = await api.user.post(f"/api/v1/approvals/{made['approval_id']}/approve")
    assert again.status_code == 409 and "approved" in again.json()["message"]


async def test_approve_in_server_keygen_mode_queues_the_job(database_url: str, tmp_path: Path) -> None:
    api, lifespan = await start_api(make_settings(database_url, tmp_path / "srv", keygen_mode="server"))
    try:
        made = await request(api)
        assert (await api.admin.post(f"/api/v1/approvals/{made['approval_id']}/approve")).status_code == 200
        assert (await api.admin.get(f"/api/v1/jobs/{made['job_id']}")).json()["status"] == "Pending"
    finally:
        await stop_api(api, lifespan)


async def test_requester_cannot_decide(api: Api) -> None:
    made = await request(api)
    for verb in ("approve", "reject"):
        response = await api.user.post(f"/api/v1/approvals/{made['approval_id']}/{verb}", json={"note": "me"})
        assert response.status_code == 403
        assert "two-person integrity" in response.json()["message"]
    approval = (await api.admin.get(f"/api/v1/approvals/{made['approval_id']}")).json()
    assert approval["state"] == "pending"
    assert (await api.admin.get(f"/api/v1/jobs/{made['job_id']}")).json()["status"] == "AwaitingApproval"


async def test_reject_cancels_job_and_restores_certificate(api: Api) -> None:
    made = await request(api)
    response = await api.admin.post(f"/api/v1/approvals/{made['approval_id']}/reject", json={"note": "too broad"})
    assert response.status_code == 200
    assert response.json() == {"id": made["approval_id"], "decided_by": "alice", "action": "rejected"}
    approval = (await api.admin.get(f"/api/v1/approvals/{made['approval_id']}")).json()
    assert approval["state"] == "rejected" and approval["decision_note"] == "too broad"
    job = (await api.admin.get(f"/api/v1/jobs/{made['job_id']}")).json()
    assert job["status"] == "Cancelled" and "too broad" in job["last_error"]
    assert await cert_status(api, made["cert"]["id"]) == "Active"
    assert "approval_rejected" in await api.audit_actions("approval_request")
    assert (await api.admin.post(f"/api/v1/approvals/{made['approval_id']}/reject")).status_code == 409


async def test_decisions_bad_input(api: Api) -> None:
    made = await request(api)
    path = f"/api/v1/approvals/{made['approval_id']}/approve"
    assert (await api.admin.post(path, json={"note": "x", "extra": 1})).status_code == 400
    assert (await api.admin.post(path, json={"note": 5})).status_code == 400
    assert (await api.admin.post("/api/v1/approvals/ar-missing/approve")).status_code == 404
    assert (await api.admin.post("/api/v1/approvals/ar-missing/reject")).status_code == 404
    assert (await api.anon.post(path)).status_code == 401
    assert (await api.admin.get(f"/api/v1/approvals/{made['approval_id']}")).json()["state"] == "pending"


async def test_cancelled_job_closes_its_request(api: Api) -> None:
    made = await request(api)
    assert (await api.admin.post(f"/api/v1/jobs/{made['job_id']}/cancel")).status_code == 200
    approval = (await api.admin.get(f"/api/v1/approvals/{made['approval_id']}")).json()
    assert approval["state"] == "rejected" and "cancelled" in approval["decision_note"]
    assert (await api.admin.post(f"/api/v1/approvals/{made['approval_id']}/approve")).status_code == 409


async def test_revoking_the_certificate_closes_its_request(api: Api) -> None:
    made = await request(api)
    revoke = await api.admin.post(f"/api/v1/certificates/{made['cert']['id']}/revoke", json={"reason": "superseded"})
    assert revoke.status_code == 200
    approval = (await api.admin.get(f"/api/v1/approvals/{made['approval_id']}")).json()
    assert approval["state"] == "rejected"
    assert (await api.admin.get(f"/api/v1/jobs/{made['job_id']}")).json()["status"] == "Cancelled"
    assert await cert_status(api, made["cert"]["id"]) == "Revoked"


async def test_without_named_keys_approvals_need_authentication(database_url: str, tmp_path: Path) -> None:
    # With CERTCTL_AUTH_TYPE=none every caller is "anonymous": nobody can vouch for a decision.
    settings = make_settings(database_url, tmp_path / "noauth", auth_type="none", api_keys=())
    api, lifespan = await start_api(settings)
    try:
        made = await request(api, client=api.anon)
        response = await api.anon.post(f"/api/v1/approvals/{made['approval_id']}/approve")
        assert response.status_code == 401
    finally:
        await stop_api(api, lifespan)


async def test_the_certificates_owner_cannot_approve_through_the_approvals_api_either(api: Api) -> None:
    team = await factories.team(api.admin)
    owner = await factories.owner(api.admin, name="alice", email="alice@example.com", team_id=team["id"])
    asked = await request(api, owner_id=owner["id"], team_id=owner["team_id"])  # bob asks; alice owns it
    response = await api.admin.post(f"/api/v1/approvals/{asked['approval_id']}/approve", json={"note": "mine"})
    assert response.status_code == 403 and "owner" in response.json()["message"]
    assert (await api.admin.get(f"/api/v1/approvals/{asked['approval_id']}")).json()["state"] == "pending"
