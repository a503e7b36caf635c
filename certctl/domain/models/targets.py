"""Deployment targets: where an agent installs certificates (a web server, a key store, a cloud service)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from certctl.domain.enums import TargetType
from certctl.domain.models.common import InputModel, JsonObject, WireModel


class DeploymentTarget(WireModel):
    id: str
    name: str
    type: str
    agent_id: str
    config: dict[str, Any]  # redacted view
    enabled: bool
    last_tested_at: datetime | None
    test_status: str
    retired_at: datetime | None
    retired_reason: str | None
    created_at: datetime
    updated_at: datetime


class TargetCreate(InputModel):
    id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    name: str = Field(min_length=1, max_length=255)
    type: TargetType
    agent_id: str = Field(min_length=1, max_length=128)
    config: JsonObject = Field(default_factory=dict)
    enabled: bool = True


class TargetUpdate(InputModel):
    name: str | None = Field(default=None, min_length=1, max_length=255)
    type: TargetType | None = None
    agent_id: str | None = Field(default=None, min_length=1, max_length=128)
    config: JsonObject | None = None
    enabled: bool | None = None
