"""`GET /api/v1/metrics`: the contract's MetricsResponse (gauge, counter, uptime), field for field."""

from __future__ import annotations

from datetime import datetime

from certctl.domain.models.common import WireModel


class MetricsGauges(WireModel):
    certificate_total: int
    certificate_active: int
    certificate_expiring_soon: int
    certificate_expired: int
    certificate_revoked: int
    agent_total: int
    agent_online: int
    job_pending: int


class MetricsCounters(WireModel):
    job_completed_total: int
    job_failed_total: int


class MetricsUptime(WireModel):
    uptime_seconds: int
    server_started: datetime
    measured_at: datetime


class MetricsResponse(WireModel):
    gauge: MetricsGauges
    counter: MetricsCounters
    uptime: MetricsUptime
