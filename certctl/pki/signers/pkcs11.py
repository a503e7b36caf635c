"""PKCS#11 signer driver: CA keys generated on and used inside a token (an HSM, or SoftHSM2 for tests).

References are RFC 7512 PKCS#11 URIs naming the token and the key: `pkcs11:token=<label>;object=<label>;id=<hex>`
(values percent-encoded). The key is found by its CKA_ID, which `generate` draws at random, so a ref keeps
pointing at the same key even when labels repeat. The PIN never appears in a ref, a repr, a log line or an error.

Keys are generated non-extractable and sensitive (PKCS#11 v2.40 §4.9: CKA_EXTRACTABLE false, CKA_SENSITIVE
true), so the token never hands the private key out. Signatures are shaped as X.509 wants them:

- ECDSA: the data is hashed here (SHA-256, SHA-384 for P-384) and signed with CKM_ECDSA, which every token
  that does ECDSA supports; the raw r||s it returns is DER-encoded as Ecdsa-Sig-Value (RFC 5480 §2.2.3).
- RSA: CKM_SHA256_RSA_PKCS (PKCS#1 v1.5 with SHA-256), whatever the modulus size.
- Ed25519: CKM_EDDSA without parameters (pure Ed25519, RFC 8410), when the token has it.

One logged-in session per (module, token) is shared by every driver in the process, since the PKCS#11
login state belongs to the process anyway; a lock serialises its use (a session is not thread-safe), and
after a token error the session is reopened and the operation retried once.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import pkcs11
from asn1crypto import core as asn1_core
from asn1crypto import keys as asn1_keys
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11err

from certctl.pki.signers.base import Signer, SignerDriver, SignerError, key_spec_of, normalize_key_spec

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as _Library

_T = TypeVar("_T")

# Errors after which the session (or the token behind it) is gone and a fresh session may work.
_SESSION_ERRORS: Final = (
    p11err.SessionHandleInvalid, p11err.SessionClosed, p11err.SessionCount, p11err.DeviceRemoved,
    p11err.DeviceError, p11err.DeviceMemory, p11err.TokenNotPresent, p11err.TokenNotRecognised,
    p11err.UserNotLoggedIn, p11err.ObjectHandleInvalid, p11err.KeyHandleInvalid, p11err.GeneralError,
    p11err.FunctionFailed, p11err.OperationActive,
)

_CURVES: Final = {"ECDSA-P256": ("secp256r1", ec.SECP256R1()), "ECDSA-P384": ("secp384r1", ec.SECP384R1())}
_ED25519_OID: Final = "1.3.101.112"  # id-Ed25519 (RFC 8410); PKCS#11 3.0 allows it as CKA_EC_PARAMS
_MAX_LABEL: Final = 64


class Pkcs11ModuleError(SignerError):
    """The module cannot be loaded or lists no tokens."""


class Pkcs11TokenNotFound(SignerError):
    """No token, or more than one, has the configured label."""


class Pkcs11LoginError(SignerError):
    """The user PIN was refused (wrong, locked, expired, not set)."""


class _Pin:
    """Holds the PIN so that no repr, traceback with locals or f-string shows it by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def matches(self, other: _Pin) -> bool:
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __repr__(self) -> str:
        return "<PIN hidden>"

    __str__ = __repr__


_libs_lock = threading.Lock()
_libs: dict[str, _Library] = {}


def _library(module: str) -> _Library:
    """One loaded module per path for the whole process: dropping a `pkcs11.lib` calls C_Finalize, which would
    close every other session on that module."""
    with _libs_lock:
        lib = _libs.get(module)
        if lib is None:
            try:
                lib = pkcs11.lib(module)
            except p11err.PKCS11Error as exc:
                raise Pkcs11ModuleError(f"PKCS#11 module '{module}' cannot be loaded: {type(exc).__name__}") from exc
            _libs[module] = lib
        return lib


class _Connection:
    """The logged-in session on one token, shared by the drivers and signers of this process."""

    def __init__(self, module: str, token_label: str) -> None:
        self.module = module
        self.token_label = token_label
        self.lock = threading.RLock()
        self._session: pkcs11.Session | None = None
        self._pin: _Pin | None = None  # the PIN the current login used
        self._keys: dict[bytes, Any] = {}  # CKA_ID -> private key object of the current session
        self._mechanisms: frozenset[Any] | None = None

    def run(self, pin: _Pin, operation: Callable[[pkcs11.Session], _T]) -> _T:
        with self.lock:
            for attempt in (1, 2):
                session = self._open(pin)
                try:
                    return operation(session)
                except _SESSION_ERRORS as exc:
                    self._drop()
                    if attempt == 2:
                        raise SignerError(
                            f"PKCS#11 token '{self.token_label}' failed twice ({type(exc).__name__}); "
                            "it stays unusable until it answers again"
                        ) from exc
            raise AssertionError("unreachable")

    def private_key(self, session: pkcs11.Session, key_id: bytes, ref: str) -> Any:
        key = self._keys.get(key_id)
        if key is None:
            key = _find_one(session, ObjectClass.PRIVATE_KEY, key_id, ref)
            self._keys[key_id] = key
        return key

    def mechanisms(self, pin: _Pin) -> frozenset[Any]:
        if self._mechanisms is None:
            self._mechanisms = frozenset(self.run(pin, lambda s: s.token.slot.get_mechanisms()))
        return self._mechanisms

    def _open(self, pin: _Pin) -> pkcs11.Session:
        if self._session is not None:
            if self._pin is None or not pin.matches(self._pin):
                # Already logged in with another PIN: do not let a wrong PIN ride on that login.
                raise Pkcs11LoginError(f"PKCS#11 login to token '{self.token_label}' failed: the PIN is incorrect")
            return self._session
        lib = _library(self.module)
        token_name = self.token_label
        try:
            token = lib.get_token(token_label=self.token_label)
        except p11err.NoSuchToken:
            raise Pkcs11TokenNotFound(f"no PKCS#11 token labelled '{token_name}' in module '{self.module}'") from None
        except p11err.MultipleTokensReturned:
            raise Pkcs11TokenNotFound(f"more than one PKCS#11 token is labelled '{self.token_label}'") from None
        except p11err.PKCS11Error as exc:
            raise Pkcs11ModuleError(f"PKCS#11 module '{self.module}' lists no tokens: {type(exc).__name__}") from exc
        try:
            self._session = token.open(rw=True, user_pin=pin.reveal())
        except (p11err.PinIncorrect, p11err.PinInvalid, p11err.PinLenRange):
            raise Pkcs11LoginError(f"PKCS#11 login to token '{token_name}' failed: the PIN is incorrect") from None
        except (p11err.PinLocked, p11err.PinExpired) as exc:
            raise Pkcs11LoginError(f"PKCS#11 login to token '{token_name}' failed: {type(exc).__name__}") from None
        except p11err.UserPinNotInitialized:
            raise Pkcs11LoginError(f"PKCS#11 token '{self.token_label}' has no user PIN set (initialise it)") from None
        except p11err.PKCS11Error as exc:
            raise SignerError(f"cannot open a session on token '{self.token_label}': {type(exc).__name__}") from None
        self._pin = pin
        return self._session

    def _drop(self) -> None:
        session, self._session, self._pin = self._session, None, None
        self._keys.clear()
        if session is not None:
            with contextlib.suppress(p11err.PKCS11Error):  # already gone, which is why it is being dropped
                session.close()

    def close(self) -> None:
        with self.lock:
            self._drop()


_connections_lock = threading.Lock()
_connections: dict[tuple[str, str], _Connection] = {}


def _connection(module: str, token_label: str) -> _Connection:
    with _connections_lock:
        key = (module, token_label)
        conn = _connections.get(key)
        if conn is None:
            conn = _connections[key] = _Connection(module, token_label)
        return conn


def _find_one(session: pkcs11.Session, object_class: ObjectClass, key_id: bytes, ref: str) -> Any:
    found = list(session.get_objects({Attribute.CLASS: object_class, Attribute.ID: key_id}))
    if not found:
        kind = "private" if object_class == ObjectClass.PRIVATE_KEY else "public"
        raise SignerError(f"key '{ref}' has no {kind} key on the token")
    if len(found) > 1:
        raise SignerError(f"key '{ref}' matches {len(found)} objects on the token; ids must be unique")
    return found[0]


def format_ref(token_label: str, key_label: str, key_id: bytes) -> str:
    """RFC 7512 §2.3 URI: path attributes `token`, `object` and `id`, percent-encoded."""
    id_part = "".join(f"%{b:02x}" for b in key_id)
    token, obj = urllib.parse.quote(token_label, safe=""), urllib.parse.quote(key_label, safe="")
    return f"pkcs11:token={token};object={obj};id={id_part}"


def parse_ref(ref: str) -> tuple[str, str | None, bytes | None]:
    """`(token label, key label or None, CKA_ID or None)`; query attributes (pin-value etc.) are refused."""
    if not ref.startswith("pkcs11:"):
        raise SignerError(f"'{ref}' is not a PKCS#11 key reference")
    body = ref[len("pkcs11:"):]
    if "?" in body:
        raise SignerError("PKCS#11 key references must not carry query attributes (a PIN never goes into a ref)")
    values: dict[str, bytes] = {}
    for part in filter(None, body.split(";")):
        name, sep, value = part.partition("=")
        if not sep or name in values:
            raise SignerError(f"PKCS#11 key reference '{ref}' is malformed at '{part}'")
        values[name] = urllib.parse.unquote_to_bytes(value)
    token = values.get("token")
    if not token:
        raise SignerError(f"PKCS#11 key reference '{ref}' names no token")
    label = values["object"].decode("utf-8", "replace") if "object" in values else None
    key_id = values.get("id") or None
    if label is None and key_id is None:
        raise SignerError(f"PKCS#11 key reference '{ref}' names no key (object or id)")
    return token.decode("utf-8", "replace"), label, key_id


def _public_key(obj: Any) -> CertificatePublicKeyTypes:
    key_type = obj[Attribute.KEY_TYPE]
    if key_type == KeyType.RSA:
        modulus = int.from_bytes(obj[Attribute.MODULUS], "big")
        exponent = int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    if key_type in (KeyType.EC, KeyType.EC_EDWARDS):
        params = bytes(obj[Attribute.EC_PARAMS])
        point = _unwrap_point(bytes(obj[Attribute.EC_POINT]))
        if key_type == KeyType.EC_EDWARDS:
            if len(point) != 32:
                raise SignerError("the token's EdDSA key is not an Ed25519 key")
            return ed25519.Ed25519PublicKey.from_public_bytes(point)
        curve_name = asn1_keys.ECDomainParameters.load(params).chosen.native
        for name, curve in _CURVES.values():
            if curve_name == name:
                return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        raise SignerError(f"the token's EC key is on curve {curve_name}, not P-256 or P-384")
    raise SignerError(f"the token's key type {key_type!r} cannot sign certificates")


def _unwrap_point(value: bytes) -> bytes:
    # CKA_EC_POINT is DER OCTET STRING per PKCS#11 v2.40, but some tokens hand out the raw point.
    try:
        inner = asn1_core.OctetString.load(value, strict=True)
    except ValueError:
        return value
    return bytes(inner.native)


class Pkcs11Signer(Signer):
    def __init__(self, driver: Pkcs11Driver, ref: str, key_id: bytes, public_key: CertificatePublicKeyTypes) -> None:
        super().__init__(ref, key_spec_of(public_key))
        self._driver = driver
        self._key_id = key_id
        self._public_key = public_key

    def public_key(self) -> CertificatePublicKeyTypes:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        spec = self.key_spec
        conn = self._driver._conn

        def operation(session: pkcs11.Session) -> bytes:
            key = conn.private_key(session, self._key_id, self.ref)
            if spec == "Ed25519":
                return bytes(key.sign(data, mechanism=Mechanism.EDDSA))
            if spec.startswith("RSA"):
                return bytes(key.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS))
            digest = (hashlib.sha384 if spec == "ECDSA-P384" else hashlib.sha256)(data).digest()
            raw = bytes(key.sign(digest, mechanism=Mechanism.ECDSA))
            half = len(raw) // 2  # PKCS#11 v2.40 §2.3.1: r and s, each as long as the order
            return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

        try:
            return self._driver._run(operation)
        except p11err.PKCS11Error as exc:
            raise SignerError(f"key '{self.ref}' failed to sign: {type(exc).__name__}") from exc


class Pkcs11Driver(SignerDriver):
    scheme = "pkcs11"

    def __init__(self, module_path: str | Path, token_label: str, pin: str) -> None:
        module = Path(module_path)
        if not module.is_file():
            raise SignerError(f"PKCS#11 module '{module}' does not exist or is not a file")
        if not token_label:
            raise SignerError("a PKCS#11 token label is required")
        if not pin:
            raise SignerError("a PKCS#11 user PIN is required")
        self.module_path = str(module.resolve())
        self.token_label = token_label
        self._pin = _Pin(pin)
        self._conn = _connection(self.module_path, token_label)

    def __repr__(self) -> str:
        return f"Pkcs11Driver(module_path={self.module_path!r}, token_label={self.token_label!r})"

    def check(self) -> None:
        """Load the module, find the token and log in now (at startup) instead of at the first signature."""
        self._run(lambda session: None)

    def close(self) -> None:
        """Close the shared session (all drivers on this token reopen it on next use)."""
        self._conn.close()

    def load(self, ref: str) -> Signer:
        token_label, label, key_id = parse_ref(ref)
        if token_label != self.token_label:
            raise SignerError(f"key '{ref}' is on token '{token_label}', but the configured token is "
                              f"'{self.token_label}'")

        def operation(session: pkcs11.Session) -> tuple[bytes, CertificatePublicKeyTypes]:
            found_id = key_id if key_id is not None else self._id_by_label(session, label or "", ref)
            private = _find_one(session, ObjectClass.PRIVATE_KEY, found_id, ref)
            if not private[Attribute.SIGN]:
                raise SignerError(f"key '{ref}' is not allowed to sign (CKA_SIGN is false)")
            public = _find_one(session, ObjectClass.PUBLIC_KEY, found_id, ref)
            return found_id, _public_key(public)

        found_id, public_key = self._run(operation)
        canonical = ref if key_id is not None else format_ref(self.token_label, label or "", found_id)
        return Pkcs11Signer(self, canonical, found_id, public_key)

    def generate(self, key_spec: str, label: str) -> Signer:
        spec = normalize_key_spec(key_spec)
        label = label.strip()
        if not label or len(label) > _MAX_LABEL or not label.isprintable():
            raise SignerError(f"a PKCS#11 key label must be 1 to {_MAX_LABEL} printable characters")
        key_type, length, ec_params = self._key_parameters(spec)
        key_id = os.urandom(16)

        def operation(session: pkcs11.Session) -> CertificatePublicKeyTypes:
            if list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label})):
                raise SignerError(f"token '{self.token_label}' already has a private key labelled '{label}'")
            public_template: dict[Attribute, Any] = {Attribute.TOKEN: True, Attribute.PRIVATE: False}
            if ec_params is not None:
                public_template[Attribute.EC_PARAMS] = ec_params
            public, _private = session.generate_keypair(
                key_type, length, id=key_id, label=label, store=True,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template=public_template,
                # Never leaves the token, not even wrapped; readable only after login.
                private_template={
                    Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                },
            )
            return _public_key(public)

        try:
            public_key = self._run(operation)
        except p11err.PKCS11Error as exc:
            raise SignerError(f"token '{self.token_label}' cannot generate a {spec} key: {type(exc).__name__}") from exc
        if key_spec_of(public_key) != spec:
            raise SignerError(f"token '{self.token_label}' generated a {key_spec_of(public_key)} key for {spec}")
        return Pkcs11Signer(self, format_ref(self.token_label, label, key_id), key_id, public_key)

    def _key_parameters(self, spec: str) -> tuple[KeyType, int | None, bytes | None]:
        if spec == "Ed25519":
            needed = {Mechanism.EC_EDWARDS_KEY_PAIR_GEN, Mechanism.EDDSA}
            self._require(needed, "Ed25519")
            return KeyType.EC_EDWARDS, None, asn1_core.ObjectIdentifier(_ED25519_OID).dump()
        if spec.startswith("ECDSA"):
            self._require({Mechanism.EC_KEY_PAIR_GEN, Mechanism.ECDSA}, spec)
            name = _CURVES[spec][0]
            return KeyType.EC, None, asn1_keys.ECDomainParameters(name="named", value=name).dump()
        self._require({Mechanism.RSA_PKCS_KEY_PAIR_GEN, Mechanism.SHA256_RSA_PKCS}, spec)
        return KeyType.RSA, int(spec.split("-")[1]), None

    def _require(self, needed: set[Mechanism], spec: str) -> None:
        missing = needed - self._conn.mechanisms(self._pin)
        if missing:
            names = ", ".join(sorted(f"CKM_{m.name}" for m in missing))
            raise SignerError(f"token '{self.token_label}' does not support {spec} keys (missing {names})")

    def _id_by_label(self, session: pkcs11.Session, label: str, ref: str) -> bytes:
        found = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}))
        if len(found) != 1:
            raise SignerError(f"key '{ref}' matches {len(found)} private keys on the token; add its id")
        return bytes(found[0][Attribute.ID])

    def _run(self, operation: Callable[[pkcs11.Session], _T]) -> _T:
        return self._conn.run(self._pin, operation)
