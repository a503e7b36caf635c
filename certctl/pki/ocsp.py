"""OCSP (RFC 6960): read requests, write signed BasicOCSPResponses, make delegated responder certificates.

- A request may carry any number of CertIDs (§4.1.1); each gets its own SingleResponse, and the
  CertID is echoed byte for byte. A CertID matches the CA when its issuerNameHash and issuerKeyHash,
  computed with the CertID's own hash algorithm (SHA-1, SHA-256, SHA-384 or SHA-512), are those of
  the CA's subject and key (§4.1.1); the caller answers `unknown` for the others (§2.2).
- The nonce (§4.4.1 as updated by RFC 8954) is echoed in responseExtensions, where `openssl ocsp`
  looks for it (the reference put it in singleExtensions). RFC 8954 §2.1: a nonce of 0 or more than
  32 octets is a malformedRequest.
- An unrecognised request extension marked critical makes the request malformed (§4.4: "unless
  they have the critical flag set"); the others are ignored. Request signatures are not required.
- Responses are signed by the CA's delegated responder (§4.2.2.2): its certificate, issued by the CA
  with the id-kp-OCSPSigning EKU and id-pkix-ocsp-nocheck (§4.2.2.2.1), travels in `certs`, and the
  responderID is its key hash (§4.2.2.3: SHA-1 of the subjectPublicKey BIT STRING value).
- Unsuccessful answers (§2.3) are the bare OCSPResponse with just the status.

The DER is written directly (certctl.pki.der): `cryptography`'s OCSP builder takes one request and
one response only. tests/test_ocsp.py reads the output back with `cryptography` and `openssl ocsp`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Final, Literal, NamedTuple

from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certctl.pki import der
from certctl.pki.ca import IssuingCA
from certctl.pki.serials import new_serial
from certctl.pki.signers import Signer
from certctl.pki.signing import sign_certificate

# OCSPResponseStatus (§4.2.1) answers that carry no responseBytes.
MALFORMED_REQUEST: Final = der.sequence(der.enumerated(1))
INTERNAL_ERROR: Final = der.sequence(der.enumerated(2))
TRY_LATER: Final = der.sequence(der.enumerated(3))
UNAUTHORIZED: Final = der.sequence(der.enumerated(6))

MAX_NONCE_OCTETS: Final = 32  # RFC 8954 §2.1
MAX_CERT_IDS: Final = 64  # more than any client sends; a bigger request is refused as malformed

RESPONDER_VALIDITY: Final = timedelta(days=30)
RESPONDER_BACKDATE: Final = timedelta(minutes=5)
RESPONDER_ROTATION_GRACE: Final = timedelta(days=7)
RESPONDER_KEY_SPEC: Final = "ECDSA-P256"

_HASHES: Final[dict[str, str]] = {"sha1": "sha1", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512"}
_ID_PKIX_OCSP_BASIC = der.oid("1.3.6.1.5.5.7.48.1.1")
_ID_PKIX_OCSP_NONCE = "1.3.6.1.5.5.7.48.1.2"
_SHA1_ALGORITHM = der.sequence(der.oid("1.3.14.3.2.26"), b"\x05\x00")
_KNOWN_REQUEST_EXTENSIONS = frozenset({_ID_PKIX_OCSP_NONCE})

Status = Literal["good", "revoked", "unknown"]


class MalformedRequestError(ValueError):
    """The bytes are not an OCSP request this responder can answer (§2.3 malformedRequest)."""


class CertId(NamedTuple):
    der: bytes  # the CertID as received, echoed in the SingleResponse
    hash_algorithm: str  # hashlib name
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int


class OCSPRequestInfo(NamedTuple):
    cert_ids: tuple[CertId, ...]
    nonce_extension: bytes | None  # the whole nonce Extension, echoed unchanged


class SingleResponse(NamedTuple):
    cert_id: bytes
    status: Status
    this_update: datetime
    next_update: datetime
    revoked_at: datetime | None = None
    reason_code: int = 0


def parse_request(data: bytes) -> OCSPRequestInfo:
    """Read a DER OCSPRequest; raises MalformedRequestError for anything this responder cannot answer."""
    try:
        request = asn1_ocsp.OCSPRequest.load(data, strict=True)
        tbs = request["tbs_request"]
        if tbs["version"].native != "v1":
            raise MalformedRequestError("unsupported OCSP request version")
        items = tbs["request_list"]
        if len(items) == 0 or len(items) > MAX_CERT_IDS:
            raise MalformedRequestError(f"an OCSP request holds 1 to {MAX_CERT_IDS} CertIDs")
        cert_ids = []
        for item in items:
            for ext in item["single_request_extensions"] or []:
                if ext["critical"].native:
                    raise MalformedRequestError("unsupported critical single request extension")
            cert_id = item["req_cert"]
            algorithm = _HASHES.get(cert_id["hash_algorithm"]["algorithm"].native, "")
            serial = cert_id["serial_number"].native
            cert_ids.append(CertId(cert_id.dump(), algorithm, cert_id["issuer_name_hash"].native,
                                   cert_id["issuer_key_hash"].native, serial))
        nonce = None
        for ext in tbs["request_extensions"] or []:
            extn_id = ext["extn_id"].dotted
            if extn_id == _ID_PKIX_OCSP_NONCE:
                _check_nonce(ext["extn_value"].contents)
                nonce = ext.dump()
            elif ext["critical"].native and extn_id not in _KNOWN_REQUEST_EXTENSIONS:
                raise MalformedRequestError("unsupported critical request extension")
    except MalformedRequestError:
        raise
    except Exception as exc:  # asn1crypto raises several types for bad input; all of them mean "malformed"
        raise MalformedRequestError("not a DER OCSP request") from exc
    return OCSPRequestInfo(tuple(cert_ids), nonce)


def _check_nonce(value: bytes) -> None:
    # Nonce ::= OCTET STRING (SIZE(1..32)) inside extnValue (RFC 8954 §2.1), as OpenSSL and Go send it.
    tag, start, end = der.read_tlv(value)
    if tag != 0x04 or end != len(value):
        raise MalformedRequestError("the nonce must be an OCTET STRING")
    if not 1 <= end - start <= MAX_NONCE_OCTETS:
        raise MalformedRequestError(f"the nonce must be 1 to {MAX_NONCE_OCTETS} octets")


@dataclass(frozen=True)
class IssuerHashes:
    """issuerNameHash and issuerKeyHash of a CA under each hash algorithm a CertID may use (§4.1.1)."""

    name_der: bytes
    key_bits: bytes

    @classmethod
    def of(cls, cert: x509.Certificate) -> IssuerHashes:
        parsed = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
        tbs = parsed["tbs_certificate"]
        # The BIT STRING value without its unused-bits octet (§4.1.1: "excluding the tag and length").
        return cls(tbs["subject"].dump(), tbs["subject_public_key_info"]["public_key"].contents[1:])

    @cached_property
    def table(self) -> dict[str, tuple[bytes, bytes]]:
        return {name: (hashlib.new(name, self.name_der).digest(), hashlib.new(name, self.key_bits).digest())
                for name in _HASHES.values()}

    def matches(self, cert_id: CertId) -> bool:
        pair = self.table.get(cert_id.hash_algorithm)
        return pair is not None and pair == (cert_id.issuer_name_hash, cert_id.issuer_key_hash)

    def sha1_cert_id(self, serial: int) -> bytes:
        """A SHA-1 CertID for a serial of this CA (the GET-by-serial debug form has no request to echo)."""
        name_hash, key_hash = self.table["sha1"]
        return der.sequence(_SHA1_ALGORITHM, der.octet_string(name_hash), der.octet_string(key_hash),
                            der.integer(serial))


@dataclass(frozen=True)
class Responder:
    """A delegated responder: its certificate (issued by the CA) and the signer of its key."""

    cert: x509.Certificate
    signer: Signer

    @cached_property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @cached_property
    def key_hash(self) -> bytes:
        return hashlib.sha1(IssuerHashes.of(self.cert).key_bits).digest()  # noqa: S324 - RFC 6960 §4.2.2.3 KeyHash

    def valid_at(self, moment: datetime, *, grace: timedelta = timedelta(0)) -> bool:
        return self.cert.not_valid_before_utc <= moment and moment + grace < self.cert.not_valid_after_utc


def build_responder_certificate(ca: IssuingCA, public_key: CertificatePublicKeyTypes, now: datetime, *,
                                validity: timedelta = RESPONDER_VALIDITY,
                                backdate: timedelta = RESPONDER_BACKDATE) -> x509.Certificate:
    """The CA's delegated OCSP signing certificate (RFC 6960 §4.2.2.2), never outliving the CA."""
    not_after = min(now + validity, ca.cert.not_valid_after_utc)
    common_name = next((str(a.value) for a in ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)), ca.id)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"OCSP Responder for {common_name}"[:64])]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(new_serial())
        .not_valid_before(now - backdate)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        # §4.2.2.2.1: relying parties need not check the responder certificate's own revocation.
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca.ski), critical=False)
    )
    return sign_certificate(builder, ca.signer)


def responder_fits(responder: Responder, ca: IssuingCA) -> bool:
    """The stored responder certificate belongs to this CA and to the loaded key (else it is replaced)."""
    cert = responder.cert
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            responder.signer.public_key().public_bytes(serialization.Encoding.DER, spki):
        return False
    if cert.issuer != ca.cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca.cert)
    except Exception:  # wrong signature, algorithm or key: not ours
        return False
    return True


_GOOD: Final = b"\x80\x00"  # good [0] IMPLICIT NULL
_UNKNOWN: Final = b"\x82\x00"  # unknown [2] IMPLICIT UnknownInfo (NULL)


def _single(single: SingleResponse) -> bytes:
    if single.status == "good":
        status = _GOOD
    elif single.status == "revoked":
        assert single.revoked_at is not None
        # RevokedInfo; the reason is left out for `unspecified`, as on the CRL (RFC 5280 §5.3.1).
        reason = der.explicit(0, der.enumerated(single.reason_code)) if single.reason_code else b""
        status = der.tlv(0xA1, der.generalized_time(single.revoked_at) + reason)
    else:
        status = _UNKNOWN
    return der.sequence(single.cert_id, status, der.generalized_time(single.this_update),
                        der.explicit(0, der.generalized_time(single.next_update)))


def build_response(responder: Responder, singles: Sequence[SingleResponse], *, produced_at: datetime,
                   nonce_extension: bytes | None = None) -> bytes:
    """A successful OCSPResponse whose BasicOCSPResponse is signed by the responder."""
    response_extensions = der.explicit(1, der.sequence(nonce_extension)) if nonce_extension else b""
    tbs = der.sequence(
        der.explicit(2, der.octet_string(responder.key_hash)),  # responderID byKey
        der.generalized_time(produced_at),
        der.sequence(*(_single(s) for s in singles)),
        response_extensions,
    )
    signature = der.sign_tbs(responder.signer, tbs)
    basic = der.sequence(
        tbs, der.signature_algorithm(responder.signer.key_spec), der.bit_string(signature),
        der.explicit(0, der.sequence(responder.cert_der)),
    )
    # OCSPResponse { successful, responseBytes [0] { id-pkix-ocsp-basic, OCTET STRING { basic } } }
    return der.sequence(der.enumerated(0), der.explicit(0, der.sequence(_ID_PKIX_OCSP_BASIC, der.octet_string(basic))))


def single_request(cert_id: bytes) -> bytes:
    """OCSPRequest { tbsRequest { requestList { Request { reqCert } } } } for one CertID, nothing else."""
    return der.sequence(der.sequence(der.sequence(der.sequence(cert_id))))
