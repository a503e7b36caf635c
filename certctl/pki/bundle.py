"""What an agent deploys: a leaf, its chain and the matching private key, checked and encoded for targets.

The agent's target connectors write these bytes to files; this module is where the key is parsed
(only `pki` touches private keys). A bundle whose key does not match the leaf is refused before
anything is written: a server given a mismatched pair fails its config test at best, and at worst
refuses to start after its next restart. No message here ever contains key material.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certctl.domain.errors import ValidationError


@dataclass(frozen=True)
class DeployBundle:
    leaf_pem: bytes  # the leaf alone, canonical PEM
    chain_pem: bytes  # the issuers (leaf excluded, duplicates dropped), canonical PEM, may be empty
    key_pem: bytes = field(repr=False)  # as the agent holds it, with one trailing newline
    leaf_der: bytes = field(repr=False)
    fingerprint_sha256: str  # of the leaf's DER, lowercase hex (what a TLS probe reports)
    serial_hex: str

    @property
    def fullchain_pem(self) -> bytes:
        return self.leaf_pem + self.chain_pem

    @property
    def combined_pem(self) -> bytes:
        """Leaf, chain, then key: the single file HAProxy (and others) load."""
        return self.leaf_pem + self.chain_pem + self.key_pem

    def key_der(self) -> bytes:
        """The private key as unencrypted PKCS#8 DER (RFC 5958)."""
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        return key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def deploy_bundle(cert_pem: str, chain_pem: str, key_pem: str) -> DeployBundle:
    """Check and normalise a certificate (optionally followed by its chain), a chain and a key."""
    certs = _certificates(cert_pem, "certificate")
    if not certs:
        raise ValidationError("the certificate PEM holds no certificate")
    leaf = certs[0]
    issuers: list[x509.Certificate] = []
    seen = {leaf.public_bytes(serialization.Encoding.DER)}
    for cert in [*certs[1:], *_certificates(chain_pem, "chain")]:
        der = cert.public_bytes(serialization.Encoding.DER)
        if der not in seen:
            seen.add(der)
            issuers.append(cert)
    key_bytes = key_pem.strip().encode() + b"\n"
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError):
        # Never say why in detail: the parser's message could quote part of the input.
        raise ValidationError("the private key is not an unencrypted PEM private key") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise ValidationError("the private key does not match the certificate")
    leaf_der = leaf.public_bytes(serialization.Encoding.DER)
    return DeployBundle(
        leaf_pem=leaf.public_bytes(serialization.Encoding.PEM),
        chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in issuers),
        key_pem=key_bytes,
        leaf_der=leaf_der,
        fingerprint_sha256=hashlib.sha256(leaf_der).hexdigest(),
        serial_hex=format(leaf.serial_number, "x"),
    )


def _certificates(pem: str, what: str) -> list[x509.Certificate]:
    if not pem.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise ValidationError(f"the {what} is not valid PEM") from None
