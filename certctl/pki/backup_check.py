"""Can a CA key restored from a backup still sign? Used by `certctl backup verify` on the archive's own keys.

The check goes through the same code the server signs with (`build_leaf`, `build_crl`, the `Signer`
interface), then verifies the results with the CA certificate's public key alone: a key that loads but does
not belong to the certificate, or a certificate that does not match its stored row, fails here rather than on
the first issuance after a disaster.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certctl.pki.ca import IssuingCA
from certctl.pki.crl import RevokedEntry, build_crl
from certctl.pki.leaf import LeafRequest, build_leaf
from certctl.pki.signers import Signer

_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, _SPKI)


def ca_signing_problems(ca_id: str, cert_pem: str, signer: Signer, now: datetime) -> list[str]:
    """Sign a test leaf and a one-entry CRL with `signer` as CA `ca_id`; every reason they do not verify."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        return [f"CA '{ca_id}': the stored certificate is not PEM"]
    if signer.public_key().public_bytes(serialization.Encoding.DER, _SPKI) != _spki(cert):
        return [f"CA '{ca_id}': the key in the archive does not belong to the CA certificate"]
    ca = IssuingCA(id=ca_id, issuer_id="backup-verify", cert=cert, parents=(), signer=signer)
    problems: list[str] = []
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    # Inside the CA's validity, so that an expired CA still proves its key (expiry is reported separately).
    start = max(cert.not_valid_before_utc, min(now, cert.not_valid_after_utc - timedelta(minutes=2)))
    request = LeafRequest(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certctl backup verify")]),
        public_key=leaf_key.public_key(), sans=(), ekus=(),
        not_before=start, not_after=start + timedelta(minutes=1),
    )
    try:
        leaf = build_leaf(ca, request, serial=x509.random_serial_number())
        leaf.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        problems.append(f"CA '{ca_id}': a test certificate signed with the restored key does not verify ({exc})")
    try:
        signed = build_crl(ca, [RevokedEntry(serial=1, revoked_at=start, reason_code=0)], number=1,
                           this_update=start, next_update=start + timedelta(hours=1))
        crl = x509.load_der_x509_crl(signed.der)
        if not crl.is_signature_valid(cert.public_key()):  # type: ignore[arg-type]  # CA keys are never DH/X25519
            problems.append(f"CA '{ca_id}': a test CRL signed with the restored key does not verify")
    except (ValueError, TypeError) as exc:
        problems.append(f"CA '{ca_id}': a test CRL cannot be signed with the restored key ({exc})")
    if now > cert.not_valid_after_utc:
        problems.append(f"CA '{ca_id}': its certificate expired at {cert.not_valid_after_utc.isoformat()}")
    return problems


def responder_key_problems(ca_id: str, cert_pem: str, signer: Signer) -> list[str]:
    """The OCSP responder key in the archive belongs to the stored responder certificate."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        return [f"OCSP responder of CA '{ca_id}': the stored certificate is not PEM"]
    if signer.public_key().public_bytes(serialization.Encoding.DER, _SPKI) != _spki(cert):
        return [f"OCSP responder of CA '{ca_id}': the key in the archive does not belong to its certificate"]
    return []
