"""Alembic migrations: idempotent, at head, reversible, and describing exactly the schema in certctl/store/schema.py."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from certctl.store import migrate
from certctl.store.database import Database
from certctl.store.schema import metadata
from tests.conftest import Api, _pg_admin, _pg_url

CERTCTL = Path(sys.executable).parent / "certctl"


@pytest.fixture
async def empty_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no tables at all (not the migrated template)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"certctl_m_{uuid.uuid4().hex[:12]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url(name)
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _snapshot(conn: Connection) -> dict[str, Any]:
    inspector = inspect(conn)
    return {
        table: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            sorted(i["name"] or "" for i in inspector.get_indexes(table)),
        )
        for table in sorted(inspector.get_table_names())
    }


async def _state(db: Database) -> tuple[str | None, dict[str, Any]]:
    async with db.engine.connect() as conn:
        return await migrate.current_revision(db), await conn.run_sync(_snapshot)


async def test_upgrade_from_nothing_then_again_is_a_no_op(empty_url: str) -> None:
    db = Database(empty_url)
    try:
        assert await migrate.current_revision(db) is None
        await migrate.upgrade(db)
        revision, schema = await _state(db)
        assert revision == migrate.head_revision()
        assert set(schema) >= {t for t in metadata.tables} | {"alembic_version"}

        async with db.transaction() as conn:
            await conn.execute(
                text("INSERT INTO teams (id, name, description, created_at, updated_at) "
                     "VALUES ('t-keep', 'keep', '', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')")
            )
        await migrate.upgrade(db)
        assert await _state(db) == (revision, schema)
        async with db.read() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM alembic_version")) == 1
            assert await conn.scalar(text("SELECT name FROM teams WHERE id = 't-keep'")) == "keep"
    finally:
        await db.dispose()


async def test_template_database_is_at_head(database_url: str) -> None:
    db = Database(database_url)
    try:
        assert await migrate.current_revision(db) == migrate.head_revision()
    finally:
        await db.dispose()


def _normalise_default(value: str | None) -> str | None:
    # The same default reads back as '' / ('') / ''::text / (false) depending on the back end.
    if value is None:
        return None
    value = value.strip()
    while value.startswith("(") and value.endswith(")"):
        value = value[1:-1].strip()
    value = re.sub(r"::[\w ]+$", "", value)
    return value.strip("'").lower()


def _compare_default(
    _context: Any, _inspected_column: Any, _metadata_column: Any,
    inspected_default: str | None, _metadata_default: Any, rendered_metadata_default: str | None,
) -> bool:
    return _normalise_default(inspected_default) != _normalise_default(rendered_metadata_default)


def _differences(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": _compare_default}
    )
    return list(compare_metadata(context, metadata))


async def test_migration_and_schema_module_describe_the_same_schema(database_url: str) -> None:
    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            differences = await conn.run_sync(_differences)
    finally:
        await db.dispose()
    assert differences == [], "schema.py and the Alembic migration disagree:\n" + "\n".join(map(str, differences))


async def test_comparison_notices_a_difference(database_url: str) -> None:
    # The check above must be able to fail: drop an index behind schema.py's back.
    db = Database(database_url)
    try:
        index = next(i for t in metadata.tables.values() for i in t.indexes if i.name and not i.unique)
        async with db.engine.begin() as conn:
            await conn.execute(text(f'DROP INDEX "{index.name}"'))
        async with db.engine.connect() as conn:
            differences = await conn.run_sync(_differences)
    finally:
        await db.dispose()
    assert any(d[0] == "add_index" and d[1].name == index.name for d in differences if isinstance(d, tuple))


async def test_downgrade_to_nothing_and_back(empty_url: str) -> None:
    from alembic import command

    db = Database(empty_url)
    try:
        await migrate.upgrade(db)
        _, before = await _state(db)

        def downgrade(conn: Connection) -> None:
            command.downgrade(migrate._config(conn), "base")

        async with db.engine.connect() as conn:
            await conn.run_sync(downgrade)
            await conn.commit()
        revision, schema = await _state(db)
        assert revision is None and set(schema) <= {"alembic_version"}
        await migrate.upgrade(db)
        assert await _state(db) == (migrate.head_revision(), before)
    finally:
        await db.dispose()


def test_cli_db_upgrade_and_current(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env["CERTCTL_DATA_DIR"] = str(tmp_path / "data")

    def certctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CERTCTL), *args], env=env, capture_output=True, text=True, timeout=60, check=False)

    before = certctl("db", "current")
    assert before.returncode == 1 and "database revision: none" in before.stdout
    upgraded = certctl("db", "upgrade")
    assert upgraded.returncode == 0 and f"database at revision {migrate.head_revision()}" in upgraded.stdout
    after = certctl("db", "current")
    assert after.returncode == 0, after.stdout + after.stderr
    assert f"database revision: {migrate.head_revision()}" in after.stdout


async def tool(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, f"{args[0]}: {err.decode()}"
    return out.decode()


async def test_documented_backup_and_restore(api: Api, backend: str, database_url: str, tmp_path: Path) -> None:
    """The commands of docs/operations.md, run against a live server's database, give back a working copy."""
    team = (await api.admin.post("/api/v1/teams", json={"name": "backed-up"})).json()
    await api.services.audit_sink.flush()

    if backend == "sqlite":
        copy = tmp_path / "restored.db"
        live = database_url.removeprefix("sqlite:///")
        await tool("sqlite3", live, f".backup '{copy}'")
        assert (await tool("sqlite3", str(copy), "PRAGMA integrity_check")).strip() == "ok"
        restored_url = f"sqlite:///{copy}"
    else:
        dump = tmp_path / "certctl.dump"
        await tool("pg_dump", "-Fc", "-d", database_url, "-f", str(dump))
        name = f"certctl_r_{uuid.uuid4().hex[:12]}"
        await _pg_admin(f'CREATE DATABASE "{name}"')
        restored_url = _pg_url(name)
        await tool("pg_restore", "--no-owner", "--exit-on-error", "-d", restored_url, str(dump))

    db = Database(restored_url)
    try:
        assert await migrate.current_revision(db) == migrate.head_revision()
        async with db.read() as conn:
            assert await conn.scalar(text("SELECT name FROM teams WHERE id = :id"), {"id": team["id"]}) == "backed-up"
            actions = set((await conn.execute(text("SELECT action FROM audit_events"))).scalars())
        assert {"team_created", "api_post"} <= actions
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.engine.begin() as conn:
                await conn.execute(text("DELETE FROM audit_events"))
    finally:
        await db.dispose()
        if backend == "postgresql":
            await _pg_admin(f'DROP DATABASE IF EXISTS "{restored_url.rsplit("/", 1)[1]}" WITH (FORCE)')
