"""OCSP engine: requests of any shape in, signed BasicOCSPResponses out, read by `cryptography` and `openssl ocsp`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from certctl.pki import der
from certctl.pki import ocsp as engine
from certctl.pki.signers import SoftwareSigner, generate_private_key
from tests.pki_helpers import openssl
from tests.status_helpers import TokenLikeSigner, leaf, memory_ca, write_pem


def _responder(ca: engine.IssuingCA, *, token: bool = False, now: datetime | None = None) -> engine.Responder:
    key = SoftwareSigner("mem:responder", generate_private_key("ECDSA-P256"))
    cert = engine.build_responder_certificate(ca, key.public_key(), now or datetime.now(UTC))
    return engine.Responder(cert, TokenLikeSigner(key) if token else key)


def _request(*pairs: tuple[x509.Certificate, x509.Certificate], algorithm: hashes.HashAlgorithm = hashes.SHA1(),
             nonce: bytes | None = None) -> bytes:
    """A DER request; several CertIDs are written by hand (cryptography builds single-CertID requests only)."""
    ids = []
    for cert, issuer in pairs:
        single = x509_ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()
        ids.append(asn1_ocsp.OCSPRequest.load(single.public_bytes(serialization.Encoding.DER))
                   ["tbs_request"]["request_list"][0]["req_cert"].dump())
    extensions = b""
    if nonce is not None:
        nonce_ext = der.extension(der.oid("1.3.6.1.5.5.7.48.1.2"), der.octet_string(nonce))
        extensions = der.explicit(2, der.sequence(nonce_ext))
    request_list = der.sequence(*(der.sequence(i) for i in ids))
    return der.sequence(der.sequence(request_list, extensions))


def _singles(info: engine.OCSPRequestInfo, status: engine.Status, now: datetime,
             **kwargs: object) -> list[engine.SingleResponse]:
    return [engine.SingleResponse(c.der, status, now, now + timedelta(hours=1), **kwargs)  # type: ignore[arg-type]
            for c in info.cert_ids]


def test_a_request_from_cryptography_is_read_and_matched_under_sha1_and_sha256() -> None:
    ca = memory_ca()
    other = memory_ca(ca_id="ica-other", name="Other CA")
    cert = leaf(ca, 0x00FF12)
    for algorithm in (hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        request = x509_ocsp.OCSPRequestBuilder().add_certificate(cert, ca.cert, algorithm).build()
        info = engine.parse_request(request.public_bytes(serialization.Encoding.DER))
        [cert_id] = info.cert_ids
        assert cert_id.serial == 0xFF12 and cert_id.hash_algorithm == algorithm.name
        assert engine.IssuerHashes.of(ca.cert).matches(cert_id)
        assert not engine.IssuerHashes.of(other.cert).matches(cert_id)
        assert info.nonce_extension is None


def test_several_cert_ids_each_get_an_answer_with_the_nonce_in_response_extensions() -> None:
    ca = memory_ca()
    other = memory_ca(ca_id="ica-other", name="Other CA")
    good, revoked, foreign = leaf(ca, 0x0ABC), leaf(ca, 0x80), leaf(other, 0x0ABC)
    nonce = bytes(range(16))
    info = engine.parse_request(_request((good, ca.cert), (revoked, ca.cert), (foreign, other.cert), nonce=nonce))
    assert [c.serial for c in info.cert_ids] == [0x0ABC, 0x80, 0x0ABC]
    assert info.nonce_extension is not None
    hashes_ = engine.IssuerHashes.of(ca.cert)
    assert [hashes_.matches(c) for c in info.cert_ids] == [True, True, False]
    now = datetime.now(UTC).replace(microsecond=0)
    revoked_at = now - timedelta(hours=2)
    singles = [
        engine.SingleResponse(info.cert_ids[0].der, "good", now, now + timedelta(hours=1)),
        engine.SingleResponse(info.cert_ids[1].der, "revoked", now, now + timedelta(hours=1), revoked_at, 1),
        engine.SingleResponse(info.cert_ids[2].der, "unknown", now, now + timedelta(hours=1)),
    ]
    responder = _responder(ca)
    response = x509_ocsp.load_der_ocsp_response(
        engine.build_response(responder, singles, produced_at=now, nonce_extension=info.nonce_extension))
    assert response.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    statuses = [(r.serial_number, r.certificate_status) for r in response.responses]
    assert statuses == [(0x0ABC, x509_ocsp.OCSPCertStatus.GOOD), (0x80, x509_ocsp.OCSPCertStatus.REVOKED),
                        (0x0ABC, x509_ocsp.OCSPCertStatus.UNKNOWN)]
    second = list(response.responses)[1]
    assert second.revocation_time_utc == revoked_at and second.revocation_reason == x509.ReasonFlags.key_compromise
    assert second.this_update_utc == now and second.next_update_utc == now + timedelta(hours=1)
    # RFC 6960 §4.4.1: the nonce is a response extension, echoed unchanged; no single extensions.
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    basic = asn1_ocsp.OCSPResponse.load(response.public_bytes(serialization.Encoding.DER)).basic_ocsp_response
    assert all(not single["single_extensions"] for single in basic["tbs_response_data"]["responses"])
    # responderID by key hash; the responder certificate travels with the answer and signed it.
    assert response.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(
        responder.cert.public_key()).digest  # type: ignore[arg-type]
    assert response.certificates == [responder.cert]
    responder.cert.public_key().verify(  # type: ignore[union-attr, call-arg]
        response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))  # type: ignore[arg-type]
    assert response.produced_at_utc == now


@pytest.mark.parametrize("nonce", [b"", bytes(33)])
def test_a_nonce_of_zero_or_more_than_32_octets_is_malformed(nonce: bytes) -> None:
    ca = memory_ca()
    with pytest.raises(engine.MalformedRequestError, match="nonce"):
        engine.parse_request(_request((leaf(ca, 5), ca.cert), nonce=nonce))
    engine.parse_request(_request((leaf(ca, 5), ca.cert), nonce=bytes(32)))  # 32 is fine
    engine.parse_request(_request((leaf(ca, 5), ca.cert), nonce=b"x"))  # so is 1 (RFC 8954 §2.1)


def test_a_nonce_that_is_not_an_octet_string_is_malformed() -> None:
    ca = memory_ca()
    cert_id = asn1_ocsp.OCSPRequest.load(_request((leaf(ca, 5), ca.cert)))["tbs_request"]["request_list"][0].dump()
    bare = der.explicit(2, der.sequence(der.extension(der.oid("1.3.6.1.5.5.7.48.1.2"), b"0123456789abcdef")))
    with pytest.raises(engine.MalformedRequestError):
        engine.parse_request(der.sequence(der.sequence(der.sequence(cert_id), bare)))


@pytest.mark.parametrize("data", [
    b"", b"\x30\x00", b"not der at all", b"\x30\x03\x30\x01\x00",
    der.sequence(der.sequence(der.sequence())),  # an empty request list
])
def test_garbage_is_malformed(data: bytes) -> None:
    with pytest.raises(engine.MalformedRequestError):
        engine.parse_request(data)


def test_unknown_critical_extensions_are_malformed_and_too_many_cert_ids_too() -> None:
    ca = memory_ca()
    cert_id = asn1_ocsp.OCSPRequest.load(_request((leaf(ca, 5), ca.cert)))["tbs_request"]["request_list"][0].dump()
    critical = der.explicit(2, der.sequence(der.extension(der.oid("1.2.3.4"), b"\x05\x00", critical=True)))
    with pytest.raises(engine.MalformedRequestError, match="critical"):
        engine.parse_request(der.sequence(der.sequence(der.sequence(cert_id), critical)))
    harmless = der.explicit(2, der.sequence(der.extension(der.oid("1.2.3.4"), b"\x05\x00")))
    assert len(engine.parse_request(der.sequence(der.sequence(der.sequence(cert_id), harmless))).cert_ids) == 1
    many = der.sequence(der.sequence(der.sequence(*([cert_id] * (engine.MAX_CERT_IDS + 1)))))
    with pytest.raises(engine.MalformedRequestError, match="CertIDs"):
        engine.parse_request(many)


def test_unsuccessful_answers_are_bare_statuses() -> None:
    for data, status in ((engine.MALFORMED_REQUEST, x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST),
                         (engine.INTERNAL_ERROR, x509_ocsp.OCSPResponseStatus.INTERNAL_ERROR),
                         (engine.TRY_LATER, x509_ocsp.OCSPResponseStatus.TRY_LATER),
                         (engine.UNAUTHORIZED, x509_ocsp.OCSPResponseStatus.UNAUTHORIZED)):
        assert x509_ocsp.load_der_ocsp_response(data).response_status == status


def test_responder_certificate_profile(tmp_path: Path) -> None:
    ca = memory_ca()
    now = datetime.now(UTC).replace(microsecond=0)
    responder = _responder(ca, now=now)
    cert = responder.cert
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.OCSP_SIGNING])
    assert ext.get_extension_for_class(x509.OCSPNoCheck).value == x509.OCSPNoCheck()
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.not_valid_before_utc == now - timedelta(minutes=5)
    assert cert.not_valid_after_utc == now + timedelta(days=30)
    assert cert.issuer == ca.cert.subject
    assert engine.responder_fits(responder, ca)
    assert not engine.responder_fits(responder, memory_ca(ca_id="ica-x", name="Another"))
    assert responder.valid_at(now) and not responder.valid_at(now, grace=timedelta(days=30))
    write_pem(tmp_path / "ca.pem", ca.cert)
    write_pem(tmp_path / "responder.pem", cert)
    result = openssl("verify", "-CAfile", str(tmp_path / "ca.pem"), "-purpose", "ocsphelper",
                     str(tmp_path / "responder.pem"), check=False)
    assert "responder.pem: OK" in result.stdout, result.stdout + result.stderr
    text = openssl("x509", "-in", str(tmp_path / "responder.pem"), "-noout", "-text").stdout
    assert "OCSP No Check" in text and "OCSP Signing" in text


def test_responder_never_outlives_its_ca() -> None:
    ca = memory_ca()
    late = ca.cert.not_valid_after_utc - timedelta(days=3)
    responder = _responder(ca, now=late)
    assert responder.cert.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_openssl_verifies_our_response_offline(tmp_path: Path) -> None:
    ca = memory_ca()
    cert = leaf(ca, 0x0ABC)
    info = engine.parse_request(_request((cert, ca.cert), nonce=b"n" * 20))
    now = datetime.now(UTC).replace(microsecond=0)
    response = engine.build_response(_responder(ca, token=True), _singles(info, "revoked", now, revoked_at=now,
                                                                          reason_code=5),
                                     produced_at=now, nonce_extension=info.nonce_extension)
    (tmp_path / "resp.der").write_bytes(response)
    write_pem(tmp_path / "ca.pem", ca.cert)
    write_pem(tmp_path / "leaf.pem", cert)
    result = openssl("ocsp", "-respin", str(tmp_path / "resp.der"), "-issuer", str(tmp_path / "ca.pem"), "-cert",
                     str(tmp_path / "leaf.pem"), "-CAfile", str(tmp_path / "ca.pem"), "-no_nonce")
    output = result.stdout + result.stderr
    assert "Response verify OK" in output and "leaf.pem: revoked" in output, output
    assert "Reason: cessationOfOperation" in output
    text = openssl("ocsp", "-respin", str(tmp_path / "resp.der"), "-resp_text", "-noverify").stdout
    assert "Response Extensions:" in text and "OCSP Nonce" in text


def test_the_serial_debug_form_builds_a_sha1_cert_id_like_openssl() -> None:
    ca = memory_ca()
    cert = leaf(ca, 0x00FF12)
    theirs = x509_ocsp.OCSPRequestBuilder().add_certificate(cert, ca.cert, hashes.SHA1()).build()
    ours = engine.parse_request(engine.single_request(engine.IssuerHashes.of(ca.cert).sha1_cert_id(0xFF12)))
    assert ours.cert_ids[0].der == engine.parse_request(
        theirs.public_bytes(serialization.Encoding.DER)).cert_ids[0].der
