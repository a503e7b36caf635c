"""Slack incoming webhook: `{"text": "*subject*\\nbody", channel, username, icon_emoji}`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import orjson

from certctl.connectors.notifiers.base import GuardedHttp, Notice, Notifier


@dataclass(frozen=True)
class SlackConfig:
    webhook_url: str  # the URL is the credential: never logged
    channel: str = ""
    username: str = ""

    def __repr__(self) -> str:
        return f"SlackConfig(webhook_url=<set>, channel={self.channel!r}, username={self.username!r})"


def payload(config: SlackConfig, notice: Notice) -> dict[str, object]:
    body: dict[str, object] = {"text": f"*{notice.subject}*\n{notice.message}", "icon_emoji": ":lock:"}
    if config.channel:
        body["channel"] = config.channel
    if config.username:
        body["username"] = config.username
    return body


class SlackNotifier(Notifier):
    channel: ClassVar[str] = "Slack"

    def __init__(self, config: SlackConfig, http: GuardedHttp) -> None:
        self.config = config
        self.http = http

    async def send(self, notice: Notice) -> None:
        await self.http.post(self.channel, self.config.webhook_url, orjson.dumps(payload(self.config, notice)), {})
