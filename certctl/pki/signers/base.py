"""The signer interface: CA keys are used through it and never leave it (protocols.md §6).

A `Signer` signs bytes with one key and reports its public key and key spec. A software signer
also hands its key object to `cryptography`'s builders (the fast path); a hardware signer
(PKCS#11) never does, and `certctl.pki.signing` signs the to-be-signed bytes through `sign`.
A `SignerDriver` loads a signer from a stored reference (`key_driver_id`, never key bytes) and
generates new keys.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)

# Key specs a CA or responder key may have. RSA below 2048 and P-521 are refused (protocols.md §5).
KEY_SPECS: Final = ("ECDSA-P256", "ECDSA-P384", "RSA-2048", "RSA-3072", "RSA-4096", "Ed25519")
DEFAULT_KEY_SPEC: Final = "ECDSA-P256"


class SignerError(Exception):
    """A key cannot be loaded, generated or used (wrong reference, wrong passphrase, token gone)."""


def normalize_key_spec(value: str) -> str:
    """Accept the common spellings (`EC-P256`, `ecdsa-p256`, `P-256`, `rsa2048`, `ed25519`)."""
    compact = value.strip().upper().replace("_", "-").replace(" ", "")
    aliases = {
        "ECDSA-P256": "ECDSA-P256", "EC-P256": "ECDSA-P256", "P-256": "ECDSA-P256", "P256": "ECDSA-P256",
        "ECDSA-P-256": "ECDSA-P256", "ECDSA256": "ECDSA-P256", "ECDSA": "ECDSA-P256",
        "ECDSA-P384": "ECDSA-P384", "EC-P384": "ECDSA-P384", "P-384": "ECDSA-P384", "P384": "ECDSA-P384",
        "ECDSA-P-384": "ECDSA-P384", "ECDSA384": "ECDSA-P384",
        "RSA-2048": "RSA-2048", "RSA2048": "RSA-2048", "RSA": "RSA-2048",
        "RSA-3072": "RSA-3072", "RSA3072": "RSA-3072",
        "RSA-4096": "RSA-4096", "RSA4096": "RSA-4096",
        "ED25519": "Ed25519",
    }
    spec = aliases.get(compact)
    if spec is None:
        raise SignerError(f"unsupported key algorithm '{value}'; use one of: {', '.join(KEY_SPECS)}")
    return spec


def generate_private_key(spec: str) -> CertificateIssuerPrivateKeyTypes:
    spec = normalize_key_spec(spec)
    if spec == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if spec.startswith("ECDSA"):
        return ec.generate_private_key(ec.SECP256R1() if spec.endswith("256") else ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=int(spec.split("-")[1]))


def key_spec_of(key: PublicKeyTypes) -> str:
    """The spec of a CA public key; raises `SignerError` for keys a CA may not have."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return "ECDSA-P256"
        if isinstance(key.curve, ec.SECP384R1):
            return "ECDSA-P384"
        raise SignerError(f"ECDSA curve {key.curve.name} is not supported for CA keys (P-256 or P-384)")
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size in (2048, 3072, 4096):
            return f"RSA-{key.key_size}"
        raise SignerError(f"RSA-{key.key_size} is not supported for CA keys (2048, 3072 or 4096)")
    raise SignerError(f"{type(key).__name__} is not supported for CA keys")


def hash_for(spec: str) -> hashes.SHA256 | hashes.SHA384 | None:
    """The digest a key of this spec signs with: SHA-384 for P-384, none for Ed25519, else SHA-256."""
    if spec == "Ed25519":
        return None
    return hashes.SHA384() if spec == "ECDSA-P384" else hashes.SHA256()


class Signer(ABC):
    """One private key, usable only through `sign`."""

    def __init__(self, ref: str, key_spec: str) -> None:
        self.ref = ref
        self.key_spec = key_spec

    @abstractmethod
    def public_key(self) -> CertificatePublicKeyTypes: ...

    @abstractmethod
    def sign(self, data: bytes) -> bytes:
        """Sign `data` as X.509 expects for this key spec: ECDSA DER-encoded, RSA PKCS#1 v1.5, Ed25519 pure."""

    def software_key(self) -> CertificateIssuerPrivateKeyTypes | None:
        """The in-process key object for `cryptography`'s builders, or None when the key lives in hardware."""
        return None

    def __repr__(self) -> str:  # never the key itself
        return f"{type(self).__name__}(ref={self.ref!r}, key_spec={self.key_spec!r})"


class SoftwareSigner(Signer):
    """A key held in process memory (loaded from a file, or generated for a test)."""

    def __init__(self, ref: str, key: CertificateIssuerPrivateKeyTypes) -> None:
        super().__init__(ref, key_spec_of(key.public_key()))
        self._key = key

    def public_key(self) -> CertificatePublicKeyTypes:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        key = self._key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        digest = hash_for(self.key_spec)
        assert digest is not None
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(digest))
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), digest)
        raise SignerError(f"cannot sign with {type(key).__name__}")

    def software_key(self) -> CertificateIssuerPrivateKeyTypes:
        return self._key


class SignerDriver(ABC):
    """Loads and generates keys of one kind; `scheme` prefixes every reference it hands out."""

    scheme: str

    @abstractmethod
    def load(self, ref: str) -> Signer:
        """Open the key named by a reference this driver produced (`<scheme>:...`)."""

    @abstractmethod
    def generate(self, key_spec: str, label: str) -> Signer:
        """Make and persist a new key; the returned signer's `ref` finds it again."""
