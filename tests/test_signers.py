"""Signer drivers: the file driver, the registry factory, and signing through a key the builders cannot hold.

The external path (certctl.pki.signers.external) is what a PKCS#11 key uses. Here it runs with an
`OpaqueSigner`, a real software key that hides itself from `cryptography`, so every structure is
built by the throwaway-key-and-splice route; openssl then checks the results as a relying party would.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certctl.pki.signers import Signer, SignerError, SignerRegistry, SoftwareSigner, generate_private_key, key_spec_of
from certctl.pki.signers.factory import build_signer_registry
from certctl.pki.signers.file import FileDriver
from certctl.pki.signing import sign_certificate, sign_crl, sign_ocsp_response

SPECS = ["ECDSA-P256", "ECDSA-P384", "RSA-2048", "Ed25519"]
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


class OpaqueSigner(Signer):
    """A software key that `certctl.pki.signing` cannot hand to a builder (software_key() is None)."""

    def __init__(self, spec: str, *, signing_key: SoftwareSigner | None = None) -> None:
        self._inner = SoftwareSigner("test:opaque", generate_private_key(spec))
        # `signing_key` makes a broken signer: it claims one public key and signs with another.
        self._signing = signing_key or self._inner
        super().__init__("test:opaque", self._inner.key_spec)

    def public_key(self) -> CertificatePublicKeyTypes:
        return self._inner.public_key()

    def sign(self, data: bytes) -> bytes:
        return self._signing.sign(data)


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=30, check=False)


@dataclass
class Pki:
    ca: x509.Certificate
    leaf: x509.Certificate
    crl: x509.CertificateRevocationList
    ocsp_by_ca: ocsp.OCSPResponse
    responder: x509.Certificate | None
    ocsp_by_responder: ocsp.OCSPResponse | None
    files: dict[str, Path]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )


def build_pki(ca_signer: Signer, directory: Path, *, responder_signer: Signer | None = None) -> Pki:
    """A CA, a leaf it revoked, its CRL and OCSP answers, all signed through certctl.pki.signing."""
    now = datetime.now(UTC).replace(microsecond=0)
    ca_name = _name(f"Signer Test CA {ca_signer.key_spec}")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_signer.public_key())
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    ca_cert = sign_certificate(
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_signer.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(ca_ski, critical=False),
        ca_signer,
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = sign_certificate(
        x509.CertificateBuilder().subject_name(_name("leaf.example")).issuer_name(ca_name)
        .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=12))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("leaf.example")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(aki, critical=False),
        ca_signer,
    )
    revoked_at = now - timedelta(minutes=1)
    crl = sign_crl(
        x509.CertificateRevocationListBuilder().issuer_name(ca_name)
        .last_update(revoked_at).next_update(now + timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(leaf.serial_number).revocation_date(revoked_at)
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False).build()
        )
        .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
        .add_extension(aki, critical=False),
        ca_signer,
    )

    def ocsp_builder() -> ocsp.OCSPResponseBuilder:
        return ocsp.OCSPResponseBuilder().add_response(
            cert=leaf, issuer=ca_cert, algorithm=hashes.SHA1(), cert_status=ocsp.OCSPCertStatus.REVOKED,
            this_update=revoked_at, next_update=now + timedelta(hours=1), revocation_time=revoked_at,
            revocation_reason=x509.ReasonFlags.key_compromise,
        )

    by_ca = sign_ocsp_response(
        ocsp_builder().responder_id(ocsp.OCSPResponderEncoding.NAME, ca_cert).certificates([ca_cert]), ca_signer
    )
    responder = by_responder = None
    if responder_signer is not None:
        responder = sign_certificate(
            x509.CertificateBuilder().subject_name(_name("Signer Test OCSP responder")).issuer_name(ca_name)
            .public_key(responder_signer.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=12))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
            .add_extension(x509.OCSPNoCheck(), critical=False)
            .add_extension(_usage(ca=False), critical=True)
            .add_extension(aki, critical=False),
            ca_signer,
        )
        by_responder = sign_ocsp_response(
            ocsp_builder().responder_id(ocsp.OCSPResponderEncoding.HASH, responder).certificates([responder]),
            responder_signer,
        )
    files = {"ca": directory / "ca.pem", "leaf": directory / "leaf.pem", "crl": directory / "crl.pem",
             "ocsp_by_ca": directory / "ocsp-ca.der", "ocsp_by_responder": directory / "ocsp-responder.der"}
    files["ca"].write_bytes(ca_cert.public_bytes(PEM))
    files["leaf"].write_bytes(leaf.public_bytes(PEM))
    files["crl"].write_bytes(crl.public_bytes(PEM))
    files["ocsp_by_ca"].write_bytes(by_ca.public_bytes(DER))
    if by_responder is not None:
        files["ocsp_by_responder"].write_bytes(by_responder.public_bytes(DER))
    return Pki(ca_cert, leaf, crl, by_ca, responder, by_responder, files)


def assert_openssl_accepts(pki: Pki) -> None:
    """openssl as the relying party: chain, CRL signature, revocation through the CRL, OCSP signature."""
    files = pki.files
    result = openssl("verify", "-CAfile", files["ca"], files["ca"], files["leaf"])
    assert result.returncode == 0 and result.stdout.count(": OK") == 2, result.stdout + result.stderr
    result = openssl("crl", "-in", files["crl"], "-CAfile", files["ca"], "-noout")
    assert result.returncode == 0 and "verify OK" in result.stderr, result.stderr
    # The CRL is signed right and lists the leaf: openssl must now refuse the leaf as revoked.
    result = openssl("verify", "-crl_check", "-CRLfile", files["crl"], "-CAfile", files["ca"], files["leaf"])
    assert result.returncode != 0 and "certificate revoked" in result.stdout + result.stderr, result.stdout
    which = ["ocsp_by_ca"] + (["ocsp_by_responder"] if pki.ocsp_by_responder is not None else [])
    for name in which:
        result = openssl("ocsp", "-respin", files[name], "-issuer", files["ca"], "-cert", files["leaf"],
                         "-CAfile", files["ca"], "-no_nonce")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Response verify OK" in result.stderr, (name, result.stderr)
        assert f"{files['leaf']}: revoked" in result.stdout and "keyCompromise" in result.stdout, result.stdout


# ---------------------------------------------------------------- external signing path


@pytest.mark.parametrize("spec", SPECS)
def test_external_path_output_verifies_with_openssl(spec: str, tmp_path: Path) -> None:
    ca_signer = OpaqueSigner(spec)
    responder_signer = OpaqueSigner(spec)
    pki = build_pki(ca_signer, tmp_path, responder_signer=responder_signer)

    pki.leaf.verify_directly_issued_by(pki.ca)
    pki.ca.verify_directly_issued_by(pki.ca)
    assert pki.crl.is_signature_valid(ca_signer.public_key())
    expected_hash = {"ECDSA-P384": hashes.SHA384, "Ed25519": type(None)}.get(spec, hashes.SHA256)
    assert isinstance(pki.leaf.signature_hash_algorithm, expected_hash)
    # The responder's certificate travels in its response; the CA's own answer names the CA.
    assert pki.ocsp_by_responder is not None and pki.responder is not None
    assert pki.ocsp_by_responder.certificates == [pki.responder]
    assert pki.ocsp_by_responder.responder_key_hash == _key_hash(pki.responder)
    assert pki.ocsp_by_ca.certificates == [pki.ca] and pki.ocsp_by_ca.responder_name == pki.ca.subject
    assert_openssl_accepts(pki)


def _key_hash(cert: x509.Certificate) -> bytes:
    # RFC 6960 §4.2.1 byKey is the same SHA-1 as a CertID's issuerKeyHash for that certificate as issuer.
    return ocsp.OCSPRequestBuilder().add_certificate(cert, cert, hashes.SHA1()).build().issuer_key_hash


@pytest.mark.parametrize("spec", ["RSA-2048", "Ed25519"])
def test_external_path_is_byte_identical_to_the_builder_for_deterministic_keys(spec: str) -> None:
    """RSA PKCS#1 v1.5 and Ed25519 signatures are deterministic, so splicing must reproduce the fast path."""
    key = generate_private_key(spec)
    fast, external = SoftwareSigner("test:fast", key), OpaqueSigner(spec)
    external._inner = external._signing = fast
    now = datetime(2030, 1, 1, tzinfo=UTC)
    name = _name("Deterministic CA")
    cert_builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(fast.public_key())
        .serial_number(42).not_valid_before(now).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    cert = sign_certificate(cert_builder, fast)
    assert sign_certificate(cert_builder, external).public_bytes(DER) == cert.public_bytes(DER)
    crl_builder = (
        x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now).next_update(now + timedelta(1))
        .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(7).revocation_date(now).build())
    )
    assert sign_crl(crl_builder, external).public_bytes(DER) == sign_crl(crl_builder, fast).public_bytes(DER)
    for encoding in ocsp.OCSPResponderEncoding:
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response(cert=cert, issuer=cert, algorithm=hashes.SHA1(), cert_status=ocsp.OCSPCertStatus.GOOD,
                          this_update=now, next_update=now, revocation_time=None, revocation_reason=None)
            .responder_id(encoding, cert).certificates([cert])
            .add_extension(x509.OCSPNonce(b"0123456789abcdef"), critical=False)
        )
        for _ in range(3):  # producedAt is the signing second; retry if the two signings straddle one
            by_fast, by_external = sign_ocsp_response(builder, fast), sign_ocsp_response(builder, external)
            if by_fast.produced_at_utc == by_external.produced_at_utc:
                break
        assert by_external.public_bytes(DER) == by_fast.public_bytes(DER), encoding


def test_external_path_refuses_a_signature_from_the_wrong_key() -> None:
    impostor = OpaqueSigner("ECDSA-P256", signing_key=SoftwareSigner("x", generate_private_key("ECDSA-P256")))
    now = datetime.now(UTC)
    name = _name("Impostor")
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
    )
    with pytest.raises(SignerError, match="does not verify"):
        sign_certificate(builder.public_key(impostor.public_key()), impostor)
    with pytest.raises(SignerError, match="does not verify"):
        sign_crl(x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now)
                 .next_update(now + timedelta(days=1)), impostor)
    good = OpaqueSigner("ECDSA-P256")
    cert = sign_certificate(builder.public_key(good.public_key()), good)
    ocsp_builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(cert=cert, issuer=cert, algorithm=hashes.SHA1(), cert_status=ocsp.OCSPCertStatus.GOOD,
                      this_update=now, next_update=None, revocation_time=None, revocation_reason=None)
        .responder_id(ocsp.OCSPResponderEncoding.HASH, cert)
    )
    # Same rule as the fast path: the responder certificate must carry the signing key.
    with pytest.raises(SignerError, match="does not carry the public key"):
        sign_ocsp_response(ocsp_builder, impostor)
    impostor._inner = good._inner
    with pytest.raises(SignerError, match="does not verify"):
        sign_ocsp_response(ocsp_builder, impostor)


# ---------------------------------------------------------------- file driver


def test_file_driver_writes_0600_keys_in_a_0700_directory(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o755)
    os.chmod(key_dir, 0o755)
    driver = FileDriver(key_dir)
    signer = driver.generate("ECDSA-P384", "Root CA 2030")
    assert signer.ref == "file:Root-CA-2030.key"
    path = key_dir / "Root-CA-2030.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = FileDriver(key_dir).load(signer.ref)
    assert loaded.key_spec == "ECDSA-P384" and loaded.public_key() == signer.public_key()
    assert key_spec_of(loaded.public_key()) == "ECDSA-P384"
    # A label cannot walk out of the directory.
    escaped = driver.generate("Ed25519", "../../etc/evil")
    assert escaped.ref == "file:etc-evil.key" and (key_dir / "etc-evil.key").is_file()


def test_file_driver_passphrase_round_trip_and_wrong_passphrase(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    signer = FileDriver(key_dir, passphrase="correct horse").generate("RSA-2048", "ca")
    pem = (key_dir / "ca.key").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert FileDriver(key_dir, passphrase="correct horse").load(signer.ref).public_key() == signer.public_key()
    body = b"".join(pem.splitlines()[1:3]).decode()
    for driver in (FileDriver(key_dir, passphrase="wrong horse"), FileDriver(key_dir)):
        with pytest.raises(SignerError) as caught:
            driver.load(signer.ref)
        message = str(caught.value)
        assert "wrong passphrase" in message
        assert body[:16] not in message and "horse" not in message and "PRIVATE KEY" not in message


@pytest.mark.parametrize(
    "ref", ["file:../outside.key", "file:sub/../../outside.key", "file:", "file:/etc/passwd", "pkcs11:token=x"]
)
def test_file_driver_refuses_refs_outside_its_directory(tmp_path: Path, ref: str) -> None:
    outside = tmp_path / "outside.key"
    outside.write_bytes(generate_private_key("ECDSA-P256").private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    driver = FileDriver(tmp_path / "keys")
    with pytest.raises(SignerError):
        driver.load(ref)


def test_file_driver_loads_the_operators_own_absolute_key_file(tmp_path: Path) -> None:
    key = generate_private_key("ECDSA-P256")
    operator_key = tmp_path / "ca.key"
    # The operator's file may be SEC1 ("EC PRIVATE KEY"), not PKCS#8.
    operator_key.write_bytes(key.private_bytes(
        PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    driver = FileDriver(tmp_path / "keys", allowed_files=[operator_key])
    assert driver.load(f"file:{operator_key}").public_key() == key.public_key()
    with pytest.raises(SignerError, match="outside the key directory"):
        FileDriver(tmp_path / "keys").load(f"file:{operator_key}")


def test_file_driver_never_overwrites_a_key(tmp_path: Path) -> None:
    driver = FileDriver(tmp_path / "keys")
    first = driver.generate("ECDSA-P256", "root")
    before = (tmp_path / "keys" / "root.key").read_bytes()
    with pytest.raises(SignerError, match="already exists"):
        driver.generate("ECDSA-P256", "root")
    assert (tmp_path / "keys" / "root.key").read_bytes() == before
    assert driver.load(first.ref).public_key() == first.public_key()


def test_file_key_signs_through_the_fast_path(tmp_path: Path) -> None:
    signer = FileDriver(tmp_path / "keys").generate("ECDSA-P256", "ca")
    assert signer.software_key() is not None
    assert_openssl_accepts(build_pki(signer, tmp_path))


# ---------------------------------------------------------------- registry and factory


def test_registry_routes_by_scheme_and_keeps_loaded_signers(tmp_path: Path) -> None:
    registry = SignerRegistry([FileDriver(tmp_path / "keys")])
    signer = registry.generate("p-256", "ca")
    assert signer.key_spec == "ECDSA-P256"
    assert registry.load(signer.ref) is signer
    with pytest.raises(SignerError, match="not configured"):
        registry.load("pkcs11:token=x;id=%01")
    with pytest.raises(SignerError, match="unsupported key algorithm"):
        registry.generate("DSA-1024", "nope")


def test_factory_defaults_to_the_file_driver_under_the_data_dir(tmp_path: Path) -> None:
    registry = build_signer_registry(data_dir=tmp_path, env={})
    assert registry.default_scheme == "file"
    signer = registry.generate("ECDSA-P256", "ca")
    assert (tmp_path / "keys" / "ca.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert signer.ref == "file:ca.key"


def test_factory_encrypts_with_the_passphrase_and_allows_operator_files(tmp_path: Path) -> None:
    operator_key = tmp_path / "operator.key"
    operator_key.write_bytes(generate_private_key("RSA-2048").private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    env = {"CERTCTL_SIGNER_DRIVER": "file", "CERTCTL_CA_KEY_PASSPHRASE": "s3cret"}
    registry = build_signer_registry(data_dir=tmp_path, env=env, allowed_files=[operator_key])
    registry.generate("Ed25519", "ca")
    assert (tmp_path / "keys" / "ca.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert build_signer_registry(data_dir=tmp_path, env=env).load("file:ca.key").key_spec == "Ed25519"
    assert registry.load(f"file:{operator_key}").key_spec == "RSA-2048"
    with pytest.raises(SignerError):
        build_signer_registry(data_dir=tmp_path, env={}).load("file:ca.key")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CERTCTL_SIGNER_DRIVER": "vault"}, "CERTCTL_SIGNER_DRIVER"),
        ({"CERTCTL_SIGNER_DRIVER": "pkcs11"}, "CERTCTL_PKCS11_MODULE"),
        ({"CERTCTL_PKCS11_MODULE": "/nonexistent/libpkcs11.so"}, "CERTCTL_PKCS11_MODULE"),
    ],
)
def test_factory_names_the_bad_variable(tmp_path: Path, env: dict[str, str], variable: str) -> None:
    with pytest.raises(SignerError) as caught:
        build_signer_registry(data_dir=tmp_path, env=env)
    assert variable in str(caught.value)
