"""Just enough DER (ITU-T X.690) to write CRLs and OCSP responses fast.

`cryptography` builds a CRL through an immutable builder that copies its list of entries on every
`add_revoked_certificate`: 100,000 entries took about 30 s. The CRL and OCSP writers therefore
assemble the to-be-signed DER themselves from these helpers and sign it through the `Signer`
(so hardware keys work the same way). Tests check the bytes against `cryptography` and openssl.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from certctl.pki.signers import Signer, SignerError, hash_for
from certctl.pki.signers.external import sign_raw, verify_signature


def length(n: int) -> bytes:
    """X.690 §8.1.3: short form below 128, else long form with the fewest octets."""
    if n < 0x80:
        return bytes((n,))
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + length(len(content)) + content


def sequence(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def integer(value: int) -> bytes:
    """A non-negative INTEGER (X.690 §8.3): minimal octets, a leading zero when the top bit is set."""
    if value < 0:
        raise ValueError("only non-negative integers are encoded here")
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def enumerated(value: int) -> bytes:
    return tlv(0x0A, integer(value)[2:])


def octet_string(value: bytes) -> bytes:
    return tlv(0x04, value)


def bit_string(value: bytes) -> bytes:
    return tlv(0x03, b"\x00" + value)  # whole octets: no unused bits


def explicit(number: int, content: bytes) -> bytes:
    """A context-specific constructed tag [number] around `content`."""
    return tlv(0xA0 | number, content)


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray((arcs[0] * 40 + arcs[1],))
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return tlv(0x06, bytes(body))


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def generalized_time(moment: datetime) -> bytes:
    """GeneralizedTime in UTC, whole seconds (RFC 5280 §4.1.2.5.2; RFC 6960 uses it for every time)."""
    return tlv(0x18, _utc(moment).strftime("%Y%m%d%H%M%SZ").encode())


def x509_time(moment: datetime) -> bytes:
    """RFC 5280 §5.1.2.4: UTCTime through 2049, GeneralizedTime from 2050 on."""
    moment = _utc(moment)
    if 1950 <= moment.year < 2050:
        return tlv(0x17, moment.strftime("%y%m%d%H%M%SZ").encode())
    return generalized_time(moment)


def extension(extn_id: bytes, value: bytes, *, critical: bool = False) -> bytes:
    """Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING } (RFC 5280 §4.1)."""
    return sequence(extn_id, b"\x01\x01\xff" if critical else b"", octet_string(value))


# AlgorithmIdentifier of the signature each key spec makes (RFC 5758 §3.2: no parameters for ECDSA;
# RFC 4055: NULL parameters for RSA; RFC 8410: none for Ed25519). Same bytes as `cryptography` writes.
SIGNATURE_ALGORITHMS: Final[dict[str, bytes]] = {
    "ECDSA-P256": sequence(oid("1.2.840.10045.4.3.2")),  # ecdsa-with-SHA256
    "ECDSA-P384": sequence(oid("1.2.840.10045.4.3.3")),  # ecdsa-with-SHA384
    "RSA": sequence(oid("1.2.840.113549.1.1.11"), b"\x05\x00"),  # sha256WithRSAEncryption
    "Ed25519": sequence(oid("1.3.101.112")),
}


def signature_algorithm(key_spec: str) -> bytes:
    found = SIGNATURE_ALGORITHMS.get("RSA" if key_spec.startswith("RSA") else key_spec)
    if found is None:
        raise SignerError(f"no signature algorithm for key spec '{key_spec}'")
    return found


def read_tlv(data: bytes, offset: int = 0) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the element at `offset`; ValueError when truncated."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[offset]
    first = data[offset + 1]
    start = offset + 2
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise ValueError("bad DER length")
        size = int.from_bytes(data[start:start + count], "big")
        start += count
    end = start + size
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, start, end


def sign_tbs(signer: Signer, tbs: bytes) -> bytes:
    """Sign to-be-signed DER with the signer and check the signature with its public key.

    The check costs one verification (tens of microseconds, plus hashing the TBS again) and catches a
    token that signs with another key before anything is published.
    """
    signature = sign_raw(signer, tbs)
    verify_signature(signer, signature, tbs, hash_for(signer.key_spec), "structure")
    return signature


def signed(tbs: bytes, signer: Signer, signature: bytes) -> bytes:
    """SEQUENCE { tbs, signatureAlgorithm, signatureValue BIT STRING }: Certificate, CertificateList, Basic OCSP."""
    return sequence(tbs, signature_algorithm(signer.key_spec), bit_string(signature))
