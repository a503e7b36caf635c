"""Channel name -> notifier constructor, keyed by the config type that enables it. Adding a channel is its
module, its config and one line here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from certctl.connectors.notifiers.base import GuardedHttp, Notifier
from certctl.connectors.notifiers.email import EmailConfig, EmailNotifier
from certctl.connectors.notifiers.opsgenie import OpsGenieConfig, OpsGenieNotifier
from certctl.connectors.notifiers.pagerduty import PagerDutyConfig, PagerDutyNotifier
from certctl.connectors.notifiers.slack import SlackConfig, SlackNotifier
from certctl.connectors.notifiers.teams import TeamsConfig, TeamsNotifier
from certctl.connectors.notifiers.webhook import WebhookConfig, WebhookNotifier

# config type -> (channel, constructor(config, http))
NOTIFIERS: dict[type[Any], tuple[str, Callable[[Any, GuardedHttp], Notifier]]] = {
    EmailConfig: ("Email", lambda config, _http: EmailNotifier(config)),
    WebhookConfig: ("Webhook", WebhookNotifier),
    SlackConfig: ("Slack", SlackNotifier),
    TeamsConfig: ("Teams", TeamsNotifier),
    PagerDutyConfig: ("PagerDuty", PagerDutyNotifier),
    OpsGenieConfig: ("OpsGenie", OpsGenieNotifier),
}
CHANNELS = tuple(channel for channel, _ in NOTIFIERS.values())


def build_notifiers(configs: list[Any], http: GuardedHttp) -> dict[str, Notifier]:
    """One notifier per configured channel (a channel without a config has none)."""
    built: dict[str, Notifier] = {}
    for config in configs:
        channel, constructor = NOTIFIERS[type(config)]
        built[channel] = constructor(config, http)
    return built
