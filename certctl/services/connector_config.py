"""Connector configs (issuers and deployment targets) at rest and on the wire.

- At rest: the full config is sealed (AES-256-GCM, `ctx.sealer`) into `encrypted_config`; the
  `config` column holds only the redacted view, so a database dump shows no secret.
- On the wire: every response carries the redacted view (secret-looking keys become `********`).
- On update: a `********` value means "keep the stored secret" and is merged back from the
  unsealed stored config. Changing where the connector talks to (a URL or host) while keeping
  stored secrets is refused: otherwise a caller who cannot read a secret could send it to a
  server of their choosing.
- Audit details name the config keys, never their values.
- At start-up, `verify_sealed_configs` refuses to run when sealed rows cannot be opened with
  the current key (a lost key file or a wrong CERTCTL_CONFIG_ENCRYPTION_KEY), instead of
  failing later on the first renewal.

Per-type validation is declared as `ConfigRules` (required keys, URL/e-mail/number checks),
shared by the issuer and target services.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from certctl.domain.errors import UnavailableError, ValidationError
from certctl.domain.redaction import REDACTED, merge_redacted, redact_config
from certctl.pki.sealing import ConfigSealer
from certctl.services.context import ServiceContext
from certctl.store import connector_configs_repo
from certctl.store.rows import Row

# Keys naming the remote end a connector sends its credentials to.
ENDPOINT_KEYS = frozenset(
    {
        "directory_url", "ca_url", "url", "addr", "address", "api_url", "base_url", "token_url",
        "customer_uri", "host", "hostname", "vault_url", "admin_api", "endpoint",
    }
)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# The reference agent refuses these in hook commands (run through `sh -c`).
_SHELL_META = re.compile(r"[;|&$`(){}<>\\\"'\n\r\x00]")
_MAX_COMMAND = 1024


# ---- sealing -------------------------------------------------------------------------------------
def sealed_columns(sealer: ConfigSealer, config: Mapping[str, Any]) -> dict[str, Any]:
    """Column values for a full config: the redacted view and the sealed whole."""
    full = dict(config)
    return {"config": redact_config(full), "encrypted_config": sealer.seal(full) if full else None}


def unseal(sealer: ConfigSealer, row: Mapping[Any, Any], kind: str) -> dict[str, Any]:
    """The full stored config of a row (rows written without sealing keep it in `config`)."""
    blob = row["encrypted_config"]
    if not blob:
        return dict(row["config"] or {})
    try:
        return dict(sealer.open(blob))
    except ValueError:  # SealError, or base64 damage
        raise UnavailableError(
            f"the stored config of {kind} '{row['id']}' cannot be decrypted with the current config "
            "encryption key"
        ) from None


def apply_config_change(
    sealer: ConfigSealer,
    current: Row,
    changes: dict[str, Any],
    kind: str,
    validate: Callable[[str, dict[str, Any]], None],
) -> None:
    """On update: when the config or the type changes, check the resulting config against the (new)
    type; a new config has its `********` values merged back from the stored one and is sealed again."""
    if "config" not in changes and "type" not in changes:
        return
    stored = unseal(sealer, current, kind)
    config = merge_back(changes["config"], stored) if "config" in changes else stored
    validate(changes.get("type", current["type"]), config)
    if "config" in changes:
        changes.update(sealed_columns(sealer, config))


def has_placeholder(value: Any) -> bool:
    if value == REDACTED:
        return True
    if isinstance(value, dict):
        return any(has_placeholder(v) for v in value.values())
    return False


def merge_back(new: Mapping[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve `********` placeholders from the stored config, guarding against secret redirection."""
    if has_placeholder(dict(new)):
        moved = sorted(k for k in ENDPOINT_KEYS if k in new and k in stored and new[k] != stored[k])
        moved += sorted(k for k in ENDPOINT_KEYS if k in new and k not in stored)
        if moved:
            raise ValidationError(
                f"changing {', '.join(moved)} requires re-entering every secret value: stored secrets are "
                "never sent to a new endpoint (replace each '********' with the real value)"
            )
    return merge_redacted(dict(new), dict(stored))


def without_placeholders(config: Mapping[str, Any]) -> dict[str, Any]:
    """On create nothing is stored yet: a `********` placeholder has nothing behind it and is dropped."""
    return merge_redacted(dict(config), {})


def config_keys(config: Mapping[str, Any]) -> list[str]:
    """What an audit event may say about a config: its keys, never the values."""
    return sorted(str(k) for k in config)


# ---- per-type rules ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigRules:
    # Each entry is one key, or a tuple of accepted spellings of the same setting.
    required: tuple[str | tuple[str, ...], ...] = ()
    urls: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # key -> allowed schemes
    emails: tuple[str, ...] = ()
    positive_ints: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    together: tuple[tuple[str, ...], ...] = ()  # all or none
    check: Callable[[Mapping[str, Any]], list[str]] | None = None  # cross-key rules


def _present(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key)
    return value is not None and value != "" and value != [] and value != {}


def config_problems(rules: ConfigRules, config: Mapping[str, Any]) -> list[str]:
    """Every problem with `config` under `rules`; never echoes a value (it may be a secret)."""
    problems: list[str] = []
    for entry in rules.required:
        names = (entry,) if isinstance(entry, str) else entry
        if not any(_present(config, n) for n in names):
            also = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
            problems.append(f"{names[0]}{also} is required")
    for key, schemes in rules.urls.items():
        if _present(config, key):
            value = config[key]
            parts = urlsplit(value) if isinstance(value, str) else None
            if parts is None or parts.scheme not in schemes or not parts.hostname:
                problems.append(f"{key} must be an {' or '.join(s + '://' for s in schemes)} URL")
    for key in rules.emails:
        if _present(config, key) and not (isinstance(config[key], str) and _EMAIL.match(config[key])):
            problems.append(f"{key} must be an e-mail address")
    for key in rules.positive_ints:
        if key in config and not (type(config[key]) is int and config[key] >= 1):
            problems.append(f"{key} must be a whole number of at least 1")
    for key in rules.ports:
        if key in config and not (type(config[key]) is int and 1 <= config[key] <= 65535):
            problems.append(f"{key} must be a TCP port (1-65535)")
    for key, allowed in rules.choices.items():
        if _present(config, key) and config[key] not in allowed:
            problems.append(f"{key} must be one of: {', '.join(allowed)}")
    for group in rules.together:
        given = [k for k in group if _present(config, k)]
        if given and len(given) != len(group):
            problems.append(f"{' and '.join(group)} must be set together")
    for key, value in config.items():
        if str(key).endswith("_command") and _present(config, key):
            if not isinstance(value, str):
                problems.append(f"{key} must be a string")
            elif len(value) > _MAX_COMMAND or _SHELL_META.search(value):
                problems.append(
                    f"{key} must be at most {_MAX_COMMAND} characters without shell metacharacters "
                    "(; | & $ ` ( ) {{ }} < > \\ \" ' or newlines)"
                )
    if rules.check is not None:
        problems.extend(rules.check(config))
    return problems


def require_valid(label: str, rules: ConfigRules, config: Mapping[str, Any]) -> None:
    problems = config_problems(rules, config)
    if problems:
        raise ValidationError(f"invalid {label} config: {'; '.join(problems)}")


# ---- start-up key check --------------------------------------------------------------------------
class SealedConfigKeyError(RuntimeError):
    """Sealed connector configs exist that the configured key cannot open."""


async def verify_sealed_configs(ctx: ServiceContext, *, sample: int = 3) -> None:
    """Refuse to start when stored sealed configs cannot be opened with the current key."""
    async with ctx.db.read() as conn:
        samples = await connector_configs_repo.sealed_samples(conn, sample)
    unreadable = []
    for kind, row_id, blob in samples:
        try:
            ctx.sealer.open(blob)
        except ValueError:
            unreadable.append(f"{kind} '{row_id}'")
    if unreadable:
        source = (
            "CERTCTL_CONFIG_ENCRYPTION_KEY"
            if ctx.settings.config_encryption_key
            else f"the key file {ctx.settings.data_dir / 'config.key'}"
        )
        raise SealedConfigKeyError(
            f"refusing to start: the sealed connector configs of {', '.join(unreadable)} cannot be decrypted "
            f"with the key from {source}. The configs were sealed with a different key: restore the original "
            "key (CERTCTL_CONFIG_ENCRYPTION_KEY, or the data directory's config.key file) and start again."
        )
