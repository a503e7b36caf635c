"""Real X.509 material for the `--demo` inventory: a throwaway two-tier CA and the leaves it signs.

Every key made here is discarded once its certificate is signed: the demo shows certificates as
the server would hold them (agent key generation means the server never has a leaf key), and the
demo CA exists only for the lifetime of the seeding call.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_EKU_OIDS = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING,
}

LeafKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class DemoLeaf:
    serial_number: str  # lowercase hex, as the store keeps it
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str  # lowercase hex over the leaf DER
    pem_chain: str  # leaf + issuing CA, PEM
    key_algorithm: str
    key_size: int


class DemoCA:
    """A root and an issuing CA, both ECDSA, valid around `now` for ten years either way."""

    def __init__(self, now: datetime, *, organization: str = "certctl demo") -> None:
        start, end = now - timedelta(days=3650), now + timedelta(days=3650)
        self._root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = _name(f"{organization} Root CA", organization)
        self.root = _ca_cert(root_name, root_name, self._root_key.public_key(), self._root_key, start, end, None)
        self._key = ec.generate_private_key(ec.SECP256R1())
        issuing_name = _name(f"{organization} Issuing CA", organization)
        self.issuing = _ca_cert(issuing_name, root_name, self._key.public_key(), self._root_key, start, end, 0)
        self._issuing_pem = self.issuing.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def root_pem(self) -> str:
        return self.root.public_bytes(serialization.Encoding.PEM).decode()

    def issue(
        self,
        common_name: str,
        sans: Sequence[str],
        not_before: datetime,
        not_after: datetime,
        *,
        key_algorithm: str = "ECDSA",
        key_size: int = 256,
        ekus: Sequence[str] = ("serverAuth",),
    ) -> DemoLeaf:
        key = _leaf_key(key_algorithm, key_size)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.issuing.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_encipherment=key_algorithm == "RSA", content_commitment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([_EKU_OIDS[e] for e in ekus]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        names = [_general_name(san) for san in sans or (common_name,)]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        der = cert.public_bytes(serialization.Encoding.DER)
        leaf_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        return DemoLeaf(
            serial_number=format(cert.serial_number, "x"),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            fingerprint_sha256=hashlib.sha256(der).hexdigest(),
            pem_chain=leaf_pem + self._issuing_pem,
            key_algorithm=key_algorithm,
            key_size=key_size,
        )


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _ca_cert(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    start: datetime,
    end: datetime,
    path_length: int | None,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=False, content_commitment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(signing_key, hashes.SHA384())
    )


def _leaf_key(algorithm: str, size: int) -> LeafKey:
    if algorithm == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    if algorithm == "ECDSA":
        curve = {256: ec.SECP256R1(), 384: ec.SECP384R1(), 521: ec.SECP521R1()}.get(size)
        if curve is None:
            raise ValueError(f"unsupported ECDSA size {size}")
        return ec.generate_private_key(curve)
    raise ValueError(f"unsupported demo key algorithm '{algorithm}'")


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        pass
    if "@" in san:
        return x509.RFC822Name(san)
    if san.startswith("spiffe://"):
        return x509.UniformResourceIdentifier(san)
    return x509.DNSName(san)
