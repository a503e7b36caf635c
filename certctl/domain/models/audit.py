"""Audit events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from certctl.domain.models.common import WireModel


class AuditEvent(WireModel):
    id: str
    actor: str
    actor_type: str
    action: str
    resource_type: str
    resource_id: str
    details: dict[str, Any]
    timestamp: datetime
