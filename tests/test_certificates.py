"""Managed certificates: create, read, update, archive, versions, deployments, exports, audit."""

from __future__ import annotations

from typing import Any

from tests import factories
from tests.conftest import Api


async def test_create_and_get(api: Api) -> None:
    cert = await factories.certificate(
        api.admin, name="api-prod", common_name="api.example.com",
        sans=["api.example.com", "*.api.example.com", "10.0.0.1", "ops@example.com", "spiffe://example.org/api"],
        environment="production", tags={"app": "api"},
    )
    assert cert["id"].startswith("cert-")
    assert cert["status"] == "Pending" and cert["expires_at"] is None
    assert cert["issuer_id"] == "iss-local" and cert["renewal_policy_id"] == "rp-default"
    assert cert["target_ids"] == [] and cert["tags"] == {"app": "api"}
    assert cert["certificate_profile_id"] is None

    got = await api.user.get(f"/api/v1/certificates/{cert['id']}")
    assert got.status_code == 200 and got.json() == cert
    assert "certificate_created" in await api.audit_actions("certificate")


async def test_create_requires_auth(api: Api) -> None:
    response = await api.anon.post("/api/v1/certificates", json={"name": "x"})
    assert response.status_code == 401
    assert (await api.anon.get("/api/v1/certificates/x")).status_code == 401


async def _body(api: Api, **overrides: Any) -> dict[str, Any]:
    team = await factories.team(api.admin)
    owner = await factories.owner(api.admin, team_id=team["id"])
    body = {
        "name": factories.unique("cert"), "common_name": "svc.example.com", "owner_id": owner["id"],
        "team_id": team["id"], "issuer_id": "iss-local", "renewal_policy_id": "rp-default",
    }
    body.update(overrides)
    return body


async def test_get_unknown_is_404(api: Api) -> None:
    response = await api.admin.get("/api/v1/certificates/nope")
    assert response.status_code == 404 and "nope" in response.json()["message"]
