"""Prometheus metrics with `prometheus_client`, correct under several worker processes.

Two kinds of series:

- **Events** (counters and histograms: requests, issuances, job outcomes, deployments, OCSP/CRL requests,
  ACME orders, notifications, rate-limit rejections) are recorded by the process where they happen. With
  `certctl server --workers N` the server points `PROMETHEUS_MULTIPROC_DIR` at a fresh directory before any
  worker starts; every worker then writes its values to memory-mapped files there, and a scrape answered by any
  worker adds up all of them (`prometheus_client.multiprocess`). With one process the default registry is used.
- **State** (certificates by status, agents, the job queue, uptime) is read from the database at scrape time
  (`StateCollector` gets a snapshot from the metrics service), so every worker and every replica reports the same
  figures and nothing is double counted.

Label values come from closed sets (route templates, enum values, a few result words), never from ids or paths,
so the number of series stays bounded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from certctl.observability import tracing

disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client; no `_created` series: they double the output and no dashboard reads them

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STARTED_FILE = "server-started"
#: The Prometheus text exposition format the reference serves (and `prometheus_client` writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Sub-millisecond local signing up to the reference's 120 s for slow external CAs.
ISSUANCE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

HTTP_REQUEST_DURATION = Histogram(
    "certctl_http_request_duration_seconds",
    "HTTP requests by route template, method and status code: time from the request's arrival to the end of "
    "its response.",
    ["route", "method", "status"],
    buckets=HTTP_BUCKETS,
)
ISSUANCE_DURATION = Histogram(
    "certctl_issuance_duration_seconds",
    "Time an issuer connector took to sign or obtain one certificate, by issuer type.",
    ["issuer_type"],
    buckets=ISSUANCE_BUCKETS,
)
ISSUANCES = Counter(
    "certctl_issuance", "Issuer connector calls by issuer type and result (success, failure).",
    ["issuer_type", "result"],
)
JOB_OUTCOMES = Counter(
    "certctl_job_outcomes",
    "Jobs leaving Running or ending, by type and outcome (completed, failed, retry, cancelled); counted once the "
    "transaction that records it commits.",
    ["type", "outcome"],
)
DEPLOYMENTS = Counter(
    "certctl_deployments",
    "Deployment attempts reported by agents, by target type and result (success, failure).",
    ["target_type", "result"],
)
OCSP_REQUESTS = Counter(
    "certctl_ocsp_requests", "OCSP requests by HTTP method and result (ok, rate_limited, error).",
    ["method", "result"],
)
CRL_REQUESTS = Counter(
    "certctl_crl_requests", "CRL fetches by result (ok, not_modified, not_found, error).", ["result"],
)
ACME_ORDERS = Counter(
    "certctl_acme_orders", "ACME server orders by result (created, valid, invalid, rate_limited).", ["result"],
)
NOTIFICATIONS = Counter(
    "certctl_notifications", "Notification delivery attempts by channel, type and result (sent, failed: will be "
    "retried, dead: given up, skipped: channel not configured); counted once the outcome is recorded.",
    ["channel", "type", "result"],
)
EXPIRY_ALERTS = Counter(
    "certctl_expiry_alerts", "Expiry warnings queued by the expiry scan, by alert tier and channel.",
    ["tier", "channel"],
)
RATE_LIMITED = Counter(
    "certctl_rate_limit_rejections", "Requests refused by a rate limiter, by limiter (api, ocsp, acme, est, scep, "
    "export).", ["limiter"],
)


# ---- recording helpers (cheap; safe to call from any layer) ------------------------------------

def issuance_observed(issuer_type: str, seconds: float, ok: bool) -> None:
    if ok:
        ISSUANCE_DURATION.labels(issuer_type).observe(seconds)
    ISSUANCES.labels(issuer_type, "success" if ok else "failure").inc()


def deployment_reported(target_type: str, ok: bool) -> None:
    """Counted once the transaction recording the agent's report commits."""
    child = DEPLOYMENTS.labels(target_type or "unknown", "success" if ok else "failure")
    tracing.after_commit(child.inc)


def acme_order(result: str) -> None:
    """An order's change, counted once the transaction recording it commits; a refusal (`rate_limited`), whose
    transaction rolls back, at once."""
    child = ACME_ORDERS.labels(result)
    if result == "rate_limited":
        child.inc()
    else:
        tracing.after_commit(child.inc)


def notification(channel: str, notification_type: str, result: str) -> None:
    """A delivery outcome, counted once the transaction recording it commits."""
    tracing.after_commit(NOTIFICATIONS.labels(channel, notification_type, result).inc)


def expiry_alert(tier: str, channel: str) -> None:
    """An expiry warning queued, counted once the transaction inserting it commits."""
    tracing.after_commit(EXPIRY_ALERTS.labels(tier, channel).inc)


def rate_limited(limiter: str) -> None:
    RATE_LIMITED.labels(limiter).inc()


def job_outcome(job_type: str, outcome: str) -> None:
    """Counted once the transaction recording it commits (a rolled-back change did not happen)."""
    tracing.after_commit(JOB_OUTCOMES.labels(job_type, outcome).inc)


# ---- state read at scrape time -----------------------------------------------------------------

@dataclass
class QueueDepth:
    type: str
    status: str
    count: int
    oldest_age_seconds: float


@dataclass
class StateSnapshot:
    """What the metrics service reads from the database for one scrape."""

    certificate_total: int
    certificate_active: int
    certificate_expiring_soon: int
    certificate_expired: int
    certificate_revoked: int
    agent_total: int
    agent_online: int
    job_pending: int
    job_completed_total: int
    job_failed_total: int
    notification_dead_total: int
    certificates_by_status: dict[str, int] = field(default_factory=dict)
    queue: list[QueueDepth] = field(default_factory=list)
    server_started: datetime | None = None
    measured_at: datetime | None = None
    uptime_seconds: float = 0.0


class StateCollector(Collector):
    """The reference's gauges and counters (same names), plus certificates by status and the job queue."""

    def __init__(self, snapshot: StateSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        s = self.snapshot
        gauges = [
            ("certctl_certificate_total", "Managed certificates (archived ones excluded).", s.certificate_total),
            ("certctl_certificate_active", "Certificates in status Active.", s.certificate_active),
            ("certctl_certificate_expiring_soon", "Live certificates expiring within 30 days.",
             s.certificate_expiring_soon),
            ("certctl_certificate_expired", "Live certificates past their expiry.", s.certificate_expired),
            ("certctl_certificate_revoked", "Revoked certificates.", s.certificate_revoked),
            ("certctl_agent_total", "Registered agents (retired ones excluded).", s.agent_total),
            ("certctl_agent_online", "Agents with a heartbeat in the last 5 minutes.", s.agent_online),
            ("certctl_job_pending", "Jobs not yet finished (every non-terminal status).", s.job_pending),
            ("certctl_uptime_seconds", "Seconds since the server started.", s.uptime_seconds),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=value)
        yield CounterMetricFamily("certctl_job_completed", "Jobs in status Completed (from the database).",
                                  value=s.job_completed_total)
        yield CounterMetricFamily("certctl_job_failed", "Jobs in status Failed (from the database).",
                                  value=s.job_failed_total)
        yield CounterMetricFamily("certctl_notification_dead", "Notifications given up on (status dead).",
                                  value=s.notification_dead_total)
        by_status = GaugeMetricFamily("certctl_certificates", "Managed certificates by status.", labels=["status"])
        for status, count in sorted(s.certificates_by_status.items()):
            by_status.add_metric([status], count)
        yield by_status
        depth = GaugeMetricFamily("certctl_job_queue_depth", "Unfinished jobs by type and status.",
                                  labels=["type", "status"])
        age = GaugeMetricFamily("certctl_job_queue_oldest_age_seconds",
                                "Age of the oldest unfinished job by type and status (since it was created).",
                                labels=["type", "status"])
        for q in s.queue:
            depth.add_metric([q.type, q.status], q.count)
            age.add_metric([q.type, q.status], q.oldest_age_seconds)
        yield depth
        yield age


def exposition(snapshot: StateSnapshot) -> bytes:
    """The whole Prometheus text: this process's (or all workers') events plus the database state."""
    registry = CollectorRegistry(auto_describe=False)
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # untyped
        events = generate_latest(registry)
    else:
        events = generate_latest(REGISTRY)
    state = CollectorRegistry(auto_describe=False)
    state.register(StateCollector(snapshot))
    return events + generate_latest(state)


# ---- multi-process set-up (done by `certctl server` before any worker starts) -------------------

def prepare_multiprocess_dir() -> Path:
    """A fresh directory for the workers' metric files, exported as PROMETHEUS_MULTIPROC_DIR.

    An operator-provided directory is emptied (files left from an earlier run would be added in); otherwise a
    private temporary directory is made (remove it with `cleanup_multiprocess_dir`). Call before any worker
    imports prometheus_client: the library picks its multi-process mode when it is first imported.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for child in path.glob("*.db"):
            child.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="certctl-metrics-"))
        os.environ[MULTIPROC_ENV] = str(path)
    (path / STARTED_FILE).write_text(repr(time.time()))
    return path


def cleanup_multiprocess_dir(path: Path, *, created: bool) -> None:
    if created:
        shutil.rmtree(path, ignore_errors=True)


def server_started_at() -> float:
    """When the server started: the supervisor's start with several workers, else this process's."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        try:
            return float((Path(directory) / STARTED_FILE).read_text())
        except (OSError, ValueError):
            pass
    return _PROCESS_STARTED


_PROCESS_STARTED = time.time()


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """The current value of one series in this process (tests and diagnostics)."""
    value = REGISTRY.get_sample_value(name, labels or {})
    return float(value) if value is not None else 0.0
