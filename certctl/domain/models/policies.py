"""Compliance policy rules, the per-type rule configurations, and the violations they find."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from certctl.domain.enums import PolicySeverity, PolicyType
from certctl.domain.models.common import InputModel, JsonObject, WireModel


class PolicyRule(WireModel):
    id: str
    name: str
    type: PolicyType
    config: dict[str, Any]
    enabled: bool
    severity: PolicySeverity
    created_at: datetime
    updated_at: datetime


class PolicyRuleCreate(InputModel):
    id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    name: str = Field(min_length=1, max_length=255)
    type: PolicyType
    # Checked against the rule type's own schema by the service (400 naming the bad key).
    config: JsonObject = Field(default_factory=dict)
    enabled: bool = True
    severity: PolicySeverity = PolicySeverity.WARNING


class PolicyRuleUpdate(InputModel):
    name: str | None = Field(default=None, min_length=1, max_length=255)
    type: PolicyType | None = None
    config: JsonObject | None = None
    enabled: bool | None = None
    severity: PolicySeverity | None = None


class PolicyViolation(WireModel):
    id: str
    certificate_id: str
    rule_id: str
    message: str
    severity: PolicySeverity
    created_at: datetime


# ---- per-type rule configurations ------------------------------------------------------------

NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=253)]

# A DNS name, optionally with one leading wildcard label (`*.example.com`).
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_DOMAIN_PATTERN = re.compile(rf"^(\*\.)?({_LABEL}\.)*{_LABEL}$")


class RuleConfig(BaseModel):
    """Base of the rule configurations: unknown keys are refused so a typo cannot silently disable a rule."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class AllowedIssuersConfig(RuleConfig):
    allowed_issuer_ids: list[NonBlank] = Field(min_length=1)


class AllowedDomainsConfig(RuleConfig):
    allowed_domains: list[NonBlank] = Field(min_length=1)

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        cleaned = []
        for entry in value:
            domain = entry.lower().rstrip(".")
            if not _DOMAIN_PATTERN.match(domain):
                raise ValueError(f"'{entry}' is not a domain name or a '*.domain' wildcard")
            cleaned.append(domain)
        return cleaned


class RequiredMetadataConfig(RuleConfig):
    required_keys: list[NonBlank] = Field(min_length=1)


class AllowedEnvironmentsConfig(RuleConfig):
    allowed: list[NonBlank] = Field(min_length=1)


class RenewalLeadTimeConfig(RuleConfig):
    lead_time_days: int = Field(default=30, ge=1, le=365)


class CertificateLifetimeConfig(RuleConfig):
    max_days: int = Field(ge=1, le=36500)
