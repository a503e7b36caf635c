"""Compliance policy rules over HTTP: CRUD, config validation per type, violations listing, auth and audit."""

from __future__ import annotations

import pytest

from certctl.domain.actor import Actor
from certctl.services import policy_engine
from tests import factories
from tests.conftest import Api
from tests.test_policy_engine import insert_certificate


async def test_policy_rule_crud_and_audit(api: Api) -> None:
    created = await factories.policy_rule(
        api.admin, name="domains", type="AllowedDomains", config={"allowed_domains": ["*.Example.com"]}
    )
    assert created["id"].startswith("rule-")
    assert created["severity"] == "Warning" and created["enabled"] is True
    assert created["config"] == {"allowed_domains": ["*.example.com"]}

    got = await api.user.get(f"/api/v1/policies/{created['id']}")
    assert got.status_code == 200 and got.json() == created
    listed = (await api.admin.get("/api/v1/policies")).json()
    assert listed["total"] == 1 and listed["data"] == [created]

    updated = await api.admin.put(f"/api/v1/policies/{created['id']}", json={"severity": "critical", "enabled": False})
    assert updated.status_code == 200
    assert updated.json()["severity"] == "Critical" and updated.json()["enabled"] is False
    assert updated.json()["config"] == created["config"]

    retyped = await api.admin.put(
        f"/api/v1/policies/{created['id']}", json={"type": "RenewalLeadTime", "config": {}}
    )
    assert retyped.status_code == 200
    assert retyped.json()["type"] == "RenewalLeadTime" and retyped.json()["config"] == {"lead_time_days": 30}

    assert (await api.admin.delete(f"/api/v1/policies/{created['id']}")).status_code == 204
    assert (await api.admin.get(f"/api/v1/policies/{created['id']}")).status_code == 404
    assert set(await api.audit_actions("policy_rule")) == {
        "policy_rule_created", "policy_rule_updated", "policy_rule_deleted",
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"type": "AllowedIssuers", "config": {}}, "name"),
        ({"name": "x", "config": {}}, "type"),
        ({"name": "x", "type": "MaxKeySize", "config": {}}, "type"),
        ({"name": "x", "type": "AllowedIssuers", "config": {}}, "allowed_issuer_ids: is required"),
        ({"name": "x", "type": "AllowedIssuers", "config": {"allowed_issuer_ids": "iss-local"}}, "allowed_issuer_ids"),
        ({"name": "x", "type": "AllowedDomains", "config": {"allowed_domains": ["a b"]}}, "not a domain name"),
        ({"name": "x", "type": "CertificateLifetime", "config": {"max_days": 0}}, "max_days"),
        ({"name": "x", "type": "RenewalLeadTime", "config": {"lead": 3}}, "lead: is not a known key"),
        ({"name": "x", "type": "AllowedEnvironments", "config": ["prod"]}, "config"),
        ({"name": "x", "type": "AllowedEnvironments", "config": {"allowed": ["p"]}, "severity": "Fatal"}, "severity"),
        ({"name": "x", "type": "AllowedEnvironments", "config": {"allowed": ["p"]}, "extra": 1}, "extra"),
    ],
)
async def test_policy_rule_bad_input(api: Api, body: dict[str, object], expected: str) -> None:
    response = await api.admin.post("/api/v1/policies", json=body)
    assert response.status_code == 400, response.text
    assert expected in response.json()["message"]
    assert (await api.admin.get("/api/v1/policies")).json()["total"] == 0, "bad input left rows behind"


async def test_policy_rule_update_validates_against_the_resulting_type(api: Api) -> None:
    created = await factories.policy_rule(api.admin)  # AllowedEnvironments {"allowed": ["prod"]}
    # Changing only the type would leave a config the new type cannot read.
    retype = await api.admin.put(f"/api/v1/policies/{created['id']}", json={"type": "AllowedIssuers"})
    assert retype.status_code == 400 and "AllowedIssuers" in retype.json()["message"]
    bad_config = await api.admin.put(f"/api/v1/policies/{created['id']}", json={"config": {"allowed": []}})
    assert bad_config.status_code == 400 and "allowed" in bad_config.json()["message"]
    unchanged = (await api.admin.get(f"/api/v1/policies/{created['id']}")).json()
    assert unchanged == created
    assert (await api.admin.put("/api/v1/policies/nope", json={"enabled": False})).status_code == 404
    assert (await api.admin.delete("/api/v1/policies/nope")).status_code == 404


async def test_policy_rule_duplicate_name(api: Api) -> None:
    await factories.policy_rule(api.admin, name="env")
    clash = await api.admin.post(
        "/api/v1/policies", json={"name": "env", "type": "AllowedEnvironments", "config": {"allowed": ["x"]}}
    )
    assert clash.status_code == 409 and "env" in clash.json()["message"]


async def test_violations_listing(api: Api) -> None:
    rule = await factories.policy_rule(api.admin, name="prod only", severity="Error")
    other = await factories.policy_rule(
        api.admin, type="RequiredMetadata", config={"required_keys": ["cost-center"]}
    )
    ctx = api.services.ctx
    for n in range(3):
        certificate = await insert_certificate(api, id=f"mc-{n}", name=f"c{n}", environment="dev")
        async with ctx.db.transaction() as conn:
            await policy_engine.evaluate_certificate(conn, ctx, Actor.system(), certificate)

    first = await api.user.get(f"/api/v1/policies/{rule['id']}/violations", params={"per_page": 2})
    assert first.status_code == 200
    page = first.json()
    assert page["total"] == 3 and page["page"] == 1 and page["per_page"] == 2 and len(page["data"]) == 2
    violation = page["data"][0]
    assert set(violation) == {"id", "certificate_id", "rule_id", "message", "severity", "created_at"}
    assert violation["rule_id"] == rule["id"] and violation["severity"] == "Error"
    assert "prod only" in violation["message"] and "dev" in violation["message"]
    rest = (await api.user.get(f"/api/v1/policies/{rule['id']}/violations", params={"per_page": 2, "page": 2})).json()
    seen = {v["certificate_id"] for v in page["data"] + rest["data"]}
    assert seen == {"mc-0", "mc-1", "mc-2"}

    others = (await api.user.get(f"/api/v1/policies/{other['id']}/violations")).json()
    assert others["total"] == 3 and all(v["rule_id"] == other["id"] for v in others["data"])

    # Deleting a rule removes its findings with it.
    assert (await api.admin.delete(f"/api/v1/policies/{other['id']}")).status_code == 204
    assert len(await api.services.policies.violations_for_certificate("mc-0")) == 1

    assert (await api.user.get("/api/v1/policies/nope/violations")).status_code == 404
    bad_page = await api.user.get(f"/api/v1/policies/{rule['id']}/violations", params={"per_page": 501})
    assert bad_page.status_code == 400


async def test_policy_auth(api: Api) -> None:
    assert (await api.anon.get("/api/v1/policies")).status_code == 401
    assert (await api.anon.get("/api/v1/policies/x/violations")).status_code == 401
    body = {"name": "x", "type": "AllowedEnvironments", "config": {"allowed": ["prod"]}}
    assert (await api.anon.post("/api/v1/policies", json=body)).status_code == 401
    assert (await api.user.post("/api/v1/policies", json=body)).status_code == 201
