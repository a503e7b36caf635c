"""Consistent database snapshots for `certctl backup`, and loading them back (the SQL side of certctl.services.backup).

PostgreSQL: one REPEATABLE READ, READ ONLY transaction exports its snapshot (`pg_export_snapshot()`), counts
every table's rows in it, and `pg_dump --snapshot` dumps exactly that state (custom format) while the
transaction stays open: the row counts in the manifest describe the very rows in the dump, even while the
server keeps writing. Loading uses `pg_restore`; into the configured database in one transaction
(`--single-transaction`: all or nothing), into a throwaway database with two jobs (speed; nothing to protect).

SQLite: the online backup API (`sqlite3.Connection.backup`) copies a consistent image page by page while the
server runs (WAL readers never block writers); the counts are taken from that copy.

The PostgreSQL password never reaches a command line (`ps` shows those to every local user): the tools get
the URL without it and the password through PGPASSWORD.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store import migrate
from certctl.store.database import Database

PG_DUMP_FORMAT = "pg_dump-custom"
SQLITE_FORMAT = "sqlite3"


class SnapshotError(Exception):
    """A dump or load failed (the message says which tool and why)."""


@dataclass
class SnapshotInfo:
    backend: str  # "postgresql" | "sqlite"
    revision: str | None
    tables: dict[str, int]  # rows per table, in the snapshot
    server_version: str
    key_refs: list[str] = field(default_factory=list)  # key_driver_id of every CA and OCSP responder row


@dataclass
class DatabaseState:
    tables: dict[str, int]  # every table of the schema and its row count
    other_sessions: int = 0  # PostgreSQL: other connections to this database (a running server)

    @property
    def holds_data(self) -> bool:
        return any(count for name, count in self.tables.items() if name != "alembic_version")


@dataclass(frozen=True)
class KeyRow:
    """A CA or OCSP responder row of a restored database: what verify needs to prove the key still signs."""

    kind: str  # "ca" | "ocsp_responder"
    id: str
    cert_pem: str
    key_ref: str
    state: str


def known_revision(revision: str) -> bool:
    """Does this certctl's migration history contain `revision`? (A newer backup's revision is not.)"""
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    cfg = Config()
    cfg.set_main_option("script_location", str(migrate.MIGRATIONS_DIR))
    try:
        return ScriptDirectory.from_config(cfg).get_revision(revision) is not None
    except CommandError:
        return False


def backend_of(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def sqlite_file(url: str) -> Path:
    return Path(url.split(":///", 1)[1])


def libpq(url: str) -> tuple[str, dict[str, str]]:
    """(URL for the PostgreSQL tools without the password, environment carrying it)."""
    plain = url.replace("postgresql+asyncpg://", "postgresql://", 1).replace("postgres://", "postgresql://", 1)
    parts = urlsplit(plain)
    env = dict(os.environ)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            user, password = userinfo.split(":", 1)
            env["PGPASSWORD"] = unquote(password)
            netloc = f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), env


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


async def _tables(conn: AsyncConnection, dialect: str) -> list[str]:
    if dialect == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    else:
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
    return list((await conn.execute(text(sql))).scalars())


async def _counts(conn: AsyncConnection, dialect: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in await _tables(conn, dialect):
        quoted = '"' + name.replace('"', '""') + '"'  # a name from the catalog, quoted as an identifier
        counts[name] = int((await conn.execute(text(f"SELECT count(*) FROM {quoted}"))).scalar_one())
    return counts


async def _revision(conn: AsyncConnection, tables: Mapping[str, int]) -> str | None:
    if "alembic_version" not in tables:
        return None
    value = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    return str(value) if value is not None else None


async def _key_refs(conn: AsyncConnection, tables: Mapping[str, int]) -> list[str]:
    refs: set[str] = set()
    for table in ("intermediate_cas", "ocsp_responders"):
        if table in tables:
            refs.update((await conn.execute(text(f"SELECT key_driver_id FROM {table}"))).scalars())
    return sorted(refs)


async def _run(argv: list[str], env: Mapping[str, str] | None = None) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(env or os.environ)
        )
    except FileNotFoundError:
        raise SnapshotError(f"{argv[0]} is not installed (the PostgreSQL client tools are needed)") from None
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise SnapshotError(f"{argv[0]} failed: {err.decode(errors='replace').strip()[-2000:]}")
    return out.decode(errors="replace")


# ---- taking a snapshot ----------------------------------------------------------------------------------
async def snapshot(url: str, out: Path) -> SnapshotInfo:
    """Write a consistent image of the database at `url` to `out`; return what it holds."""
    if backend_of(url) == "sqlite":
        return await asyncio.to_thread(_sqlite_snapshot, sqlite_file(url), out)
    return await _pg_snapshot(url, out)


def _sqlite_snapshot(source: Path, out: Path) -> SnapshotInfo:
    if not source.is_file():
        raise SnapshotError(f"the SQLite database {source} does not exist")
    src = sqlite3.connect(source)
    dst = sqlite3.connect(out)
    try:
        src.backup(dst)  # the online backup API: one consistent image, even while a server writes
    finally:
        dst.close()
        src.close()
    return asyncio.run(_sqlite_info(out))


async def _sqlite_info(path: Path) -> SnapshotInfo:
    db = Database(f"sqlite:///{path}")
    try:
        async with db.read() as conn:
            tables = await _counts(conn, "sqlite")
            version = str((await conn.execute(text("SELECT sqlite_version()"))).scalar_one())
            return SnapshotInfo("sqlite", await _revision(conn, tables), tables, version, await _key_refs(conn, tables))
    finally:
        await db.dispose()


async def _pg_snapshot(url: str, out: Path) -> SnapshotInfo:
    db = Database(url, pool_size=1)
    try:
        async with db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            async with conn.begin():
                snapshot_id = str((await conn.execute(text("SELECT pg_export_snapshot()"))).scalar_one())
                tables = await _counts(conn, "postgresql")
                revision = await _revision(conn, tables)
                refs = await _key_refs(conn, tables)
                version = str((await conn.execute(text("SHOW server_version"))).scalar_one())
                target, env = libpq(url)
                # -Z 1: the dump is most of the archive and of the time; level 1 is several times faster than
                # the default 6 and only slightly larger (figures in bench/README.md).
                await _run(["pg_dump", "--format=custom", "--compress=1", "--no-owner", "--no-acl",
                            f"--snapshot={snapshot_id}", f"--file={out}", f"--dbname={target}"], env)
    finally:
        await db.dispose()
    return SnapshotInfo("postgresql", revision, tables, version, refs)


# ---- looking at a database ------------------------------------------------------------------------------
def sqlite_in_use(path: Path) -> bool:
    """Does another process have this WAL-mode SQLite database open (a running server)?

    Every connection to a WAL database holds a shared POSIX lock on the "dead man switch" byte of the -shm
    file (byte 128: SQLite's UNIX_SHM_DMS) while it is open; SQLite itself tests it with an exclusive lock
    to learn whether it is the first connection. The same test here, released at once.
    """
    shm = path.with_name(path.name + "-shm")
    try:
        fd = os.open(shm, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128, os.SEEK_SET)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 128, os.SEEK_SET)
        return False
    finally:
        os.close(fd)


async def inspect(url: str) -> DatabaseState:
    """Tables, row counts and other sessions of the database at `url` (an absent SQLite file is empty)."""
    if backend_of(url) == "sqlite":
        path = sqlite_file(url)
        if not path.exists():
            return DatabaseState({})
        if sqlite_in_use(path):
            return DatabaseState({}, other_sessions=1)  # not even opened: a running server owns it
    db = Database(url, pool_size=1)
    try:
        async with db.read() as conn:
            tables = await _counts(conn, db.dialect)
            others = 0
            if db.dialect == "postgresql":
                others = int((await conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"))).scalar_one())
            return DatabaseState(tables, others)
    finally:
        await db.dispose()


async def revision_and_counts(url: str) -> tuple[str | None, dict[str, int]]:
    db = Database(url, pool_size=1)
    try:
        async with db.read() as conn:
            tables = await _counts(conn, db.dialect)
            return await _revision(conn, tables), tables
    finally:
        await db.dispose()


async def key_rows(url: str) -> list[KeyRow]:
    """Every CA and OCSP responder of the database, with its certificate and key reference."""
    db = Database(url, pool_size=1)
    try:
        async with db.read() as conn:
            tables = set(await _tables(conn, db.dialect))
            found: list[KeyRow] = []
            if "intermediate_cas" in tables:
                rows = await conn.execute(text(
                    "SELECT id, cert_pem, key_driver_id, state FROM intermediate_cas ORDER BY id"))
                found += [KeyRow("ca", r[0], r[1], r[2], r[3]) for r in rows.all()]
            if "ocsp_responders" in tables:
                rows = await conn.execute(text(
                    "SELECT ca_id, cert_pem, key_driver_id FROM ocsp_responders ORDER BY ca_id"))
                found += [KeyRow("ocsp_responder", r[0], r[1], r[2], "active") for r in rows.all()]
            return found
    finally:
        await db.dispose()


# ---- loading a snapshot ---------------------------------------------------------------------------------
async def clear_postgresql(url: str) -> None:
    """Drop every table, sequence and function of the schema that is not part of an extension, in one transaction."""
    db = Database(url, pool_size=1)
    try:
        async with db.engine.begin() as conn:
            statements = list((await conn.execute(text(
                "SELECT format('DROP TABLE IF EXISTS %I.%I CASCADE', schemaname, tablename) FROM pg_tables t "
                "WHERE schemaname = current_schema() AND NOT EXISTS (SELECT 1 FROM pg_depend d "
                "WHERE d.objid = format('%I.%I', schemaname, tablename)::regclass AND d.deptype = 'e') "
                "UNION ALL "
                "SELECT format('DROP SEQUENCE IF EXISTS %I.%I CASCADE', sequence_schema, sequence_name) "
                "FROM information_schema.sequences WHERE sequence_schema = current_schema() "
                "UNION ALL "
                "SELECT format('DROP FUNCTION IF EXISTS %s CASCADE', p.oid::regprocedure) FROM pg_proc p "
                "WHERE p.pronamespace = current_schema()::regnamespace AND NOT EXISTS "
                "(SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')"))).scalars())
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await db.dispose()


async def load_postgresql(url: str, dump: Path, *, jobs: int = 1) -> None:
    """pg_restore `dump` into the (empty) database at `url`: one transaction when jobs == 1."""
    target, env = libpq(url)
    argv = ["pg_restore", "--no-owner", "--no-acl", "--exit-on-error", f"--dbname={target}"]
    argv += ["--single-transaction"] if jobs <= 1 else [f"--jobs={jobs}"]
    await _run([*argv, str(dump)], env)


def install_sqlite(image: Path, url: str, *, keep_old_in: Path | None) -> None:
    """Put the SQLite image in place of the database file at `url` (an atomic rename in its directory).

    The old file and its -wal/-shm go to `keep_old_in` when given, else are deleted.
    """
    target = sqlite_file(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + f".restore-{uuid.uuid4().hex[:8]}")
    shutil.copyfile(image, staging)
    with staging.open("rb+") as handle:
        os.fsync(handle.fileno())
    for suffix in ("", "-wal", "-shm"):
        old = target.with_name(target.name + suffix)
        if old.exists():
            if keep_old_in is not None:
                keep_old_in.mkdir(parents=True, exist_ok=True, mode=0o700)
                shutil.move(str(old), keep_old_in / old.name)
            elif suffix:
                old.unlink()
    os.replace(staging, target)
    os.chmod(target, 0o600)


def check_sqlite_integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


async def create_scratch_database(url: str) -> str:
    """A new, empty PostgreSQL database on the server of `url` (CREATEDB privilege needed); returns its URL."""
    name = f"certctl_verify_{uuid.uuid4().hex[:12]}"
    db = Database(url, pool_size=1)
    try:
        async with db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await db.dispose()
    return with_database(url, name)


async def drop_scratch_database(admin_url: str, scratch_url: str) -> None:
    name = urlsplit(scratch_url).path.lstrip("/")
    if not name.startswith("certctl_verify_"):
        raise SnapshotError(f"refusing to drop '{name}': not a scratch database")
    db = Database(admin_url, pool_size=1)
    try:
        async with db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await db.dispose()
