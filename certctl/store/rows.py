"""Generic row operations shared by the repositories (Core statements, no ORM overhead)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, Table, bindparam, delete, func, insert, select, update
from sqlalchemy import exists as sql_exists
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import UnaryExpression

Row = RowMapping


# Statements built once per table (or column set) and reused: on the hot paths, building a Core
# statement and its cache key cost more CPU than the round trip to the database.
_STATEMENTS: dict[tuple[Any, ...], Any] = {}


def cached_statement(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = build()
    return stmt


async def insert_row(conn: AsyncConnection, table: Table, values: Mapping[str, Any]) -> None:
    await conn.execute(cached_statement(("insert", table), lambda: insert(table)), dict(values))


async def insert_many(conn: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        await conn.execute(cached_statement(("insert", table), lambda: insert(table)), list(rows))


async def get_row(conn: AsyncConnection, table: Table, row_id: str) -> Row | None:
    stmt = cached_statement(("get", table), lambda: select(table).where(table.c.id == bindparam("_row_id")))
    result = await conn.execute(stmt, {"_row_id": row_id})
    return result.mappings().first()


async def get_row_for_update(conn: AsyncConnection, table: Table, row_id: str) -> Row | None:
    """Lock the row for the rest of the transaction (PostgreSQL; SQLite serializes writers anyway)."""
    if conn.dialect.name != "postgresql":
        return await get_row(conn, table, row_id)
    stmt = cached_statement(("get_for_update", table),
                   lambda: select(table).where(table.c.id == bindparam("_row_id")).with_for_update())
    result = await conn.execute(stmt, {"_row_id": row_id})
    return result.mappings().first()


async def exists(conn: AsyncConnection, table: Table, row_id: str) -> bool:
    result = await conn.execute(select(table.c.id).where(table.c.id == row_id))
    return result.first() is not None


async def missing_references(conn: AsyncConnection, checks: Sequence[tuple[str, Table, str]]) -> list[str]:
    """Of (label, table, id) checks, the labels whose id is not in its table: one round trip for all."""
    if not checks:
        return []
    tables = tuple(table for _, table, _ in checks)
    stmt = cached_statement(("missing_references", tables), lambda: select(*(
        sql_exists().where(table.c.id == bindparam(f"r{i}")).label(f"r{i}") for i, table in enumerate(tables))))
    found = (await conn.execute(stmt, {f"r{i}": ref_id for i, (_, _, ref_id) in enumerate(checks)})).one()
    return [label for (label, _, _), present in zip(checks, found, strict=True) if not present]


async def update_row(conn: AsyncConnection, table: Table, row_id: str, values: Mapping[str, Any]) -> bool:
    columns = tuple(sorted(values))
    stmt = cached_statement(("update", table, columns), lambda: update(table).where(table.c.id == bindparam("_row_id"))
                   .values({c: bindparam(f"_v_{c}") for c in columns}))
    result = await conn.execute(stmt, {"_row_id": row_id, **{f"_v_{c}": values[c] for c in columns}})
    return result.rowcount > 0


async def delete_row(conn: AsyncConnection, table: Table, row_id: str) -> bool:
    result = await conn.execute(delete(table).where(table.c.id == row_id))
    return result.rowcount > 0


async def count_rows(conn: AsyncConnection, table: Table, *where: ColumnElement[bool]) -> int:
    result = await conn.execute(select(func.count()).select_from(table).where(*where))
    return int(result.scalar_one())


async def list_rows(
    conn: AsyncConnection,
    table: Table,
    *where: ColumnElement[bool],
    order_by: Sequence[ColumnElement[Any] | UnaryExpression[Any]] = (),
    limit: int | None = None,
    offset: int = 0,
) -> list[Row]:
    stmt = select(table).where(*where).order_by(*(order_by or (table.c.created_at, table.c.id)))
    if limit is not None:
        stmt = stmt.limit(limit).offset(offset)
    result = await conn.execute(stmt)
    return list(result.mappings().all())


async def page_rows(
    conn: AsyncConnection,
    table: Table,
    *where: ColumnElement[bool],
    limit: int,
    offset: int,
    order_by: Sequence[ColumnElement[Any] | UnaryExpression[Any]] = (),
) -> tuple[list[Row], int]:
    rows = await list_rows(conn, table, *where, order_by=order_by, limit=limit, offset=offset)
    if offset == 0 and len(rows) < limit:
        return rows, len(rows)  # the page holds everything: no second query
    return rows, await count_rows(conn, table, *where)
