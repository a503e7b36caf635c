"""The notification subsystem end to end on SQLite and PostgreSQL: audit events become notifications (once),
expiry alerts per policy threshold and channel (deduplicated), delivery to real receivers with the retry
backoff and the dead letter, requeue and read, the API's answers to bad input, audit rows for each write,
and no secret in a response or a log line. Time moves with the injected clock, never with sleeps."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update

from certctl.config import SettingsError
from certctl.domain.clock import FakeClock
from certctl.observability import metrics
from certctl.services.issuance import run_due_issuing_jobs
from certctl.services.notifications import NOT_CONFIGURED, NotificationSettings, backoff
from certctl.store.schema import audit_events, notification_events
from tests import factories
from tests.conftest import Api, make_settings, start_api, stop_api
from tests.notify_receivers import SMTP_PASSWORD, SMTP_USER, HttpReceiver, root_file, server_tls, smtp_server
from tests.servers import ThrowawayCA

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WEBHOOK_SECRET = "whsec-api-test-9f3K-never-logged"
ROUTING_KEY = "pd-routing-key-api-7Hq2"
OPSGENIE_KEY = "og-genie-key-api-4Lm8"


@pytest.fixture
def hook() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver().start()
    yield receiver
    receiver.stop()


def _extra(hook: HttpReceiver, **more: str) -> dict[str, str]:
    return {"CERTCTL_WEBHOOK_URL": hook.url + "/certctl", "CERTCTL_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "CERTCTL_NOTIFIER_ALLOW_LOOPBACK": "true", "CERTCTL_NOTIFIER_TIMEOUT": "5s", **more}


@pytest.fixture
async def napi(database_url: str, tmp_path: Path, hook: HttpReceiver) -> AsyncIterator[Api]:
    """An app with the Webhook channel pointing at `hook`, a fake clock, and server key generation."""
    settings = make_settings(database_url, tmp_path / "data", keygen_mode="server", extra=_extra(hook))
    running, lifespan = await start_api(settings, clock=FakeClock(START))
    try:
        yield running
    finally:
        await running.services.notifications.aclose()
        await stop_api(running, lifespan)


def _clock(api: Api) -> FakeClock:
    clock = api.services.ctx.clock
    assert isinstance(clock, FakeClock)
    return clock


async def _rows(api: Api, **where: Any) -> list[dict[str, Any]]:
    stmt = select(notification_events).order_by(notification_events.c.created_at, notification_events.c.id)
    for name, value in where.items():
        stmt = stmt.where(notification_events.c[name] == value)
    async with api.services.ctx.db.read() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]


async def _audit(api: Api, action: str) -> list[dict[str, Any]]:
    async with api.services.ctx.db.read() as conn:
        stmt = select(audit_events).where(audit_events.c.action == action)
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]


# ---- the audit outbox ---------------------------------------------------------------------------------------------

async def test_revocation_notifies_once_per_channel_and_is_delivered_signed(napi: Api, hook: HttpReceiver) -> None:
    api = napi
    cert = await factories.seed_certificate(api, expires_at=START + timedelta(days=200))
    response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/revoke", json={"reason": "keyCompromise"})
    assert response.status_code == 200, response.text

    notifications = api.services.notifications
    assert (await notifications.process_audit_events())["queued"] == 1  # Webhook is the only configured channel
    assert (await notifications.process_audit_events())["queued"] == 0  # read again (lookback): nothing new
    [row] = await _rows(api, certificate_id=cert["id"])
    assert row["type"] == "Revocation" and row["channel"] == "Webhook" and row["status"] == "pending"
    assert "was revoked by alice (reason: keyCompromise)" in row["message"]
    assert row["recipient"].endswith("@example.com")  # the owner's email

    before = metrics.sample("certctl_notifications_total", {"channel": "Webhook", "type": "Revocation",
                                                            "result": "sent"})
    assert (await notifications.deliver_pending())["sent"] == 1
    assert (await notifications.deliver_pending())["claimed"] == 0
    [got] = hook.received
    assert got.headers["x-signature"] == "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), got.body,
                                                              hashlib.sha256).hexdigest()
    body = orjson.loads(got.body)
    assert body["event_type"] == "Revocation" and body["certificate_id"] == cert["id"]
    [sent] = await _rows(api, certificate_id=cert["id"])
    assert sent["status"] == "sent" and sent["sent_at"] == START and sent["error"] is None
    assert metrics.sample("certctl_notifications_total", {"channel": "Webhook", "type": "Revocation",
                                                          "result": "sent"}) == before + 1
    assert [a["resource_id"] for a in await _audit(api, "notification_sent")] == [row["id"]]
    [queued] = await _audit(api, "notifications_queued")
    assert queued["details"]["notification_ids"] == [row["id"]]


async def test_issuance_and_failed_renewal_each_notify_once(napi: Api) -> None:
    api = napi
    issued = await factories.seed_certificate(api, status="Pending", expires_at=None)
    assert (await api.admin.post(f"/api/v1/certificates/{issued['id']}/renew")).status_code == 202
    assert await run_due_issuing_jobs(api.services.issuance) == {"Completed": 1}

    failing = await factories.seed_certificate(api)
    assert (await api.admin.post(f"/api/v1/certificates/{failing['id']}/renew")).status_code == 202
    assert (await api.admin.put("/api/v1/issuers/iss-local", json={"enabled": False})).status_code == 200
    assert await run_due_issuing_jobs(api.services.issuance) == {"Failed": 1}

    for _ in range(2):
        await api.services.notifications.process_audit_events()
    [success] = await _rows(api, certificate_id=issued["id"])
    assert success["type"] == "RenewalSuccess" and "was issued: serial" in success["message"]
    [failure] = await _rows(api, certificate_id=failing["id"])
    assert failure["type"] == "RenewalFailure" and "disabled" in failure["message"]


async def test_events_before_the_lookback_window_are_not_replayed(napi: Api) -> None:
    api = napi
    cert = await factories.seed_certificate(api)
    await api.services.notifications.process_audit_events()  # sets the cursor
    _clock(api).advance(timedelta(hours=1))
    assert (await api.admin.post(f"/api/v1/certificates/{cert['id']}/revoke")).status_code == 200
    assert (await api.services.notifications.process_audit_events())["queued"] == 1
    _clock(api).advance(timedelta(hours=1))
    # Read once more (it is within the lookback of the cursor, at the event): nothing new; the cursor moves to
    # now - 10 min, after which the event is behind the window.
    assert (await api.services.notifications.process_audit_events()) == {"events": 1, "queued": 0}
    assert (await api.services.notifications.process_audit_events()) == {"events": 0, "queued": 0}


async def test_outbox_pages_through_events_of_one_instant(napi: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake clock stands still: every event has the same timestamp, so pages are told apart by id."""
    from certctl.services import notifications as module

    monkeypatch.setattr(module, "OUTBOX_BATCH", 2)
    certs = [await factories.seed_certificate(api) for api in [napi] * 5]
    for cert in certs:
        assert (await napi.admin.post(f"/api/v1/certificates/{cert['id']}/revoke")).status_code == 200
    assert await napi.services.notifications.process_audit_events() == {"events": 5, "queued": 5}
    assert {r["certificate_id"] for r in await _rows(napi)} == {c["id"] for c in certs}


# ---- expiry alerts ------------------------------------------------------------------------------------------------

async def test_expiry_alerts_per_threshold_and_channel_deduplicated(napi: Api) -> None:
    api = napi
    policy = await factories.seed_renewal_policy(
        api, alert_thresholds_days=[30, 14, 7, 0],
        alert_severity_map={"30": "informational", "14": "warning", "7": "warning", "0": "critical"},
        alert_channels={"informational": ["Webhook"], "warning": ["Webhook", "Slack"], "critical": ["Webhook"]},
    )
    cert = await factories.seed_certificate(api, renewal_policy_id=policy, expires_at=START + timedelta(days=20))
    far = await factories.seed_certificate(api, renewal_policy_id=policy, expires_at=START + timedelta(days=90))
    notifications = api.services.notifications
    before = metrics.sample("certctl_expiry_alerts_total", {"tier": "informational", "channel": "Webhook"})

    first = await notifications.scan_expiring()
    assert first == {"certificates": 1, "queued": 1, "unconfigured": 0}
    assert (await notifications.scan_expiring())["queued"] == 0  # the same scan again makes nothing new
    [alert] = await _rows(api, certificate_id=cert["id"])
    assert alert["type"] == "ExpirationWarning" and alert["channel"] == "Webhook"
    assert alert["message"].endswith("will expire in 20 days (2026-03-21). [threshold:30]")
    assert metrics.sample("certctl_expiry_alerts_total", {"tier": "informational", "channel": "Webhook"}) \
        == before + 1

    _clock(api).advance(timedelta(days=8))  # 12 days left: the 14-day threshold (warning: Webhook and Slack)
    second = await notifications.scan_expiring()
    assert second == {"certificates": 1, "queued": 1, "unconfigured": 1}  # Slack has no notifier here
    assert (await notifications.scan_expiring())["queued"] == 0
    _clock(api).advance(timedelta(days=13))  # expired a day ago: threshold 0 (7 skipped: the late scan)
    assert (await notifications.scan_expiring())["queued"] == 1
    rows = await _rows(api, certificate_id=cert["id"])
    assert [r["message"].rsplit(" ", 1)[-1] for r in rows] == ["[threshold:30]", "[threshold:14]", "[threshold:0]"]
    assert rows[-1]["message"].startswith("[EXPIRED] Certificate")
    assert await _rows(api, certificate_id=far["id"]) == []
    audited = await _audit(api, "expiry_alert_queued")
    assert [a["details"]["threshold_days"] for a in audited] == [30, 14, 0]
    assert audited[1]["details"]["unconfigured_channels"] == ["Slack"]


async def test_expiry_scan_pages_through_certificates_of_one_expiry(
    napi: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of EXPIRY_BATCH by (expires_at, id): five certificates expiring at the same instant, pages of two."""
    from certctl.services import notifications as module

    monkeypatch.setattr(module, "EXPIRY_BATCH", 2)
    policy = await factories.seed_renewal_policy(napi, alert_channels={
        tier: ["Webhook"] for tier in ("informational", "warning", "critical")})
    certs = [await factories.seed_certificate(napi, renewal_policy_id=policy, expires_at=START + timedelta(days=5))
             for _ in range(5)]
    assert await napi.services.notifications.scan_expiring() == {"certificates": 5, "queued": 5, "unconfigured": 0}
    assert {r["certificate_id"] for r in await _rows(napi)} == {c["id"] for c in certs}
    assert (await napi.services.notifications.scan_expiring())["queued"] == 0


async def test_expiry_scan_with_no_notifier_configured_queues_nothing(api: Api) -> None:
    """The default install has no notifier: the scan does not read the inventory and queues nothing."""
    await factories.seed_certificate(api, expires_at=datetime.now(UTC) + timedelta(days=3))
    assert api.services.notifications.notifiers == {}
    assert await api.services.notifications.scan_expiring() == {"certificates": 0, "queued": 0, "unconfigured": 0}
    assert await _rows(api) == []


async def test_a_renewed_certificate_is_alerted_again_for_its_new_expiry(napi: Api) -> None:
    api = napi
    policy = await factories.seed_renewal_policy(api, alert_channels={
        tier: ["Webhook"] for tier in ("informational", "warning", "critical")})
    cert = await factories.seed_certificate(api, renewal_policy_id=policy, expires_at=START + timedelta(days=5))
    assert (await api.services.notifications.scan_expiring())["queued"] == 1
    assert (await api.services.notifications.scan_expiring())["queued"] == 0
    # Renewed: a new expiry; its thresholds are new alerts (the dedup key holds the expiry).
    async with api.services.ctx.db.transaction() as conn:
        from certctl.store.schema import managed_certificates

        await conn.execute(update(managed_certificates).where(managed_certificates.c.id == cert["id"])
                           .values(expires_at=START + timedelta(days=3)))
    assert (await api.services.notifications.scan_expiring())["queued"] == 1


# ---- delivery: retry, dead letter, requeue, read -------------------------------------------------------------------

async def test_retry_backoff_then_dead_then_requeue_and_read(napi: Api, hook: HttpReceiver) -> None:
    api = napi
    clock = _clock(api)
    notifications = api.services.notifications
    hook.statuses[:] = [500]
    cert = await factories.seed_certificate(api)
    assert (await api.admin.post(f"/api/v1/certificates/{cert['id']}/revoke")).status_code == 200
    await notifications.process_audit_events()
    [row] = await _rows(api, certificate_id=cert["id"])

    assert (await notifications.deliver_pending())["failed"] == 1  # the first failure is retried (reference bug 5)
    delays = []
    for attempt in range(1, 5):
        [state] = await _rows(api, id=row["id"])
        assert state["status"] == "failed" and state["retry_count"] == attempt
        assert state["last_error"] == "Webhook: 127.0.0.1 answered HTTP 500"
        delay = state["next_retry_at"] - clock.now()
        delays.append(delay)
        assert (await notifications.deliver_retries())["claimed"] == 0  # not due yet
        clock.advance(delay)
        outcome = await notifications.deliver_retries()
        assert outcome.get("failed" if attempt < 4 else "dead") == 1
    assert delays == [timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4), timedelta(minutes=8)]
    assert [backoff(n) for n in (5, 6, 9)] == [timedelta(minutes=32), timedelta(hours=1), timedelta(hours=1)]
    [dead] = await _rows(api, id=row["id"])
    assert dead["status"] == "dead" and dead["retry_count"] == 5 and dead["next_retry_at"] is None
    assert len(hook.received) == 5
    assert len(await _audit(api, "notification_failed")) == 4 and len(await _audit(api, "notification_dead")) == 1

    listed = (await api.user.get("/api/v1/notifications", params={"status": "dead"})).json()
    assert listed["total"] == 1 and listed["data"][0]["id"] == row["id"] and listed["data"][0]["retry_count"] == 5
    assert (await api.user.post(f"/api/v1/notifications/{row['id']}/requeue")).status_code == 403
    requeued = await api.admin.post(f"/api/v1/notifications/{row['id']}/requeue")
    assert requeued.status_code == 200 and requeued.json() == {"status": "requeued"}
    got = (await api.user.get(f"/api/v1/notifications/{row['id']}")).json()
    assert got["status"] == "pending" and got["retry_count"] == 0 and got["last_error"].endswith("HTTP 500")
    again = await api.admin.post(f"/api/v1/notifications/{row['id']}/requeue")
    assert again.status_code == 409 and set(again.json()) == {"error", "message", "request_id"}

    hook.statuses[:] = [200]
    assert (await notifications.deliver_pending())["sent"] == 1
    read = await api.user.post(f"/api/v1/notifications/{row['id']}/read")
    assert read.status_code == 200 and read.json() == {"status": "read"}
    assert (await api.user.get(f"/api/v1/notifications/{row['id']}")).json()["status"] == "read"
    assert [a["actor"] for a in await _audit(api, "notification_requeued")] == ["alice"]
    assert [a["actor"] for a in await _audit(api, "notification_read")] == ["bob"]


async def test_a_refused_address_is_dead_at_once(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "data", extra={"CERTCTL_WEBHOOK_URL": "http://127.0.0.1:9/x"})
    api, lifespan = await start_api(settings, clock=FakeClock(START))
    try:
        cert = await factories.seed_certificate(api)
        assert (await api.admin.post(f"/api/v1/certificates/{cert['id']}/revoke")).status_code == 200
        await api.services.notifications.process_audit_events()
        assert (await api.services.notifications.deliver_pending())["dead"] == 1
        [row] = await _rows(api, certificate_id=cert["id"])
        assert row["retry_count"] == 1 and "loopback address" in row["error"]
        assert "CERTCTL_NOTIFIER_ALLOW_LOOPBACK" in row["error"]
    finally:
        await api.services.notifications.aclose()
        await stop_api(api, lifespan)


async def test_a_row_for_a_channel_without_notifier_says_so(napi: Api) -> None:
    api = napi
    cert = await factories.seed_certificate(api)
    async with api.services.ctx.db.transaction() as conn:
        await conn.execute(notification_events.insert().values(
            id="notif-teams-1", type="Revocation", certificate_id=cert["id"], channel="Teams", recipient="",
            message="m", status="pending", retry_count=0, created_at=START))
    assert (await api.services.notifications.deliver_pending()).get("skipped") == 1
    [row] = await _rows(api, id="notif-teams-1")
    assert row["status"] == "sent" and row["error"] == NOT_CONFIGURED


# ---- the API ------------------------------------------------------------------------------------------------------

async def test_api_bad_input_and_unknown_ids(napi: Api) -> None:
    api = napi
    for method, path in (("GET", "/api/v1/notifications/notif-nope"), ("POST", "/api/v1/notifications/notif-nope/read"),
                         ("POST", "/api/v1/notifications/notif-nope/requeue")):
        response = await api.admin.request(method, path)
        assert response.status_code == 404, path
        assert set(response.json()) == {"error", "message", "request_id"} and "notif-nope" in response.json()["message"]
    bad = await api.user.get("/api/v1/notifications", params={"status": "exploded"})
    assert bad.status_code == 400 and "expected one of: pending, sent, failed, dead, read" in bad.json()["message"]
    assert (await api.user.get("/api/v1/notifications", params={"per_page": 501})).status_code == 400
    empty = (await api.user.get("/api/v1/notifications")).json()
    assert empty == {"data": [], "total": 0, "page": 1, "per_page": 50}
    assert (await api.anon.get("/api/v1/notifications")).status_code == 401
    # The digest is off: 503, with the reference error shape.
    for method, path in (("GET", "/api/v1/digest/preview"), ("POST", "/api/v1/digest/send")):
        response = await api.admin.request(method, path)
        assert response.status_code == 503 and "CERTCTL_DIGEST_ENABLED" in response.json()["message"]
    assert (await api.user.post("/api/v1/digest/send")).status_code == 403


async def test_list_pages_and_filters(napi: Api) -> None:
    api = napi
    certs = [await factories.seed_certificate(api) for _ in range(3)]
    for cert in certs:
        assert (await api.admin.post(f"/api/v1/certificates/{cert['id']}/revoke")).status_code == 200
    await api.services.notifications.process_audit_events()
    page = (await api.user.get("/api/v1/notifications", params={"per_page": 2, "page": 2})).json()
    assert page["total"] == 3 and len(page["data"]) == 1 and page["page"] == 2
    one = (await api.user.get("/api/v1/notifications", params={"certificate_id": certs[0]["id"]})).json()
    assert one["total"] == 1 and one["data"][0]["certificate_id"] == certs[0]["id"]
    assert (await api.user.get("/api/v1/notifications", params={"status": "sent"})).json()["total"] == 0
    assert set(one["data"][0]) == {"id", "type", "certificate_id", "channel", "recipient", "message", "sent_at",
                                   "status", "error", "retry_count", "next_retry_at", "last_error", "created_at"}


# ---- email and the digest -----------------------------------------------------------------------------------------

async def test_email_channel_and_digest_through_a_real_smtp_server(
    database_url: str, tmp_path: Path, hook: HttpReceiver,
) -> None:
    ca = ThrowawayCA("digest tests")
    with smtp_server(server_tls(ca.issue("localhost"), tmp_path)) as (port, mail):
        extra = _extra(hook, CERTCTL_SMTP_HOST="localhost", CERTCTL_SMTP_PORT=str(port),
                       CERTCTL_SMTP_USERNAME=SMTP_USER, CERTCTL_SMTP_PASSWORD=SMTP_PASSWORD,
                       CERTCTL_SMTP_FROM_ADDRESS="certctl@example.com", CERTCTL_DIGEST_ENABLED="true",
                       CERTCTL_NOTIFIER_CA_FILE=str(root_file(ca, tmp_path)))
        api, lifespan = await start_api(make_settings(database_url, tmp_path / "data", extra=extra),
                                        clock=FakeClock(START))
        try:
            cert = await factories.seed_certificate(api, expires_at=START + timedelta(days=10))
            assert (await api.services.notifications.scan_expiring())["queued"] == 1  # default policy: Email
            assert (await api.services.notifications.deliver_pending())["sent"] == 1
            [alert] = mail.messages
            assert alert.tls and alert.authenticated and alert.rcpt_tos[0].endswith("@example.com")
            assert b"Subject: ExpirationWarning" in alert.content and b"[threshold:14]" in alert.content

            preview = await api.user.get("/api/v1/digest/preview")
            assert preview.status_code == 200 and preview.headers["content-type"].startswith("text/html")
            assert "certctl Certificate Digest" in preview.text and cert["name"] in preview.text
            sent = await api.admin.post("/api/v1/digest/send")
            assert sent.status_code == 200 and sent.json()["status"] == "sent"
            assert len(mail.messages) >= 2 and b"text/html" in mail.messages[-1].content
            assert len(await _audit(api, "digest_sent")) == 1
            assert "digest" in [loop.name for loop in _loops(api)]
        finally:
            await api.services.notifications.aclose()
            await stop_api(api, lifespan)


def _loops(api: Api) -> list[Any]:
    from certctl.scheduler import SchedulerSettings
    from certctl.scheduler.loops import build_loops

    return build_loops(api.services, SchedulerSettings())


# ---- settings and secrets ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "message"), [
    ({"CERTCTL_SMTP_HOST": "mail.example.com"}, "CERTCTL_SMTP_FROM_ADDRESS"),
    ({"CERTCTL_SMTP_HOST": "m", "CERTCTL_SMTP_FROM_ADDRESS": "a@b.c", "CERTCTL_SMTP_PORT": "70000"},
     "CERTCTL_SMTP_PORT"),
    ({"CERTCTL_SMTP_HOST": "m", "CERTCTL_SMTP_FROM_ADDRESS": "a@b.c", "CERTCTL_SMTP_USERNAME": "u"},
     "CERTCTL_SMTP_USERNAME and CERTCTL_SMTP_PASSWORD"),
    ({"CERTCTL_WEBHOOK_URL": "hooks.example.com/x"}, "CERTCTL_WEBHOOK_URL: must be an http(s) URL"),
    ({"CERTCTL_PAGERDUTY_ROUTING_KEY": "k", "CERTCTL_PAGERDUTY_SEVERITY": "urgent"}, "CERTCTL_PAGERDUTY_SEVERITY"),
    ({"CERTCTL_OPSGENIE_API_KEY": "k", "CERTCTL_OPSGENIE_PRIORITY": "P9"}, "CERTCTL_OPSGENIE_PRIORITY"),
    ({"CERTCTL_NOTIFICATION_RETRY_INTERVAL": "soon"}, "CERTCTL_NOTIFICATION_RETRY_INTERVAL"),
    ({"CERTCTL_DIGEST_ENABLED": "true"}, "set CERTCTL_SMTP_HOST too"),
    ({"CERTCTL_DIGEST_RECIPIENTS": "ops"}, "CERTCTL_DIGEST_RECIPIENTS"),
])
def test_bad_settings_stop_the_server_with_the_variable_named(env: dict[str, str], message: str) -> None:
    from certctl.config import Settings

    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env({"CERTCTL_API_KEYS_NAMED": "a:0123456789abcdef:admin", **env})


def test_settings_defaults_and_channels() -> None:
    settings = NotificationSettings.from_env({
        "CERTCTL_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/x", "CERTCTL_TEAMS_WEBHOOK_URL": "https://t/x",
        "CERTCTL_PAGERDUTY_ROUTING_KEY": ROUTING_KEY, "CERTCTL_OPSGENIE_API_KEY": OPSGENIE_KEY,
    })
    assert settings.process_interval == timedelta(minutes=1) and settings.retry_interval == timedelta(minutes=2)
    assert [type(c).__name__ for c in settings.channels] == ["SlackConfig", "TeamsConfig", "PagerDutyConfig",
                                                             "OpsGenieConfig"]
    assert ROUTING_KEY not in repr(settings) and OPSGENIE_KEY not in repr(settings)
    assert "hooks.slack.com" not in repr(settings)


async def test_no_secret_in_logs_or_responses(
    database_url: str, tmp_path: Path, hook: HttpReceiver, debug_log: io.StringIO,
) -> None:
    """Every channel configured with a secret, failing and succeeding; nothing secret is logged or answered."""
    hook.statuses[:] = [500, 401, 200]
    ca = ThrowawayCA("secret tests")
    with smtp_server(server_tls(ca.issue("localhost"), tmp_path)) as (port, _mail):
        extra = _extra(hook, CERTCTL_SMTP_HOST="localhost", CERTCTL_SMTP_PORT=str(port),
                       CERTCTL_SMTP_USERNAME=SMTP_USER, CERTCTL_SMTP_PASSWORD=SMTP_PASSWORD + "-wrong",
                       CERTCTL_SMTP_FROM_ADDRESS="certctl@example.com",
                       CERTCTL_NOTIFIER_CA_FILE=str(root_file(ca, tmp_path)),
                       CERTCTL_SLACK_WEBHOOK_URL=hook.url + "/services/slack-secret-path",
                       CERTCTL_TEAMS_WEBHOOK_URL=hook.url + "/teams-secret-path",
                       CERTCTL_PAGERDUTY_ROUTING_KEY=ROUTING_KEY, CERTCTL_PAGERDUTY_API_URL=hook.url,
                       CERTCTL_OPSGENIE_API_KEY=OPSGENIE_KEY, CERTCTL_OPSGENIE_API_URL=hook.url)
        api, lifespan = await start_api(make_settings(database_url, tmp_path / "data", extra=extra),
                                        clock=FakeClock(START))
        try:
            cert = await factories.seed_certificate(api)
            assert (await api.admin.post(f"/api/v1/certificates/{cert['id']}/revoke")).status_code == 200
            await api.services.notifications.process_audit_events()
            outcome = await api.services.notifications.deliver_pending()
            assert outcome["claimed"] == 6  # every channel
            assert outcome.get("failed", 0) + outcome.get("dead", 0) == 3  # the SMTP login and two HTTP errors
            listed = await api.admin.get("/api/v1/notifications", params={"per_page": 500})
            audit = await api.admin.get("/api/v1/audit", params={"per_page": 500})
        finally:
            await api.services.notifications.aclose()
            await stop_api(api, lifespan)
    secrets = (SMTP_PASSWORD, WEBHOOK_SECRET, ROUTING_KEY, OPSGENIE_KEY, "slack-secret-path", "teams-secret-path")
    logged = debug_log.getvalue()
    assert "notification delivery failed" in logged  # the failures were logged, without their secrets
    for secret in secrets:
        assert secret not in logged, secret
        assert secret not in listed.text and secret not in audit.text, secret


@pytest.mark.parametrize(("action", "resource_type", "details", "expected"), [
    ("deployment_completed", "job", {"certificate_id": "mc-1", "target_id": "t-1"},
     ("DeploymentSuccess", "Certificate {cert} was deployed to target t-1.")),
    ("deployment_failed", "job", {"certificate_id": "mc-1", "target_id": "t-1", "error": "reload", "will_retry": True},
     None),  # another attempt follows: not news yet
    ("deployment_failed", "job", {"certificate_id": "mc-1", "target_id": "t-1", "error": "reload",
                                  "will_retry": False},
     ("DeploymentFailure", "Deployment of certificate {cert} to target t-1 failed: reload")),
    ("job_failed", "job", {"certificate_id": "mc-1", "type": "Deployment", "error": "agent gone"},
     ("DeploymentFailure", "Deployment of certificate {cert} failed: agent gone")),
    ("job_failed", "job", {"certificate_id": "mc-1", "type": "Renewal", "attempts": 3, "error": "CA down"},
     ("RenewalFailure", "Renewal of certificate {cert} failed after 3 attempt(s): CA down")),
    ("policy_violation_detected", "certificate", {"severity": "Error", "message": "AllowedIssuers: iss-x"},
     ("PolicyViolation", "Certificate {cert} violates a policy (error): AllowedIssuers: iss-x")),
    ("certificate_created", "certificate", {}, None),
])
def test_which_audit_events_notify(action: str, resource_type: str, details: dict[str, Any],
                                   expected: tuple[str, str] | None) -> None:
    from certctl.services.notifications import _event_notice

    planned = _event_notice({"id": "audit-1", "action": action, "resource_type": resource_type,
                             "resource_id": "mc-1" if resource_type == "certificate" else "job-1",
                             "details": details, "actor": "system"})
    if expected is None:
        assert planned is None
    else:
        assert planned is not None and (planned.type, planned.text) == expected
        assert planned.certificate_id == "mc-1" and planned.dedup_key == "audit:audit-1"


# ---- two senders on one database ----------------------------------------------------------------------------------

async def test_two_senders_deliver_each_row_once_including_retries(napi: Api, hook: HttpReceiver) -> None:
    """Two services with their own lease holder (as two servers have) claim from one database at the same time."""
    from certctl.services.notifications import NotificationService

    api = napi
    first, second = api.services.notifications, NotificationService(api.services.ctx)
    try:
        certs = [await factories.seed_certificate(api) for _ in range(12)]
        for cert in certs:
            assert (await api.admin.post(f"/api/v1/certificates/{cert['id']}/revoke")).status_code == 200
        await first.process_audit_events()
        hook.statuses[:] = [503] * 4 + [200]  # four deliveries fail once, the rest succeed
        results = await asyncio.gather(first.deliver_pending(), second.deliver_pending())
        assert sum(r["claimed"] for r in results) == 12
        assert sum(r.get("failed", 0) for r in results) == 4 and sum(r.get("sent", 0) for r in results) == 8
        _clock(api).advance(timedelta(minutes=1))
        retried = await asyncio.gather(first.deliver_retries(), second.deliver_retries())
        assert sum(r.get("sent", 0) for r in retried) == 4
        assert {r["status"] for r in await _rows(api)} == {"sent"}
        successes = Counter(r.headers["x-certctl-notification-id"] for r in hook.received)
        assert len(successes) == 12 and sum(successes.values()) == 16  # 12 rows; 4 of them tried twice
        senders = {a["details"]["sender"] for a in await _audit(api, "notification_sent")}
        assert senders <= {first.holder, second.holder}
    finally:
        await second.aclose()


async def test_a_sender_that_died_mid_batch_leaves_its_rows_to_another_after_the_lease(napi: Api) -> None:
    from certctl.services.notifications import LEASE, NotificationService
    from certctl.store import notifications_repo

    api = napi
    clock = _clock(api)
    cert = await factories.seed_certificate(api)
    assert (await api.admin.post(f"/api/v1/certificates/{cert['id']}/revoke")).status_code == 200
    await api.services.notifications.process_audit_events()
    async with api.services.ctx.db.transaction() as conn:  # a server claims the row, then is killed
        [claimed] = await notifications_repo.claim_due(conn, retries=False, now=clock.now(), limit=10,
                                                       holder="dead-server", lease_until=clock.now() + LEASE)
    other = NotificationService(api.services.ctx)
    try:
        assert (await other.deliver_pending())["claimed"] == 0  # leased: not taken while the lease runs
        clock.advance(LEASE + timedelta(seconds=1))
        assert (await other.deliver_pending())["sent"] == 1
        async with api.services.ctx.db.transaction() as conn:  # the old holder's late outcome is not recorded
            assert not await notifications_repo.finish(conn, claimed["id"], "dead-server", {"status": "failed"})
        [row] = await _rows(api, id=claimed["id"])
        assert row["status"] == "sent" and row["claimed_by"] is None
    finally:
        await other.aclose()
