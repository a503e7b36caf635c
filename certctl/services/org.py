"""Teams and owners."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.models.org import Owner, Team
from certctl.services.crud import CrudService, refuse_if_referenced, require_reference
from certctl.store.rows import Row
from certctl.store.schema import managed_certificates, owners, teams


class TeamService(CrudService[Team]):
    table = teams
    model = Team
    resource = "team"
    id_prefix = "team"

    async def check_delete(self, conn: AsyncConnection, current: Row) -> None:
        # The reference cascades a team delete into its certificates; we refuse instead.
        await refuse_if_referenced(
            conn, f"team '{current['id']}'",
            [
                ("certificates", managed_certificates, managed_certificates.c.team_id == current["id"]),
                ("owners", owners, owners.c.team_id == current["id"]),
            ],
        )


class OwnerService(CrudService[Owner]):
    table = owners
    model = Owner
    resource = "owner"
    id_prefix = "owner"
    unique_name = False

    async def prepare_create(self, conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
        await require_reference(conn, teams, values.get("team_id"), "team_id")
        values.setdefault("email", "")
        return values

    async def prepare_update(
        self, conn: AsyncConnection, current: Row, changes: dict[str, Any]
    ) -> dict[str, Any]:
        await require_reference(conn, teams, changes.get("team_id"), "team_id")
        return changes

    async def check_delete(self, conn: AsyncConnection, current: Row) -> None:
        await refuse_if_referenced(
            conn, f"owner '{current['id']}'",
            [("certificates", managed_certificates, managed_certificates.c.owner_id == current["id"])],
        )
