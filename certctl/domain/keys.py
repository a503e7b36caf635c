"""API key check (pure): SHA-256 of the token, compared in constant time with every stored hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
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


AGENT_KEY_PREFIX = "cca."


def agent_key(agent_id: str) -> str:
    """A new agent credential: `cca.<agent id>.<secret>`; the id lets the server find the one hash to check."""
    return f"{AGENT_KEY_PREFIX}{agent_id}.{secrets.token_urlsafe(32)}"


def agent_of_key(token: str) -> str | None:
    """The agent id an agent credential names, or None when the token is not one."""
    if not token.startswith(AGENT_KEY_PREFIX):
        return None
    agent_id, dot, secret = token[len(AGENT_KEY_PREFIX):].rpartition(".")
    return agent_id if dot and agent_id and secret else None


def key_matches(token: str, key_hash: str) -> bool:
    return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), bytes.fromhex(key_hash))
