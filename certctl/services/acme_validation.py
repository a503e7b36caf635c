"""ACME challenge validation (the "validation authority"): http-01, dns-01 and tls-alpn-01 done for real.

The ACME server hands a challenge to `ChallengeValidator.validate` and gets a `ChallengeOutcome` back: valid or
not, the RFC 8555 error type (the suffix after `urn:ietf:params:acme:error:`), a detail for the problem document,
and the validation record (url, hostname, port, addressesResolved, addressUsed) to put on the challenge.

- **http-01** (RFC 8555 §8.3, RFC 8738 for IP identifiers): GET `http://<name>:<port>/.well-known/acme-challenge/
  <token>` (port CERTCTL_ACME_HTTP01_PORT, 80), status 200 and a body that, trimmed of whitespace, equals the key
  authorization. Redirects (301/302/303/307/308) are followed at most 10 times, only to `http`/`https` on ports 80,
  443 or the configured challenge ports, and a URL seen twice is a loop. At most 16 KiB of body is read; an HTTPS
  hop does not check the served certificate (the proof is the body, as Let's Encrypt does it).
- **dns-01** (§8.4): the TXT records at `_acme-challenge.<name>` (a wildcard's base name) must include
  base64url(SHA-256(key authorization)). Lookups use dnspython's async resolver against CERTCTL_ACME_DNS_RESOLVERS
  (`ip[:port]`, comma separated; the reference's single CERTCTL_ACME_SERVER_DNS01_RESOLVER is read when it is
  unset) or the system's resolver configuration. CNAME chains are followed (up to 8 hops) when the resolver does
  not follow them itself. IP identifiers cannot use dns-01 (RFC 8738 §7).
- **tls-alpn-01** (RFC 8737): a TLS handshake to `<name>:<port>` (CERTCTL_ACME_TLSALPN01_PORT, 443) with SNI and
  ALPN `acme-tls/1` only; the server must select `acme-tls/1` and its certificate must hold exactly one SAN, the
  identifier, and a critical id-pe-acmeIdentifier extension (1.3.6.1.5.5.7.1.31) whose value is the DER OCTET
  STRING of SHA-256(key authorization). An IP identifier is sent as its reverse-DNS name in SNI (RFC 8738 §6).

Network safety: every address a name resolves to goes through the network scanner's `AddressPolicy`
(certctl.services.network_scan): link-local, cloud metadata, multicast, broadcast, reserved and unspecified
addresses are always refused; loopback only with CERTCTL_ACME_VALIDATION_ALLOW_LOOPBACK, private ranges only with
CERTCTL_ACME_VALIDATION_ALLOW_PRIVATE (named like the scanner's CERTCTL_NETWORK_SCAN_ALLOW_*, but separate: an
internal ACME CA often has to reach private names while the scanner should not). The connection goes to the
address that was checked (the name is never resolved a second time by the socket layer), so a DNS answer that
changes between check and dial cannot redirect it. Redirect targets are resolved and checked the same way.

Each attempt runs under CERTCTL_ACME_VALIDATION_TIMEOUT (10 s); connection failures and timeouts (not wrong
answers) are retried up to CERTCTL_ACME_VALIDATION_ATTEMPTS (3) times in all, waiting
CERTCTL_ACME_VALIDATION_RETRY_BACKOFF (1 s) and doubling. At most CERTCTL_ACME_VALIDATION_CONCURRENCY (10)
validations of one challenge type run at once in a process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import h11
from cryptography import x509

from certctl.config import SettingsError, env_bool, env_int_between, parse_duration
from certctl.services.network_scan import AddressPolicy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HTTP_01 = "http-01"
DNS_01 = "dns-01"
TLS_ALPN_01 = "tls-alpn-01"
CHALLENGE_TYPES = (HTTP_01, DNS_01, TLS_ALPN_01)
ACME_TLS_ALPN_PROTOCOL = "acme-tls/1"
ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
USER_AGENT = "certctl-acme-validation/1"
MAX_CNAME_HOPS = 8

LOOPBACK_VARIABLE = "CERTCTL_ACME_VALIDATION_ALLOW_LOOPBACK"
PRIVATE_VARIABLE = "CERTCTL_ACME_VALIDATION_ALLOW_PRIVATE"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,}$")  # base64url, no padding (RFC 8555 §8.1: at least 128 bits)
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class ChallengeOutcome:
    valid: bool
    error_type: str | None  # RFC 8555 error type suffix ("connection", "dns", "incorrectResponse", ...)
    detail: str
    record: dict[str, Any]  # validationRecord: url, hostname, port, addressesResolved, addressUsed


# ---- settings ---------------------------------------------------------------------------------------------------

def parse_resolvers(name: str, raw: str) -> tuple[tuple[str, int], ...]:
    """`ip[:port]` entries (IPv6 as `[addr]:port`), comma separated; the port defaults to 53."""
    resolvers: list[tuple[str, int]] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        host, port_text = entry, "53"
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            if rest:
                if not rest.startswith(":"):
                    raise SettingsError(f"{name}: '{entry}' is not ip[:port]")
                port_text = rest[1:]
        elif entry.count(":") == 1:
            host, port_text = entry.split(":")
        try:
            ipaddress.ip_address(host)
            port = int(port_text)
        except ValueError:
            raise SettingsError(f"{name}: '{entry}' is not ip[:port] (a resolver is an IP address)") from None
        if not 1 <= port <= 65535:
            raise SettingsError(f"{name}: '{entry}' has a port outside 1-65535")
        resolvers.append((host, port))
    return tuple(resolvers)


@dataclass(frozen=True)
class ValidationSettings:
    """CERTCTL_ACME_* validation settings (docs/configuration.md "ACME challenge validation")."""

    http_port: int = 80
    tls_alpn_port: int = 443
    dns_resolvers: tuple[tuple[str, int], ...] = ()  # () = the system's resolver configuration
    timeout: float = 10.0  # seconds, per attempt (resolution, connection, redirects and reading)
    attempts: int = 3  # in all, for connection failures and timeouts
    retry_backoff: float = 1.0  # seconds before the second attempt, doubled after each
    max_redirects: int = 10
    max_body: int = 16 * 1024
    concurrency: int = 10  # per challenge type and process
    allow_loopback: bool = False
    allow_private: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ValidationSettings:
        raw_resolvers = (environ.get("CERTCTL_ACME_DNS_RESOLVERS") or "").strip()
        resolvers_name = "CERTCTL_ACME_DNS_RESOLVERS"
        if not raw_resolvers:
            raw_resolvers = (environ.get("CERTCTL_ACME_SERVER_DNS01_RESOLVER") or "").strip()
            resolvers_name = "CERTCTL_ACME_SERVER_DNS01_RESOLVER"
        timeout = parse_duration(
            "CERTCTL_ACME_VALIDATION_TIMEOUT", environ.get("CERTCTL_ACME_VALIDATION_TIMEOUT") or "10s", 0.05
        )
        backoff = parse_duration(
            "CERTCTL_ACME_VALIDATION_RETRY_BACKOFF", environ.get("CERTCTL_ACME_VALIDATION_RETRY_BACKOFF") or "1s", 0.0
        )
        return cls(
            http_port=env_int_between(environ, "CERTCTL_ACME_HTTP01_PORT", 80, 1, 65535),
            tls_alpn_port=env_int_between(environ, "CERTCTL_ACME_TLSALPN01_PORT", 443, 1, 65535),
            dns_resolvers=parse_resolvers(resolvers_name, raw_resolvers),
            timeout=timeout,
            attempts=env_int_between(environ, "CERTCTL_ACME_VALIDATION_ATTEMPTS", 3, 1, 10),
            retry_backoff=backoff,
            concurrency=env_int_between(environ, "CERTCTL_ACME_VALIDATION_CONCURRENCY", 10, 1, 1000),
            allow_loopback=env_bool(environ, LOOPBACK_VARIABLE, False),
            allow_private=env_bool(environ, PRIVATE_VARIABLE, False),
        )

    @property
    def policy(self) -> AddressPolicy:
        return AddressPolicy(allow_loopback=self.allow_loopback, allow_private=self.allow_private,
                             loopback_variable=LOOPBACK_VARIABLE, private_variable=PRIVATE_VARIABLE)

    @property
    def redirect_ports(self) -> frozenset[int]:
        return frozenset((80, 443, self.http_port, self.tls_alpn_port))


# ---- helpers ----------------------------------------------------------------------------------------------------

class _Failure(Exception):
    def __init__(self, error_type: str, detail: str, *, retryable: bool = False) -> None:
        super().__init__(detail)
        self.error_type = error_type
        self.detail = detail
        self.retryable = retryable


def key_authorization_digest(key_authorization: str) -> bytes:
    return hashlib.sha256(key_authorization.encode()).digest()


def dns01_txt_value(key_authorization: str) -> str:
    """base64url (no padding) of SHA-256(key authorization): the TXT value of a dns-01 challenge."""
    return base64.urlsafe_b64encode(key_authorization_digest(key_authorization)).rstrip(b"=").decode()


def acme_identifier_extension_value(key_authorization: str) -> bytes:
    """The DER OCTET STRING a tls-alpn-01 certificate carries in id-pe-acmeIdentifier."""
    return b"\x04\x20" + key_authorization_digest(key_authorization)


def tls_alpn_server_name(identifier_type: str, identifier: str) -> str:
    """The SNI of a tls-alpn-01 handshake: the name, or an IP's reverse-DNS name (RFC 8738 §6)."""
    if identifier_type == "ip":
        return ipaddress.ip_address(identifier).reverse_pointer
    return identifier


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _normal_name(name: str) -> str | None:
    """A DNS name in lowercase ASCII, or None when it is not a valid host name."""
    lowered = name.lower().rstrip(".")
    if not lowered or len(lowered) > 253:
        return None
    return lowered if all(_LABEL.match(label) for label in lowered.split(".")) else None


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# ---- the validator ----------------------------------------------------------------------------------------------

@dataclass
class _Target:
    """A checked place to connect to: the host as named, the port, and the addresses allowed."""

    host: str
    port: int
    resolved: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)


class ChallengeValidator:
    def __init__(self, settings: ValidationSettings) -> None:
        self.settings = settings
        self._semaphores = {kind: asyncio.Semaphore(settings.concurrency) for kind in CHALLENGE_TYPES}
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    # ---- entry point ---------------------------------------------------------------------------------------
    async def validate(
        self, challenge_type: str, identifier_type: str, identifier: str, token: str, key_authorization: str
    ) -> ChallengeOutcome:
        """Check one challenge; never raises for what the client or the network did (that is the outcome)."""
        record: dict[str, Any] = {}
        try:
            check = self._checker(challenge_type, identifier_type, identifier, token, key_authorization)
        except _Failure as failure:
            return ChallengeOutcome(False, failure.error_type, failure.detail, record)
        async with self._semaphores[challenge_type]:
            return await self._attempts(check)

    def _checker(
        self, challenge_type: str, identifier_type: str, identifier: str, token: str, key_authorization: str
    ) -> Callable[[dict[str, Any]], Awaitable[None]]:
        if challenge_type not in CHALLENGE_TYPES:
            raise _Failure("malformed", f"unsupported challenge type '{challenge_type}'")
        if not _TOKEN.match(token) or not key_authorization.startswith(token + "."):
            raise _Failure("malformed", "the challenge token or key authorization is malformed")
        if identifier_type == "ip":
            address = _ip(identifier)
            if address is None:
                raise _Failure("malformed", f"'{identifier}' is not an IP address")
            if challenge_type == DNS_01:
                raise _Failure("rejectedIdentifier", "dns-01 cannot validate an IP identifier (RFC 8738 §7)")
            host = str(address)
        elif identifier_type == "dns":
            wildcard = identifier.startswith("*.")
            name = _normal_name(identifier[2:] if wildcard else identifier)
            if name is None:
                raise _Failure("rejectedIdentifier", f"'{identifier}' is not a valid DNS name")
            if wildcard and challenge_type != DNS_01:
                raise _Failure("rejectedIdentifier", f"a wildcard identifier can only be validated with dns-01, "
                                                     f"not {challenge_type} (RFC 8555 §7.1.3)")
            host = name
        else:
            raise _Failure("unsupportedIdentifier", f"identifier type '{identifier_type}' is not supported")
        if challenge_type == HTTP_01:
            return lambda record: self._http01(host, token, key_authorization, record)
        if challenge_type == DNS_01:
            return lambda record: self._dns01(host, key_authorization, record)
        server_name = tls_alpn_server_name(identifier_type, host)
        return lambda record: self._tls_alpn01(identifier_type, host, server_name, key_authorization, record)

    async def _attempts(self, check: Callable[[dict[str, Any]], Awaitable[None]]) -> ChallengeOutcome:
        settings = self.settings
        for attempt in range(settings.attempts):
            record: dict[str, Any] = {}
            try:
                async with asyncio.timeout(settings.timeout):
                    await check(record)
                return ChallengeOutcome(True, None, "", record)
            except TimeoutError:
                where = record.get("url") or record.get("hostname") or "the identifier"
                failure = _Failure("connection", f"timeout after {settings.timeout:g} s validating {where}",
                                   retryable=True)
            except _Failure as caught:
                failure = caught
            if not failure.retryable or attempt + 1 == settings.attempts:
                detail = failure.detail if attempt == 0 else f"{failure.detail} (after {attempt + 1} attempts)"
                return ChallengeOutcome(False, failure.error_type, detail, record)
            await self._sleep(settings.retry_backoff * (2 ** attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- name resolution -----------------------------------------------------------------------------------
    def _resolver(self) -> dns.asyncresolver.Resolver:
        settings = self.settings
        if settings.dns_resolvers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in settings.dns_resolvers]
        else:
            resolver = dns.asyncresolver.Resolver()
        resolver.timeout = resolver.lifetime = settings.timeout
        resolver.cache = None
        return resolver

    async def _addresses(self, name: str) -> list[str]:
        """The A and AAAA addresses of a name, through the configured resolvers or the system's."""
        if not self.settings.dns_resolvers:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise _Failure("dns", f"cannot resolve {name}: {exc.strerror or exc}") from None
            except OSError as exc:
                raise _Failure("dns", f"cannot resolve {name}: {exc}", retryable=True) from None
            return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
        resolver = self._resolver()
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            found += [str(value) for value in await self._lookup(resolver, name, rdtype)]
        if not found:
            raise _Failure("dns", f"no A or AAAA records found for {name}")
        return found

    async def _lookup(self, resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> list[Any]:
        """The records of `rdtype` at `name`, following a CNAME chain the resolver leaves unfinished."""
        current = name
        seen: set[str] = set()
        for _ in range(MAX_CNAME_HOPS + 1):
            seen.add(current)
            try:
                answer = await resolver.resolve(current, rdtype, raise_on_no_answer=False, search=False)
            except dns.resolver.NXDOMAIN:
                if current == name:
                    return []
                raise _Failure("dns", f"NXDOMAIN looking up {rdtype} for {current} (CNAME target of {name})") from None
            except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
                raise _Failure("dns", f"DNS problem looking up {rdtype} for {current}: {exc}", retryable=True) from None
            except dns.exception.DNSException as exc:
                raise _Failure("dns", f"DNS problem looking up {rdtype} for {current}: {exc}") from None
            if answer.rrset is not None:
                return list(answer.rrset)
            target = answer.canonical_name.to_text(omit_final_dot=True).lower()
            if target == current or target in seen:
                if target != current:
                    raise _Failure("dns", f"CNAME loop looking up {rdtype} for {name}")
                return []
            current = target
        raise _Failure("dns", f"more than {MAX_CNAME_HOPS} CNAMEs looking up {rdtype} for {name}")

    async def _target(self, host: str, port: int, record: dict[str, Any]) -> _Target:
        """Resolve (a name) and check every address against the policy; fill in the record."""
        target = _Target(host, port)
        record.update(hostname=host, port=str(port))
        literal = _ip(host)
        target.resolved = [str(literal)] if literal is not None else await self._addresses(host)
        record["addressesResolved"] = list(target.resolved)
        reasons: list[str] = []
        for text in target.resolved:
            reason = self.settings.policy.refusal(ipaddress.ip_address(text))
            if reason is None:
                target.allowed.append(text)
            else:
                reasons.append(f"{text}: {reason}")
        if not target.allowed:
            raise _Failure("rejectedIdentifier", f"refused to connect to {host}: {'; '.join(reasons)}")
        return target

    async def _connect(
        self, target: _Target, record: dict[str, Any], *, tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to the first allowed address that answers (the checked address, never the name)."""
        errors: list[str] = []
        for address in target.allowed:
            record["addressUsed"] = address
            try:
                return await asyncio.open_connection(
                    address, target.port, ssl=tls, server_hostname=(server_name or "") if tls else None
                )
            except ssl.SSLError as exc:
                raise _Failure("tls", f"TLS handshake with {_host_for_url(address)}:{target.port} failed: "
                                      f"{exc.reason or exc}") from None
            except OSError as exc:
                errors.append(f"{_host_for_url(address)}:{target.port}: {exc.strerror or exc}")
        raise _Failure("connection", f"cannot connect to {target.host}: {'; '.join(errors)}", retryable=True)

    # ---- http-01 -------------------------------------------------------------------------------------------
    async def _http01(self, host: str, token: str, key_authorization: str, record: dict[str, Any]) -> None:
        port = self.settings.http_port
        authority = _host_for_url(host) + ("" if port == 80 else f":{port}")
        url = f"http://{authority}/.well-known/acme-challenge/{token}"
        hops: list[dict[str, Any]] = []
        seen: set[str] = set()
        while True:
            seen.add(url)
            hop: dict[str, Any] = {"url": url}
            record.clear()
            record.update(hop)
            if hops:
                record["redirects"] = hops
            status, location, body = await self._http_get(url, record)
            if status in (301, 302, 303, 307, 308) and location is not None:
                hops.append({key: value for key, value in record.items() if key != "redirects"})
                if len(hops) > self.settings.max_redirects:
                    raise _Failure("connection", f"too many redirects (more than {self.settings.max_redirects}) "
                                                 f"fetching the http-01 challenge from {hops[0]['url']}")
                url = self._redirect(url, location)
                if url in seen:
                    raise _Failure("connection", f"redirect loop fetching the http-01 challenge at {url}")
                continue
            if status != 200:
                raise _Failure("unauthorized", f"invalid response from {url}: HTTP {status}")
            if body.strip() != key_authorization.encode():
                shown = body[:128].decode("utf-8", "replace").strip()
                raise _Failure("incorrectResponse", f"the key authorization served at {url} does not match "
                                                    f"(got {shown!r})")
            return

    def _redirect(self, current: str, location: str) -> str:
        target = urljoin(current, location.strip())
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https"):
            raise _Failure("connection", f"redirect to '{target}': only http and https are followed")
        try:
            port = parts.port or (80 if parts.scheme == "http" else 443)
        except ValueError:
            raise _Failure("connection", f"redirect to '{target}': invalid port") from None
        if port not in self.settings.redirect_ports:
            allowed = ", ".join(str(p) for p in sorted(self.settings.redirect_ports))
            raise _Failure("connection", f"redirect to '{target}': port {port} is not one of {allowed}")
        host = parts.hostname or ""
        if _ip(host) is None and _normal_name(host) is None:
            raise _Failure("connection", f"redirect to '{target}': invalid host")
        if parts.username is not None or parts.password is not None:
            raise _Failure("connection", f"redirect to '{target}': credentials in a URL are not followed")
        return target

    async def _http_get(self, url: str, record: dict[str, Any]) -> tuple[int, str | None, bytes]:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        host = (parts.hostname or "").lower()
        target = await self._target(host, port, record)
        record["url"] = url
        context: ssl.SSLContext | None = None
        if https:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # RFC 8555 §8.3 proves control by the body, not the certificate
        reader, writer = await self._connect(target, record, tls=context, server_name=None if _ip(host) else host)
        try:
            return await self._exchange(reader, writer, parts.netloc.rsplit("@", 1)[-1],
                                        (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), url)
        finally:
            writer.transport.abort()

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str, path: str, url: str
    ) -> tuple[int, str | None, bytes]:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=16 * 1024)
        request = h11.Request(method="GET", target=path, headers=[
            ("Host", authority), ("User-Agent", USER_AGENT), ("Accept", "*/*"), ("Connection", "close"),
        ])
        writer.write(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
        status = 0
        location: str | None = None
        body = bytearray()
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        chunk = await reader.read(65536)
                    except OSError as exc:
                        raise _Failure("connection", f"reading {url}: {exc.strerror or exc}", retryable=True) from None
                    conn.receive_data(chunk)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    for name, value in event.headers:
                        if name == b"location":
                            location = value.decode("latin-1")
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self.settings.max_body:
                        del body[self.settings.max_body:]  # what follows cannot make it match
                        return status, location, bytes(body) + b"\x00"
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return status, location, bytes(body)
        except h11.RemoteProtocolError as exc:
            if status == 0:
                raise _Failure("connection", f"{url}: no valid HTTP response ({exc})", retryable=True) from None
            raise _Failure("connection", f"{url}: malformed HTTP response: {exc}") from None

    # ---- dns-01 --------------------------------------------------------------------------------------------
    async def _dns01(self, name: str, key_authorization: str, record: dict[str, Any]) -> None:
        query = f"_acme-challenge.{name}"
        record.update(hostname=name)
        if self.settings.dns_resolvers:
            record["resolvers"] = [f"{_host_for_url(h)}:{p}" for h, p in self.settings.dns_resolvers]
        rdatas = await self._lookup(self._resolver(), query, "TXT")
        values = [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in rdatas]
        expected = dns01_txt_value(key_authorization)
        if expected in values:
            return
        if not values:
            raise _Failure("dns", f"no TXT record found at {query}")
        more = f" (and {len(values) - 1} more)" if len(values) > 1 else ""
        raise _Failure("incorrectResponse", f"incorrect TXT record {values[0][:100]!r}{more} found at {query}")

    # ---- tls-alpn-01 ---------------------------------------------------------------------------------------
    async def _tls_alpn01(
        self, identifier_type: str, host: str, server_name: str, key_authorization: str, record: dict[str, Any]
    ) -> None:
        target = await self._target(host, self.settings.tls_alpn_port, record)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # RFC 8737 §3: the certificate is self-signed; its content is checked
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols([ACME_TLS_ALPN_PROTOCOL])
        record["serverName"] = server_name
        _, writer = await self._connect(target, record, tls=context, server_name=server_name)
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            where = f"{_host_for_url(record['addressUsed'])}:{target.port}"
            if ssl_object is None or ssl_object.selected_alpn_protocol() != ACME_TLS_ALPN_PROTOCOL:
                raise _Failure("tls", f"{where} did not negotiate the {ACME_TLS_ALPN_PROTOCOL} ALPN protocol")
            der = ssl_object.getpeercert(binary_form=True)
        finally:
            writer.transport.abort()
        if not der:
            raise _Failure("tls", f"{where} sent no certificate")
        _check_alpn_certificate(der, identifier_type, host, key_authorization, where)


def _check_alpn_certificate(der: bytes, identifier_type: str, host: str, key_authorization: str, where: str) -> None:
    try:
        certificate = x509.load_der_x509_certificate(der)
        extensions = certificate.extensions
    except ValueError as exc:
        raise _Failure("incorrectResponse", f"{where} served a certificate that cannot be parsed: {exc}") from None
    try:
        names = list(extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        names = []
    expected: x509.GeneralName = (
        x509.IPAddress(ipaddress.ip_address(host)) if identifier_type == "ip" else x509.DNSName(host)
    )
    matches = len(names) == 1 and (
        names[0] == expected
        or (isinstance(names[0], x509.DNSName) and isinstance(expected, x509.DNSName)
            and names[0].value.lower() == expected.value)
    )
    if not matches:
        shown = ", ".join(str(getattr(name, "value", name)) for name in names) or "none"
        raise _Failure("incorrectResponse", f"{where} served a certificate whose subjectAltName must be exactly "
                                            f"{host} (got: {shown})")
    try:
        extension = extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    except x509.ExtensionNotFound:
        raise _Failure("incorrectResponse", f"{where} served a certificate without the acmeIdentifier "
                                            "extension (1.3.6.1.5.5.7.1.31)") from None
    if not extension.critical:
        raise _Failure("incorrectResponse", f"{where} served an acmeIdentifier extension that is not critical")
    value = extension.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    if raw != acme_identifier_extension_value(key_authorization):
        raise _Failure("incorrectResponse", f"{where} served an acmeIdentifier extension that does not hold "
                                            "the SHA-256 of the key authorization")
