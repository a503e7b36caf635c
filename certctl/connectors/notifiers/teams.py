"""Microsoft Teams incoming webhook: a MessageCard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import orjson

from certctl.connectors.notifiers.base import GuardedHttp, Notice, Notifier


@dataclass(frozen=True)
class TeamsConfig:
    webhook_url: str  # the URL is the credential: never logged

    def __repr__(self) -> str:
        return "TeamsConfig(webhook_url=<set>)"


def payload(notice: Notice) -> dict[str, object]:
    return {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "themeColor": "0076D7",
        "summary": notice.subject,
        "sections": [{"activityTitle": notice.subject, "text": notice.message, "markdown": True}],
    }


class TeamsNotifier(Notifier):
    channel: ClassVar[str] = "Teams"

    def __init__(self, config: TeamsConfig, http: GuardedHttp) -> None:
        self.config = config
        self.http = http

    async def send(self, notice: Notice) -> None:
        await self.http.post(self.channel, self.config.webhook_url, orjson.dumps(payload(notice)), {})
