"""A TLS handshake probe: what certificate does an endpoint serve?

Used by deployment verification (is the new certificate live?), the network scanner, and endpoint health
checks. It never trusts or validates what it sees (it reports it); the caller decides what a match is.
"""

from __future__ import annotations

import _ssl
import asyncio
import ssl
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes


@dataclass(frozen=True)
class ProbeResult:
    host: str
    port: int
    fingerprint_sha256: str  # of the leaf's DER, lowercase hex
    chain_der: tuple[bytes, ...]  # leaf first, as served
    subject: str
    issuer: str
    serial_number: str  # canonical lowercase hex
    not_before: datetime
    not_after: datetime
    tls_version: str
    cipher: str
    latency_ms: float

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.chain_der[0])


class ProbeError(Exception):
    """The endpoint could not be reached, or did not complete a TLS handshake."""


def _context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we report what is served; we do not judge it here
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def probe_tls(host: str, port: int, *, server_name: str | None = None, timeout: float = 5.0) -> ProbeResult:
    """Handshake with `host:port` (SNI `server_name`, else `host` when it is a name) and describe the leaf."""
    started = time.perf_counter()
    sni = server_name if server_name is not None else (None if _is_ip(host) else host)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port, ssl=_context(), server_hostname=sni or None)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise ProbeError(f"TLS handshake with {host}:{port} failed: {exc.__class__.__name__}: {exc}") from None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        chain = _served_chain(ssl_object)
        if not chain:
            raise ProbeError(f"{host}:{port} completed a handshake without a certificate")
        leaf = x509.load_der_x509_certificate(chain[0])
        cipher = ssl_object.cipher()
        return ProbeResult(
            host=host, port=port, fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(), chain_der=chain,
            subject=leaf.subject.rfc4514_string(), issuer=leaf.issuer.rfc4514_string(),
            serial_number=format(leaf.serial_number, "x"), not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc, tls_version=ssl_object.version() or "",
            cipher=cipher[0] if cipher else "", latency_ms=round((time.perf_counter() - started) * 1000, 2),
        )
    finally:
        # No TLS close_notify exchange: a peer that never answers it would hold us for asyncio's 30 s shutdown
        # timeout, whatever `timeout` says. We only read the certificate; an abort is enough.
        writer.transport.abort()


def _served_chain(ssl_object: ssl.SSLObject) -> tuple[bytes, ...]:
    """The certificates as served, leaf first. `SSLObject.get_unverified_chain` is public from Python 3.13;
    on 3.11 and 3.12 the same call lives on the underlying `_ssl` object. Without either, the leaf only."""
    getter = getattr(ssl_object, "get_unverified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        chain = getter() or []
        encoded = tuple(bytes(_der(cert)) for cert in chain)
        if encoded:
            return encoded
    leaf = ssl_object.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()


def _der(cert: Any) -> bytes:
    return bytes(cert.public_bytes(_ssl.ENCODING_DER))


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
