"""The agent loop against the API in process: enrollment, CSR jobs, restarts, outages, retirement."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from certctl.agent.client import ServerClient
from certctl.agent.config import AgentConfig, AgentConfigError, read_env_file
from certctl.agent.keystore import KeyStore, key_name
from certctl.agent.runner import AgentRunner
from tests import factories
from tests.conftest import Api

BOOTSTRAP = "bootstrap-token-for-tests"


def _config(tmp_path: Path, **overrides: Any) -> AgentConfig:
    values: dict[str, Any] = {
        "server_url": "https://testserver", "state_dir": tmp_path / "agent", "key_dir": tmp_path / "agent" / "keys",
        "bootstrap_token": BOOTSTRAP, "agent_name": factories.unique("edge"), "hostname": "edge.example.com",
        "poll_interval": 1.0, "heartbeat_interval": 60.0, "max_backoff": 8.0,
    }
    values.update(overrides)
    return AgentConfig(**values)


def _client(api: Api) -> ServerClient:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app, client=("127.0.0.1", 50002)),
                             base_url="https://testserver")
    return ServerClient(http, lambda: None)


async def test_enrols_once_and_keeps_its_own_key(api: Api, tmp_path: Path) -> None:
    config = _config(tmp_path)
    runner = AgentRunner(config, client=_client(api))
    await runner.run_once()
    credential = config.state_dir / "credential"
    assert credential.stat().st_mode & 0o777 == 0o600 and config.state_dir.stat().st_mode & 0o777 == 0o700
    agent_id = runner.agent_id
    assert credential.read_text().startswith(f"cca.{agent_id}.")
    agent = (await api.admin.get(f"/api/v1/agents/{agent_id}")).json()
    assert agent["status"] == "Online" and agent["hostname"] == "edge.example.com"

    restarted = AgentRunner(config, client=_client(api))  # a restart: no second registration
    await restarted.run_once()
    assert restarted.agent_id == agent_id
    assert (await api.admin.get("/api/v1/agents")).json()["total"] == 1


async def _agent_certificate(api: Api, runner: AgentRunner) -> dict[str, Any]:
    await runner.run_once()
    cert = await factories.seed_certificate(api, sans=["www.example.com", "10.0.0.7"], common_name="www.example.com")
    target = await factories.seed_target(api, runner.agent_id)
    await factories.seed_mapping(api, cert["id"], target)
    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")
    assert response.status_code == 202 and response.json()["job_status"] == "AwaitingCSR", response.text
    return cert


async def test_answers_csr_jobs_with_a_key_made_on_the_host(
    api: Api, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = _config(tmp_path)
    runner = AgentRunner(config, client=_client(api))
    cert = await _agent_certificate(api, runner)
    await runner.run_once()
    assert (await api.admin.get(f"/api/v1/certificates/{cert['id']}")).json()["status"] == "Active"
    picked = (await api.admin.get(f"/api/v1/agents/{runner.agent_id}/certificates/{cert['id']}")).json()
    leaf = x509.load_pem_x509_certificate(picked["certificate_pem"].encode())
    key_file = config.key_dir / cert["id"] / f"{key_name(leaf.public_key())}.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert KeyStore(config.key_dir).key_for(cert["id"], leaf) is not None
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert "PRIVATE KEY" not in caplog.text and key_file.read_text() not in caplog.text
    assert not list((config.key_dir / cert["id"]).glob("pending-*"))


async def test_a_restart_mid_job_sends_the_same_key_again(api: Api, tmp_path: Path) -> None:
    config = _config(tmp_path)
    runner = AgentRunner(config, client=_client(api))
    cert = await _agent_certificate(api, runner)
    job = (await api.admin.get(f"/api/v1/agents/{runner.agent_id}/work")).json()["jobs"][0]
    made_before_crash = runner.keys.pending_key(cert["id"], job["id"])  # the key existed; the CSR never left
    restarted = AgentRunner(config, client=_client(api))
    await restarted.run_once()
    picked = (await api.admin.get(f"/api/v1/agents/{runner.agent_id}/certificates/{cert['id']}")).json()
    leaf = x509.load_pem_x509_certificate(picked["certificate_pem"].encode())
    assert leaf.public_key() == made_before_crash.public_key()


async def test_retired_agent_stops_for_good(api: Api, tmp_path: Path) -> None:
    config = _config(tmp_path)
    runner = AgentRunner(config, client=_client(api))
    await runner.run_once()
    assert (await api.admin.delete(f"/api/v1/agents/{runner.agent_id}")).status_code in (200, 204)
    assert await asyncio.wait_for(runner.run(), timeout=10) == 0
    assert runner.state.retired
    again = AgentRunner(config, client=_client(api))
    assert await asyncio.wait_for(again.run(), timeout=5) == 0  # remembered: no calls at all


async def test_waits_grow_while_the_server_is_away(tmp_path: Path) -> None:
    waits: list[float] = []
    stop = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) >= 8:
            stop.set()

    import socket

    with socket.socket() as probe:  # a port nobody listens on: a real refused connection
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    client = ServerClient(httpx.AsyncClient(base_url=f"https://127.0.0.1:{closed_port}"), lambda: None)
    runner = AgentRunner(_config(tmp_path, api_key="cca.a.b", agent_id="agent-x"), client=client, sleep=sleep)
    assert await asyncio.wait_for(runner.run(stop=stop), timeout=10) == 0
    assert waits[0] < waits[1] < waits[2] and all(w <= 8.0 for w in waits) and waits[-1] > 6.0


def test_config_is_checked_and_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="CERTCTL_SERVER_URL"):
        AgentConfig.from_env({"CERTCTL_SERVER_URL": "http://plain.example.com", "CERTCTL_API_KEY": "k"})
    with pytest.raises(AgentConfigError, match="CERTCTL_API_KEY or CERTCTL_AGENT_BOOTSTRAP_TOKEN"):
        AgentConfig.from_env({"CERTCTL_SERVER_URL": "https://certctl.example.com",
                              "CERTCTL_AGENT_STATE_DIR": str(tmp_path / "s")})
    with pytest.raises(AgentConfigError, match="CERTCTL_AGENT_POLL_INTERVAL"):
        AgentConfig.from_env({"CERTCTL_SERVER_URL": "https://c.example.com", "CERTCTL_API_KEY": "k",
                              "CERTCTL_AGENT_POLL_INTERVAL": "soon"})
    env_file = tmp_path / "agent.env"
    env_file.write_text("# certctl agent\nCERTCTL_SERVER_URL=https://c.example.com\nCERTCTL_API_KEY='abc'\n")
    assert read_env_file(env_file)["CERTCTL_API_KEY"] == "abc"
    config = AgentConfig.from_env({"CERTCTL_AGENT_STATE_DIR": str(tmp_path / "s")}, config_file=env_file)
    assert config.server_url == "https://c.example.com" and config.api_key == "abc"


async def test_reports_the_certificates_in_its_discovery_directories(api: Api, tmp_path: Path) -> None:
    from tests.servers import ThrowawayCA

    found_dir = tmp_path / "etc-ssl"
    (found_dir / "live").mkdir(parents=True)
    issued = ThrowawayCA().issue("legacy.example.com")
    (found_dir / "live" / "fullchain.pem").write_text(issued.fullchain_pem)
    (found_dir / "live" / "privkey.key").write_text(issued.key_pem)
    runner = AgentRunner(_config(tmp_path, discovery_dirs=(found_dir,)), client=_client(api))
    await runner.run_once()
    found = (await api.admin.get("/api/v1/discovered-certificates", params={"agent_id": runner.agent_id})).json()
    fingerprints = {c["fingerprint_sha256"] for c in found["data"]}
    assert issued.fingerprint in fingerprints and len(fingerprints) == 2  # the leaf and its issuing CA
    assert all("PRIVATE KEY" not in str(c) for c in found["data"])
    await runner.run_once()  # not due again for 6 h: no second scan
    scans = (await api.admin.get("/api/v1/discovery-scans")).json()
    assert scans["total"] == 1
