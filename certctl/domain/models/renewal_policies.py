"""Renewal policies: when a certificate renews, how often it retries, and how expiry alerts escalate."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field, field_validator

from certctl.domain.enums import WireEnum
from certctl.domain.models.common import InputModel, WireModel


class AlertTier(StrEnum):
    INFORMATIONAL = "informational"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertChannel(WireEnum):
    EMAIL = "Email"
    WEBHOOK = "Webhook"
    SLACK = "Slack"
    TEAMS = "Teams"
    PAGERDUTY = "PagerDuty"
    OPSGENIE = "OpsGenie"


DEFAULT_ALERT_THRESHOLDS = [30, 14, 7, 0]
DEFAULT_ALERT_CHANNELS: dict[str, list[str]] = {tier.value: [AlertChannel.EMAIL.value] for tier in AlertTier}
# Thresholds missing from the map are informational (core.md §1).
DEFAULT_ALERT_SEVERITY_MAP: dict[str, str] = {"30": "informational", "14": "warning", "7": "warning", "0": "critical"}

ThresholdDays = Annotated[int, Field(ge=0, le=365)]


class RenewalPolicy(WireModel):
    id: str
    name: str
    renewal_window_days: int
    auto_renew: bool
    max_retries: int
    retry_interval_seconds: int
    alert_thresholds_days: list[int]
    alert_channels: dict[str, list[str]]
    alert_severity_map: dict[str, str]
    certificate_profile_id: str | None
    created_at: datetime
    updated_at: datetime


def _thresholds(value: list[int] | None) -> list[int] | None:
    # Duplicates would fire the same alert twice; keep the caller's order otherwise.
    return None if value is None else list(dict.fromkeys(value))


def _channels(value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
    if value is None:
        return None
    out: dict[str, list[str]] = {}
    for tier, channels in value.items():
        try:
            tier_name = AlertTier(tier.lower()).value
        except ValueError:
            allowed = ", ".join(t.value for t in AlertTier)
            raise ValueError(f"unknown alert tier '{tier}'; expected one of: {allowed}") from None
        out[tier_name] = list(dict.fromkeys(AlertChannel.parse(c).value for c in channels))
    return out


def _severity_map(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    out: dict[str, str] = {}
    for day, tier in value.items():
        if not day.isdigit() or not 0 <= int(day) <= 365:
            raise ValueError(f"alert_severity_map key '{day}' must be a number of days between 0 and 365")
        try:
            out[str(int(day))] = AlertTier(tier.lower()).value
        except ValueError:
            allowed = ", ".join(t.value for t in AlertTier)
            raise ValueError(f"unknown alert tier '{tier}' for day {day}; expected one of: {allowed}") from None
    return out


class _PolicyFields(InputModel):
    renewal_window_days: int | None = Field(default=None, ge=1, le=365)
    auto_renew: bool | None = None
    max_retries: int | None = Field(default=None, ge=0, le=10)
    retry_interval_seconds: int | None = Field(default=None, ge=60, le=86400)
    alert_thresholds_days: list[ThresholdDays] | None = Field(default=None, max_length=32)
    alert_channels: dict[str, list[str]] | None = None
    alert_severity_map: dict[str, str] | None = Field(default=None, max_length=366)

    _t = field_validator("alert_thresholds_days")(_thresholds)
    _c = field_validator("alert_channels")(_channels)
    _s = field_validator("alert_severity_map")(_severity_map)


class RenewalPolicyCreate(_PolicyFields):
    id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    name: str = Field(min_length=1, max_length=255)


class RenewalPolicyUpdate(_PolicyFields):
    name: str | None = Field(default=None, min_length=1, max_length=255)
