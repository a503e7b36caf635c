"""PagerDuty Events API v2: `POST {api_url}/v2/enqueue` with a trigger event.

`dedup_key` is the notification id, so a repeated delivery updates the same PagerDuty incident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import orjson

from certctl.connectors.notifiers.base import GuardedHttp, Notice, Notifier

SEVERITIES = ("critical", "error", "warning", "info")


@dataclass(frozen=True)
class PagerDutyConfig:
    routing_key: str  # never logged
    severity: str = "warning"
    api_url: str = "https://events.pagerduty.com"

    def __repr__(self) -> str:
        return f"PagerDutyConfig(routing_key=<set>, severity={self.severity!r}, api_url={self.api_url!r})"


def payload(config: PagerDutyConfig, notice: Notice) -> dict[str, object]:
    return {
        "routing_key": config.routing_key,
        "event_action": "trigger",
        "dedup_key": notice.id,
        "payload": {
            "summary": f"{notice.subject}: {notice.message}"[:1024],  # the Events API's limit
            "severity": config.severity,
            "source": "certctl",
            "custom_details": {"notification_type": notice.type, "certificate_id": notice.certificate_id or "",
                               "recipient": notice.recipient, **notice.metadata},
        },
    }


class PagerDutyNotifier(Notifier):
    channel: ClassVar[str] = "PagerDuty"

    def __init__(self, config: PagerDutyConfig, http: GuardedHttp) -> None:
        self.config = config
        self.http = http

    async def send(self, notice: Notice) -> None:
        url = self.config.api_url.rstrip("/") + "/v2/enqueue"
        await self.http.post(self.channel, url, orjson.dumps(payload(self.config, notice)), {})
