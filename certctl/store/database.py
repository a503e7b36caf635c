"""Engine creation and transactions for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from certctl.domain.errors import ConflictError, UnavailableError
from certctl.observability import tracing


def async_url(url: str) -> str:
    """Turn a user-facing URL (postgresql://, sqlite:///) into its async-driver form."""
    if url.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(url)
        # libpq options asyncpg does not understand; sslmode maps to asyncpg's `ssl`.
        query = dict(parse_qsl(parts.query))
        sslmode = query.pop("sslmode", None)
        if sslmode and sslmode != "disable":
            query["ssl"] = sslmode
        return urlunsplit(("postgresql+asyncpg", parts.netloc, parts.path, urlencode(query), ""))
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    return url


class Database:
    """Owns the engine; hands out transactions. Only the store package uses the connection."""

    def __init__(self, url: str, *, pool_size: int = 20) -> None:
        self.url = async_url(url)
        self.dialect = "sqlite" if self.url.startswith("sqlite") else "postgresql"
        kwargs: dict[str, Any] = {}
        if self.dialect == "postgresql":
            # A fixed pool: overflow connections opened and closed under bursts cost more than waiting.
            kwargs.update(pool_size=pool_size, max_overflow=0, pool_pre_ping=False)
        elif ":memory:" in self.url:
            kwargs.update(poolclass=NullPool)
        # orjson: several times faster than the stdlib for JSON columns, and it knows datetimes.
        kwargs.update(json_serializer=_json_dumps, json_deserializer=orjson.loads)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_on_connect)
            event.listen(self.engine.sync_engine, "begin", _sqlite_on_begin)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One unit of work; integrity violations become a 409 with a readable message.

        Traced as one `db.transaction` span (commit included); `tracing.after_commit` callbacks run once it commits.
        """
        with tracing.db_transaction(self.dialect):  # the span includes waiting for a pooled connection
            async with self._connection() as conn:
                try:
                    # SQLite: take the write lock up front (BEGIN IMMEDIATE) so two writers queue on
                    # busy_timeout instead of deadlocking when both try to upgrade a read lock.
                    await conn.execution_options(certctl_write=True)
                    async with conn.begin():
                        yield conn
                except IntegrityError as exc:
                    raise ConflictError(describe_integrity_error(exc)) from exc

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self._connection() as conn:
            yield conn

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection. Not reaching the database, or losing it mid-way, is a 503."""
        conn = self.engine.connect()
        try:
            await conn.start()
        except (DBAPIError, PoolTimeout, OSError) as exc:
            raise UnavailableError("the database is unavailable; retry shortly") from exc
        try:
            yield conn
        except DBAPIError as exc:
            if is_storage_full(exc):
                raise UnavailableError(STORAGE_FULL) from exc
            if is_unreachable(exc):
                raise UnavailableError("the database is unavailable; retry shortly") from exc
            raise
        finally:
            await conn.close()

    async def ping(self) -> None:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # any driver error means "not ready"
            raise UnavailableError("database unreachable") from exc

    async def dispose(self) -> None:
        await self.engine.dispose()


# SQLSTATE classes meaning "the database cannot serve you now": 08 connection exception,
# 53 insufficient resources (e.g. 53300 too many connections), 57 operator intervention (shutdown).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")


STORAGE_FULL = "the database's storage is full: nothing of this request was stored; free space and retry"


def is_storage_full(exc: DBAPIError) -> bool:
    """No room left where the database writes: SQLite's SQLITE_FULL, PostgreSQL's disk_full (53100)."""
    if getattr(exc.orig, "sqlstate", None) == "53100":
        return True
    return isinstance(exc, OperationalError) and "database or disk is full" in str(exc.orig)


def is_unreachable(exc: DBAPIError) -> bool:
    """A failure to reach or use the database at all (a 503), as opposed to a bad statement (a bug)."""
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if isinstance(sqlstate, str):
        return sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    # SQLite: a write lock held past busy_timeout.
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


async def driver_connection(conn: AsyncConnection) -> Any:
    """The driver's own connection (asyncpg) under `conn`, for statements prepared and run without SQLAlchemy."""
    return (await conn.get_raw_connection()).driver_connection


# Driver errors that mean the connection or the server is gone (a 503, and the connection is not reused).
DRIVER_UNAVAILABLE = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
                      asyncpg.AdminShutdownError, OSError)


async def driver_call(conn: AsyncConnection | asyncpg.Connection, call: Any) -> Any:
    """Await a call on a driver connection (the one under a SQLAlchemy connection `conn`, or `conn` itself) with
    driver errors mapped as the store maps them elsewhere: a full database or an unreachable one is a 503, and a
    broken connection is not used again."""
    try:
        return await call
    except asyncpg.DiskFullError:
        raise UnavailableError(STORAGE_FULL) from None
    except DRIVER_UNAVAILABLE as exc:
        if isinstance(conn, asyncpg.Connection):
            conn.terminate()
        else:
            await conn.invalidate()
        raise UnavailableError("the database is unavailable; retry shortly") from exc


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (the driver's implicit BEGIN is DEFERRED).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    # Reads stay in autocommit: each SELECT sees a consistent WAL snapshot and holds no lock.
    if conn.get_execution_options().get("certctl_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


_PG_UNIQUE = re.compile(r"Key \((?P<cols>[^)]*)\)=\((?P<vals>.*)\) already exists")
_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: (?P<cols>[\w., ]+)")
_PG_FK_MISSING = re.compile(r'Key \((?P<col>[^)]*)\)=\((?P<val>[^)]*)\) is not present in table "(?P<table>\w+)"')
_PG_FK_INUSE = re.compile(r'is still referenced from table "(?P<table>\w+)"')


def describe_integrity_error(exc: IntegrityError) -> str:
    """A message a person understands, from either back end's constraint error."""
    raw = str(exc.orig) if exc.orig is not None else str(exc)
    if m := _PG_UNIQUE.search(raw):
        return f"a record with {m['cols']} '{m['vals']}' already exists"
    if m := _SQLITE_UNIQUE.search(raw):
        cols = ", ".join(c.split(".")[-1] for c in m["cols"].split(","))
        return f"a record with the same {cols.strip()} already exists"
    if m := _PG_FK_MISSING.search(raw):
        return f"{m['col']} '{m['val']}' does not exist"
    if m := _PG_FK_INUSE.search(raw):
        return f"the record is still referenced by {m['table'].replace('_', ' ')}"
    if "FOREIGN KEY" in raw.upper():
        return "a referenced record does not exist, or this record is still referenced by others"
    return "the change conflicts with existing data"
