"""Notification events (core.md "NotificationEvent"): what is sent, on which channel, and how delivery went."""

from __future__ import annotations

from datetime import datetime

from certctl.domain.enums import WireEnum
from certctl.domain.models.common import WireModel


class NotificationType(WireEnum):
    EXPIRATION_WARNING = "ExpirationWarning"
    RENEWAL_SUCCESS = "RenewalSuccess"
    RENEWAL_FAILURE = "RenewalFailure"
    DEPLOYMENT_SUCCESS = "DeploymentSuccess"
    DEPLOYMENT_FAILURE = "DeploymentFailure"
    POLICY_VIOLATION = "PolicyViolation"
    REVOCATION = "Revocation"


class NotificationStatus(WireEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    DEAD = "dead"
    READ = "read"


#: Delivery attempts before a notification is dead-lettered (core.md: "the 5th failure marks it dead").
MAX_ATTEMPTS = 5


class NotificationEvent(WireModel):
    id: str
    type: str
    certificate_id: str | None
    channel: str
    recipient: str
    message: str
    sent_at: datetime | None
    status: str
    error: str | None
    retry_count: int
    next_retry_at: datetime | None
    last_error: str | None
    created_at: datetime
