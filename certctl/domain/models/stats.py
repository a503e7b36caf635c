"""Dashboard statistics (`/api/v1/stats/*`), in the reference contract's shapes.

Item fields follow the OpenAPI contract (`completed`, `failed`, `count`); the reference server's
own spellings (`completed_count`, `failed_count`, `success_rate`, `issued_count`) are sent as well
so clients written against either keep working.
"""

from __future__ import annotations

from datetime import datetime

from certctl.domain.models.common import WireModel


class DashboardSummary(WireModel):
    total_certificates: int
    expiring_certificates: int
    expired_certificates: int
    revoked_certificates: int
    active_agents: int
    offline_agents: int
    total_agents: int
    pending_jobs: int
    failed_jobs: int
    complete_jobs: int
    notifications_dead: int
    completed_at: datetime


class StatusCount(WireModel):
    status: str
    count: int


class CertificatesByStatus(WireModel):
    status_counts: list[StatusCount]


class ExpirationBucket(WireModel):
    date: str
    count: int


class ExpirationTimeline(WireModel):
    buckets: list[ExpirationBucket]


class JobTrendPoint(WireModel):
    date: str
    completed: int
    failed: int
    completed_count: int
    failed_count: int
    success_rate: float  # percent of finished jobs that completed; 0 on a day without any


class JobTrends(WireModel):
    trends: list[JobTrendPoint]


class IssuancePoint(WireModel):
    date: str
    count: int
    issued_count: int


class IssuanceRate(WireModel):
    rate: list[IssuancePoint]
