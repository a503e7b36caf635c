"""The real certbot (Debian's) against a real `certctl server` over HTTPS, with challenges validated for real:
http-01 against certbot's standalone server, dns-01 through --manual hooks and a DNS responder started here;
then renew and revoke, and `openssl verify` of what was issued against our CA (and its CRL after revocation)."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.dns_responder import DnsResponder
from tests.test_server_process import Server, _env, free_port

pytestmark = pytest.mark.slow

ADMIN = "certbot-test-admin-key-0123456789"
CERTBOT = shutil.which("certbot") or "/usr/bin/certbot"


@dataclass
class Rig:
    server: Server
    dns: DnsResponder
    http_port: int
    root: Path
    ca_pem: Path

    @property
    def directory(self) -> str:
        return f"{self.server.url}/acme/directory"

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, verify=ssl.create_default_context(cafile=str(self.server.ca)),
                            headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)

    def certbot(self, *args: str, config: str = "cb") -> subprocess.CompletedProcess[str]:
        base = self.root / config
        command = [CERTBOT, *args, "--config-dir", str(base / "config"), "--work-dir", str(base / "work"),
                   "--logs-dir", str(base / "logs"), "--non-interactive"]
        env = {**os.environ, "REQUESTS_CA_BUNDLE": str(self.server.ca)}
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)
        assert result.returncode == 0, f"certbot {args[0]} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def live(self, name: str, config: str = "cb") -> Path:
        return self.root / config / "config" / "live" / name

    def openssl_verify(self, cert: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["openssl", "verify", "-CAfile", str(self.ca_pem), *extra, str(cert)],
                              capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("certbot")
    dns = DnsResponder(control=True).start()
    http_port = free_port()
    server = Server(root / "data", _env(
        CERTCTL_API_KEYS_NAMED=f"admin:{ADMIN}:admin",
        CERTCTL_ACME_SERVER_ENABLED="true",
        CERTCTL_ACME_SERVER_DEFAULT_PROFILE_ID="p-certbot",
        CERTCTL_ACME_HTTP01_PORT=str(http_port),  # certbot --standalone listens here on 127.0.0.1
        CERTCTL_ACME_VALIDATION_ALLOW_LOOPBACK="true",
        CERTCTL_ACME_DNS_RESOLVERS=f"127.0.0.1:{dns.port}",
        CERTCTL_ACME_VALIDATION_TIMEOUT="5s",
        CERTCTL_SCHEDULER_ENABLED="false",
    ))
    try:
        server.start()
        rig = Rig(server, dns, http_port, root, root / "ca.pem")
        with rig.api() as api:
            created = api.post("/api/v1/profiles", json={"id": "p-certbot", "name": "certbot",
                                                          "acme_auth_mode": "challenge"})
            assert created.status_code == 201, created.text
            ca_der = api.get("/.well-known/pki/ca/iss-local").content
        rig.ca_pem.write_bytes(x509.load_der_x509_certificate(ca_der).public_bytes(serialization.Encoding.PEM))
        yield rig
    finally:
        server.kill()
        dns.stop()


def _acme_certificates(rig: Rig) -> dict[str, dict[str, object]]:
    with rig.api() as api:
        response = api.get("/api/v1/certificates", params={"source": "ACME", "per_page": 100})
    assert response.status_code == 200, response.text
    return {str(c["id"]): c for c in response.json()["data"]}


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_certbot_http01_certonly_renew_revoke(rig: Rig) -> None:
    name = f"web-{uuid.uuid4().hex[:6]}.acme.test"
    rig.dns.set_a(name, "127.0.0.1")
    common = ("--server", rig.directory, "--standalone", "--http-01-address", "127.0.0.1",
              "--http-01-port", str(rig.http_port))
    rig.certbot("certonly", *common, "--agree-tos", "-m", "ops@example.com", "--no-eff-email", "-d", name)
    live = rig.live(name)
    verified = rig.openssl_verify(live / "cert.pem")
    assert verified.returncode == 0 and "OK" in verified.stdout, verified.stdout + verified.stderr
    first = _serial(live / "cert.pem")
    issued = [c for c in _acme_certificates(rig).values() if c["common_name"] == name]
    assert len(issued) == 1 and issued[0]["status"] == "Active" and issued[0]["certificate_profile_id"] == "p-certbot"
    # The server really fetched the key authorization from certbot's standalone server.
    assert (name, "A") in rig.dns.queries

    rig.certbot("renew", "--cert-name", name, "--force-renewal", "--no-random-sleep-on-renew")
    second = _serial(live / "cert.pem")
    assert second != first
    assert rig.openssl_verify(live / "cert.pem").returncode == 0
    assert len([c for c in _acme_certificates(rig).values() if c["common_name"] == name]) == 2

    rig.certbot("revoke", "--server", rig.directory, "--cert-path", str(live / "cert.pem"), "--reason",
                "keycompromise", "--no-delete-after-revoke")
    statuses = sorted(str(c["status"]) for c in _acme_certificates(rig).values() if c["common_name"] == name)
    assert statuses == ["Active", "Revoked"]
    # The CRL published right after the revocation names the serial: openssl refuses the certificate now.
    with rig.api() as api:
        crl = x509.load_der_x509_crl(api.get("/.well-known/pki/crl/iss-local").content)
    crl_pem = rig.root / "crl.pem"
    crl_pem.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    assert crl.get_revoked_certificate_by_serial_number(second) is not None
    refused = rig.openssl_verify(live / "cert.pem", "-crl_check", "-CRLfile", str(crl_pem))
    assert refused.returncode != 0 and "revoked" in (refused.stdout + refused.stderr)


def test_certbot_dns01_manual_hooks_wildcard(rig: Rig) -> None:
    base = f"wild-{uuid.uuid4().hex[:6]}.acme.test"
    rig.certbot("certonly", "--server", rig.directory, "--manual", "--preferred-challenges", "dns",
                "--manual-auth-hook", rig.dns.hook_command("auth"),
                "--manual-cleanup-hook", rig.dns.hook_command("cleanup"),
                "--agree-tos", "-m", "ops@example.com", "--no-eff-email",
                "-d", f"*.{base}", "-d", base, config="dns")
    cert = rig.live(f"{base}", config="dns") / "cert.pem"
    assert rig.openssl_verify(cert).returncode == 0
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    names = sorted(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                   .get_values_for_type(x509.DNSName))
    assert names == sorted([f"*.{base}", base])
    assert (f"_acme-challenge.{base}", "TXT") in rig.dns.queries
    assert rig.dns.records(f"_acme-challenge.{base}", "TXT") == []  # the cleanup hook ran
