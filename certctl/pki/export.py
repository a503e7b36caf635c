"""Certificate exports: PEM pieces and a PKCS#12 trust store. Never a private key.

A stored version's `pem_chain` is the leaf followed by its chain (core.md §1). Private keys of
managed certificates live on the agents' hosts, so neither export can carry one: the PKCS#12 is a
trust store (certificate bags only, RFC 7292 §4.2.5), encrypted with PBES2 / AES-256-CBC and a
SHA-256 MAC so current OpenSSL and Java read it without legacy algorithms.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, pkcs12

from certctl.domain.errors import UnprocessableError

PKCS12_CIPHER = "AES-256-CBC-PBE2-SHA256"
_KDF_ROUNDS = 100_000


@dataclass(frozen=True)
class PemParts:
    cert_pem: str
    chain_pem: str
    full_pem: str
    serial_hex: str


def parse_chain(pem_chain: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem_chain.encode())
    except ValueError:
        raise UnprocessableError("the stored certificate chain is not valid PEM") from None
    if not certs:
        raise UnprocessableError("the stored certificate chain is empty")
    return certs


def pem_parts(pem_chain: str) -> PemParts:
    """Split a stored chain into the leaf, the rest of the chain and the whole, re-encoded canonically."""
    certs = parse_chain(pem_chain)
    blocks = [c.public_bytes(Encoding.PEM).decode() for c in certs]
    return PemParts(
        cert_pem=blocks[0],
        chain_pem="".join(blocks[1:]),
        full_pem="".join(blocks),
        serial_hex=format(certs[0].serial_number, "x"),
    )


def pkcs12_truststore(pem_chain: str, password: str, *, friendly_name: str) -> bytes:
    """The leaf and its chain as trusted-certificate bags, AES-256 encrypted under `password`."""
    if not password:
        raise UnprocessableError("a PKCS#12 export needs a non-empty password")
    certs = parse_chain(pem_chain)
    bags = [
        pkcs12.PKCS12Certificate(cert, (friendly_name if i == 0 else f"{friendly_name}-chain-{i}").encode())
        for i, cert in enumerate(certs)
    ]
    encryption = (
        PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(_KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password.encode())
    )
    return pkcs12.serialize_java_truststore(bags, encryption)
