"""The state behind `/api/v1/metrics` and the gauges of `/api/v1/metrics/prometheus`, read from the database.

Read at each scrape (a handful of aggregate queries) rather than kept in process memory, so every worker and every
replica answers with the same figures. Counters of events live in `certctl.observability.metrics`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from certctl.domain.enums import NON_TERMINAL_JOB_STATUSES, CertificateStatus
from certctl.observability.metrics import QueueDepth, StateSnapshot, server_started_at
from certctl.services.context import ServiceContext
from certctl.services.stats import canonical_status_counts, inventory_counts
from certctl.store import metrics_repo, stats_repo


class MetricsService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def snapshot(self) -> StateSnapshot:
        now = self.ctx.clock.now()
        async with self.ctx.db.read() as conn:
            counts = await inventory_counts(conn, now)
            by_status = canonical_status_counts(await stats_repo.certificates_by_status(conn))
            queue = await metrics_repo.job_queue(conn, [s.value for s in NON_TERMINAL_JOB_STATUSES])
        certs, agent_counts, job_counts = counts.certificates, counts.agents, counts.jobs
        started_at = server_started_at()
        return StateSnapshot(
            certificate_total=certs["total"],
            certificate_active=by_status.get(CertificateStatus.ACTIVE.value, 0),
            certificate_expiring_soon=certs["expiring"],
            certificate_expired=certs["expired"],
            certificate_revoked=certs["revoked"],
            agent_total=agent_counts["total"],
            agent_online=agent_counts["active"],
            job_pending=job_counts["pending"],
            job_completed_total=job_counts["completed"],
            job_failed_total=job_counts["failed"],
            notification_dead_total=counts.dead_notifications,
            certificates_by_status=by_status,
            queue=[
                QueueDepth(t, s, n, max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0)
                for t, s, n, oldest in queue
            ],
            server_started=datetime.fromtimestamp(started_at, UTC),
            measured_at=now,
            uptime_seconds=max(0.0, time.time() - started_at),  # wall time, whatever clock the services use
        )
