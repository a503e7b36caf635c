"""Agent groups: CRUD, CIDR validation, dynamic membership with includes/excludes, auth and audit."""

from __future__ import annotations

from typing import Any

import pytest

from certctl.domain.actor import Actor
from certctl.domain.errors import NotFoundError, ValidationError
from certctl.domain.models.agent_groups import MembershipType
from certctl.store import rows
from certctl.store.schema import agents
from tests import factories
from tests.conftest import Api

ALICE = Actor("alice", admin=True)


async def insert_agent(api: Api, agent_id: str, **values: Any) -> None:
    now = api.services.ctx.clock.now()
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, agents, {
            "id": agent_id, "name": values.pop("name", agent_id), "hostname": f"{agent_id}.local",
            "status": "Online", "registered_at": now, "os": "linux", "architecture": "amd64",
            "ip_address": "10.1.2.3", "version": "1.4.0", "created_at": now, "updated_at": now, **values,
        })


async def member_ids(api: Api, group_id: str, **params: Any) -> list[str]:
    response = await api.user.get(f"/api/v1/agent-groups/{group_id}/members", params=params)
    assert response.status_code == 200, response.text
    return [a["id"] for a in response.json()["data"]]


async def test_agent_group_crud_and_audit(api: Api) -> None:
    created = await factories.agent_group(api.admin, name="linux-dc1", match_os="linux", match_ip_cidr="10.1.2.3/16")
    assert created["id"].startswith("ag-")
    assert created["match_ip_cidr"] == "10.1.0.0/16"  # normalised: host bits dropped
    assert created["match_architecture"] == "" and created["match_version"] == ""
    assert created["enabled"] is True and created["description"] == ""

    got = await api.user.get(f"/api/v1/agent-groups/{created['id']}")
    assert got.status_code == 200 and got.json() == created
    listed = (await api.user.get("/api/v1/agent-groups")).json()
    assert listed["total"] == 1 and listed["data"] == [created]

    updated = await api.admin.put(
        f"/api/v1/agent-groups/{created['id']}", json={"match_ip_cidr": "fd00::/8", "match_os": ""}
    )
    assert updated.status_code == 200
    assert updated.json()["match_ip_cidr"] == "fd00::/8" and updated.json()["match_os"] == ""

    assert (await api.admin.delete(f"/api/v1/agent-groups/{created['id']}")).status_code == 204
    assert (await api.admin.get(f"/api/v1/agent-groups/{created['id']}")).status_code == 404
    assert set(await api.audit_actions("agent_group")) == {
        "agent_group_created", "agent_group_updated", "agent_group_deleted",
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, "name"),
        ({"name": 3}, "name"),
        ({"name": "g", "match_ip_cidr": "10.0.0.0/33"}, "CIDR"),
        ({"name": "g", "match_ip_cidr": "not-a-network"}, "CIDR"),
        ({"name": "g", "match_ip_cidr": "10.0.0.0/8; DROP TABLE"}, "CIDR"),
        ({"name": "g", "enabled": "sometimes"}, "enabled"),
        ({"name": "g", "match_hostname": "x"}, "match_hostname"),
    ],
)
async def test_agent_group_bad_input(api: Api, body: dict[str, object], expected: str) -> None:
    response = await api.admin.post("/api/v1/agent-groups", json=body)
    assert response.status_code == 400, response.text
    assert expected in response.json()["message"]
    assert (await api.admin.get("/api/v1/agent-groups")).json()["total"] == 0, "bad input left rows behind"


async def test_agent_group_update_and_lookup_errors(api: Api) -> None:
    created = await factories.agent_group(api.admin, name="g1")
    bad = await api.admin.put(f"/api/v1/agent-groups/{created['id']}", json={"match_ip_cidr": "300.1.1.0/24"})
    assert bad.status_code == 400 and "CIDR" in bad.json()["message"]
    await factories.agent_group(api.admin, name="g2")
    clash = await api.admin.put(f"/api/v1/agent-groups/{created['id']}", json={"name": "g2"})
    assert clash.status_code == 409
    duplicate = await api.admin.post("/api/v1/agent-groups", json={"name": "g1"})
    assert duplicate.status_code == 409 and "g1" in duplicate.json()["message"]
    assert (await api.admin.put("/api/v1/agent-groups/nope", json={"enabled": False})).status_code == 404
    assert (await api.admin.delete("/api/v1/agent-groups/nope")).status_code == 404
    assert (await api.user.get("/api/v1/agent-groups/nope/members")).status_code == 404


async def test_members_match_every_criterion_with_real_cidr_containment(api: Api) -> None:
    await insert_agent(api, "a-match", ip_address="10.1.200.7", os="Linux")
    await insert_agent(api, "b-other-net", ip_address="10.2.0.1")
    # "10.10.0.5" starts with the same characters as "10.1"; a string comparison would get it wrong.
    await insert_agent(api, "c-prefix-trap", ip_address="10.10.0.5")
    await insert_agent(api, "d-windows", ip_address="10.1.0.9", os="windows")
    await insert_agent(api, "e-arm", ip_address="10.1.0.10", architecture="arm64")
    await insert_agent(api, "f-old", ip_address="10.1.0.11", version="1.3.9")
    await insert_agent(api, "g-no-ip", ip_address="")
    await insert_agent(api, "h-v6", ip_address="fd00::1")
    await insert_agent(api, "i-retired", ip_address="10.1.0.12", retired_at=api.services.ctx.clock.now())
    group = await factories.agent_group(
        api.admin, match_os="linux", match_architecture="AMD64", match_ip_cidr="10.1.0.0/16", match_version="1.4.0"
    )
    assert await member_ids(api, group["id"]) == ["a-match"]

    only_net = await factories.agent_group(api.admin, match_ip_cidr="10.1.0.0/16")
    assert await member_ids(api, only_net["id"]) == ["a-match", "d-windows", "e-arm", "f-old"]
    v6 = await factories.agent_group(api.admin, match_ip_cidr="fd00::/8")
    assert await member_ids(api, v6["id"]) == ["h-v6"]
    by_os = await factories.agent_group(api.admin, match_os="windows")
    assert await member_ids(api, by_os["id"]) == ["d-windows"]


async def test_members_include_and_exclude_rows(api: Api) -> None:
    for agent_id, ip in [("a", "10.1.0.1"), ("b", "10.1.0.2"), ("c", "192.168.0.3"), ("d", "10.1.0.4")]:
        await insert_agent(api, agent_id, ip_address=ip)
    group = await factories.agent_group(api.admin, match_ip_cidr="10.1.0.0/24")
    service = api.services.agent_groups
    await service.set_member(ALICE, group["id"], "c", MembershipType.INCLUDE)  # outside the network, pinned in
    await service.set_member(ALICE, group["id"], "b", MembershipType.EXCLUDE)  # inside, pinned out
    assert await member_ids(api, group["id"]) == ["a", "c", "d"]

    # Switching a pin replaces the row; removing it returns the agent to its criteria.
    await service.set_member(ALICE, group["id"], "c", MembershipType.EXCLUDE)
    await service.remove_member(ALICE, group["id"], "b")
    assert await member_ids(api, group["id"]) == ["a", "b", "d"]
    actions = await api.audit_actions("agent_group")
    assert actions.count("agent_group_member_set") == 3 and actions.count("agent_group_member_removed") == 1

    with pytest.raises(ValidationError):
        await service.set_member(ALICE, group["id"], "missing", MembershipType.INCLUDE)
    with pytest.raises(NotFoundError):
        await service.set_member(ALICE, "nope", "a", MembershipType.INCLUDE)


async def test_group_without_criteria_or_disabled_has_only_includes(api: Api) -> None:
    await insert_agent(api, "a")
    await insert_agent(api, "b")
    empty = await factories.agent_group(api.admin)
    assert await member_ids(api, empty["id"]) == []
    await api.services.agent_groups.set_member(ALICE, empty["id"], "b", MembershipType.INCLUDE)
    assert await member_ids(api, empty["id"]) == ["b"]

    disabled = await factories.agent_group(api.admin, match_os="linux", enabled=False)
    assert await member_ids(api, disabled["id"]) == []
    enabled = await api.admin.put(f"/api/v1/agent-groups/{disabled['id']}", json={"enabled": True})
    assert enabled.status_code == 200
    assert await member_ids(api, disabled["id"]) == ["a", "b"]


async def test_members_are_paged(api: Api) -> None:
    for n in range(5):
        await insert_agent(api, f"agent-{n}", ip_address=f"10.9.0.{n + 1}")
    group = await factories.agent_group(api.admin, match_ip_cidr="10.9.0.0/29")
    response = await api.user.get(f"/api/v1/agent-groups/{group['id']}/members", params={"per_page": 2, "page": 2})
    page = response.json()
    assert page["total"] == 5 and page["page"] == 2 and page["per_page"] == 2
    assert [a["id"] for a in page["data"]] == ["agent-2", "agent-3"]
    member = page["data"][0]
    assert "api_key_hash" not in member
    assert member["ip_address"] == "10.9.0.3" and member["status"] == "Online" and member["retired_at"] is None
    assert await member_ids(api, group["id"], per_page=2, page=3) == ["agent-4"]


async def test_agent_group_auth(api: Api) -> None:
    assert (await api.anon.get("/api/v1/agent-groups")).status_code == 401
    assert (await api.anon.get("/api/v1/agent-groups/x/members")).status_code == 401
    assert (await api.anon.post("/api/v1/agent-groups", json={"name": "x"})).status_code == 401
    assert (await api.user.post("/api/v1/agent-groups", json={"name": "x"})).status_code == 201
