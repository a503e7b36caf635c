"""Deployments into real nginx, apache2, haproxy and caddy (Debian packages) on 127.0.0.1 high ports.

Each server starts with certificate A; the agent's connector and deploy engine put certificate B in
place; a TLS client then sees B. A broken configuration makes the config test fail, the files come back
and A keeps being served. A second deploy of the same content writes nothing and reloads nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from certctl.agent.deploy import DeployEngine, backups_of
from certctl.connectors.targets.registry import create_connector
from certctl.connectors.tlsprobe import probe_tls
from tests.servers import (
    SERVERS,
    Caddy,
    RealServer,
    ThrowawayCA,
    free_port,
    served_fingerprint,
    settled_fingerprint,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA()


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest, tmp_path: Path, ca: ThrowawayCA) -> Iterator[RealServer]:
    real = SERVERS[request.param](tmp_path / request.param)
    with real:
        real.start(ca.issue("a.example"))
        yield real


def _files(server: RealServer) -> dict[str, bytes]:
    config = server.target_config()
    return {k: Path(config[k]).read_bytes() for k in ("cert_path", "key_path", "pem_path") if k in config}


def _stat(server: RealServer) -> dict[str, tuple[int, int]]:
    config = server.target_config()
    return {k: (os.stat(config[k]).st_ino, os.stat(config[k]).st_mtime_ns)
            for k in ("cert_path", "key_path", "pem_path") if k in config}


async def test_new_certificate_is_served_and_an_identical_deploy_changes_nothing(
    server: RealServer, ca: ThrowawayCA, tmp_path: Path
) -> None:
    first = served_fingerprint(server.port)
    b = ca.issue("b.example")
    assert first != b.fingerprint
    engine = DeployEngine(tmp_path / "agent-state")
    target = create_connector(server.target_type, server.target_config(), runner=engine)

    result = await target.deploy(b.request())
    assert result.success and result.status == "deployed", (result.message, server.output())
    assert result.verification.status == "success" and result.verification.fingerprint == b.fingerprint
    assert [s.name for s in result.steps] == ["test", "reload"] and all(s.ok for s in result.steps)
    # An independent TLS client agrees (once nginx's old worker, which may still answer a handshake or
    # two right after the reload, is gone).
    assert settled_fingerprint(server.port, b.fingerprint) == b.fingerprint
    assert (await probe_tls("127.0.0.1", server.port)).fingerprint_sha256 == b.fingerprint
    for path in result.files_written:
        assert len(backups_of(path)) == 1

    before = _stat(server)
    again = await target.deploy(b.request(job_id="job-2"))
    assert again.success and again.status == "unchanged" and not again.changed
    assert again.steps == () and again.verification.status == "skipped"  # no test, no reload
    assert _stat(server) == before, "an identical deploy touched the files"
    assert served_fingerprint(server.port) == b.fingerprint


async def test_broken_config_fails_the_test_and_the_old_certificate_stays(
    server: RealServer, ca: ThrowawayCA, tmp_path: Path
) -> None:
    a_fingerprint = served_fingerprint(server.port)
    a_files = _files(server)
    server.break_config()
    target = create_connector(server.target_type, server.target_config(), runner=DeployEngine(tmp_path / "state"))

    result = await target.deploy(ca.issue("b.example").request())
    assert not result.success and result.status == "rolled_back" and result.rolled_back, result.message
    assert "config test failed" in result.message
    assert [s.name for s in result.steps] == ["test"]  # never reloaded
    assert result.steps[0].exit_code not in (0, None) and result.steps[0].output  # the server's own words
    assert _files(server) == a_files
    for path in a_files:
        assert backups_of(server.target_config()[path]) == []
    assert served_fingerprint(server.port) == a_fingerprint


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
async def test_a_reload_that_does_not_take_is_caught_by_verification(
    kind: str, ca: ThrowawayCA, tmp_path: Path
) -> None:
    """The reload command succeeds but the server keeps its old configuration (nginx: the master cannot
    bind a new listener; haproxy: the master fails to load the config and keeps its worker). Only the
    TLS check can tell: it sees the old leaf, the old files come back, the server is reloaded again."""
    with SERVERS[kind](tmp_path / kind) as server:
        server.start(ca.issue("a.example"))
        a_fingerprint = served_fingerprint(server.port)
        a_files = _files(server)
        server.break_reload_silently()
        config = {**server.target_config(), "validate_command": "", "verify_attempts": 4}
        target = create_connector(server.target_type, config, runner=DeployEngine(tmp_path / "state"))

        b = ca.issue("b.example")
        result = await target.deploy(b.request())
        assert result.status == "rolled_back" and result.rolled_back and not result.success, result.message
        assert [(s.name, s.ok) for s in result.steps] == [("reload", True), ("rollback-reload", True)]
        assert result.verification.status == "failed" and result.verification.attempts == 4
        assert result.verification.fingerprint == a_fingerprint
        assert b.fingerprint in (result.verification.error or "")
        assert _files(server) == a_files
        assert settled_fingerprint(server.port, a_fingerprint) == a_fingerprint


@pytest.mark.parametrize("kind", ["apache2", "nginx"])
async def test_a_failing_reload_is_rolled_back(kind: str, ca: ThrowawayCA, tmp_path: Path) -> None:
    """No config test configured and a syntax error: the reload command itself fails (apache's graceful
    and nginx -s both parse the configuration first). The files come back; reloading them fails too
    (the configuration is still broken), which the result says instead of hiding."""
    with SERVERS[kind](tmp_path / kind) as server:
        server.start(ca.issue("a.example"))
        a_fingerprint = served_fingerprint(server.port)
        a_files = _files(server)
        server.break_config()
        config = {**server.target_config(), "validate_command": ""}
        target = create_connector(server.target_type, config, runner=DeployEngine(tmp_path / "state"))

        result = await target.deploy(ca.issue("b.example").request())
        assert not result.success and "reload failed" in result.message
        assert result.status == "rollback_failed" and result.rolled_back  # files restored, reload still broken
        assert "reloading after the restore failed" in result.message
        assert [(s.name, s.ok) for s in result.steps] == [("reload", False), ("rollback-reload", False)]
        assert _files(server) == a_files
        assert served_fingerprint(server.port) == a_fingerprint


async def test_dry_run_checks_the_real_server_without_changing_it(
    server: RealServer, ca: ThrowawayCA, tmp_path: Path
) -> None:
    before = _stat(server)
    target = create_connector(server.target_type, server.target_config(), runner=DeployEngine(tmp_path / "state"))
    checked = await target.dry_run(ca.issue("b.example").request())
    assert checked.success and checked.status == "dry_run", checked.message
    names = {s.name for s in checked.steps}
    assert {"command:test", "command:reload", "test", "verify-endpoint"} <= names
    assert {f.action for f in checked.files} == {"would_replace"}

    server.break_config()
    broken = await target.dry_run()
    assert not broken.success and "test" in broken.message
    assert _stat(server) == before


# ---- Caddy's admin API (api mode) -------------------------------------------------------------------
def _caddy_entry(server: Caddy, object_id: str) -> dict[str, object]:
    with httpx.Client(base_url=f"http://{server.admin}", timeout=5) as client:
        response = client.get(f"/id/{object_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_caddy_api_mode_replaces_its_entry_and_rolls_back_a_failed_check(
    ca: ThrowawayCA, tmp_path: Path
) -> None:
    with Caddy(tmp_path / "caddy", api_entry="certctl-web") as server:
        a = ca.issue("a.example")
        server.start(a)
        assert served_fingerprint(server.port) == a.fingerprint
        engine = DeployEngine(tmp_path / "state")
        target = create_connector("Caddy", server.target_config(), runner=engine)

        b = ca.issue("b.example")
        result = await target.deploy(b.request())
        assert result.status == "deployed" and result.verification.status == "success", result.message
        assert [s.name for s in result.steps] == ["replace"]
        assert settled_fingerprint(server.port, b.fingerprint) == b.fingerprint
        assert _caddy_entry(server, "certctl-web")["certificate"] == b.fullchain_pem

        again = await target.deploy(b.request(job_id="job-2"))
        assert again.status == "unchanged" and again.steps == ()

        # A check that cannot succeed (nothing listens there): the previous entry goes back.
        unreachable = {**server.target_config(), "verify_endpoint": f"127.0.0.1:{free_port()}", "verify_attempts": 2}
        c = ca.issue("c.example")
        rolled = await create_connector("Caddy", unreachable, runner=engine).deploy(c.request())
        assert rolled.status == "rolled_back" and rolled.rolled_back, rolled.message
        assert [(s.name, s.ok) for s in rolled.steps] == [("replace", True), ("rollback", True)]
        assert _caddy_entry(server, "certctl-web")["certificate"] == b.fullchain_pem
        assert settled_fingerprint(server.port, b.fingerprint) == b.fingerprint
        assert c.key_pem.splitlines()[1] not in json.dumps(rolled.to_dict())


async def test_caddy_api_mode_adds_its_entry_the_first_time(ca: ThrowawayCA, tmp_path: Path) -> None:
    with Caddy(tmp_path / "caddy", no_tls_app=True) as server:
        server.start(ca.issue("unused.example"))
        target = create_connector("Caddy", server.target_config(), runner=DeployEngine(tmp_path / "state"))
        b = ca.issue("b.example")
        result = await target.deploy(b.request())
        assert result.status == "deployed" and [s.name for s in result.steps] == ["add"], result.message
        assert settled_fingerprint(server.port, b.fingerprint) == b.fingerprint
        checked = await target.dry_run()
        assert checked.success and "entry 'certctl-web' exists" in checked.steps[0].detail, checked.message
