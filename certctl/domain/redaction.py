"""Redaction of secrets in configs and audit details."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

REDACTED = "********"
_SECRET_WORDS = frozenset(
    {"password", "passwd", "passphrase", "secret", "token", "hmac", "private", "credential", "credentials", "apikey"}
)

# Audit details: credentials never stored; PII replaced (reference redaction tables).
_CREDENTIAL_KEYS = frozenset(
    {
        "api_key", "apikey", "password", "passphrase", "token", "secret", "private_key",
        "cert_pem", "key_pem", "hmac", "authorization", "bootstrap_token", "client_secret",
        "encrypted_config", "config_secret",
    }
)
_PII_KEYS = frozenset({"email", "ip", "ip_address", "address", "phone", "recipient"})


def is_secret_key(key: str) -> bool:
    """`api_key`, `client_secret`, `eab_hmac_key`, `password` are secrets; `key_path`, `key_size` are not."""
    words = key.lower().replace("-", "_").split("_")
    return words[-1] == "key" or any(word in _SECRET_WORDS for word in words)


def redact_config(config: dict[str, Any]) -> dict[str, Any]:
    """Replace every secret-looking value (recursively) with `********`."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if is_secret_key(key) and value not in (None, ""):
            out[key] = REDACTED
        elif isinstance(value, dict):
            out[key] = redact_config(value)
        else:
            out[key] = value
    return out


def merge_redacted(new: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """On update, a `********` value means "keep what is stored"."""
    out: dict[str, Any] = {}
    for key, value in new.items():
        if value == REDACTED and key in stored:
            out[key] = stored[key]
        elif isinstance(value, dict) and isinstance(stored.get(key), dict):
            out[key] = merge_redacted(value, stored[key])
        elif value == REDACTED:
            continue  # a placeholder with nothing behind it is dropped, never stored
        else:
            out[key] = value
    return out


def redact_audit_details(details: dict[str, Any]) -> dict[str, Any]:
    """Recursively redact credentials and PII; list the keys that were touched."""
    touched: list[str] = []

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            result: dict[str, Any] = {}
            for key, inner in value.items():
                kind = _audit_key_kind(str(key))
                if kind is not None:
                    result[key] = kind
                    touched.append(f"{path}.{key}" if path else str(key))
                elif isinstance(inner, (dict, list)):
                    result[key] = walk(inner, f"{path}.{key}" if path else str(key))
                else:
                    result[key] = inner
            return result
        if isinstance(value, list):
            return [walk(item, path) for item in value]
        return value

    redacted: dict[str, Any] = walk(details, "")
    if touched:
        redacted["redacted_keys"] = sorted(touched)
    return redacted


@lru_cache(maxsize=4096)  # every audited request redacts the same few dozen keys; bounded for free-form ones
def _audit_key_kind(key: str) -> str | None:
    """The replacement for an audit detail under this key, or None to keep (and walk) its value."""
    lowered = key.lower()
    if lowered in _CREDENTIAL_KEYS or (is_secret_key(lowered) and lowered not in _SAFE_KEYS):
        return "[REDACTED:CREDENTIAL]"
    if lowered in _PII_KEYS:
        return "[REDACTED:PII]"
    return None


# Keys that contain a secret marker but name no secret.
_SAFE_KEYS = frozenset({"key_algorithm", "key_size", "keygen_mode", "key_driver_id", "redacted_keys"})
