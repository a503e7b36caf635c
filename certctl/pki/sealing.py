"""Encryption at rest for connector configs: AES-256-GCM, key from PBKDF2-SHA256 (100k rounds).

Sealed format (the reference's v2): b"\\x02" | salt(16) | nonce(12) | ciphertext+tag, base64 text.
A fresh salt per value means a leaked ciphertext says nothing about the others.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

_VERSION = b"\x02"
_ITERATIONS = 100_000


class SealError(ValueError):
    """Ciphertext is damaged or was sealed with another key."""


class ConfigSealer:
    def __init__(self, passphrase: str) -> None:
        if len(passphrase) < 32:
            raise ValueError("the config encryption key must be at least 32 characters")
        self._passphrase = passphrase.encode()
        self._cache: dict[bytes, AESGCM] = {}

    def _aead(self, salt: bytes) -> AESGCM:
        # PBKDF2 is deliberately slow; derive once per salt and remember it for this process.
        aead = self._cache.get(salt)
        if aead is None:
            kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=_ITERATIONS)
            aead = AESGCM(kdf.derive(self._passphrase))
            self._cache[salt] = aead
        return aead

    def seal(self, config: dict[str, object]) -> str:
        salt, nonce = os.urandom(16), os.urandom(12)
        sealed = self._aead(salt).encrypt(nonce, orjson.dumps(config), _VERSION)
        return base64.b64encode(_VERSION + salt + nonce + sealed).decode()

    def open(self, token: str) -> dict[str, object]:
        raw = base64.b64decode(token)
        if raw[:1] != _VERSION or len(raw) < 1 + 16 + 12 + 16:
            raise SealError("unknown sealed-config format")
        salt, nonce, body = raw[1:17], raw[17:29], raw[29:]
        try:
            plain = self._aead(salt).decrypt(nonce, body, _VERSION)
        except InvalidTag:
            raise SealError("sealed config cannot be opened with this key") from None
        value = orjson.loads(plain)
        if not isinstance(value, dict):
            raise SealError("sealed config is not an object")
        return value


def load_or_create_key_file(path: Path) -> str:
    """The data directory's generated key (0600), used when CERTCTL_CONFIG_ENCRYPTION_KEY is unset."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key
