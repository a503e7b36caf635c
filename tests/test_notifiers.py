"""Notifier connectors against real receivers: an SMTP server (aiosmtpd) with STARTTLS or implicit TLS and AUTH,
and an HTTP(S) server that records each channel's request (payload, headers, the webhook's HMAC signature).
The SSRF guard is the network scanner's AddressPolicy, as the service hands it in."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from certctl.connectors.notifiers.base import GuardedHttp, Notice, NotifierError
from certctl.connectors.notifiers.email import EmailConfig, EmailNotifier
from certctl.connectors.notifiers.opsgenie import OpsGenieConfig, OpsGenieNotifier
from certctl.connectors.notifiers.pagerduty import PagerDutyConfig, PagerDutyNotifier
from certctl.connectors.notifiers.slack import SlackConfig, SlackNotifier
from certctl.connectors.notifiers.teams import TeamsConfig, TeamsNotifier
from certctl.connectors.notifiers.webhook import WebhookConfig, WebhookNotifier
from certctl.services.network_scan import AddressPolicy
from tests.notify_receivers import SMTP_PASSWORD, SMTP_USER, HttpReceiver, root_file, server_tls, smtp_server
from tests.servers import ThrowawayCA

LOOPBACK = AddressPolicy(allow_loopback=True)
NOTICE = Notice(id="notif-1", type="RenewalFailure", recipient="alice@example.com",
                message="Renewal of certificate web (web.example.com) failed: CA unreachable",
                certificate_id="mc-web", created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), severity="critical")


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA("notifier tests")


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    running = HttpReceiver().start()
    yield running
    running.stop()


@pytest.fixture
async def http() -> AsyncIterator[GuardedHttp]:
    client = GuardedHttp(LOOPBACK, timeout=5)
    yield client
    await client.aclose()


def _parsed(raw: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


# ---- Email -------------------------------------------------------------------------------------------------------

async def test_email_starttls_with_auth_is_delivered(ca: ThrowawayCA, tmp_path: Path) -> None:
    tls = server_tls(ca.issue("localhost"), tmp_path)
    with smtp_server(tls) as (port, mail):
        notifier = EmailNotifier(EmailConfig(host="localhost", port=port, username=SMTP_USER, password=SMTP_PASSWORD,
                                             from_address="certctl@example.com", ca_file=str(root_file(ca, tmp_path))))
        await notifier.send(NOTICE)
    [got] = mail.messages
    assert got.tls and got.authenticated  # STARTTLS happened before AUTH and DATA
    assert got.mail_from == "certctl@example.com" and got.rcpt_tos == ["alice@example.com"]
    message = _parsed(got.content)
    assert message["Subject"] == "RenewalFailure" and message["To"] == "alice@example.com"
    body = message.get_body(("plain",))
    assert body is not None and "CA unreachable" in body.get_content()


async def test_email_implicit_tls(ca: ThrowawayCA, tmp_path: Path) -> None:
    tls = server_tls(ca.issue("localhost"), tmp_path)
    with smtp_server(tls, implicit=True) as (port, mail):
        config = EmailConfig(host="localhost", port=port, username=SMTP_USER, password=SMTP_PASSWORD,
                             from_address="certctl@example.com", ca_file=str(root_file(ca, tmp_path)), implicit=True)
        assert config.implicit_tls
        await EmailNotifier(config).send(NOTICE)
    [got] = mail.messages
    assert got.tls and got.authenticated and got.rcpt_tos == ["alice@example.com"]
    assert EmailConfig(host="h", port=465).implicit_tls and not EmailConfig(host="h", port=587).implicit_tls


async def test_email_refuses_a_server_without_starttls(tmp_path: Path) -> None:
    with smtp_server(None) as (port, mail):
        notifier = EmailNotifier(EmailConfig(host="127.0.0.1", port=port, from_address="certctl@example.com"))
        with pytest.raises(NotifierError, match="does not offer STARTTLS"):
            await notifier.send(NOTICE)
        # Plain SMTP only when the operator says so (CERTCTL_SMTP_USE_TLS=false).
        plain = EmailNotifier(EmailConfig(host="127.0.0.1", port=port, from_address="certctl@example.com",
                                          use_tls=False))
        await plain.send(NOTICE)
    assert len(mail.messages) == 1 and not mail.messages[0].tls


async def test_email_wrong_password_and_untrusted_certificate_fail_without_the_password(
    ca: ThrowawayCA, tmp_path: Path,
) -> None:
    tls = server_tls(ca.issue("localhost"), tmp_path)
    with smtp_server(tls) as (port, mail):
        wrong = EmailNotifier(EmailConfig(host="localhost", port=port, username=SMTP_USER, password="wrong-pass-77",
                                          from_address="certctl@example.com", ca_file=str(root_file(ca, tmp_path))))
        with pytest.raises(NotifierError) as refused:
            await wrong.send(NOTICE)
        assert "refused the login" in refused.value.message and "wrong-pass-77" not in refused.value.message
        untrusted = EmailNotifier(EmailConfig(host="localhost", port=port, username=SMTP_USER,
                                              password=SMTP_PASSWORD, from_address="certctl@example.com"))
        with pytest.raises(NotifierError, match="TLS with localhost failed"):
            await untrusted.send(NOTICE)
    assert mail.messages == []
    assert SMTP_PASSWORD not in repr(untrusted.config)


@pytest.mark.parametrize("recipient", ["victim@example.com\r\nBcc: all@example.com", "o-owner-without-email"])
async def test_email_refuses_header_injection_and_non_addresses(recipient: str) -> None:
    notifier = EmailNotifier(EmailConfig(host="127.0.0.1", port=1, from_address="certctl@example.com"))
    notice = Notice(id="n", type="Revocation", recipient=recipient, message="x", certificate_id=None,
                    created_at=NOTICE.created_at)
    with pytest.raises(NotifierError) as refused:
        await notifier.send(notice)
    assert not refused.value.retryable


# ---- HTTP channels -----------------------------------------------------------------------------------------------

async def test_webhook_payload_and_hmac_signature_over_https(ca: ThrowawayCA, tmp_path: Path) -> None:
    receiver = HttpReceiver(tls=server_tls(ca.issue("localhost"), tmp_path)).start()
    http = GuardedHttp(LOOPBACK, timeout=5, ca_file=str(root_file(ca, tmp_path)))
    try:
        secret = "whsec-Y7b2-never-logged"
        await WebhookNotifier(WebhookConfig(receiver.url + "/hooks/certctl", secret), http).send(NOTICE)
    finally:
        await http.aclose()
        receiver.stop()
    [got] = receiver.received
    assert got.path == "/hooks/certctl"
    expected = "sha256=" + hmac.new(secret.encode(), got.body, hashlib.sha256).hexdigest()
    assert got.headers["x-signature"] == expected and got.headers["x-signature-algorithm"] == "HMAC-SHA256"
    assert got.headers["x-certctl-notification-id"] == "notif-1"
    assert orjson.loads(got.body) == {
        "type": "event", "event_id": "notif-1", "event_type": "RenewalFailure", "severity": "critical",
        "subject": "RenewalFailure", "body": NOTICE.message, "recipient": "alice@example.com",
        "certificate_id": "mc-web", "metadata": {}, "created_at": "2026-01-02T03:04:05+00:00",
    }


async def test_webhook_expiry_warning_is_an_alert_and_unsigned_without_secret(
    receiver: HttpReceiver, http: GuardedHttp,
) -> None:
    notice = Notice(id="notif-2", type="ExpirationWarning", recipient="a@example.com", message="expires [threshold:7]",
                    certificate_id="mc-1", created_at=NOTICE.created_at, severity="warning")
    await WebhookNotifier(WebhookConfig(receiver.url + "/h"), http).send(notice)
    [got] = receiver.received
    body = orjson.loads(got.body)
    assert body["type"] == "alert" and body["alert_id"] == "notif-2" and body["message"] == "expires [threshold:7]"
    assert "x-signature" not in got.headers


async def test_slack_teams_pagerduty_opsgenie_payloads(receiver: HttpReceiver, http: GuardedHttp) -> None:
    await SlackNotifier(SlackConfig(receiver.url + "/services/T0/B0/slacksecret", "#certs", "certctl-bot"),
                        http).send(NOTICE)
    await TeamsNotifier(TeamsConfig(receiver.url + "/webhookb2/teamssecret"), http).send(NOTICE)
    await PagerDutyNotifier(PagerDutyConfig("pd-routing-key-Q1", "error", receiver.url), http).send(NOTICE)
    await OpsGenieNotifier(OpsGenieConfig("og-api-key-Q2", "P2", receiver.url + "/"), http).send(NOTICE)
    slack, teams, pagerduty, opsgenie = receiver.received
    assert slack.path == "/services/T0/B0/slacksecret"
    assert orjson.loads(slack.body) == {"text": f"*RenewalFailure*\n{NOTICE.message}", "icon_emoji": ":lock:",
                                        "channel": "#certs", "username": "certctl-bot"}
    card = orjson.loads(teams.body)
    assert card["@type"] == "MessageCard" and card["themeColor"] == "0076D7" and card["summary"] == "RenewalFailure"
    assert card["sections"] == [{"activityTitle": "RenewalFailure", "text": NOTICE.message, "markdown": True}]
    assert pagerduty.path == "/v2/enqueue"
    event = orjson.loads(pagerduty.body)
    assert event["routing_key"] == "pd-routing-key-Q1" and event["event_action"] == "trigger"
    assert event["dedup_key"] == "notif-1"
    assert event["payload"]["severity"] == "error" and event["payload"]["source"] == "certctl"
    assert event["payload"]["summary"].startswith("RenewalFailure: Renewal of certificate web")
    assert event["payload"]["custom_details"]["certificate_id"] == "mc-web"
    assert opsgenie.path == "/v2/alerts" and opsgenie.headers["authorization"] == "GenieKey og-api-key-Q2"
    alert = orjson.loads(opsgenie.body)
    assert alert["priority"] == "P2" and alert["alias"] == "notif-1" and alert["source"] == "certctl"
    assert alert["description"] == NOTICE.message and alert["tags"] == ["certctl", "RenewalFailure"]


async def test_http_errors_are_retryable_or_not_and_never_show_the_url(http: GuardedHttp) -> None:
    receiver = HttpReceiver(statuses=[503, 404, 429]).start()
    try:
        slack = SlackNotifier(SlackConfig(receiver.url + "/services/T0/B0/slacksecret"), http)
        for status, retryable in ((503, True), (404, False), (429, True)):
            with pytest.raises(NotifierError) as failed:
                await slack.send(NOTICE)
            assert failed.value.retryable is retryable and f"HTTP {status}" in failed.value.message
            assert "slacksecret" not in failed.value.message
    finally:
        receiver.stop()
    with pytest.raises(NotifierError) as refused:  # stopped: nothing listens there now
        await slack.send(NOTICE)
    assert refused.value.retryable and "cannot connect" in refused.value.message
    assert "slacksecret" not in refused.value.message


@pytest.mark.parametrize(("url", "reason"), [
    ("http://127.0.0.1:9/hook", "loopback address"),
    ("http://169.254.169.254/latest/meta-data", "cloud metadata address"),
    ("http://10.1.2.3/hook", "private address"),
    ("http://[::ffff:127.0.0.1]:9/hook", "loopback address"),
    ("ftp://example.com/hook", "not an http(s) URL"),
])
async def test_ssrf_guard_refuses_internal_addresses(receiver: HttpReceiver, url: str, reason: str) -> None:
    http = GuardedHttp(AddressPolicy(), timeout=2)  # the defaults: no loopback, no private ranges
    try:
        with pytest.raises(NotifierError) as refused:
            await WebhookNotifier(WebhookConfig(url), http).send(NOTICE)
    finally:
        await http.aclose()
    assert reason in refused.value.message and not refused.value.retryable
    assert receiver.received == []
