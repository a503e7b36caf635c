"""Generic webhook: a signed JSON POST (connectors.md §6).

`X-Signature: sha256=<hex HMAC-SHA256 of the body with CERTCTL_WEBHOOK_SECRET>` and `X-Signature-Algorithm:
HMAC-SHA256` when a secret is set; `X-Certctl-Notification-Id` lets a receiver drop a repeated delivery (a
sender that crashed after sending and before recording it sends again once its lease ends).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import ClassVar

import orjson

from certctl.connectors.notifiers.base import GuardedHttp, Notice, Notifier


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: str = ""

    def __repr__(self) -> str:
        return "WebhookConfig(url=<set>, secret=<set>)" if self.secret else "WebhookConfig(url=<set>)"


def payload(notice: Notice) -> dict[str, object]:
    """Expiry warnings are alerts, everything else events (the reference's two shapes)."""
    alert = notice.type == "ExpirationWarning"
    return {
        "type": "alert" if alert else "event",
        ("alert_id" if alert else "event_id"): notice.id,
        "event_type": notice.type,
        "severity": notice.severity,
        "subject": notice.subject,
        ("message" if alert else "body"): notice.message,
        "recipient": notice.recipient,
        "certificate_id": notice.certificate_id or "",
        "metadata": notice.metadata,
        "created_at": notice.created_at.isoformat(),
    }


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookNotifier(Notifier):
    channel: ClassVar[str] = "Webhook"

    def __init__(self, config: WebhookConfig, http: GuardedHttp) -> None:
        self.config = config
        self.http = http

    async def send(self, notice: Notice) -> None:
        body = orjson.dumps(payload(notice))
        headers = {"X-Certctl-Notification-Id": notice.id, "User-Agent": "certctl-notifier"}
        if self.config.secret:
            headers["X-Signature"] = signature(self.config.secret, body)
            headers["X-Signature-Algorithm"] = "HMAC-SHA256"
        await self.http.post(self.channel, self.config.url, body, headers)
