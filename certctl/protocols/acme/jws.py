"""JWS as RFC 8555 §6.2 wants it: flattened JSON, one signature, protected `alg`/`nonce`/`url`, `kid` XOR `jwk`.

Keys (RSA, EC P-256/P-384, Ed25519) are built and signatures (RS256, ES256, ES384, EdDSA per RFC 8037) verified
with `cryptography` directly; RFC 7638 thumbprints are the SHA-256 of the required members in sorted compact JSON.
(josepy did the same for RSA and EC with more Python around each call: every ACME request verifies a signature.)
`none` and the HMAC algorithms are refused before anything else is looked at (RFC 8555 §6.2: "MUST NOT be none",
"MUST NOT be a MAC-based algorithm").

Parsed keys are cached by their JWK text: parsing an RSA JWK costs more than verifying with it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from certctl.domain.acme import AcmeProblem

# The algorithms this server accepts, each with the key type it needs.
ALGORITHMS = ("ES256", "ES384", "RS256", "EdDSA")
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1"}
_EC_HASHES = {"ES256": hashes.SHA256, "ES384": hashes.SHA384}
_JWK_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {"P-256": (ec.SECP256R1(), 32), "P-384": (ec.SECP384R1(), 48)}
MIN_RSA_BITS = 2048

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def b64d(text: str | bytes) -> bytes:
    """base64url without padding (RFC 7515 §2); padding or other alphabets are refused."""
    raw = text.encode() if isinstance(text, str) else text
    if b"=" in raw or b"+" in raw or b"/" in raw:
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def malformed(detail: str, status: int = 400) -> AcmeProblem:
    return AcmeProblem("malformed", detail, status)


def bad_algorithm(alg: str) -> AcmeProblem:
    problem = AcmeProblem("badSignatureAlgorithm", f"JWS algorithm '{alg}' is not accepted")
    problem.extra = {"algorithms": list(ALGORITHMS)}  # RFC 8555 §6.2: the problem lists what is accepted
    return problem


@dataclass(frozen=True)
class Jws:
    protected: dict[str, Any]
    signing_input: bytes
    payload: bytes  # decoded; b"" for POST-as-GET
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.protected["alg"])

    @property
    def url(self) -> str:
        return str(self.protected.get("url", ""))

    @property
    def nonce(self) -> str | None:
        value = self.protected.get("nonce")
        return value if isinstance(value, str) else None

    @property
    def kid(self) -> str | None:
        value = self.protected.get("kid")
        return value if isinstance(value, str) else None

    @property
    def jwk(self) -> dict[str, Any] | None:
        value = self.protected.get("jwk")
        return value if isinstance(value, dict) else None

    @property
    def post_as_get(self) -> bool:
        return self.payload == b""

    def json_payload(self) -> dict[str, Any]:
        """The payload as a JSON object; `{}` for POST-as-GET."""
        if self.payload == b"":
            return {}
        if b"\\u0000" in self.payload:  # PostgreSQL cannot store NUL in text; refused like the API does
            raise malformed("the JWS payload contains a NUL character")
        try:
            value = orjson.loads(self.payload)
        except orjson.JSONDecodeError:
            raise malformed("the JWS payload is not JSON") from None
        if not isinstance(value, dict):
            raise malformed("the JWS payload must be a JSON object")
        return value


def parse(body: bytes | dict[str, Any], *, inner: bool = False) -> Jws:
    """Structure checks of RFC 8555 §6.2 (no signature check yet); `inner` for the key-change inner JWS."""
    if isinstance(body, dict):
        outer = body
    else:
        try:
            outer = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise malformed("the request body is not a JSON Web Signature") from None
    if not isinstance(outer, dict):
        raise malformed("the request body is not a flattened JWS JSON object")
    if "signatures" in outer:
        raise malformed("JWS with multiple signatures are not accepted; use the flattened serialization")
    if "header" in outer:
        raise malformed("JWS unprotected headers are not accepted")
    fields = ("protected", "payload", "signature")
    if not all(isinstance(outer.get(f), str) for f in fields) or set(outer) - set(fields):
        raise malformed("a JWS needs exactly the string fields protected, payload and signature")
    try:
        protected = orjson.loads(b64d(outer["protected"]))
        payload = b64d(outer["payload"])
        signature = b64d(outer["signature"])
    except (ValueError, orjson.JSONDecodeError):
        raise malformed("the JWS fields are not base64url-encoded JSON") from None
    if not isinstance(protected, dict):
        raise malformed("the JWS protected header is not a JSON object")
    alg = protected.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise bad_algorithm(str(alg))
    if "typ" in protected and protected["typ"] != "application/jose+json":
        raise malformed("the JWS typ header, when present, must be application/jose+json")
    if "crit" in protected or protected.get("b64") is False:
        raise malformed("JWS critical header extensions are not supported")
    has_kid, has_jwk = "kid" in protected, "jwk" in protected
    if has_kid == has_jwk:
        raise malformed("the JWS protected header must hold exactly one of kid and jwk")
    if has_kid and not isinstance(protected["kid"], str):
        raise malformed("the JWS kid must be a string")
    if has_jwk and not isinstance(protected["jwk"], dict):
        raise malformed("the JWS jwk must be a JSON object")
    if not isinstance(protected.get("url"), str):
        raise malformed("the JWS protected header has no url")
    if inner:
        if "nonce" in protected:
            raise malformed("the inner JWS of a key change must not carry a nonce")
    elif not isinstance(protected.get("nonce"), str) or not protected["nonce"]:
        raise AcmeProblem("badNonce", "the JWS protected header has no nonce")
    signing_input = outer["protected"].encode() + b"." + outer["payload"].encode()
    return Jws(protected, signing_input, payload, signature)


# ---- keys --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AccountKey:
    key: PublicKey
    thumbprint: str  # RFC 7638 SHA-256, base64url
    jwk: dict[str, Any]  # the public members only

    @property
    def spki(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


_KEYS: dict[bytes, AccountKey] = {}


def account_key(jwk: dict[str, Any]) -> AccountKey:
    """The public key of a JWK (RSA ≥ 2048, EC P-256/P-384, OKP Ed25519); `badPublicKey` otherwise."""
    cache_key = orjson.dumps(jwk, option=orjson.OPT_SORT_KEYS)
    found = _KEYS.get(cache_key)
    if found is not None:
        return found
    found = _load_key(jwk)
    if len(_KEYS) > 10_000:
        _KEYS.clear()
    _KEYS[cache_key] = found
    return found


def _load_key(jwk: dict[str, Any]) -> AccountKey:
    if "d" in jwk or "p" in jwk or "k" in jwk:
        raise AcmeProblem("badPublicKey", "the JWK holds private or symmetric key material")
    kty = jwk.get("kty")
    if kty == "OKP":
        if jwk.get("crv") != "Ed25519" or not isinstance(jwk.get("x"), str):
            raise AcmeProblem("badPublicKey", "OKP keys must be Ed25519 with an x member")
        try:
            ed_key = ed25519.Ed25519PublicKey.from_public_bytes(b64d(jwk["x"]))
        except ValueError:
            raise AcmeProblem("badPublicKey", "the Ed25519 key does not parse") from None
        public = {"crv": "Ed25519", "kty": "OKP", "x": jwk["x"]}
        # RFC 8037 §2: the thumbprint members of an OKP key are crv, kty and x.
        digest = hashlib.sha256(orjson.dumps(public, option=orjson.OPT_SORT_KEYS)).digest()
        return AccountKey(ed_key, b64e(digest), public)
    if kty not in ("RSA", "EC"):
        raise AcmeProblem("badPublicKey", f"key type '{kty}' is not accepted (RSA, EC, OKP)")
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    try:
        if kty == "RSA":
            if not isinstance(jwk.get("n"), str) or not isinstance(jwk.get("e"), str):
                raise ValueError("n and e are needed")
            n, e = int.from_bytes(b64d(jwk["n"]), "big"), int.from_bytes(b64d(jwk["e"]), "big")
            # Re-encoded from the numbers (minimal octets): the canonical members RFC 7638 hashes.
            public = {"e": b64e(e.to_bytes((e.bit_length() + 7) // 8, "big")), "kty": "RSA",
                      "n": b64e(n.to_bytes((n.bit_length() + 7) // 8, "big"))}
            key = rsa.RSAPublicNumbers(e, n).public_key()
            if key.key_size < MIN_RSA_BITS:
                raise AcmeProblem("badPublicKey", f"RSA keys must have at least {MIN_RSA_BITS} bits")
        else:
            curve = _JWK_CURVES.get(str(jwk.get("crv")))
            if curve is None:
                raise AcmeProblem("badPublicKey", "EC keys must be on P-256 or P-384")
            if not isinstance(jwk.get("x"), str) or not isinstance(jwk.get("y"), str):
                raise ValueError("x and y are needed")
            x, y = b64d(jwk["x"]), b64d(jwk["y"])
            if len(x) != curve[1] or len(y) != curve[1]:  # RFC 7518 §6.2.1.2: the full coordinate length
                raise ValueError("coordinates of the wrong length")
            public = {"crv": jwk["crv"], "kty": "EC", "x": b64e(x), "y": b64e(y)}
            key = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                                curve[0]).public_key()  # checks the point is on the curve
    except (ValueError, TypeError):
        raise AcmeProblem("badPublicKey", "the JWK does not parse") from None
    # RFC 7638: the required members only, sorted, no whitespace.
    thumbprint = b64e(hashlib.sha256(orjson.dumps(public, option=orjson.OPT_SORT_KEYS)).digest())
    return AccountKey(key, thumbprint, public)


def verify(jws: Jws, key: AccountKey) -> None:
    """The signature verifies under `key` with an algorithm that fits the key; `malformed` otherwise."""
    alg = jws.alg
    ok = False
    if alg == "EdDSA":
        if isinstance(key.key, ed25519.Ed25519PublicKey):
            try:
                key.key.verify(jws.signature, jws.signing_input)
                ok = True
            except InvalidSignature:
                ok = False
        else:
            raise bad_algorithm(f"{alg} with a non-Ed25519 key")
    elif alg == "RS256":
        if not isinstance(key.key, rsa.RSAPublicKey):
            raise bad_algorithm(f"{alg} with a non-RSA key")
        try:
            key.key.verify(jws.signature, jws.signing_input, padding.PKCS1v15(), hashes.SHA256())
            ok = True
        except InvalidSignature:
            ok = False
    else:
        if not isinstance(key.key, ec.EllipticCurvePublicKey) or key.key.curve.name != _CURVES[alg]:
            raise bad_algorithm(f"{alg} with a key on another curve")
        size = (key.key.curve.key_size + 7) // 8
        if len(jws.signature) != 2 * size:  # RFC 7518 §3.4: R ‖ S, each the full length
            raise malformed("the JWS signature does not verify")
        r = int.from_bytes(jws.signature[:size], "big")
        s = int.from_bytes(jws.signature[size:], "big")
        try:
            key.key.verify(encode_dss_signature(r, s), jws.signing_input, ec.ECDSA(_EC_HASHES[alg]()))
            ok = True
        except InvalidSignature:
            ok = False
    if not ok:
        raise malformed("the JWS signature does not verify")


def spki_of(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
