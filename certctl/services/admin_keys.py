"""Replacing the generated admin key (`certctl admin-key rotate`): for a lost or exposed key."""

from __future__ import annotations

import secrets

from certctl.domain.actor import Actor
from certctl.domain.keys import hash_key
from certctl.services import audit
from certctl.services.bootstrap import ADMIN_KEY_NAME, _write_secret_file
from certctl.services.context import ServiceContext
from certctl.store import api_keys_repo


async def rotate_admin_key(ctx: ServiceContext) -> str:
    """A new admin key replaces the stored one (hash only) in one audited transaction; returns the key.

    A running server keeps the key hashes it loaded at start, so it must be restarted to drop the
    old key and accept the new one.
    """
    key = "cc_" + secrets.token_urlsafe(32)
    async with ctx.db.transaction() as conn:
        replaced = await api_keys_repo.replace_key(
            conn, ADMIN_KEY_NAME, hash_key(key), admin=True, created_at=ctx.clock.now()
        )
        await audit.record(
            conn, ctx.clock, Actor.system(), "api_key_rotated" if replaced else "api_key_generated",
            "api_key", ADMIN_KEY_NAME, {"admin": True},
        )
    _write_secret_file(ctx.settings.data_dir / "admin.key", key)
    return key
