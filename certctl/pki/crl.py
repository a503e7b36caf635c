"""X.509 v2 CRLs (RFC 5280 §5) of an issuing CA, signed through its `Signer`.

What goes in, and why:
- version v2, the CA's subject as issuer (its original encoding, so name matching is byte-exact);
- thisUpdate/nextUpdate (the caller's times, whole seconds; UTCTime until 2049, §5.1.2.4);
- one entry per revoked certificate: serial, revocation date and the CRLReason entry extension,
  left out for `unspecified` as §5.3.1 asks;
- crlExtensions: authorityKeyIdentifier (§5.2.1), cRLNumber (§5.2.3: the caller passes the CA's
  stored number + 1, so it only grows), and a critical issuingDistributionPoint (§5.2.5) naming
  the URL this CRL is published at, so a CRL fetched for one CA cannot pass for another's.

Which revocations are listed is decided by `keep_on_crl`: certificates of short-lived profiles are
never listed (they expire before a CRL would reach anyone), and an entry leaves the CRL once its
certificate has expired and it has been on a full CRL period of CRLs after that (§3.3 allows the
removal after the entry "appears on one regularly scheduled CRL issued beyond the revoked
certificate's validity period").

The DER is written here rather than through `cryptography`'s builder, which takes about 30 s for
100,000 entries (it copies its entry list on every addition); the bytes are the same as the
builder's for the same input (tests/test_crl.py compares them).
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certctl.pki import der
from certctl.pki.ca import IssuingCA
from certctl.pki.signers import SignerError

DEFAULT_CRL_VALIDITY: Final = timedelta(hours=24)  # nextUpdate = thisUpdate + 24 h (protocols.md §4)

# RFC 5280 §5.3.1 CRLReason: 7 is unused; 0 (unspecified) is written by leaving the extension out.
REASON_CODES: Final = frozenset({0, 1, 2, 3, 4, 5, 6, 8, 9, 10})

_ID_CE_REASON_CODE = der.oid("2.5.29.21")
_ID_CE_CRL_NUMBER = der.oid("2.5.29.20")
_ID_CE_AKI = der.oid("2.5.29.35")
_ID_CE_IDP = der.oid("2.5.29.28")

# crlEntryExtensions of each reason: SEQUENCE { Extension { reasonCode, OCTET STRING { ENUMERATED } } }.
_REASON_EXTENSIONS: Final[dict[int, bytes]] = {
    code: (b"" if code == 0 else der.sequence(der.extension(_ID_CE_REASON_CODE, der.enumerated(code))))
    for code in REASON_CODES
}


class RevokedEntry(NamedTuple):
    serial: int
    revoked_at: datetime  # timezone-aware
    reason_code: int = 0


@dataclass(frozen=True)
class SignedCRL:
    der: bytes
    number: int
    this_update: datetime
    next_update: datetime
    entries: int

    @property
    def etag(self) -> str:
        return crl_etag(self.der)


def crl_etag(data: bytes) -> str:
    """Weak ETag of the first 16 bytes of the SHA-256 of the DER (protocols.md §4)."""
    return f'W/"{hashlib.sha256(data).hexdigest()[:32]}"'


def keep_on_crl(*, not_after: datetime | None, short_lived: bool, this_update: datetime,
                validity: timedelta = DEFAULT_CRL_VALIDITY) -> bool:
    """Whether a revoked certificate is listed on a CRL issued at `this_update` (see the module notes)."""
    if short_lived:
        return False
    return not_after is None or not_after + validity >= this_update


def issuer_name_der(ca: IssuingCA) -> bytes:
    """The CA's subject exactly as encoded in its certificate (RFC 5280 §7.1 compares names byte-wise in practice)."""
    cert = asn1_x509.Certificate.load(ca.cert.public_bytes(serialization.Encoding.DER))
    encoded: bytes = cert["tbs_certificate"]["subject"].dump()
    return encoded


_OCTET: Final = [bytes((n,)) for n in range(128)]


def encode_entries(entries: Iterable[RevokedEntry]) -> tuple[bytes, int]:
    """The revokedCertificates contents (without the outer SEQUENCE header) and the number of entries.

    The hot loop of a big CRL, about 2 µs an entry: bytes concatenation only (no tuples, so the cyclic
    garbage collector is not woken once per entry), revocation dates (which repeat after bulk
    revocations) encoded once. Each entry is shorter than 128 octets (serial at most 33, time 15,
    reason 14), so its lengths are single octets.
    """
    times: dict[datetime, bytes] = {}
    reasons = _REASON_EXTENSIONS
    octet = _OCTET
    parts: list[bytes] = []
    append = parts.append
    for serial, revoked_at, reason_code in entries:
        when = times.get(revoked_at)
        if when is None:
            when = times[revoked_at] = _entry_time(revoked_at)
        if serial < 0 or serial.bit_length() > 8 * 32:
            raise ValueError(f"serial {serial:x} cannot be listed on a CRL")
        octets = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
        body = b"\x02" + octet[len(octets)] + octets + when + reasons[reason_code]
        append(b"\x30" + octet[len(body)] + body)
    return b"".join(parts), len(parts)


def _entry_time(moment: datetime) -> bytes:
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    if 1950 <= moment.year < 2050:
        return b"\x17\x0d%02d%02d%02d%02d%02d%02dZ" % (
            moment.year % 100, moment.month, moment.day, moment.hour, moment.minute, moment.second)
    return der.x509_time(moment)


def crl_extensions(ca: IssuingCA, number: int) -> bytes:
    """[0] EXPLICIT Extensions: AKI, cRLNumber, and the critical issuingDistributionPoint when the CA has a CRL URL."""
    extensions = [
        der.extension(_ID_CE_AKI, der.sequence(der.tlv(0x80, ca.ski.digest))),
        der.extension(_ID_CE_CRL_NUMBER, der.integer(number)),
    ]
    if ca.urls.crl:
        # IssuingDistributionPoint { distributionPoint [0] { fullName [0] { uniformResourceIdentifier [6] } } }
        full_name = der.explicit(0, der.tlv(0x86, ca.urls.crl.encode("ascii")))
        extensions.append(der.extension(_ID_CE_IDP, der.sequence(der.explicit(0, full_name)), critical=True))
    return der.explicit(0, der.sequence(*extensions))


def tbs_cert_list(ca: IssuingCA, entries: Iterable[RevokedEntry], *, number: int, this_update: datetime,
                  next_update: datetime) -> tuple[bytes, int]:
    """TBSCertList (RFC 5280 §5.1) and its entry count."""
    if number < 0:
        raise ValueError("a CRL number is never negative")
    body, count = encode_entries(entries)
    revoked = der.tlv(0x30, body) if count else b""  # §5.1.2.6: absent, not empty, when nothing is revoked
    tbs = der.sequence(
        der.integer(1),  # v2
        der.signature_algorithm(ca.signer.key_spec),
        issuer_name_der(ca),
        der.x509_time(this_update),
        der.x509_time(next_update),
        revoked,
        crl_extensions(ca, number),
    )
    return tbs, count


def build_crl(ca: IssuingCA, entries: Iterable[RevokedEntry], *, number: int, this_update: datetime,
              next_update: datetime) -> SignedCRL:
    this_update = this_update.replace(microsecond=0)
    next_update = next_update.replace(microsecond=0)
    if next_update <= this_update:
        raise ValueError("a CRL's nextUpdate must come after its thisUpdate")
    if _spki(ca.signer.public_key()) != _spki(ca.cert.public_key()):
        raise SignerError(f"signer '{ca.signer.ref}' does not hold the key of CA '{ca.id}'")
    # A million entries allocate millions of objects while the caller holds as many: without the pause,
    # the collector's full passes over them cost a third of the time. Nothing here makes cycles.
    collecting = gc.isenabled()
    gc.disable()
    try:
        tbs, count = tbs_cert_list(ca, entries, number=number, this_update=this_update, next_update=next_update)
    finally:
        if collecting:
            gc.enable()
    signature = der.sign_tbs(ca.signer, tbs)
    return SignedCRL(der=der.signed(tbs, ca.signer, signature), number=number, this_update=this_update,
                     next_update=next_update, entries=count)


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
