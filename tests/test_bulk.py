"""Bulk revoke (generic and EST-only), bulk renew and bulk reassign."""

from __future__ import annotations

from typing import Any

from tests import factories
from tests.conftest import Api


async def statuses(api: Api, *cert_ids: str) -> list[str]:
    from certctl.store import jobs_repo

    out = []
    async with api.services.ctx.db.read() as conn:
        for cert_id in cert_ids:
            row = await jobs_repo.get_certificate(conn, cert_id)
            assert row is not None
            out.append(str(row["status"]))
    return out


async def cert_field(api: Api, cert_id: str, field: str) -> Any:
    from certctl.store import jobs_repo

    async with api.services.ctx.db.read() as conn:
        row = await jobs_repo.get_certificate(conn, cert_id)
    assert row is not None
    return row[field]


async def audit_events(api: Api, action: str) -> list[dict[str, Any]]:
    await api.services.audit_sink.flush()
    response = await api.admin.get("/api/v1/audit", params={"action": action, "per_page": 500})
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def owned_set(api: Api) -> tuple[dict[str, Any], dict[str, Any]]:
    team = await factories.team(api.admin)
    owner = await factories.owner(api.admin, team_id=team["id"])
    return team, owner


# ---- bulk revoke -----------------------------------------------------------------------------------

async def test_bulk_revoke_by_owner(api: Api) -> None:
    team, owner = await owned_set(api)
    mine = {"owner_id": owner["id"], "team_id": team["id"]}
    a = await factories.seed_certificate(api, **mine)
    b = await factories.seed_certificate(api, **mine)
    already = await factories.seed_certificate(api, status="Revoked", **mine)
    archived = await factories.seed_certificate(api, status="Archived", **mine)
    other = await factories.seed_certificate(api)
    renewal = (await api.admin.post(f"/api/v1/certificates/{a['id']}/renew")).json()["job_id"]

    response = await api.admin.post(
        "/api/v1/certificates/bulk-revoke", json={"owner_id": owner["id"], "reason": "cessation_of_operation"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "total_matched": 4, "total_revoked": 2, "total_skipped": 2, "total_failed": 0, "errors": [],
    }
    assert await statuses(api, a["id"], b["id"], already["id"], archived["id"], other["id"]) == [
        "Revoked", "Revoked", "Revoked", "Archived", "Active",
    ]
    assert await cert_field(api, b["id"], "revocation_reason") == "cessationOfOperation"
    assert (await api.admin.get(f"/api/v1/jobs/{renewal}")).json()["status"] == "Cancelled"

    summary = await audit_events(api, "bulk_revocation_initiated")
    assert len(summary) == 1 and summary[0]["resource_id"] == "bulk"
    assert summary[0]["details"]["total_revoked"] == 2 and summary[0]["details"]["owner_id"] == owner["id"]
    assert len(await audit_events(api, "certificate_revoked")) == 2


async def test_bulk_revoke_ids_intersect_with_selectors_and_report_unknown_ids(api: Api) -> None:
    team, owner = await owned_set(api)
    inside = await factories.seed_certificate(api, owner_id=owner["id"], team_id=team["id"])
    outside = await factories.seed_certificate(api)
    response = await api.admin.post("/api/v1/certificates/bulk-revoke", json={
        "reason": "superseded", "owner_id": owner["id"],
        "certificate_ids": [inside["id"], outside["id"], "mc-ghost"],
    })
    body = response.json()
    assert body["total_matched"] == 1 and body["total_revoked"] == 1
    assert body["total_failed"] == 1 and body["errors"] == [
        {"certificate_id": "mc-ghost", "error": "certificate 'mc-ghost' not found"}
    ]
    assert await statuses(api, inside["id"], outside["id"]) == ["Revoked", "Active"]


async def test_bulk_revoke_by_agent_team_issuer_profile(api: Api) -> None:
    agent = await factories.seed_agent(api)
    target = await factories.seed_target(api, agent)
    on_agent = await factories.seed_certificate(api)
    await factories.seed_mapping(api, on_agent["id"], target)
    elsewhere = await factories.seed_certificate(api)
    body = {"agent_id": agent, "reason": "unspecified"}
    response = await api.admin.post("/api/v1/certificates/bulk-revoke", json=body)
    assert response.json()["total_revoked"] == 1
    assert await statuses(api, on_agent["id"], elsewhere["id"]) == ["Revoked", "Active"]

    profile = await factories.seed_profile(api)
    profiled = await factories.seed_certificate(api, certificate_profile_id=profile)
    response = await api.admin.post("/api/v1/certificates/bulk-revoke", json={
        "profile_id": profile, "issuer_id": "iss-local", "team_id": profiled["team_id"], "reason": "superseded",
    })
    assert response.json()["total_matched"] == 1 and response.json()["total_revoked"] == 1
    assert await statuses(api, elsewhere["id"]) == ["Active"]


async def test_bulk_revoke_guards(api: Api) -> None:
    cert = await factories.seed_certificate(api)
    path = "/api/v1/certificates/bulk-revoke"
    as_user = await api.user.post(path, json={"certificate_ids": [cert["id"]], "reason": "superseded"})
    assert as_user.status_code == 403
    anon = await api.anon.post(path, json={"certificate_ids": [cert["id"]], "reason": "superseded"})
    assert anon.status_code == 401
    no_selector = await api.admin.post(path, json={"reason": "superseded"})
    assert no_selector.status_code == 400 and "selector" in no_selector.json()["message"]
    assert (await api.admin.post(path, json={"reason": "superseded", "certificate_ids": []})).status_code == 400
    no_reason = await api.admin.post(path, json={"certificate_ids": [cert["id"]]})
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["message"]
    bad_reason = await api.admin.post(path, json={"certificate_ids": [cert["id"]], "reason": "oops"})
    assert bad_reason.status_code == 400 and "keyCompromise" in bad_reason.json()["message"]
    assert (await api.admin.post(path, json={"certificate_ids": cert["id"], "reason": "superseded"})).status_code == 400
    unknown_field = await api.admin.post(path, json={"certificate_ids": [cert["id"]], "reason": "superseded", "x": 1})
    assert unknown_field.status_code == 400
    many = [f"c{i}" for i in range(10_001)]
    too_many = await api.admin.post(path, json={"certificate_ids": many, "reason": "superseded"})
    assert too_many.status_code == 400
    assert await statuses(api, cert["id"]) == ["Active"], "a refused call changed something"
    assert await audit_events(api, "bulk_revocation_initiated") == []


async def test_est_bulk_revoke_touches_only_est_certificates(api: Api) -> None:
    team, owner = await owned_set(api)
    mine = {"owner_id": owner["id"], "team_id": team["id"]}
    est = await factories.seed_certificate(api, source="EST", **mine)
    acme = await factories.seed_certificate(api, source="ACME", **mine)
    path = "/api/v1/est/certificates/bulk-revoke"
    assert (await api.user.post(path, json={"owner_id": owner["id"], "reason": "superseded"})).status_code == 403
    assert (await api.admin.post(path, json={"reason": "superseded"})).status_code == 400

    response = await api.admin.post(path, json={"owner_id": owner["id"], "reason": "keyCompromise"})
    assert response.status_code == 200
    assert response.json()["total_matched"] == 1 and response.json()["total_revoked"] == 1
    assert await statuses(api, est["id"], acme["id"]) == ["Revoked", "Active"]
    assert len(await audit_events(api, "est_bulk_revoke")) == 1


# ---- bulk renew -----------------------------------------------------------------------------------

async def test_bulk_renew(api: Api) -> None:
    team, owner = await owned_set(api)
    mine = {"owner_id": owner["id"], "team_id": team["id"]}
    a = await factories.seed_certificate(api, **mine)
    b = await factories.seed_certificate(api, status="Pending", expires_at=None, **mine)
    skipped = [await factories.seed_certificate(api, status=s, **mine)
               for s in ("Archived", "Revoked", "Expired", "RenewalInProgress")]

    response = await api.user.post("/api/v1/certificates/bulk-renew", json={"owner_id": owner["id"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["total_matched"], body["total_enqueued"], body["total_skipped"], body["total_failed"]) == (6, 2, 4, 0)
    enqueued = {e["certificate_id"]: e["job_id"] for e in body["enqueued_jobs"]}
    assert set(enqueued) == {a["id"], b["id"]}
    assert (await api.admin.get(f"/api/v1/jobs/{enqueued[b['id']]}")).json()["type"] == "Issuance"
    assert await statuses(api, a["id"], b["id"], *(c["id"] for c in skipped)) == [
        "RenewalInProgress", "RenewalInProgress", "Archived", "Revoked", "Expired", "RenewalInProgress",
    ]
    assert len(await audit_events(api, "bulk_renewal_initiated")) == 1
    assert len(await audit_events(api, "certificate_renewal_triggered")) == 2


async def test_bulk_renew_keeps_going_past_a_failure_and_keeps_the_approval_gate(api: Api) -> None:
    team, owner = await owned_set(api)
    mine = {"owner_id": owner["id"], "team_id": team["id"]}
    stuck = await factories.seed_certificate(api, **mine)
    # An open renewal job on an Active certificate: renewing it again would run two at once.
    first = (await api.admin.post(f"/api/v1/certificates/{stuck['id']}/renew")).json()["job_id"]
    from certctl.store import jobs_repo

    async with api.services.ctx.db.transaction() as conn:
        await jobs_repo.update_certificate(conn, stuck["id"], {"status": "Active"})
    profile = await factories.seed_profile(api, requires_approval=True)
    gated = await factories.seed_certificate(api, certificate_profile_id=profile, **mine)

    response = await api.user.post("/api/v1/certificates/bulk-renew", json={"owner_id": owner["id"]})
    body = response.json()
    assert body["total_matched"] == 2 and body["total_enqueued"] == 1 and body["total_failed"] == 1
    assert body["errors"][0]["certificate_id"] == stuck["id"] and "in progress" in body["errors"][0]["error"]
    job_id = body["enqueued_jobs"][0]["job_id"]
    assert body["enqueued_jobs"][0]["certificate_id"] == gated["id"]
    assert (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "AwaitingApproval"
    assert (await api.admin.get(f"/api/v1/jobs/{first}")).json()["status"] == "AwaitingCSR"


async def test_bulk_renew_guards(api: Api) -> None:
    path = "/api/v1/certificates/bulk-renew"
    assert (await api.user.post(path, json={})).status_code == 400
    assert (await api.user.post(path, json={"owner_id": ""})).status_code == 400
    assert (await api.user.post(path, json={"reason": "superseded", "owner_id": "o"})).status_code == 400
    assert (await api.anon.post(path, json={"owner_id": "o"})).status_code == 401
    nothing = await api.user.post(path, json={"owner_id": "o-nobody"})
    assert nothing.status_code == 200 and nothing.json()["total_matched"] == 0


# ---- bulk reassign --------------------------------------------------------------------------------

async def test_bulk_reassign(api: Api) -> None:
    new_team, new_owner = await owned_set(api)
    a = await factories.seed_certificate(api)
    b = await factories.seed_certificate(api)
    already = await factories.seed_certificate(api, owner_id=new_owner["id"], team_id=new_team["id"])

    response = await api.user.post("/api/v1/certificates/bulk-reassign", json={
        "certificate_ids": [a["id"], b["id"], already["id"], "mc-ghost"], "owner_id": new_owner["id"],
        "team_id": new_team["id"],
    })
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["total_matched"], body["total_reassigned"], body["total_skipped"], body["total_failed"]) == (
        3, 2, 1, 1,
    )
    assert body["errors"][0]["certificate_id"] == "mc-ghost"
    for cert in (a, b):
        assert await cert_field(api, cert["id"], "owner_id") == new_owner["id"]
        assert await cert_field(api, cert["id"], "team_id") == new_team["id"]
    assert len(await audit_events(api, "certificate_reassigned")) == 2
    assert len(await audit_events(api, "bulk_reassignment_initiated")) == 1

    # Without team_id only the owner changes.
    other_owner = await factories.owner(api.admin)
    response = await api.user.post("/api/v1/certificates/bulk-reassign", json={
        "certificate_ids": [a["id"]], "owner_id": other_owner["id"], "team_id": "",
    })
    assert response.json()["total_reassigned"] == 1
    assert await cert_field(api, a["id"], "team_id") == new_team["id"]


async def test_bulk_reassign_guards(api: Api) -> None:
    cert = await factories.seed_certificate(api)
    path = "/api/v1/certificates/bulk-reassign"
    unknown_owner = await api.user.post(path, json={"certificate_ids": [cert["id"]], "owner_id": "o-nobody"})
    assert unknown_owner.status_code == 400 and "o-nobody" in unknown_owner.json()["message"]
    owner = await factories.owner(api.admin)
    unknown_team = await api.user.post(
        path, json={"certificate_ids": [cert["id"]], "owner_id": owner["id"], "team_id": "t-nobody"}
    )
    assert unknown_team.status_code == 400 and "t-nobody" in unknown_team.json()["message"]
    assert (await api.user.post(path, json={"owner_id": owner["id"]})).status_code == 400
    assert (await api.user.post(path, json={"certificate_ids": [], "owner_id": owner["id"]})).status_code == 400
    assert (await api.user.post(path, json={"certificate_ids": [cert["id"]]})).status_code == 400
    assert (await api.user.post(path, json={"certificate_ids": [cert["id"]], "owner_id": owner["id"],
                                            "profile_id": "p"})).status_code == 400
    anon = await api.anon.post(path, json={"certificate_ids": [cert["id"]], "owner_id": owner["id"]})
    assert anon.status_code == 401
    assert await cert_field(api, cert["id"], "owner_id") == cert["owner_id"]


async def test_bulk_revoke_of_many_ids_in_chunks(api: Api) -> None:
    team, owner = await owned_set(api)
    certs = [await factories.seed_certificate(api, owner_id=owner["id"], team_id=team["id"]) for _ in range(5)]
    ids = [c["id"] for c in certs] + [f"mc-missing-{i}" for i in range(2500)]  # spans several IN chunks
    body = {"certificate_ids": ids, "reason": "superseded"}
    response = await api.admin.post("/api/v1/certificates/bulk-revoke", json=body)
    result = response.json()
    assert result["total_matched"] == 5 and result["total_revoked"] == 5 and result["total_failed"] == 2500
