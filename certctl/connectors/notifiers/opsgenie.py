"""OpsGenie Alert API: `POST {api_url}/v2/alerts` with `Authorization: GenieKey <key>`.

`alias` is the notification id, so a repeated delivery does not open a second alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import orjson

from certctl.connectors.notifiers.base import GuardedHttp, Notice, Notifier

PRIORITIES = ("P1", "P2", "P3", "P4", "P5")


@dataclass(frozen=True)
class OpsGenieConfig:
    api_key: str  # never logged
    priority: str = "P3"
    api_url: str = "https://api.opsgenie.com"

    def __repr__(self) -> str:
        return f"OpsGenieConfig(api_key=<set>, priority={self.priority!r}, api_url={self.api_url!r})"


def payload(config: OpsGenieConfig, notice: Notice) -> dict[str, object]:
    return {
        "message": f"{notice.subject}: {notice.message}"[:130],  # the API's limit
        "alias": notice.id,
        "description": notice.message[:15000],
        "priority": config.priority,
        "source": "certctl",
        "tags": ["certctl", notice.type],
        "details": {"certificate_id": notice.certificate_id or "", "recipient": notice.recipient},
    }


class OpsGenieNotifier(Notifier):
    channel: ClassVar[str] = "OpsGenie"

    def __init__(self, config: OpsGenieConfig, http: GuardedHttp) -> None:
        self.config = config
        self.http = http

    async def send(self, notice: Notice) -> None:
        url = self.config.api_url.rstrip("/") + "/v2/alerts"
        headers = {"Authorization": f"GenieKey {self.config.api_key}"}
        await self.http.post(self.channel, url, orjson.dumps(payload(self.config, notice)), headers)
