"""Dashboard statistics. Every number is one aggregate query; day series are filled in here so
that days without events still appear (with zero) in the order a chart draws them."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from certctl.domain.enums import NON_TERMINAL_JOB_STATUSES, CertificateStatus, JobStatus
from certctl.domain.models.stats import (
    CertificatesByStatus,
    DashboardSummary,
    ExpirationBucket,
    ExpirationTimeline,
    IssuancePoint,
    IssuanceRate,
    JobTrendPoint,
    JobTrends,
    StatusCount,
)
from certctl.services.context import ServiceContext
from certctl.store import stats_repo

EXPIRING_WINDOW = timedelta(days=30)
AGENT_ACTIVE_WINDOW = timedelta(minutes=5)
_STATUS_ORDER = {status.value: i for i, status in enumerate(CertificateStatus)}


class StatsService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def summary(self) -> DashboardSummary:
        now = self.ctx.clock.now()
        async with self.ctx.db.read() as conn:
            certs = await stats_repo.certificate_summary(
                conn, now=now, expiring_before=now + EXPIRING_WINDOW,
                archived=CertificateStatus.ARCHIVED.value, revoked=CertificateStatus.REVOKED.value,
                expired=CertificateStatus.EXPIRED.value,
            )
            agent_counts = await stats_repo.agent_summary(conn, active_since=now - AGENT_ACTIVE_WINDOW)
            job_counts = await stats_repo.job_summary(
                conn, pending=[s.value for s in NON_TERMINAL_JOB_STATUSES],
                failed=JobStatus.FAILED.value, completed=JobStatus.COMPLETED.value,
            )
            dead = await stats_repo.notifications_with_status(conn, "dead")
        return DashboardSummary(
            total_certificates=certs["total"],
            expiring_certificates=certs["expiring"],
            expired_certificates=certs["expired"],
            revoked_certificates=certs["revoked"],
            active_agents=agent_counts["active"],
            offline_agents=agent_counts["offline"],
            total_agents=agent_counts["total"],
            pending_jobs=job_counts["pending"],
            failed_jobs=job_counts["failed"],
            complete_jobs=job_counts["completed"],
            notifications_dead=dead,
            completed_at=now,
        )

    async def certificates_by_status(self) -> CertificatesByStatus:
        async with self.ctx.db.read() as conn:
            raw = await stats_repo.certificates_by_status(conn)
        merged: dict[str, int] = {}
        for status, count in raw:
            # Old rows may carry another spelling (reference bug 13); count them under the canonical one.
            try:
                name = CertificateStatus.parse(status).value
            except ValueError:
                name = status
            merged[name] = merged.get(name, 0) + count
        ordered = sorted(merged.items(), key=lambda item: (_STATUS_ORDER.get(item[0], len(_STATUS_ORDER)), item[0]))
        return CertificatesByStatus(status_counts=[StatusCount(status=s, count=n) for s, n in ordered])

    async def expiration_timeline(self, days: int) -> ExpirationTimeline:
        """Certificates (not archived or revoked) expiring from now to the end of the `days`-th day."""
        now = self.ctx.clock.now()
        today = now.astimezone(UTC).date()
        end = _midnight(today + timedelta(days=days))
        async with self.ctx.db.read() as conn:
            counts = await stats_repo.expirations_by_day(
                conn, start=now, end=end,
                exclude_statuses=(CertificateStatus.ARCHIVED.value, CertificateStatus.REVOKED.value),
            )
        return ExpirationTimeline(buckets=[
            ExpirationBucket(date=d, count=counts.get(d, 0)) for d in _days(today, days, forward=True)
        ])

    async def job_trends(self, days: int) -> JobTrends:
        """Completed and failed jobs per day over the last `days` days (today included)."""
        today = self.ctx.clock.now().astimezone(UTC).date()
        since = _midnight(today - timedelta(days=days - 1))
        async with self.ctx.db.read() as conn:
            outcomes = await stats_repo.job_outcomes_by_day(
                conn, since=since, completed=JobStatus.COMPLETED.value, failed=JobStatus.FAILED.value
            )
        points = []
        for d in _days(today, days, forward=False):
            completed, failed = outcomes.get(d, (0, 0))
            finished = completed + failed
            rate = round(completed * 100.0 / finished, 2) if finished else 0.0
            points.append(JobTrendPoint(
                date=d, completed=completed, failed=failed, completed_count=completed, failed_count=failed,
                success_rate=rate,
            ))
        return JobTrends(trends=points)

    async def issuance_rate(self, days: int) -> IssuanceRate:
        """Certificate versions issued per day over the last `days` days (today included)."""
        today = self.ctx.clock.now().astimezone(UTC).date()
        since = _midnight(today - timedelta(days=days - 1))
        async with self.ctx.db.read() as conn:
            counts = await stats_repo.issuances_by_day(conn, since=since)
        return IssuanceRate(rate=[
            IssuancePoint(date=d, count=counts.get(d, 0), issued_count=counts.get(d, 0))
            for d in _days(today, days, forward=False)
        ])


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _days(today: date, days: int, *, forward: bool) -> list[str]:
    """`days` ISO dates in ascending order: starting today (forward) or ending today (backward)."""
    first = today if forward else today - timedelta(days=days - 1)
    return [(first + timedelta(days=i)).isoformat() for i in range(days)]
