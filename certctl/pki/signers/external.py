"""Sign certificates, CRLs and OCSP responses with a key that stays outside the process (a PKCS#11 token).

`cryptography`'s builders only sign with an in-process key. So the structure is first built and
signed with a throwaway software key of the same algorithm, which makes the signatureAlgorithm
fields (inside and outside the to-be-signed part) what the real key needs; then the to-be-signed
bytes are signed by the real signer and the signature is spliced in with asn1crypto, which keeps
every untouched element's original encoding. The result is parsed again and verified with the
signer's public key before it is returned, so a token that signs with the wrong key, or a faulty
splice, is an error here and never a published certificate.
"""

from __future__ import annotations

import threading
from typing import Any

from asn1crypto import crl as asn1_crl
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import ocsp

from certctl.pki.signers.base import Signer, SignerError, generate_private_key, hash_for

_throwaway_lock = threading.Lock()
_throwaway_keys: dict[str, CertificateIssuerPrivateKeyTypes] = {}


def _throwaway_key(spec: str) -> CertificateIssuerPrivateKeyTypes:
    """A process-wide scratch key per algorithm; its signatures are always replaced, so reusing it is safe.

    Every RSA size uses one RSA-2048 key: sha256WithRSAEncryption does not depend on the modulus size, and
    generating a 4096-bit scratch key would cost seconds for nothing.
    """
    family = "RSA-2048" if spec.startswith("RSA") else spec
    with _throwaway_lock:
        key = _throwaway_keys.get(family)
        if key is None:
            key = generate_private_key(family)
            _throwaway_keys[family] = key
        return key


def sign_raw(signer: Signer, tbs: bytes) -> bytes:
    """The signer's signature over to-be-signed bytes; any driver failure becomes a SignerError."""
    try:
        return signer.sign(tbs)
    except SignerError:
        raise
    except Exception as exc:  # a driver bug or token failure must surface as a signer error, not a 500 with details
        raise SignerError(f"signer '{signer.ref}' failed to sign: {type(exc).__name__}") from exc


def verify_signature(
    signer: Signer, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None, what: str
) -> None:
    """Check `signature` over `data` with the signer's public key, as a relying party would."""
    public_key = signer.public_key()
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and algorithm is not None:
            public_key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey) and algorithm is not None:
            public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
        else:
            raise SignerError(f"signer '{signer.ref}' has a {type(public_key).__name__}, which cannot sign a {what}")
    except InvalidSignature:
        raise SignerError(
            f"the {what} signature from signer '{signer.ref}' does not verify with its public key"
        ) from None


def sign_certificate_externally(builder: x509.CertificateBuilder, signer: Signer) -> x509.Certificate:
    digest = hash_for(signer.key_spec)
    draft = builder.sign(_throwaway_key(signer.key_spec), digest)
    tbs = draft.tbs_certificate_bytes
    signature = sign_raw(signer, tbs)
    # RFC 5280 §4.1: Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }.
    structure = asn1_x509.Certificate.load(draft.public_bytes(serialization.Encoding.DER))
    structure["signature_value"] = signature
    certificate = x509.load_der_x509_certificate(structure.dump())
    _check_spliced(signer, certificate.tbs_certificate_bytes, tbs, certificate.signature, signature, "certificate")
    verify_signature(signer, certificate.signature, certificate.tbs_certificate_bytes,
                     certificate.signature_hash_algorithm, "certificate")
    return certificate


def sign_crl_externally(
    builder: x509.CertificateRevocationListBuilder, signer: Signer
) -> x509.CertificateRevocationList:
    digest = hash_for(signer.key_spec)
    draft = builder.sign(_throwaway_key(signer.key_spec), digest)
    tbs = draft.tbs_certlist_bytes
    signature = sign_raw(signer, tbs)
    # RFC 5280 §5.1: CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue BIT STRING }.
    structure = asn1_crl.CertificateList.load(draft.public_bytes(serialization.Encoding.DER))
    structure["signature"] = signature
    crl = x509.load_der_x509_crl(structure.dump())
    _check_spliced(signer, crl.tbs_certlist_bytes, tbs, crl.signature, signature, "CRL")
    verify_signature(signer, crl.signature, crl.tbs_certlist_bytes, crl.signature_hash_algorithm, "CRL")
    return crl


def sign_ocsp_externally(builder: ocsp.OCSPResponseBuilder, signer: Signer) -> ocsp.OCSPResponse:
    """Sign a basic OCSP response (RFC 6960 §4.2.1); the builder's certificates (the responder's) are kept.

    `cryptography` refuses to sign unless the key matches the responder certificate, so the draft is made
    with a stand-in responder certificate: same subject, the throwaway key. With a by-name responder ID the
    draft is already right; a by-key ID is then replaced with the SHA-1 hash of the real responder key.
    """
    # The builder keeps its parts in private attributes; they have been stable since cryptography 2.4 and a
    # change shows up here as a clear error (and in tests), not as a wrong response.
    responder = getattr(builder, "_responder_id", None)
    response = getattr(builder, "_response", None)
    if responder is None or response is None:
        raise SignerError("the OCSP response needs a single response and a responder ID before it is signed")
    responder_cert, encoding = responder
    if not isinstance(responder_cert, x509.Certificate):
        raise SignerError("this version of cryptography keeps the OCSP responder differently; cannot sign externally")
    _check_responder_key(signer, responder_cert)
    key = _throwaway_key(signer.key_spec)
    digest = hash_for(signer.key_spec)
    stand_in = _stand_in_certificate(responder_cert, key)
    draft_builder = ocsp.OCSPResponseBuilder(
        response, (stand_in, encoding), getattr(builder, "_certs", None), list(getattr(builder, "_extensions", []))
    )
    draft = draft_builder.sign(key, digest)

    structure = asn1_ocsp.OCSPResponse.load(draft.public_bytes(serialization.Encoding.DER))
    basic: Any = structure["response_bytes"]["response"].parsed
    tbs_data = basic["tbs_response_data"]
    if encoding is ocsp.OCSPResponderEncoding.HASH:
        # RFC 6960 §4.2.1: KeyHash is the SHA-1 of the subjectPublicKey BIT STRING value.
        real_key_info = asn1_x509.Certificate.load(responder_cert.public_bytes(serialization.Encoding.DER)).public_key
        tbs_data["responder_id"] = asn1_ocsp.ResponderId(name="by_key", value=real_key_info.sha1)
    tbs = tbs_data.dump()
    signature = sign_raw(signer, tbs)
    basic["signature"] = signature
    # ParsableOctetString: set the new BasicOCSPResponse as the parsed value and its DER as the octets.
    structure["response_bytes"]["response"] = asn1_ocsp.BasicOCSPResponse.load(basic.dump())
    result = ocsp.load_der_ocsp_response(structure.dump())

    _check_spliced(signer, result.tbs_response_bytes, tbs, result.signature, signature, "OCSP response")
    verify_signature(signer, result.signature, result.tbs_response_bytes, result.signature_hash_algorithm,
                     "OCSP response")
    if [c.public_bytes(serialization.Encoding.DER) for c in result.certificates] != [
        c.public_bytes(serialization.Encoding.DER) for c in draft.certificates
    ]:
        raise SignerError("the OCSP response lost its certificates while being signed")
    return result


def _check_responder_key(signer: Signer, responder_cert: x509.Certificate) -> None:
    """Same rule as `cryptography`'s fast path: the responder certificate must carry the signing key."""
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if responder_cert.public_key().public_bytes(der, spki) != signer.public_key().public_bytes(der, spki):
        raise SignerError(f"the OCSP responder certificate does not carry the public key of signer '{signer.ref}'")


def _stand_in_certificate(real: x509.Certificate, key: CertificateIssuerPrivateKeyTypes) -> x509.Certificate:
    # Only its subject and public key are read (responder ID and the key check); it is never emitted.
    builder = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(real.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(real.not_valid_before_utc)
        .not_valid_after(real.not_valid_after_utc)
    )
    return builder.sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())


def _check_spliced(signer: Signer, parsed_tbs: bytes, tbs: bytes, parsed_sig: bytes, sig: bytes, what: str) -> None:
    if parsed_tbs != tbs or parsed_sig != sig:
        raise SignerError(f"the {what} from signer '{signer.ref}' was not reassembled byte for byte")
