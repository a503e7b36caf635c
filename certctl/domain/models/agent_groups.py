"""Agent groups: dynamic sets of agents chosen by OS, architecture, network and version."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from enum import StrEnum

from pydantic import Field, field_validator

from certctl.domain.models.common import InputModel, WireModel


class MembershipType(StrEnum):
    INCLUDE = "include"
    EXCLUDE = "exclude"


class AgentGroup(WireModel):
    id: str
    name: str
    description: str
    match_os: str
    match_architecture: str
    match_ip_cidr: str
    match_version: str
    enabled: bool
    created_at: datetime
    updated_at: datetime


def normalise_cidr(value: str | None) -> str | None:
    """'' (no criterion) or a network in canonical form; host bits are dropped (10.1.2.3/8 → 10.0.0.0/8)."""
    if not value:
        return value
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"'{value[:64]}' is not an IPv4 or IPv6 network in CIDR form (e.g. 10.0.0.0/8)") from None


class _GroupFields(InputModel):
    description: str | None = Field(default=None, max_length=4096)
    match_os: str | None = Field(default=None, max_length=64)
    match_architecture: str | None = Field(default=None, max_length=64)
    match_ip_cidr: str | None = Field(default=None, max_length=64)
    match_version: str | None = Field(default=None, max_length=64)
    enabled: bool | None = None

    _cidr = field_validator("match_ip_cidr")(normalise_cidr)


class AgentGroupCreate(_GroupFields):
    id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    name: str = Field(min_length=1, max_length=255)


class AgentGroupUpdate(_GroupFields):
    name: str | None = Field(default=None, min_length=1, max_length=255)
