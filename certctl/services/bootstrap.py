"""First-boot duties: the generated admin key, and loading API key hashes for the auth layer."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from certctl.domain.actor import Actor
from certctl.domain.keys import hash_key
from certctl.services import audit
from certctl.services.connector_config import sealed_columns
from certctl.services.context import ServiceContext
from certctl.services.issuer_connectors import ACME_SEED_ISSUER_ID, acme_seed_config
from certctl.store import rows
from certctl.store.schema import api_keys, issuers, renewal_policies

ADMIN_KEY_NAME = "admin"


@dataclass(frozen=True)
class StoredKey:
    name: str
    key_hash: str
    admin: bool


async def ensure_admin_key(ctx: ServiceContext) -> str | None:
    """With no configured keys and none stored, make one admin key.

    Only its SHA-256 is stored in the database; the key itself is written once to
    `<data-dir>/admin.key` (0600) and returned so the caller can print it once.
    """
    settings = ctx.settings
    if settings.auth_type != "api-key" or settings.api_keys:
        return None
    async with ctx.db.transaction() as conn:
        if await rows.count_rows(conn, api_keys):
            return None
        key = "cc_" + secrets.token_urlsafe(32)
        await rows.insert_row(
            conn, api_keys,
            {"name": ADMIN_KEY_NAME, "key_hash": hash_key(key), "admin": True, "created_at": ctx.clock.now()},
        )
        await audit.record(
            conn, ctx.clock, Actor.system(), "api_key_generated", "api_key", ADMIN_KEY_NAME, {"admin": True}
        )
    _write_secret_file(settings.data_dir / "admin.key", key)
    return key


DEFAULT_RENEWAL_POLICY_ID = "rp-default"
LOCAL_ISSUER_ID = "iss-local"


async def seed_defaults(ctx: ServiceContext) -> None:
    """First boot of an empty database: a default renewal policy and the local CA issuer row (plus the ACME
    issuer `iss-acme-prod` when CERTCTL_ACME_DIRECTORY_URL is set, its config sealed).

    Re-running is harmless: nothing is written when the rows exist (or were deleted on purpose
    after other rows were added).
    """
    now = ctx.clock.now()
    async with ctx.db.transaction() as conn:
        if not await rows.count_rows(conn, renewal_policies):
            await rows.insert_row(conn, renewal_policies, {
                "id": DEFAULT_RENEWAL_POLICY_ID, "name": "Default", "renewal_window_days": 30,
                "auto_renew": True, "max_retries": 3, "retry_interval_seconds": 3600,
                "alert_thresholds_days": [30, 14, 7, 0],
                "alert_channels": {"informational": ["Email"], "warning": ["Email"], "critical": ["Email"]},
                "alert_severity_map": {"30": "informational", "14": "warning", "7": "warning", "0": "critical"},
                "created_at": now, "updated_at": now,
            })
        if not await rows.count_rows(conn, issuers):
            await rows.insert_row(conn, issuers, {
                "id": LOCAL_ISSUER_ID, "name": "Local CA", "type": "GenericCA", "config": {},
                "encrypted_config": None, "enabled": True, "source": "database",
                "created_at": now, "updated_at": now,
            })
            acme = acme_seed_config(ctx.settings.extra)  # CERTCTL_ACME_DIRECTORY_URL and friends (docs/acme-issuer.md)
            if acme is not None:
                await rows.insert_row(conn, issuers, {
                    "id": ACME_SEED_ISSUER_ID, "name": "ACME", "type": "ACME", **sealed_columns(ctx.sealer, acme),
                    "enabled": True, "source": "env", "created_at": now, "updated_at": now,
                })


async def stored_keys(ctx: ServiceContext) -> list[StoredKey]:
    async with ctx.db.read() as conn:
        result = await conn.execute(select(api_keys.c.name, api_keys.c.key_hash, api_keys.c.admin))
        return [StoredKey(r.name, r.key_hash, r.admin) for r in result]


def _write_secret_file(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content + "\n")
