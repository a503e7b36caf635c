"""Renewal policies (`rp-*`), referenced by every managed certificate."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.actor import Actor
from certctl.domain.ids import slugify
from certctl.domain.models.renewal_policies import (
    DEFAULT_ALERT_CHANNELS,
    DEFAULT_ALERT_SEVERITY_MAP,
    DEFAULT_ALERT_THRESHOLDS,
    RenewalPolicy,
)
from certctl.services.crud import CrudService, refuse_if_referenced
from certctl.store import rows
from certctl.store.rows import Row
from certctl.store.schema import managed_certificates, renewal_policies

_SLUG_MAX = 64


class RenewalPolicyService(CrudService[RenewalPolicy]):
    table = renewal_policies
    model = RenewalPolicy
    resource = "renewal_policy"
    id_prefix = "rp"

    async def create(self, actor: Actor, data: BaseModel) -> RenewalPolicy:
        if getattr(data, "id", None) is None:
            data = data.model_copy(update={"id": await self._free_slug_id(str(getattr(data, "name", "")))})
        return await super().create(actor, data)

    async def _free_slug_id(self, name: str) -> str:
        """`rp-<slug(name)>`; a different name with the same slug gets a numeric suffix."""
        base = f"rp-{slugify(name)[:_SLUG_MAX].rstrip('-')}"
        candidate, n = base, 2
        async with self.ctx.db.read() as conn:
            while await rows.exists(conn, renewal_policies, candidate):
                candidate, n = f"{base}-{n}", n + 1
        return candidate

    async def prepare_create(self, conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
        values.setdefault("renewal_window_days", 30)
        values.setdefault("auto_renew", True)
        values.setdefault("max_retries", 3)
        values.setdefault("retry_interval_seconds", 3600)
        values.setdefault("alert_thresholds_days", list(DEFAULT_ALERT_THRESHOLDS))
        # Tiers left out keep their default channel (Email); an explicit [] silences a tier.
        values["alert_channels"] = {**DEFAULT_ALERT_CHANNELS, **values.get("alert_channels", {})}
        values.setdefault("alert_severity_map", dict(DEFAULT_ALERT_SEVERITY_MAP))
        return values

    async def check_delete(self, conn: AsyncConnection, current: Row) -> None:
        await refuse_if_referenced(
            conn, f"renewal policy '{current['id']}'",
            [("certificates", managed_certificates, managed_certificates.c.renewal_policy_id == current["id"])],
        )
