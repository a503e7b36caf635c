"""Network scanning: targets CRUD, the SSRF guard, and scans of real TLS servers started on 127.0.0.1.

The servers are asyncio TCP servers that count every accepted connection and then either complete a TLS
handshake (with a certificate chain made here) or never answer, so "nothing was dialled", the concurrency
bound and the per-connection timeout are observed on real sockets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from certctl.config import Settings, SettingsError
from certctl.connectors.tlsprobe import ProbeError, ProbeResult
from certctl.domain.actor import Actor
from certctl.scheduler import SchedulerSettings, build_loops
from certctl.services.network_scan import AddressPolicy, NetworkScanService, NetworkScanSettings, plan_addresses
from certctl.store import rows
from certctl.store.schema import agents, discovered_certificates, network_scan_targets
from tests import factories
from tests.conftest import Api, make_settings, start_api, stop_api
from tests.scheduler_helpers import clock_of, clocked_api
from tests.test_discovery import Issued, issue

LOOPBACK_ALLOWED = {"CERTCTL_NETWORK_SCAN_ALLOW_LOOPBACK": "true"}


# ---- servers ------------------------------------------------------------------------------------------------------


@dataclass
class Counters:
    accepted: int = 0
    active: int = 0
    max_active: int = 0
    handshakes: int = 0


@dataclass
class Served:
    ports: list[int]
    counters: Counters
    chain: list[Issued] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.ports[0]


@asynccontextmanager
async def tls_servers(tmp: Path, count: int = 1, *, handshake: bool = True) -> AsyncIterator[Served]:
    """`count` servers on 127.0.0.1 sharing counters; with `handshake`, each serves leaf + intermediate."""
    ca = issue("Scan Root CA", ca=True)
    intermediate = issue("Scan Issuing CA", issuer=ca, ca=True)
    leaf = issue("scanned.example.com", issuer=intermediate, sans=("scanned.example.com",))
    (tmp / "chain.pem").write_text(leaf.pem + intermediate.pem)
    (tmp / "key.pem").write_text(leaf.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "chain.pem", tmp / "key.pem")
    counters = Counters()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counters.accepted += 1
        counters.active += 1
        counters.max_active = max(counters.max_active, counters.active)
        try:
            if handshake:
                await writer.start_tls(context)
                counters.handshakes += 1
            await reader.read()  # until the client goes away; without `handshake`, never a byte back
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            counters.active -= 1
            writer.close()

    servers = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(count)]
    try:
        yield Served([s.sockets[0].getsockname()[1] for s in servers], counters, [leaf, intermediate])
    finally:
        for server in servers:
            server.close()


@asynccontextmanager
async def app_with(database_url: str, data_dir: Path, extra: dict[str, str]) -> AsyncIterator[Api]:
    running, lifespan = await start_api(make_settings(database_url, data_dir, extra=extra))
    try:
        yield running
    finally:
        await stop_api(running, lifespan)


async def _target(api: Api, **body: Any) -> dict[str, Any]:
    return await factories.create(api.admin, "/api/v1/network-scan-targets",
                                  {"name": factories.unique("nst"), **body})


async def _scan(api: Api, target_id: str) -> tuple[int, dict[str, Any]]:
    response = await api.user.post(f"/api/v1/network-scan-targets/{target_id}/scan")
    assert response.status_code in (200, 202), response.text
    return response.status_code, response.json()


# ---- the SSRF guard ------------------------------------------------------------------------------------------------

ALWAYS_REFUSED = {
    "169.254.169.254": "cloud metadata", "fd00:ec2::254": "cloud metadata", "100.100.100.200": "cloud metadata",
    "169.254.10.1": "link-local", "fe80::1": "link-local", "224.0.0.1": "multicast", "239.255.255.250": "multicast",
    "ff02::1": "multicast", "0.0.0.0": "unspecified", "0.1.2.3": "unspecified", "::": "unspecified",
    "255.255.255.255": "broadcast", "240.0.0.1": "reserved",
    "::ffff:169.254.169.254": "cloud metadata", "64:ff9b::a9fe:a9fe": "cloud metadata",
    "2002:a9fe:a9fe::1": "cloud metadata", "::169.254.169.254": "cloud metadata",
}
LOOPBACK = ("127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1")
PRIVATE = ("10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1", "100.64.0.1", "fd12:3456::1", "fc00::1")
PUBLIC = ("93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:4700::1111", "192.0.2.10")


def test_address_policy() -> None:
    everything = AddressPolicy(allow_loopback=True, allow_private=True)
    for text, reason in ALWAYS_REFUSED.items():
        address = ipaddress.ip_address(text)
        for policy in (AddressPolicy(), everything):
            refusal = policy.refusal(address)
            assert refusal is not None and reason in refusal, (text, refusal)
    for text in LOOPBACK:
        address = ipaddress.ip_address(text)
        refusal = AddressPolicy(allow_private=True).refusal(address)
        assert refusal is not None and "CERTCTL_NETWORK_SCAN_ALLOW_LOOPBACK" in refusal, text
        assert AddressPolicy(allow_loopback=True).refusal(address) is None, text
    for text in PRIVATE:
        address = ipaddress.ip_address(text)
        refusal = AddressPolicy(allow_loopback=True).refusal(address)
        assert refusal is not None and "CERTCTL_NETWORK_SCAN_ALLOW_PRIVATE" in refusal, text
        assert AddressPolicy(allow_private=True).refusal(address) is None, text
    for text in PUBLIC:
        assert AddressPolicy().refusal(ipaddress.ip_address(text)) is None, text


def test_plan_skips_refused_addresses_and_reports_them_per_cidr() -> None:
    plan = plan_addresses(["127.0.0.0/29", "169.254.169.252/30", "93.184.216.0/30", "93.184.216.1/32"],
                          AddressPolicy(allow_loopback=True))
    assert [str(a) for a in plan.addresses] == [
        "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "93.184.216.1", "93.184.216.2"]
    assert plan.skipped == (
        "127.0.0.0/29: 2 address(es) skipped: network or broadcast address of the range",
        "169.254.169.252/30: 1 address(es) skipped: cloud metadata address",
        "169.254.169.252/30: 1 address(es) skipped: link-local address",
        "169.254.169.252/30: 2 address(es) skipped: network or broadcast address of the range",
        "93.184.216.0/30: 2 address(es) skipped: network or broadcast address of the range",
    )
    refused = plan_addresses(["127.0.0.1/32"], AddressPolicy())
    assert refused.addresses == () and "CERTCTL_NETWORK_SCAN_ALLOW_LOOPBACK=true" in refused.skipped[0]


def test_settings_from_env_and_startup_validation() -> None:
    assert NetworkScanSettings.from_env({}) == NetworkScanSettings(
        enabled=False, interval=timedelta(minutes=15), allow_loopback=False, allow_private=False, concurrency=50)
    parsed = NetworkScanSettings.from_env({
        "CERTCTL_NETWORK_SCAN_ENABLED": "true", "CERTCTL_NETWORK_SCAN_INTERVAL": "6h",
        "CERTCTL_NETWORK_SCAN_ALLOW_PRIVATE": "yes", "CERTCTL_NETWORK_SCAN_CONCURRENCY": "10"})
    assert (parsed.enabled, parsed.interval, parsed.allow_private, parsed.allow_loopback, parsed.concurrency) == (
        True, timedelta(hours=6), True, False, 10)
    for name, value in (("CERTCTL_NETWORK_SCAN_ENABLED", "sometimes"), ("CERTCTL_NETWORK_SCAN_ALLOW_LOOPBACK", "2"),
                        ("CERTCTL_NETWORK_SCAN_ALLOW_PRIVATE", "maybe"), ("CERTCTL_NETWORK_SCAN_INTERVAL", "soon"),
                        ("CERTCTL_NETWORK_SCAN_INTERVAL", "1s"), ("CERTCTL_NETWORK_SCAN_CONCURRENCY", "0")):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})
        with pytest.raises(SettingsError, match=name):
            NetworkScanSettings.from_env({name: value})


# ---- targets -------------------------------------------------------------------------------------------------------


async def test_target_crud_and_audit(api: Api) -> None:
    created = await _target(api, name="dc-1", cidrs=["10.0.0.7/24", "10.0.0.0/24", "192.168.1.5"])
    assert created["id"].startswith("nst-")
    assert created["cidrs"] == ["10.0.0.0/24", "192.168.1.5/32"]  # normalised, repeats dropped
    assert (created["ports"], created["enabled"], created["scan_interval_hours"], created["timeout_ms"]) == (
        [443], True, 6, 5000)
    assert created["last_scan_at"] is None and created["last_scan_certs_found"] is None
    assert (await api.user.get(f"/api/v1/network-scan-targets/{created['id']}")).json() == created
    assert (await api.user.get("/api/v1/network-scan-targets")).json()["total"] == 1
    updated = await api.admin.put(f"/api/v1/network-scan-targets/{created['id']}",
                                  json={"ports": [443, 8443, 443], "enabled": False})
    assert updated.status_code == 200, updated.text
    assert updated.json()["ports"] == [443, 8443] and updated.json()["cidrs"] == created["cidrs"]
    assert (await api.admin.delete(f"/api/v1/network-scan-targets/{created['id']}")).status_code == 204
    assert (await api.user.get(f"/api/v1/network-scan-targets/{created['id']}")).status_code == 404
    assert (await api.user.post(f"/api/v1/network-scan-targets/{created['id']}/scan")).status_code == 404
    assert await api.audit_actions("network_scan_target") == [
        "network_scan_target_deleted", "network_scan_target_updated", "network_scan_target_created"]


async def test_target_bad_input_writes_nothing(api: Api) -> None:
    base = {"name": "t", "cidrs": ["10.0.0.0/24"]}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"cidrs": ["10.0.0.0/24"]}, 400, "name"),
        ({"name": "t"}, 400, "cidrs"),
        ({**base, "cidrs": []}, 400, "cidrs"),
        ({**base, "cidrs": ["10.0.0.0/19"]}, 400, "larger than /20"),
        ({**base, "cidrs": ["10.0.0.0/8"]}, 400, "larger than /20"),
        ({**base, "cidrs": ["2001:db8::/64"]}, 400, "larger than /116"),
        ({**base, "cidrs": ["10.0.0.300/24"]}, 400, "not a CIDR"),
        ({**base, "cidrs": ["example.com"]}, 400, "not a CIDR"),
        ({**base, "ports": [0]}, 400, "not a TCP port"),
        ({**base, "ports": [65536]}, 400, "not a TCP port"),
        ({**base, "ports": []}, 400, "ports"),
        ({**base, "ports": ["https"]}, 400, "ports"),
        ({**base, "scan_interval_hours": 0}, 400, "scan_interval_hours"),
        ({**base, "timeout_ms": 10}, 400, "timeout_ms"),
        ({**base, "timeout_ms": 600_000}, 400, "timeout_ms"),
        ({**base, "colour": "red"}, 400, "colour"),
        ({**base, "cidrs": [f"10.{i}.0.0/20" for i in range(17)], "ports": [443]}, 400, "limit is 65536"),
        ({**base, "cidrs": ["10.0.0.0/20"], "ports": list(range(1, 18))}, 400, "limit is 65536"),
    ]
    for body, status, needle in cases:
        response = await api.admin.post("/api/v1/network-scan-targets", json=body)
        assert response.status_code == status, (body, response.text)
        assert needle in response.json()["message"], (needle, response.json())
    async with api.services.ctx.db.read() as conn:
        assert await rows.count_rows(conn, network_scan_targets) == 0
    created = await _target(api, name="only", cidrs=["10.0.0.0/20"], ports=list(range(1, 17)))  # exactly the limit
    assert (await api.admin.post("/api/v1/network-scan-targets", json={**base, "name": "only"})).status_code == 409
    too_many = await api.admin.put(f"/api/v1/network-scan-targets/{created['id']}", json={"ports": list(range(1, 18))})
    assert too_many.status_code == 400
    assert (await api.user.get(f"/api/v1/network-scan-targets/{created['id']}")).json()["ports"] == list(range(1, 17))


# ---- scans of real servers --------------------------------------------------------------------------------------


async def test_scan_finds_certificates_served_on_loopback_when_allowed(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "silent").mkdir()
    async with app_with(database_url, tmp_path / "data", LOOPBACK_ALLOWED) as api, \
            tls_servers(tmp_path) as served, tls_servers(tmp_path / "silent", handshake=False) as silent:
        target = await _target(api, cidrs=["127.0.0.1/32"], ports=[served.port, silent.port], timeout_ms=300)
        status, result = await _scan(api, target["id"])
        assert status == 202, result
        leaf = served.chain[0]
        assert result["id"].startswith("dscan-") and result["agent_id"] == "server-scanner"
        assert result["network_scan_target_id"] == target["id"] and result["directories"] == ["127.0.0.1/32"]
        assert (result["addresses"], result["probes"], result["tls_endpoints"]) == (1, 2, 1)
        assert result["certificates_found"] == result["certificates_new"] >= 1 and result["skipped"] == []
        assert served.counters.handshakes == 1 and silent.counters.accepted == 1

        found = (await api.user.get("/api/v1/discovered-certificates", params={"agent_id": "server-scanner"})).json()
        served_fingerprints = {c.fingerprint for c in served.chain}
        assert {d["fingerprint_sha256"] for d in found["data"]} <= served_fingerprints
        row = next(d for d in found["data"] if d["fingerprint_sha256"] == leaf.fingerprint)
        assert (row["source_path"], row["source_format"], row["status"]) == (
            f"127.0.0.1:{served.port}", "TLS", "Unmanaged")
        assert row["common_name"] == "scanned.example.com" and row["pem_data"] == leaf.pem

        scanned = (await api.user.get(f"/api/v1/network-scan-targets/{target['id']}")).json()
        assert scanned["last_scan_at"] is not None and scanned["last_scan_certs_found"] == result["certificates_found"]
        assert scanned["last_scan_duration_ms"] == result["scan_duration_ms"]
        async with api.services.ctx.db.read() as conn:
            sentinel = await rows.get_row(conn, agents, "server-scanner")
        assert sentinel is not None and sentinel["api_key_hash"] == ""
        assert (await api.admin.delete("/api/v1/agents/server-scanner")).status_code == 403

        # The same endpoint again: the same rows, seen again.
        _, again = await _scan(api, target["id"])
        assert again["certificates_new"] == 0 and again["certificates_found"] == result["certificates_found"]
        assert (await api.user.get("/api/v1/discovered-certificates")).json()["total"] == found["total"]
        assert await api.audit_actions("discovery_scan") == ["discovery_scan_completed"] * 2


async def test_loopback_is_refused_unless_allowed_and_nothing_is_dialled(api: Api, tmp_path: Path) -> None:
    async with tls_servers(tmp_path) as served:
        target = await _target(api, cidrs=["127.0.0.1/32", "127.0.0.0/30"], ports=[served.port])
        status, result = await _scan(api, target["id"])
    assert status == 200 and result["status"] == "completed" and "no certificates" in result["message"]
    assert (result["addresses"], result["probes"], result["certificates_found"]) == (0, 0, 0)
    assert served.counters.accepted == 0  # nothing reached the server
    assert result["errors"] == result["skipped"] and result["errors_count"] == 3
    assert all("CERTCTL_NETWORK_SCAN_ALLOW_LOOPBACK=true" in line for line in result["errors"][:2])
    assert (await api.user.get("/api/v1/discovered-certificates")).json()["total"] == 0
    scans = (await api.user.get("/api/v1/discovery-scans")).json()
    assert scans["total"] == 1 and scans["data"][0]["errors"] == result["errors"]  # the refusal is on record


async def test_link_local_metadata_multicast_and_broadcast_are_never_dialled(api: Api) -> None:
    dialled: list[tuple[str, int]] = []

    async def record(host: str, port: int, timeout: float) -> ProbeResult:
        dialled.append((host, port))
        raise ProbeError("refused by the test")

    scanner = NetworkScanService(
        api.services.ctx, NetworkScanSettings(allow_loopback=True, allow_private=True), dial=record)
    refused = ["169.254.169.254/32", "169.254.0.0/28", "fe80::/124", "fd00:ec2::254/128", "224.0.0.0/28",
               "ff02::/124", "0.0.0.0/30", "::/128", "255.255.255.255/32", "::ffff:169.254.169.254/128",
               "64:ff9b::a9fe:a9fe/128", "240.0.0.0/30", "100.100.100.200/32"]
    target = await _target(api, cidrs=[*refused, "10.9.8.7/32"], ports=[80, 443])
    result = await scanner.scan_target(Actor("alice"), target["id"])
    assert dialled == [("10.9.8.7", 80), ("10.9.8.7", 443)]  # the one private address, allowed here
    assert (result.addresses, result.probes) == (1, 2)
    reasons = " ".join(result.skipped)
    for reason in ("cloud metadata", "link-local", "multicast", "unspecified", "broadcast", "reserved"):
        assert reason in reasons
    assert {line.split(":")[0] for line in result.skipped} >= {"169.254.169.254/32", "224.0.0.0/28"}


async def test_concurrency_is_bounded_and_silent_ports_time_out(api: Api, tmp_path: Path) -> None:
    async with tls_servers(tmp_path, count=40, handshake=False) as silent:
        api.services.network_scan.settings = replace(
            api.services.network_scan.settings, allow_loopback=True, concurrency=8)
        target = await _target(api, cidrs=["127.0.0.1/32"], ports=silent.ports, timeout_ms=200)
        started = time.monotonic()
        status, result = await _scan(api, target["id"])
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.05)
    assert status == 200 and (result["probes"], result["tls_endpoints"]) == (40, 0)
    assert silent.counters.accepted == 40  # every port was dialled ...
    assert silent.counters.max_active == 8  # ... never more than 8 at once, and 8 were reached
    assert 5 * 0.2 <= elapsed < 5 * 0.2 + 3  # five rounds of one 200 ms timeout each
    assert silent.counters.active == 0  # the scanner closed every connection it opened
    assert NetworkScanSettings().concurrency == 50 and NetworkScanSettings.from_env({}).concurrency == 50


async def test_a_port_that_accepts_but_never_handshakes_times_out(api: Api, tmp_path: Path) -> None:
    api.services.network_scan.settings = replace(api.services.network_scan.settings, allow_loopback=True)
    async with tls_servers(tmp_path, handshake=False) as silent:
        target = await _target(api, cidrs=["127.0.0.1/32"], ports=[silent.port], timeout_ms=300)
        started = time.monotonic()
        status, result = await _scan(api, target["id"])
        elapsed = time.monotonic() - started
    assert status == 200 and silent.counters.accepted == 1 and result["tls_endpoints"] == 0
    assert 0.3 <= elapsed < 2.0
    assert result["scan_duration_ms"] >= 300


async def test_scheduled_scans_follow_each_targets_interval(database_url: str, tmp_path: Path) -> None:
    extra = {**LOOPBACK_ALLOWED, "CERTCTL_NETWORK_SCAN_ENABLED": "true", "CERTCTL_NETWORK_SCAN_INTERVAL": "10m"}
    async with clocked_api(database_url, tmp_path / "data", extra=extra) as api, tls_servers(tmp_path) as served:
        loops = {loop.name: loop for loop in build_loops(api.services, SchedulerSettings())}
        assert loops["network_scan"].interval == timedelta(minutes=10) and loops["network_scan"].leader_only
        hourly = await _target(api, cidrs=["127.0.0.1/32"], ports=[served.port], scan_interval_hours=1)
        await _target(api, cidrs=["127.0.0.1/32"], ports=[served.port], enabled=False)
        scanner = api.services.network_scan
        # The whole served chain is recorded (leaf and intermediate), as the reference's scanner does.
        assert await scanner.scan_due_targets() == {"due": 1, "scanned": 1, "failed": 0, "certificates_found": 2}
        assert await scanner.scan_due_targets() == {"due": 0, "scanned": 0, "failed": 0, "certificates_found": 0}
        clock_of(api).advance(timedelta(minutes=59))
        assert (await scanner.scan_due_targets())["due"] == 0
        clock_of(api).advance(timedelta(minutes=1))
        assert (await scanner.scan_due_targets())["scanned"] == 1
        assert served.counters.handshakes == 2
        scanned = (await api.user.get(f"/api/v1/network-scan-targets/{hourly['id']}")).json()
        assert scanned["last_scan_at"].startswith(clock_of(api).now().isoformat()[:19])
        async with api.services.ctx.db.read() as conn:
            assert await rows.count_rows(conn, discovered_certificates) == 2
        events = (await api.admin.get("/api/v1/audit", params={"resource_type": "discovery_scan"})).json()["data"]
        assert {e["actor"] for e in events} == {"system"}
    async with app_with(database_url, tmp_path / "data2", {}) as plain:
        assert "network_scan" not in {loop.name for loop in build_loops(plain.services, SchedulerSettings())}
