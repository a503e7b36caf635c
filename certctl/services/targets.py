"""Deployment targets: inventory with sealed configs, owned by one live agent each.

Deleting a target retires it (soft delete, like agents): its rows stay for job and audit
history, it leaves the list, and its name becomes free again for that agent.

Configs of types the agent deploys with a connector (`certctl.connectors.targets.registry`: NGINX,
Apache, HAProxy, Traefik, Caddy, Envoy, Postfix, Dovecot) are validated by that connector and stored
with its defaults applied, so what the agent runs is what the API showed (the reference applied
defaults only on a path its agents never took). Other types keep the declarative `ConfigRules`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.connectors.targets.registry import find_connector
from certctl.domain.actor import Actor
from certctl.domain.enums import TargetType
from certctl.domain.errors import ConflictError, NotFoundError, ValidationError
from certctl.domain.models.common import PageParams
from certctl.domain.models.issuers import ConnectionTestResult
from certctl.domain.models.targets import DeploymentTarget
from certctl.services import audit
from certctl.services.connector_config import (
    ConfigRules,
    config_keys,
    config_problems,
    merge_back,
    require_valid,
    sealed_columns,
    unseal,
    without_placeholders,
)
from certctl.services.crud import CrudService
from certctl.store import rows, targets_repo
from certctl.store.rows import Row
from certctl.store.schema import agents, deployment_targets


def _ssh(config: Mapping[str, Any]) -> list[str]:
    if config.get("auth_method", "key") == "password":
        return [] if config.get("password") else ["password is required when auth_method is 'password'"]
    if not (config.get("private_key_path") or config.get("private_key")):
        return ["private_key_path (or private_key) is required when auth_method is 'key'"]
    return []


# Types without an agent connector here (see certctl.connectors.targets.registry for the others).
TARGET_RULES: dict[TargetType, ConfigRules] = {
    TargetType.F5: ConfigRules(
        required=("host", "username", "password", "ssl_profile"), ports=("port",), positive_ints=("timeout",)
    ),
    TargetType.IIS: ConfigRules(required=("site_name",), ports=("port",), choices={"mode": ("local", "winrm")}),
    TargetType.SSH: ConfigRules(
        required=("host", "user", "cert_path", "key_path"),
        ports=("port",),
        choices={"auth_method": ("key", "password")},
        check=_ssh,
    ),
    TargetType.WIN_CERT_STORE: ConfigRules(choices={"mode": ("local", "winrm")}),
    TargetType.JAVA_KEYSTORE: ConfigRules(
        required=("keystore_path", "keystore_password"), choices={"keystore_type": ("PKCS12", "JKS")}
    ),
    TargetType.KUBERNETES_SECRETS: ConfigRules(required=("namespace", "secret_name")),
    TargetType.AWS_ACM: ConfigRules(required=("region",)),
    TargetType.AZURE_KEY_VAULT: ConfigRules(
        required=("vault_url", "certificate_name"), urls={"vault_url": ("https",)}
    ),
}


def validate_target_config(target_type: TargetType, config: Mapping[str, Any]) -> dict[str, Any]:
    """The config to store: validated, with the connector's defaults applied where there is a connector."""
    connector = find_connector(target_type.value)
    if connector is not None:
        return connector.validate_config(config)
    require_valid(f"{target_type.value} target", TARGET_RULES[target_type], config)
    return dict(config)


def target_config_problems(target_type: str, config: Mapping[str, Any]) -> list[str]:
    try:
        kind = TargetType.parse(target_type)
    except ValueError:
        return [f"unknown target type '{target_type}'"]
    connector = find_connector(kind.value)
    if connector is None:
        return config_problems(TARGET_RULES[kind], config)
    try:
        connector.validate_config(config)
    except ValidationError as exc:
        return [exc.message]
    return []


class TargetService(CrudService[DeploymentTarget]):
    table = deployment_targets
    model = DeploymentTarget
    resource = "target"
    id_prefix = "target"
    unique_name = False  # unique per agent among live targets, checked below

    async def list(self, page: PageParams, **filters: Any) -> tuple[list[DeploymentTarget], int]:
        """Live targets only; retired ones stay readable by id."""
        async with self.ctx.db.read() as conn:
            found, total = await targets_repo.page_live(
                conn, agent_id=filters.get("agent_id"), limit=page.per_page, offset=page.offset
            )
        return [self.to_model(r) for r in found], total

    async def prepare_create(self, conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
        await _require_live_agent(conn, values["agent_id"])
        await _ensure_name_free_for_agent(conn, values["agent_id"], values["name"], None)
        target_type = TargetType(values["type"])
        config = validate_target_config(target_type, without_placeholders(values.get("config", {})))
        values.update(type=target_type.value, **sealed_columns(self.ctx.sealer, config))
        return values

    async def prepare_update(self, conn: AsyncConnection, current: Row, changes: dict[str, Any]) -> dict[str, Any]:
        if current["retired_at"] is not None:
            raise ConflictError(f"target '{current['id']}' is retired and cannot be changed")
        agent_id = changes.get("agent_id", current["agent_id"])
        if agent_id != current["agent_id"]:
            await _require_live_agent(conn, agent_id)
        name = changes.get("name", current["name"])
        if (agent_id, name) != (current["agent_id"], current["name"]):
            await _ensure_name_free_for_agent(conn, agent_id, name, current["id"])
        if "type" in changes:
            changes["type"] = TargetType(changes["type"]).value
        if "config" in changes or "type" in changes:
            # Like connector_config.apply_config_change, but the stored config is the validated one (with
            # defaults), so a type change also stores the new type's defaults.
            stored = unseal(self.ctx.sealer, current, "target")
            config = merge_back(changes["config"], stored) if "config" in changes else stored
            config = validate_target_config(_target_type(changes.get("type", current["type"])), config)
            changes.update(sealed_columns(self.ctx.sealer, config))
        return changes

    def audit_details(self, values: dict[str, Any]) -> dict[str, Any]:
        details: dict[str, Any] = {k: str(values[k]) for k in ("name", "type", "agent_id") if k in values}
        if "enabled" in values:
            details["enabled"] = bool(values["enabled"])
        if "config" in values:
            details["config_fields"] = config_keys(values["config"])
        return details

    async def delete(self, actor: Actor, item_id: str, reason: str | None = None) -> None:
        """Retire the target. Refused while it has unfinished jobs; a second call changes nothing."""
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            current = await rows.get_row_for_update(conn, deployment_targets, item_id)
            if current is None:
                raise NotFoundError.of("target", item_id)
            if current["retired_at"] is not None:
                return
            unfinished = await targets_repo.unfinished_job_count(conn, item_id)
            if unfinished:
                raise ConflictError(
                    f"target '{item_id}' has {unfinished} unfinished job(s); cancel them or let them finish first"
                )
            await rows.update_row(conn, deployment_targets, item_id, {
                "retired_at": now, "retired_reason": reason or "deleted", "updated_at": now,
            })
            await audit.record(
                conn, self.ctx.clock, actor, "target_retired", "target", item_id,
                {"name": current["name"], "agent_id": current["agent_id"], "reason": reason or "deleted"},
            )

    # ---- POST /targets/{id}/test ------------------------------------------------------------------
    async def test(self, actor: Actor, target_id: str) -> ConnectionTestResult:
        """Check the stored config and that the owning agent is alive; record and audit the result.

        The server never connects to a target (agents pull their work), so the owning agent's
        recent heartbeat is the reachability signal. Always answers 200; `status` says how it went.
        """
        async with self.ctx.db.read() as conn:
            row = await rows.get_row(conn, deployment_targets, target_id)
            if row is None:
                raise NotFoundError.of("target", target_id)
            agent = await rows.get_row(conn, agents, row["agent_id"])
        if row["retired_at"] is not None:
            raise ConflictError(f"target '{target_id}' is retired")
        problems = target_config_problems(row["type"], unseal(self.ctx.sealer, row, "target"))
        offline_after = timedelta(seconds=self.ctx.settings.agent_offline_after_seconds)
        problems += _agent_problems(row["agent_id"], agent, self.ctx.clock.now(), offline_after)
        result = ConnectionTestResult(
            status="failed" if problems else "success",
            message="; ".join(problems) if problems else f"configuration is complete and agent "
            f"'{row['agent_id']}' is online",
        )
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            if not await rows.update_row(conn, deployment_targets, target_id,
                                         {"last_tested_at": now, "test_status": result.status}):
                raise NotFoundError.of("target", target_id)
            await audit.record(
                conn, self.ctx.clock, actor, "target_tested", "target", target_id,
                {"status": result.status, "message": result.message},
            )
        return result


def _agent_problems(agent_id: str, agent: Row | None, now: datetime, offline_after: timedelta) -> list[str]:
    if agent is None:
        return [f"agent '{agent_id}' does not exist"]
    if agent["retired_at"] is not None:
        return [f"agent '{agent_id}' is retired"]
    seen = agent["last_heartbeat_at"]
    if seen is None:
        return [f"agent '{agent_id}' has never sent a heartbeat"]
    if now - seen > offline_after:
        return [f"agent '{agent_id}' has not sent a heartbeat since {seen.isoformat()}"]
    return []


async def _require_live_agent(conn: AsyncConnection, agent_id: str) -> None:
    agent = await rows.get_row(conn, agents, agent_id)
    if agent is None:
        raise ValidationError(f"agent_id '{agent_id}' does not exist")
    if agent["retired_at"] is not None:
        raise ValidationError(f"agent_id '{agent_id}' names a retired agent")


async def _ensure_name_free_for_agent(conn: AsyncConnection, agent_id: str, name: str, own_id: str | None) -> None:
    holder = await targets_repo.live_name_owner(conn, agent_id, name)
    if holder is not None and holder != own_id:
        raise ConflictError(f"agent '{agent_id}' already has a target named '{name}'")


def _target_type(value: str) -> TargetType:
    try:
        return TargetType.parse(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
