"""Teams and owners: CRUD, bad input, conflicts, and the audit events they leave."""

from __future__ import annotations

from tests import factories
from tests.conftest import Api


async def test_team_crud_and_audit(api: Api) -> None:
    created = await factories.team(api.admin, name="platform", description="Platform team")
    assert created["id"].startswith("team-")
    assert created["name"] == "platform"

    got = await api.admin.get(f"/api/v1/teams/{created['id']}")
    assert got.status_code == 200 and got.json() == created

    listed = (await api.admin.get("/api/v1/teams")).json()
    assert listed["total"] == 1 and listed["page"] == 1 and listed["per_page"] == 50
    assert [t["id"] for t in listed["data"]] == [created["id"]]

    updated = await api.admin.put(f"/api/v1/teams/{created['id']}", json={"description": "Infra"})
    assert updated.status_code == 200
    assert updated.json()["description"] == "Infra" and updated.json()["name"] == "platform"

    deleted = await api.admin.delete(f"/api/v1/teams/{created['id']}")
    assert deleted.status_code == 204
    assert (await api.admin.get(f"/api/v1/teams/{created['id']}")).status_code == 404

    actions = await api.audit_actions("team")
    assert set(actions) == {"team_created", "team_updated", "team_deleted"}


async def test_team_client_supplied_id(api: Api) -> None:
    created = await factories.team(api.admin, id="t-platform")
    assert created["id"] == "t-platform"
    again = await api.admin.post("/api/v1/teams", json={"id": "t-platform", "name": "other"})
    assert again.status_code == 409


async def test_team_bad_input(api: Api) -> None:
    missing = await api.admin.post("/api/v1/teams", json={})
    assert missing.status_code == 400
    body = missing.json()
    assert body["error"] == "Bad Request" and "name" in body["message"] and body["request_id"]

    wrong_type = await api.admin.post("/api/v1/teams", json={"name": 5})
    assert wrong_type.status_code == 400

    unknown_field = await api.admin.post("/api/v1/teams", json={"name": "x", "colour": "red"})
    assert unknown_field.status_code == 400 and "colour" in unknown_field.json()["message"]

    not_json = await api.admin.post(
        "/api/v1/teams", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400

    assert (await api.admin.get("/api/v1/teams/nope")).status_code == 404
    assert (await api.admin.put("/api/v1/teams/nope", json={"name": "x"})).status_code == 404
    assert (await api.admin.delete("/api/v1/teams/nope")).status_code == 404
    assert (await api.admin.get("/api/v1/teams")).json()["total"] == 0, "bad input left rows behind"


async def test_team_duplicate_name_is_409(api: Api) -> None:
    await factories.team(api.admin, name="dup")
    clash = await api.admin.post("/api/v1/teams", json={"name": "dup"})
    assert clash.status_code == 409
    assert "dup" in clash.json()["message"]
    other = await factories.team(api.admin, name="other")
    rename = await api.admin.put(f"/api/v1/teams/{other['id']}", json={"name": "dup"})
    assert rename.status_code == 409


async def test_team_in_use_cannot_be_deleted(api: Api) -> None:
    team = await factories.team(api.admin)
    await factories.owner(api.admin, team_id=team["id"])
    response = await api.admin.delete(f"/api/v1/teams/{team['id']}")
    assert response.status_code == 409
    assert "owners" in response.json()["message"]


async def test_owner_crud_and_references(api: Api) -> None:
    team = await factories.team(api.admin)
    owner = await factories.owner(api.admin, name="Alice", email="alice@example.com", team_id=team["id"])
    assert owner["team_id"] == team["id"] and owner["email"] == "alice@example.com"

    bad_team = await api.admin.post("/api/v1/owners", json={"name": "x", "team_id": "missing"})
    assert bad_team.status_code == 400 and "team_id" in bad_team.json()["message"]

    bad_email = await api.admin.post("/api/v1/owners", json={"name": "x", "email": "not-an-email"})
    assert bad_email.status_code == 400

    moved = await api.admin.put(f"/api/v1/owners/{owner['id']}", json={"team_id": "missing"})
    assert moved.status_code == 400
    null_name = await api.admin.put(f"/api/v1/owners/{owner['id']}", json={"name": None})
    assert null_name.status_code == 400

    assert (await api.admin.delete(f"/api/v1/owners/{owner['id']}")).status_code == 204
    assert await api.audit_actions("owner") == ["owner_deleted", "owner_created"]


async def test_pagination(api: Api) -> None:
    for i in range(7):
        await factories.team(api.admin, name=f"team-{i:02d}")
    first = (await api.admin.get("/api/v1/teams", params={"per_page": 3})).json()
    assert first["total"] == 7 and len(first["data"]) == 3
    last = (await api.admin.get("/api/v1/teams", params={"per_page": 3, "page": 3})).json()
    assert [t["name"] for t in last["data"]] == ["team-06"]
    assert (await api.admin.get("/api/v1/teams", params={"per_page": 501})).status_code == 400
    assert (await api.admin.get("/api/v1/teams", params={"page": 0})).status_code == 400
    assert (await api.admin.get("/api/v1/teams", params={"page": "x"})).status_code == 400
