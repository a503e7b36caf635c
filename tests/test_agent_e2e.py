"""End to end on one host: the server issues, the agent makes the key, deploys to a real nginx, verifies, reports."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import httpx
import pytest

from certctl.agent.client import ServerClient
from certctl.agent.config import AgentConfig
from certctl.agent.deployer import TargetDeployer
from certctl.agent.runner import AgentRunner
from tests import factories
from tests.conftest import Api
from tests.servers import Nginx, ThrowawayCA, served_fingerprint, settled_fingerprint


async def test_issue_deploy_verify_with_a_real_nginx(api: Api, tmp_path: Path) -> None:
    config = AgentConfig(server_url="https://testserver", state_dir=tmp_path / "agent",
                         key_dir=tmp_path / "agent" / "keys", bootstrap_token="bootstrap-token-for-tests",
                         agent_name=factories.unique("web"), hostname="web-1", poll_interval=1.0)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app, client=("127.0.0.1", 50003)),
                             base_url="https://testserver")
    runner = AgentRunner(config, client=ServerClient(http, lambda: None),
                         deployer=TargetDeployer.for_state_dir(config.state_dir))
    await runner.run_once()  # enrol

    with Nginx(tmp_path / "nginx").start(ThrowawayCA().issue("localhost")) as nginx:
        before = served_fingerprint(nginx.port)
        target = await api.admin.post("/api/v1/targets", json={
            "name": factories.unique("nginx"), "type": "NGINX", "agent_id": runner.agent_id,
            "config": nginx.target_config()})
        assert target.status_code == 201, target.text
        cert = await factories.seed_certificate(api, common_name="localhost", sans=["localhost", "127.0.0.1"])
        await factories.seed_mapping(api, cert["id"], target.json()["id"])
        assert (await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")).status_code == 202

        await runner.run_once()  # answers the CSR; the server issues and queues the deployment
        await runner.run_once()  # deploys, verifies through a TLS handshake, reports
        [version] = (await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"]
        served = settled_fingerprint(nginx.port, version["fingerprint_sha256"])
        assert served == version["fingerprint_sha256"] != before

        jobs = (await api.admin.get("/api/v1/jobs", params={"certificate_id": cert["id"], "type": "Deployment"}))
        [job] = jobs.json()["data"]
        assert job["status"] == "Completed" and job["verification_status"] == "success"
        assert job["verification_fingerprint"] == version["fingerprint_sha256"]
        assert job["deployment_result"]["changed"] is True
        after = (await api.admin.get(f"/api/v1/certificates/{cert['id']}")).json()
        assert after["status"] == "Active" and after["last_deployment_at"] is not None
        key_file = Path(nginx.target_config()["key_path"])
        assert os.stat(key_file).st_mode & 0o777 == 0o600
        assert "PRIVATE KEY" not in str(job)

        # The same version again: nothing written, nothing reloaded, still Completed.
        again = await api.admin.post(f"/api/v1/certificates/{cert['id']}/deploy")
        assert again.status_code in (200, 202), again.text
        await runner.run_once()
        jobs = (await api.admin.get("/api/v1/jobs", params={"certificate_id": cert["id"], "type": "Deployment"}))
        latest = jobs.json()["data"][0]
        assert latest["status"] == "Completed" and latest["deployment_result"]["changed"] is False
    await http.aclose()


async def test_files_target_and_recovery_at_start(
    api: Api, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = AgentConfig(server_url="https://testserver", state_dir=tmp_path / "agent",
                         key_dir=tmp_path / "agent" / "keys", bootstrap_token="bootstrap-token-for-tests",
                         agent_name=factories.unique("files"), hostname="files-1", poll_interval=1.0)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app, client=("127.0.0.1", 50004)),
                             base_url="https://testserver")
    runner = AgentRunner(config, client=ServerClient(http, lambda: None),
                         deployer=TargetDeployer.for_state_dir(config.state_dir))
    await runner.run_once()
    out = tmp_path / "out"
    out.mkdir()
    target = await api.admin.post("/api/v1/targets", json={
        "name": factories.unique("files"), "type": "Files", "agent_id": runner.agent_id,
        "config": {"cert_path": str(out / "cert.pem"), "key_path": str(out / "key.pem"),
                   "fullchain_path": str(out / "fullchain.pem")}})
    assert target.status_code == 201, target.text
    assert target.json()["config"]["backup_retention"] == 3  # defaults stored with the target
    cert = await factories.seed_certificate(api)
    await factories.seed_mapping(api, cert["id"], target.json()["id"])
    assert (await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")).status_code == 202
    await runner.run_once()
    await runner.run_once()
    [version] = (await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"]
    assert (out / "fullchain.pem").read_text() == version["pem_chain"]
    assert os.stat(out / "key.pem").st_mode & 0o777 == 0o600
    [job] = (await api.admin.get("/api/v1/jobs", params={"certificate_id": cert["id"],
                                                          "type": "Deployment"})).json()["data"]
    assert job["status"] == "Completed" and job["verification_status"] == "skipped"

    # A journal left by a crash mid-deploy is dealt with before the loop takes new work.
    (config.state_dir / "deploy-journal").mkdir(exist_ok=True)
    (config.state_dir / "deploy-journal" / "broken.json").write_text("{not json")
    stop = asyncio.Event()
    stop.set()
    with caplog.at_level(logging.WARNING, logger="certctl.agent"):
        assert await runner.run(stop=stop) == 0
    recovered = [r for r in caplog.records if r.getMessage() == "recovered an interrupted deployment"]
    assert recovered and "broken.json" in recovered[0].__dict__["action"]
    await http.aclose()
