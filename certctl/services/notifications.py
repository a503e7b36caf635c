"""Notifications (core.md "NotificationEvent", connectors.md §6): what makes them, how they are delivered.

Where they come from:

- **The audit trail as a transactional outbox.** Every state change already writes its audit event in the
  transaction that makes it, so a change that committed has its event and one that rolled back has none. The
  leader loop `notification_outbox` reads the events after a stored cursor (timestamp, id), maps the ones that
  matter (table `EVENT_TYPES`) to a notification type, and inserts one row per routed channel, advancing the
  cursor in the same transaction. Each read starts `OUTBOX_LOOKBACK` before the cursor, because an event's
  timestamp is taken before its transaction commits (a slow transaction can commit an event older than one
  already seen); the rows' unique (dedup_key, channel), with dedup_key `audit:<event id>`, makes re-reading
  harmless, on any replica, in any order.
- **The expiry scan** (leader loop `expiry_alerts`): per certificate, its renewal policy's
  `alert_thresholds_days`; the most urgent threshold crossed fires once per channel of its tier
  (`alert_severity_map` -> `alert_channels`, default Email), deduplicated by the unique index on
  `expiry:<cert>:<expiry>:<threshold>` (the reference used a LIKE on the message). A late scan does not fire the
  wider thresholds it skipped (the reference sent 30-, 14- and 7-day warnings at once).

Rows are made only for channels this server has a notifier for (the reference made them anyway and marked them
sent without sending); a row whose channel lost its configuration before delivery is marked `sent` with the error
"channel not configured", so nothing claims it was delivered.

Delivery (`notification_delivery` for new rows, `notification_retry` for due failures, on every server): rows are
leased with `FOR UPDATE SKIP LOCKED` on PostgreSQL, sent outside the transaction, and the outcome recorded with
its audit event. A failure is retried after min(2^n minutes, 1 h), n the failures so far (1, 2, 4, 8 min: the
reference never retried a first failure), and the 5th failure, or one that cannot succeed (a refused address, a
recipient that is no email address), makes the row `dead`; `POST /notifications/{id}/requeue` brings it back.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.connectors.notifiers.base import GuardedHttp, Notice, Notifier, NotifierError
from certctl.connectors.notifiers.email import EmailNotifier
from certctl.connectors.notifiers.registry import build_notifiers
from certctl.domain.actor import Actor
from certctl.domain.errors import ConflictError, NotFoundError, UnavailableError, ValidationError
from certctl.domain.ids import new_id
from certctl.domain.models.common import PageParams
from certctl.domain.models.notifications import (
    MAX_ATTEMPTS,
    NotificationEvent,
    NotificationStatus,
    NotificationType,
)
from certctl.domain.models.renewal_policies import AlertChannel
from certctl.observability import metrics
from certctl.services import audit
from certctl.services.context import ServiceContext
from certctl.services.notification_settings import NotificationSettings
from certctl.services.stats import inventory_counts
from certctl.store import notifications_repo

log = logging.getLogger("certctl.notifications")

OUTBOX_CURSOR = "audit"
OUTBOX_LOOKBACK = timedelta(minutes=10)
OUTBOX_BATCH = 1000
DELIVERY_BATCH = 50
EXPIRY_BATCH = 500  # certificates per page of the expiry scan: one read and one transaction each, memory bounded
DELIVERY_CONCURRENCY = 10
DELIVERY_LIMIT = 1000  # per run (core.md §3: "send up to 1000 pending")
LEASE = timedelta(minutes=5)  # longer than a batch can take (50 rows, 10 at a time, 30 s timeout each)
MAX_BACKOFF = timedelta(hours=1)
DIGEST_WINDOW = timedelta(days=30)
NOT_CONFIGURED = "channel not configured on this server: nothing was delivered"

T = NotificationType
SUCCESS_TYPES = {T.RENEWAL_SUCCESS.value, T.DEPLOYMENT_SUCCESS.value}
PAGING_CHANNELS = {AlertChannel.PAGERDUTY.value, AlertChannel.OPSGENIE.value}
#: the severity a receiver is told (the webhook's `severity`), by type
SEVERITY = {T.EXPIRATION_WARNING.value: "warning", T.RENEWAL_FAILURE.value: "critical",
            T.DEPLOYMENT_FAILURE.value: "critical", T.REVOCATION.value: "warning", T.POLICY_VIOLATION.value: "warning",
            T.RENEWAL_SUCCESS.value: "info", T.DEPLOYMENT_SUCCESS.value: "info"}
#: audit action -> what it notifies (the mapping is refined per event in `_event_notice`)
EVENT_TYPES = {
    "certificate_issued": T.RENEWAL_SUCCESS,
    "certificate_renewed": T.RENEWAL_SUCCESS,
    "renewal_failed": T.RENEWAL_FAILURE,
    "job_failed": T.RENEWAL_FAILURE,  # or DeploymentFailure for a deployment job
    "deployment_completed": T.DEPLOYMENT_SUCCESS,
    "deployment_failed": T.DEPLOYMENT_FAILURE,  # only the last attempt's
    "certificate_revoked": T.REVOCATION,
    "policy_violation_detected": T.POLICY_VIOLATION,
}


def backoff(failures_before: int) -> timedelta:
    """Delay after a failure, given how many failures came before it: 1, 2, 4, 8 … minutes, at most 1 h."""
    return min(timedelta(minutes=2 ** min(failures_before, 10)), MAX_BACKOFF)


# ---- what an audit event notifies -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Planned:
    dedup_key: str
    type: str
    certificate_id: str | None
    text: str  # with {cert} where the certificate's description goes


def _event_notice(event: Mapping[Any, Any]) -> _Planned | None:
    action = event["action"]
    kind = EVENT_TYPES.get(action)
    if kind is None:
        return None
    d: dict[str, Any] = dict(event["details"] or {})
    cert_id = event["resource_id"] if event["resource_type"] == "certificate" else d.get("certificate_id")
    error = d.get("error") or "no detail"
    if action in ("certificate_issued", "certificate_renewed"):
        until = f", valid until {d['not_after']}" if d.get("not_after") else ""
        serial = f": serial {d['serial_number']}" if d.get("serial_number") else ""
        text = f"Certificate {{cert}} was issued{serial}{until}."
    elif action == "job_failed":
        if d.get("type") == "Deployment":
            kind, text = T.DEPLOYMENT_FAILURE, f"Deployment of certificate {{cert}} failed: {error}"
        elif d.get("type") in ("Issuance", "Renewal"):
            attempts = d.get("attempts")
            tries = f" after {attempts} attempt(s)" if attempts else ""
            text = f"Renewal of certificate {{cert}} failed{tries}: {error}"
        else:
            return None
    elif action == "renewal_failed":
        text = f"Renewal of certificate {{cert}} failed: {error}"
    elif action == "deployment_completed":
        target = d.get("target_id")
        text = f"Certificate {{cert}} was deployed{f' to target {target}' if target else ''}."
    elif action == "deployment_failed":
        if d.get("will_retry"):
            return None  # only the last attempt's failure is news
        target = d.get("target_id")
        text = f"Deployment of certificate {{cert}}{f' to target {target}' if target else ''} failed: {error}"
    elif action == "certificate_revoked":
        text = f"Certificate {{cert}} was revoked by {event['actor']} (reason: {d.get('reason') or 'unspecified'})."
    else:  # policy_violation_detected
        severity = str(d.get("severity") or "Warning").lower()
        text = f"Certificate {{cert}} violates a policy ({severity}): {d.get('message') or d.get('rule_id') or ''}"
    if not cert_id:
        return None
    return _Planned(f"audit:{event['id']}", kind.value, str(cert_id), text)


def _describe(cert: Mapping[Any, Any] | None, cert_id: str | None) -> str:
    if cert is None:
        return f"'{cert_id}'"
    name, cn = cert["name"], cert["common_name"]
    return f"{name} ({cn})" if cn and cn != name else str(name)


def _recipient(cert: Mapping[Any, Any] | None) -> str:
    """The owner's email, falling back to the owner id (core.md "Team / Owner")."""
    if cert is None:
        return ""
    return str(cert.get("owner_email") or cert.get("owner_id") or "")


def _notice(row: Mapping[Any, Any]) -> Notice:
    return Notice(id=row["id"], type=row["type"], recipient=row["recipient"], message=row["message"],
                  certificate_id=row["certificate_id"], created_at=row["created_at"],
                  severity=SEVERITY.get(row["type"], "info"),
                  metadata={"channel": row["channel"]})


# ---- the service ----------------------------------------------------------------------------------------------

@dataclass
class _Delivery:
    row: Mapping[Any, Any]
    outcome: str  # sent | unconfigured | failed
    error: str | None = None
    retryable: bool = True


class NotificationService:
    def __init__(self, ctx: ServiceContext, settings: NotificationSettings | None = None) -> None:
        self.ctx = ctx
        self.settings = settings or NotificationSettings.from_env(ctx.settings.extra)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._http: GuardedHttp | None = None
        self._notifiers: dict[str, Notifier] | None = None

    # ---- notifiers ----
    @property
    def channels(self) -> list[str]:
        """The channels this server can deliver to."""
        return list(self.notifiers)

    @property
    def notifiers(self) -> dict[str, Notifier]:
        if self._notifiers is None:
            if not self.settings.channels:  # no notifier configured: no HTTP client (nor httpx) in this process
                self._notifiers = {}
                return self._notifiers
            self._http = GuardedHttp(self.settings.policy, timeout=self.settings.timeout,
                                     ca_file=self.settings.ca_file)
            self._notifiers = build_notifiers(list(self.settings.channels), self._http)
        return self._notifiers

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        self._http, self._notifiers = None, None

    # ---- API ----
    async def list_notifications(
        self, page: PageParams, *, status: str | None = None, certificate_id: str | None = None,
        channel: str | None = None, type_: str | None = None,
    ) -> tuple[list[NotificationEvent], int]:
        try:
            status = NotificationStatus.parse(status).value if status else None
            type_ = NotificationType.parse(type_).value if type_ else None
            channel = AlertChannel.parse(channel).value if channel else None
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        async with self.ctx.db.read() as conn:
            rows, total = await notifications_repo.page(
                conn, limit=page.per_page, offset=page.offset, status=status, certificate_id=certificate_id,
                channel=channel, type_=type_)
        return [NotificationEvent.model_validate(r) for r in rows], total

    async def get(self, notification_id: str) -> NotificationEvent:
        async with self.ctx.db.read() as conn:
            row = await notifications_repo.get(conn, notification_id)
        if row is None:
            raise NotFoundError.of("notification", notification_id)
        return NotificationEvent.model_validate(row)

    async def mark_read(self, actor: Actor, notification_id: str) -> None:
        async with self.ctx.db.transaction() as conn:
            row = await notifications_repo.get(conn, notification_id, for_update=True)
            if row is None:
                raise NotFoundError.of("notification", notification_id)
            if row["status"] == NotificationStatus.READ.value:
                return  # already read: nothing changes, nothing to audit
            await notifications_repo.update_row(conn, notification_id, {
                "status": NotificationStatus.READ.value, "next_retry_at": None, "claimed_by": None,
                "claim_expires_at": None})
            await audit.record(conn, self.ctx.clock, actor, "notification_read", "notification", notification_id,
                               {"previous_status": row["status"], "channel": row["channel"]})

    async def requeue(self, actor: Actor, notification_id: str) -> None:
        """dead -> pending with a fresh retry budget (last_error is kept); 409 for any other status."""
        async with self.ctx.db.transaction() as conn:
            row = await notifications_repo.get(conn, notification_id, for_update=True)
            if row is None:
                raise NotFoundError.of("notification", notification_id)
            if row["status"] != NotificationStatus.DEAD.value:
                raise ConflictError(f"notification '{notification_id}' is {row['status']}; only a dead "
                                    "notification can be requeued")
            await notifications_repo.update_row(conn, notification_id, {
                "status": NotificationStatus.PENDING.value, "retry_count": 0, "next_retry_at": None, "error": None,
                "claimed_by": None, "claim_expires_at": None})
            await audit.record(conn, self.ctx.clock, actor, "notification_requeued", "notification",
                               notification_id, {"channel": row["channel"], "retry_count": row["retry_count"]})

    # ---- the audit outbox ----
    def _rows_for(self, planned: _Planned, cert: Mapping[Any, Any] | None, now: datetime) -> list[dict[str, Any]]:
        channels = [c for c in self.channels
                    if not (planned.type in SUCCESS_TYPES and c in PAGING_CHANNELS)]  # successes page no one
        message = planned.text.replace("{cert}", _describe(cert, planned.certificate_id))
        return [{
            "id": new_id("notif"), "type": planned.type,
            "certificate_id": planned.certificate_id if cert is not None else None, "channel": channel,
            "recipient": _recipient(cert), "message": message, "sent_at": None,
            "status": NotificationStatus.PENDING.value, "error": None, "retry_count": 0, "next_retry_at": None,
            "last_error": None, "created_at": now, "dedup_key": planned.dedup_key,
        } for channel in channels]

    async def process_audit_events(self) -> dict[str, int]:
        """Turn new audit events into notification rows (leader loop `notification_outbox`)."""
        counts = {"events": 0, "queued": 0}
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            cursor = await notifications_repo.get_cursor(conn, OUTBOX_CURSOR, for_update=True)
            since = (cursor["timestamp"] if cursor is not None else now) - OUTBOX_LOOKBACK
            last: tuple[datetime, str] | None = None
            queued: list[str] = []
            while True:
                events = await notifications_repo.audit_events_since(conn, since, list(EVENT_TYPES), OUTBOX_BATCH,
                                                                     after=last)
                if not events:
                    break
                counts["events"] += len(events)
                if self.channels:
                    queued += await self._queue_events(conn, events, now)
                last = (events[-1]["timestamp"], events[-1]["id"])
                if len(events) < OUTBOX_BATCH:
                    break
            # The cursor moves to the last event read, or to now - lookback when that is later: the next read
            # starts a lookback before it, so it never re-reads more than two lookbacks of events.
            moved = max(last or (now - OUTBOX_LOOKBACK, ""), (now - OUTBOX_LOOKBACK, ""))
            if cursor is None or moved > (cursor["timestamp"], cursor["event_id"]):
                await notifications_repo.set_cursor(conn, OUTBOX_CURSOR, moved[0], moved[1],
                                                    exists=cursor is not None)
            if queued:
                await audit.record(conn, self.ctx.clock, audit_actor(), "notifications_queued", "notification", "",
                                   {"source": "audit", "count": len(queued), "notification_ids": queued[:100]})
        counts["queued"] = len(queued)
        return counts

    async def _queue_events(self, conn: AsyncConnection, events: list[Any], now: datetime) -> list[str]:
        planned = [p for p in (_event_notice(e) for e in events) if p is not None]
        if not planned:
            return []
        certs = await notifications_repo.certificates_with_owners(
            conn, [p.certificate_id for p in planned if p.certificate_id])
        rows = [row for p in planned for row in self._rows_for(p, certs.get(p.certificate_id or ""), now)]
        existing = await notifications_repo.existing_keys(conn, [(r["dedup_key"], r["channel"]) for r in rows])
        fresh = [r for r in rows if (r["dedup_key"], r["channel"]) not in existing]
        return await notifications_repo.insert_new(conn, fresh)

    # ---- expiry alerts ----
    async def scan_expiring(self) -> dict[str, int]:
        """One alert per (certificate, expiry, most urgent threshold crossed, channel) (leader loop `expiry_alerts`).

        Pages of EXPIRY_BATCH certificates by (expires_at, id), each in its own transaction: a million-row
        inventory with a hundred thousand certificates inside their thresholds is read a page at a time, not
        held in memory at once.
        """
        now = self.ctx.clock.now()
        counts = {"certificates": 0, "queued": 0, "unconfigured": 0}
        if not self.notifiers:  # the default install: nothing could be queued, so the inventory is not read
            log.info("expiry alerts not queued: no notifier is configured (docs/notifications.md)")
            return counts
        async with self.ctx.db.read() as conn:
            horizon = await notifications_repo.largest_threshold(conn)
        after: tuple[datetime, str] | None = None
        while True:
            async with self.ctx.db.read() as conn:
                found = await notifications_repo.expiring_certificates(
                    conn, now + timedelta(days=horizon + 1), after=after, limit=EXPIRY_BATCH)
            if found:
                after = (found[-1]["expires_at"], found[-1]["id"])
                await self._queue_expiry_alerts(found, now, counts)
            if len(found) < EXPIRY_BATCH:
                break
        if counts["unconfigured"]:
            log.info("expiry alerts for channels with no notifier were not queued",
                     extra={"channels_skipped": counts["unconfigured"]})
        return counts

    async def _queue_expiry_alerts(
        self, found: Sequence[Mapping[Any, Any]], now: datetime, counts: dict[str, int]
    ) -> None:
        plans: list[tuple[Mapping[Any, Any], int, str, list[dict[str, Any]], list[str]]] = []
        for cert in found:
            days = math.trunc((cert["expires_at"] - now).total_seconds() / 86400)
            crossed = [t for t in (cert["alert_thresholds_days"] or []) if isinstance(t, int) and days <= t]
            if not crossed:
                continue
            counts["certificates"] += 1
            threshold = min(crossed)
            tier = str((cert["alert_severity_map"] or {}).get(str(threshold), "informational")).lower()
            wanted = (cert["alert_channels"] or {}).get(tier) or [AlertChannel.EMAIL.value]
            channels = [c for c in dict.fromkeys(wanted) if c in self.notifiers]
            skipped = [c for c in dict.fromkeys(wanted) if c not in self.notifiers]
            counts["unconfigured"] += len(skipped)
            if not channels:
                continue  # nothing to queue; the skipped channels are counted in the scan's log line
            expiry = cert["expires_at"]
            described = _describe(cert, cert["id"])
            if days < 0 or expiry <= now:
                message = (f"[EXPIRED] Certificate {described} expired on {expiry:%Y-%m-%d %H:%M} UTC. "
                           f"[threshold:{threshold}]")
            else:
                message = (f"Certificate {described} will expire in {days} days ({expiry:%Y-%m-%d}). "
                           f"[threshold:{threshold}]")
            key = f"expiry:{cert['id']}:{expiry.isoformat()}:{threshold}"
            rows = [{
                "id": new_id("notif"), "type": T.EXPIRATION_WARNING.value, "certificate_id": cert["id"],
                "channel": channel, "recipient": _recipient(cert), "message": message, "sent_at": None,
                "status": NotificationStatus.PENDING.value, "error": None, "retry_count": 0, "next_retry_at": None,
                "last_error": None, "created_at": now, "dedup_key": key,
            } for channel in channels]
            plans.append((cert, threshold, tier, rows, skipped))
        if not plans:
            return
        async with self.ctx.db.transaction() as conn:
            existing = await notifications_repo.existing_keys(
                conn, [(r["dedup_key"], r["channel"]) for *_, rows, _ in plans for r in rows])
            for planned_cert, threshold, tier, rows, skipped in plans:
                fresh = [r for r in rows if (r["dedup_key"], r["channel"]) not in existing]
                inserted = await notifications_repo.insert_new(conn, fresh)
                if not inserted:
                    continue
                counts["queued"] += len(inserted)
                channels = [r["channel"] for r in fresh if r["id"] in inserted]
                for channel in channels:
                    metrics.expiry_alert(tier, channel)
                await audit.record(conn, self.ctx.clock, audit_actor(), "expiry_alert_queued", "certificate",
                                   planned_cert["id"], {
                                       "threshold_days": threshold, "tier": tier, "channels": channels,
                                       "unconfigured_channels": skipped, "notification_ids": inserted,
                                       "expires_at": planned_cert["expires_at"].isoformat()})

    # ---- delivery ----
    async def deliver_pending(self) -> dict[str, int]:
        return await self._deliver(retries=False)

    async def deliver_retries(self) -> dict[str, int]:
        return await self._deliver(retries=True)

    async def _deliver(self, *, retries: bool) -> dict[str, int]:
        counts: dict[str, int] = {"claimed": 0}
        gate = asyncio.Semaphore(DELIVERY_CONCURRENCY)
        while counts["claimed"] < DELIVERY_LIMIT:
            now = self.ctx.clock.now()
            async with self.ctx.db.transaction() as conn:
                rows = await notifications_repo.claim_due(
                    conn, retries=retries, now=now, limit=DELIVERY_BATCH, holder=self.holder,
                    lease_until=now + LEASE)
            if not rows:
                break
            counts["claimed"] += len(rows)

            async def attempt(row: Mapping[Any, Any]) -> _Delivery:
                async with gate:
                    return await self._attempt(row)

            for outcome in await asyncio.gather(*(attempt(r) for r in rows)):
                result = await self._record(outcome)
                counts[result] = counts.get(result, 0) + 1
            if len(rows) < DELIVERY_BATCH:
                break
        return counts

    async def _attempt(self, row: Mapping[Any, Any]) -> _Delivery:
        notifier = self.notifiers.get(row["channel"])
        if notifier is None:
            return _Delivery(row, "unconfigured", NOT_CONFIGURED)
        try:
            await notifier.send(_notice(row))
        except NotifierError as exc:
            return _Delivery(row, "failed", exc.message, exc.retryable)
        except Exception as exc:  # a notifier bug must not stop the batch; its text may hold a secret: kind only
            log.exception("notifier raised unexpectedly", extra={"channel": row["channel"]})
            return _Delivery(row, "failed", f"{row['channel']}: unexpected {type(exc).__name__}")
        return _Delivery(row, "sent")

    async def _record(self, delivery: _Delivery) -> str:
        row = delivery.row
        now = self.ctx.clock.now()
        failures = int(row["retry_count"])
        if delivery.outcome in ("sent", "unconfigured"):
            result = "sent" if delivery.outcome == "sent" else "skipped"
            values: dict[str, Any] = {"status": NotificationStatus.SENT.value, "sent_at": now,
                                      "error": delivery.error, "next_retry_at": None}
            action = "notification_sent" if delivery.outcome == "sent" else "notification_not_configured"
        elif delivery.retryable and failures + 1 < MAX_ATTEMPTS:
            result, action = "failed", "notification_failed"
            values = {"status": NotificationStatus.FAILED.value, "retry_count": failures + 1,
                      "next_retry_at": now + backoff(failures), "error": delivery.error,
                      "last_error": delivery.error}
        else:
            result, action = "dead", "notification_dead"
            values = {"status": NotificationStatus.DEAD.value, "retry_count": failures + 1, "next_retry_at": None,
                      "error": delivery.error, "last_error": delivery.error}
        async with self.ctx.db.transaction() as conn:
            if not await notifications_repo.finish(conn, row["id"], self.holder, values):
                return "lost_lease"  # read, or taken over after our lease ran out: its new holder records it
            await audit.record(conn, self.ctx.clock, audit_actor(), action, "notification", row["id"], {
                "channel": row["channel"], "type": row["type"], "attempt": failures + 1, "error": delivery.error,
                "sender": self.holder,
                **({"next_retry_at": values["next_retry_at"].isoformat()} if values.get("next_retry_at") else {}),
            })
            metrics.notification(row["channel"], row["type"], result)
        if result in ("failed", "dead"):
            log.warning("notification delivery failed", extra={
                "notification_id": row["id"], "channel": row["channel"], "result": result, "error": delivery.error})
        return result

    # ---- digest ----
    def _require_digest(self) -> EmailNotifier:
        notifier = self.notifiers.get(AlertChannel.EMAIL.value)
        if not self.settings.digest_enabled or not isinstance(notifier, EmailNotifier):
            raise UnavailableError("the digest is not configured (CERTCTL_DIGEST_ENABLED and CERTCTL_SMTP_HOST)")
        return notifier

    async def digest_html(self) -> str:
        self._require_digest()
        return await self._digest_html()

    async def _digest_html(self) -> str:
        now = self.ctx.clock.now()
        async with self.ctx.db.read() as conn:
            counts = await inventory_counts(conn, now)
            expiring = await notifications_repo.expiring_certificates(conn, now + DIGEST_WINDOW)
            failed = await notifications_repo.failed_jobs_since(conn, now - timedelta(days=1))
        e = html.escape
        totals = [("Certificates", counts.certificates.get("total", 0)),
                  ("Expiring (30 days)", counts.certificates.get("expiring", 0)),
                  ("Expired", counts.certificates.get("expired", 0)),
                  ("Revoked", counts.certificates.get("revoked", 0)),
                  ("Agents", counts.agents.get("total", 0)), ("Pending jobs", counts.jobs.get("pending", 0)),
                  ("Jobs failed (24 h)", failed), ("Dead notifications", counts.dead_notifications)]
        rows = "".join(f"<tr><td>{e(str(k))}</td><td>{v}</td></tr>" for k, v in totals)
        soon = "".join(
            f"<tr><td>{e(str(c['name']))}</td><td>{e(str(c['common_name']))}</td>"
            f"<td>{c['expires_at']:%Y-%m-%d}</td><td>{e(str(c['status']))}</td></tr>"
            for c in expiring if c["expires_at"] > now)
        return (f"<html><body><h1>certctl Certificate Digest — {now:%Y-%m-%d}</h1>"
                f"<table>{rows}</table><h2>Expiring within 30 days</h2>"
                f"<table><tr><th>Name</th><th>Common name</th><th>Expires</th><th>Status</th></tr>{soon}</table>"
                "</body></html>")

    async def send_digest(self, actor: Actor | None = None) -> int:
        """Email the digest to CERTCTL_DIGEST_RECIPIENTS, or every owner's email; the number of recipients."""
        notifier = self._require_digest()
        body = await self._digest_html()
        recipients = list(self.settings.digest_recipients)
        if not recipients:
            async with self.ctx.db.read() as conn:
                recipients = await notifications_repo.owner_emails(conn)
        now = self.ctx.clock.now()
        sent, errors = 0, []
        for recipient in recipients:
            try:
                await notifier.send(Notice(id=new_id("digest"), type="certctl Certificate Digest", recipient=recipient,
                                           message=body, certificate_id=None, created_at=now, html=True))
                sent += 1
            except NotifierError as exc:
                errors.append(exc.message)
        async with self.ctx.db.transaction() as conn:
            await audit.record(conn, self.ctx.clock, actor or audit_actor(), "digest_sent", "digest", "",
                               {"recipient_count": len(recipients), "delivered": sent, "errors": errors[:10]})
        if errors and not sent:
            raise UnavailableError(f"the digest could not be sent: {errors[0]}")
        return sent

    async def scheduled_digest(self) -> dict[str, int]:
        return {"sent": await self.send_digest()}


def audit_actor() -> Actor:
    return Actor.system()

