"""Managed certificates: create, read, update, archive, versions, deployments, exports, audit."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certctl.domain.ids import new_id
from certctl.store import certificates_repo, rows, schema
from tests import factories
from tests.conftest import Api, make_settings, start_api, stop_api

CERTS = "/api/v1/certificates"


# ---- helpers ------------------------------------------------------------------------------------

def make_chain(common_name: str) -> tuple[str, x509.Certificate, x509.Certificate]:
    """A throwaway CA and a leaf it signed: (leaf PEM + CA PEM, leaf, CA)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = leaf.public_bytes(serialization.Encoding.PEM).decode() + "\n" + ca.public_bytes(
        serialization.Encoding.PEM
    ).decode()
    return pem, leaf, ca


async def add_version(api: Api, certificate_id: str, common_name: str = "svc.example.com",
                      created_at: datetime | None = None) -> dict[str, Any]:
    pem, leaf, _ = make_chain(common_name)
    values = {
        "id": new_id("certver"),
        "certificate_id": certificate_id,
        "serial_number": format(leaf.serial_number, "x"),
        "not_before": leaf.not_valid_before_utc,
        "not_after": leaf.not_valid_after_utc,
        "fingerprint_sha256": hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        "pem_chain": pem,
        "csr_pem": "",
        "key_algorithm": "ECDSA",
        "key_size": 256,
        "created_at": created_at or datetime.now(UTC),
    }
    async with api.services.ctx.db.transaction() as conn:
        await certificates_repo.insert_version(conn, values)
    return values


async def add_target(api: Api, *, retired: bool = False) -> str:
    now = datetime.now(UTC)
    agent_id, target_id = factories.unique("agent-h1"), factories.unique("target-h1")
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, schema.agents, {
            "id": agent_id, "name": agent_id, "hostname": "h", "registered_at": now,
            "created_at": now, "updated_at": now,
        })
        await rows.insert_row(conn, schema.deployment_targets, {
            "id": target_id, "name": target_id, "type": "NGINX", "agent_id": agent_id, "config": {},
            "retired_at": now if retired else None, "created_at": now, "updated_at": now,
        })
    return target_id


async def base_body(api: Api, **overrides: Any) -> dict[str, Any]:
    team = await factories.team(api.admin)
    owner = await factories.owner(api.admin, team_id=team["id"])
    body: dict[str, Any] = {
        "name": factories.unique("cert"), "common_name": "svc.example.com", "owner_id": owner["id"],
        "team_id": team["id"], "issuer_id": "iss-local", "renewal_policy_id": "rp-default",
    }
    body.update(overrides)
    return body


async def cert_count(api: Api) -> int:
    async with api.services.ctx.db.read() as conn:
        return await rows.count_rows(conn, schema.managed_certificates)


# ---- create / get -------------------------------------------------------------------------------

async def test_create_and_get(api: Api) -> None:
    cert = await factories.certificate(
        api.admin, name="api-prod", common_name="api.example.com",
        sans=["api.example.com", "*.api.example.com", "10.0.0.1", "2001:db8::1", "ops@example.com",
              "spiffe://example.org/api"],
        environment="production", tags={"app": "api"},
    )
    assert cert["id"].startswith("cert-")
    assert cert["status"] == "Pending" and cert["expires_at"] is None
    assert cert["issuer_id"] == "iss-local" and cert["renewal_policy_id"] == "rp-default"
    assert cert["target_ids"] == [] and cert["tags"] == {"app": "api"}
    assert cert["certificate_profile_id"] is None and cert["last_renewal_at"] is None
    assert cert["created_at"].endswith("Z")

    got = await api.user.get(f"{CERTS}/{cert['id']}")
    assert got.status_code == 200 and got.json() == cert
    assert await api.audit_actions("certificate") == ["certificate_created"]
    async with api.services.ctx.db.read() as conn:
        assert await rows.count_rows(conn, schema.certificate_versions) == 0, "create must not issue"
        assert await rows.count_rows(conn, schema.jobs) == 0, "create must not enqueue work"


async def test_create_by_non_admin_with_client_id_and_wildcard_or_email_cn(api: Api) -> None:
    cert = await factories.certificate(api.user, id="mc-api-prod", common_name="*.example.com")
    assert cert["id"] == "mc-api-prod"
    mail = await factories.certificate(api.user, common_name="someone@example.com")
    assert mail["common_name"] == "someone@example.com"
    again = await api.admin.post(CERTS, json=await base_body(api, id="mc-api-prod"))
    assert again.status_code == 409 and "mc-api-prod" in again.json()["message"]


async def test_create_writes_target_mappings(api: Api) -> None:
    t1, t2 = await add_target(api), await add_target(api)
    cert = await factories.certificate(api.admin, target_ids=[t2, t1, t2])
    assert sorted(cert["target_ids"]) == sorted([t1, t2])
    async with api.services.ctx.db.read() as conn:
        assert await rows.count_rows(conn, schema.certificate_target_mappings) == 2
    got = (await api.admin.get(f"{CERTS}/{cert['id']}")).json()
    assert got["target_ids"] == sorted([t1, t2])


async def test_create_auth(api: Api) -> None:
    assert (await api.anon.post(CERTS, json=await base_body(api))).status_code == 401
    assert (await api.anon.get(f"{CERTS}/x")).status_code == 401
    assert (await api.anon.get(CERTS)).status_code == 401
    assert await cert_count(api) == 0


async def test_create_missing_and_wrong_fields(api: Api) -> None:
    body = await base_body(api)
    for field in ("name", "common_name", "owner_id", "team_id", "issuer_id", "renewal_policy_id"):
        partial = {k: v for k, v in body.items() if k != field}
        response = await api.admin.post(CERTS, json=partial)
        assert response.status_code == 400, field
        assert field in response.json()["message"] and "required" in response.json()["message"]

    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": 5}, "name"),
        ({"sans": "a.example.com"}, "sans"),
        ({"tags": {"k": 1}}, "tags"),
        ({"tags": ["x"]}, "tags"),
        ({"status": "Active"}, "status"),  # status is not writable: renew/revoke change it
        ({"expires_at": "2030-01-01T00:00:00Z"}, "expires_at"),
        ({"colour": "red"}, "colour"),
        ({"common_name": "not a hostname"}, "common_name"),
        ({"common_name": "-bad.example.com"}, "common_name"),
        ({"common_name": "a." * 127 + "com"}, "common_name"),
        ({"common_name": "*.*.example.com"}, "common_name"),
        ({"sans": ["ok.example.com", "bad host"]}, "sans"),
        ({"sans": ["http://"]}, "sans"),
        ({"sans": ["a@b@c"]}, "sans"),
        ({"id": "has space"}, "id"),
    ]
    for override, field in cases:
        response = await api.admin.post(CERTS, json={**body, **override})
        assert response.status_code == 400, (override, response.text)
        assert field in response.json()["message"], (override, response.json())
    assert await cert_count(api) == 0, "bad input left rows behind"


async def test_create_missing_references_name_the_field(api: Api) -> None:
    body = await base_body(api)
    for field in ("owner_id", "team_id", "issuer_id", "renewal_policy_id", "certificate_profile_id"):
        response = await api.admin.post(CERTS, json={**body, field: "missing-ref"})
        assert response.status_code == 400, field
        assert field in response.json()["message"] and "missing-ref" in response.json()["message"]
    unknown_target = await api.admin.post(CERTS, json={**body, "target_ids": ["no-such-target"]})
    assert unknown_target.status_code == 400 and "no-such-target" in unknown_target.json()["message"]
    retired = await add_target(api, retired=True)
    retired_target = await api.admin.post(CERTS, json={**body, "target_ids": [retired]})
    assert retired_target.status_code == 400 and retired in retired_target.json()["message"]
    assert await cert_count(api) == 0
    assert await api.audit_actions("certificate") == []


async def test_duplicate_name_is_409(api: Api) -> None:
    await factories.certificate(api.admin, name="dup")
    clash = await api.admin.post(CERTS, json=await base_body(api, name="dup"))
    assert clash.status_code == 409 and "dup" in clash.json()["message"]
    other = await factories.certificate(api.admin, name="other")
    rename = await api.admin.put(f"{CERTS}/{other['id']}", json={"name": "dup"})
    assert rename.status_code == 409
    same = await api.admin.put(f"{CERTS}/{other['id']}", json={"name": "other"})
    assert same.status_code == 200


# ---- update / archive ---------------------------------------------------------------------------

async def test_partial_update(api: Api) -> None:
    t1, t2, t3 = await add_target(api), await add_target(api), await add_target(api)
    cert = await factories.certificate(api.admin, environment="staging", tags={"a": "1"}, target_ids=[t1, t2])
    response = await api.user.put(f"{CERTS}/{cert['id']}", json={"environment": "production"})
    assert response.status_code == 200
    updated = response.json()
    assert updated["environment"] == "production"
    for kept in ("name", "common_name", "tags", "owner_id", "team_id", "status", "created_at"):
        assert updated[kept] == cert[kept], kept
    assert sorted(updated["target_ids"]) == sorted([t1, t2])
    assert updated["updated_at"] >= cert["updated_at"]

    replaced = (await api.admin.put(f"{CERTS}/{cert['id']}", json={"target_ids": [t3]})).json()
    assert replaced["target_ids"] == [t3]
    cleared = (await api.admin.put(f"{CERTS}/{cert['id']}", json={"target_ids": [], "tags": {}})).json()
    assert cleared["target_ids"] == [] and cleared["tags"] == {}

    team = await factories.team(api.admin)
    moved = (await api.admin.put(f"{CERTS}/{cert['id']}", json={"team_id": team["id"], "sans": ["x.example.com"]}))
    assert moved.status_code == 200 and moved.json()["team_id"] == team["id"]
    assert moved.json()["sans"] == ["x.example.com"]
    assert (await api.audit_actions("certificate")).count("certificate_updated") == 4


async def test_update_bad_input(api: Api) -> None:
    cert = await factories.certificate(api.admin)
    url = f"{CERTS}/{cert['id']}"
    assert (await api.admin.put(url, json={"name": None})).status_code == 400
    assert (await api.admin.put(url, json={"status": "Active"})).status_code == 400
    assert (await api.admin.put(url, json={"common_name": "bad name"})).status_code == 400
    bad_ref = await api.admin.put(url, json={"owner_id": "ghost"})
    assert bad_ref.status_code == 400 and "owner_id" in bad_ref.json()["message"]
    bad_target = await api.admin.put(url, json={"target_ids": ["ghost-target"]})
    assert bad_target.status_code == 400
    assert (await api.admin.put(f"{CERTS}/nope", json={"environment": "x"})).status_code == 404
    assert (await api.anon.put(url, json={"environment": "x"})).status_code == 401
    got = (await api.admin.get(url)).json()
    assert got == cert, "a refused update changed the record"


async def test_profile_can_be_set_and_detached(api: Api) -> None:
    now = datetime.now(UTC)
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, schema.certificate_profiles, {
            "id": "prof-web", "name": "web", "allowed_key_algorithms": [], "allowed_ekus": ["serverAuth"],
            "required_san_patterns": [], "required_csr_attributes": [], "created_at": now, "updated_at": now,
        })
    cert = await factories.certificate(api.admin, certificate_profile_id="prof-web")
    assert cert["certificate_profile_id"] == "prof-web"
    detached = await api.admin.put(f"{CERTS}/{cert['id']}", json={"certificate_profile_id": None})
    assert detached.status_code == 200 and detached.json()["certificate_profile_id"] is None


async def test_archive(api: Api) -> None:
    cert = await factories.certificate(api.admin)
    url = f"{CERTS}/{cert['id']}"
    assert (await api.anon.delete(url)).status_code == 401
    response = await api.user.delete(url)
    assert response.status_code == 204 and response.content == b""
    got = (await api.admin.get(url)).json()
    assert got["status"] == "Archived" and got["name"] == cert["name"]
    assert (await api.admin.delete(url)).status_code == 204, "archiving twice is harmless"
    refused = await api.admin.put(url, json={"environment": "x"})
    assert refused.status_code == 409 and "archived" in refused.json()["message"]
    assert (await api.admin.delete(f"{CERTS}/nope")).status_code == 404
    actions = await api.audit_actions("certificate")
    assert actions.count("certificate_archived") == 1


async def test_policy_evaluated_on_create_and_update(api: Api) -> None:
    now = datetime.now(UTC)
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, schema.policy_rules, {
            "id": "rule-env", "name": "prod only", "type": "AllowedEnvironments",
            "config": {"allowed": ["production"]}, "enabled": True, "severity": "Error",
            "created_at": now, "updated_at": now,
        })
    cert = await factories.certificate(api.admin, environment="staging")

    async def violations() -> int:
        async with api.services.ctx.db.read() as conn:
            return await rows.count_rows(
                conn, schema.policy_violations, schema.policy_violations.c.certificate_id == cert["id"]
            )

    assert await violations() == 1
    assert "policy_violation_detected" in await api.audit_actions("certificate")
    fixed = await api.admin.put(f"{CERTS}/{cert['id']}", json={"environment": "production"})
    assert fixed.status_code == 200
    assert await violations() == 0


# ---- versions and deployments -------------------------------------------------------------------

async def test_versions_newest_first_and_paged(api: Api) -> None:
    cert = await factories.certificate(api.admin)
    base = datetime.now(UTC)
    made = [await add_version(api, cert["id"], created_at=base + timedelta(minutes=i)) for i in range(3)]
    listed = (await api.user.get(f"{CERTS}/{cert['id']}/versions")).json()
    assert listed["total"] == 3 and listed["page"] == 1 and listed["per_page"] == 50
    assert [v["id"] for v in listed["data"]] == [v["id"] for v in reversed(made)]
    first = listed["data"][0]
    assert first["fingerprint_sha256"] == made[-1]["fingerprint_sha256"] and first["key_size"] == 256
    paged = (await api.admin.get(f"{CERTS}/{cert['id']}/versions", params={"per_page": 2, "page": 2})).json()
    assert paged["total"] == 3 and [v["id"] for v in paged["data"]] == [made[0]["id"]]
    assert (await api.admin.get(f"{CERTS}/nope/versions")).status_code == 404
    assert (await api.admin.get(f"{CERTS}/{cert['id']}/versions", params={"per_page": 0})).status_code == 400
    assert (await api.anon.get(f"{CERTS}/{cert['id']}/versions")).status_code == 401


async def test_deployments_lists_deployment_jobs_newest_first(api: Api) -> None:
    cert = await factories.certificate(api.admin)
    target = await add_target(api)
    base = datetime.now(UTC)
    async with api.services.ctx.db.transaction() as conn:
        for i, kind in enumerate(["Deployment", "Renewal", "Deployment"]):
            when = base + timedelta(minutes=i)
            await rows.insert_row(conn, schema.jobs, {
                "id": f"job-h1-{i}", "type": kind, "certificate_id": cert["id"],
                "target_id": target if kind == "Deployment" else None, "status": "Pending",
                "scheduled_at": when, "created_at": when, "updated_at": when,
            })
    listed = (await api.user.get(f"{CERTS}/{cert['id']}/deployments")).json()
    assert listed["total"] == 2
    assert [j["id"] for j in listed["data"]] == ["job-h1-2", "job-h1-0"]
    assert listed["data"][0]["type"] == "Deployment" and listed["data"][0]["target_id"] == target
    assert (await api.admin.get(f"{CERTS}/nope/deployments")).status_code == 404
    assert (await api.anon.get(f"{CERTS}/{cert['id']}/deployments")).status_code == 401
    paged = (await api.admin.get(f"{CERTS}/{cert['id']}/deployments", params={"per_page": 1, "page": 2})).json()
    assert paged["total"] == 2 and [j["id"] for j in paged["data"]] == ["job-h1-0"]


# ---- exports ------------------------------------------------------------------------------------

def run_openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False, timeout=30)


async def test_export_without_version_is_404(api: Api) -> None:
    cert = await factories.certificate(api.admin)
    pem = await api.admin.get(f"{CERTS}/{cert['id']}/export/pem")
    assert pem.status_code == 404 and "no issued version" in pem.json()["message"]
    p12 = await api.admin.post(f"{CERTS}/{cert['id']}/export/pkcs12", json={"password": "pw"})
    assert p12.status_code == 404
    assert (await api.admin.get(f"{CERTS}/nope/export/pem")).status_code == 404
    assert (await api.audit_actions("certificate")).count("cert_export_failed") == 2


async def test_export_pem(api: Api, tmp_path: Path) -> None:
    cert = await factories.certificate(api.admin, common_name="pem.example.com")
    version = await add_version(api, cert["id"], "pem.example.com")
    response = await api.user.get(f"{CERTS}/{cert['id']}/export/pem")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"cert_pem", "chain_pem", "full_pem"}
    assert body["full_pem"] == body["cert_pem"] + body["chain_pem"]
    assert "PRIVATE KEY" not in response.text
    (tmp_path / "leaf.pem").write_text(body["cert_pem"])
    (tmp_path / "chain.pem").write_text(body["chain_pem"])
    leaf = run_openssl("x509", "-in", str(tmp_path / "leaf.pem"), "-noout", "-subject", "-fingerprint", "-sha256")
    assert leaf.returncode == 0, leaf.stderr
    assert b"pem.example.com" in leaf.stdout
    assert version["fingerprint_sha256"].upper() in leaf.stdout.decode().replace(":", "")
    verify = run_openssl("verify", "-CAfile", str(tmp_path / "chain.pem"), str(tmp_path / "leaf.pem"))
    assert verify.returncode == 0, verify.stderr

    download = await api.admin.get(f"{CERTS}/{cert['id']}/export/pem", params={"download": "true"})
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("application/x-pem-file")
    assert "attachment" in download.headers["content-disposition"]
    assert download.text == body["full_pem"]
    assert (await api.anon.get(f"{CERTS}/{cert['id']}/export/pem")).status_code == 401
    assert (await api.audit_actions("certificate")).count("cert_export_pem") == 2


async def test_export_pkcs12_is_an_encrypted_truststore(api: Api, tmp_path: Path) -> None:
    cert = await factories.certificate(api.admin, common_name="p12.example.com")
    await add_version(api, cert["id"], "p12.example.com")
    response = await api.user.post(f"{CERTS}/{cert['id']}/export/pkcs12", json={"password": "s3cret pw"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-pkcs12"
    assert "attachment" in response.headers["content-disposition"]
    bundle = tmp_path / "bundle.p12"
    bundle.write_bytes(response.content)

    info = run_openssl("pkcs12", "-info", "-nokeys", "-in", str(bundle), "-passin", "pass:s3cret pw")
    assert info.returncode == 0, info.stderr
    text = info.stdout.decode() + info.stderr.decode()
    assert text.count("BEGIN CERTIFICATE") == 2
    assert "AES-256-CBC" in text
    assert "Shrouded Keybag" not in text and "PRIVATE KEY" not in text
    wrong = run_openssl("pkcs12", "-info", "-nokeys", "-in", str(bundle), "-passin", "pass:wrong")
    assert wrong.returncode != 0

    for bad in ({}, {"password": ""}, {"password": 5}, {"password": "x", "extra": 1}):
        refused = await api.admin.post(f"{CERTS}/{cert['id']}/export/pkcs12", json=bad)
        assert refused.status_code == 400, bad
    assert (await api.anon.post(f"{CERTS}/{cert['id']}/export/pkcs12", json={"password": "x"})).status_code == 401
    await api.services.audit_sink.flush()
    async with api.services.ctx.db.read() as conn:
        events = await rows.list_rows(
            conn, schema.audit_events, schema.audit_events.c.action == "cert_export_pkcs12",
            order_by=[schema.audit_events.c.timestamp],
        )
    assert len(events) == 1 and events[0]["actor"] == "bob"
    assert "s3cret" not in str(events[0]["details"]) and events[0]["details"]["certificates_only"] is True
    assert "redacted_keys" not in events[0]["details"]


async def test_export_rate_limit_per_actor(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        database_url, tmp_path / "data", extra={"CERTCTL_CERT_EXPORT_RATE_LIMIT_PER_ACTOR_HR": "2"}
    )
    api, lifespan = await start_api(settings)
    try:
        cert = await factories.certificate(api.admin)
        await add_version(api, cert["id"])
        url = f"{CERTS}/{cert['id']}/export"
        assert (await api.user.get(f"{url}/pem")).status_code == 200
        assert (await api.user.post(f"{url}/pkcs12", json={"password": "pw"})).status_code == 200
        limited = await api.user.get(f"{url}/pem")
        assert limited.status_code == 429
        assert 3000 < int(limited.headers["retry-after"]) <= 3601
        assert limited.json()["error"] == "Too Many Requests" and "bob" in limited.json()["message"]
        assert (await api.user.post(f"{url}/pkcs12", json={"password": "pw"})).status_code == 429
        assert (await api.admin.get(f"{url}/pem")).status_code == 200, "the limit is per actor"
    finally:
        await stop_api(api, lifespan)


async def test_concurrent_creates_with_same_name_leave_one(api: Api) -> None:
    body = await base_body(api, name="race")
    results = await asyncio.gather(*(api.admin.post(CERTS, json=body) for _ in range(4)))
    codes = sorted(r.status_code for r in results)
    assert codes.count(201) == 1 and all(c == 409 for c in codes if c != 201), codes
    assert await cert_count(api) == 1
