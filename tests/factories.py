"""Test data through the public API, so every factory call is also a check of the happy path."""

from __future__ import annotations

import itertools
from typing import Any

import httpx

_seq = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_seq)}"


async def create(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(path, json=body)
    assert response.status_code == 201, f"POST {path}: {response.status_code} {response.text}"
    data: dict[str, Any] = response.json()
    return data


async def team(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    return await create(client, "/api/v1/teams", {"name": unique("team"), **overrides})


async def owner(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    body = {"name": unique("owner"), "email": f"{unique('o')}@example.com", **overrides}
    return await create(client, "/api/v1/owners", body)


async def certificate(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    """A Pending managed certificate on the seeded local issuer and default renewal policy.

    A team and an owner are created unless `team_id` / `owner_id` are given.
    """
    team_id = overrides.pop("team_id", None) or (await team(client))["id"]
    owner_id = overrides.pop("owner_id", None) or (await owner(client, team_id=team_id))["id"]
    name = overrides.pop("name", None) or unique("cert")
    body = {
        "name": name,
        "common_name": f"{name}.example.com",
        "owner_id": owner_id,
        "team_id": team_id,
        "issuer_id": "iss-local",
        "renewal_policy_id": "rp-default",
        **overrides,
    }
    return await create(client, "/api/v1/certificates", body)


# ---- store-level seeds (jobs/actions tests) ------------------------------------------------------
# Rows in states the public API cannot produce directly (Active with a version, Expired, EST-sourced,
# agents and targets before their APIs exist). Imports are local to keep this section append-only.

async def _insert(api: Any, table_name: str, values: dict[str, Any]) -> None:
    from certctl.store import rows, schema

    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, getattr(schema, table_name), values)


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def seed_certificate(api: Any, **values: Any) -> dict[str, Any]:
    """An Active certificate expiring in 60 days (override any column, e.g. status, expires_at, source)."""
    from datetime import timedelta

    if "owner_id" not in values or "team_id" not in values:
        t = await team(api.admin)
        values.setdefault("team_id", t["id"])
        values.setdefault("owner_id", (await owner(api.admin, team_id=t["id"]))["id"])
    now = _now()
    name = values.pop("name", None) or unique("seeded-cert")
    row: dict[str, Any] = {
        "id": unique("mc"), "name": name, "common_name": f"{name}.example.com", "sans": [f"{name}.example.com"],
        "environment": "", "issuer_id": "iss-local", "renewal_policy_id": "rp-default",
        "certificate_profile_id": None, "status": "Active", "expires_at": now + timedelta(days=60), "tags": {},
        "source": "", "created_at": now, "updated_at": now, **values,
    }
    await _insert(api, "managed_certificates", row)
    return row


async def seed_version(api: Any, certificate_id: str) -> str:
    from datetime import timedelta

    now = _now()
    version_id = unique("certver")
    await _insert(api, "certificate_versions", {
        "id": version_id, "certificate_id": certificate_id, "serial_number": unique("serial"),
        "not_before": now, "not_after": now + timedelta(days=60), "fingerprint_sha256": unique("fp"),
        "pem_chain": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", "created_at": now,
    })
    return version_id


async def seed_agent(api: Any, **values: Any) -> str:
    now = _now()
    agent_id = values.pop("id", None) or unique("agent")
    await _insert(api, "agents", {
        "id": agent_id, "name": unique("agent-name"), "hostname": "host", "status": "Online",
        "registered_at": now, "created_at": now, "updated_at": now, **values,
    })
    return agent_id


async def seed_target(api: Any, agent_id: str | None = None, **values: Any) -> str:
    now = _now()
    agent_id = agent_id or await seed_agent(api)
    target_id = values.pop("id", None) or unique("target")
    await _insert(api, "deployment_targets", {
        "id": target_id, "name": unique("target-name"), "type": "NGINX", "agent_id": agent_id, "config": {},
        "enabled": True, "created_at": now, "updated_at": now, **values,
    })
    return target_id


async def seed_mapping(api: Any, certificate_id: str, target_id: str) -> None:
    await _insert(api, "certificate_target_mappings",
                  {"certificate_id": certificate_id, "target_id": target_id, "created_at": _now()})


async def seed_profile(api: Any, **values: Any) -> str:
    now = _now()
    profile_id = values.pop("id", None) or unique("prof")
    await _insert(api, "certificate_profiles", {
        "id": profile_id, "name": unique("profile"), "allowed_key_algorithms": [], "allowed_ekus": ["serverAuth"],
        "required_san_patterns": [], "required_csr_attributes": [], "requires_approval": False,
        "created_at": now, "updated_at": now, **values,
    })
    return profile_id


async def seed_renewal_policy(api: Any, **values: Any) -> str:
    now = _now()
    policy_id = values.pop("id", None) or unique("rp")
    await _insert(api, "renewal_policies", {
        "id": policy_id, "name": unique("policy"), "alert_thresholds_days": [30, 14, 7, 0],
        "alert_channels": {}, "alert_severity_map": {}, "created_at": now, "updated_at": now, **values,
    })
    return policy_id


async def profile(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    return await create(client, "/api/v1/profiles", {"name": unique("profile"), **overrides})


async def renewal_policy(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    return await create(client, "/api/v1/renewal-policies", {"name": unique("renewal"), **overrides})


async def policy_rule(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    body = {"name": unique("rule"), "type": "AllowedEnvironments", "config": {"allowed": ["prod"]}, **overrides}
    return await create(client, "/api/v1/policies", body)


async def agent_group(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    return await create(client, "/api/v1/agent-groups", {"name": unique("group"), **overrides})


async def issuer(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    """A GenericCA (local CA) issuer unless `type`/`config` say otherwise."""
    body = {"name": unique("issuer"), "type": "GenericCA", "config": {}, **overrides}
    return await create(client, "/api/v1/issuers", body)


async def agent(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    body = {"name": unique("agent"), "hostname": f"{unique('host')}.example.com", **overrides}
    return await create(client, "/api/v1/agents", body)


NGINX_CONFIG = {"cert_path": "/etc/nginx/tls/cert.pem", "key_path": "/etc/nginx/tls/key.pem",
                "reload_command": "systemctl reload nginx"}


async def target(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    """An NGINX target; a new agent is registered unless `agent_id` is given."""
    agent_id = overrides.pop("agent_id", None) or (await agent(client))["id"]
    body = {"name": unique("target"), "type": "NGINX", "agent_id": agent_id, "config": dict(NGINX_CONFIG), **overrides}
    return await create(client, "/api/v1/targets", body)
