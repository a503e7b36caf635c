"""Compliance policy rules (`/policies`) and the violations the engine stored for them.

Creating or changing a rule does not re-evaluate existing certificates here: with up to
millions of certificates that cannot happen inside one request. Certificates are evaluated
by `policy_engine.evaluate_certificate` whenever they are created or changed, so a new or
edited rule shows its findings as certificates are next touched.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.enums import PolicyType
from certctl.domain.errors import NotFoundError
from certctl.domain.models.common import PageParams
from certctl.domain.models.policies import PolicyRule, PolicyViolation
from certctl.services.crud import CrudService
from certctl.services.policy_engine import validate_rule_config
from certctl.store import policies_repo, rows
from certctl.store.rows import Row
from certctl.store.schema import policy_rules


class PolicyRuleService(CrudService[PolicyRule]):
    table = policy_rules
    model = PolicyRule
    resource = "policy_rule"
    id_prefix = "rule"

    async def prepare_create(self, conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
        rule_type = PolicyType(values["type"])
        values["type"] = rule_type.value
        values["severity"] = str(values["severity"])
        values["config"] = validate_rule_config(rule_type, values.get("config", {}))
        return values

    async def prepare_update(
        self, conn: AsyncConnection, current: Row, changes: dict[str, Any]
    ) -> dict[str, Any]:
        if "severity" in changes:
            changes["severity"] = str(changes["severity"])
        if "type" in changes or "config" in changes:
            # A new type is checked against the stored config too, so a rule never holds a config
            # its type cannot read.
            rule_type = PolicyType.parse(str(changes.get("type", current["type"])))
            changes["type"] = rule_type.value
            changes["config"] = validate_rule_config(rule_type, changes.get("config", current["config"]))
        return changes

    async def violations(self, rule_id: str, page: PageParams) -> tuple[list[PolicyViolation], int]:
        async with self.ctx.db.read() as conn:
            if not await rows.exists(conn, policy_rules, rule_id):
                raise NotFoundError.of(self.resource, rule_id)
            found, total = await policies_repo.page_violations_for_rule(
                conn, rule_id, limit=page.per_page, offset=page.offset
            )
        return [PolicyViolation.model_validate(dict(r)) for r in found], total

    async def violations_for_certificate(self, certificate_id: str) -> list[PolicyViolation]:
        async with self.ctx.db.read() as conn:
            found = await policies_repo.list_violations_for_certificate(conn, certificate_id)
        return [PolicyViolation.model_validate(dict(r)) for r in found]
