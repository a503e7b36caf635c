"""The agent's private keys: made here, kept here (0600 files in a 0700 directory), never sent anywhere.

Keys are filed per certificate and named by their public key (`<cert id>/<spki sha256 prefix>.key`), so
the key of a certificate version is found by the certificate itself, and a key made for a renewal that
never completed cannot be mistaken for the one in service.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import NameOID

from certctl.agent.state import write_private
from certctl.pki.csr_policy import general_name

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def key_name(public_key: PublicKeyTypes) -> str:
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()[:32]


class KeyStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _dir(self, certificate_id: str) -> Path:
        path = self.directory / (_SAFE.sub("_", certificate_id) or "certificate")
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        os.chmod(path, 0o700)
        return path

    def pending_key(self, certificate_id: str, job_id: str) -> CertificateIssuerPrivateKeyTypes:
        """The key for a CSR of this job: made once, so a restart mid-job sends the same CSR key again."""
        marker = self._dir(certificate_id) / f"pending-{_SAFE.sub('_', job_id)}"
        if marker.exists():
            found = self._load(self._dir(certificate_id) / marker.read_text().strip())
            if found is not None:
                return found
        key = ec.generate_private_key(ec.SECP256R1())
        name = key_name(key.public_key()) + ".key"
        write_private(self._dir(certificate_id) / name, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        write_private(marker, name.encode())
        return key

    def finish_job(self, certificate_id: str, job_id: str) -> None:
        (self._dir(certificate_id) / f"pending-{_SAFE.sub('_', job_id)}").unlink(missing_ok=True)

    def key_for(self, certificate_id: str, certificate: x509.Certificate) -> CertificateIssuerPrivateKeyTypes | None:
        """The private key matching the certificate's public key, if this agent made it."""
        return self._load(self._dir(certificate_id) / f"{key_name(certificate.public_key())}.key")

    def key_pem_for(self, certificate_id: str, certificate: x509.Certificate) -> str | None:
        key = self.key_for(certificate_id, certificate)
        if key is None:
            return None
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    @staticmethod
    def _load(path: Path) -> CertificateIssuerPrivateKeyTypes | None:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError):
            return None
        return key  # type: ignore[return-value]  # only keys this store wrote (EC/RSA) are here


def build_csr(key: CertificateIssuerPrivateKeyTypes, common_name: str, sans: list[str]) -> str:
    """A CSR for the certificate's names: CN, and every name as its own SAN type (DNS, IP, email, URI)."""
    names: list[x509.GeneralName] = []
    for value in [common_name, *sans]:
        name = general_name(value)
        if name is not None and name not in names:
            names.append(name)
    builder = x509.CertificateSigningRequestBuilder()
    if common_name and len(common_name) <= 64:
        builder = builder.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
    else:
        builder = builder.subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    digest = None if not isinstance(key, ec.EllipticCurvePrivateKey) else hashes.SHA256()
    return builder.sign(key, digest).public_bytes(serialization.Encoding.PEM).decode()
