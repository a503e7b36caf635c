"""Endpoint health checks: CRUD, the TLS probe monitor, acknowledgements, history and its retention.

The monitor (scheduler loop `endpoint_health`, core.md §3) probes every enabled check whose interval has
passed, at most CERTCTL_HEALTH_CHECK_MAX_CONCURRENT (20) at once, with the shared TLS probe
(certctl.connectors.tlsprobe). Each probe is recorded in one transaction: a history row, the check's new
state, and, when the status changed, the `health_check_status_changed` audit event; a transition clears
the acknowledgement. A failed probe increments `consecutive_failures` once (the reference incremented it
twice, so its thresholds tripped one probe early). History older than CERTCTL_HEALTH_CHECK_HISTORY_RETENTION
(30 days) is purged by the same loop.

The SSRF guard is the network scanner's `AddressPolicy` (certctl.services.network_scan), with its settings
(CERTCTL_NETWORK_SCAN_ALLOW_LOOPBACK / _ALLOW_PRIVATE): link-local and cloud metadata addresses are never
dialled, loopback and private ranges only when allowed. A host name is resolved here and the address that
passed the guard is dialled (SNI carries the name), so a second, different DNS answer cannot redirect it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.config import env_bool, env_int_between, parse_duration
from certctl.connectors.tlsprobe import ProbeError, ProbeResult, probe_tls
from certctl.domain.actor import Actor
from certctl.domain.errors import NotFoundError, ValidationError
from certctl.domain.ids import new_id
from certctl.domain.models.common import PageParams
from certctl.domain.models.health_checks import (
    EndpointHealthCheck,
    HealthCheckAcknowledge,
    HealthHistoryEntry,
    HealthHistoryPage,
    HealthStatus,
    HealthSummary,
    split_endpoint,
)
from certctl.services import audit
from certctl.services.context import ServiceContext
from certctl.services.crud import CrudService, require_reference
from certctl.services.network_scan import AddressPolicy, NetworkScanSettings
from certctl.store import certificates_repo, health_repo, rows
from certctl.store.rows import Row
from certctl.store.schema import endpoint_health_checks, managed_certificates, network_scan_targets

log = logging.getLogger("certctl.health_checks")

Dialer = Callable[[str, int, str | None, float], Awaitable[ProbeResult]]
LOOP_INTERVAL = timedelta(seconds=60)  # core.md §3: the monitor looks for due checks every minute

@dataclass(frozen=True)
class HealthCheckSettings:
    """CERTCTL_HEALTH_CHECK_* (checked at start by certctl.config; docs/configuration.md "Endpoint health")."""

    enabled: bool = False  # the scheduled monitor; the API works either way
    default_interval: int = 300  # seconds, for checks created without check_interval_seconds
    default_timeout_ms: int = 5000
    max_concurrent: int = 20
    history_retention: timedelta = timedelta(days=30)
    auto_create: bool = False  # accepted for compatibility; checks are not created automatically yet
    policy: AddressPolicy = field(default_factory=AddressPolicy)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HealthCheckSettings:
        retention = parse_duration(
            "CERTCTL_HEALTH_CHECK_HISTORY_RETENTION", env.get("CERTCTL_HEALTH_CHECK_HISTORY_RETENTION") or "720h",
            3600.0,
        )
        return cls(
            enabled=env_bool(env, "CERTCTL_HEALTH_CHECK_ENABLED", False),
            default_interval=env_int_between(env, "CERTCTL_HEALTH_CHECK_DEFAULT_INTERVAL", 300, 30, 7 * 86400),
            default_timeout_ms=env_int_between(env, "CERTCTL_HEALTH_CHECK_DEFAULT_TIMEOUT", 5000, 100, 60_000),
            max_concurrent=env_int_between(env, "CERTCTL_HEALTH_CHECK_MAX_CONCURRENT", 20, 1, 1000),
            history_retention=timedelta(seconds=retention),
            auto_create=env_bool(env, "CERTCTL_HEALTH_CHECK_AUTO_CREATE", False),
            policy=NetworkScanSettings.from_env(env).policy,
        )


def _refusal(host: str, policy: AddressPolicy) -> str | None:
    """Why an IP literal must not be probed (None for a name or an allowed address)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return policy.refusal(address)


async def _dial(host: str, port: int, server_name: str | None, timeout: float) -> ProbeResult:
    return await probe_tls(host, port, server_name=server_name, timeout=timeout)


@dataclass(frozen=True)
class _Outcome:
    result: ProbeResult | None
    error: str | None


def next_status(
    current: HealthStatus, failures: int, degraded: int, down: int, *, mismatch: bool, success: bool
) -> HealthStatus:
    """The status after a probe; `failures` is the consecutive failure count including this probe."""
    if success:
        return HealthStatus.CERT_MISMATCH if mismatch else HealthStatus.HEALTHY
    if failures >= down:
        return HealthStatus.DOWN
    if failures >= degraded:
        return HealthStatus.DEGRADED
    return current  # a failure below the thresholds keeps the status it had


class HealthCheckService(CrudService[EndpointHealthCheck]):
    table = endpoint_health_checks
    model = EndpointHealthCheck
    resource = "health_check"
    id_prefix = "hc"
    unique_name = False

    def __init__(
        self, ctx: ServiceContext, settings: HealthCheckSettings | None = None, dial: Dialer | None = None
    ) -> None:
        super().__init__(ctx)
        self.settings = settings or HealthCheckSettings.from_env(ctx.settings.extra)
        self.dial: Dialer = dial or _dial

    # ---- CRUD hooks ------------------------------------------------------------------------------------------
    def _check_endpoint(self, endpoint: str) -> None:
        host, _ = split_endpoint(endpoint)
        reason = _refusal(host, self.settings.policy)
        if reason is not None:
            raise ValidationError(f"endpoint '{endpoint}' may not be probed: {reason}")

    async def prepare_create(self, conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
        self._check_endpoint(values["endpoint"])
        await require_reference(conn, managed_certificates, values.get("certificate_id"), "certificate_id")
        await require_reference(conn, network_scan_targets, values.get("network_scan_target_id"),
                                "network_scan_target_id")
        for name in ("server_name", "expected_fingerprint"):
            if values.get(name) == "":
                del values[name]
        values.setdefault("check_interval_seconds", self.settings.default_interval)
        values.setdefault("timeout_ms", self.settings.default_timeout_ms)
        values.update(status=HealthStatus.UNKNOWN.value, consecutive_failures=0, acknowledged=False)
        return values

    async def prepare_update(self, conn: AsyncConnection, current: Row, changes: dict[str, Any]) -> dict[str, Any]:
        if "endpoint" in changes:
            self._check_endpoint(changes["endpoint"])
        if "certificate_id" in changes:
            if changes["certificate_id"] == "":
                changes["certificate_id"] = None
            else:
                await require_reference(conn, managed_certificates, changes["certificate_id"], "certificate_id")
        for name in ("server_name", "expected_fingerprint"):
            if changes.get(name) == "":
                changes[name] = None
        degraded = changes.get("degraded_threshold", current["degraded_threshold"])
        down = changes.get("down_threshold", current["down_threshold"])
        if down < degraded:
            raise ValidationError("down_threshold must be at least degraded_threshold")
        return changes

    def list_filters(self, **filters: Any) -> list[ColumnElement[bool]]:
        status = filters.pop("status", None)
        where = super().list_filters(**filters)
        if status is not None:
            try:
                parsed = HealthStatus.parse(status)
            except ValueError as exc:
                raise ValidationError(f"status: {exc}") from None
            where.append(endpoint_health_checks.c.status == parsed.value)
        return where

    async def list_checks(
        self, page: PageParams, *, status: str | None = None, certificate_id: str | None = None,
        network_scan_target_id: str | None = None, enabled: bool | None = None,
    ) -> tuple[list[EndpointHealthCheck], int]:
        return await self.list(page, status=status, certificate_id=certificate_id,
                               network_scan_target_id=network_scan_target_id, enabled=enabled)

    # ---- reads and acknowledgement ----------------------------------------------------------------------------
    async def summary(self) -> HealthSummary:
        async with self.ctx.db.read() as conn:
            counts = await health_repo.status_counts(conn)
        return HealthSummary(
            healthy=counts.get(HealthStatus.HEALTHY.value, 0), degraded=counts.get(HealthStatus.DEGRADED.value, 0),
            down=counts.get(HealthStatus.DOWN.value, 0), cert_mismatch=counts.get(HealthStatus.CERT_MISMATCH.value, 0),
            unknown=counts.get(HealthStatus.UNKNOWN.value, 0), total=sum(counts.values()),
        )

    async def history(self, check_id: str, limit: int) -> HealthHistoryPage:
        if not 1 <= limit <= 1000:
            raise ValidationError("limit must be between 1 and 1000")
        async with self.ctx.db.read() as conn:
            if not await rows.exists(conn, endpoint_health_checks, check_id):
                raise NotFoundError.of("health check", check_id)
            found, total = await health_repo.history(conn, check_id, limit)
        return HealthHistoryPage(data=[HealthHistoryEntry.model_validate(dict(r)) for r in found], total=total)

    async def acknowledge(self, actor: Actor, check_id: str, body: HealthCheckAcknowledge) -> EndpointHealthCheck:
        by = body.acknowledged_by or actor.name
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            current = await rows.get_row_for_update(conn, endpoint_health_checks, check_id)
            if current is None:
                raise NotFoundError.of("health check", check_id)
            await rows.update_row(conn, endpoint_health_checks, check_id, {
                "acknowledged": True, "acknowledged_by": by, "acknowledged_at": now, "updated_at": now,
            })
            await audit.record(conn, self.ctx.clock, actor, "health_check_acknowledged", self.resource, check_id,
                               {"status": current["status"], "acknowledged_by": by})
            row = await rows.get_row(conn, endpoint_health_checks, check_id)
        assert row is not None
        return self.to_model(row)

    # ---- the monitor -------------------------------------------------------------------------------------------
    async def run_due_checks(self) -> dict[str, int]:
        """The scheduled loop: probe every enabled check whose interval has passed, then purge old history."""
        now = self.ctx.clock.now()
        async with self.ctx.db.read() as conn:
            checks = await health_repo.enabled_checks(conn)
        due = [
            c for c in checks
            if c["last_checked_at"] is None
            or c["last_checked_at"] + timedelta(seconds=c["check_interval_seconds"]) <= now
        ]
        outcome = {"due": len(due), "healthy": 0, "failed": 0, "mismatch": 0, "transitions": 0}
        gate = asyncio.Semaphore(self.settings.max_concurrent)

        async def one(check: Row) -> None:
            async with gate:
                probed = await self._probe(check)
            status, changed = await self._record(check["id"], probed)
            if changed:
                outcome["transitions"] += 1
            if probed.error is not None:
                outcome["failed"] += 1
            elif status is HealthStatus.CERT_MISMATCH:
                outcome["mismatch"] += 1
            else:
                outcome["healthy"] += 1

        await asyncio.gather(*(one(check) for check in due))
        outcome["history_purged"] = await self.purge_history()
        return outcome

    async def purge_history(self) -> int:
        before = self.ctx.clock.now() - self.settings.history_retention
        async with self.ctx.db.transaction() as conn:
            return await health_repo.purge_history(conn, before)

    async def _probe(self, check: Row) -> _Outcome:
        host, port = split_endpoint(check["endpoint"])
        timeout = check["timeout_ms"] / 1000
        server_name = check["server_name"]
        try:
            address = await self._allowed_address(host, port, timeout)
        except ProbeError as exc:
            return _Outcome(None, str(exc))
        if address != host and server_name is None:
            server_name = host  # dialled by address: the name still goes in SNI
        try:
            return _Outcome(await self.dial(address, port, server_name, timeout), None)
        except ProbeError as exc:
            return _Outcome(None, str(exc))

    async def _allowed_address(self, host: str, port: int, timeout: float) -> str:
        """The address to dial for `host`: itself when it is an IP, else the first resolved one the guard allows."""
        policy = self.settings.policy
        reason = _refusal(host, policy)
        if reason is not None:
            raise ProbeError(f"refused to probe {host}: {reason}")
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            pass
        try:
            async with asyncio.timeout(timeout):
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            raise ProbeError(f"cannot resolve {host}: {exc.__class__.__name__}: {exc}") from None
        reasons: list[str] = []
        for info in infos:
            address = str(info[4][0]).split("%", 1)[0]
            refusal = policy.refusal(ipaddress.ip_address(address))
            if refusal is None:
                return address
            reasons.append(f"{address}: {refusal}")
        raise ProbeError(f"refused to probe {host}: every address it resolves to is refused ({'; '.join(reasons)})")

    async def _expected(self, conn: AsyncConnection, check: Row) -> str | None:
        if check["expected_fingerprint"]:
            return str(check["expected_fingerprint"])
        if check["certificate_id"]:
            version = await certificates_repo.latest_version(conn, check["certificate_id"])
            if version is not None:
                return str(version["fingerprint_sha256"]).lower()
        return None

    async def _record(self, check_id: str, probed: _Outcome) -> tuple[HealthStatus, bool]:
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            check = await rows.get_row_for_update(conn, endpoint_health_checks, check_id)
            if check is None:  # deleted while it was probed
                return HealthStatus.UNKNOWN, False
            current = HealthStatus(check["status"])
            result = probed.result
            changes: dict[str, Any] = {"last_checked_at": now, "updated_at": now}
            if result is None:
                failures = check["consecutive_failures"] + 1  # once per failed probe (the reference counted twice)
                status = next_status(current, failures, check["degraded_threshold"], check["down_threshold"],
                                     mismatch=False, success=False)
                changes.update(consecutive_failures=failures, last_failure_at=now, failure_reason=probed.error,
                               response_time_ms=None)
            else:
                expected = await self._expected(conn, check)
                mismatch = expected is not None and expected != result.fingerprint_sha256
                status = next_status(current, 0, check["degraded_threshold"], check["down_threshold"],
                                     mismatch=mismatch, success=True)
                changes.update(
                    consecutive_failures=0, last_success_at=now, observed_fingerprint=result.fingerprint_sha256,
                    response_time_ms=round(result.latency_ms), tls_version=result.tls_version,
                    cipher_suite=result.cipher, cert_subject=result.subject, cert_issuer=result.issuer,
                    cert_not_after=result.not_after,
                    failure_reason=(
                        f"served certificate {result.fingerprint_sha256} is not the expected {expected}"
                        if mismatch else None
                    ),
                )
            changed = status is not current
            changes["status"] = status.value
            if changed:
                changes.update(last_transition_at=now, acknowledged=False, acknowledged_by=None, acknowledged_at=None)
            await rows.update_row(conn, endpoint_health_checks, check_id, changes)
            await health_repo.insert_history(conn, {
                "id": new_id("hch"), "health_check_id": check_id, "status": status.value,
                "response_time_ms": changes["response_time_ms"],
                "observed_fingerprint": result.fingerprint_sha256 if result else None,
                "tls_version": result.tls_version if result else None,
                "cipher_suite": result.cipher if result else None,
                "cert_subject": result.subject if result else None, "cert_issuer": result.issuer if result else None,
                "cert_not_before": result.not_before if result else None,
                "cert_not_after": result.not_after if result else None,
                "failure_reason": changes["failure_reason"], "checked_at": now,
            })
            if changed:
                await audit.record(conn, self.ctx.clock, Actor.system(), "health_check_status_changed", self.resource,
                                   check_id, {
                                       "endpoint": check["endpoint"], "from": current.value, "to": status.value,
                                       "consecutive_failures": changes["consecutive_failures"],
                                       "observed_fingerprint": changes.get("observed_fingerprint"),
                                       "failure_reason": changes["failure_reason"],
                                   })
        if changed:
            log.info("health check %s (%s): %s -> %s", check_id, check["endpoint"], current.value, status.value)
        return status, changed


