"""Stored API keys: only their SHA-256 hashes; the keys themselves never reach the database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store.rows import insert_row
from certctl.store.schema import api_keys


async def replace_key(conn: AsyncConnection, name: str, key_hash: str, *, admin: bool, created_at: datetime) -> bool:
    """Store `key_hash` under `name`, dropping whatever hash that name had. True when one was replaced."""
    removed = await conn.execute(delete(api_keys).where(api_keys.c.name == name))
    await insert_row(conn, api_keys, {"name": name, "key_hash": key_hash, "admin": admin, "created_at": created_at})
    return removed.rowcount > 0
