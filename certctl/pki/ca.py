"""CA certificates: the persisted root of a local issuer, and the issuing CA used to sign leaves.

`IssuingCA` is everything signing needs: the CA certificate, its parents up to the root, the
signer of its key, and where it publishes status (CRL and OCSP URLs, and its own certificate for
AIA caIssuers). The service layer builds it from the `intermediate_cas` row and the signer
registry; this module never reads the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from certctl.pki.serials import new_serial
from certctl.pki.signers import Signer
from certctl.pki.signing import sign_certificate

# RFC 5280 §4.1.2.5: clocks of relying parties drift; CA certificates are backdated a little.
CA_BACKDATE = timedelta(minutes=5)


@dataclass(frozen=True)
class PublicationUrls:
    """Where a CA's status lives, as put into the certificates it signs (RFC 5280 §4.2.1.13, §4.2.2.1)."""

    crl: str | None = None
    ocsp: str | None = None
    ca_issuers: str | None = None

    @classmethod
    def for_ca(cls, public_url: str, ca_id: str, *, ocsp_override: str = "") -> PublicationUrls:
        base = public_url.rstrip("/") + "/.well-known/pki"
        return cls(crl=f"{base}/crl/{ca_id}", ocsp=ocsp_override or f"{base}/ocsp/{ca_id}",
                   ca_issuers=f"{base}/ca/{ca_id}")


def add_publication(builder: x509.CertificateBuilder, urls: PublicationUrls) -> x509.CertificateBuilder:
    """The CRL distribution point and AIA (OCSP, caIssuers) of the signing CA, on a certificate it signs."""
    if urls.crl:
        point = x509.DistributionPoint(full_name=[x509.UniformResourceIdentifier(urls.crl)], relative_name=None,
                                       reasons=None, crl_issuer=None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    access = []
    if urls.ocsp:
        access.append(x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                             x509.UniformResourceIdentifier(urls.ocsp)))
    if urls.ca_issuers:
        access.append(x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                             x509.UniformResourceIdentifier(urls.ca_issuers)))
    if access:
        builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
    return builder


@dataclass(frozen=True)
class IssuingCA:
    id: str
    issuer_id: str
    cert: x509.Certificate
    parents: tuple[x509.Certificate, ...]  # the CA that signed `cert`, then its parent, ..., the root if known
    signer: Signer
    urls: PublicationUrls = field(default_factory=PublicationUrls)

    @cached_property
    def ski(self) -> x509.SubjectKeyIdentifier:
        try:
            return self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.SubjectKeyIdentifier.from_public_key(self.cert.public_key())

    @cached_property
    def chain_pem(self) -> str:
        """This CA and its parents, PEM: the `chain_pem` of every leaf it signs."""
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in (self.cert, *self.parents))

    @cached_property
    def path_len(self) -> int | None:
        try:
            return self.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        except x509.ExtensionNotFound:
            return None


def ca_name(common_name: str, organization: str = "", country: str = "") -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if country:
        attributes.insert(0, x509.NameAttribute(NameOID.COUNTRY_NAME, country))
    return x509.Name(attributes)


def ca_key_usage() -> x509.KeyUsage:
    # RFC 5280 §4.2.1.3: a CA key signs certificates and CRLs; digitalSignature lets it sign OCSP itself.
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )


def build_root(signer: Signer, subject: x509.Name, now: datetime, validity: timedelta) -> x509.Certificate:
    """A self-signed root: CA:TRUE critical, no path length limit, certSign|cRLSign, SKI = AKI."""
    public_key = signer.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(new_serial())
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    return sign_certificate(builder, signer)


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def load_pem_chain(pem: str | bytes) -> list[x509.Certificate]:
    data = pem.encode() if isinstance(pem, str) else pem
    return x509.load_pem_x509_certificates(data) if b"-----BEGIN CERTIFICATE-----" in data else []
