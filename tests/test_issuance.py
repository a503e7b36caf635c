"""Issuance through jobs with the local CA: server and agent key generation, CSR checks, failures, revocation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from certctl.services.issuance import retry_delay, run_due_issuing_jobs
from certctl.store import issuance_repo, jobs_repo
from tests import factories
from tests.conftest import Api, make_settings, start_api, stop_api
from tests.pki_helpers import make_csr, openssl, split_pem, verify_chain


@pytest.fixture
async def server_api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    settings = make_settings(database_url, tmp_path / "srv", keygen_mode="server",
                             public_url="https://pki.example.test")
    running, lifespan = await start_api(settings)
    try:
        yield running
    finally:
        await stop_api(running, lifespan)


async def _renew(api: Api, cert_id: str) -> dict[str, Any]:
    response = await api.admin.post(f"/api/v1/certificates/{cert_id}/renew")
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def _job(api: Api, job_id: str) -> dict[str, Any]:
    response = await api.admin.get(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _versions(api: Api, cert_id: str) -> list[dict[str, Any]]:
    response = await api.admin.get(f"/api/v1/certificates/{cert_id}/versions")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def _cert(api: Api, cert_id: str) -> dict[str, Any]:
    response = await api.admin.get(f"/api/v1/certificates/{cert_id}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


# ---- server key generation ------------------------------------------------------------------------

async def test_server_keygen_issues_a_valid_leaf_with_rfc5280_template(server_api: Api, tmp_path: Path) -> None:
    api = server_api
    profile = await factories.seed_profile(api, must_staple=True, allowed_ekus=["serverAuth", "clientAuth"])
    cert = await factories.seed_certificate(api, certificate_profile_id=profile, status="Pending", expires_at=None,
                                            sans=["api.example.com", "10.1.2.3"], common_name="api.example.com")
    job_id = (await _renew(api, cert["id"]))["job_id"]
    assert (await _job(api, job_id))["status"] == "Pending"

    outcome = await run_due_issuing_jobs(api.services.issuance)
    assert outcome == {"Completed": 1}
    job = await _job(api, job_id)
    assert job["status"] == "Completed" and job["attempts"] == 1 and job["completed_at"] is not None
    after = await _cert(api, cert["id"])
    assert after["status"] == "Active" and after["expires_at"] is not None

    [version] = await _versions(api, cert["id"])
    leaf = x509.load_pem_x509_certificate(split_pem(version["pem_chain"])[0].encode())
    assert leaf.serial_number > 0 and leaf.serial_number.bit_length() >= 64
    assert format(leaf.serial_number, "x") == version["serial_number"]
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    ext = leaf.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    key_usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert key_usage.digital_signature and not key_usage.key_encipherment  # EC key: no keyEncipherment
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())  # type: ignore[arg-type]
    sans = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["api.example.com"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ext.get_extension_for_class(x509.TLSFeature).value == x509.TLSFeature([x509.TLSFeatureType.status_request])
    ca_id = version.get("ca_id") or (await _version_row(api, version["id"]))["ca_id"]
    cdp = ext.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name == [x509.UniformResourceIdentifier(f"https://pki.example.test/.well-known/pki/crl/{ca_id}")]
    aia = {d.access_method: d.access_location.value for d in ext.get_extension_for_class(
        x509.AuthorityInformationAccess).value}
    assert aia[AuthorityInformationAccessOID.OCSP] == f"https://pki.example.test/.well-known/pki/ocsp/{ca_id}"
    assert aia[AuthorityInformationAccessOID.CA_ISSUERS] == f"https://pki.example.test/.well-known/pki/ca/{ca_id}"
    root = x509.load_pem_x509_certificate(split_pem(version["pem_chain"])[-1].encode())
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest

    result = verify_chain(tmp_path, version["pem_chain"], "-purpose", "sslserver")
    assert result.returncode == 0 and "leaf.pem: OK" in result.stdout, result.stderr

    async with api.services.ctx.db.read() as conn:
        stored = await issuance_repo.version_of_job(conn, job_id)
        from sqlalchemy import select

        from certctl.store.schema import certificate_private_keys
        sealed = (await conn.execute(select(certificate_private_keys.c.sealed_key).where(
            certificate_private_keys.c.version_id == version["id"]))).scalar_one()
    assert stored is not None and stored["id"] == version["id"]
    assert "PRIVATE KEY" not in sealed  # sealed, not plain
    opened = api.services.ctx.sealer.open(sealed)
    assert opened["private_key_pem"].startswith("-----BEGIN PRIVATE KEY-----")
    assert "PRIVATE KEY" not in version["pem_chain"] and "PRIVATE KEY" not in version.get("csr_pem", "")
    assert "certificate_issued" in await api.audit_actions("certificate")


async def _version_row(api: Api, version_id: str) -> dict[str, Any]:
    from certctl.store import rows
    from certctl.store.schema import certificate_versions

    async with api.services.ctx.db.read() as conn:
        row = await rows.get_row(conn, certificate_versions, version_id)
    assert row is not None
    return dict(row)


async def test_root_is_persisted_across_restarts(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "persist", keygen_mode="server")
    first, lifespan = await start_api(settings)
    try:
        async with first.services.ctx.db.read() as conn:
            from certctl.store import ca_repo

            root_before = await ca_repo.active_root(conn, "iss-local")
    finally:
        await stop_api(first, lifespan)
    assert root_before is not None
    key_file = settings.data_dir / "keys" / root_before["key_driver_id"].removeprefix("file:")
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (settings.data_dir / "keys").stat().st_mode & 0o777 == 0o700
    second, lifespan = await start_api(settings)
    try:
        async with second.services.ctx.db.read() as conn:
            root_after = await ca_repo.active_root(conn, "iss-local")
    finally:
        await stop_api(second, lifespan)
    assert root_after is not None
    assert root_after["id"] == root_before["id"] and root_after["cert_pem"] == root_before["cert_pem"]
    root = x509.load_pem_x509_certificate(root_after["cert_pem"].encode())
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)  # ECDSA P-256 by default
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


async def test_profile_caps_validity_and_rsa_gets_key_encipherment(server_api: Api) -> None:
    api = server_api
    profile = await factories.seed_profile(
        api, max_ttl_seconds=7 * 86400, allowed_key_algorithms=[{"algorithm": "RSA", "min_size": 3072}])
    cert = await factories.seed_certificate(api, certificate_profile_id=profile)
    await _renew(api, cert["id"])
    assert await run_due_issuing_jobs(api.services.issuance) == {"Completed": 1}
    [version] = await _versions(api, cert["id"])
    leaf = x509.load_pem_x509_certificate(split_pem(version["pem_chain"])[0].encode())
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(days=7)
    key = leaf.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    assert version["key_algorithm"] == "RSA" and version["key_size"] == 3072
    renewed = await _cert(api, cert["id"])
    assert renewed["last_renewal_at"] is not None


# ---- agent key generation -------------------------------------------------------------------------

async def _agent_setup(api: Api, **cert_values: Any) -> tuple[dict[str, Any], str, str]:
    cert = await factories.seed_certificate(api, **cert_values)
    agent_id = await factories.seed_agent(api)
    target_id = await factories.seed_target(api, agent_id)
    await factories.seed_mapping(api, cert["id"], target_id)
    return cert, agent_id, target_id


async def test_agent_csr_flow_issues_and_queues_deployment(api: Api, tmp_path: Path) -> None:
    cert, agent_id, target_id = await _agent_setup(api)
    job_id = (await _renew(api, cert["id"]))["job_id"]
    work = (await api.admin.get(f"/api/v1/agents/{agent_id}/work")).json()
    assert work["count"] == 1
    item = work["jobs"][0]
    assert item["id"] == job_id and item["status"] == "AwaitingCSR" and item["common_name"] == cert["common_name"]

    csr_pem, key = make_csr([cert["common_name"]])
    response = await api.admin.post(f"/api/v1/agents/{agent_id}/csr",
                                    json={"csr_pem": csr_pem, "certificate_id": cert["id"]})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["job_id"] == job_id and body["job_status"] == "Completed" and body["serial_number"]

    pickup = (await api.admin.get(f"/api/v1/agents/{agent_id}/certificates/{cert['id']}")).json()
    leaf = x509.load_pem_x509_certificate(pickup["certificate_pem"].encode())
    assert leaf.public_key() == key.public_key()  # the agent's key, never one of ours
    assert pickup["serial_number"] == body["serial_number"]
    assert verify_chain(tmp_path, pickup["certificate_pem"]).returncode == 0
    [version] = await _versions(api, cert["id"])
    assert version["csr_pem"].startswith("-----BEGIN CERTIFICATE REQUEST-----")

    jobs = (await api.admin.get("/api/v1/jobs", params={"certificate_id": cert["id"], "type": "Deployment"})).json()
    assert [(j["target_id"], j["status"], j["agent_id"]) for j in jobs["data"]] == [(target_id, "Pending", agent_id)]
    work = (await api.admin.get(f"/api/v1/agents/{agent_id}/work")).json()
    assert [j["type"] for j in work["jobs"]] == ["Deployment"]
    actions = await api.audit_actions("job")
    assert "csr_submitted" in actions


@pytest.mark.parametrize(
    ("case", "rule"),
    [("weak_rsa", "key_size"), ("foreign_name", "names"), ("garbage", "format"), ("pattern", "required_san_patterns")],
)
async def test_rejected_csr_names_the_rule_and_stores_nothing(api: Api, case: str, rule: str) -> None:
    profile = await factories.seed_profile(api, required_san_patterns=[r"[a-z0-9-]+\.internal\.example"])
    cn = "svc.internal.example" if case != "pattern" else "svc.other.example"
    cert, agent_id, _ = await _agent_setup(api, certificate_profile_id=profile, common_name=cn, sans=[cn])
    job_id = (await _renew(api, cert["id"]))["job_id"]
    if case == "weak_rsa":
        csr_pem, _ = make_csr([cn], rsa.generate_private_key(public_exponent=65537, key_size=1024))
    elif case == "foreign_name":
        csr_pem, _ = make_csr([cn, "evil.example.org"])
    elif case == "garbage":
        csr_pem = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    else:
        csr_pem, _ = make_csr([cn])
    response = await api.admin.post(f"/api/v1/agents/{agent_id}/csr",
                                    json={"csr_pem": csr_pem, "certificate_id": cert["id"]})
    assert response.status_code == 400, response.text
    body = response.json()
    assert rule in body["message"]
    assert (await _job(api, job_id))["status"] == "AwaitingCSR"
    assert await _versions(api, cert["id"]) == []


async def test_csr_from_an_agent_that_does_not_deploy_the_certificate_is_refused(api: Api) -> None:
    cert, _, _ = await _agent_setup(api)
    stranger = await factories.seed_agent(api)
    await _renew(api, cert["id"])
    csr_pem, _ = make_csr([cert["common_name"]])
    response = await api.admin.post(f"/api/v1/agents/{stranger}/csr",
                                    json={"csr_pem": csr_pem, "certificate_id": cert["id"]})
    assert response.status_code == 403, response.text
    assert await _versions(api, cert["id"]) == []


async def test_csr_without_a_waiting_job_is_409(api: Api) -> None:
    cert, agent_id, _ = await _agent_setup(api)
    csr_pem, _ = make_csr([cert["common_name"]])
    response = await api.admin.post(f"/api/v1/agents/{agent_id}/csr",
                                    json={"csr_pem": csr_pem, "certificate_id": cert["id"]})
    assert response.status_code == 409, response.text


async def test_profile_key_generation_mode_overrides_the_server_default(api: Api) -> None:
    profile = await factories.seed_profile(api, key_generation_mode="server")
    cert = await factories.seed_certificate(api, certificate_profile_id=profile)
    body = await _renew(api, cert["id"])
    assert body["job_status"] == "Pending"  # the server default is agent mode
    assert await run_due_issuing_jobs(api.services.issuance) == {"Completed": 1}


# ---- failures -------------------------------------------------------------------------------------

def test_retry_delay_is_exponential_with_bounded_jitter() -> None:
    import random

    rng = random.Random(7)
    for attempt, base in ((1, 60), (2, 120), (3, 240), (4, 480)):
        delay = retry_delay(60, attempt, rng).total_seconds()
        assert base * 0.8 <= delay <= base * 1.2
    assert retry_delay(3600, 30, rng) <= timedelta(hours=24)


async def test_retryable_failures_back_off_then_fail_job_and_certificate(server_api: Api) -> None:
    api = server_api
    clock = api.services.ctx.clock
    policy = await factories.seed_renewal_policy(api, max_retries=2, retry_interval_seconds=60)
    cert = await factories.seed_certificate(api, renewal_policy_id=policy)
    job_id = (await _renew(api, cert["id"]))["job_id"]
    # The CA's key becomes unusable: a retryable failure (the operator may restore it).
    async with api.services.ctx.db.transaction() as conn:
        from sqlalchemy import update

        from certctl.store.schema import intermediate_cas
        await conn.execute(update(intermediate_cas).values(key_driver_id="file:missing.key"))
    api.services.cas._loaded.clear()

    assert await run_due_issuing_jobs(api.services.issuance) == {"Pending": 1}
    job = await _job(api, job_id)
    assert job["status"] == "Pending" and job["attempts"] == 1 and "missing.key" in job["last_error"]
    async with api.services.ctx.db.read() as conn:
        row = await jobs_repo.get_job(conn, job_id)
    assert row is not None
    delay = (row["scheduled_at"] - clock.now()).total_seconds()
    assert 40 <= delay <= 75  # 60 s ± 20 %
    assert await run_due_issuing_jobs(api.services.issuance) == {}  # not due yet
    async with api.services.ctx.db.transaction() as conn:
        await jobs_repo.update_job(conn, job_id, {"scheduled_at": clock.now()})
    assert await run_due_issuing_jobs(api.services.issuance) == {"Failed": 1}
    job = await _job(api, job_id)
    assert job["status"] == "Failed" and job["attempts"] == 2
    assert (await _cert(api, cert["id"]))["status"] == "Failed"
    actions = await api.audit_actions("job")
    assert "job_retry_scheduled" in actions and "job_failed" in actions


async def test_name_outside_no_constraint_issuer_disabled_fails_permanently(server_api: Api) -> None:
    api = server_api
    cert = await factories.seed_certificate(api)
    job_id = (await _renew(api, cert["id"]))["job_id"]
    response = await api.admin.put("/api/v1/issuers/iss-local", json={"enabled": False})
    assert response.status_code == 200, response.text
    assert await run_due_issuing_jobs(api.services.issuance) == {"Failed": 1}
    job = await _job(api, job_id)
    assert job["status"] == "Failed" and job["attempts"] == 1 and "disabled" in job["last_error"]


async def test_a_job_cancelled_while_signing_stores_nothing(server_api: Api) -> None:
    api = server_api
    service = api.services.issuance
    cert = await factories.seed_certificate(api)
    job_id = (await _renew(api, cert["id"]))["job_id"]
    from certctl.services.issuance import claim_issuing_jobs

    assert await claim_issuing_jobs(service, limit=10) == [job_id]
    response = await api.admin.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    assert await service.execute(job_id) == "Cancelled"
    assert await _versions(api, cert["id"]) == []


# ---- revocation -----------------------------------------------------------------------------------

async def test_revocation_records_every_valid_version_with_its_reason(server_api: Api) -> None:
    api = server_api
    published: list[set[str]] = []

    async def listener(cas: set[str]) -> None:
        published.append(cas)

    api.services.certificate_actions.after_revoke = listener
    cert = await factories.seed_certificate(api)
    await _renew(api, cert["id"])
    await run_due_issuing_jobs(api.services.issuance)
    [version] = await _versions(api, cert["id"])
    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/revoke", json={"reason": "keyCompromise"})
    assert response.status_code == 200, response.text
    from certctl.store import ca_repo

    async with api.services.ctx.db.read() as conn:
        record = await ca_repo.revocation_for(conn, "iss-local", version["serial_number"])
    assert record is not None
    assert record["reason"] == "keyCompromise" and record["reason_code"] == 1 and record["revoked_by"] == "alice"
    assert len(published) == 1 and record["ca_id"] in published[0]
    again = await api.admin.post(f"/api/v1/certificates/{cert['id']}/revoke", json={"reason": "keyCompromise"})
    assert again.status_code == 409


async def test_openssl_sees_the_issued_chain_text(server_api: Api, tmp_path: Path) -> None:
    api = server_api
    cert = await factories.seed_certificate(api)
    await _renew(api, cert["id"])
    await run_due_issuing_jobs(api.services.issuance)
    [version] = await _versions(api, cert["id"])
    (tmp_path / "leaf.pem").write_text(split_pem(version["pem_chain"])[0])
    text = openssl("x509", "-in", str(tmp_path / "leaf.pem"), "-noout", "-text").stdout
    assert "CA:FALSE" in text and "OCSP - URI:" in text and "CA Issuers - URI:" in text
    assert "X509v3 CRL Distribution Points" in text and "X509v3 Subject Key Identifier" in text


async def test_exports_of_an_issued_certificate_open_with_openssl_and_hold_no_key(
    server_api: Api, tmp_path: Path
) -> None:
    api = server_api
    cert = await factories.seed_certificate(api)
    await _renew(api, cert["id"])
    await run_due_issuing_jobs(api.services.issuance)
    [version] = await _versions(api, cert["id"])
    pem = (await api.admin.get(f"/api/v1/certificates/{cert['id']}/export/pem")).json()
    blocks = split_pem(version["pem_chain"])
    assert pem["cert_pem"] == blocks[0] and pem["chain_pem"] == "".join(blocks[1:])
    assert pem["full_pem"] == "".join(blocks) and "PRIVATE KEY" not in str(pem)

    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/export/pkcs12",
                                    json={"password": "s3cret-Pass"})
    assert response.status_code == 200, response.text
    (tmp_path / "bundle.p12").write_bytes(response.content)
    shown = openssl("pkcs12", "-in", str(tmp_path / "bundle.p12"), "-passin", "pass:s3cret-Pass", "-nokeys",
                    "-info").stdout + openssl("pkcs12", "-in", str(tmp_path / "bundle.p12"), "-passin",
                                              "pass:s3cret-Pass", "-nokeys", "-info").stderr
    assert shown.count("BEGIN CERTIFICATE") == len(blocks)
    assert "Shrouded Keybag" not in shown and "PRIVATE KEY" not in shown
    wrong = openssl("pkcs12", "-in", str(tmp_path / "bundle.p12"), "-passin", "pass:wrong", "-nokeys", check=False)
    assert wrong.returncode != 0


async def test_a_new_local_issuer_gets_its_own_root_with_the_configured_algorithm(server_api: Api) -> None:
    api = server_api
    bad = await api.admin.post("/api/v1/issuers", json={"name": "bad-ca", "type": "GenericCA",
                                                        "config": {"key_algorithm": "DSA-1024"}})
    assert bad.status_code == 400 and "key_algorithm" in bad.text
    created = await api.admin.post("/api/v1/issuers", json={
        "name": "team-ca", "type": "GenericCA",
        "config": {"key_algorithm": "RSA-3072", "ca_common_name": "Team CA", "validity_days": 30}})
    assert created.status_code == 201, created.text
    issuer_id = created.json()["id"]
    cert = await factories.seed_certificate(api, issuer_id=issuer_id)
    await _renew(api, cert["id"])
    assert await run_due_issuing_jobs(api.services.issuance) == {"Completed": 1}
    [version] = await _versions(api, cert["id"])
    blocks = split_pem(version["pem_chain"])
    root = x509.load_pem_x509_certificate(blocks[-1].encode())
    leaf = x509.load_pem_x509_certificate(blocks[0].encode())
    assert root.subject.rfc4514_string() == "CN=Team CA"
    assert isinstance(root.public_key(), rsa.RSAPublicKey) and root.public_key().key_size == 3072
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(days=30)


async def test_sub_ca_mode_signs_with_the_operators_ca_and_ships_its_chain(
    database_url: str, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives import hashes, serialization

    from certctl.pki.ca import build_root, ca_name
    from certctl.pki.signers import SoftwareSigner

    now = datetime.now(UTC)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = build_root(SoftwareSigner("m", root_key), ca_name("Corp Root"), now, timedelta(days=3650))
    sub_key = ec.generate_private_key(ec.SECP256R1())
    sub = (x509.CertificateBuilder().subject_name(ca_name("Corp Issuing")).issuer_name(root.subject)
           .public_key(sub_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1000))
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
           .add_extension(x509.SubjectKeyIdentifier.from_public_key(sub_key.public_key()), critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
           .sign(root_key, hashes.SHA384()))
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(sub.public_bytes(pem) + root.public_bytes(pem))
    (tmp_path / "ca.key").write_bytes(sub_key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                                           serialization.NoEncryption()))
    (tmp_path / "ca.key").chmod(0o600)
    settings = make_settings(database_url, tmp_path / "sub", keygen_mode="server", extra={
        "CERTCTL_CA_CERT_PATH": str(tmp_path / "ca.pem"), "CERTCTL_CA_KEY_PATH": str(tmp_path / "ca.key")})
    api, lifespan = await start_api(settings)
    try:
        cert = await factories.seed_certificate(api)
        await _renew(api, cert["id"])
        assert await run_due_issuing_jobs(api.services.issuance) == {"Completed": 1}
        [version] = await _versions(api, cert["id"])
    finally:
        await stop_api(api, lifespan)
    blocks = split_pem(version["pem_chain"])
    assert len(blocks) == 3  # leaf, the operator's issuing CA, and its root
    assert x509.load_pem_x509_certificate(blocks[0].encode()).issuer == sub.subject
    result = verify_chain(tmp_path, version["pem_chain"], "-x509_strict")
    assert result.returncode == 0, result.stdout + result.stderr


async def test_issue_revoke_then_crl_and_ocsp_tell_relying_parties(server_api: Api, tmp_path: Path) -> None:
    """The whole path through the API: issue, revoke, and the CRL and OCSP answers that follow at once."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    api = server_api
    cert = await factories.seed_certificate(api)
    await _renew(api, cert["id"])
    await run_due_issuing_jobs(api.services.issuance)
    [version] = await _versions(api, cert["id"])
    blocks = split_pem(version["pem_chain"])
    leaf, issuer = (x509.load_pem_x509_certificate(b.encode()) for b in (blocks[0], blocks[1]))
    ca_id = (await _version_row(api, version["id"]))["ca_id"]

    def ocsp_request() -> bytes:
        built = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
        return built.public_bytes(serialization.Encoding.DER)

    async def ask() -> ocsp.OCSPResponse:
        response = await api.anon.post(f"/.well-known/pki/ocsp/{ca_id}", content=ocsp_request(),
                                       headers={"Content-Type": "application/ocsp-request"})
        assert response.status_code == 200, response.text
        return ocsp.load_der_ocsp_response(response.content)

    assert (await ask()).certificate_status == ocsp.OCSPCertStatus.GOOD
    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/revoke", json={"reason": "superseded"})
    assert response.status_code == 200, response.text
    answer = await ask()
    assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason == x509.ReasonFlags.superseded

    import asyncio

    for _ in range(50):  # the CRL is rebuilt in the background right after the revocation commits
        crl_response = await api.anon.get(f"/.well-known/pki/crl/{ca_id}")
        assert crl_response.status_code == 200
        crl = x509.load_der_x509_crl(crl_response.content)
        if crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the revoked serial never reached the CRL")
    (tmp_path / "crl.der").write_bytes(crl_response.content)
    text = openssl("crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-noout", "-text").stdout
    assert format(leaf.serial_number, "X").rjust(2, "0") in text.replace(":", "").upper() and "Superseded" in text
    (tmp_path / "crl.pem").write_text(openssl("crl", "-inform", "DER", "-in", str(tmp_path / "crl.der")).stdout)
    result = verify_chain(tmp_path, version["pem_chain"], "-crl_check", "-CRLfile", str(tmp_path / "crl.pem"))
    assert result.returncode != 0 and "certificate revoked" in result.stdout + result.stderr


async def test_a_serial_that_is_taken_is_drawn_again(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Serials are unique per CA by index; a collision (2^-127 a pair) rolls back and draws again, on both paths."""
    import certctl.services.issuance as issuance

    first, agent_id, _ = await _agent_setup(api)
    await _renew(api, first["id"])
    csr_pem, _ = make_csr([first["common_name"]])
    done = await api.admin.post(f"/api/v1/agents/{agent_id}/csr", json={"csr_pem": csr_pem,
                                                                          "certificate_id": first["id"]})
    taken = int(done.json()["serial_number"], 16)
    draws = iter([taken, taken + 1])
    monkeypatch.setattr(issuance, "new_serial", lambda: next(draws))
    second, second_agent, _ = await _agent_setup(api)
    await _renew(api, second["id"])
    csr_pem, _ = make_csr([second["common_name"]])
    response = await api.admin.post(f"/api/v1/agents/{second_agent}/csr", json={"csr_pem": csr_pem,
                                                                                "certificate_id": second["id"]})
    assert response.status_code == 202, response.text
    assert int(response.json()["serial_number"], 16) == taken + 1
    assert len(await _versions(api, second["id"])) == 1


async def test_a_new_local_issuers_first_csr_makes_its_root_without_waiting_on_itself(api: Api) -> None:
    """The root is made in its own transaction before the CSR's (on SQLite, inside it would wait on its own lock)."""
    import time

    created = await api.admin.post("/api/v1/issuers", json={"name": factories.unique("ca"), "type": "GenericCA"})
    assert created.status_code == 201, created.text
    cert, agent_id, _ = await _agent_setup(api, issuer_id=created.json()["id"])
    await _renew(api, cert["id"])
    csr_pem, _ = make_csr([cert["common_name"]])
    started = time.monotonic()
    response = await api.admin.post(f"/api/v1/agents/{agent_id}/csr",
                                    json={"csr_pem": csr_pem, "certificate_id": cert["id"]})
    assert response.status_code == 202 and response.json()["job_status"] == "Completed", response.text
    assert time.monotonic() - started < 5
    from certctl.store import ca_repo

    async with api.services.ctx.db.read() as conn:
        assert await ca_repo.active_root(conn, created.json()["id"]) is not None
