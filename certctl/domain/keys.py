"""API key check (pure): SHA-256 of the token, compared in constant time with every stored hash."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyIdentity:
    name: str
    admin: bool


class KeyStore:
    def __init__(self) -> None:
        self._entries: list[tuple[bytes, KeyIdentity]] = []

    def add_hash(self, key_hash: str, name: str, admin: bool) -> None:
        self._entries.append((bytes.fromhex(key_hash), KeyIdentity(name, admin)))

    def add_key(self, key: str, name: str, admin: bool) -> None:
        self.add_hash(hash_key(key), name, admin)

    def __len__(self) -> int:
        return len(self._entries)

    def verify(self, token: str) -> KeyIdentity | None:
        presented = hashlib.sha256(token.encode()).digest()
        found: KeyIdentity | None = None
        for stored, identity in self._entries:  # no early exit: timing does not reveal which key matched
            if hmac.compare_digest(stored, presented):
                found = identity
        return found
