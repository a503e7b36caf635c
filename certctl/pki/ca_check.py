"""Is a CA certificate and key pair on disk usable for signing? Local files only, no network."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def ca_pair_problems(cert_path: Path, key_path: Path, now: datetime) -> list[str]:
    """Everything that would stop the pair from signing; an empty list means usable."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except OSError as exc:
        return [f"CA certificate {cert_path} cannot be read ({exc.strerror or exc})"]
    except ValueError:
        return [f"CA certificate {cert_path} is not a PEM certificate"]
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        return [f"CA key {key_path} cannot be read ({exc.strerror or exc})"]
    except (TypeError, ValueError):
        # TypeError: the key is passphrase-protected; the local CA cannot unlock it unattended.
        return [f"CA key {key_path} is not an unencrypted PEM private key"]

    problems: list[str] = []
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        problems.append("the CA key does not match the CA certificate")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        problems.append("the CA certificate is not a CA (basicConstraints CA:TRUE missing)")
    # RFC 5280 §4.2.1.3: an absent key usage extension does not restrict the key.
    usage = next((e.value for e in cert.extensions if isinstance(e.value, x509.KeyUsage)), None)
    if usage is not None and not usage.key_cert_sign:
        problems.append("the CA certificate's key usage does not allow certificate signing")
    if now < cert.not_valid_before_utc:
        problems.append(f"the CA certificate is not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        problems.append(f"the CA certificate expired at {cert.not_valid_after_utc.isoformat()}")
    return problems
