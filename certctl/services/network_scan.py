"""The server's network scanner: CIDR ranges and ports probed for TLS, results fed into discovery.

What it does (connectors.md §5, with the reference's SSRF holes closed):

1. Expand each CIDR of the target into addresses. Every address goes through `AddressPolicy` first:
   link-local (169.254/16, fe80::/10), cloud metadata addresses (169.254.169.254, fd00:ec2::254,
   100.100.100.200), multicast, unspecified ("this network" 0/8, ::), broadcast and reserved (240/4)
   addresses are always refused; loopback (127/8, ::1) only with CERTCTL_NETWORK_SCAN_ALLOW_LOOPBACK,
   private ranges (RFC 1918, RFC 6598 100.64/10, fc00::/7, fec0::/10) only with
   CERTCTL_NETWORK_SCAN_ALLOW_PRIVATE. IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64,
   6to4) are judged by that IPv4 address. Refused addresses are counted per CIDR and reason and reported
   in the scan's `errors`; they are never dialled (checked again right before each dial). The reference
   allowed RFC 1918 by default and checked metadata only at dial time.
2. Dial every allowed address and port with at most CERTCTL_NETWORK_SCAN_CONCURRENCY (50) handshakes at once
   and the target's `timeout_ms` per connection (connect and handshake), with the shared TLS probe
   (certctl.connectors.tlsprobe): nothing is verified, what is served is described.
3. Record every served certificate as a discovery of the sentinel agent `server-scanner` with source path
   `ip:port` (`[ip]:port` for IPv6) and format `TLS`, through the same dedup upsert as agents' reports, and
   update the target's `last_scan_*` fields; one transaction, audited.

Addresses are dialled as given: no name is resolved, so there is no DNS rebinding to guard against.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cryptography import x509
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.config import env_bool, env_int_between, parse_duration
from certctl.connectors.discovery.filesystem import describe_certificate
from certctl.connectors.tlsprobe import ProbeError, ProbeResult, probe_tls
from certctl.domain.actor import Actor
from certctl.domain.enums import AgentStatus
from certctl.domain.errors import CertctlError, ConflictError, NotFoundError, ValidationError
from certctl.domain.ids import new_id
from certctl.domain.models.discovery import (
    MAX_TARGET_PROBES,
    SERVER_SCANNER_AGENT_ID,
    NetworkScanResult,
    NetworkScanTarget,
    probe_count,
)
from certctl.services import audit
from certctl.services.context import ServiceContext
from certctl.services.crud import CrudService
from certctl.services.discovery import dedupe_values, entry_values, record_scan
from certctl.store import discovery_repo, rows
from certctl.store.rows import Row
from certctl.store.schema import agents, network_scan_targets

log = logging.getLogger("certctl.network_scan")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Dialer = Callable[[str, int, float], Awaitable[ProbeResult]]

LOOPBACK_VARIABLE = "CERTCTL_NETWORK_SCAN_ALLOW_LOOPBACK"
PRIVATE_VARIABLE = "CERTCTL_NETWORK_SCAN_ALLOW_PRIVATE"

_N = ipaddress.ip_network
# Checked in order; the first match names the reason. Metadata addresses come before the ranges holding them.
_ALWAYS_REFUSED: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (_N("169.254.169.254/32"), "cloud metadata address"),  # AWS, GCP, Azure, OpenStack, DigitalOcean
    (_N("fd00:ec2::254/128"), "cloud metadata address"),  # AWS IMDS over IPv6
    (_N("100.100.100.200/32"), "cloud metadata address"),  # Alibaba Cloud
    (_N("255.255.255.255/32"), "broadcast address"),
    (_N("0.0.0.0/8"), "unspecified address ('this network', RFC 1122 §3.2.1.3)"),
    (_N("::/128"), "unspecified address"),
    (_N("169.254.0.0/16"), "link-local address"),
    (_N("fe80::/10"), "link-local address"),
    (_N("224.0.0.0/4"), "multicast address"),
    (_N("ff00::/8"), "multicast address"),
    (_N("240.0.0.0/4"), "reserved address (RFC 1112 §4)"),
)
_LOOPBACK = (_N("127.0.0.0/8"), _N("::1/128"))
_PRIVATE = (
    _N("10.0.0.0/8"), _N("172.16.0.0/12"), _N("192.168.0.0/16"),  # RFC 1918
    _N("100.64.0.0/10"),  # RFC 6598 shared address space (carrier-grade NAT)
    _N("fc00::/7"),  # RFC 4193 unique local
    _N("fec0::/10"),  # RFC 3879 deprecated site-local
)
_NAT64 = _N("64:ff9b::/96")  # RFC 6052
_V4_COMPATIBLE = _N("::/96")  # RFC 4291 §2.5.5.1 (deprecated)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and would reach (mapped, compatible, NAT64, 6to4)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _V4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses the scanner may dial (the SSRF guard)."""

    allow_loopback: bool = False
    allow_private: bool = False
    loopback_variable: str = LOOPBACK_VARIABLE  # named in refusals; other users of the policy name their own
    private_variable: str = PRIVATE_VARIABLE

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` must not be dialled, or None when it may be."""
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                reason = self.refusal(embedded)
                return None if reason is None else f"{reason}, embedded in an IPv6 address"
        for network, reason in _ALWAYS_REFUSED:
            if address in network:
                return reason
        if any(address in network for network in _LOOPBACK) and not self.allow_loopback:
            return f"loopback address (allowed only with {self.loopback_variable}=true)"
        if any(address in network for network in _PRIVATE) and not self.allow_private:
            return f"private address (allowed only with {self.private_variable}=true)"
        return None


@dataclass(frozen=True)
class ScanPlan:
    addresses: tuple[IPAddress, ...]
    skipped: tuple[str, ...]  # "<cidr>: <n> address(es) skipped: <reason>"


def plan_addresses(cidrs: Sequence[str], policy: AddressPolicy) -> ScanPlan:
    """The addresses of the CIDRs that may be dialled (each once), and what was refused, per CIDR and reason.

    The network and broadcast addresses of an IPv4 range of /30 or wider are skipped like
    `IPv4Network.hosts()` does: nothing listens there.
    """
    allowed: dict[IPAddress, None] = {}
    skipped: list[str] = []
    for cidr in cidrs:
        network = ipaddress.ip_network(cidr)
        refused: Counter[str] = Counter()
        edges = (
            {network.network_address, network.broadcast_address}
            if network.version == 4 and network.prefixlen <= 30 else set()
        )
        for address in network:
            reason = "network or broadcast address of the range" if address in edges else policy.refusal(address)
            if reason is None:
                allowed.setdefault(address, None)
            else:
                refused[reason] += 1
        skipped += [f"{cidr}: {count} address(es) skipped: {reason}" for reason, count in sorted(refused.items())]
    return ScanPlan(tuple(allowed), tuple(skipped))


def endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---- settings ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetworkScanSettings:
    """CERTCTL_NETWORK_SCAN_* (checked at start by certctl.config; docs/configuration.md "Discovery")."""

    enabled: bool = False  # the scheduled loop; `POST /network-scan-targets/{id}/scan` works either way
    interval: timedelta = timedelta(minutes=15)  # how often the loop looks for due targets
    allow_loopback: bool = False
    allow_private: bool = False
    concurrency: int = 50

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NetworkScanSettings:
        concurrency = env_int_between(env, "CERTCTL_NETWORK_SCAN_CONCURRENCY", 50, 1, 1000)
        interval = parse_duration(
            "CERTCTL_NETWORK_SCAN_INTERVAL", env.get("CERTCTL_NETWORK_SCAN_INTERVAL") or "15m", 10.0
        )
        return cls(
            enabled=env_bool(env, "CERTCTL_NETWORK_SCAN_ENABLED", False),
            interval=timedelta(seconds=interval),
            allow_loopback=env_bool(env, LOOPBACK_VARIABLE, False),
            allow_private=env_bool(env, PRIVATE_VARIABLE, False),
            concurrency=concurrency,
        )

    @property
    def policy(self) -> AddressPolicy:
        return AddressPolicy(allow_loopback=self.allow_loopback, allow_private=self.allow_private)


# ---- targets (CRUD) ---------------------------------------------------------------------------------------------


def _check_budget(cidrs: list[str], ports: list[int]) -> None:
    count = probe_count(cidrs, ports)
    if count > MAX_TARGET_PROBES:
        raise ValidationError(
            f"the CIDRs and ports make {count} handshakes per scan; the limit is {MAX_TARGET_PROBES} "
            "(split the target)"
        )


class NetworkScanTargetService(CrudService[NetworkScanTarget]):
    table = network_scan_targets
    model = NetworkScanTarget
    resource = "network_scan_target"
    id_prefix = "nst"

    async def prepare_create(self, conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
        _check_budget(values["cidrs"], values["ports"])
        return values

    async def prepare_update(self, conn: AsyncConnection, current: Row, changes: dict[str, Any]) -> dict[str, Any]:
        if "cidrs" in changes or "ports" in changes:
            _check_budget(changes.get("cidrs", current["cidrs"]), changes.get("ports", current["ports"]))
        return changes


# ---- the scanner ------------------------------------------------------------------------------------------------


async def _probe(host: str, port: int, timeout: float) -> ProbeResult:
    return await probe_tls(host, port, timeout=timeout)


class NetworkScanService:
    def __init__(
        self, ctx: ServiceContext, settings: NetworkScanSettings | None = None, dial: Dialer | None = None
    ) -> None:
        self.ctx = ctx
        self.settings = settings or NetworkScanSettings.from_env(ctx.settings.extra)
        self.dial: Dialer = dial or _probe
        self._running: set[str] = set()  # targets being scanned by this process

    async def scan_target(self, actor: Actor, target_id: str) -> NetworkScanResult:
        """Scan one target now (enabled or not) and record what it serves; 409 while it is being scanned here."""
        if target_id in self._running:
            raise ConflictError(f"network scan target '{target_id}' is already being scanned")
        async with self.ctx.db.read() as conn:
            target = await rows.get_row(conn, network_scan_targets, target_id)
        if target is None:
            raise NotFoundError.of("network scan target", target_id)
        self._running.add(target_id)
        try:
            return await self._scan(actor, target)
        finally:
            self._running.discard(target_id)

    async def _scan(self, actor: Actor, target: Row) -> NetworkScanResult:
        started_at = self.ctx.clock.now()
        started = time.monotonic()
        policy = self.settings.policy
        plan = plan_addresses(target["cidrs"], policy)
        ports: list[int] = list(target["ports"])
        results, probes = await self._probe_all(plan.addresses, ports, target["timeout_ms"] / 1000, policy)
        duration_ms = int((time.monotonic() - started) * 1000)
        entries: list[dict[str, Any]] = []
        problems: list[str] = []
        for result in results:
            where = endpoint(result.host, result.port)
            for der in result.chain_der:
                try:
                    cert = x509.load_der_x509_certificate(der)
                    entries.append(entry_values(describe_certificate(cert, source_path=where, source_format="TLS")))
                except ValueError as exc:
                    problems.append(f"{where}: a served certificate cannot be described: {exc}")
        entries = dedupe_values(entries)
        errors = [*plan.skipped, *problems]
        details = {
            "network_scan_target_id": target["id"], "addresses": len(plan.addresses), "probes": probes,
            "tls_endpoints": len(results), "skipped": list(plan.skipped[:20]),
        }
        async with self.ctx.db.transaction() as conn:
            await self._ensure_scanner_agent(conn)
            # Lock the sentinel's row: scans (and their upserts) of every target take turns, like agents' reports.
            await rows.get_row_for_update(conn, agents, SERVER_SCANNER_AGENT_ID)
            live = await rows.get_row_for_update(conn, network_scan_targets, target["id"])  # deleted meanwhile?
            scan = await record_scan(
                conn, self.ctx.clock, actor, agent_id=SERVER_SCANNER_AGENT_ID, entries=entries,
                directories=list(target["cidrs"]), errors=errors, duration_ms=duration_ms, started_at=started_at,
                network_scan_target_id=target["id"] if live is not None else None, audit_details=details,
            )
            if live is not None:
                await rows.update_row(conn, network_scan_targets, target["id"], {
                    "last_scan_at": scan.completed_at, "last_scan_duration_ms": duration_ms,
                    "last_scan_certs_found": len(entries),
                })
        found = len(entries)
        message = (
            f"found {found} certificate(s) on {len(results)} TLS endpoint(s)" if found
            else "scan completed; no certificates found"
        )
        return NetworkScanResult.of(
            scan, status="completed", message=message, addresses=len(plan.addresses), probes=probes,
            tls_endpoints=len(results), skipped=list(plan.skipped),
        )

    async def _probe_all(
        self, addresses: Sequence[IPAddress], ports: Sequence[int], timeout: float, policy: AddressPolicy
    ) -> tuple[list[ProbeResult], int]:
        """Handshake with every address and port, at most `concurrency` at once; (answers, attempts)."""
        found: list[ProbeResult] = []
        attempts = 0
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def one(address: IPAddress, port: int) -> None:
            try:
                found.append(await self.dial(str(address), port, timeout))
            except (ProbeError, ValueError, OSError):
                pass  # closed, filtered, timed out, not TLS or a malformed leaf: the normal case on most addresses
            finally:
                gate.release()

        async with asyncio.TaskGroup() as tasks:
            for address in addresses:
                if policy.refusal(address) is not None:  # the dial-time check: never reached after the plan
                    continue
                for port in ports:
                    await gate.acquire()  # bounds the handshakes in flight and the tasks alive
                    attempts += 1
                    tasks.create_task(one(address, port))
        found.sort(key=lambda r: (ipaddress.ip_address(r.host), r.port))
        return found, attempts

    async def _ensure_scanner_agent(self, conn: AsyncConnection) -> None:
        """The `server-scanner` sentinel owns the scanner's discoveries; its row is made on first use.

        It has no key (it never calls the API), cannot be registered or retired through the API, and stays
        Offline (no heartbeats).
        """
        if await rows.exists(conn, agents, SERVER_SCANNER_AGENT_ID):
            return
        now = self.ctx.clock.now()
        name = SERVER_SCANNER_AGENT_ID
        if await discovery_repo.agent_name_taken(conn, name):
            name = f"{SERVER_SCANNER_AGENT_ID} ({new_id('sentinel')})"
        await rows.insert_row(conn, agents, {
            "id": SERVER_SCANNER_AGENT_ID, "name": name, "hostname": "certctl server (network scanner)",
            "status": AgentStatus.OFFLINE.value, "registered_at": now, "api_key_hash": "",
            "created_at": now, "updated_at": now,
        })
        await audit.record(conn, self.ctx.clock, Actor.system(), "agent_registered", "agent",
                           SERVER_SCANNER_AGENT_ID, {"sentinel": True, "purpose": "network scanner"})

    async def scan_due_targets(self) -> dict[str, int]:
        """The scheduled loop: scan every enabled target whose `scan_interval_hours` has passed since its last scan."""
        now = self.ctx.clock.now()
        async with self.ctx.db.read() as conn:
            targets = await discovery_repo.enabled_targets(conn)
        due = [
            t for t in targets
            if t["last_scan_at"] is None or t["last_scan_at"] + timedelta(hours=t["scan_interval_hours"]) <= now
        ]
        outcome = {"due": len(due), "scanned": 0, "failed": 0, "certificates_found": 0}
        for target in due:
            try:
                result = await self.scan_target(Actor.system(), target["id"])
            except CertctlError as exc:  # deleted meanwhile, or already being scanned
                outcome["failed"] += 1
                log.warning("network scan of %s failed: %s", target["id"], exc.message)
                continue
            outcome["scanned"] += 1
            outcome["certificates_found"] += result.certificates_found
        return outcome
