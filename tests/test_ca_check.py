"""The local CA pair check: key usage is honoured when present and ignored when absent (RFC 5280 §4.2.1.3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certctl.pki.ca_check import ca_pair_problems


def _pair(directory: Path, usage: x509.KeyUsage | None) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    cert_path.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return cert_path, key_path


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=True, encipher_only=False, decipher_only=False,
    )


@pytest.mark.parametrize(
    ("usage", "complaint"),
    [(None, False), (_usage(cert_sign=True), False), (_usage(cert_sign=False), True)],
    ids=["absent", "cert-sign", "no-cert-sign"],
)
def test_key_usage(tmp_path: Path, usage: x509.KeyUsage | None, complaint: bool) -> None:
    problems = ca_pair_problems(*_pair(tmp_path, usage), datetime.now(UTC))
    assert any("key usage" in p for p in problems) is complaint, problems
