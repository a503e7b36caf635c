"""The ACME issuer connector against a real pebble (Debian's /usr/bin/pebble with pebble-challtestsrv as its DNS),
then through certctl's job path, revocation, config checks and the ARI-driven renewal scan.

pebble runs on random 127.0.0.1 ports with a TLS certificate made here (the package ships none) that the
connector trusts through `ca_bundle_path`; pebble-challtestsrv answers every A query with 127.0.0.1, so pebble's
http-01 validation reaches the connector's built-in responder on pebble's `httpPort`, and its dns-01 validation
reads the TXT records the hook scripts set through challtestsrv's management API.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select, text

from certctl.connectors.issuers.acme import AcmeIssuer, ari_cert_id
from certctl.connectors.issuers.base import IssueRequest, IssuerError, RevokeRequest, StoredAccount
from certctl.domain.clock import FakeClock
from certctl.services.issuance import run_due_issuing_jobs
from certctl.store import acme_client_repo, rows
from certctl.store.schema import acme_client_accounts, acme_renewal_info, deployment_targets, issuers
from tests import factories
from tests.conftest import Api, make_settings, start_api, stop_api
from tests.pki_helpers import make_csr
from tests.servers import free_port

HOOK = r'''
import json, os, sys, urllib.request
action, fqdn, value = sys.argv[1], sys.argv[-2], sys.argv[-1]
body = {"host": fqdn.rstrip(".") + "."}
if action == "present":
    body["value"] = value
request = urllib.request.Request(os.environ["CHALLTESTSRV"] + ("/set-txt" if action == "present" else "/clear-txt"),
                                 data=json.dumps(body).encode(), method="POST")
urllib.request.urlopen(request, timeout=5).read()
with open(os.environ["HOOK_LOG"], "a") as log:
    log.write(json.dumps({"action": action, "argv": sys.argv[2:], "env": {k: v for k, v in os.environ.items()
                                                                         if k.startswith("CERTCTL_")}}) + "\n")
'''


# ---- pebble ------------------------------------------------------------------------------------------
def _tls_pair(directory: Path) -> Path:
    """A CA and a 127.0.0.1/localhost server certificate for pebble's HTTPS; returns the CA file."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble test TLS root")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
          .not_valid_after(now + timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "tls-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "tls-cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (directory / "tls-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return directory / "tls-ca.pem"


def _wait_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {process.stdout.read().decode() if process.stdout else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


@dataclass
class Pebble:
    directory_url: str
    management_url: str
    challtestsrv_url: str
    dns_address: str
    http_port: int
    ca_bundle: Path
    root: Path
    eab: dict[str, str]

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def status(self, serial_hex: str) -> str:
        """pebble's own view of a certificate (its management API), e.g. Valid or Revoked."""
        with urllib.request.urlopen(f"{self.management_url}/cert-status-by-serial/{serial_hex}",
                                    context=self._ssl(), timeout=5) as response:
            return str(json.loads(response.read())["Status"])

    def issuing_roots(self) -> list[x509.Certificate]:
        with urllib.request.urlopen(f"{self.management_url}/roots/0", context=self._ssl(), timeout=5) as response:
            return [x509.load_pem_x509_certificate(response.read())]

    def config(self, **overrides: Any) -> dict[str, Any]:
        return {"directory_url": self.directory_url, "email": "pki@example.com", "http_port": self.http_port,
                "http_address": "127.0.0.1", "ca_bundle_path": str(self.ca_bundle), **overrides}

    def dns_config(self, hook_log: Path, **overrides: Any) -> dict[str, Any]:
        hook = self.root / "hook.py"
        return self.config(**{
            "challenge_type": "dns-01", "dns_present_script": [sys.executable, str(hook), "present"],
            "dns_cleanup_script": [sys.executable, str(hook), "cleanup"], "dns_propagation_wait": 5,
            "dns_check_resolver": self.dns_address, "dns_hook_timeout_seconds": 10,
            "dns_hook_env": {"CHALLTESTSRV": self.challtestsrv_url, "HOOK_LOG": str(hook_log)}, **overrides})


def _start_pebble(root: Path, *, eab: dict[str, str] | None = None) -> tuple[Pebble, list[subprocess.Popen[bytes]]]:
    root.mkdir(parents=True, exist_ok=True)
    ca_bundle = _tls_pair(root)
    (root / "hook.py").write_text(HOOK)
    ports = {name: free_port() for name in ("acme", "mgmt", "http", "tls", "chall_mgmt", "dns")}
    config = {"pebble": {
        "listenAddress": f"127.0.0.1:{ports['acme']}", "managementListenAddress": f"127.0.0.1:{ports['mgmt']}",
        "certificate": str(root / "tls-cert.pem"), "privateKey": str(root / "tls-key.pem"),
        "httpPort": ports["http"], "tlsPort": ports["tls"], "ocspResponderURL": "",
        "externalAccountBindingRequired": bool(eab), **({"externalAccountMACKeys": eab} if eab else {}),
    }}
    (root / "pebble.json").write_text(json.dumps(config))
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
    chall = subprocess.Popen(
        ["/usr/bin/pebble-challtestsrv", "-management", f"127.0.0.1:{ports['chall_mgmt']}",
         "-dns01", f"127.0.0.1:{ports['dns']}", "-http01", "", "-https01", "", "-tlsalpn01", "",
         "-defaultIPv6", ""],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    pebble = subprocess.Popen(
        ["/usr/bin/pebble", "-config", str(root / "pebble.json"), "-dnsserver", f"127.0.0.1:{ports['dns']}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=root)
    _wait_port(ports["chall_mgmt"], chall, "pebble-challtestsrv")
    _wait_port(ports["acme"], pebble, "pebble")
    _wait_port(ports["mgmt"], pebble, "pebble management")
    return Pebble(
        directory_url=f"https://127.0.0.1:{ports['acme']}/dir", management_url=f"https://127.0.0.1:{ports['mgmt']}",
        challtestsrv_url=f"http://127.0.0.1:{ports['chall_mgmt']}", dns_address=f"127.0.0.1:{ports['dns']}",
        http_port=ports["http"], ca_bundle=ca_bundle, root=root, eab=eab or {},
    ), [pebble, chall]


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    running, processes = _start_pebble(tmp_path_factory.mktemp("pebble"))
    try:
        yield running
    finally:
        _stop(processes)


# ---- connector level ----------------------------------------------------------------------------------
class MemoryAccounts:
    """An AccountStore in memory (the service's sealed store is tested through the API below)."""

    def __init__(self) -> None:
        self.accounts: dict[str, StoredAccount] = {}
        self.created = 0

    async def load(self, directory_url: str) -> StoredAccount | None:
        return self.accounts.get(directory_url)

    async def create(self, directory_url: str, key_pem: str, contact: str) -> StoredAccount:
        self.created += 1
        self.accounts.setdefault(directory_url, StoredAccount(directory_url, key_pem))
        return self.accounts[directory_url]

    async def registered(self, directory_url: str, account_url: str) -> None:
        old = self.accounts[directory_url]
        self.accounts[directory_url] = StoredAccount(directory_url, old.key_pem, account_url)


def _leaf_and_chain(result_leaf: str, result_chain: str) -> tuple[x509.Certificate, list[x509.Certificate]]:
    chain = x509.load_pem_x509_certificates(result_chain.encode()) if result_chain else []
    return x509.load_pem_x509_certificate(result_leaf.encode()), chain


async def test_account_is_created_once_and_reused_after_a_restart(pebble: Pebble) -> None:
    accounts = MemoryAccounts()
    first = AcmeIssuer(pebble.config(), accounts=accounts)
    _, url = await first.account()
    assert url.startswith(pebble.directory_url.rsplit("/", 1)[0]) and accounts.created == 1
    restarted = AcmeIssuer(pebble.config(), accounts=accounts)  # a new process: only the store survives
    _, again = await restarted.account()
    assert again == url and accounts.created == 1


async def test_http01_issue_with_the_builtin_responder(pebble: Pebble) -> None:
    connector = AcmeIssuer(pebble.config(), accounts=MemoryAccounts())
    csr, key = make_csr(["web.acme.test", "www.acme.test"])
    result = await connector.issue(IssueRequest(csr_pem=csr, common_name="web.acme.test"))
    leaf, chain = _leaf_and_chain(result.leaf_pem, result.chain_pem)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sorted(names) == ["web.acme.test", "www.acme.test"]
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    assert chain
    leaf.verify_directly_issued_by(chain[0])  # raises unless pebble's intermediate signed it
    assert result.order_id.startswith("https://127.0.0.1:") and result.serial == format(leaf.serial_number, "x")
    assert pebble.status(result.serial) == "Valid"
    # the responder is closed once the order is done
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", pebble.http_port), timeout=0.5).close()


def _static_server(port: int, root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_http01_through_a_webroot_served_by_another_server(pebble: Pebble, tmp_path: Path) -> None:
    webroot = tmp_path / "www"
    webroot.mkdir()
    server = _static_server(pebble.http_port, webroot)
    try:
        _wait_port(pebble.http_port, server, "http.server")
        connector = AcmeIssuer(pebble.config(http_webroot=str(webroot)), accounts=MemoryAccounts())
        csr, _ = make_csr(["webroot.acme.test"])
        result = await connector.issue(IssueRequest(csr_pem=csr, common_name="webroot.acme.test"))
    finally:
        _stop([server])
    assert pebble.status(result.serial) == "Valid"
    assert list((webroot / ".well-known" / "acme-challenge").iterdir()) == []  # token files removed afterwards


async def test_dns01_issue_through_hook_scripts_then_revoke(pebble: Pebble, tmp_path: Path) -> None:
    hook_log = tmp_path / "hooks.jsonl"
    connector = AcmeIssuer(pebble.dns_config(hook_log), accounts=MemoryAccounts())
    csr, _ = make_csr(["dns.acme.test"])
    started = time.monotonic()
    result = await connector.issue(IssueRequest(csr_pem=csr, common_name="dns.acme.test"))
    assert time.monotonic() - started < 5  # the resolver check saw the record: no blind 5 s wait
    leaf, _ = _leaf_and_chain(result.leaf_pem, result.chain_pem)
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName) == ["dns.acme.test"]
    calls = [json.loads(line) for line in hook_log.read_text().splitlines()]
    assert [c["action"] for c in calls] == ["present", "cleanup"]
    present = calls[0]
    fqdn, value = present["argv"]
    assert fqdn == "_acme-challenge.dns.acme.test" and len(value) == 43  # base64url SHA-256 (RFC 8555 §8.4)
    assert present["env"] == {"CERTCTL_DNS_DOMAIN": "dns.acme.test", "CERTCTL_DNS_FQDN": fqdn,
                              "CERTCTL_DNS_VALUE": value, "CERTCTL_DNS_TOKEN": present["env"]["CERTCTL_DNS_TOKEN"]}
    assert calls[1]["argv"] == [fqdn, value]

    await connector.revoke(RevokeRequest(cert_pem=result.leaf_pem, reason_code=4))
    assert pebble.status(result.serial) == "Revoked"


async def test_failing_present_hook_is_a_retryable_error_and_nothing_is_ordered(pebble: Pebble, tmp_path: Path
                                                                                 ) -> None:
    config = pebble.dns_config(tmp_path / "log", dns_present_script=["/bin/false"])
    connector = AcmeIssuer(config, accounts=MemoryAccounts())
    csr, _ = make_csr(["fail.acme.test"])
    with pytest.raises(IssuerError) as failed:
        await connector.issue(IssueRequest(csr_pem=csr, common_name="fail.acme.test"))
    assert failed.value.retryable and "present hook exited with 1" in failed.value.message


async def test_external_account_binding(tmp_path: Path) -> None:
    hmac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
    running, processes = _start_pebble(tmp_path / "eab", eab={"kid-1": hmac})
    try:
        without = AcmeIssuer(running.config(), accounts=MemoryAccounts())
        with pytest.raises(IssuerError) as refused:
            await without.account()
        assert not refused.value.retryable and "external account binding" in refused.value.message
        accounts = MemoryAccounts()
        with_eab = AcmeIssuer(running.config(eab_kid="kid-1", eab_hmac=hmac), accounts=accounts)
        _, url = await with_eab.account()
        assert accounts.accounts[running.directory_url].account_url == url
    finally:
        _stop(processes)


def test_ari_cert_id_is_rfc9773_aki_dot_serial() -> None:
    # RFC 9773 §4.1 example: AKI 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4, serial 00:87:65:43:21
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(0x87654321).not_valid_before(datetime.now(UTC))
            .not_valid_after(datetime.now(UTC) + timedelta(days=1))
            .add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
            .sign(key, hashes.SHA256()))
    assert ari_cert_id(cert) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


# ---- through certctl: config checks, job path, revocation ------------------------------------------------
@pytest.fixture
async def server_api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    running, lifespan = await start_api(make_settings(database_url, tmp_path / "srv", keygen_mode="server"))
    try:
        yield running
    finally:
        await stop_api(running, lifespan)


BAD_CONFIGS: list[tuple[dict[str, Any], str]] = [
    ({"challenge_type": "dns-01"}, "dns_present_script is required"),
    ({"dns_present_script": "relative/hook.sh", "challenge_type": "dns-01"}, "absolute program path"),
    ({"eab_kid": "kid-1"}, "eab_kid and eab_hmac must be set together"),
    ({"eab_kid": "kid-1", "eab_hmac": "not base64!"}, "eab_hmac must be the base64url"),
    ({"dns_propagation_wait": -1}, "dns_propagation_wait must be a number from 0 to 3600"),
    ({"ca_bundle_path": "ca.pem"}, "ca_bundle_path must be an absolute path"),
    ({"ari_enabled": "yes"}, "ari_enabled must be true or false"),
]


async def test_bad_acme_config_is_a_400_and_nothing_is_stored(api: Api) -> None:
    async with api.services.ctx.db.read() as conn:
        before = await rows.count_rows(conn, issuers)
    for change, problem in BAD_CONFIGS:
        config = {"directory_url": "https://acme.example.com/dir", "email": "pki@example.com", **change}
        response = await api.admin.post("/api/v1/issuers", json={"name": "bad-acme", "type": "ACME", "config": config})
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["error"] == "Bad Request" and problem in body["message"] and body["request_id"], body
        assert "not base64!" not in body["message"]  # never echoes a value
    # an update to a bad config is refused the same way and leaves the stored config as it was
    good = await factories.issuer(api.admin, type="ACME", config={"directory_url": "https://acme.example.com/dir",
                                                                   "email": "pki@example.com"})
    refused = await api.admin.put(f"/api/v1/issuers/{good['id']}", json={"config": {
        "directory_url": "https://acme.example.com/dir", "email": "pki@example.com", "challenge_type": "dns-01"}})
    assert refused.status_code == 400 and "dns_present_script is required" in refused.json()["message"]
    assert (await api.admin.get(f"/api/v1/issuers/{good['id']}")).json()["config"] == good["config"]
    async with api.services.ctx.db.read() as conn:
        assert await rows.count_rows(conn, issuers) == before + 1
        assert await rows.count_rows(conn, acme_client_accounts) == 0


async def _acme_certificate(api: Api, pebble: Pebble, **config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    issuer = await factories.issuer(api.admin, type="ACME", config=pebble.config(**config))
    name = factories.unique("acmecert")
    cert = await factories.certificate(api.admin, issuer_id=issuer["id"], common_name=f"{name}.acme.test",
                                       sans=[f"{name}.acme.test"])
    return issuer, cert


async def _renew_and_run(api: Api, cert_id: str) -> dict[str, Any]:
    response = await api.admin.post(f"/api/v1/certificates/{cert_id}/renew")
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    outcome = await run_due_issuing_jobs(api.services.issuance)
    job = (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()
    assert outcome == {"Completed": 1}, job
    return dict(job)


async def test_job_path_issues_renews_and_revokes_at_the_ca(server_api: Api, pebble: Pebble) -> None:
    api = server_api
    issuer, cert = await _acme_certificate(api, pebble)
    assert issuer["config"]["email"] == "pki@example.com"

    job = await _renew_and_run(api, cert["id"])
    assert job["status"] == "Completed" and job["attempts"] == 1
    versions = (await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"]
    [version] = versions
    leaf = x509.load_pem_x509_certificate(version["pem_chain"].encode())
    assert version["serial_number"] == format(leaf.serial_number, "x") and pebble.status(version["serial_number"]) \
        == "Valid"
    assert len(x509.load_pem_x509_certificates(version["pem_chain"].encode())) >= 2  # leaf + pebble's chain
    assert (await api.admin.get(f"/api/v1/certificates/{cert['id']}")).json()["status"] == "Active"

    # the account: one row, its key sealed (no PEM in the table), its URL stored, audited
    async with api.services.ctx.db.read() as conn:
        [account] = [dict(r) for r in await rows.list_rows(conn, acme_client_accounts)]
        [ari] = [dict(r) for r in (await conn.execute(select(acme_renewal_info))).mappings()]
    assert account["issuer_id"] == issuer["id"] and account["account_url"]
    assert "PRIVATE KEY" not in account["sealed_key"]
    assert ari["ari_cert_id"] == ari_cert_id(leaf) and ari["window_start"] is None  # pebble 2.4: no ARI
    actions = await api.audit_actions()
    assert {"acme_account_key_created", "acme_account_registered", "certificate_issued"} <= set(actions)

    # a restart: a new app on the same database reuses the stored account (same URL, no new key)
    api.services.issuance.connectors._cache.clear()
    job = await _renew_and_run(api, cert["id"])
    async with api.services.ctx.db.read() as conn:
        accounts = [dict(r) for r in await rows.list_rows(conn, acme_client_accounts)]
    assert [a["account_url"] for a in accounts] == [account["account_url"]]
    versions = (await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"]
    assert len(versions) == 2

    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/revoke", json={"reason": "keyCompromise"})
    assert response.status_code == 200, response.text
    assert all(pebble.status(v["serial_number"]) == "Revoked" for v in versions)
    assert "certificate_revoked_at_issuer" in await api.audit_actions()


async def test_unusable_responder_port_is_a_retried_attempt(server_api: Api, pebble: Pebble) -> None:
    api = server_api
    issuer = await factories.issuer(api.admin, type="ACME", config=pebble.config())
    cert = await factories.certificate(api.admin, issuer_id=issuer["id"], common_name="unreachable.acme.test",
                                       sans=["unreachable.acme.test"])
    connector = api.services.issuance.connectors.for_issuer(await _issuer_row(api, issuer["id"]))
    assert isinstance(connector, AcmeIssuer)
    await connector.account()
    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")
    job_id = response.json()["job_id"]
    # Take the responder's port so the connector cannot listen: a retryable failure, the job waits for its retry.
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", pebble.http_port))
        blocker.listen()
        outcome = await run_due_issuing_jobs(api.services.issuance)
    assert outcome == {"Pending": 1}
    job = (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()
    assert "http-01 responder cannot listen" in job["last_error"]
    async with api.services.ctx.db.read() as conn:
        assert await acme_client_repo.newest_version_pem(conn, cert["id"]) is None


async def _issuer_row(api: Api, issuer_id: str) -> Any:
    async with api.services.ctx.db.read() as conn:
        return await rows.get_row(conn, issuers, issuer_id)


# ---- against certctl's own ACME server: ARI windows, the renewal scan, `replaces` -------------------------
@pytest.fixture
async def own_acme(database_url: str, tmp_path: Path, sqlite_template: Path
                   ) -> AsyncIterator[tuple[Api, FakeClock, str, Api]]:
    """certctl's ACME server (trusted profile, its own SQLite database: it files what it issues in its own
    inventory) behind a real HTTPS listener (uvicorn on this event loop, so the connector's worker thread reaches
    it), and a client-side certctl on the test's database (SQLite or PostgreSQL). One fake clock for both."""
    import uvicorn

    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    _tls_pair(tmp_path)
    shutil.copy(sqlite_template, tmp_path / "acme-server.db")
    server_settings = make_settings(f"sqlite:///{tmp_path / 'acme-server.db'}", tmp_path / "server", extra={
        "CERTCTL_ACME_SERVER_ENABLED": "true", "CERTCTL_ACME_SERVER_DEFAULT_PROFILE_ID": "p-acme"})
    server_api, server_lifespan = await start_api(server_settings, clock=clock)
    client_api, client_lifespan = await start_api(
        make_settings(database_url, tmp_path / "client", keygen_mode="server"), clock=clock)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(server_api.app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="error", ssl_certfile=str(tmp_path / "tls-cert.pem"),
                                           ssl_keyfile=str(tmp_path / "tls-key.pem")))
    task = asyncio.create_task(server.serve())
    try:
        response = await server_api.admin.post("/api/v1/profiles", json={"id": "p-acme", "name": "acme"})
        assert response.status_code == 201, response.text
        for _ in range(500):  # uvicorn has no started event to await
            if server.started:
                break
            await asyncio.sleep(0.01)
        yield client_api, clock, f"https://127.0.0.1:{port}/acme/profile/p-acme/directory", server_api
    finally:
        server.should_exit = True
        await task
        await stop_api(client_api, client_lifespan)
        await stop_api(server_api, server_lifespan)


async def test_ari_window_drives_the_renewal_scan_and_the_renewal_replaces(
        own_acme: tuple[Api, FakeClock, str, Api], tmp_path: Path) -> None:
    api, clock, directory_url, server_api = own_acme
    config = {"directory_url": directory_url, "email": "pki@example.com",
              "ca_bundle_path": str(tmp_path / "tls-ca.pem")}
    issuer = await factories.issuer(api.admin, type="ACME", config=config)
    policy = await factories.renewal_policy(api.admin, renewal_window_days=365, auto_renew=True)
    cert = await factories.certificate(api.admin, issuer_id=issuer["id"], common_name="ari.acme.test",
                                       sans=["ari.acme.test"], renewal_policy_id=policy["id"])
    await _renew_and_run(api, cert["id"])
    [version] = (await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"]
    leaf = x509.load_pem_x509_certificate(version["pem_chain"].encode())
    async with api.services.ctx.db.read() as conn:
        [ari] = [dict(r) for r in (await conn.execute(select(acme_renewal_info))).mappings()]
    # the server's window: the last third of the lifetime (its own test pins that); the moment lies inside it
    assert ari["ari_cert_id"] == ari_cert_id(leaf) and ari["version_id"] == version["id"]
    assert ari["window_start"] is not None and ari["window_start"] <= ari["renew_at"] <= ari["window_end"]
    assert ari["window_end"] <= leaf.not_valid_after_utc
    assert ari["next_check_at"] == clock.now() + timedelta(hours=6)  # the server's Retry-After

    # Inside the policy's 365-day window but before the CA's moment: no renewal.
    report = await api.services.renewal.scan()
    assert report.renewals == [] and report.skipped.get("ari_window_later") == 1

    # At the moment picked in the window: the scan asks the CA again (Retry-After passed; same window, same moment
    # kept, RFC 9773 §4.2), then renews with trigger `ari`.
    clock.advance(ari["renew_at"] - clock.now() + timedelta(seconds=1))
    report = await api.services.renewal.scan()
    assert len(report.renewals) == 1, report.summary()
    assert await run_due_issuing_jobs(api.services.issuance) == {"Completed": 1}
    await api.services.audit_sink.flush()
    events = (await api.admin.get("/api/v1/audit", params={"per_page": 200})).json()["data"]
    created = [e for e in events if e["action"] == "renewal_job_created" and e["resource_id"] == cert["id"]]
    assert created and created[0]["details"]["trigger"] == "ari"
    issued = [e["details"] for e in events if e["action"] == "certificate_issued" and e["resource_id"] == cert["id"]]
    assert any(d.get("acme_replaces") == ari["ari_cert_id"] for d in issued), issued
    # the server recorded the replacement (RFC 9773 §5): the old certificate's id on the new order
    async with server_api.services.ctx.db.read() as conn:
        replaced = (await conn.execute(text("SELECT replaces FROM acme_orders WHERE replaces IS NOT NULL"))).all()
    async with api.services.ctx.db.read() as conn:
        [new_ari] = [dict(r) for r in (await conn.execute(select(acme_renewal_info))).mappings()]
    assert [r[0] for r in replaced] == [ari["ari_cert_id"]]
    assert new_ari["version_id"] != ari["version_id"]  # the newest version's window replaced the old one


async def test_first_boot_seeds_the_acme_issuer_from_the_environment(database_url: str, tmp_path: Path) -> None:
    env = {"CERTCTL_ACME_DIRECTORY_URL": "https://acme.example.com/directory",
           "CERTCTL_ACME_EMAIL": "pki@example.com", "CERTCTL_ACME_EAB_KID": "kid-7",
           "CERTCTL_ACME_EAB_HMAC": "c2VjcmV0LWhtYWMta2V5", "CERTCTL_ACME_ARI_ENABLED": "false"}
    running, lifespan = await start_api(make_settings(database_url, tmp_path / "data", extra=env))
    try:
        response = await running.admin.get("/api/v1/issuers/iss-acme-prod")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["type"] == "ACME" and body["source"] == "env"
        assert body["config"] == {"directory_url": "https://acme.example.com/directory", "email": "pki@example.com",
                                  "eab_kid": "kid-7", "eab_hmac": "********", "ari_enabled": False}
    finally:
        await stop_api(running, lifespan)


async def test_bad_acme_environment_stops_the_first_boot(database_url: str, tmp_path: Path) -> None:
    from certctl.config import SettingsError

    env = {"CERTCTL_ACME_DIRECTORY_URL": "https://acme.example.com/directory",
           "CERTCTL_ACME_EMAIL": "pki@example.com", "CERTCTL_ACME_CHALLENGE_TYPE": "dns-01"}
    with pytest.raises(SettingsError, match="dns_present_script is required"):
        await start_api(make_settings(database_url, tmp_path / "data", extra=env))


async def test_issuer_test_contacts_the_acme_directory(api: Api, pebble: Pebble) -> None:
    good = await factories.issuer(api.admin, type="ACME", config=pebble.config())
    ok = await api.admin.post(f"/api/v1/issuers/{good['id']}/test")
    assert ok.status_code == 200 and ok.json()["status"] == "success", ok.text
    closed = free_port()
    down = await factories.issuer(api.admin, type="ACME", config=pebble.config(
        directory_url=f"https://127.0.0.1:{closed}/dir"))
    failed = await api.admin.post(f"/api/v1/issuers/{down['id']}/test")
    assert failed.status_code == 400 and "ACME server unreachable" in failed.json()["message"]
    assert (await api.admin.get(f"/api/v1/issuers/{down['id']}")).json()["test_status"] == "failed"
    untrusted = await factories.issuer(api.admin, type="ACME", config={
        k: v for k, v in pebble.config().items() if k != "ca_bundle_path"})
    refused = await api.admin.post(f"/api/v1/issuers/{untrusted['id']}/test")
    assert refused.status_code == 400 and "SSLError" in refused.json()["message"]  # no trust without the bundle


async def test_agent_csr_is_sent_to_the_acme_ca_and_the_deployment_queued(api: Api, pebble: Pebble) -> None:
    """Agent key generation (the default): the agent's CSR goes to the CA; its key never leaves the agent."""
    _, cert = await _acme_certificate(api, pebble)
    target_id = await factories.seed_target(api)
    async with api.services.ctx.db.read() as conn:
        target = await rows.get_row(conn, deployment_targets, target_id)
    assert target is not None
    agent_id = target["agent_id"]
    await factories.seed_mapping(api, cert["id"], target_id)
    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")
    job_id = response.json()["job_id"]
    assert (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "AwaitingCSR"
    csr_pem, key = make_csr([cert["common_name"]])
    response = await api.admin.post(f"/api/v1/agents/{agent_id}/csr",
                                    json={"csr_pem": csr_pem, "certificate_id": cert["id"]})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["job_status"] == "Completed" and body["serial_number"], body
    pickup = (await api.admin.get(f"/api/v1/agents/{agent_id}/certificates/{cert['id']}")).json()
    leaf = x509.load_pem_x509_certificate(pickup["certificate_pem"].encode())
    assert leaf.public_key() == key.public_key() and pebble.status(body["serial_number"]) == "Valid"
    jobs = (await api.admin.get("/api/v1/jobs", params={"certificate_id": cert["id"], "type": "Deployment"})).json()
    assert [j["target_id"] for j in jobs["data"]] == [target_id]


def test_profile_is_sent_only_when_offered_and_unknown_ones_are_refused() -> None:
    from acme import messages

    def directory(meta: dict[str, Any]) -> messages.Directory:
        return messages.Directory.from_json({"newNonce": "https://ca/nonce", "meta": meta})

    connector = AcmeIssuer({"directory_url": "https://ca.example/dir", "email": "a@example.com",
                            "profile": "shortlived"}, accounts=MemoryAccounts())
    assert connector._profile(directory({"profiles": {"classic": "90 days", "shortlived": "6 days"}})) == "shortlived"
    assert connector._profile(directory({})) is None  # a CA without profiles gets no `profile`
    with pytest.raises(IssuerError) as refused:
        connector._profile(directory({"profiles": {"classic": "90 days"}}))
    assert not refused.value.retryable and "offers no profile 'shortlived' (offered: classic)" in refused.value.message


def test_acme_problems_map_to_retry_verdicts() -> None:
    from acme import messages

    from certctl.connectors.issuers.acme import _problem, _retry_after

    def error(code: str) -> messages.Error:
        return messages.Error.with_code(code, detail="d")

    assert not _problem(error("rejectedIdentifier")).retryable
    assert not _problem(error("caa")).retryable
    assert _problem(error("rateLimited")).retryable and "rateLimited" in _problem(error("rateLimited")).message
    assert _problem(error("serverInternal")).retryable
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert _retry_after("120", now) == now + timedelta(seconds=120)
    assert _retry_after("Thu, 01 Jan 2026 06:00:00 GMT", now) == now + timedelta(hours=6)
    assert _retry_after(None, now) == now + timedelta(hours=6)


async def test_revocation_the_ca_missed_is_sent_again_by_the_scan(server_api: Api, pebble: Pebble) -> None:
    import dataclasses

    api = server_api
    issuer, cert = await _acme_certificate(api, pebble)
    await _renew_and_run(api, cert["id"])
    [version] = (await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"]
    connector = api.services.issuance.connectors.for_issuer(await _issuer_row(api, issuer["id"]))
    assert isinstance(connector, AcmeIssuer)
    working = connector.config
    connector.config = dataclasses.replace(working, directory_url=f"https://127.0.0.1:{free_port()}/dir")  # CA down
    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/revoke", json={"reason": "superseded"})
    assert response.status_code == 200, response.text  # the inventory's revocation stands
    assert pebble.status(version["serial_number"]) == "Valid"
    assert "issuer_revocation_failed" in await api.audit_actions()

    connector.config = working  # the CA is back
    await api.services.renewal.scan()
    assert pebble.status(version["serial_number"]) == "Revoked"
    async with api.services.ctx.db.read() as conn:
        notified = (await conn.execute(text(
            "SELECT issuer_notified FROM certificate_revocations WHERE serial_number = :s"),
            {"s": version["serial_number"]})).scalar_one()
    assert notified is True or notified == 1
    assert "certificate_revoked_at_issuer" in await api.audit_actions()
