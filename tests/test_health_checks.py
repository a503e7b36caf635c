"""Endpoint health checks: CRUD and validation, the SSRF guard, and the monitor against real TLS servers on
127.0.0.1 (asyncio servers made here, whose certificate can be swapped and which can be stopped).

The monitor function is driven directly with a FakeClock: no test sleeps for an interval.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes

from certctl.config import Settings, SettingsError
from certctl.connectors.tlsprobe import ProbeResult
from certctl.domain.models.health_checks import HealthStatus
from certctl.scheduler import SchedulerSettings, build_loops
from certctl.services.health_checks import HealthCheckSettings, next_status
from certctl.store import rows
from certctl.store.schema import audit_events, certificate_versions, endpoint_health_checks, endpoint_health_history
from tests import factories
from tests.conftest import Api
from tests.scheduler_helpers import clock_of, clocked_api
from tests.test_discovery import Issued, issue

LOOPBACK_ALLOWED = {"CERTCTL_NETWORK_SCAN_ALLOW_LOOPBACK": "true"}
PATH = "/api/v1/health-checks"


# ---- a TLS server whose certificate can be swapped -----------------------------------------------------------------


@dataclass
class Server:
    tmp: Path
    port: int = 0
    accepted: int = 0
    context: ssl.SSLContext | None = None
    leaf: Issued | None = None
    _server: asyncio.Server | None = field(default=None, repr=False)

    def serve(self, common_name: str) -> str:
        """Serve a new self-signed leaf from now on; its SHA-256 fingerprint."""
        leaf = issue(common_name, sans=(common_name,))
        cert, key = self.tmp / f"{common_name}.pem", self.tmp / f"{common_name}.key"
        cert.write_text(leaf.pem)
        key.write_text(leaf.key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.context, self.leaf = context, leaf
        return leaf.cert.fingerprint(hashes.SHA256()).hex()

    async def start(self) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            try:
                assert self.context is not None
                await writer.start_tls(self.context)
                await reader.read()
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


@asynccontextmanager
async def tls_server(tmp: Path, common_name: str = "health.example.com") -> AsyncIterator[Server]:
    server = Server(tmp)
    server.serve(common_name)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def monitored(database_url: str, tmp: Path, **extra: str) -> AsyncIterator[Api]:
    async with clocked_api(database_url, tmp / "data", extra={**LOOPBACK_ALLOWED, **extra}) as api:
        yield api


def fingerprint(server: Server) -> str:
    assert server.leaf is not None
    return server.leaf.cert.fingerprint(hashes.SHA256()).hex()


async def create(api: Api, **body: Any) -> dict[str, Any]:
    return await factories.create(api.admin, PATH, body)


async def get(api: Api, check_id: str) -> dict[str, Any]:
    response = await api.admin.get(f"{PATH}/{check_id}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def history(api: Api, check_id: str, limit: int = 100) -> dict[str, Any]:
    response = await api.user.get(f"{PATH}/{check_id}/history", params={"limit": limit})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def tick(api: Api, seconds: int = 300) -> dict[str, int]:
    clock_of(api).advance(timedelta(seconds=seconds))
    return await api.services.health_checks.run_due_checks()


async def transitions(api: Api) -> list[dict[str, Any]]:
    await api.services.audit_sink.flush()
    async with api.services.ctx.db.read() as conn:
        found = await rows.list_rows(conn, audit_events, audit_events.c.action == "health_check_status_changed",
                                     order_by=(audit_events.c.timestamp, audit_events.c.id))
    assert all(r["actor"] == "system" and r["resource_type"] == "health_check" for r in found)
    return [dict(r["details"]) for r in found]


# ---- the status machine --------------------------------------------------------------------------------------------


def test_next_status_steps_through_the_thresholds() -> None:
    s = HealthStatus
    assert next_status(s.UNKNOWN, 0, 2, 5, mismatch=False, success=True) is s.HEALTHY
    assert next_status(s.HEALTHY, 0, 2, 5, mismatch=True, success=True) is s.CERT_MISMATCH
    assert next_status(s.HEALTHY, 1, 2, 5, mismatch=False, success=False) is s.HEALTHY
    assert next_status(s.UNKNOWN, 1, 2, 5, mismatch=False, success=False) is s.UNKNOWN
    assert next_status(s.HEALTHY, 2, 2, 5, mismatch=False, success=False) is s.DEGRADED
    assert next_status(s.DEGRADED, 4, 2, 5, mismatch=False, success=False) is s.DEGRADED
    assert next_status(s.DEGRADED, 5, 2, 5, mismatch=False, success=False) is s.DOWN
    assert next_status(s.DOWN, 0, 2, 5, mismatch=False, success=True) is s.HEALTHY


# ---- the monitor against real servers ------------------------------------------------------------------------------


async def test_healthy_then_degraded_then_down_counting_each_failure_once(database_url: str, tmp_path: Path) -> None:
    async with monitored(database_url, tmp_path) as api, tls_server(tmp_path) as server:
        check = await create(api, endpoint=f"127.0.0.1:{server.port}", expected_fingerprint=fingerprint(server),
                             check_interval_seconds=60)
        assert check["status"] == "Unknown" and check["degraded_threshold"] == 2 and check["down_threshold"] == 5
        assert check["timeout_ms"] == 5000 and check["consecutive_failures"] == 0

        outcome = await api.services.health_checks.run_due_checks()
        assert outcome["due"] == 1 and outcome["healthy"] == 1 and outcome["transitions"] == 1
        healthy = await get(api, check["id"])
        assert healthy["status"] == "Healthy" and healthy["observed_fingerprint"] == fingerprint(server)
        assert healthy["tls_version"].startswith("TLSv1.") and healthy["cipher_suite"]
        assert healthy["cert_subject"] == "CN=health.example.com" and healthy["last_success_at"] is not None
        assert server.accepted == 1

        # Not due again before its interval: nothing is dialled.
        assert (await tick(api, 30))["due"] == 0 and server.accepted == 1

        acked = await api.user.post(f"{PATH}/{check['id']}/acknowledge", json={"acknowledged_by": "oncall-ann"})
        assert acked.status_code == 200 and acked.json()["acknowledged"] is True
        assert acked.json()["acknowledged_by"] == "oncall-ann"

        await server.stop()
        seen = []
        for _ in range(6):
            assert (await tick(api, 60))["failed"] == 1
            current = await get(api, check["id"])
            seen.append((current["status"], current["consecutive_failures"], current["acknowledged"]))
        # One increment per failed probe: Degraded at exactly 2 failures, Down at exactly 5.
        assert seen == [
            ("Healthy", 1, True), ("Degraded", 2, False), ("Degraded", 3, False), ("Degraded", 4, False),
            ("Down", 5, False), ("Down", 6, False),
        ]
        assert "127.0.0.1" in current["failure_reason"] and current["last_failure_at"] is not None

        entries = (await history(api, check["id"]))["data"]
        assert len(entries) == 7
        assert [e["status"] for e in entries[:3]] == ["Down", "Down", "Degraded"]  # newest first
        assert entries[0]["observed_fingerprint"] is None and entries[0]["failure_reason"]
        assert entries[-1]["status"] == "Healthy" and entries[-1]["observed_fingerprint"] == fingerprint(server)
        assert entries[-1]["response_time_ms"] is not None and entries[-1]["cert_not_after"] is not None
        assert (await history(api, check["id"], limit=2))["total"] == 7

        changes = await transitions(api)
        assert [(c["from"], c["to"]) for c in changes] == [
            ("Unknown", "Healthy"), ("Healthy", "Degraded"), ("Degraded", "Down"),
        ]

        # Back up: one success is Healthy again, the counter resets.
        await server.start()
        await tick(api, 60)
        back = await get(api, check["id"])
        assert back["status"] == "Healthy" and back["consecutive_failures"] == 0 and back["failure_reason"] is None

        summary = (await api.user.get(f"{PATH}/summary")).json()
        assert summary == {"healthy": 1, "degraded": 0, "down": 0, "cert_mismatch": 0, "unknown": 0, "total": 1}


async def test_cert_mismatch_after_the_served_certificate_is_swapped(database_url: str, tmp_path: Path) -> None:
    async with monitored(database_url, tmp_path) as api, tls_server(tmp_path) as server:
        check = await create(api, endpoint=f"127.0.0.1:{server.port}",
                             expected_fingerprint=":".join(f"{b:02X}" for b in bytes.fromhex(fingerprint(server))))
        assert check["expected_fingerprint"] == fingerprint(server)  # colons and case normalised
        await api.services.health_checks.run_due_checks()
        assert (await get(api, check["id"]))["status"] == "Healthy"
        ack = await api.admin.post(f"{PATH}/{check['id']}/acknowledge")
        assert ack.status_code == 200 and ack.json()["acknowledged_by"] == "alice"

        swapped = server.serve("other.example.com")
        assert (await tick(api))["mismatch"] == 1
        mismatch = await get(api, check["id"])
        assert mismatch["status"] == "CertMismatch" and mismatch["observed_fingerprint"] == swapped
        assert mismatch["acknowledged"] is False and mismatch["acknowledged_at"] is None
        assert swapped in mismatch["failure_reason"] and mismatch["consecutive_failures"] == 0
        assert (await history(api, check["id"]))["data"][0]["status"] == "CertMismatch"

        listed = (await api.user.get(PATH, params={"status": "CertMismatch"})).json()
        assert [c["id"] for c in listed["data"]] == [check["id"]]
        assert (await api.user.get(PATH, params={"status": "Healthy"})).json()["total"] == 0
        assert (await api.user.get(f"{PATH}/summary")).json()["cert_mismatch"] == 1

        # The operator accepts the new certificate: the next probe is Healthy.
        updated = await api.user.put(f"{PATH}/{check['id']}", json={"expected_fingerprint": swapped})
        assert updated.status_code == 200
        await tick(api)
        assert (await get(api, check["id"]))["status"] == "Healthy"
        assert [(c["from"], c["to"]) for c in await transitions(api)][-2:] == [
            ("Healthy", "CertMismatch"), ("CertMismatch", "Healthy"),
        ]


async def test_expected_fingerprint_follows_the_certificates_latest_version(
    database_url: str, tmp_path: Path
) -> None:
    async with monitored(database_url, tmp_path) as api, tls_server(tmp_path) as server:
        cert = await factories.seed_certificate(api)
        now = clock_of(api).now()

        async def add_version(fp: str, created: Any) -> None:
            async with api.services.ctx.db.transaction() as conn:
                await rows.insert_row(conn, certificate_versions, {
                    "id": factories.unique("certver"), "certificate_id": cert["id"],
                    "serial_number": factories.unique("serial"), "not_before": created,
                    "not_after": created + timedelta(days=60), "fingerprint_sha256": fp,
                    "pem_chain": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", "created_at": created,
                })

        await add_version(fingerprint(server), now - timedelta(days=1))
        check = await create(api, endpoint=f"127.0.0.1:{server.port}", certificate_id=cert["id"])
        await api.services.health_checks.run_due_checks()
        assert (await get(api, check["id"]))["status"] == "Healthy"

        await add_version("ab" * 32, now)  # renewed, not yet deployed
        await tick(api)
        assert (await get(api, check["id"]))["status"] == "CertMismatch"
        listed = (await api.user.get(PATH, params={"certificate_id": cert["id"]})).json()
        assert listed["total"] == 1


async def test_history_older_than_the_retention_is_purged(database_url: str, tmp_path: Path) -> None:
    async with monitored(database_url, tmp_path, CERTCTL_HEALTH_CHECK_HISTORY_RETENTION="2h") as api, \
            tls_server(tmp_path) as server:
        check = await create(api, endpoint=f"127.0.0.1:{server.port}", check_interval_seconds=1800)
        await api.services.health_checks.run_due_checks()
        for _ in range(4):
            await tick(api, 1800)
        assert (await history(api, check["id"]))["total"] == 5  # probes at 0, 30, 60, 90, 120 minutes
        outcome = await tick(api, 1800)  # at 150 minutes: the probe at 0 is older than 2 hours; 30 is exactly 2 h old
        assert outcome["history_purged"] == 1
        entries = (await history(api, check["id"]))["data"]
        oldest = clock_of(api).now() - timedelta(hours=2)
        assert len(entries) == 5 and min(datetime.fromisoformat(e["checked_at"]) for e in entries) == oldest
        outcome = await tick(api, 1)
        assert outcome["due"] == 0 and outcome["history_purged"] == 1  # the purge runs even when nothing is due

        deleted = await api.user.delete(f"{PATH}/{check['id']}")
        assert deleted.status_code == 204
        async with api.services.ctx.db.read() as conn:
            assert await rows.count_rows(conn, endpoint_health_history) == 0  # cascades
        assert (await api.user.get(f"{PATH}/{check['id']}")).status_code == 404


async def test_probes_run_with_bounded_concurrency(database_url: str, tmp_path: Path) -> None:
    async with monitored(database_url, tmp_path, CERTCTL_HEALTH_CHECK_MAX_CONCURRENT="3") as api, \
            tls_server(tmp_path) as server:
        for _ in range(8):
            await create(api, endpoint=f"127.0.0.1:{server.port}")
        service = api.services.health_checks
        real = service.dial
        active = peak = 0

        async def counting(host: str, port: int, server_name: str | None, timeout: float) -> ProbeResult:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            try:
                await asyncio.sleep(0.02)  # hold the slot long enough for the others to queue
                return await real(host, port, server_name, timeout)
            finally:
                active -= 1

        service.dial = counting
        outcome = await service.run_due_checks()
        assert outcome["due"] == 8 and outcome["healthy"] == 8 and peak == 3 and server.accepted == 8


# ---- the SSRF guard ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [
    "169.254.169.254:443", "[fd00:ec2::254]:443", "169.254.10.1:443", "[fe80::1]:443", "100.100.100.200:80",
    "[::ffff:169.254.169.254]:443", "224.0.0.1:443",
])
async def test_link_local_and_metadata_endpoints_are_refused(api: Api, endpoint: str) -> None:
    response = await api.admin.post(PATH, json={"endpoint": endpoint})
    assert response.status_code == 400, response.text
    assert "may not be probed" in response.json()["message"]


async def test_loopback_is_refused_unless_allowed_and_never_dialled(api: Api, tmp_path: Path) -> None:
    async with tls_server(tmp_path) as server:
        refused = await api.admin.post(PATH, json={"endpoint": f"127.0.0.1:{server.port}"})
        assert refused.status_code == 400 and "CERTCTL_NETWORK_SCAN_ALLOW_LOOPBACK" in refused.json()["message"]
        private = await api.admin.post(PATH, json={"endpoint": "10.1.2.3:443"})
        assert private.status_code == 400 and "CERTCTL_NETWORK_SCAN_ALLOW_PRIVATE" in private.json()["message"]
        # A name is resolved at probe time; what it resolves to goes through the same guard.
        named = await create(api, endpoint=f"localhost:{server.port}")
        await api.services.health_checks.run_due_checks()
        current = await get(api, named["id"])
        assert server.accepted == 0
        assert current["consecutive_failures"] == 1 and "loopback" in current["failure_reason"]


# ---- API rules -----------------------------------------------------------------------------------------------------


BAD_BODIES: list[dict[str, Any]] = [
    {},
    {"endpoint": "no-port.example.com"},
    {"endpoint": "host.example.com:0"},
    {"endpoint": "host.example.com:70000"},
    {"endpoint": "host.example.com:https"},
    {"endpoint": "::1:443"},
    {"endpoint": "bad host!:443"},
    {"endpoint": "h.example.com:443", "check_interval_seconds": 10},
    {"endpoint": "h.example.com:443", "timeout_ms": 5},
    {"endpoint": "h.example.com:443", "degraded_threshold": 0},
    {"endpoint": "h.example.com:443", "degraded_threshold": 4, "down_threshold": 3},
    {"endpoint": "h.example.com:443", "expected_fingerprint": "abc"},
    {"endpoint": "h.example.com:443", "certificate_id": "mc-nope"},
    {"endpoint": "h.example.com:443", "network_scan_target_id": "nst-nope"},
    {"endpoint": "h.example.com:443", "server_name": "not a name"},
    {"endpoint": "h.example.com:443", "surprise": True},
]


async def test_bad_input_is_400_and_writes_nothing(api: Api) -> None:
    for body in BAD_BODIES:
        response = await api.admin.post(PATH, json=body)
        assert response.status_code == 400, (body, response.text)
    check = await create(api, endpoint="h.example.com:443", server_name="Www.Example.com")
    assert check["server_name"] == "www.example.com" and check["check_interval_seconds"] == 300
    for body in ({"down_threshold": 1}, {"endpoint": "169.254.169.254:443"}, {"check_interval_seconds": 5},
                 {"timeout_ms": None}, {"certificate_id": "mc-nope"}, {"status": "Healthy"}):
        response = await api.admin.put(f"{PATH}/{check['id']}", json=body)
        assert response.status_code == 400, (body, response.text)
    assert (await api.admin.get(PATH, params={"status": "Sideways"})).status_code == 400
    assert (await api.admin.get(f"{PATH}/{check['id']}/history", params={"limit": 0})).status_code == 400
    for method, path in (("get", f"{PATH}/hc-nope"), ("put", f"{PATH}/hc-nope"), ("delete", f"{PATH}/hc-nope"),
                         ("post", f"{PATH}/hc-nope/acknowledge"), ("get", f"{PATH}/hc-nope/history")):
        kwargs: dict[str, Any] = {"json": {}} if method == "put" else {}
        assert (await getattr(api.admin, method)(path, **kwargs)).status_code == 404, path
    async with api.services.ctx.db.read() as conn:
        assert await rows.count_rows(conn, endpoint_health_checks) == 1
        assert await rows.count_rows(conn, endpoint_health_history) == 0
    assert (await get(api, check["id"]))["updated_at"] == check["updated_at"]
    assert await api.audit_actions("health_check") == ["health_check_created"]


async def test_users_manage_checks_like_other_resources_and_anonymous_callers_cannot(api: Api) -> None:
    check = await factories.create(api.user, PATH, {"endpoint": "h.example.com:8443", "enabled": False})
    updated = await api.user.put(f"{PATH}/{check['id']}", json={"check_interval_seconds": 600, "down_threshold": 9})
    assert updated.status_code == 200 and updated.json()["check_interval_seconds"] == 600
    assert (await api.user.get(PATH, params={"enabled": "false"})).json()["total"] == 1
    assert (await api.user.get(PATH, params={"enabled": "true"})).json()["total"] == 0
    # A disabled check is never probed.
    assert (await api.services.health_checks.run_due_checks())["due"] == 0
    for method, path in (("get", PATH), ("post", PATH), ("get", f"{PATH}/summary"), ("get", f"{PATH}/{check['id']}"),
                         ("post", f"{PATH}/{check['id']}/acknowledge"), ("delete", f"{PATH}/{check['id']}")):
        assert (await getattr(api.anon, method)(path)).status_code == 401, path
    assert (await api.user.delete(f"{PATH}/{check['id']}")).status_code == 204
    actions = await api.audit_actions("health_check")
    assert sorted(actions) == ["health_check_created", "health_check_deleted", "health_check_updated"]


# ---- settings and the loop -----------------------------------------------------------------------------------------


def test_settings_defaults_and_startup_validation() -> None:
    defaults = HealthCheckSettings.from_env({})
    assert (defaults.enabled, defaults.default_interval, defaults.default_timeout_ms, defaults.max_concurrent,
            defaults.history_retention) == (False, 300, 5000, 20, timedelta(days=30))
    assert defaults.policy.allow_loopback is False
    tuned = HealthCheckSettings.from_env({"CERTCTL_HEALTH_CHECK_HISTORY_RETENTION": "7d",
                                          "CERTCTL_HEALTH_CHECK_DEFAULT_TIMEOUT": "2000"})
    assert tuned.history_retention == timedelta(days=7) and tuned.default_timeout_ms == 2000
    base = {"CERTCTL_DATABASE_URL": "sqlite:///x.db", "CERTCTL_API_KEY": "k" * 24}
    for name, value in (("CERTCTL_HEALTH_CHECK_ENABLED", "sometimes"), ("CERTCTL_HEALTH_CHECK_AUTO_CREATE", "2"),
                        ("CERTCTL_HEALTH_CHECK_DEFAULT_INTERVAL", "5"), ("CERTCTL_HEALTH_CHECK_DEFAULT_TIMEOUT", "x"),
                        ("CERTCTL_HEALTH_CHECK_MAX_CONCURRENT", "0"),
                        ("CERTCTL_HEALTH_CHECK_HISTORY_RETENTION", "forever")):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({**base, name: value})
        with pytest.raises(SettingsError, match=name):
            HealthCheckSettings.from_env({name: value})


async def test_the_monitor_loop_runs_only_when_enabled(database_url: str, tmp_path: Path) -> None:
    async with monitored(database_url, tmp_path) as api:
        assert "endpoint_health" not in [loop.name for loop in build_loops(api.services, SchedulerSettings())]
    async with monitored(database_url, tmp_path, CERTCTL_HEALTH_CHECK_ENABLED="true") as api:
        loops = {loop.name: loop for loop in build_loops(api.services, SchedulerSettings())}
        loop = loops["endpoint_health"]
        assert loop.interval == timedelta(seconds=60) and loop.run_at_start is False and loop.leader_only
        assert loop.work == api.services.health_checks.run_due_checks
