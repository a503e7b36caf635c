"""Certificate profiles: CRUD, defaults, validation, delete protection, auth and audit."""

from __future__ import annotations

import pytest

from tests import factories
from tests.conftest import Api
from tests.test_policy_engine import insert_certificate


async def test_profile_defaults_and_crud(api: Api) -> None:
    created = await factories.profile(api.admin, name="web")
    assert created["id"].startswith("prof-")
    assert created["allowed_key_algorithms"] == [
        {"algorithm": "ECDSA", "min_size": 256}, {"algorithm": "RSA", "min_size": 2048},
    ]
    assert created["allowed_ekus"] == ["serverAuth"]
    assert created["max_ttl_seconds"] == 0 and created["acme_auth_mode"] == "trust_authenticated"
    assert created["enabled"] is True and created["requires_approval"] is False and created["must_staple"] is False
    assert created["required_san_patterns"] == [] and created["required_csr_attributes"] == []
    assert created["spiffe_uri_pattern"] == "" and created["description"] == ""

    got = await api.admin.get(f"/api/v1/profiles/{created['id']}")
    assert got.status_code == 200 and got.json() == created

    listed = (await api.user.get("/api/v1/profiles")).json()
    assert listed["total"] == 1 and listed["data"] == [created]

    updated = await api.admin.put(f"/api/v1/profiles/{created['id']}", json={
        "allowed_key_algorithms": [{"algorithm": "rsa", "min_size": 3072}, {"algorithm": "Ed25519"}],
        "allowed_ekus": ["clientAuth", "serverAuth", "clientAuth"],
        "required_san_patterns": [r"^[a-z0-9-]+\.example\.com$"],
        "must_staple": True, "acme_auth_mode": "challenge", "requires_approval": True,
        "required_csr_attributes": ["serialNumber"], "spiffe_uri_pattern": "spiffe://example.org/*",
    })
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert body["allowed_key_algorithms"] == [
        {"algorithm": "RSA", "min_size": 3072}, {"algorithm": "Ed25519", "min_size": 0},
    ]
    assert body["allowed_ekus"] == ["clientAuth", "serverAuth"]
    assert body["must_staple"] and body["requires_approval"] and body["acme_auth_mode"] == "challenge"
    assert body["name"] == "web" and body["updated_at"] >= created["updated_at"]

    assert (await api.admin.delete(f"/api/v1/profiles/{created['id']}")).status_code == 204
    assert (await api.admin.get(f"/api/v1/profiles/{created['id']}")).status_code == 404
    assert set(await api.audit_actions("certificate_profile")) == {
        "certificate_profile_created", "certificate_profile_updated", "certificate_profile_deleted",
    }


async def test_short_lived_profile(api: Api) -> None:
    created = await factories.profile(api.admin, allow_short_lived=True, max_ttl_seconds=900)
    assert created["allow_short_lived"] is True and created["max_ttl_seconds"] == 900
    too_long = await api.admin.put(f"/api/v1/profiles/{created['id']}", json={"max_ttl_seconds": 7200})
    assert too_long.status_code == 400 and "allow_short_lived" in too_long.json()["message"]
    still = (await api.admin.get(f"/api/v1/profiles/{created['id']}")).json()
    assert still["max_ttl_seconds"] == 900


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, "name"),
        ({"name": 5}, "name"),
        ({"name": "x", "allowed_key_algorithms": [{"algorithm": "RSA", "min_size": 1024}]}, "at least 2048"),
        ({"name": "x", "allowed_key_algorithms": [{"algorithm": "ECDSA", "min_size": 128}]}, "at least 256"),
        ({"name": "x", "allowed_key_algorithms": [{"algorithm": "DSA", "min_size": 2048}]}, "algorithm"),
        ({"name": "x", "allowed_key_algorithms": [{"algorithm": "RSA", "bits": 2048}]}, "bits"),
        ({"name": "x", "max_ttl_seconds": -1}, "max_ttl_seconds"),
        ({"name": "x", "allowed_ekus": ["anyPurpose"]}, "allowed_ekus"),
        ({"name": "x", "required_san_patterns": ["([unclosed"]}, "not a valid regular expression"),
        ({"name": "x", "acme_auth_mode": "trust_everyone"}, "acme_auth_mode"),
        ({"name": "x", "allow_short_lived": True, "max_ttl_seconds": 3600}, "allow_short_lived"),
        ({"name": "x", "colour": "red"}, "colour"),
    ],
)
async def test_profile_bad_input(api: Api, body: dict[str, object], expected: str) -> None:
    response = await api.admin.post("/api/v1/profiles", json=body)
    assert response.status_code == 400, response.text
    assert expected in response.json()["message"]
    assert (await api.admin.get("/api/v1/profiles")).json()["total"] == 0, "bad input left rows behind"


async def test_profile_unknown_duplicate_and_null(api: Api) -> None:
    assert (await api.admin.get("/api/v1/profiles/nope")).status_code == 404
    assert (await api.admin.put("/api/v1/profiles/nope", json={"enabled": False})).status_code == 404
    assert (await api.admin.delete("/api/v1/profiles/nope")).status_code == 404
    first = await factories.profile(api.admin, name="dup")
    clash = await api.admin.post("/api/v1/profiles", json={"name": "dup"})
    assert clash.status_code == 409 and "dup" in clash.json()["message"]
    same_id = await api.admin.post("/api/v1/profiles", json={"id": first["id"], "name": "other"})
    assert same_id.status_code == 409
    null = await api.admin.put(f"/api/v1/profiles/{first['id']}", json={"enabled": None})
    assert null.status_code == 400


async def test_profile_in_use_cannot_be_deleted(api: Api) -> None:
    created = await factories.profile(api.admin, id="prof-prod")
    await insert_certificate(api, id="mc-a", name="a", certificate_profile_id="prof-prod")
    await insert_certificate(api, id="mc-b", name="b", certificate_profile_id="prof-prod")
    response = await api.admin.delete(f"/api/v1/profiles/{created['id']}")
    assert response.status_code == 409
    assert "2 certificates" in response.json()["message"]
    assert (await api.admin.get(f"/api/v1/profiles/{created['id']}")).status_code == 200


async def test_profile_auth(api: Api) -> None:
    assert (await api.anon.get("/api/v1/profiles")).status_code == 401
    assert (await api.anon.post("/api/v1/profiles", json={"name": "x"})).status_code == 401
    # Not admin-gated in the contract: any authenticated key may manage profiles.
    assert (await api.user.post("/api/v1/profiles", json={"name": "x"})).status_code == 201


async def test_profile_long_max_ttl_fits_on_both_back_ends(api: Api) -> None:
    # 3e9 s is past a 32-bit column; both back ends must store it (PostgreSQL once refused it).
    response = await api.admin.post("/api/v1/profiles", json={"name": "decades", "max_ttl_seconds": 3_000_000_000})
    assert response.status_code == 201, response.text
    fetched = await api.admin.get(f"/api/v1/profiles/{response.json()['id']}")
    assert fetched.json()["max_ttl_seconds"] == 3_000_000_000
