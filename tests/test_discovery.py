"""Discovery: the agent's filesystem scan of a real tree, and the discoveries API (reports, dedup, triage).

The filesystem tests build a directory with chains, DER, PKCS#12 (from `openssl pkcs12` and from
cryptography), a password-protected PKCS#12, key files, junk, an oversized file, a FIFO and symlink loops.
The API tests run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from certctl.connectors.discovery.filesystem import FilesystemScan, scan_directories
from certctl.store import rows
from certctl.store.schema import discovered_certificates, discovery_scans
from tests import factories
from tests.conftest import Api
from tests.pki_helpers import openssl

# ---- certificates ---------------------------------------------------------------------------------------------


@dataclass
class Issued:
    cert: x509.Certificate
    key: Any

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    @property
    def key_pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()


def issue(
    common_name: str, *, issuer: Issued | None = None, ca: bool = False, sans: tuple[str, ...] = (),
    serial: int | None = None, key: Any = None,
) -> Issued:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Issued(cert, key)


@dataclass
class Tree:
    root: Path
    ca: Issued
    intermediate: Issued
    leaf: Issued  # in chain.pem with the intermediate and the root
    der_leaf: Issued  # RSA, in leaf.der
    combined: Issued  # cert + key in one PEM (HAProxy style)
    p12_openssl: Issued  # openssl pkcs12 -passout pass: (empty password)
    p12_plain: Issued  # cryptography, no encryption at all
    p12_protected: Issued
    txt_cert: Issued  # a PEM certificate in a .txt file: found
    no_extension: Issued  # a PEM certificate in a file without extension: skipped, as the reference


def build_tree(base: Path) -> Tree:
    root = base / "etc"
    (root / "ssl" / "private").mkdir(parents=True)
    (root / "live" / "example.com").mkdir(parents=True)
    (root / "empty").mkdir()
    ca = issue("Discovery Root CA", ca=True)
    intermediate = issue("Discovery Issuing CA", issuer=ca, ca=True)
    # A serial whose DER has a leading zero octet: canonical hex drops it.
    leaf = issue("www.example.com", issuer=intermediate, sans=("www.example.com", "example.com"), serial=0x00FF01)
    (root / "live" / "example.com" / "chain.pem").write_text(leaf.pem + intermediate.pem + ca.pem)

    der_leaf = issue("der.example.com", issuer=ca, key=rsa.generate_private_key(65537, 2048), sans=("der.example.com",))
    (root / "ssl" / "leaf.der").write_bytes(der_leaf.der)

    combined = issue("haproxy.example.com", issuer=ca)
    (root / "ssl" / "haproxy.pem").write_text(combined.pem + combined.key_pem)
    (root / "ssl" / "private" / "server.key").write_text(combined.key_pem)
    (root / "ssl" / "private" / "only-key.pem").write_text(leaf.key_pem)

    p12_openssl = issue("p12.example.com", issuer=ca)
    (base / "p12.crt").write_text(p12_openssl.pem)
    (base / "p12.key").write_text(p12_openssl.key_pem)
    (base / "ca.crt").write_text(ca.pem)
    openssl("pkcs12", "-export", "-in", str(base / "p12.crt"), "-inkey", str(base / "p12.key"),
            "-certfile", str(base / "ca.crt"), "-passout", "pass:", "-out", str(root / "ssl" / "bundle.p12"))
    p12_plain = issue("plain-p12.example.com", issuer=ca)
    (root / "ssl" / "plain.pfx").write_bytes(pkcs12.serialize_key_and_certificates(
        b"plain", p12_plain.key, p12_plain.cert, None, serialization.NoEncryption()))
    p12_protected = issue("locked.example.com", issuer=ca)
    (base / "locked.crt").write_text(p12_protected.pem)
    (base / "locked.key").write_text(p12_protected.key_pem)
    openssl("pkcs12", "-export", "-in", str(base / "locked.crt"), "-inkey", str(base / "locked.key"),
            "-passout", "pass:secret", "-out", str(root / "ssl" / "locked.p12"))

    txt_cert = issue("txt.example.com", issuer=ca)
    (root / "notes-with-cert.txt").write_text("see below\n" + txt_cert.pem)
    no_extension = issue("noext.example.com", issuer=ca)
    (root / "README").write_text(no_extension.pem)
    (root / "notes.txt").write_text("nothing to see\n")
    (root / "junk.pem").write_text("this is not PEM at all\n")
    (root / "junk.crt").write_bytes(os.urandom(300))
    (root / "broken.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nAAAAbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n" + ca.pem)
    (root / "big.pem").write_text(ca.pem + "#" * (1 << 20))
    (root / "cert.pem.certctl-bak.1700000000000000000").write_text(leaf.pem)  # the deploy engine's backup
    os.mkfifo(root / "pipe.pem")  # opening a FIFO would block the scan
    (root / "live" / "loop").symlink_to(root)  # a symlink loop back to the top
    (root / "live" / "example.com" / "self").symlink_to(".")
    (root / "dangling.pem").symlink_to(root / "missing.pem")
    return Tree(root, ca, intermediate, leaf, der_leaf, combined, p12_openssl, p12_plain, p12_protected,
                txt_cert, no_extension)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return build_tree(tmp_path)


def _by_path(scan: FilesystemScan) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for entry in scan.certificates:
        found.setdefault(Path(entry.source_path).relative_to(scan.directories[0]).as_posix(), set()).add(
            entry.fingerprint_sha256)
    return found


# ---- the filesystem scan ----------------------------------------------------------------------------------------


def test_filesystem_scan_finds_every_certificate_and_reports_each_bad_file(tree: Tree) -> None:
    scan = scan_directories([tree.root])
    assert _by_path(scan) == {
        "live/example.com/chain.pem": {tree.leaf.fingerprint, tree.intermediate.fingerprint, tree.ca.fingerprint},
        "ssl/leaf.der": {tree.der_leaf.fingerprint},
        "ssl/haproxy.pem": {tree.combined.fingerprint},
        "ssl/bundle.p12": {tree.p12_openssl.fingerprint, tree.ca.fingerprint},
        "ssl/plain.pfx": {tree.p12_plain.fingerprint},
        "notes-with-cert.txt": {tree.txt_cert.fingerprint},
        "broken.pem": {tree.ca.fingerprint},  # the good block of a file with a bad one
    }
    assert len(scan.certificates) == 10  # no entry twice, although two symlinks lead back into the tree

    problems = {Path(line.split(": ", 1)[0]).relative_to(tree.root).as_posix(): line for line in scan.errors}
    assert set(problems) == {"ssl/locked.p12", "junk.pem", "junk.crt", "broken.pem", "big.pem", "dangling.pem"}
    assert "password" in problems["ssl/locked.p12"]
    assert "no PEM blocks" in problems["junk.pem"]
    assert "neither PEM nor a DER certificate" in problems["junk.crt"]
    assert "certificate block 1 does not parse" in problems["broken.pem"]
    assert "larger than 1048576 bytes" in problems["big.pem"]
    assert "cannot read" in problems["dangling.pem"]
    assert scan.files_skipped >= 6  # server.key, README, the backup, the FIFO, big.pem, locked.p12, ...

    # The report never carries a private key, although three files in the tree hold one.
    report = json.dumps(scan.report("agent-x"))
    assert "PRIVATE KEY" not in report and tree.combined.key_pem.splitlines()[1] not in report


def test_filesystem_entry_fields(tree: Tree) -> None:
    scan = scan_directories([tree.root / "live", tree.root / "ssl"])
    entries = {e.fingerprint_sha256: e for e in scan.certificates}
    leaf = entries[tree.leaf.fingerprint]
    assert leaf.common_name == "www.example.com"
    assert leaf.sans == ("www.example.com", "example.com")
    assert leaf.serial_number == "ff01"  # canonical hex: no leading zeros, lowercase
    assert leaf.issuer_dn == "CN=Discovery Issuing CA" and leaf.subject_dn == "CN=www.example.com"
    assert leaf.not_before == tree.leaf.cert.not_valid_before_utc
    assert leaf.not_after == tree.leaf.cert.not_valid_after_utc
    assert (leaf.key_algorithm, leaf.key_size, leaf.is_ca) == ("ECDSA", 256, False)
    assert leaf.source_format == "PEM" and leaf.source_path == str(tree.root / "live/example.com/chain.pem")
    assert leaf.pem_data == tree.leaf.pem
    assert entries[tree.intermediate.fingerprint].is_ca is True
    der = entries[tree.der_leaf.fingerprint]
    assert (der.key_algorithm, der.key_size, der.source_format) == ("RSA", 2048, "DER")
    assert entries[tree.p12_openssl.fingerprint].source_format == "PKCS12"
    as_json = leaf.to_json()
    assert datetime.fromisoformat(as_json["not_after"]) == tree.leaf.cert.not_valid_after_utc
    assert as_json["sans"] == ["www.example.com", "example.com"]


def test_filesystem_scan_of_missing_and_empty_directories(tree: Tree, tmp_path: Path) -> None:
    scan = scan_directories([tmp_path / "nowhere", tree.root / "empty"])
    assert scan.certificates == [] and len(scan.errors) == 1 and "cannot read directory" in scan.errors[0]
    assert scan.directories == [str(tmp_path / "nowhere"), str(tree.root / "empty")]


def test_overlapping_directories_are_walked_once(tree: Tree) -> None:
    once = scan_directories([tree.root])
    twice = scan_directories([tree.root, tree.root / "ssl", tree.root / "live" / "loop"])
    assert sorted((e.fingerprint_sha256, e.source_path) for e in once.certificates) == sorted(
        (e.fingerprint_sha256, e.source_path) for e in twice.certificates)


def test_report_bodies_stay_under_the_size_limit(tree: Tree) -> None:
    scan = scan_directories([tree.root])
    bodies = scan.report_bodies("agent-x", max_bytes=5000)
    assert len(bodies) > 1
    assert all(len(json.dumps(b)) <= 5000 for b in bodies if len(b["certificates"]) > 1)
    assert bodies[0]["errors"] == scan.errors and all(b["errors"] == [] for b in bodies[1:])
    sent = [c["fingerprint_sha256"] for b in bodies for c in b["certificates"]]
    assert sent == [e.fingerprint_sha256 for e in scan.certificates]
    assert scan.report_bodies("agent-x") == [scan.report("agent-x")]


# ---- the discoveries API -----------------------------------------------------------------------------------------


async def _counts(api: Api) -> tuple[int, int]:
    async with api.services.ctx.db.read() as conn:
        return (await rows.count_rows(conn, discovered_certificates), await rows.count_rows(conn, discovery_scans))


async def _report(api: Api, agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.user.post(f"/api/v1/agents/{agent_id}/discoveries", json=body)
    assert response.status_code == 202, response.text
    data: dict[str, Any] = response.json()
    return data


async def test_report_is_stored_and_a_second_report_deduplicates(api: Api, tree: Tree) -> None:
    agent = await factories.agent(api.admin)
    scan = scan_directories([tree.root])
    first = await _report(api, agent["id"], scan.report(agent["id"]))
    assert first["id"].startswith("dscan-") and first["agent_id"] == agent["id"]
    assert (first["certificates_found"], first["certificates_new"]) == (10, 10)
    assert first["errors_count"] == len(scan.errors) == 6 and first["errors"] == scan.errors
    assert first["directories"] == [str(tree.root)] and first["completed_at"] is not None

    listed = (await api.user.get("/api/v1/discovered-certificates", params={"per_page": 500})).json()
    assert listed["total"] == 10
    row = next(d for d in listed["data"] if d["fingerprint_sha256"] == tree.leaf.fingerprint)
    assert row["id"].startswith("dcert-") and row["status"] == "Unmanaged" and row["agent_id"] == agent["id"]
    assert row["serial_number"] == "ff01" and row["sans"] == ["www.example.com", "example.com"]
    assert row["discovery_scan_id"] == first["id"] and row["managed_certificate_id"] is None
    assert row["first_seen_at"] == row["last_seen_at"]
    assert datetime.fromisoformat(row["not_after"]) == tree.leaf.cert.not_valid_after_utc

    second = await _report(api, agent["id"], scan.report(agent["id"]))
    assert (second["certificates_found"], second["certificates_new"]) == (10, 0)
    again = (await api.user.get(f"/api/v1/discovered-certificates/{row['id']}")).json()
    assert again["first_seen_at"] == row["first_seen_at"] and again["last_seen_at"] >= row["last_seen_at"]
    assert again["discovery_scan_id"] == second["id"]
    assert await _counts(api) == (10, 2)

    # The same certificate found by another agent, or at another path, is another row.
    other = await factories.agent(api.admin)
    entry = next(e for e in scan.certificates if e.fingerprint_sha256 == tree.leaf.fingerprint).to_json()
    third = await _report(api, other["id"], {"agent_id": other["id"], "directories": ["/x"], "certificates": [
        entry, {**entry, "source_path": "/x/copy.pem"}, {**entry, "source_path": "/x/copy.pem"}]})
    assert (third["certificates_found"], third["certificates_new"]) == (2, 2)
    assert await _counts(api) == (12, 3)

    scans = (await api.user.get("/api/v1/discovery-scans")).json()
    assert [s["id"] for s in scans["data"]] == [third["id"], second["id"], first["id"]]
    by_agent = (await api.user.get("/api/v1/discovery-scans", params={"agent_id": agent["id"]})).json()
    assert by_agent["total"] == 2
    assert await api.audit_actions("discovery_scan") == ["discovery_scan_completed"] * 3


async def test_claim_dismiss_filters_and_summary(api: Api) -> None:
    agents = [(await factories.agent(api.admin))["id"] for _ in range(2)]
    ca = issue("Triage CA", ca=True)
    leaves = [issue(f"t{i}.example.com", issuer=ca) for i in range(5)]
    for index, agent_id in enumerate(agents):
        mine = leaves[:3] if index == 0 else leaves[3:]
        await _report(api, agent_id, {"agent_id": agent_id, "directories": ["/etc/ssl"], "certificates": [
            {"fingerprint_sha256": leaf.fingerprint, "pem_data": leaf.pem, "source_path": f"/etc/ssl/{n}.pem"}
            for n, leaf in enumerate(mine)]})
    listed = (await api.user.get("/api/v1/discovered-certificates", params={"agent_id": agents[0]})).json()
    assert listed["total"] == 3 and {d["agent_id"] for d in listed["data"]} == {agents[0]}
    ids = {d["fingerprint_sha256"]: d["id"] for d in
           (await api.user.get("/api/v1/discovered-certificates")).json()["data"]}
    first, second, third = (ids[leaf.fingerprint] for leaf in leaves[:3])

    managed = await factories.certificate(api.admin)
    other = await factories.certificate(api.admin)
    claim = f"/api/v1/discovered-certificates/{first}/claim"
    assert (await api.user.post("/api/v1/discovered-certificates/dcert-nope/claim",
                                json={"managed_certificate_id": managed["id"]})).status_code == 404
    missing = await api.user.post(claim, json={"managed_certificate_id": "mc-nope"})
    assert missing.status_code == 404 and "mc-nope" in missing.json()["message"]
    assert (await api.user.post(claim, json={})).status_code == 400
    claimed = await api.user.post(claim, json={"managed_certificate_id": managed["id"]})
    assert claimed.status_code == 200 and claimed.json()["status"] == "claimed"
    row = (await api.user.get(f"/api/v1/discovered-certificates/{first}")).json()
    assert row["status"] == "Managed" and row["managed_certificate_id"] == managed["id"]
    assert (await api.user.post(claim, json={"managed_certificate_id": managed["id"]})).status_code == 200  # repeat
    conflict = await api.user.post(claim, json={"managed_certificate_id": other["id"]})
    assert conflict.status_code == 409 and managed["id"] in conflict.json()["message"]
    assert (await api.user.post(f"/api/v1/discovered-certificates/{first}/dismiss")).status_code == 409

    dismiss = f"/api/v1/discovered-certificates/{second}/dismiss"
    dismissed = await api.user.post(dismiss)
    assert dismissed.status_code == 200 and dismissed.json()["status"] == "dismissed"
    assert (await api.user.post(dismiss)).status_code == 200
    row = (await api.user.get(f"/api/v1/discovered-certificates/{second}")).json()
    assert row["status"] == "Dismissed" and row["dismissed_at"] is not None
    assert (await api.user.post("/api/v1/discovered-certificates/dcert-nope/dismiss")).status_code == 404

    # A dismissed certificate can still be claimed; an archived managed certificate cannot take a claim.
    assert (await api.admin.delete(f"/api/v1/certificates/{other['id']}")).status_code == 204
    archived = await api.user.post(f"/api/v1/discovered-certificates/{third}/claim",
                                   json={"managed_certificate_id": other["id"]})
    assert archived.status_code == 409 and "archived" in archived.json()["message"]

    summary = (await api.user.get("/api/v1/discovery-summary")).json()
    assert summary == {"Unmanaged": 3, "Managed": 1, "Dismissed": 1}
    for status, count in summary.items():
        for spelling in (status, status.lower()):
            page = (await api.user.get("/api/v1/discovered-certificates", params={"status": spelling})).json()
            assert page["total"] == count and {d["status"] for d in page["data"]} <= {status}
    paged = (await api.user.get("/api/v1/discovered-certificates", params={"per_page": 2, "page": 3})).json()
    assert (paged["total"], len(paged["data"]), paged["page"], paged["per_page"]) == (5, 1, 3, 2)
    bad = await api.user.get("/api/v1/discovered-certificates", params={"status": "Lost"})
    assert bad.status_code == 400 and "Unmanaged" in bad.json()["message"]

    actions = await api.audit_actions("discovered_certificate")
    assert actions == ["discovered_certificate_dismissed", "discovered_certificate_claimed"]


async def test_claim_audit_says_whether_the_certificate_is_a_version(api: Api) -> None:
    agent = await factories.agent(api.admin)
    leaf = issue("version.example.com", ca=False)
    await _report(api, agent["id"], {"agent_id": agent["id"], "directories": ["/d"], "certificates": [
        {"fingerprint_sha256": leaf.fingerprint, "pem_data": leaf.pem, "source_path": "/d/v.pem"}]})
    managed = await factories.seed_certificate(api)
    version_id = await factories.seed_version(api, managed["id"])
    async with api.services.ctx.db.transaction() as conn:
        from certctl.store.schema import certificate_versions

        await rows.update_row(conn, certificate_versions, version_id, {"fingerprint_sha256": leaf.fingerprint})
    found = (await api.user.get("/api/v1/discovered-certificates")).json()["data"][0]
    response = await api.user.post(f"/api/v1/discovered-certificates/{found['id']}/claim",
                                   json={"managed_certificate_id": managed["id"]})
    assert response.status_code == 200
    await api.services.audit_sink.flush()
    events = (await api.admin.get("/api/v1/audit", params={"resource_type": "discovered_certificate"})).json()["data"]
    assert events[0]["details"]["matches_a_version"] is True
    assert events[0]["details"]["managed_certificate_id"] == managed["id"]


async def test_bad_reports_are_refused_with_nothing_written(api: Api, tree: Tree) -> None:
    agent = await factories.agent(api.admin)
    good = next(e for e in scan_directories([tree.root]).certificates
                if e.fingerprint_sha256 == tree.leaf.fingerprint).to_json()
    base = {"agent_id": agent["id"], "directories": ["/etc"], "certificates": [good]}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**base, "agent_id": "someone-else"}, 400, "does not match"),
        ({k: v for k, v in base.items() if k != "certificates"}, 400, "certificates"),
        ({k: v for k, v in base.items() if k != "directories"}, 400, "directories"),
        ({**base, "colour": "red"}, 400, "colour"),
        ({**base, "certificates": [good, {**good, "fingerprint_sha256": "zz"}]}, 400, "fingerprint_sha256"),
        ({**base, "certificates": [good, {**good, "fingerprint_sha256": tree.ca.fingerprint}]}, 400,
         "certificates[1].fingerprint_sha256 is not the SHA-256"),
        ({**base, "certificates": [good, {**good, "pem_data": good["pem_data"] + tree.leaf.key_pem}]}, 400,
         "private key"),
        ({**base, "certificates": [good, {**good, "pem_data": good["pem_data"] * 2}]}, 400, "exactly one"),
        ({**base, "certificates": [good, {**good, "pem_data": "", "serial_number": "xyz"}]}, 400, "serial_number"),
        ({**base, "certificates": [{**good, "source_path": ""}]}, 400, "source_path"),
        ({**base, "certificates": [{**good, "source_path": "/x" * 600}]}, 400, "source_path"),
        ({**base, "certificates": [{**good, "source_path": "/a\nb"}]}, 400, "control characters"),
        ({**base, "certificates": [{**good, "source_format": "JKS"}]}, 400, "source_format"),
        ({**base, "scan_duration_ms": -1}, 400, "scan_duration_ms"),
    ]
    for body, status, needle in cases:
        response = await api.user.post(f"/api/v1/agents/{agent['id']}/discoveries", json=body)
        assert response.status_code == status, (body, response.text)
        error = response.json()
        assert set(error) == {"error", "message", "request_id"} and needle in error["message"], (needle, error)

    unknown = await api.user.post("/api/v1/agents/agent-nope/discoveries", json={**base, "agent_id": "agent-nope"})
    assert unknown.status_code == 404
    sentinel = await api.user.post("/api/v1/agents/server-scanner/discoveries",
                                   json={**base, "agent_id": "server-scanner"})
    assert sentinel.status_code == 403
    retired = await factories.agent(api.admin)
    assert (await api.admin.delete(f"/api/v1/agents/{retired['id']}")).status_code == 200
    gone = await api.user.post(f"/api/v1/agents/{retired['id']}/discoveries", json={**base, "agent_id": retired["id"]})
    assert gone.status_code == 410

    assert await _counts(api) == (0, 0)
    assert (await api.user.get("/api/v1/discovery-summary")).json() == {"Unmanaged": 0, "Managed": 0, "Dismissed": 0}
    assert await api.audit_actions("discovery_scan") == []

    # The same body, corrected, goes through: the refusals above were about the input, not the agent.
    accepted = await api.user.post(f"/api/v1/agents/{agent['id']}/discoveries", json=base)
    assert accepted.status_code == 202 and await _counts(api) == (1, 1)


async def test_reported_fields_are_read_from_the_certificate(api: Api) -> None:
    """With pem_data the certificate is the authority; without it the agent's description is kept."""
    agent = await factories.agent(api.admin)
    leaf = issue("truth.example.com", sans=("truth.example.com",), serial=0x0A0B)
    body = {"agent_id": agent["id"], "directories": ["/d"], "certificates": [
        {"fingerprint_sha256": leaf.fingerprint.upper(), "pem_data": leaf.pem, "source_path": "/d/a.pem",
         "common_name": "lies.example.com", "key_algorithm": "RSA", "key_size": 1024, "serial_number": "1"},
        {"fingerprint_sha256": "ab" * 32, "source_path": "/d/b.der", "source_format": "der",
         "common_name": "described.example.com", "serial_number": "00:0A:0B", "not_after": "2030-01-01T00:00:00Z"},
    ]}
    await _report(api, agent["id"], body)
    rows_by_path = {d["source_path"]: d for d in (await api.user.get("/api/v1/discovered-certificates")).json()["data"]}
    from_pem = rows_by_path["/d/a.pem"]
    assert from_pem["fingerprint_sha256"] == leaf.fingerprint
    assert (from_pem["common_name"], from_pem["key_algorithm"], from_pem["key_size"]) == ("truth.example.com",
                                                                                          "ECDSA", 256)
    assert from_pem["serial_number"] == "a0b" and from_pem["pem_data"] == leaf.pem
    described = rows_by_path["/d/b.der"]
    assert (described["common_name"], described["serial_number"], described["source_format"]) == (
        "described.example.com", "a0b", "DER")
    assert described["not_after"].startswith("2030-01-01T00:00:00") and described["pem_data"] == ""


async def test_an_agent_reports_with_its_own_key_and_only_for_itself(api: Api) -> None:
    from tests.conftest import _client

    mine, theirs = await factories.agent(api.admin), await factories.agent(api.admin)
    leaf = issue("own-key.example.com")
    body = {"agent_id": mine["id"], "directories": ["/d"], "certificates": [
        {"fingerprint_sha256": leaf.fingerprint, "pem_data": leaf.pem, "source_path": "/d/own.pem"}]}
    async with _client(api.app, mine["api_key"]) as agent_client:
        accepted = await agent_client.post(f"/api/v1/agents/{mine['id']}/discoveries", json=body)
        assert accepted.status_code == 202, accepted.text
        for_other = await agent_client.post(f"/api/v1/agents/{theirs['id']}/discoveries",
                                            json={**body, "agent_id": theirs["id"]})
        assert for_other.status_code == 403
        assert (await agent_client.get("/api/v1/discovered-certificates")).status_code == 403  # triage is operators'
    await api.services.audit_sink.flush()
    events = (await api.admin.get("/api/v1/audit", params={"resource_type": "discovery_scan"})).json()["data"]
    assert [(e["actor"], e["actor_type"]) for e in events] == [(mine["id"], "Agent")]
