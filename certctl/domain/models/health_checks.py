"""Endpoint health checks (core.md §1 EndpointHealthCheck): a TLS probe of host:port, its status and history.

Status: Unknown before the first probe; Healthy; Degraded after `degraded_threshold` consecutive failures;
Down after `down_threshold`; CertMismatch when the served leaf's SHA-256 fingerprint differs from the
expected one (the explicit `expected_fingerprint`, else the latest version of `certificate_id`).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime

from pydantic import Field, field_validator, model_validator

from certctl.domain.enums import WireEnum
from certctl.domain.models.common import InputModel, WireModel

MIN_INTERVAL_SECONDS = 30  # the contract's minimum for check_interval_seconds
MAX_INTERVAL_SECONDS = 7 * 86400
MIN_TIMEOUT_MS = 100
MAX_TIMEOUT_MS = 60_000
MAX_THRESHOLD = 1000

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?$")  # noqa: E501
_HEX = re.compile(r"^[0-9a-f]{64}$")


class HealthStatus(WireEnum):
    UNKNOWN = "Unknown"
    HEALTHY = "Healthy"
    DEGRADED = "Degraded"
    DOWN = "Down"
    CERT_MISMATCH = "CertMismatch"


def split_endpoint(value: str) -> tuple[str, int]:
    """`host:port` or `[ipv6]:port` → (host, port); ValueError naming what is wrong."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"endpoint '{value}' must be host:port ([ipv6]:port for IPv6)")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"endpoint '{value}': '{host}' is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"endpoint '{value}' must be host:port ([ipv6]:port for IPv6)")
        if ":" in host:
            raise ValueError(f"endpoint '{value}': write an IPv6 address in brackets, [ipv6]:port")
        if not _is_ip(host) and not _HOSTNAME.match(host):
            raise ValueError(f"endpoint '{value}': '{host}' is neither a host name nor an IP address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"endpoint '{value}': port must be a number from 1 to 65535")
    return host, int(port_text)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def normalise_fingerprint(value: str) -> str:
    """SHA-256 fingerprint as lowercase hex without separators (colons, spaces accepted on input)."""
    text = re.sub(r"[\s:]", "", value).lower()
    if not _HEX.match(text):
        raise ValueError("expected_fingerprint must be a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return text


class _HealthCheckFields(InputModel):
    @field_validator("endpoint", check_fields=False)
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, port = split_endpoint(value)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @field_validator("server_name", check_fields=False)
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return value
        if not _HOSTNAME.match(value):
            raise ValueError(f"server_name '{value}' is not a host name")
        return value.lower().rstrip(".")

    @field_validator("expected_fingerprint", check_fields=False)
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        return value if value is None or value == "" else normalise_fingerprint(value)


class HealthCheckCreate(_HealthCheckFields):
    endpoint: str = Field(min_length=3, max_length=300)
    server_name: str | None = Field(default=None, max_length=253)
    certificate_id: str | None = Field(default=None, min_length=1, max_length=200)
    network_scan_target_id: str | None = Field(default=None, min_length=1, max_length=200)
    expected_fingerprint: str | None = Field(default=None, max_length=200)
    check_interval_seconds: int | None = Field(default=None, ge=MIN_INTERVAL_SECONDS, le=MAX_INTERVAL_SECONDS)
    timeout_ms: int | None = Field(default=None, ge=MIN_TIMEOUT_MS, le=MAX_TIMEOUT_MS)
    degraded_threshold: int = Field(default=2, ge=1, le=MAX_THRESHOLD)
    down_threshold: int = Field(default=5, ge=1, le=MAX_THRESHOLD)
    enabled: bool = True

    @model_validator(mode="after")
    def _thresholds(self) -> HealthCheckCreate:
        if self.down_threshold < self.degraded_threshold:
            raise ValueError("down_threshold must be at least degraded_threshold")
        return self


class HealthCheckUpdate(_HealthCheckFields):
    """A patch: absent fields are kept; an empty string clears server_name or expected_fingerprint."""

    endpoint: str | None = Field(default=None, min_length=3, max_length=300)
    server_name: str | None = Field(default=None, max_length=253)
    certificate_id: str | None = Field(default=None, max_length=200)
    expected_fingerprint: str | None = Field(default=None, max_length=200)
    check_interval_seconds: int | None = Field(default=None, ge=MIN_INTERVAL_SECONDS, le=MAX_INTERVAL_SECONDS)
    timeout_ms: int | None = Field(default=None, ge=MIN_TIMEOUT_MS, le=MAX_TIMEOUT_MS)
    degraded_threshold: int | None = Field(default=None, ge=1, le=MAX_THRESHOLD)
    down_threshold: int | None = Field(default=None, ge=1, le=MAX_THRESHOLD)
    enabled: bool | None = None


class HealthCheckAcknowledge(InputModel):
    acknowledged_by: str | None = Field(default=None, max_length=200)


class EndpointHealthCheck(WireModel):
    id: str
    endpoint: str
    server_name: str | None
    certificate_id: str | None
    network_scan_target_id: str | None
    expected_fingerprint: str | None
    observed_fingerprint: str | None
    status: HealthStatus
    enabled: bool
    check_interval_seconds: int
    timeout_ms: int
    degraded_threshold: int
    down_threshold: int
    consecutive_failures: int
    response_time_ms: int | None
    tls_version: str | None
    cipher_suite: str | None
    cert_subject: str | None
    cert_issuer: str | None
    cert_not_after: datetime | None
    last_checked_at: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_transition_at: datetime | None
    failure_reason: str | None
    acknowledged: bool
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    created_at: datetime
    updated_at: datetime


class HealthHistoryEntry(WireModel):
    id: str
    health_check_id: str
    status: HealthStatus
    response_time_ms: int | None
    observed_fingerprint: str | None
    tls_version: str | None
    cipher_suite: str | None
    cert_subject: str | None
    cert_issuer: str | None
    cert_not_before: datetime | None
    cert_not_after: datetime | None
    failure_reason: str | None
    checked_at: datetime


class HealthHistoryPage(WireModel):
    data: list[HealthHistoryEntry]
    total: int


class HealthSummary(WireModel):
    healthy: int
    degraded: int
    down: int
    cert_mismatch: int
    unknown: int
    total: int
