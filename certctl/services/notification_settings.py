"""Notifier settings (CERTCTL_SMTP_*, _WEBHOOK_*, ... _DIGEST_*; docs/notifications.md).

Apart from certctl.services.notifications so that `certctl server` can check them at start-up without
loading the services (the supervisor of `--workers N` stays small: it never runs a request).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from certctl.config import SettingsError, env_bool, env_int_between, parse_duration
from certctl.connectors.notifiers.email import EmailConfig
from certctl.connectors.notifiers.opsgenie import PRIORITIES, OpsGenieConfig
from certctl.connectors.notifiers.pagerduty import SEVERITIES, PagerDutyConfig
from certctl.connectors.notifiers.slack import SlackConfig
from certctl.connectors.notifiers.teams import TeamsConfig
from certctl.connectors.notifiers.webhook import WebhookConfig

if TYPE_CHECKING:
    from certctl.services.network_scan import AddressPolicy

LOOPBACK_VARIABLE = "CERTCTL_NOTIFIER_ALLOW_LOOPBACK"
PRIVATE_VARIABLE = "CERTCTL_NOTIFIER_ALLOW_PRIVATE"


def _url(env: Mapping[str, str], name: str) -> str:
    value = (env.get(name) or "").strip()
    if value and not (value.startswith("https://") or value.startswith("http://")):
        raise SettingsError(f"{name}: must be an http(s) URL")  # the value itself may be a secret: not shown
    return value


@dataclass(frozen=True)
class NotificationSettings:
    """CERTCTL_SMTP_*, _WEBHOOK_*, _SLACK_*, _TEAMS_*, _PAGERDUTY_*, _OPSGENIE_*, _NOTIFIER_*, _NOTIFICATION_*,
    _DIGEST_* (checked at start by certctl.config; docs/notifications.md). A notifier is on when its key is set."""

    channels: tuple[Any, ...] = ()  # the channel configs (connectors/notifiers/*Config)
    process_interval: timedelta = timedelta(minutes=1)
    retry_interval: timedelta = timedelta(minutes=2)
    expiry_scan_interval: timedelta = timedelta(hours=1)
    timeout: float = 30.0
    ca_file: str | None = None
    allow_loopback: bool = False
    allow_private: bool = False
    digest_enabled: bool = False
    digest_interval: timedelta = timedelta(hours=24)
    digest_recipients: tuple[str, ...] = ()

    @property
    def policy(self) -> AddressPolicy:
        from certctl.services.network_scan import AddressPolicy

        return AddressPolicy(allow_loopback=self.allow_loopback, allow_private=self.allow_private,
                             loopback_variable=LOOPBACK_VARIABLE, private_variable=PRIVATE_VARIABLE)

    @property
    def email(self) -> EmailConfig | None:
        return next((c for c in self.channels if isinstance(c, EmailConfig)), None)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NotificationSettings:
        def text(name: str, default: str = "") -> str:
            return (env.get(name) or default).strip()

        def choice(name: str, default: str, allowed: tuple[str, ...], fold: Callable[[str], str]) -> str:
            value = fold(text(name, default))
            if value not in allowed:
                raise SettingsError(f"{name}: '{value}' is not one of: {', '.join(allowed)}")
            return value

        def duration(names: tuple[str, ...], default: str, minimum: float) -> timedelta:
            for name in names:
                if env.get(name):
                    return timedelta(seconds=parse_duration(name, env[name], minimum))
            return timedelta(seconds=parse_duration(names[0], default, minimum))

        timeout = duration(("CERTCTL_NOTIFIER_TIMEOUT",), "30s", 0.1).total_seconds()
        ca_file = text("CERTCTL_NOTIFIER_CA_FILE") or None
        if ca_file is not None and not os.path.isfile(ca_file):
            raise SettingsError(f"CERTCTL_NOTIFIER_CA_FILE: file '{ca_file}' does not exist")
        channels: list[Any] = []
        if text("CERTCTL_SMTP_HOST"):
            sender = text("CERTCTL_SMTP_FROM_ADDRESS")
            if "@" not in sender or "\n" in sender or "\r" in sender:
                raise SettingsError("CERTCTL_SMTP_FROM_ADDRESS: must be an email address when CERTCTL_SMTP_HOST is set")
            username, password = text("CERTCTL_SMTP_USERNAME"), env.get("CERTCTL_SMTP_PASSWORD") or ""
            if bool(username) != bool(password):
                raise SettingsError("CERTCTL_SMTP_USERNAME and CERTCTL_SMTP_PASSWORD: must be set together")
            channels.append(EmailConfig(
                host=text("CERTCTL_SMTP_HOST"), port=env_int_between(env, "CERTCTL_SMTP_PORT", 587, 1, 65535),
                username=username, password=password, from_address=sender,
                use_tls=env_bool(env, "CERTCTL_SMTP_USE_TLS", True), timeout=timeout, ca_file=ca_file,
                implicit=env_bool(env, "CERTCTL_SMTP_IMPLICIT_TLS", False) if env.get("CERTCTL_SMTP_IMPLICIT_TLS")
                else None,
            ))
        if _url(env, "CERTCTL_WEBHOOK_URL"):
            channels.append(WebhookConfig(_url(env, "CERTCTL_WEBHOOK_URL"), env.get("CERTCTL_WEBHOOK_SECRET") or ""))
        if _url(env, "CERTCTL_SLACK_WEBHOOK_URL"):
            channels.append(SlackConfig(_url(env, "CERTCTL_SLACK_WEBHOOK_URL"), text("CERTCTL_SLACK_CHANNEL"),
                                        text("CERTCTL_SLACK_USERNAME")))
        if _url(env, "CERTCTL_TEAMS_WEBHOOK_URL"):
            channels.append(TeamsConfig(_url(env, "CERTCTL_TEAMS_WEBHOOK_URL")))
        if text("CERTCTL_PAGERDUTY_ROUTING_KEY"):
            channels.append(PagerDutyConfig(
                text("CERTCTL_PAGERDUTY_ROUTING_KEY"),
                choice("CERTCTL_PAGERDUTY_SEVERITY", "warning", SEVERITIES, str.lower),
                _url(env, "CERTCTL_PAGERDUTY_API_URL") or "https://events.pagerduty.com"))
        if text("CERTCTL_OPSGENIE_API_KEY"):
            channels.append(OpsGenieConfig(
                text("CERTCTL_OPSGENIE_API_KEY"),
                choice("CERTCTL_OPSGENIE_PRIORITY", "P3", PRIORITIES, str.upper),
                _url(env, "CERTCTL_OPSGENIE_API_URL") or "https://api.opsgenie.com"))
        digest_enabled = env_bool(env, "CERTCTL_DIGEST_ENABLED", False)
        if digest_enabled and not text("CERTCTL_SMTP_HOST"):
            raise SettingsError("CERTCTL_DIGEST_ENABLED: the digest is sent by email; set CERTCTL_SMTP_HOST too")
        recipients = tuple(r.strip() for r in text("CERTCTL_DIGEST_RECIPIENTS").split(",") if r.strip())
        for recipient in recipients:
            if "@" not in recipient:
                raise SettingsError(f"CERTCTL_DIGEST_RECIPIENTS: '{recipient}' is not an email address")
        return cls(
            channels=tuple(channels),
            process_interval=duration(("CERTCTL_NOTIFICATION_PROCESS_INTERVAL",
                                       "CERTCTL_SCHEDULER_NOTIFICATION_PROCESS_INTERVAL"), "1m", 0.1),
            retry_interval=duration(("CERTCTL_NOTIFICATION_RETRY_INTERVAL",), "2m", 0.1),
            expiry_scan_interval=duration(("CERTCTL_NOTIFICATION_EXPIRY_SCAN_INTERVAL",
                                           "CERTCTL_SCHEDULER_RENEWAL_CHECK_INTERVAL"), "1h", 0.1),
            timeout=timeout, ca_file=ca_file,
            allow_loopback=env_bool(env, LOOPBACK_VARIABLE, False),
            allow_private=env_bool(env, PRIVATE_VARIABLE, False),
            digest_enabled=digest_enabled,
            digest_interval=duration(("CERTCTL_DIGEST_INTERVAL",), "24h", 1.0),
            digest_recipients=recipients,
        )
