"""Dashboard statistics. Every number is one aggregate query; day series are filled in here so
that days without events still appear (with zero) in the order a chart draws them."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Any, TypeVar, cast

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


# Figures over a large inventory (at least BIG_ROWS rows counted) are reused for a few seconds, so
# a wall of dashboards does not rescan a million rows per refresh; small figures are always live.
BIG_ROWS = 10_000
REUSE_SECONDS = 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class InventoryCounts:
    """The inventory's headline figures: the dashboard summary and the metrics endpoints both report them."""

    certificates: dict[str, int]  # total, expiring, expired, revoked
    agents: dict[str, int]  # total, active, offline
    jobs: dict[str, int]  # pending, completed, failed
    dead_notifications: int


async def inventory_counts(conn: Any, now: datetime) -> InventoryCounts:
    certs = await stats_repo.certificate_summary(
        conn, now=now, expiring_before=now + EXPIRING_WINDOW,
        archived=CertificateStatus.ARCHIVED.value, revoked=CertificateStatus.REVOKED.value,
        expired=CertificateStatus.EXPIRED.value,
    )
    agents = await stats_repo.agent_summary(conn, active_since=now - AGENT_ACTIVE_WINDOW)
    jobs = await stats_repo.job_summary(
        conn, pending=[s.value for s in NON_TERMINAL_JOB_STATUSES],
        failed=JobStatus.FAILED.value, completed=JobStatus.COMPLETED.value,
    )
    dead = await stats_repo.notifications_with_status(conn, "dead")
    return InventoryCounts(certs, agents, jobs, dead)


def canonical_status_counts(raw: Any) -> dict[str, int]:
    """(status, count) rows merged by canonical status: old rows may carry another spelling (reference bug 13)."""
    merged: dict[str, int] = {}
    for status, count in raw:
        try:
            name = CertificateStatus.parse(status).value
        except ValueError:
            name = status
        merged[name] = merged.get(name, 0) + count
    return merged


@dataclass
class _Memo:
    value: Any
    expires: float
    refreshing: bool = False


class StatsService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._memo: dict[tuple[Any, ...], _Memo] = {}

    async def _remember(
        self, key: tuple[Any, ...], compute: Callable[[], Awaitable[T]], rows: Callable[[T], int]
    ) -> T:
        """`compute()`, or its recent result when it counted many rows; one caller recomputes an
        expired entry while the others get the previous result."""
        entry = self._memo.get(key)
        if entry is not None and (entry.expires > time.monotonic() or entry.refreshing):
            return cast(T, entry.value)
        if entry is not None:
            entry.refreshing = True
        try:
            value = await compute()
        finally:
            if entry is not None:
                entry.refreshing = False
        if rows(value) >= BIG_ROWS:
            self._memo[key] = _Memo(value, time.monotonic() + REUSE_SECONDS)
        else:
            self._memo.pop(key, None)
        return value

    async def summary(self) -> DashboardSummary:
        return await self._remember(
            ("summary",), self._summary,
            lambda s: s.total_certificates + s.pending_jobs + s.failed_jobs + s.complete_jobs,
        )

    async def certificates_by_status(self) -> CertificatesByStatus:
        return await self._remember(
            ("by_status",), self._certificates_by_status, lambda r: sum(c.count for c in r.status_counts)
        )

    async def expiration_timeline(self, days: int) -> ExpirationTimeline:
        return await self._remember(
            ("timeline", days), lambda: self._expiration_timeline(days), lambda r: sum(b.count for b in r.buckets)
        )

    async def job_trends(self, days: int) -> JobTrends:
        return await self._remember(
            ("job_trends", days), lambda: self._job_trends(days),
            lambda r: sum(p.completed + p.failed for p in r.trends),
        )

    async def issuance_rate(self, days: int) -> IssuanceRate:
        return await self._remember(
            ("issuance", days), lambda: self._issuance_rate(days), lambda r: sum(p.count for p in r.rate)
        )

    async def _summary(self) -> DashboardSummary:
        now = self.ctx.clock.now()
        async with self.ctx.db.read() as conn:
            counts = await inventory_counts(conn, now)
        certs, agent_counts, job_counts = counts.certificates, counts.agents, counts.jobs
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
            notifications_dead=counts.dead_notifications,
            completed_at=now,
        )

    async def _certificates_by_status(self) -> CertificatesByStatus:
        async with self.ctx.db.read() as conn:
            raw = await stats_repo.certificates_by_status(conn)
        merged = canonical_status_counts(raw)
        ordered = sorted(merged.items(), key=lambda item: (_STATUS_ORDER.get(item[0], len(_STATUS_ORDER)), item[0]))
        return CertificatesByStatus(status_counts=[StatusCount(status=s, count=n) for s, n in ordered])

    async def _expiration_timeline(self, days: int) -> ExpirationTimeline:
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

    async def _job_trends(self, days: int) -> JobTrends:
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

    async def _issuance_rate(self, days: int) -> IssuanceRate:
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
    return datetime.combine(day, clock_time.min, tzinfo=UTC)


def _days(today: date, days: int, *, forward: bool) -> list[str]:
    """`days` ISO dates in ascending order: starting today (forward) or ending today (backward)."""
    first = today if forward else today - timedelta(days=days - 1)
    return [(first + timedelta(days=i)).isoformat() for i in range(days)]
