"""A plain inventory resource: create, get, list, update, delete, each audited in its transaction.

Resources with extra rules subclass `CrudService` and override the hooks
(`prepare_create`, `prepare_update`, `check_delete`, `to_model`); the sequence stays here.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import ColumnElement, Table
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.actor import Actor
from certctl.domain.errors import ConflictError, NotFoundError, ValidationError
from certctl.domain.ids import new_id
from certctl.domain.models.common import PageParams
from certctl.services import audit
from certctl.services.context import ServiceContext
from certctl.store import rows
from certctl.store.rows import Row

M = TypeVar("M", bound=BaseModel)


class CrudService(Generic[M]):
    table: ClassVar[Table]
    model: ClassVar[type[BaseModel]]
    resource: ClassVar[str]  # human name, also the audit resource_type: "team"
    id_prefix: ClassVar[str]
    unique_name: ClassVar[bool] = True

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    # ---- hooks -------------------------------------------------------------------------
    def to_model(self, row: Row) -> M:
        return self.model.model_validate(dict(row))  # type: ignore[return-value]

    async def prepare_create(self, conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
        return values

    async def prepare_update(
        self, conn: AsyncConnection, current: Row, changes: dict[str, Any]
    ) -> dict[str, Any]:
        return changes

    async def check_delete(self, conn: AsyncConnection, current: Row) -> None:
        return None

    def list_filters(self, **filters: Any) -> list[ColumnElement[bool]]:
        return [self.table.c[name] == value for name, value in filters.items() if value is not None]

    def audit_details(self, values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in values.items() if k not in ("created_at", "updated_at")}

    # ---- operations --------------------------------------------------------------------
    async def get(self, item_id: str) -> M:
        async with self.ctx.db.read() as conn:
            row = await rows.get_row(conn, self.table, item_id)
        if row is None:
            raise NotFoundError.of(self.resource, item_id)
        return self.to_model(row)

    async def list(self, page: PageParams, **filters: Any) -> tuple[list[M], int]:
        async with self.ctx.db.read() as conn:
            found, total = await rows.page_rows(
                conn, self.table, *self.list_filters(**filters), limit=page.per_page, offset=page.offset
            )
        return [self.to_model(r) for r in found], total

    async def create(self, actor: Actor, data: BaseModel) -> M:
        now = self.ctx.clock.now()
        values = data.model_dump(exclude_none=True)
        values["id"] = values.get("id") or new_id(self.id_prefix)
        values.update(created_at=now, updated_at=now)
        async with self.ctx.db.transaction() as conn:
            if await rows.exists(conn, self.table, values["id"]):
                raise ConflictError(f"{self.resource} '{values['id']}' already exists")
            if self.unique_name and "name" in values:
                await self._ensure_name_free(conn, values["name"], None)
            values = await self.prepare_create(conn, values)
            await rows.insert_row(conn, self.table, values)
            await audit.record(
                conn, self.ctx.clock, actor, f"{self.resource}_created", self.resource, values["id"],
                self.audit_details(values),
            )
            row = await rows.get_row(conn, self.table, values["id"])
        assert row is not None
        return self.to_model(row)

    async def update(self, actor: Actor, item_id: str, data: BaseModel) -> M:
        changes = data.model_dump(exclude_unset=True)
        if any(value is None for value in changes.values()):
            nulls = sorted(k for k, v in changes.items() if v is None)
            raise ValidationError(f"field(s) {', '.join(nulls)} cannot be null")
        async with self.ctx.db.transaction() as conn:
            current = await rows.get_row_for_update(conn, self.table, item_id)
            if current is None:
                raise NotFoundError.of(self.resource, item_id)
            if self.unique_name and changes.get("name") not in (None, current.get("name")):
                await self._ensure_name_free(conn, changes["name"], item_id)
            changes = await self.prepare_update(conn, current, changes)
            changes["updated_at"] = self.ctx.clock.now()
            await rows.update_row(conn, self.table, item_id, changes)
            await audit.record(
                conn, self.ctx.clock, actor, f"{self.resource}_updated", self.resource, item_id,
                self.audit_details(changes),
            )
            row = await rows.get_row(conn, self.table, item_id)
        assert row is not None
        return self.to_model(row)

    async def delete(self, actor: Actor, item_id: str) -> None:
        async with self.ctx.db.transaction() as conn:
            current = await rows.get_row_for_update(conn, self.table, item_id)
            if current is None:
                raise NotFoundError.of(self.resource, item_id)
            await self.check_delete(conn, current)
            await rows.delete_row(conn, self.table, item_id)
            await audit.record(
                conn, self.ctx.clock, actor, f"{self.resource}_deleted", self.resource, item_id,
                {"name": current.get("name")},
            )

    # ---- shared checks -------------------------------------------------------------------
    async def _ensure_name_free(self, conn: AsyncConnection, name: str, own_id: str | None) -> None:
        clash = await rows.list_rows(conn, self.table, self.table.c.name == name, limit=1)
        if clash and clash[0]["id"] != own_id:
            raise ConflictError(f"a {self.resource} named '{name}' already exists")


async def require_reference(conn: AsyncConnection, table: Table, ref_id: str | None, field: str) -> None:
    """A body field that names another record must name one that exists (400 otherwise)."""
    if ref_id is not None and not await rows.exists(conn, table, ref_id):
        raise ValidationError(f"{field} '{ref_id}' does not exist")


async def refuse_if_referenced(
    conn: AsyncConnection, resource: str, usages: list[tuple[str, Table, ColumnElement[bool]]]
) -> None:
    """Deleting a record still in use is a 409 naming what uses it, never a raw FK error."""
    in_use = []
    for label, table, condition in usages:
        count = await rows.count_rows(conn, table, condition)
        if count:
            in_use.append(f"{count} {label}")
    if in_use:
        raise ConflictError(f"{resource} is still in use by {', '.join(in_use)}")
