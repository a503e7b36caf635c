"""The PKCS#11 signer driver against a real SoftHSM2 token (Debian `softhsm2`, installed by .ci/system-deps.sh).

Each test session gets its own token directory and SOFTHSM2_CONF. SoftHSM reads that file when the
module is first loaded in the process, so the fixture sets it before anything loads the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11err

from certctl.pki.signers import Signer, SignerError
from certctl.pki.signers.factory import build_signer_registry
from certctl.pki.signers.pkcs11 import Pkcs11Driver, format_ref, parse_ref
from tests.test_signers import assert_openssl_accepts, build_pki

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")  # where Debian's libsofthsm2 puts it
SPECS = ["ECDSA-P256", "ECDSA-P384", "RSA-2048", "RSA-3072", "RSA-4096", "Ed25519"]
PIN = "8642-user"
SO_PIN = "9753-so"
OTHER_PIN = "1111-other"


@dataclass(frozen=True)
class Hsm:
    label: str
    other_label: str  # a second token nobody in this process logs in to (for wrong-PIN tests)
    conf: Path


@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hsm]:
    assert MODULE.is_file(), f"{MODULE} is missing: install Debian softhsm2 (.ci/system-deps.sh)"
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    hsm = Hsm("certctl-test", "certctl-other", conf)
    for label, pin in ((hsm.label, PIN), (hsm.other_label, OTHER_PIN)):
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", SO_PIN],
            env=env, check=True, capture_output=True, timeout=30,
        )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    yield hsm
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture(scope="session")
def driver(hsm: Hsm) -> Pkcs11Driver:
    driver = Pkcs11Driver(MODULE, hsm.label, PIN)
    driver.check()
    return driver


@pytest.fixture(scope="session")
def keys(driver: Pkcs11Driver) -> dict[str, Signer]:
    """One key of every spec, generated on the token once per session (RSA-4096 takes about a second)."""
    return {spec: driver.generate(spec, f"ca-{spec}") for spec in SPECS}


def _verify(signer: Signer, signature: bytes, data: bytes) -> None:
    public_key = signer.public_key()
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(signature, data)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        digest = hashes.SHA384() if signer.key_spec == "ECDSA-P384" else hashes.SHA256()
        public_key.verify(signature, data, ec.ECDSA(digest))
    else:
        assert isinstance(public_key, rsa.RSAPublicKey)
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("spec", SPECS)
def test_generated_key_has_a_stable_parseable_ref(keys: dict[str, Signer], hsm: Hsm, spec: str) -> None:
    signer = keys[spec]
    assert signer.key_spec == spec
    assert signer.software_key() is None
    assert signer.ref.startswith(f"pkcs11:token={hsm.label};object=ca-{spec};id=%")
    token, label, key_id = parse_ref(signer.ref)
    assert (token, label) == (hsm.label, f"ca-{spec}") and key_id is not None and len(key_id) == 16
    assert format_ref(token, f"ca-{spec}", key_id) == signer.ref


@pytest.mark.parametrize("spec", SPECS)
def test_signatures_are_shaped_for_x509(keys: dict[str, Signer], spec: str) -> None:
    signer = keys[spec]
    data = b"to-be-signed bytes " * 40
    signature = signer.sign(data)
    _verify(signer, signature, data)
    if spec.startswith("ECDSA"):
        r, s = decode_dss_signature(signature)  # DER Ecdsa-Sig-Value, not PKCS#11's raw r||s
        assert r > 0 and s > 0
    if spec.startswith("RSA"):
        assert len(signature) * 8 == int(spec.split("-")[1])


@pytest.mark.parametrize("spec", SPECS)
def test_hsm_key_signs_certificates_crls_and_ocsp_accepted_by_openssl(
    keys: dict[str, Signer], spec: str, tmp_path: Path
) -> None:
    ca_signer = keys[spec]
    responder = keys["ECDSA-P256"] if spec != "ECDSA-P256" else keys["Ed25519"]
    pki = build_pki(ca_signer, tmp_path, responder_signer=responder)
    assert pki.crl.is_signature_valid(ca_signer.public_key())
    pki.leaf.verify_directly_issued_by(pki.ca)
    assert_openssl_accepts(pki)


@pytest.mark.parametrize("spec", SPECS)
def test_key_loads_again_by_ref_in_a_new_driver(keys: dict[str, Signer], hsm: Hsm, spec: str) -> None:
    again = Pkcs11Driver(str(MODULE), hsm.label, PIN).load(keys[spec].ref)
    assert again.ref == keys[spec].ref and again.key_spec == spec
    assert again.public_key() == keys[spec].public_key()
    _verify(keys[spec], again.sign(b"signed by the reloaded key"), b"signed by the reloaded key")
    # By label alone the ref still resolves, to the canonical ref with the id.
    by_label = Pkcs11Driver(MODULE, hsm.label, PIN).load(f"pkcs11:token={hsm.label};object=ca-{spec}")
    assert by_label.ref == keys[spec].ref


def test_keys_load_and_sign_in_a_fresh_process(keys: dict[str, Signer], hsm: Hsm, tmp_path: Path) -> None:
    """A process that never saw the keys logs in on its own (PIN file) and finds every key by its ref."""
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    script = (
        "import json, sys; from pathlib import Path\n"
        "from certctl.pki.signers.factory import build_signer_registry\n"
        "registry = build_signer_registry(data_dir=Path(sys.argv[1]), env={'CERTCTL_SIGNER_DRIVER': 'pkcs11',"
        f" 'CERTCTL_PKCS11_MODULE': {str(MODULE)!r}, 'CERTCTL_PKCS11_TOKEN_LABEL': {hsm.label!r},"
        f" 'CERTCTL_PKCS11_PIN_FILE': {str(pin_file)!r}}})\n"
        "print(json.dumps({ref: registry.load(ref).sign(b'fresh').hex() for ref in sys.argv[2:]}))\n"
    )
    refs = [keys[spec].ref for spec in SPECS]
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), *refs],
        env={**os.environ, "SOFTHSM2_CONF": str(hsm.conf)}, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    signatures = json.loads(result.stdout)
    for spec in SPECS:
        _verify(keys[spec], bytes.fromhex(signatures[keys[spec].ref]), b"fresh")


@pytest.mark.parametrize("spec", SPECS)
def test_private_key_is_sensitive_and_never_extractable(
    keys: dict[str, Signer], driver: Pkcs11Driver, hsm: Hsm, spec: str
) -> None:
    _token, _label, key_id = parse_ref(keys[spec].ref)
    token = pkcs11.lib(driver.module_path).get_token(token_label=hsm.label)
    # The driver's session is logged in, and PKCS#11 login state is per process, so this session sees
    # the private objects too: the checks below are the token refusing, not a missing login.
    with token.open() as session:
        (private,) = session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id})
        assert private[Attribute.TOKEN] is True and private[Attribute.PRIVATE] is True
        assert private[Attribute.SENSITIVE] is True and private[Attribute.ALWAYS_SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False and private[Attribute.NEVER_EXTRACTABLE] is True
        # Only allowed to sign: no decrypting, unwrapping or deriving with a CA key.
        assert private[Attribute.SIGN] is True
        assert not any(private[a] for a in (Attribute.DECRYPT, Attribute.UNWRAP, Attribute.DERIVE))
        secret = Attribute.PRIVATE_EXPONENT if private.key_type == KeyType.RSA else Attribute.VALUE
        with pytest.raises(p11err.AttributeSensitive):
            private[secret]
        with pytest.raises(p11err.PKCS11Error):  # CKA_EXTRACTABLE false: the token refuses to change it back
            private[Attribute.EXTRACTABLE] = True
        assert private[Attribute.EXTRACTABLE] is False


def test_same_label_is_not_generated_twice(driver: Pkcs11Driver, keys: dict[str, Signer]) -> None:
    with pytest.raises(SignerError, match="already has a private key labelled 'ca-ECDSA-P256'"):
        driver.generate("ECDSA-P256", "ca-ECDSA-P256")
    with pytest.raises(SignerError, match="printable"):
        driver.generate("ECDSA-P256", "bad\nlabel")


def test_refs_that_do_not_name_a_key_on_this_token_are_refused(driver: Pkcs11Driver, hsm: Hsm) -> None:
    with pytest.raises(SignerError, match="configured token"):
        driver.load(f"pkcs11:token={hsm.other_label};object=ca-ECDSA-P256")
    with pytest.raises(SignerError, match="query attributes"):
        driver.load(f"pkcs11:token={hsm.label};object=ca-ECDSA-P256?pin-value={PIN}")
    with pytest.raises(SignerError, match="no private key"):
        driver.load(format_ref(hsm.label, "ghost", b"\x00" * 16))
    with pytest.raises(SignerError, match="matches 0 private keys"):
        driver.load(f"pkcs11:token={hsm.label};object=ghost")
    with pytest.raises(SignerError, match="names no key"):
        driver.load(f"pkcs11:token={hsm.label}")


def test_wrong_pin_is_refused_and_never_shown(hsm: Hsm, driver: Pkcs11Driver) -> None:
    wrong = "0000-wrong-pin"
    fresh = Pkcs11Driver(MODULE, hsm.other_label, wrong)
    with pytest.raises(SignerError, match="PIN is incorrect") as caught:
        fresh.check()
    # A second driver on the token this process is logged in to must not ride on that login.
    with pytest.raises(SignerError, match="PIN is incorrect") as caught_logged_in:
        Pkcs11Driver(MODULE, hsm.label, wrong).check()
    for text in (str(caught.value), str(caught_logged_in.value), repr(fresh), repr(driver), repr(fresh._pin)):
        assert wrong not in text and PIN not in text
    assert Pkcs11Driver(MODULE, hsm.other_label, OTHER_PIN).check() is None


def test_session_is_reopened_after_a_token_error(driver: Pkcs11Driver, keys: dict[str, Signer]) -> None:
    signer = keys["ECDSA-P256"]
    _verify(signer, signer.sign(b"before"), b"before")
    old = driver._conn._session
    assert old is not None
    old.close()  # the session dies behind the driver's back, as on a token reset
    _verify(signer, signer.sign(b"after"), b"after")
    assert driver._conn._session is not None and driver._conn._session is not old


def test_concurrent_signing_is_serialised_safely(keys: dict[str, Signer]) -> None:
    signers = [keys["ECDSA-P256"], keys["RSA-2048"], keys["Ed25519"]]
    barrier = threading.Barrier(6)

    def work(index: int) -> int:
        barrier.wait()
        for n in range(20):
            signer = signers[(index + n) % len(signers)]
            data = f"thread {index} message {n}".encode()
            _verify(signer, signer.sign(data), data)
        return index

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert sorted(pool.map(work, range(6))) == list(range(6))


def test_missing_mechanism_is_a_clear_error(driver: Pkcs11Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    mechanisms = driver._conn.mechanisms(driver._pin)
    assert Mechanism.EDDSA in mechanisms  # SoftHSM 2.6 has Ed25519; a token without it gets the error below
    monkeypatch.setattr(driver._conn, "_mechanisms", mechanisms - {Mechanism.EDDSA})
    with pytest.raises(SignerError, match=r"does not support Ed25519 keys \(missing CKM_EDDSA\)"):
        driver.generate("Ed25519", "no-eddsa")


def test_factory_builds_the_pkcs11_default(hsm: Hsm, tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    env = {"CERTCTL_SIGNER_DRIVER": "pkcs11", "CERTCTL_PKCS11_MODULE": str(MODULE),
           "CERTCTL_PKCS11_TOKEN_LABEL": hsm.label, "CERTCTL_PKCS11_PIN_FILE": str(pin_file)}
    registry = build_signer_registry(data_dir=tmp_path, env=env)
    assert registry.default_scheme == "pkcs11"
    signer = registry.generate("ECDSA-P384", "factory-made")
    assert signer.ref.startswith(f"pkcs11:token={hsm.label};object=factory-made;id=")
    # The file driver stays available for file: refs.
    file_signer = registry.generate("ECDSA-P256", "still-a-file", scheme="file")
    assert file_signer.ref == "file:still-a-file.key" and (tmp_path / "keys" / "still-a-file.key").is_file()
    # File default with a module configured: pkcs11 refs still load.
    mixed = build_signer_registry(data_dir=tmp_path, env={**env, "CERTCTL_SIGNER_DRIVER": "file"})
    assert mixed.default_scheme == "file" and mixed.load(signer.ref).public_key() == signer.public_key()


@pytest.mark.parametrize(
    ("override", "variable"),
    [
        ({"CERTCTL_PKCS11_TOKEN_LABEL": "no-such-token"}, "CERTCTL_PKCS11_TOKEN_LABEL"),
        ({"CERTCTL_PKCS11_TOKEN_LABEL": ""}, "CERTCTL_PKCS11_TOKEN_LABEL"),
        ({"CERTCTL_PKCS11_PIN": ""}, "CERTCTL_PKCS11_PIN"),
        ({"CERTCTL_PKCS11_PIN_FILE": "/nonexistent/pin"}, "CERTCTL_PKCS11_PIN"),
        ({"CERTCTL_PKCS11_MODULE": "/nonexistent/lib.so"}, "CERTCTL_PKCS11_MODULE"),
        ({"CERTCTL_PKCS11_PIN": "5555-wrong", "CERTCTL_PKCS11_TOKEN_LABEL": "certctl-other"}, "CERTCTL_PKCS11_PIN"),
    ],
)
def test_factory_names_the_bad_pkcs11_variable(
    hsm: Hsm, tmp_path: Path, override: dict[str, str], variable: str
) -> None:
    env = {"CERTCTL_SIGNER_DRIVER": "pkcs11", "CERTCTL_PKCS11_MODULE": str(MODULE),
           "CERTCTL_PKCS11_TOKEN_LABEL": hsm.label, "CERTCTL_PKCS11_PIN": PIN, **override}
    if "CERTCTL_PKCS11_PIN_FILE" in override:
        env.pop("CERTCTL_PKCS11_PIN")
    with pytest.raises(SignerError) as caught:
        build_signer_registry(data_dir=tmp_path, env=env)
    message = str(caught.value)
    assert message.startswith(variable), message
    assert PIN not in message and "5555-wrong" not in message
