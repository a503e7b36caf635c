"""Deployment targets: CRUD on live agents, per-agent names, retirement, config checks and the test."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from certctl.store import rows
from certctl.store.schema import deployment_targets, jobs
from tests import factories
from tests.conftest import Api

NGINX = factories.NGINX_CONFIG
# What the NGINX connector adds when a target is created (certctl.connectors.targets): stored and shown.
NGINX_DEFAULTS = {
    "validate_command": "nginx -t", "command_timeout_seconds": 60, "backup_retention": 3, "verify_attempts": 5,
    "verify_backoff_seconds": 1, "verify_max_backoff_seconds": 16, "verify_timeout_seconds": 5,
}


async def _job(api: Api, target_id: str, status: str) -> str:
    now = datetime.now(UTC)
    job_id = factories.unique("job")
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, jobs, {
            "id": job_id, "type": "Deployment", "target_id": target_id, "status": status,
            "scheduled_at": now, "created_at": now, "updated_at": now,
        })
    return job_id


async def _sealed(api: Api, target_id: str) -> dict[str, Any]:
    async with api.services.ctx.db.read() as conn:
        row = await rows.get_row(conn, deployment_targets, target_id)
    assert row is not None
    return api.services.ctx.sealer.open(row["encrypted_config"])


async def test_target_crud_and_audit(api: Api) -> None:
    agent = await factories.agent(api.admin)
    created = await factories.target(api.admin, agent_id=agent["id"], name="web-1", type="nginx")
    assert created["id"].startswith("target-") and created["type"] == "NGINX"
    assert created["agent_id"] == agent["id"] and created["enabled"] is True
    assert created["retired_at"] is None and created["test_status"] == "untested"
    assert created["config"] == {**NGINX, **NGINX_DEFAULTS}  # paths are not secrets

    got = await api.admin.get(f"/api/v1/targets/{created['id']}")
    assert got.status_code == 200 and got.json() == created
    listed = (await api.admin.get("/api/v1/targets")).json()
    assert listed["total"] == 1 and listed["data"][0]["id"] == created["id"]

    updated = await api.admin.put(f"/api/v1/targets/{created['id']}", json={
        "name": "web-01", "config": {**created["config"], "reload_command": "nginx -s reload"}})
    assert updated.status_code == 200, updated.text
    assert updated.json()["name"] == "web-01"
    assert await _sealed(api, created["id"]) == {**NGINX, **NGINX_DEFAULTS, "reload_command": "nginx -s reload"}

    assert (await api.admin.delete(f"/api/v1/targets/{created['id']}")).status_code == 204
    assert (await api.admin.get("/api/v1/targets")).json()["total"] == 0
    retired = (await api.admin.get(f"/api/v1/targets/{created['id']}")).json()
    assert retired["retired_at"] is not None and retired["retired_reason"] == "deleted"
    assert (await api.admin.delete(f"/api/v1/targets/{created['id']}")).status_code == 204  # idempotent
    assert await api.audit_actions("target") == ["target_retired", "target_updated", "target_created"]


async def test_target_bad_input(api: Api) -> None:
    agent = await factories.agent(api.admin)
    base = {"name": "t", "type": "NGINX", "agent_id": agent["id"], "config": NGINX}
    cases = [
        ({k: v for k, v in base.items() if k != "agent_id"}, "agent_id"),
        ({k: v for k, v in base.items() if k != "name"}, "name"),
        ({k: v for k, v in base.items() if k != "type"}, "type"),
        ({**base, "type": "Tomcat"}, "type"),
        ({**base, "agent_id": "agent-missing"}, "agent_id 'agent-missing' does not exist"),
        ({**base, "agent_id": 5}, "agent_id"),
        ({**base, "colour": "red"}, "colour"),
        ({**base, "config": {"cert_path": "/c.pem"}}, "key_path is required"),
        ({**base, "type": "HAProxy", "config": {"pem_path": "/p.pem"}}, "reload_command is required"),
        ({**base, "config": {**NGINX, "cert_path": "relative.pem"}}, "cert_path must be an absolute path"),
        ({**base, "config": {**NGINX, "colour": "red", "size": 3}}, "unknown keys 'colour', 'size' (known keys:"),
        ({**base, "config": {**NGINX, "reload_command": "nginx -s reload && curl evil"}}, "shell metacharacters"),
        ({**base, "type": "Apache", "config": {"cert_path": "/c.pem", "key_path": "/k.pem",
                                               "verify_endpoint": "example.com"}}, "verify_endpoint must be host:port"),
        ({**base, "type": "AzureKeyVault", "config": {"vault_url": "http://kv.example.com",
                                                      "certificate_name": "c"}}, "vault_url must be an https://"),
        ({**base, "type": "SSH", "config": {"host": "h", "user": "u", "cert_path": "/c", "key_path": "/k"}},
         "private_key_path"),
        ({**base, "type": "Envoy", "config": {"cert_dir": "/etc/envoy", "cert_filename": "../x.pem"}},
         "cert_filename must be a file name"),
        ({**base, "type": "F5", "config": {"host": "h", "username": "u", "password": "p", "ssl_profile": "s",
                                           "port": "443"}}, "port must be a TCP port"),
    ]
    for body, expected in cases:
        response = await api.admin.post("/api/v1/targets", json=body)
        assert response.status_code == 400, (body, response.text)
        assert expected in response.json()["message"], (body, response.json())
    assert (await api.admin.get("/api/v1/targets")).json()["total"] == 0, "bad input left rows behind"

    # Types with working defaults need no config.
    for kind in ("Postfix", "Dovecot", "WinCertStore"):
        assert (await api.admin.post("/api/v1/targets", json={**base, "name": kind, "type": kind.lower(),
                                                              "config": {}})).status_code == 201
    for method in ("get", "put", "delete"):
        kwargs = {"json": {"name": "x"}} if method == "put" else {}
        assert (await getattr(api.admin, method)("/api/v1/targets/nope", **kwargs)).status_code == 404
    assert (await api.admin.post("/api/v1/targets/nope/test")).status_code == 404


async def test_target_on_retired_agent_is_refused(api: Api) -> None:
    agent = await factories.agent(api.admin)
    assert (await api.admin.delete(f"/api/v1/agents/{agent['id']}")).status_code == 200
    response = await api.admin.post("/api/v1/targets", json={
        "name": "t", "type": "NGINX", "agent_id": agent["id"], "config": NGINX})
    assert response.status_code == 400 and "retired" in response.json()["message"]


async def test_target_name_unique_per_agent(api: Api) -> None:
    a1, a2 = await factories.agent(api.admin), await factories.agent(api.admin)
    first = await factories.target(api.admin, agent_id=a1["id"], name="web")
    clash = await api.admin.post("/api/v1/targets", json={
        "name": "web", "type": "NGINX", "agent_id": a1["id"], "config": NGINX})
    assert clash.status_code == 409 and "already has a target named 'web'" in clash.json()["message"]
    other_agent = await factories.target(api.admin, agent_id=a2["id"], name="web")
    # Moving the second one onto the first agent clashes too.
    moved = await api.admin.put(f"/api/v1/targets/{other_agent['id']}", json={"agent_id": a1["id"]})
    assert moved.status_code == 409
    bad_move = await api.admin.put(f"/api/v1/targets/{other_agent['id']}", json={"agent_id": "agent-missing"})
    assert bad_move.status_code == 400
    # A retired target frees its name.
    assert (await api.admin.delete(f"/api/v1/targets/{first['id']}")).status_code == 204
    again = await factories.target(api.admin, agent_id=a1["id"], name="web")
    assert again["id"] != first["id"]


async def test_retired_target_is_read_only_and_jobs_block_retire(api: Api) -> None:
    target = await factories.target(api.admin)
    job_id = await _job(api, target["id"], "Pending")
    blocked = await api.admin.delete(f"/api/v1/targets/{target['id']}")
    assert blocked.status_code == 409 and "1 unfinished job" in blocked.json()["message"]
    async with api.services.ctx.db.transaction() as conn:
        await rows.update_row(conn, jobs, job_id, {"status": "Completed"})
    await _job(api, target["id"], "Failed")  # finished jobs do not block
    assert (await api.admin.delete(f"/api/v1/targets/{target['id']}", params={"reason": "decommissioned"})
            ).status_code == 204
    got = (await api.admin.get(f"/api/v1/targets/{target['id']}")).json()
    assert got["retired_reason"] == "decommissioned"
    assert (await api.admin.put(f"/api/v1/targets/{target['id']}", json={"enabled": False})).status_code == 409
    assert (await api.admin.post(f"/api/v1/targets/{target['id']}/test")).status_code == 409


async def test_target_type_change_revalidates_stored_config(api: Api) -> None:
    target = await factories.target(api.admin)
    to_haproxy = await api.admin.put(f"/api/v1/targets/{target['id']}", json={"type": "HAProxy"})
    assert to_haproxy.status_code == 400 and "pem_path is required" in to_haproxy.json()["message"]
    with_config = await api.admin.put(f"/api/v1/targets/{target['id']}", json={
        "type": "haproxy",
        "config": {"pem_path": "/etc/haproxy/site.pem", "reload_command": "systemctl reload haproxy"},
    })
    assert with_config.status_code == 200 and with_config.json()["type"] == "HAProxy"


async def test_target_test_checks_config_and_agent(api: Api) -> None:
    agent = await factories.agent(api.admin)
    target = await factories.target(api.admin, agent_id=agent["id"])

    silent = await api.admin.post(f"/api/v1/targets/{target['id']}/test")
    assert silent.status_code == 200
    assert silent.json() == {"status": "failed", "message": f"agent '{agent['id']}' has never sent a heartbeat"}
    assert (await api.admin.get(f"/api/v1/targets/{target['id']}")).json()["test_status"] == "failed"

    assert (await api.admin.post(f"/api/v1/agents/{agent['id']}/heartbeat", json={})).status_code == 200
    ok = await api.admin.post(f"/api/v1/targets/{target['id']}/test")
    assert ok.status_code == 200 and ok.json()["status"] == "success", ok.text
    got = (await api.admin.get(f"/api/v1/targets/{target['id']}")).json()
    assert got["test_status"] == "success" and got["last_tested_at"] is not None

    # A row written outside the API with an incomplete config fails on config grounds.
    now = datetime.now(UTC)
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, deployment_targets, {
            "id": "t-seeded", "name": "seeded", "type": "nginx", "agent_id": agent["id"], "config": {},
            "created_at": now, "updated_at": now,
        })
    seeded = (await api.admin.post("/api/v1/targets/t-seeded/test")).json()
    assert seeded["status"] == "failed" and "cert_path is required" in seeded["message"]
    assert (await api.audit_actions("target")).count("target_tested") == 3


async def test_target_list_filters_and_pages(api: Api) -> None:
    a1, a2 = await factories.agent(api.admin), await factories.agent(api.admin)
    for _ in range(3):
        await factories.target(api.admin, agent_id=a1["id"])
    await factories.target(api.admin, agent_id=a2["id"])
    page = (await api.admin.get("/api/v1/targets", params={"per_page": 3, "page": 2})).json()
    assert page["total"] == 4 and len(page["data"]) == 1
    mine = (await api.admin.get("/api/v1/targets", params={"agent_id": a2["id"]})).json()
    assert mine["total"] == 1 and mine["data"][0]["agent_id"] == a2["id"]


async def test_target_auth(api: Api) -> None:
    assert (await api.anon.get("/api/v1/targets")).status_code == 401
    assert (await api.anon.post("/api/v1/targets", json={})).status_code == 401
    target = await factories.target(api.user)  # no admin gate in the reference
    assert (await api.user.delete(f"/api/v1/targets/{target['id']}")).status_code == 204


async def test_target_config_is_stored_with_the_connectors_defaults(api: Api) -> None:
    """What the agent runs is what the API stored and shows: the connector's defaults, applied at create
    and again at update (the reference applied Postfix/Dovecot defaults on a path its agents never took)."""
    agent = await factories.agent(api.admin)
    created = await factories.target(api.admin, agent_id=agent["id"], type="Postfix", config={})
    expected = {"cert_path": "/etc/postfix/certs/cert.pem", "key_path": "/etc/postfix/certs/key.pem",
                "validate_command": "postfix check", "reload_command": "postfix reload"}
    assert expected.items() <= created["config"].items()
    assert expected.items() <= (await _sealed(api, created["id"])).items()

    updated = await api.admin.put(f"/api/v1/targets/{created['id']}", json={
        "config": {"cert_path": "/etc/postfix/tls/mail.crt", "verify_endpoint": "127.0.0.1:465",
                   "cert_file_mode": 416}})
    assert updated.status_code == 200, updated.text
    stored = await _sealed(api, created["id"])
    assert stored["cert_path"] == "/etc/postfix/tls/mail.crt" and stored["key_path"] == expected["key_path"]
    assert stored["verify_endpoint"] == "127.0.0.1:465" and stored["cert_file_mode"] == "0640"
    assert updated.json()["config"] == stored

    bad = await api.admin.put(f"/api/v1/targets/{created['id']}", json={"config": {"reload_command": "a; b"}})
    assert bad.status_code == 400 and "reload_command" in bad.json()["message"]
    assert await _sealed(api, created["id"]) == stored
