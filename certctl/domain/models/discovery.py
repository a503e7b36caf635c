"""Discovery: certificates found on agents' disks and on the network, their triage, and network scan targets.

A discovered certificate is keyed by (fingerprint, agent, source path) (connectors.md §5): the same
certificate in two files, or served on two endpoints, is two rows. Triage moves a row from Unmanaged to
Managed (claimed into a managed certificate) or Dismissed.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any

from pydantic import Field, field_validator

from certctl.domain.enums import WireEnum
from certctl.domain.models.common import InputModel, WireModel

# The sentinel agent that owns what the server's own network scanner finds (see SENTINEL_AGENT_IDS).
SERVER_SCANNER_AGENT_ID = "server-scanner"

# What an agent's filesystem scan reports; the network scanner records "TLS" (a certificate served in a
# handshake), which agents may not send.
AGENT_SOURCE_FORMATS = ("PEM", "DER", "PKCS12")
_FORMAT_ALIASES = {"PKCS#12": "PKCS12", "P12": "PKCS12", "PFX": "PKCS12", "CRT": "PEM"}

# Bounds of one report: a filesystem scan of /etc rarely finds more than a few hundred certificates, and the
# request body limit (CERTCTL_MAX_BODY_SIZE, 1 MiB) is met long before these.
MAX_REPORT_CERTIFICATES = 10_000
MAX_REPORT_ERRORS = 10_000
# The dedup key (fingerprint, agent, path) is one unique btree index; PostgreSQL caps an index row near
# 2.7 kB, so a path is limited to 1024 characters and 2048 UTF-8 bytes.
MAX_SOURCE_PATH = 1024
MAX_SOURCE_PATH_BYTES = 2048

# Network scan targets (core.md §1 NetworkScanTarget): each CIDR at most /20, i.e. 4096 addresses (IPv6 too,
# so /116); and a bound on the address-port pairs of one target, so one scan stays a bounded amount of work.
MAX_CIDR_ADDRESSES = 4096
MAX_TARGET_CIDRS = 32
MAX_TARGET_PORTS = 64
MAX_TARGET_PROBES = 65_536


class DiscoveryStatus(WireEnum):
    UNMANAGED = "Unmanaged"
    MANAGED = "Managed"
    DISMISSED = "Dismissed"


class DiscoveredCertificate(WireModel):
    id: str
    fingerprint_sha256: str
    common_name: str
    sans: list[str]
    serial_number: str
    issuer_dn: str
    subject_dn: str
    not_before: datetime | None
    not_after: datetime | None
    key_algorithm: str
    key_size: int
    is_ca: bool
    pem_data: str
    source_path: str
    source_format: str
    agent_id: str
    discovery_scan_id: str | None
    managed_certificate_id: str | None
    status: DiscoveryStatus
    first_seen_at: datetime
    last_seen_at: datetime
    dismissed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class DiscoveryScan(WireModel):
    id: str
    agent_id: str
    directories: list[str]
    certificates_found: int
    certificates_new: int
    errors_count: int
    scan_duration_ms: int
    started_at: datetime
    completed_at: datetime | None
    # Ours: the first errors of the scan (all are counted in errors_count), and which network scan target it was.
    errors: list[str]
    network_scan_target_id: str | None


class DiscoverySummary(WireModel):
    Unmanaged: int
    Managed: int
    Dismissed: int


class StatusMessage(WireModel):
    status: str
    message: str


def _no_control(value: str, what: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} must not contain control characters")
    return value


class DiscoveryEntry(InputModel):
    """One certificate in an agent's report (connectors.md §5 entry fields)."""

    fingerprint_sha256: str = Field(min_length=64, max_length=100)
    common_name: str = Field(default="", max_length=1024)
    sans: list[str] = Field(default_factory=list, max_length=1000)
    serial_number: str = Field(default="", max_length=130)
    issuer_dn: str = Field(default="", max_length=4096)
    subject_dn: str = Field(default="", max_length=4096)
    not_before: datetime | None = None
    not_after: datetime | None = None
    key_algorithm: str = Field(default="", max_length=32)
    key_size: int = Field(default=0, ge=0, le=65536)
    is_ca: bool = False
    pem_data: str = Field(default="", max_length=65536)
    source_path: str = Field(min_length=1, max_length=MAX_SOURCE_PATH)
    source_format: str = Field(default="PEM", max_length=16)

    @field_validator("fingerprint_sha256")
    @classmethod
    def _fingerprint(cls, value: str) -> str:
        cleaned = value.replace(":", "").lower()
        if len(cleaned) != 64 or any(c not in "0123456789abcdef" for c in cleaned):
            raise ValueError("must be the SHA-256 of the certificate's DER as 64 hexadecimal digits")
        return cleaned

    @field_validator("sans")
    @classmethod
    def _sans(cls, value: list[str]) -> list[str]:
        for name in value:
            if len(name) > 1024:
                raise ValueError("a SAN is longer than 1024 characters")
            _no_control(name, "a SAN")
        return value

    @field_validator("source_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if len(value.encode()) > MAX_SOURCE_PATH_BYTES:
            raise ValueError(f"must be at most {MAX_SOURCE_PATH_BYTES} bytes in UTF-8")
        return _no_control(value, "source_path")

    @field_validator("source_format")
    @classmethod
    def _format(cls, value: str) -> str:
        upper = value.upper()
        upper = _FORMAT_ALIASES.get(upper, upper)
        if upper not in AGENT_SOURCE_FORMATS:
            raise ValueError(f"'{value}' is not one of: {', '.join(AGENT_SOURCE_FORMATS)}")
        return upper


class DiscoveryReport(InputModel):
    """`POST /api/v1/agents/{id}/discoveries` (reference DiscoveryReport)."""

    agent_id: str = Field(min_length=1, max_length=128)
    directories: list[str] = Field(max_length=1000)
    certificates: list[DiscoveryEntry] = Field(max_length=MAX_REPORT_CERTIFICATES)
    errors: list[str] = Field(default_factory=list, max_length=MAX_REPORT_ERRORS)
    scan_duration_ms: int = Field(default=0, ge=0, le=7 * 24 * 3600 * 1000)

    @field_validator("directories")
    @classmethod
    def _directories(cls, value: list[str]) -> list[str]:
        for directory in value:
            if not directory or len(directory) > 4096:
                raise ValueError("each directory must be 1-4096 characters")
            _no_control(directory, "a directory")
        return value

    @field_validator("errors")
    @classmethod
    def _errors(cls, value: list[str]) -> list[str]:
        # Kept for the operator, never interpreted; long messages are cut rather than refused.
        return [message[:1024] for message in value]


class ClaimBody(InputModel):
    managed_certificate_id: str = Field(min_length=1, max_length=128)


# ---- network scan targets --------------------------------------------------------------------------------------


def normalise_cidr(text: str) -> str:
    """`10.0.0.7/24` → `10.0.0.0/24`, a bare address → /32 or /128; refuses anything over 4096 addresses."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"'{text[:64]}' is not a CIDR range like 10.0.0.0/24") from None
    if network.num_addresses > MAX_CIDR_ADDRESSES:
        limit = "/20" if network.version == 4 else "/116"
        raise ValueError(f"{network} is larger than {limit} ({MAX_CIDR_ADDRESSES} addresses); split it")
    return str(network)


def probe_count(cidrs: list[str], ports: list[int]) -> int:
    addresses = {a for c in cidrs for a in ipaddress.ip_network(c)}
    return len(addresses) * len(ports)


def _check_cidrs(value: list[str]) -> list[str]:
    normalised = [normalise_cidr(c) for c in value]
    return list(dict.fromkeys(normalised))  # repeats are dropped, order kept


def _check_ports(value: list[int]) -> list[int]:
    for port in value:
        if not 1 <= port <= 65535:
            raise ValueError(f"{port} is not a TCP port (1-65535)")
    return list(dict.fromkeys(value))


class NetworkScanTarget(WireModel):
    id: str
    name: str
    cidrs: list[str]
    ports: list[int]
    enabled: bool
    scan_interval_hours: int
    timeout_ms: int
    last_scan_at: datetime | None
    last_scan_duration_ms: int | None
    last_scan_certs_found: int | None
    created_at: datetime
    updated_at: datetime


class NetworkScanTargetCreate(InputModel):
    name: str = Field(min_length=1, max_length=255)
    cidrs: list[str] = Field(min_length=1, max_length=MAX_TARGET_CIDRS)
    ports: list[int] = Field(default_factory=lambda: [443], min_length=1, max_length=MAX_TARGET_PORTS)
    enabled: bool = True
    scan_interval_hours: int = Field(default=6, ge=1, le=8760)
    timeout_ms: int = Field(default=5000, ge=100, le=60_000)

    _cidrs = field_validator("cidrs")(_check_cidrs)
    _ports = field_validator("ports")(_check_ports)


class NetworkScanTargetUpdate(InputModel):
    """PUT is a partial update, as on every other resource."""

    name: str | None = Field(default=None, min_length=1, max_length=255)
    cidrs: list[str] | None = Field(default=None, min_length=1, max_length=MAX_TARGET_CIDRS)
    ports: list[int] | None = Field(default=None, min_length=1, max_length=MAX_TARGET_PORTS)
    enabled: bool | None = None
    scan_interval_hours: int | None = Field(default=None, ge=1, le=8760)
    timeout_ms: int | None = Field(default=None, ge=100, le=60_000)

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_cidrs(value)

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[int] | None) -> list[int] | None:
        return None if value is None else _check_ports(value)


class NetworkScanResult(DiscoveryScan):
    """The answer of `POST /network-scan-targets/{id}/scan`: the scan row plus what the scanner did.

    The reference answers 202 with a DiscoveryScan when certificates were found and 200 with
    `{status, message}` otherwise; this body carries both shapes' fields, whichever the status code.
    """

    status: str
    message: str
    addresses: int  # addresses that were dialled (after the SSRF guards)
    probes: int  # address-port handshakes attempted
    tls_endpoints: int  # of which completed a TLS handshake
    skipped: list[str]  # addresses refused by the guards, per CIDR and reason (also in `errors`)

    @classmethod
    def of(cls, scan: DiscoveryScan, **extra: Any) -> NetworkScanResult:
        return cls.model_validate({**scan.model_dump(), **extra})
