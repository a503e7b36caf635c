"""A small asynchronous ACME client for the server's tests and for bench/acme_orders.py.

It signs JWS itself (ES256, ES384, RS256, EdDSA), so tests can also send what real clients never would:
a replayed nonce, a wrong `url`, `alg: none`, `kid` and `jwk` together. Happy paths are also proven with
the real certbot (tests/test_acme_certbot.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

JOSE = {"Content-Type": "application/jose+json"}
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key(alg: str = "ES256") -> PrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


def alg_of(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    return "ES384" if key.curve.name == "secp384r1" else "ES256"


def jwk_of(key: PrivateKey) -> dict[str, str]:
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        return {"e": b64(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")), "kty": "RSA",
                "n": b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"))}
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": b64(raw)}
    size = (key.curve.key_size + 7) // 8
    point = key.public_key().public_numbers()
    return {"crv": "P-384" if size == 48 else "P-256", "kty": "EC",
            "x": b64(point.x.to_bytes(size, "big")), "y": b64(point.y.to_bytes(size, "big"))}


def thumbprint(key: PrivateKey) -> str:
    jwk = jwk_of(key)
    return b64(hashlib.sha256(orjson.dumps(jwk, option=orjson.OPT_SORT_KEYS)).digest())


def sign_bytes(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    size = (key.curve.key_size + 7) // 8
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA384() if size == 48 else hashes.SHA256())))
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def jws(key: PrivateKey, protected: dict[str, Any], payload: bytes) -> dict[str, str]:
    p64 = b64(orjson.dumps(protected))
    pl64 = b64(payload)
    return {"protected": p64, "payload": pl64, "signature": b64(sign_bytes(key, f"{p64}.{pl64}".encode()))}


def eab_jws(key_id: str, hmac_key_b64: str, account_jwk: dict[str, str], url: str) -> dict[str, str]:
    p64 = b64(orjson.dumps({"alg": "HS256", "kid": key_id, "url": url}))
    pl64 = b64(orjson.dumps(account_jwk))
    secret = base64.urlsafe_b64decode(hmac_key_b64 + "=" * (-len(hmac_key_b64) % 4))
    return {"protected": p64, "payload": pl64,
            "signature": b64(hmac.new(secret, f"{p64}.{pl64}".encode(), hashlib.sha256).digest())}


def csr_der(
    names: Sequence[str], key: PrivateKey | None = None, *, common_name: str | None = None,
) -> tuple[bytes, PrivateKey]:
    import ipaddress

    key = key or ec.generate_private_key(ec.SECP256R1())
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    builder = x509.CertificateSigningRequestBuilder().add_extension(
        x509.SubjectAlternativeName(general), critical=False)
    builder = builder.subject_name(x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []))
    csr = builder.sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER), key


def identifiers(*names: str) -> list[dict[str, str]]:
    out = []
    for name in names:
        kind = "ip" if name.replace(".", "").isdigit() or ":" in name else "dns"
        out.append({"type": kind, "value": name})
    return out


class Transport(Protocol):
    """What the client needs of its HTTP client: httpx.AsyncClient, or the bench's lean keep-alive client."""

    async def get(self, url: str) -> Any: ...

    async def head(self, url: str) -> Any: ...

    async def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> Any: ...


@dataclass
class AcmeClient:
    http: Transport
    directory_url: str
    key: PrivateKey = field(default_factory=lambda: new_key("ES256"))
    kid: str | None = None
    directory: dict[str, Any] = field(default_factory=dict)
    _nonce: str | None = None

    async def start(self) -> dict[str, Any]:
        response = await self.http.get(self.directory_url)
        assert response.status_code == 200, response.text
        self.directory = response.json()
        self._remember(response)
        return self.directory

    def _remember(self, response: httpx.Response) -> None:
        nonce = response.headers.get("Replay-Nonce")
        if nonce:
            self._nonce = nonce

    async def nonce(self) -> str:
        if self._nonce is None:
            response = await self.http.head(self.directory["newNonce"])
            assert response.status_code == 200, response.text
            self._remember(response)
        assert self._nonce is not None
        nonce, self._nonce = self._nonce, None
        return nonce

    async def post(
        self, url: str, payload: dict[str, Any] | bytes | None, *, use_jwk: bool = False,
        key: PrivateKey | None = None, protected: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """POST a JWS; `payload` None is POST-as-GET; `protected` overrides or adds header fields."""
        key = key or self.key
        header: dict[str, Any] = {"alg": alg_of(key), "nonce": await self.nonce(), "url": url}
        if use_jwk or self.kid is None:
            header["jwk"] = jwk_of(key)
        else:
            header["kid"] = self.kid
        header.update(protected or {})
        header = {k: v for k, v in header.items() if v is not None}
        body = b"" if payload is None else payload if isinstance(payload, bytes) else orjson.dumps(payload)
        response: httpx.Response = await self.http.post(url, content=orjson.dumps(jws(key, header, body)),
                                                        headers=JOSE)
        self._remember(response)
        return response

    async def register(self, **fields: Any) -> httpx.Response:
        payload = {"termsOfServiceAgreed": True, **fields}
        response = await self.post(self.directory["newAccount"], payload, use_jwk=True)
        if response.status_code in (200, 201):
            self.kid = response.headers["Location"]
        return response

    async def order(self, *names: str, **extra: Any) -> httpx.Response:
        return await self.post(self.directory["newOrder"], {"identifiers": identifiers(*names), **extra})

    async def issue(self, *names: str, key: PrivateKey | None = None, **extra: Any) -> tuple[str, dict[str, Any]]:
        """newOrder → (trusted) finalize → download: the chain PEM and the final order."""
        created = await self.order(*names, **extra)
        assert created.status_code == 201, created.text
        order = created.json()
        der, _ = csr_der(names, key)
        final = await self.post(order["finalize"], {"csr": b64(der)})
        assert final.status_code == 200, final.text
        body = final.json()
        assert body["status"] == "valid", body
        cert = await self.post(body["certificate"], None)
        assert cert.status_code == 200, cert.text
        return cert.text, body
