"""The CA hierarchy admin API: root registration, child signing, list/get, two-step retire, refusals.

Chains the API hands out are checked with the real `openssl verify` and `openssl x509 -text`. Every
refusal is checked to leave no row, no audit event and no key behind.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certctl.domain.errors import ConflictError
from certctl.pki.ca import build_root, ca_name
from certctl.pki.signers import SoftwareSigner
from certctl.store import rows
from certctl.store.schema import issuers
from tests import factories
from tests.conftest import Api

ACME = {"directory_url": "https://acme.example.com/directory", "email": "pki@example.com"}


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30, check=False)


def key_dir(api: Api) -> Path:
    return api.services.ctx.settings.data_dir / "keys"


def key_files(api: Api) -> set[str]:
    directory = key_dir(api)
    return set(os.listdir(directory)) if directory.exists() else set()


def write_key(api: Api, label: str, key: ec.EllipticCurvePrivateKey) -> str:
    directory = key_dir(api)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{label}.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return f"file:{label}.key"


def root_pair(common_name: str = "Operator Root") -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_root(SoftwareSigner("mem", key), ca_name(common_name, "certctl tests"), datetime.now(UTC),
                      timedelta(days=3650))
    return key, cert.public_bytes(serialization.Encoding.PEM).decode()


async def register_root(api: Api, issuer_id: str, name: str = "root") -> dict[str, Any]:
    key, cert_pem = root_pair()
    ref = write_key(api, f"operator-{name}-{issuer_id}", key)
    return await factories.create(api.admin, f"/api/v1/issuers/{issuer_id}/intermediates",
                                  {"name": name, "root_cert_pem": cert_pem, "key_driver_id": ref,
                                   "metadata": {"owner_team": "pki"}})


async def child(api: Api, issuer_id: str, parent_id: str, name: str, **body: Any) -> dict[str, Any]:
    return await factories.create(api.admin, f"/api/v1/issuers/{issuer_id}/intermediates",
                                  {"name": name, "parent_ca_id": parent_id, **body})


async def three_levels(api: Api) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    issuer = await factories.issuer(api.admin)
    root = await register_root(api, issuer["id"])
    policy = await child(api, issuer["id"], root["id"], "policy", path_len_constraint=1,
                         subject={"common_name": "Policy CA", "organization": "certctl tests", "country": "de"},
                         name_constraints=[{"permitted": ["example.com"], "excluded": ["secret.example.com"]}],
                         ttl_days=1825, metadata={"compliance_tier": "high"})
    issuing = await child(api, issuer["id"], policy["id"], "issuing", algorithm="ECDSA-P384",
                          subject={"common_name": "Issuing CA"},
                          name_constraints=[{"permitted": ["shop.example.com"], "excluded": ["secret.example.com"]}])
    return issuer["id"], root, policy, issuing


async def ca_rows(api: Api) -> int:
    from certctl.store.schema import intermediate_cas

    async with api.services.ctx.db.read() as conn:
        return await rows.count_rows(conn, intermediate_cas)


async def created_events(api: Api) -> int:
    return (await api.audit_actions("intermediate_ca")).count("intermediate_ca_created")


def write(path: Path, pem: str) -> str:
    path.write_text(pem)
    return str(path)


# ---- the happy path ------------------------------------------------------------------------------------

async def test_three_level_hierarchy_is_signed_listed_and_verifies_with_openssl(api: Api, tmp_path: Path) -> None:
    issuer_id, root, policy, issuing = await three_levels(api)

    assert root["parent_ca_id"] is None and root["state"] == "active" and root["id"].startswith("ica-")
    assert root["owning_issuer_id"] == issuer_id and root["metadata"] == {"owner_team": "pki"}
    assert root["subject"] == "CN=Operator Root,O=certctl tests"
    assert policy["parent_ca_id"] == root["id"] and issuing["parent_ca_id"] == policy["id"]
    assert policy["path_len_constraint"] == 1 and issuing["path_len_constraint"] == 0  # default: parent - 1
    assert policy["subject"] == "CN=Policy CA,O=certctl tests,C=DE"
    assert policy["name_constraints"] == [{"permitted": ["example.com"], "excluded": ["secret.example.com"]}]
    assert policy["metadata"] == {"compliance_tier": "high"}
    assert issuing["key_algorithm"] == "ECDSA-P384" and policy["key_algorithm"] == "ECDSA-P256"
    assert issuing["key_driver_id"].startswith("file:") and issuing["key_driver_id"] != policy["key_driver_id"]
    for body in (policy, issuing):
        assert "PRIVATE KEY" not in str(body)
        key_file = key_dir(api) / body["key_driver_id"].removeprefix("file:")
        assert key_file.stat().st_mode & 0o777 == 0o600

    root_pem, policy_pem, issuing_pem = root["cert_pem"], policy["cert_pem"], issuing["cert_pem"]
    result = openssl("verify", "-x509_strict", "-CAfile", write(tmp_path / "root.pem", root_pem), "-untrusted",
                     write(tmp_path / "chain.pem", policy_pem), write(tmp_path / "issuing.pem", issuing_pem))
    assert result.returncode == 0 and ": OK" in result.stdout, result.stdout + result.stderr
    text = openssl("x509", "-noout", "-text", "-in", str(tmp_path / "chain.pem")).stdout
    assert "CA:TRUE, pathlen:1" in text and "X509v3 Name Constraints: critical" in text
    assert "DNS:example.com" in text.split("Permitted:")[1] and "DNS:secret.example.com" in text.split("Excluded:")[1]
    issuing_cert = x509.load_pem_x509_certificate(issuing_pem.encode())
    policy_cert = x509.load_pem_x509_certificate(policy_pem.encode())
    assert issuing_cert.not_valid_after_utc <= policy_cert.not_valid_after_utc
    assert issuing["not_after"].startswith(issuing_cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%S"))
    assert issuing["serial_number"] == format(issuing_cert.serial_number, "x")

    listed = await api.admin.get(f"/api/v1/issuers/{issuer_id}/intermediates")
    assert listed.status_code == 200
    assert [r["id"] for r in listed.json()["data"]] == [root["id"], policy["id"], issuing["id"]]
    got = await api.admin.get(f"/api/v1/intermediates/{issuing['id']}")
    assert got.status_code == 200 and got.json() == issuing
    assert (await api.admin.get("/api/v1/intermediates/ica-nope")).status_code == 404
    assert (await api.audit_actions("intermediate_ca")).count("intermediate_ca_created") == 3

    # The issuer can now sign with the issuing CA: CAService loads it with its chain up to the root.
    async with api.services.ctx.db.read() as conn:
        loaded = await api.services.cas.load_by_id(conn, issuing["id"])
    assert loaded.cert == issuing_cert and [c.subject.rfc4514_string() for c in loaded.parents] == \
        ["CN=Policy CA,O=certctl tests,C=DE", "CN=Operator Root,O=certctl tests"]


async def test_a_child_under_the_issuers_generated_root_gets_the_defaults(api: Api, tmp_path: Path) -> None:
    issuer = await factories.issuer(api.admin)
    async with api.services.ctx.db.read() as conn:
        issuer_row = await rows.get_row(conn, issuers, issuer["id"])
        assert issuer_row is not None
        root_row = await api.services.cas.issuing_ca_row(conn, issuer_row)  # the root, made on first use
    sub = await child(api, issuer["id"], root_row["id"], "Sub CA one")
    assert sub["id"] == "ica-sub-ca-one" and sub["subject"] == "CN=Sub CA one"
    assert sub["path_len_constraint"] is None  # the generated root has no pathLen, so neither has its child
    assert sub["name_constraints"] == [] and sub["ocsp_responder_url"] == ""
    cert = x509.load_pem_x509_certificate(sub["cert_pem"].encode())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=5 * 365) <= lifetime <= timedelta(days=5 * 365, minutes=10)
    # The same name under another issuer is fine; its id is qualified by the issuer.
    other = await factories.issuer(api.admin)
    async with api.services.ctx.db.read() as conn:
        other_row = await rows.get_row(conn, issuers, other["id"])
        assert other_row is not None
        other_root = await api.services.cas.issuing_ca_row(conn, other_row)
    again = await child(api, other["id"], other_root["id"], "Sub CA one")
    assert again["id"] != sub["id"] and again["id"].startswith("ica-")
    result = openssl("verify", "-CAfile", write(tmp_path / "r.pem", root_row["cert_pem"]),
                     write(tmp_path / "s.pem", sub["cert_pem"]))
    assert result.returncode == 0, result.stdout + result.stderr


# ---- refusals ------------------------------------------------------------------------------------------

async def test_child_refusals_answer_4xx_and_write_nothing(api: Api) -> None:
    issuer_id, root, policy, issuing = await three_levels(api)
    other = await factories.issuer(api.admin)
    other_root = await register_root(api, other["id"])
    before = (await ca_rows(api), await created_events(api), key_files(api))
    path = f"/api/v1/issuers/{issuer_id}/intermediates"
    nc_ok = [{"permitted": ["a.example.com"], "excluded": ["secret.example.com"]}]
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"parent_ca_id": policy["id"], "name_constraints": [{"permitted": ["example.org"],
                                                              "excluded": ["secret.example.com"]}]},
         400, "outside what CA"),
        ({"parent_ca_id": policy["id"], "name_constraints": [{"permitted": ["a.example.com"]}]},
         400, "must exclude it too"),
        ({"parent_ca_id": policy["id"], "path_len_constraint": 1, "name_constraints": nc_ok}, 400, "lower than"),
        ({"parent_ca_id": issuing["id"]}, 400, "pathLen 0"),
        ({"parent_ca_id": policy["id"], "algorithm": "DSA-1024"}, 400, "algorithm"),
        ({"parent_ca_id": policy["id"], "name_constraints": [{"permitted": ["*.example.com"]}]}, 400,
         "name_constraints"),
        ({"parent_ca_id": policy["id"], "ocsp_responder_url": "ftp://x"}, 400, "ocsp_responder_url"),
        ({"parent_ca_id": policy["id"], "key_driver_id": "file:x.key"}, 400, "root registration"),
        ({"parent_ca_id": policy["id"], "ttl_days": 0}, 400, "ttl_days"),
        ({"parent_ca_id": policy["id"], "colour": "red"}, 400, "colour"),
        ({"parent_ca_id": "ica-missing"}, 404, "not found"),
        ({"parent_ca_id": other_root["id"]}, 404, "not found under issuer"),
        ({"parent_ca_id": root["id"], "name": "policy"}, 409, "already has a CA named"),
    ]
    for body, status, fragment in cases:
        response = await api.admin.post(path, json={"name": "refused", **body})
        assert response.status_code == status, (body, response.text)
        assert fragment in response.json()["message"], (body, response.json())
        assert set(response.json()) >= {"error", "message", "request_id"}
    assert (await ca_rows(api), await created_events(api), key_files(api)) == before


async def test_root_registration_checks_the_certificate_and_its_key(api: Api) -> None:
    issuer = await factories.issuer(api.admin)
    path = f"/api/v1/issuers/{issuer['id']}/intermediates"
    key, cert_pem = root_pair()
    _, other_pem = root_pair("Another Root")
    good_ref = write_key(api, "good-root", key)
    wrong_ref = write_key(api, "wrong-root", ec.generate_private_key(ec.SECP256R1()))
    async with api.services.ctx.db.read() as conn:
        local_root = await api.services.cas.issuing_ca_row(conn, await _issuer_row(api, "iss-local"))
    before = (await ca_rows(api), await created_events(api))
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"root_cert_pem": cert_pem, "key_driver_id": wrong_ref}, 400, "CA key mismatch"),
        ({"root_cert_pem": other_pem, "key_driver_id": good_ref}, 400, "CA key mismatch"),
        ({"root_cert_pem": cert_pem}, 400, "root_cert_pem + key_driver_id"),
        ({}, 400, "root_cert_pem + key_driver_id"),
        ({"root_cert_pem": "not a certificate", "key_driver_id": good_ref}, 400, "exactly one PEM"),
        ({"root_cert_pem": cert_pem + other_pem, "key_driver_id": good_ref}, 400, "exactly one PEM"),
        ({"root_cert_pem": _not_self_signed(), "key_driver_id": good_ref}, 400, "not self-signed"),
        ({"root_cert_pem": cert_pem, "key_driver_id": "file:/etc/passwd"}, 400, "outside the key directory"),
        ({"root_cert_pem": cert_pem, "key_driver_id": "file:missing.key"}, 400, "cannot be read"),
        ({"root_cert_pem": cert_pem, "key_driver_id": good_ref, "path_len_constraint": 1}, 400, "only for a child"),
    ]
    for body, status, fragment in cases:
        response = await api.admin.post(path, json={"name": "root", **body})
        assert response.status_code == status, (body, response.text)
        assert fragment in response.json()["message"], (body, response.json())
        assert "PRIVATE KEY" not in response.text
    assert (await ca_rows(api), await created_events(api)) == before

    created = await factories.create(api.admin, path, {"name": "root", "root_cert_pem": cert_pem,
                                                        "key_driver_id": good_ref})
    assert created["key_driver_id"] == good_ref and created["parent_ca_id"] is None
    # At most one active root per issuer, registered or generated.
    key2, pem2 = root_pair("Second Root")
    second = await api.admin.post(path, json={"name": "root-2", "root_cert_pem": pem2,
                                              "key_driver_id": write_key(api, "second-root", key2)})
    assert second.status_code == 409 and "already has an active root" in second.json()["message"]
    key3, pem3 = root_pair("Third Root")
    local = await api.admin.post("/api/v1/issuers/iss-local/intermediates",
                                 json={"name": "root-x", "root_cert_pem": pem3,
                                       "key_driver_id": write_key(api, "third-root", key3)})
    assert local.status_code == 409 and local_root["id"] in local.json()["message"]
    assert (await ca_rows(api), await created_events(api)) == (before[0] + 1, before[1] + 1)


def _not_self_signed() -> str:
    root_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(ca_name("Child")).issuer_name(ca_name("Somebody"))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


async def _issuer_row(api: Api, issuer_id: str) -> Any:
    async with api.services.ctx.db.read() as conn:
        row = await rows.get_row(conn, issuers, issuer_id)
    assert row is not None
    return row


async def test_issuer_must_exist_and_be_a_local_ca(api: Api) -> None:
    body = {"name": "x", "parent_ca_id": "ica-any"}
    missing = await api.admin.post("/api/v1/issuers/iss-nope/intermediates", json=body)
    assert missing.status_code == 404 and "iss-nope" in missing.json()["message"]
    assert (await api.admin.get("/api/v1/issuers/iss-nope/intermediates")).status_code == 404
    acme = await factories.issuer(api.admin, type="ACME", config=ACME)
    wrong = await api.admin.post(f"/api/v1/issuers/{acme['id']}/intermediates", json=body)
    assert wrong.status_code == 400 and "GenericCA" in wrong.json()["message"]
    assert (await api.admin.get(f"/api/v1/issuers/{acme['id']}/intermediates")).status_code == 400
    key, cert_pem = root_pair()
    wrong_root = await api.admin.post(f"/api/v1/issuers/{acme['id']}/intermediates",
                                      json={"name": "r", "root_cert_pem": cert_pem,
                                            "key_driver_id": write_key(api, "acme-root", key)})
    assert wrong_root.status_code == 400
    assert await ca_rows(api) == len((await api.admin.get("/api/v1/issuers/iss-local/intermediates")).json()["data"])


async def test_every_route_is_admin_only(api: Api) -> None:
    issuer_id, root, _, _ = await three_levels(api)
    calls = [
        ("POST", f"/api/v1/issuers/{issuer_id}/intermediates", {"name": "x", "parent_ca_id": root["id"]}),
        ("GET", f"/api/v1/issuers/{issuer_id}/intermediates", None),
        ("GET", f"/api/v1/intermediates/{root['id']}", None),
        ("POST", f"/api/v1/intermediates/{root['id']}/retire", {"confirm": False}),
    ]
    for method, url, body in calls:
        user = await api.user.request(method, url, json=body)
        assert user.status_code == 403, (method, url, user.text)
        anon = await api.anon.request(method, url, json=body)
        assert anon.status_code == 401, (method, url, anon.text)
    got = await api.admin.get(f"/api/v1/intermediates/{root['id']}")
    assert got.json()["state"] == "active" and await ca_rows(api) >= 3


# ---- retire ---------------------------------------------------------------------------------------------

async def test_retire_is_two_step_drains_children_first_and_is_audited(api: Api) -> None:
    issuer_id, root, policy, issuing = await three_levels(api)
    retire = "/api/v1/intermediates/{}/retire"
    # The issuer signs leaves with the issuing CA.
    updated = await api.admin.put(f"/api/v1/issuers/{issuer_id}", json={"config": {"issuing_ca_id": issuing["id"]}})
    assert updated.status_code == 200, updated.text
    async with api.services.ctx.db.read() as conn:
        assert (await api.services.cas.issuing_ca(conn, await _issuer_row(api, issuer_id))).id == issuing["id"]

    first = await api.admin.post(retire.format(policy["id"]), json={"note": "policy change"})
    assert first.status_code == 200
    assert first.json() == {"id": policy["id"], "decided_by": "alice", "confirmed": False, "state": "retiring"}
    assert (await api.admin.get(f"/api/v1/intermediates/{policy['id']}")).json()["retire_note"] == "policy change"
    # A retiring CA signs no new CAs; its children keep working.
    under = await api.admin.post(f"/api/v1/issuers/{issuer_id}/intermediates",
                                 json={"name": "late", "parent_ca_id": policy["id"],
                                       "name_constraints": [{"permitted": ["a.example.com"],
                                                             "excluded": ["secret.example.com"]}]})
    assert under.status_code == 409 and "retiring" in under.json()["message"]
    again = await api.admin.post(retire.format(policy["id"]), json={"confirm": False})
    assert again.status_code == 409 and "confirm=true" in again.json()["message"]
    blocked = await api.admin.post(retire.format(policy["id"]), json={"confirm": True})
    assert blocked.status_code == 409 and issuing["id"] in blocked.json()["message"]
    assert blocked.json()["active_children"] == 1
    assert (await api.admin.get(f"/api/v1/intermediates/{policy['id']}")).json()["state"] == "retiring"

    # Draining the issuing CA: it stops signing at once (the CAService cache is dropped).
    assert (await api.admin.post(retire.format(issuing["id"]))).json()["state"] == "retiring"
    async with api.services.ctx.db.read() as conn:
        with pytest.raises(ConflictError, match="retiring"):
            await api.services.cas.issuing_ca(conn, await _issuer_row(api, issuer_id))
    blocked = await api.admin.post(retire.format(policy["id"]), json={"confirm": True})
    assert blocked.status_code == 409  # a retiring child still counts
    done = await api.admin.post(retire.format(issuing["id"]), json={"confirm": True, "note": "drained"})
    assert done.status_code == 200 and done.json()["state"] == "retired" and done.json()["confirmed"] is True
    finished = await api.admin.post(retire.format(policy["id"]), json={"confirm": True})
    assert finished.status_code == 200 and finished.json()["state"] == "retired"

    row = (await api.admin.get(f"/api/v1/intermediates/{issuing['id']}")).json()
    assert row["state"] == "retired" and row["retire_note"] == "drained" and row["retired_at"] is not None
    terminal = await api.admin.post(retire.format(issuing["id"]), json={"confirm": True})
    assert terminal.status_code == 409 and "already retired" in terminal.json()["message"]
    under_retired = await api.admin.post(f"/api/v1/issuers/{issuer_id}/intermediates",
                                         json={"name": "late-2", "parent_ca_id": issuing["id"]})
    assert under_retired.status_code == 409
    assert (await api.admin.post(retire.format("ica-nope"))).status_code == 404

    actions = await api.audit_actions("intermediate_ca")
    assert actions.count("intermediate_ca_retiring") == 2 and actions.count("intermediate_ca_retired") == 2
    assert actions.count("intermediate_ca_created") == 3
    # The root is untouched and still the only active root of the issuer.
    listed = (await api.admin.get(f"/api/v1/issuers/{issuer_id}/intermediates")).json()["data"]
    assert [(r["id"], r["state"]) for r in listed] == [
        (root["id"], "active"), (policy["id"], "retired"), (issuing["id"], "retired")]


# ---- leaves through the tree (the issuance pipeline) -----------------------------------------------------

async def test_leaves_are_issued_by_the_issuing_ca_and_names_outside_its_constraints_are_refused(
    api: Api, tmp_path: Path
) -> None:
    from tests.pki_helpers import make_csr, verify_chain

    issuer_id, root, _, issuing = await three_levels(api)
    updated = await api.admin.put(f"/api/v1/issuers/{issuer_id}", json={"config": {"issuing_ca_id": issuing["id"]}})
    assert updated.status_code == 200, updated.text

    async def request_leaf(name: str) -> tuple[dict[str, Any], Any, str, str]:
        cert = await factories.seed_certificate(api, issuer_id=issuer_id, common_name=name, sans=[name],
                                                status="Pending", expires_at=None)
        agent_id = await factories.seed_agent(api)
        await factories.seed_mapping(api, cert["id"], await factories.seed_target(api, agent_id))
        renewed = await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")
        assert renewed.status_code == 202, renewed.text
        csr_pem, _ = make_csr([name])
        response = await api.admin.post(f"/api/v1/agents/{agent_id}/csr",
                                        json={"csr_pem": csr_pem, "certificate_id": cert["id"]})
        return cert, response, agent_id, renewed.json()["job_id"]

    cert, response, agent_id, _ = await request_leaf("www.shop.example.com")
    assert response.status_code == 202 and response.json()["job_status"] == "Completed", response.text
    pickup = (await api.admin.get(f"/api/v1/agents/{agent_id}/certificates/{cert['id']}")).json()
    chain = pickup["certificate_pem"]
    assert chain.count("BEGIN CERTIFICATE") == 4  # leaf, issuing CA, policy CA, root
    assert chain.endswith(root["cert_pem"]) or root["cert_pem"].strip() in chain
    result = verify_chain(tmp_path, chain, "-x509_strict")
    assert result.returncode == 0 and "leaf.pem: OK" in result.stdout, result.stdout + result.stderr
    leaf = x509.load_pem_x509_certificate(chain.encode())
    assert leaf.issuer.rfc4514_string() == "CN=Issuing CA"

    # Outside the issuing CA's permitted subtree (and the policy CA's): a 400 naming the constraint, nothing
    # signed or stored, and the job still waits for a CSR (the certificate's names are what must change).
    for name in ("www.example.org", "x.secret.example.com", "www.example.com"):
        refused, response, _, job_id = await request_leaf(name)
        assert response.status_code == 400, response.text
        body = response.json()
        assert "name constraints" in body["message"], body
        versions = (await api.admin.get(f"/api/v1/certificates/{refused['id']}/versions")).json()["data"]
        assert versions == []
        job = (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()
        assert job["status"] == "AwaitingCSR", job
