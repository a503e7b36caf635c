"""The end-entity certificate template (RFC 5280), signed by an `IssuingCA`.

What goes in, and why:
- serial: random, positive, 127 bits (certctl.pki.serials), chosen by the caller so it can be
  reserved and checked for uniqueness per CA before signing;
- subject from the request, SANs (DNS, IP, email, URI) in subjectAltName, critical when the
  subject is empty (§4.2.1.6);
- basicConstraints CA:FALSE (critical), keyUsage by key type: digitalSignature, plus
  keyEncipherment for RSA keys only (an EC key cannot encipher; the reference set it anyway);
- extendedKeyUsage from the profile; SKI by the §4.2.1.2 method (1) SHA-1 of the key; AKI = CA SKI;
- CRL distribution point and AIA (OCSP, caIssuers) of the signing CA (§4.2.1.13, §4.2.2.1);
- optional OCSP must-staple (RFC 7633 TLS feature status_request).
Name constraints of every CA above are enforced before anything is signed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from certctl.domain.enums import ExtendedKeyUsage, KeyAlgorithm
from certctl.domain.errors import ValidationError
from certctl.pki.ca import IssuingCA, add_publication
from certctl.pki.name_constraints import check_names
from certctl.pki.signing import sign_certificate

EKU_OIDS: dict[ExtendedKeyUsage, x509.ObjectIdentifier] = {
    ExtendedKeyUsage.SERVER_AUTH: ExtendedKeyUsageOID.SERVER_AUTH,
    ExtendedKeyUsage.CLIENT_AUTH: ExtendedKeyUsageOID.CLIENT_AUTH,
    ExtendedKeyUsage.CODE_SIGNING: ExtendedKeyUsageOID.CODE_SIGNING,
    ExtendedKeyUsage.EMAIL_PROTECTION: ExtendedKeyUsageOID.EMAIL_PROTECTION,
    ExtendedKeyUsage.TIME_STAMPING: ExtendedKeyUsageOID.TIME_STAMPING,
}


@dataclass(frozen=True)
class LeafRequest:
    subject: x509.Name
    public_key: CertificatePublicKeyTypes
    sans: tuple[x509.GeneralName, ...]
    ekus: tuple[ExtendedKeyUsage, ...]
    not_before: datetime
    not_after: datetime
    must_staple: bool = False


def leaf_key_usage(public_key: CertificatePublicKeyTypes) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )


def build_leaf(ca: IssuingCA, request: LeafRequest, serial: int) -> x509.Certificate:
    if not request.sans and not request.subject:
        raise ValidationError("a certificate needs a subject or at least one subject alternative name")
    if request.not_after <= request.not_before:
        raise ValidationError("the certificate's validity ends before it begins")
    if request.not_after > ca.cert.not_valid_after_utc:
        raise ValidationError(
            f"the certificate would outlive its CA (CA expires {ca.cert.not_valid_after_utc.isoformat()})"
        )
    check_names(request.sans, (ca.cert, *ca.parents))
    builder = (
        x509.CertificateBuilder()
        .subject_name(request.subject)
        .issuer_name(ca.cert.subject)
        .public_key(request.public_key)
        .serial_number(serial)
        .not_valid_before(request.not_before)
        .not_valid_after(request.not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(leaf_key_usage(request.public_key), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(request.public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca.ski), critical=False)
    )
    if request.sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(request.sans)),
                                        critical=len(request.subject) == 0)
    if request.ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage([EKU_OIDS[e] for e in request.ekus]), critical=False)
    builder = add_publication(builder, ca.urls)
    if request.must_staple:
        builder = builder.add_extension(x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False)
    return sign_certificate(builder, ca.signer)


def generate_leaf_key(
    rules: list[tuple[str, int]],
) -> tuple[CertificateIssuerPrivateKeyTypes, KeyAlgorithm, int]:
    """Server key generation: ECDSA P-256 when the profile allows it (or says nothing), else the first
    algorithm it allows, at its minimum size (never below 2048 for RSA)."""
    allowed = [(KeyAlgorithm.parse(a), size) for a, size in rules]
    if not allowed or any(a == KeyAlgorithm.ECDSA and size <= 256 for a, size in allowed):
        return ec.generate_private_key(ec.SECP256R1()), KeyAlgorithm.ECDSA, 256
    algorithm, size = allowed[0]
    if algorithm == KeyAlgorithm.ECDSA:
        curve: ec.EllipticCurve = ec.SECP384R1() if size <= 384 else ec.SECP521R1()
        return ec.generate_private_key(curve), algorithm, curve.key_size
    if algorithm == KeyAlgorithm.ED25519:
        return ed25519.Ed25519PrivateKey.generate(), algorithm, 256
    bits = max(2048, size)
    return rsa.generate_private_key(public_exponent=65537, key_size=bits), algorithm, bits


def private_key_pem(key: CertificateIssuerPrivateKeyTypes) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
