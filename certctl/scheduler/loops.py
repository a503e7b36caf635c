"""The loops certctl runs in the background (core.md §3), wired to the services that do the work.

| loop | interval variable (default) | on | work |
|---|---|---|---|
| job_processor | CERTCTL_SCHEDULER_JOB_PROCESSOR_INTERVAL (30s) | every server | claim due issuance/renewal jobs, run ≤ CERTCTL_RENEWAL_CONCURRENCY at a time |
| lease_reaper | CERTCTL_SCHEDULER_LEASE_REAPER_INTERVAL (30s) | leader | Running jobs with an expired lease → Pending, or Failed when no attempt is left |
| job_timeouts | CERTCTL_JOB_TIMEOUT_INTERVAL (10m) | leader | AwaitingCSR / AwaitingApproval past their timeouts → Failed; approvals expired |
| renewal_scan | CERTCTL_SCHEDULER_RENEWAL_CHECK_INTERVAL (1h) | leader | renewal windows, auto_renew, approval gate; Expiring/Expired |
| agent_health | CERTCTL_SCHEDULER_AGENT_HEALTH_CHECK_INTERVAL (2m) | leader | silent agents → Offline |
| short_lived_expiry | CERTCTL_SHORT_LIVED_EXPIRY_CHECK_INTERVAL (30s) | leader | short-lived certificates past their end → Expired |
| crl_pregeneration | the status service's CRL interval (1h), no first run | leader | rebuild due CRLs |
| network_scan | CERTCTL_NETWORK_SCAN_INTERVAL (15m), only with CERTCTL_NETWORK_SCAN_ENABLED | leader | scan the enabled network scan targets whose scan_interval_hours has passed |
| endpoint_health | 60s, no first run, only with CERTCTL_HEALTH_CHECK_ENABLED | leader | probe due endpoint health checks (≤ CERTCTL_HEALTH_CHECK_MAX_CONCURRENT at once); purge old history |
| notification_outbox | CERTCTL_NOTIFICATION_PROCESS_INTERVAL (1m) | leader | new audit events → notification rows (certctl.services.notifications) |
| expiry_alerts | CERTCTL_NOTIFICATION_EXPIRY_SCAN_INTERVAL (the renewal check's, 1h) | leader | expiry warnings per policy threshold and channel, deduplicated |
| notification_delivery | CERTCTL_NOTIFICATION_PROCESS_INTERVAL (1m) | every server | send pending notifications (leased with SKIP LOCKED) |
| notification_retry | CERTCTL_NOTIFICATION_RETRY_INTERVAL (2m) | every server | send failed notifications whose backoff has passed; the 5th failure → dead |
| digest | CERTCTL_DIGEST_INTERVAL (24h), no first run, only with CERTCTL_DIGEST_ENABLED | leader | email the digest |
"""  # noqa: E501 - a table reads better unwrapped

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from certctl.scheduler.leader import LeaderLock
from certctl.scheduler.runner import Loop, Scheduler
from certctl.scheduler.settings import SchedulerSettings
from certctl.services.container import Services
from certctl.services.health_checks import LOOP_INTERVAL


def build_loops(
    services: Services, settings: SchedulerSettings, *, stopping: Callable[[], bool] | None = None,
) -> list[Loop]:
    """The loop table for these services; `stopping()` tells the job processor to claim no new batch."""
    maintenance = services.job_maintenance

    async def process_jobs() -> dict[str, int]:
        return await maintenance.process_due_jobs(
            concurrency=settings.renewal_concurrency, budget=timedelta(minutes=5),
            should_stop=stopping,
        )

    async def time_out_jobs() -> dict[str, int]:
        outcome = await maintenance.time_out_waiting_jobs(
            awaiting_csr=settings.awaiting_csr_timeout, awaiting_approval=settings.awaiting_approval_timeout)
        outcome["orphaned_approvals_expired"] = await maintenance.expire_orphaned_approvals()
        return outcome

    loops = [
        # A hard stop mid-batch is safe (leases bring unfinished jobs back) but wasteful: the soft budget
        # above ends a run well before this.
        Loop("job_processor", settings.job_processor_interval, process_jobs, leader_only=False,
             timeout=timedelta(minutes=10)),
        Loop("lease_reaper", settings.lease_reaper_interval, maintenance.reap_expired_leases),
        Loop("job_timeouts", settings.job_timeout_interval, time_out_jobs),
        Loop("renewal_scan", settings.renewal_check_interval, services.renewal.scan, timeout=timedelta(minutes=30)),
        Loop("agent_health", settings.agent_health_check_interval, services.agents.mark_stale_agents_offline),
        Loop("short_lived_expiry", settings.short_lived_expiry_check_interval, services.renewal.expire_short_lived),
    ]
    status = getattr(services, "status", None)  # the CRL/OCSP status service, when this build has one
    if status is not None and hasattr(status, "regenerate_all"):
        interval = getattr(status, "crl_interval", None) or timedelta(hours=1)
        loops.append(Loop("crl_pregeneration", interval, status.regenerate_all, run_at_start=False))
    network_scan = getattr(services, "network_scan", None)  # the network scanner, when this build has one
    if network_scan is not None and network_scan.settings.enabled:
        # Scans of a /20 with a few ports take minutes; targets are scanned one after another.
        loops.append(Loop("network_scan", network_scan.settings.interval, network_scan.scan_due_targets,
                          timeout=timedelta(hours=2)))
    health_checks = getattr(services, "health_checks", None)  # the endpoint health monitor, when this build has one
    if health_checks is not None and health_checks.settings.enabled:
        loops.append(Loop("endpoint_health", LOOP_INTERVAL, health_checks.run_due_checks, run_at_start=False))
    notifications = getattr(services, "notifications", None)  # the notifier subsystem, when this build has one
    if notifications is not None:
        ns = notifications.settings
        loops += [
            Loop("notification_outbox", ns.process_interval, notifications.process_audit_events),
            Loop("expiry_alerts", ns.expiry_scan_interval, notifications.scan_expiring),
            # On every server, like the job processor: rows are leased with SKIP LOCKED, one sender each.
            Loop("notification_delivery", ns.process_interval, notifications.deliver_pending, leader_only=False,
                 timeout=timedelta(minutes=10)),
            Loop("notification_retry", ns.retry_interval, notifications.deliver_retries, leader_only=False,
                 timeout=timedelta(minutes=10)),
        ]
        if ns.digest_enabled:
            loops.append(Loop("digest", ns.digest_interval, notifications.scheduled_digest, run_at_start=False))
    return loops


def build_scheduler(services: Services, settings: SchedulerSettings | None = None) -> Scheduler:
    settings = settings or SchedulerSettings.from_env(services.ctx.settings.extra)
    ctx = services.ctx
    lock = LeaderLock(ctx.db, ctx.clock, services.issuance.holder, settings.leader_lease)
    scheduler = Scheduler([], lock)
    scheduler.add(*build_loops(services, settings, stopping=lambda: scheduler.stopping))
    return scheduler
