"""CSR checks against a certificate profile, applied in a fixed order.

1. the CSR parses and its self-signature verifies (proof of possession, RFC 2986);
2. its key algorithm and size are allowed by the profile;
3. the names it asks for are names of the certificate being issued (when the caller fixes them);
4. DNS names match the profile's required SAN patterns; spiffe:// URIs match its SPIFFE pattern;
5. required CSR subject attributes are present;
6. EKUs requested in the CSR are allowed by the profile;
7. the requested lifetime respects max_ttl and the short-lived rule.
The first failing rule raises ValidationError naming the rule; nothing is stored by the caller.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from certctl.domain.enums import ExtendedKeyUsage, KeyAlgorithm
from certctl.domain.errors import ValidationError
from certctl.domain.models.profiles import SHORT_LIVED_TTL_SECONDS, CertificateProfile
from certctl.pki.leaf import EKU_OIDS

_ATTRIBUTE_OIDS = {
    "CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME, "L": NameOID.LOCALITY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS, "SERIALNUMBER": NameOID.SERIAL_NUMBER,
}
_EKU_BY_OID = {oid: eku for eku, oid in EKU_OIDS.items()}


@dataclass(frozen=True)
class CheckedCSR:
    csr: x509.CertificateSigningRequest
    public_key: CertificatePublicKeyTypes
    key_algorithm: KeyAlgorithm
    key_size: int
    names: tuple[x509.GeneralName, ...]  # what the CSR asked for (subjectAltName, and the CN when it is a name)

    @property
    def key_label(self) -> str:
        return f"{self.key_algorithm.value}-{self.key_size}" if self.key_algorithm != KeyAlgorithm.ED25519 \
            else "Ed25519"


class CSRRejected(ValidationError):
    """A CSR broke a profile rule; `rule` names it."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"CSR rejected ({rule}): {message}", extra={"rule": rule})
        self.rule = rule


def parse_csr(pem: str) -> x509.CertificateSigningRequest:
    text = pem.strip()
    if "-----BEGIN CERTIFICATE REQUEST-----" not in text and "-----BEGIN NEW CERTIFICATE REQUEST-----" not in text:
        raise CSRRejected("format", "csr_pem must be a PEM 'CERTIFICATE REQUEST'")
    try:
        return x509.load_pem_x509_csr(text.replace("NEW CERTIFICATE REQUEST", "CERTIFICATE REQUEST").encode())
    except ValueError as exc:
        raise CSRRejected("format", f"csr_pem does not parse: {exc}") from None


def key_facts(public_key: CertificatePublicKeyTypes) -> tuple[KeyAlgorithm, int]:
    if isinstance(public_key, rsa.RSAPublicKey):
        return KeyAlgorithm.RSA, public_key.key_size
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return KeyAlgorithm.ECDSA, public_key.curve.key_size
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return KeyAlgorithm.ED25519, 256
    raise CSRRejected("key_algorithm", f"{type(public_key).__name__} keys are not supported")


def requested_names(csr: x509.CertificateSigningRequest) -> tuple[x509.GeneralName, ...]:
    names: list[x509.GeneralName] = []
    try:
        names.extend(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        pass
    except ValueError as exc:
        raise CSRRejected("format", f"subjectAltName does not parse: {exc}") from None
    for attribute in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = str(attribute.value)
        name = general_name(value)
        if name is not None and name not in names:
            names.append(name)
    return tuple(names)


def general_name(value: str) -> x509.GeneralName | None:
    """A SAN string as the right GeneralName type: IP, email, URI or DNS (None for a non-name CN)."""
    value = value.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    if "://" in value:
        return x509.UniformResourceIdentifier(value)
    if "@" in value:
        return x509.RFC822Name(value)
    if re.fullmatch(r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}\.)*[A-Za-z0-9_-]{1,63}\.?", value):
        return x509.DNSName(value.lower().rstrip("."))
    return None


def check_csr(
    pem: str,
    profile: CertificateProfile | None,
    *,
    allowed_names: Iterable[x509.GeneralName] | None = None,
    ttl_seconds: int | None = None,
) -> CheckedCSR:
    csr = parse_csr(pem)
    if not csr.is_signature_valid:
        raise CSRRejected("signature", "the CSR's signature does not verify (no proof of key possession)")
    try:
        public_key = csr.public_key()
    except ValueError as exc:
        raise CSRRejected("key_algorithm", f"the CSR's public key does not parse: {exc}") from None
    algorithm, size = key_facts(public_key)
    names = requested_names(csr)
    checked = CheckedCSR(csr, public_key, algorithm, size, names)
    _check_key(checked, profile)
    if allowed_names is not None:
        allowed = set(allowed_names)
        extra = [n for n in names if n not in allowed]
        if extra:
            raise CSRRejected("names", "the CSR asks for names the certificate does not carry: "
                              + ", ".join(str(n.value) for n in extra))
    if profile is None:
        return checked
    _check_patterns(names, profile)
    _check_attributes(csr, profile)
    _check_ekus(csr, profile)
    _check_ttl(ttl_seconds, profile)
    return checked


def _check_key(checked: CheckedCSR, profile: CertificateProfile | None) -> None:
    rules = profile.allowed_key_algorithms if profile is not None else []
    if not rules:  # the defaults of the reference: ECDSA ≥ 256, RSA ≥ 2048
        floors = {KeyAlgorithm.ECDSA: 256, KeyAlgorithm.RSA: 2048, KeyAlgorithm.ED25519: 0}
        floor = floors[checked.key_algorithm] if profile is None else {
            KeyAlgorithm.ECDSA: 256, KeyAlgorithm.RSA: 2048}.get(checked.key_algorithm)
        if floor is None:
            raise CSRRejected("key_algorithm", f"{checked.key_algorithm.value} keys are not allowed by the profile")
        if checked.key_size < floor:
            raise CSRRejected("key_size", f"{checked.key_label} is below the minimum of {floor} bits")
        return
    matching = [r for r in rules if r.algorithm == checked.key_algorithm]
    if not matching:
        allowed = ", ".join(sorted({r.algorithm.value for r in rules}))
        raise CSRRejected("key_algorithm", f"{checked.key_algorithm.value} keys are not allowed (allowed: {allowed})")
    floor = min(r.min_size for r in matching)
    if checked.key_size < floor:
        raise CSRRejected("key_size", f"{checked.key_label} is below the profile's minimum of {floor} bits")


def _check_patterns(names: tuple[x509.GeneralName, ...], profile: CertificateProfile) -> None:
    if profile.required_san_patterns:
        patterns = [re.compile(p) for p in profile.required_san_patterns]
        for name in names:
            if isinstance(name, x509.DNSName) and not any(p.fullmatch(name.value) for p in patterns):
                raise CSRRejected("required_san_patterns",
                                  f"DNS name '{name.value}' matches none of the profile's SAN patterns")
    if profile.spiffe_uri_pattern:
        pattern = re.compile(profile.spiffe_uri_pattern)
        for name in names:
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith("spiffe://") \
                    and not pattern.fullmatch(name.value):
                raise CSRRejected("spiffe_uri_pattern",
                                  f"URI '{name.value}' does not match the profile's SPIFFE pattern")


def _check_attributes(csr: x509.CertificateSigningRequest, profile: CertificateProfile) -> None:
    for wanted in profile.required_csr_attributes:
        oid = _ATTRIBUTE_OIDS.get(wanted.strip().upper())
        present = bool(csr.subject.get_attributes_for_oid(oid)) if oid is not None else any(
            a.oid.dotted_string == wanted or a.rfc4514_attribute_name.upper() == wanted.strip().upper()
            for a in csr.subject
        )
        if not present:
            raise CSRRejected("required_csr_attributes", f"the CSR subject lacks the required attribute '{wanted}'")


def _check_ekus(csr: x509.CertificateSigningRequest, profile: CertificateProfile) -> None:
    try:
        asked = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    allowed: set[ExtendedKeyUsage] = set(profile.allowed_ekus)
    for oid in asked:
        eku = _EKU_BY_OID.get(oid)
        if eku is None or eku not in allowed:
            label = eku.value if eku is not None else oid.dotted_string
            raise CSRRejected("allowed_ekus", f"extended key usage '{label}' is not allowed by the profile")


def _check_ttl(ttl_seconds: int | None, profile: CertificateProfile) -> None:
    if ttl_seconds is None:
        return
    if ttl_seconds <= 0:
        raise CSRRejected("ttl", "the requested lifetime must be positive")
    if profile.max_ttl_seconds and ttl_seconds > profile.max_ttl_seconds:
        raise CSRRejected("max_ttl_seconds",
                          f"a lifetime of {ttl_seconds}s exceeds the profile's maximum of {profile.max_ttl_seconds}s")
    if ttl_seconds < SHORT_LIVED_TTL_SECONDS and not profile.allow_short_lived:
        raise CSRRejected("allow_short_lived",
                          f"a lifetime of {ttl_seconds}s is short-lived and the profile does not allow short-lived")
