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

