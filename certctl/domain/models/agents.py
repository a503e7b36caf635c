"""Agents: the processes on managed hosts that generate keys and deploy certificates."""

from __future__ import annotations

import ipaddress
from datetime import datetime

from pydantic import Field, field_validator

from certctl.domain.enums import AgentStatus
from certctl.domain.models.common import InputModel, WireModel

# Identities that own discovery rows (network scanner, cloud secret managers); never retired.
SENTINEL_AGENT_IDS = frozenset({"server-scanner", "cloud-aws-sm", "cloud-azure-kv", "cloud-gcp-sm"})


class Agent(WireModel):
    """The wire shape. `api_key_hash` is deliberately absent: it is never serialised."""

    id: str
    name: str
    hostname: str
    status: AgentStatus
    last_heartbeat_at: datetime | None
    registered_at: datetime
    os: str
    architecture: str
    ip_address: str
    version: str
    retired_at: datetime | None
    retired_reason: str | None


class AgentRegistered(Agent):
    """The registration answer: the agent plus its own API key, shown this once (only its hash is kept)."""

    api_key: str


def _check_ip(value: str | None) -> str | None:
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"'{value[:64]}' is not an IPv4 or IPv6 address") from None
    return value


class AgentRegister(InputModel):
    id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    name: str = Field(min_length=1, max_length=128)
    hostname: str = Field(min_length=1, max_length=255)
    os: str = Field(default="", max_length=64)
    architecture: str = Field(default="", max_length=64)
    ip_address: str = Field(default="", max_length=64)
    version: str = Field(default="", max_length=64)

    _ip = field_validator("ip_address")(_check_ip)


class Heartbeat(InputModel):
    version: str | None = Field(default=None, max_length=64)
    hostname: str | None = Field(default=None, max_length=255)
    os: str | None = Field(default=None, max_length=64)
    architecture: str | None = Field(default=None, max_length=64)
    ip_address: str | None = Field(default=None, max_length=64)

    _ip = field_validator("ip_address")(_check_ip)


class AgentDependencyCounts(WireModel):
    active_targets: int
    active_certificates: int
    pending_jobs: int

    @property
    def any(self) -> bool:
        return bool(self.active_targets or self.active_certificates or self.pending_jobs)


class RetireAgentResponse(WireModel):
    retired_at: datetime
    already_retired: bool = False  # the already-retired case answers 204 with no body
    cascade: bool
    counts: AgentDependencyCounts
