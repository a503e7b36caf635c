"""Agent credentials (own key, scoped to its own routes) and deployment job reports from agents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tests import factories
from tests.conftest import Api

BOOTSTRAP = "bootstrap-token-for-tests"


@asynccontextmanager
async def _bearer(api: Api, token: str) -> AsyncIterator[httpx.AsyncClient]:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app, client=("127.0.0.1", 50001)),
                               base_url="https://testserver", headers={"Authorization": f"Bearer {token}"})
    try:
        yield client
    finally:
        await client.aclose()


async def _enrol(api: Api) -> tuple[str, str]:
    async with _bearer(api, BOOTSTRAP) as bootstrap:
        response = await bootstrap.post("/api/v1/agents", json={"name": factories.unique("edge"), "hostname": "h"})
    assert response.status_code == 201, response.text
    body = response.json()
    return body["id"], body["api_key"]


async def test_an_agent_key_works_for_its_own_routes_only(api: Api) -> None:
    agent_id, key = await _enrol(api)
    other_id, _ = await _enrol(api)
    async with _bearer(api, key) as agent:
        assert (await agent.post(f"/api/v1/agents/{agent_id}/heartbeat", json={"version": "1.0"})).status_code == 200
        assert (await agent.get(f"/api/v1/agents/{agent_id}/work")).status_code == 200
        for path in ("/api/v1/certificates", "/api/v1/teams", f"/api/v1/agents/{other_id}/work", "/api/v1/agents"):
            response = await agent.get(path)
            assert response.status_code == 403, (path, response.text)
            assert response.json()["message"].startswith("an agent key may only call")
        forged = key.rsplit(".", 1)[0] + ".not-the-secret"
    async with _bearer(api, forged) as wrong:
        assert (await wrong.get(f"/api/v1/agents/{agent_id}/work")).status_code == 401
    status = (await api.admin.get(f"/api/v1/agents/{agent_id}")).json()["status"]
    assert status == "Online"
    events = (await api.admin.get("/api/v1/audit", params={"actor": agent_id})).json()["data"]
    assert events and all(e["actor_type"] == "Agent" for e in events)


async def test_rotating_the_key_retires_the_old_one(api: Api) -> None:
    agent_id, old = await _enrol(api)
    assert (await api.user.post(f"/api/v1/agents/{agent_id}/rotate-key")).status_code == 403  # admin only
    rotated = await api.admin.post(f"/api/v1/agents/{agent_id}/rotate-key")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["api_key"]
    assert new != old
    async with _bearer(api, old) as stale:
        assert (await stale.get(f"/api/v1/agents/{agent_id}/work")).status_code == 401
    async with _bearer(api, new) as fresh:
        assert (await fresh.get(f"/api/v1/agents/{agent_id}/work")).status_code == 200
    assert "agent_key_rotated" in await api.audit_actions("agent")


async def test_a_retired_agent_is_told_to_go_away(api: Api) -> None:
    agent_id, key = await _enrol(api)
    assert (await api.admin.delete(f"/api/v1/agents/{agent_id}")).status_code in (200, 204)
    async with _bearer(api, key) as agent:
        assert (await agent.post(f"/api/v1/agents/{agent_id}/heartbeat", json={})).status_code == 410
        assert (await agent.get(f"/api/v1/agents/{agent_id}/work")).status_code == 410


async def _deployment_job(api: Api, agent_id: str) -> tuple[dict[str, Any], str]:
    cert = await factories.seed_certificate(api)
    await factories.seed_version(api, cert["id"])
    target = await factories.seed_target(api, agent_id)
    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/deploy", json={"target_id": target})
    assert response.status_code in (200, 202), response.text
    return cert, response.json()["job_ids"][0]


async def test_deployment_reports_running_then_completed_with_verification(api: Api) -> None:
    agent_id, key = await _enrol(api)
    cert, job_id = await _deployment_job(api, agent_id)
    async with _bearer(api, key) as agent:
        work = (await agent.get(f"/api/v1/agents/{agent_id}/work")).json()
        assert [j["id"] for j in work["jobs"]] == [job_id]
        url = f"/api/v1/agents/{agent_id}/jobs/{job_id}/status"
        assert (await agent.post(url, json={"status": "running"})).json()["job_status"] == "Running"
        done = await agent.post(url, json={
            "status": "Completed", "deployment_result": {"files": ["/etc/nginx/tls/cert.pem"], "changed": True},
            "verification": {"status": "success", "fingerprint": "ab" * 32},
        })
        assert done.status_code == 200 and done.json()["job_status"] == "Completed", done.text
        again = await agent.post(url, json={"status": "Completed"})
        assert again.status_code == 409  # a finished job stays finished
    job = (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["status"] == "Completed" and job["verification_status"] == "success"
    assert job["verification_fingerprint"] == "ab" * 32 and job["verified_at"] is not None
    assert job["deployment_result"]["changed"] is True
    assert (await api.admin.get(f"/api/v1/certificates/{cert['id']}")).json()["last_deployment_at"] is not None
    actions = await api.audit_actions("job")
    assert "deployment_started" in actions and "deployment_completed" in actions


async def test_a_failed_deployment_is_retried_then_fails(api: Api) -> None:
    agent_id, key = await _enrol(api)
    _, job_id = await _deployment_job(api, agent_id)
    from certctl.store import jobs_repo

    async with _bearer(api, key) as agent:
        url = f"/api/v1/agents/{agent_id}/jobs/{job_id}/status"
        first = await agent.post(url, json={"status": "Failed", "error": "nginx -t: bad config"})
        assert first.json()["job_status"] == "Pending"
        for _ in range(5):
            async with api.services.ctx.db.transaction() as conn:
                await jobs_repo.update_job(conn, job_id, {"scheduled_at": api.services.ctx.clock.now()})
            job = (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()
            if job["status"] == "Failed":
                break
            assert (await agent.post(url, json={"status": "Failed", "error": "still bad"})).status_code == 200
    job = (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["status"] == "Failed" and job["attempts"] == job["max_attempts"] and job["last_error"] == "still bad"


async def test_reports_about_other_jobs_are_refused(api: Api) -> None:
    agent_id, key = await _enrol(api)
    other_id, _ = await _enrol(api)
    _, job_id = await _deployment_job(api, other_id)
    async with _bearer(api, key) as agent:
        response = await agent.post(f"/api/v1/agents/{agent_id}/jobs/{job_id}/status", json={"status": "Running"})
        assert response.status_code == 403
        bad = await agent.post(f"/api/v1/agents/{agent_id}/jobs/{job_id}/status", json={"status": "Exploded"})
        assert bad.status_code == 400
    assert (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "Pending"


async def test_the_agent_alone_sees_its_targets_secrets(api: Api) -> None:
    agent_id, key = await _enrol(api)
    target = await api.admin.post("/api/v1/targets", json={
        "name": factories.unique("t"), "type": "SSH", "agent_id": agent_id,
        "config": {"host": "10.0.0.9", "user": "deploy", "auth_method": "password", "password": "hunter2-secret",
                   "cert_path": "/x/c.pem", "key_path": "/x/k.pem",
                   "host_key": "SHA256:" + "A" * 43}})
    assert target.status_code == 201, target.text
    cert = await factories.seed_certificate(api)
    await factories.seed_version(api, cert["id"])
    deployed = await api.admin.post(f"/api/v1/certificates/{cert['id']}/deploy",
                                    json={"target_id": target.json()["id"]})
    assert deployed.status_code in (200, 202), deployed.text
    seen_by_admin = (await api.admin.get(f"/api/v1/agents/{agent_id}/work")).json()["jobs"][0]["target_config"]
    assert seen_by_admin["password"] == "********"
    async with _bearer(api, key) as agent:
        seen_by_agent = (await agent.get(f"/api/v1/agents/{agent_id}/work")).json()["jobs"][0]["target_config"]
    assert seen_by_agent["password"] == "hunter2-secret"
