"""ACME challenge validation against real servers on 127.0.0.1: an HTTP server, the tests' DNS responder and
TLS servers built with `ssl` and certificates made by cryptography."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certctl.config import SettingsError
from certctl.services.acme_validation import (
    ACME_TLS_ALPN_PROTOCOL,
    ID_PE_ACME_IDENTIFIER,
    ChallengeValidator,
    ValidationSettings,
    acme_identifier_extension_value,
    dns01_txt_value,
)
from tests.dns_responder import DnsResponder
from tests.servers import free_port

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEY_AUTH = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
NAME = "www.acme.test"

Route = tuple[int, dict[str, str], bytes]


class HttpServer:
    """A tiny HTTP/1.1 server: path -> (status, headers, body); records every request it gets."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.silent = False  # accept, read, never answer
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> HttpServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            path = lines[0].split(" ")[1]
            host = next((line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("host:")), "")
            self.requests.append((path, host))
            if self.silent:
                await asyncio.sleep(30)
                return
            status, headers, body = self.routes.get(path, (404, {}, b"not found"))
            out = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            out += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            writer.write(out.encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            self._tasks.discard(task)


@pytest.fixture
def dns() -> Iterator[DnsResponder]:
    with DnsResponder() as responder:
        responder.set_a(NAME, "127.0.0.1")
        yield responder


@pytest.fixture
async def http() -> AsyncIterator[HttpServer]:
    server = await HttpServer().start()
    yield server
    await server.stop()


def _validator(dns: DnsResponder, **changes: object) -> ChallengeValidator:
    settings = ValidationSettings(
        dns_resolvers=(dns.address,), allow_loopback=True, timeout=2.0, attempts=2, retry_backoff=0.0
    )
    return ChallengeValidator(dataclasses.replace(settings, **changes))  # type: ignore[arg-type]


CHALLENGE_PATH = f"/.well-known/acme-challenge/{TOKEN}"


# ---- http-01 ----------------------------------------------------------------------------------------------------

async def test_http01_valid_with_record(dns: DnsResponder, http: HttpServer) -> None:
    http.routes[CHALLENGE_PATH] = (200, {}, KEY_AUTH.encode() + b"\r\n")
    outcome = await _validator(dns, http_port=http.port).validate("http-01", "dns", NAME, TOKEN, KEY_AUTH)
    assert outcome.valid and outcome.error_type is None
    assert outcome.record == {
        "url": f"http://{NAME}:{http.port}{CHALLENGE_PATH}", "hostname": NAME, "port": str(http.port),
        "addressesResolved": ["127.0.0.1"], "addressUsed": "127.0.0.1",
    }
    assert http.requests == [(CHALLENGE_PATH, f"{NAME}:{http.port}")]


async def test_http01_ip_identifier(dns: DnsResponder, http: HttpServer) -> None:
    http.routes[CHALLENGE_PATH] = (200, {}, KEY_AUTH.encode())
    outcome = await _validator(dns, http_port=http.port).validate("http-01", "ip", "127.0.0.1", TOKEN, KEY_AUTH)
    assert outcome.valid
    assert outcome.record["addressesResolved"] == ["127.0.0.1"] and http.requests[0][1] == f"127.0.0.1:{http.port}"


async def test_http01_wrong_body(dns: DnsResponder, http: HttpServer) -> None:
    http.routes[CHALLENGE_PATH] = (200, {}, b"something else")
    outcome = await _validator(dns, http_port=http.port).validate("http-01", "dns", NAME, TOKEN, KEY_AUTH)
    assert (outcome.valid, outcome.error_type) == (False, "incorrectResponse")
    assert "something else" in outcome.detail
    assert len(http.requests) == 1  # a wrong answer is not retried


async def test_http01_oversized_body_does_not_match(dns: DnsResponder, http: HttpServer) -> None:
    http.routes[CHALLENGE_PATH] = (200, {}, KEY_AUTH.encode() + b" " * 20000 + b"x")
    outcome = await _validator(dns, http_port=http.port).validate("http-01", "dns", NAME, TOKEN, KEY_AUTH)
    assert (outcome.valid, outcome.error_type) == (False, "incorrectResponse")


async def test_http01_not_found(dns: DnsResponder, http: HttpServer) -> None:
    outcome = await _validator(dns, http_port=http.port).validate("http-01", "dns", NAME, TOKEN, KEY_AUTH)
    assert (outcome.valid, outcome.error_type) == (False, "unauthorized")
    assert "HTTP 404" in outcome.detail


async def test_http01_follows_redirect_to_allowed_port(dns: DnsResponder, http: HttpServer) -> None:
    dns.set_a("other.acme.test", "127.0.0.1")
    target = f"http://other.acme.test:{http.port}/final"
    http.routes[CHALLENGE_PATH] = (302, {"Location": target}, b"")
    http.routes["/final"] = (200, {}, KEY_AUTH.encode())
    outcome = await _validator(dns, http_port=http.port).validate("http-01", "dns", NAME, TOKEN, KEY_AUTH)
    assert outcome.valid, outcome.detail
    assert outcome.record["url"] == target and outcome.record["hostname"] == "other.acme.test"
    assert [hop["url"] for hop in outcome.record["redirects"]] == [f"http://{NAME}:{http.port}{CHALLENGE_PATH}"]


async def test_http01_redirect_loop(dns: DnsResponder, http: HttpServer) -> None:
    http.routes[CHALLENGE_PATH] = (301, {"Location": "/a"}, b"")
    http.routes["/a"] = (301, {"Location": CHALLENGE_PATH}, b"")
    outcome = await _validator(dns, http_port=http.port).validate("http-01", "dns", NAME, TOKEN, KEY_AUTH)
    assert (outcome.valid, outcome.error_type) == (False, "connection")
    assert "redirect loop" in outcome.detail
    assert len(http.requests) == 2


async def test_http01_too_many_redirects(dns: DnsResponder, http: HttpServer) -> None:
    http.routes[CHALLENGE_PATH] = (302, {"Location": "/r0"}, b"")
    for hop in range(20):
        http.routes[f"/r{hop}"] = (302, {"Location": f"/r{hop + 1}"}, b"")
    outcome = await _validator(dns, http_port=http.port).validate("http-01", "dns", NAME, TOKEN, KEY_AUTH)
    assert (outcome.valid, outcome.error_type) == (False, "connection")
    assert "too many redirects" in outcome.detail
    assert len(http.requests) == 11  # the first request and ten redirects


async def test_http01_redirect_to_forbidden_port_or_scheme(dns: DnsResponder, http: HttpServer) -> None:
    validator = _validator(dns, http_port=http.port)
    for location, words in ((f"http://{NAME}:8081/x", "port 8081"), ("ftp://www.acme.test/x", "only http")):
        http.requests.clear()
        http.routes[CHALLENGE_PATH] = (302, {"Location": location}, b"")
        outcome = await validator.validate("http-01", "dns", NAME, TOKEN, KEY_AUTH)
        assert (outcome.valid, outcome.error_type) == (False, "connection")
        assert words in outcome.detail
        assert len(http.requests) == 1


async def test_http01_redirect_to_metadata_address_refused(dns: DnsResponder, http: HttpServer) -> None:
    http.routes[CHALLENGE_PATH] = (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"")
    outcome = await _validator(dns, http_port=http.port).validate("http-01", "dns", NAME, TOKEN, KEY_AUTH)
    assert (outcome.valid, outcome.error_type) == (False, "rejectedIdentifier")
    assert "cloud metadata" in outcome.detail


async def test_http01_connection_refused_is_retried_with_backoff(dns: DnsResponder) -> None:
    validator = _validator(dns, http_port=free_port(), attempts=3, retry_backoff=0.5)
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    validator._sleep = fake_sleep
    outcome = await validator.validate("http-01", "dns", NAME, TOKEN, KEY_AUTH)
    assert (outcome.valid, outcome.error_type) == (False, "connection")
    assert "after 3 attempts" in outcome.detail
    assert waits == [0.5, 1.0]


async def test_http01_timeout(dns: DnsResponder, http: HttpServer) -> None:
    http.silent = True
    started = time.monotonic()
    outcome = await _validator(dns, http_port=http.port, timeout=0.3).validate("http-01", "dns", NAME, TOKEN,
                                                                               KEY_AUTH)
    assert (outcome.valid, outcome.error_type) == (False, "connection")
    assert "timeout" in outcome.detail and len(http.requests) == 2  # retried once
    assert time.monotonic() - started < 3


async def test_http01_wildcard_refused(dns: DnsResponder) -> None:
    outcome = await _validator(dns).validate("http-01", "dns", "*.acme.test", TOKEN, KEY_AUTH)
    assert (outcome.valid, outcome.error_type) == (False, "rejectedIdentifier")


# ---- SSRF policy ------------------------------------------------------------------------------------------------

async def test_metadata_address_refused_even_when_loopback_allowed(dns: DnsResponder, http: HttpServer) -> None:
    validator = _validator(dns, http_port=http.port, allow_private=True)
    outcome = await validator.validate("http-01", "ip", "169.254.169.254", TOKEN, KEY_AUTH)
    assert (outcome.valid, outcome.error_type) == (False, "rejectedIdentifier")
    assert "cloud metadata address" in outcome.detail
    dns.set_a("meta.acme.test", "169.254.169.254")
    outcome = await validator.validate("tls-alpn-01", "dns", "meta.acme.test", TOKEN, KEY_AUTH)
    assert (outcome.valid, outcome.error_type) == (False, "rejectedIdentifier")
    assert outcome.record["addressesResolved"] == ["169.254.169.254"] and "addressUsed" not in outcome.record


async def test_loopback_refused_unless_allowed(dns: DnsResponder, http: HttpServer) -> None:
    http.routes[CHALLENGE_PATH] = (200, {}, KEY_AUTH.encode())
    validator = _validator(dns, http_port=http.port, allow_loopback=False)
    for kind, identifier in (("dns", NAME), ("ip", "127.0.0.1"), ("ip", "::ffff:127.0.0.1")):
        outcome = await validator.validate("http-01", kind, identifier, TOKEN, KEY_AUTH)
        assert (outcome.valid, outcome.error_type) == (False, "rejectedIdentifier"), identifier
        assert "CERTCTL_ACME_VALIDATION_ALLOW_LOOPBACK" in outcome.detail
    assert http.requests == []


async def test_only_allowed_addresses_are_dialled(dns: DnsResponder, http: HttpServer) -> None:
    http.routes[CHALLENGE_PATH] = (200, {}, KEY_AUTH.encode())
    dns.set_a("mixed.acme.test", "169.254.169.254", "127.0.0.1")
    outcome = await _validator(dns, http_port=http.port).validate("http-01", "dns", "mixed.acme.test", TOKEN,
                                                                  KEY_AUTH)
    assert outcome.valid
    assert outcome.record["addressesResolved"] == ["169.254.169.254", "127.0.0.1"]
    assert outcome.record["addressUsed"] == "127.0.0.1"


def test_settings_from_env() -> None:
    settings = ValidationSettings.from_env({
        "CERTCTL_ACME_HTTP01_PORT": "5002", "CERTCTL_ACME_TLSALPN01_PORT": "5001",
        "CERTCTL_ACME_DNS_RESOLVERS": "127.0.0.1:5353, [::1]:53,10.0.0.2", "CERTCTL_ACME_VALIDATION_TIMEOUT": "500ms",
        "CERTCTL_ACME_VALIDATION_ATTEMPTS": "1", "CERTCTL_ACME_VALIDATION_ALLOW_PRIVATE": "true",
    })
    assert (settings.http_port, settings.tls_alpn_port, settings.timeout, settings.attempts) == (5002, 5001, 0.5, 1)
    assert settings.dns_resolvers == (("127.0.0.1", 5353), ("::1", 53), ("10.0.0.2", 53))
    assert settings.policy.allow_private and not settings.policy.allow_loopback
    assert settings.redirect_ports == {80, 443, 5001, 5002}
    assert ValidationSettings.from_env({"CERTCTL_ACME_SERVER_DNS01_RESOLVER": "8.8.8.8:53"}).dns_resolvers == (
        ("8.8.8.8", 53),)
    assert ValidationSettings.from_env({}) == ValidationSettings()
    for bad in ({"CERTCTL_ACME_DNS_RESOLVERS": "dns.example:53"}, {"CERTCTL_ACME_HTTP01_PORT": "0"},
                {"CERTCTL_ACME_VALIDATION_TIMEOUT": "soon"}, {"CERTCTL_ACME_VALIDATION_ALLOW_LOOPBACK": "maybe"}):
        with pytest.raises(SettingsError, match=next(iter(bad))):
            ValidationSettings.from_env(bad)


async def test_malformed_inputs(dns: DnsResponder) -> None:
    validator = _validator(dns)
    cases = [
        (("http-01", "dns", NAME, "short", "short.x"), "malformed"),
        (("http-01", "dns", NAME, TOKEN, "other.thumbprint"), "malformed"),
        (("http-02", "dns", NAME, TOKEN, KEY_AUTH), "malformed"),
        (("http-01", "email", NAME, TOKEN, KEY_AUTH), "unsupportedIdentifier"),
        (("http-01", "dns", "bad_name!.test", TOKEN, KEY_AUTH), "rejectedIdentifier"),
        (("dns-01", "ip", "127.0.0.1", TOKEN, KEY_AUTH), "rejectedIdentifier"),
    ]
    for arguments, error in cases:
        outcome = await validator.validate(*arguments)
        assert (outcome.valid, outcome.error_type) == (False, error), arguments
    assert dns.queries == []


# ---- dns-01 -----------------------------------------------------------------------------------------------------

async def test_dns01_valid_among_other_values(dns: DnsResponder) -> None:
    dns.set_txt(f"_acme-challenge.{NAME}", "stale-value", dns01_txt_value(KEY_AUTH))
    outcome = await _validator(dns).validate("dns-01", "dns", NAME, TOKEN, KEY_AUTH)
    assert outcome.valid, outcome.detail
    assert outcome.record["hostname"] == NAME and (f"_acme-challenge.{NAME}", "TXT") in dns.queries


async def test_dns01_wildcard_uses_base_name(dns: DnsResponder) -> None:
    dns.set_txt("_acme-challenge.acme.test", dns01_txt_value(KEY_AUTH))
    outcome = await _validator(dns).validate("dns-01", "dns", "*.acme.test", TOKEN, KEY_AUTH)
    assert outcome.valid, outcome.detail


async def test_dns01_wrong_value(dns: DnsResponder) -> None:
    dns.set_txt(f"_acme-challenge.{NAME}", "not-the-digest")
    outcome = await _validator(dns).validate("dns-01", "dns", NAME, TOKEN, KEY_AUTH)
    assert (outcome.valid, outcome.error_type) == (False, "incorrectResponse")
    assert "not-the-digest" in outcome.detail


async def test_dns01_missing_record(dns: DnsResponder) -> None:
    outcome = await _validator(dns).validate("dns-01", "dns", NAME, TOKEN, KEY_AUTH)
    assert (outcome.valid, outcome.error_type) == (False, "dns")
    assert f"_acme-challenge.{NAME}" in outcome.detail


@pytest.mark.parametrize("chase", [True, False], ids=["resolver-follows", "validator-follows"])
async def test_dns01_follows_cname(dns: DnsResponder, chase: bool) -> None:
    dns.chase_cnames = chase
    dns.set_cname(f"_acme-challenge.{NAME}", "_acme-challenge.delegated.test")
    dns.set_cname("_acme-challenge.delegated.test", "final.validation.test")
    dns.set_txt("final.validation.test", dns01_txt_value(KEY_AUTH))
    outcome = await _validator(dns).validate("dns-01", "dns", NAME, TOKEN, KEY_AUTH)
    assert outcome.valid, outcome.detail
    asked = [name for name, kind in dns.queries if kind == "TXT"]
    assert asked == ([f"_acme-challenge.{NAME}"] if chase else
                     [f"_acme-challenge.{NAME}", "_acme-challenge.delegated.test", "final.validation.test"])


async def test_dns01_unreachable_resolver(dns: DnsResponder) -> None:
    validator = _validator(dns, dns_resolvers=(("127.0.0.1", free_port()),), timeout=0.3, attempts=1)
    outcome = await validator.validate("dns-01", "dns", NAME, TOKEN, KEY_AUTH)
    assert (outcome.valid, outcome.error_type) in ((False, "dns"), (False, "connection"))


# ---- tls-alpn-01 ------------------------------------------------------------------------------------------------

def _alpn_cert(
    tmp_path: Path, *, names: list[x509.GeneralName], extension: bytes | None, critical: bool = True
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme tls-alpn-01")]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme tls-alpn-01")]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
               .add_extension(x509.SubjectAlternativeName(names), critical=False))
    if extension is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, extension), critical=critical)
    cert = builder.sign(key, hashes.SHA256())
    cert_path, key_path = tmp_path / "alpn.pem", tmp_path / "alpn.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsServer:
    def __init__(self, cert: Path, key: Path, alpn: list[str] | None) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if alpn is not None:
            self.context.set_alpn_protocols(alpn)
        self.server_names: list[str | None] = []
        self.context.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> TlsServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(1)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()


GOOD_EXTENSION = acme_identifier_extension_value(KEY_AUTH)
Case = Callable[[Path], tuple[Path, Path]]


@pytest.mark.parametrize(("make", "alpn", "error", "words"), [
    (lambda p: _alpn_cert(p, names=[x509.DNSName(NAME)], extension=GOOD_EXTENSION), [ACME_TLS_ALPN_PROTOCOL],
     None, ""),
    (lambda p: _alpn_cert(p, names=[x509.DNSName(NAME)], extension=None), [ACME_TLS_ALPN_PROTOCOL],
     "incorrectResponse", "without the acmeIdentifier"),
    (lambda p: _alpn_cert(p, names=[x509.DNSName(NAME)], extension=GOOD_EXTENSION, critical=False),
     [ACME_TLS_ALPN_PROTOCOL], "incorrectResponse", "not critical"),
    (lambda p: _alpn_cert(p, names=[x509.DNSName(NAME)], extension=acme_identifier_extension_value("other")),
     [ACME_TLS_ALPN_PROTOCOL], "incorrectResponse", "does not hold"),
    (lambda p: _alpn_cert(p, names=[x509.DNSName(NAME), x509.DNSName("extra.acme.test")], extension=GOOD_EXTENSION),
     [ACME_TLS_ALPN_PROTOCOL], "incorrectResponse", "subjectAltName must be exactly"),
    (lambda p: _alpn_cert(p, names=[x509.DNSName(NAME)], extension=GOOD_EXTENSION), None, "tls", "ALPN"),
], ids=["good", "missing-extension", "non-critical", "wrong-digest", "two-sans", "no-alpn"])
async def test_tls_alpn01(
    dns: DnsResponder, tmp_path: Path, make: Case, alpn: list[str] | None, error: str | None, words: str
) -> None:
    async with TlsServer(*make(tmp_path), alpn=alpn) as server:
        outcome = await _validator(dns, tls_alpn_port=server.port).validate("tls-alpn-01", "dns", NAME, TOKEN,
                                                                            KEY_AUTH)
    assert (outcome.valid, outcome.error_type) == (error is None, error), outcome.detail
    assert words in outcome.detail
    assert server.server_names == [NAME]
    assert outcome.record["addressUsed"] == "127.0.0.1" and outcome.record["port"] == str(server.port)


async def test_tls_alpn01_ip_identifier_uses_reverse_dns_sni(dns: DnsResponder, tmp_path: Path) -> None:
    cert, key = _alpn_cert(tmp_path, names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                           extension=GOOD_EXTENSION)
    async with TlsServer(cert, key, alpn=[ACME_TLS_ALPN_PROTOCOL]) as server:
        outcome = await _validator(dns, tls_alpn_port=server.port).validate("tls-alpn-01", "ip", "127.0.0.1", TOKEN,
                                                                            KEY_AUTH)
    assert outcome.valid, outcome.detail
    assert server.server_names == ["1.0.0.127.in-addr.arpa"]
