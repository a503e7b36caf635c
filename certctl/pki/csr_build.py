"""A CSR for a server-generated key (profiles with server key generation on an outside CA, e.g. ACME)."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID


def build_csr(key: CertificateIssuerPrivateKeyTypes, common_name: str, names: Sequence[x509.GeneralName]) -> str:
    """PKCS#10 with CN (when it fits in 64 characters) and every name as a SAN; PEM."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]) \
        if 0 < len(common_name) <= 64 else x509.Name([])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()
