"""Issuers: CRUD, type and per-type config validation, conflicts, the self-test, auth and audit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certctl.store import rows
from certctl.store.schema import issuers
from tests import factories
from tests.conftest import Api

ACME = {"directory_url": "https://acme.example.com/directory", "email": "pki@example.com"}


def _write_pair(directory: Path, *, ca: bool = True, matching: bool = True) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    stored_key = key if matching else ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(stored_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return str(cert_path), str(key_path)


async def test_issuer_crud_and_audit(api: Api) -> None:
    created = await factories.issuer(api.admin, name="Prod ACME", type="acme", config=ACME)
    assert created["id"].startswith("issuer-")
    assert created["type"] == "ACME"  # any case in, canonical out
    assert created["enabled"] is True and created["test_status"] == "untested"
    assert created["source"] == "database" and created["last_tested_at"] is None

    got = await api.admin.get(f"/api/v1/issuers/{created['id']}")
    assert got.status_code == 200 and got.json() == created

    listed = (await api.admin.get("/api/v1/issuers")).json()
    assert {i["id"] for i in listed["data"]} == {"iss-local", created["id"]}  # iss-local is seeded
    assert listed["total"] == 2 and listed["per_page"] == 50

    updated = await api.admin.put(f"/api/v1/issuers/{created['id']}", json={"enabled": False, "name": "Old ACME"})
    assert updated.status_code == 200
    assert updated.json()["enabled"] is False and updated.json()["name"] == "Old ACME"
    assert updated.json()["config"] == ACME

    assert (await api.admin.delete(f"/api/v1/issuers/{created['id']}")).status_code == 204
    assert (await api.admin.get(f"/api/v1/issuers/{created['id']}")).status_code == 404
    assert await api.audit_actions("issuer") == ["issuer_deleted", "issuer_updated", "issuer_created"]


async def test_issuer_type_spellings_and_client_id(api: Api) -> None:
    for spelling, canonical in (("generic_ca", "GenericCA"), ("GENERICCA", "GenericCA"), ("ejbca", "EJBCA")):
        config = {"api_url": "https://ejbca.example.com", "ca_name": "Issuing"} if canonical == "EJBCA" else {}
        created = await factories.issuer(api.admin, type=spelling, config=config)
        assert created["type"] == canonical
    own = await factories.issuer(api.admin, id="iss-own")
    assert own["id"] == "iss-own"
    assert (await api.admin.post("/api/v1/issuers", json={"id": "iss-own", "name": "x", "type": "GenericCA"})
            ).status_code == 409


async def test_issuer_bad_input(api: Api) -> None:
    cases = [
        ({"type": "GenericCA"}, "name"),
        ({"name": "x"}, "type"),
        ({"name": "x", "type": "Verisign"}, "type"),
        ({"name": "x", "type": "GenericCA", "config": "nope"}, "config"),
        ({"name": "x", "type": "GenericCA", "colour": "red"}, "colour"),
        ({"name": "x", "type": "GenericCA", "hierarchy_mode": "forest"}, "hierarchy_mode"),
        ({"name": "x", "type": "ACME", "config": {"email": "a@example.com"}}, "directory_url is required"),
        ({"name": "x", "type": "ACME", "config": {**ACME, "directory_url": "http://acme.example.com"}},
         "directory_url must be an https:// URL"),
        ({"name": "x", "type": "ACME", "config": {**ACME, "email": "nobody"}}, "email must be an e-mail address"),
        ({"name": "x", "type": "ACME", "config": {**ACME, "challenge_type": "tls-alpn-01"}}, "challenge_type"),
        ({"name": "x", "type": "StepCA", "config": {}}, "ca_url (or url) is required"),
        ({"name": "x", "type": "StepCA", "config": {"url": "https://step.example.com"}}, "provisioner_name"),
        ({"name": "x", "type": "VaultPKI", "config": {"address": "https://v.example.com", "mount": "pki",
                                                      "role": "web"}}, "token is required"),
        ({"name": "x", "type": "GenericCA", "config": {"validity_days": 0}}, "validity_days"),
        ({"name": "x", "type": "GenericCA", "config": {"ca_cert_path": "/tmp/ca.pem"}}, "set together"),
    ]
    for body, expected in cases:
        response = await api.admin.post("/api/v1/issuers", json=body)
        assert response.status_code == 400, (body, response.text)
        assert expected in response.json()["message"], (body, response.json())
    ok = await api.admin.post("/api/v1/issuers", json={"name": "step", "type": "StepCA", "config": {
        "url": "https://step.example.com", "provisioner": "admin"}})
    assert ok.status_code == 201
    vault = await api.admin.post("/api/v1/issuers", json={"name": "vault", "type": "VaultPKI", "config": {
        "address": "http://127.0.0.1:8200", "mount": "pki", "role": "web", "token": "hvs.x"}})
    assert vault.status_code == 201
    assert (await api.admin.get("/api/v1/issuers")).json()["total"] == 3, "bad input left rows behind"

    for method in ("get", "put", "delete"):
        kwargs = {"json": {"name": "x"}} if method == "put" else {}
        assert (await getattr(api.admin, method)("/api/v1/issuers/nope", **kwargs)).status_code == 404
    assert (await api.admin.post("/api/v1/issuers/nope/test")).status_code == 404


async def test_issuer_update_validates_type_and_config_together(api: Api) -> None:
    created = await factories.issuer(api.admin)
    # GenericCA -> ACME without the ACME keys is refused; with them it is accepted.
    refused = await api.admin.put(f"/api/v1/issuers/{created['id']}", json={"type": "acme"})
    assert refused.status_code == 400 and "directory_url is required" in refused.json()["message"]
    accepted = await api.admin.put(f"/api/v1/issuers/{created['id']}", json={"type": "acme", "config": ACME})
    assert accepted.status_code == 200 and accepted.json()["type"] == "ACME"
    null = await api.admin.put(f"/api/v1/issuers/{created['id']}", json={"config": None})
    assert null.status_code == 400
    unknown = await api.admin.put(f"/api/v1/issuers/{created['id']}", json={"source": "env"})
    assert unknown.status_code == 400


async def test_issuer_config_that_cannot_be_stored_is_400(api: Api) -> None:
    """JSON puts no bound on integers; the stored (and sealed) config is 64-bit. Found by the API fuzz test."""
    body = {"name": "huge", "type": "GenericCA", "config": {"nested": {"n": 645499449901889872042481781047280}}}
    before = (await api.admin.get("/api/v1/issuers")).json()["total"]
    refused = await api.admin.post("/api/v1/issuers", json=body)
    assert refused.status_code == 400
    assert "config" in refused.json()["message"] and "cannot be stored" in refused.json()["message"]
    assert refused.json()["request_id"]
    assert (await api.admin.get("/api/v1/issuers")).json()["total"] == before
    created = await factories.issuer(api.admin)
    update = await api.admin.put(f"/api/v1/issuers/{created['id']}", json={"config": {"n": -(2 ** 70)}})
    assert update.status_code == 400
    assert (await api.admin.get(f"/api/v1/issuers/{created['id']}")).json()["config"] == created["config"]
    # The same bound on every free-form JSON object a request may carry.
    for path, payload in (
        ("/api/v1/targets", {"name": "t", "type": "NGINX", "agent_id": "a", "config": {"n": 2 ** 64}}),
        ("/api/v1/policies", {"name": "p", "type": "AllowedDomains", "config": {"n": 2 ** 64}}),
    ):
        answer = await api.admin.post(path, json=payload)
        assert answer.status_code == 400 and "cannot be stored" in answer.text, answer.text


async def test_issuer_duplicate_name_is_409(api: Api) -> None:
    await factories.issuer(api.admin, name="dup")
    clash = await api.admin.post("/api/v1/issuers", json={"name": "dup", "type": "GenericCA"})
    assert clash.status_code == 409 and "an issuer named 'dup'" in clash.json()["message"]
    other = await factories.issuer(api.admin, name="other")
    rename = await api.admin.put(f"/api/v1/issuers/{other['id']}", json={"name": "dup"})
    assert rename.status_code == 409


async def test_issuer_in_use_cannot_be_deleted(api: Api) -> None:
    used = await factories.issuer(api.admin)
    await factories.certificate(api.admin, issuer_id=used["id"])
    await factories.certificate(api.admin, issuer_id=used["id"])
    response = await api.admin.delete(f"/api/v1/issuers/{used['id']}")
    assert response.status_code == 409
    assert "2 certificates" in response.json()["message"]
    assert (await api.admin.get(f"/api/v1/issuers/{used['id']}")).status_code == 200


async def test_issuer_auth(api: Api) -> None:
    assert (await api.anon.get("/api/v1/issuers")).status_code == 401
    assert (await api.anon.post("/api/v1/issuers", json={"name": "x", "type": "GenericCA"})).status_code == 401
    assert (await api.anon.post("/api/v1/issuers/iss-local/test")).status_code == 401
    # The reference gates no issuer route on admin: any API key may manage issuers.
    created = await factories.issuer(api.user)
    assert (await api.user.delete(f"/api/v1/issuers/{created['id']}")).status_code == 204
    events = (await api.admin.get("/api/v1/audit", params={"resource_type": "issuer"})).json()["data"]
    assert {e["actor"] for e in events} == {"bob"}


async def test_self_signed_local_ca_test(api: Api) -> None:
    response = await api.admin.post("/api/v1/issuers/iss-local/test")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "success" and "self-signed" in response.json()["message"]
    got = (await api.admin.get("/api/v1/issuers/iss-local")).json()
    assert got["test_status"] == "success" and got["last_tested_at"] is not None
    assert await api.audit_actions("issuer") == ["issuer_tested"]


async def test_local_ca_key_pair_test(api: Api, tmp_path: Path) -> None:
    good_dir, bad_dir, leaf_dir = tmp_path / "good", tmp_path / "bad", tmp_path / "leaf"
    for d in (good_dir, bad_dir, leaf_dir):
        d.mkdir()
    cert, key = _write_pair(good_dir)
    good = await factories.issuer(api.admin, config={"ca_cert_path": cert, "ca_key_path": key})
    ok = await api.admin.post(f"/api/v1/issuers/{good['id']}/test")
    assert ok.status_code == 200 and ok.json()["status"] == "success", ok.text

    cert, key = _write_pair(bad_dir, matching=False)
    mismatched = await factories.issuer(api.admin, config={"ca_cert_path": cert, "ca_key_path": key})
    failed = await api.admin.post(f"/api/v1/issuers/{mismatched['id']}/test")
    assert failed.status_code == 400 and "does not match" in failed.json()["message"]
    assert (await api.admin.get(f"/api/v1/issuers/{mismatched['id']}")).json()["test_status"] == "failed"

    cert, key = _write_pair(leaf_dir, ca=False)
    leaf = await factories.issuer(api.admin, config={"ca_cert_path": cert, "ca_key_path": key})
    not_ca = await api.admin.post(f"/api/v1/issuers/{leaf['id']}/test")
    assert not_ca.status_code == 400 and "not a CA" in not_ca.json()["message"]

    missing = await factories.issuer(api.admin, config={"ca_cert_path": str(tmp_path / "none.pem"),
                                                        "ca_key_path": key})
    unreadable = await api.admin.post(f"/api/v1/issuers/{missing['id']}/test")
    assert unreadable.status_code == 400 and "cannot be read" in unreadable.json()["message"]

    actions = await api.audit_actions("issuer")
    assert actions.count("issuer_tested") == 4


async def test_remote_issuer_test_checks_stored_config(api: Api) -> None:
    # Types without a connector check their config only (ACME issuers contact the CA: test_acme_issuer.py).
    step = await factories.issuer(api.admin, type="StepCA", config={"ca_url": "https://ca.example.com",
                                                                     "provisioner_name": "certctl"})
    ok = await api.admin.post(f"/api/v1/issuers/{step['id']}/test")
    assert ok.status_code == 200 and ok.json() == {
        "status": "success", "message": "configuration is complete (the CA itself was not contacted)"}

    # A row written outside the API (e.g. an env seed) with an incomplete config fails its test.
    now = datetime.now(UTC)
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, issuers, {
            "id": "iss-seeded", "name": "seeded", "type": "acme", "config": {"email": "x@example.com"},
            "encrypted_config": None, "created_at": now, "updated_at": now,
        })
    failed = await api.admin.post("/api/v1/issuers/iss-seeded/test")
    assert failed.status_code == 400 and "directory_url is required" in failed.json()["message"]
    assert (await api.admin.get("/api/v1/issuers/iss-seeded")).json()["test_status"] == "failed"


async def test_issuer_pagination(api: Api) -> None:
    for i in range(5):
        await factories.issuer(api.admin, name=f"issuer-{i:02d}")
    page = (await api.admin.get("/api/v1/issuers", params={"per_page": 2, "page": 3})).json()
    assert page["total"] == 6 and page["page"] == 3 and len(page["data"]) == 2
    assert (await api.admin.get("/api/v1/issuers", params={"per_page": 501})).status_code == 400
