"""The compliance policy engine: one small evaluator object per rule type, kept in a registry.

Each evaluator owns its configuration schema (used to refuse bad rules at create/update time)
and a pure `check` that turns a certificate's facts into a violation message or nothing.
`evaluate_certificate` runs every enabled rule against one certificate inside the caller's
transaction and replaces that certificate's stored findings (the reference only audited them,
core.md §8 bug 10; here they are stored so `/policies/{id}/violations` shows live results).
"""

from __future__ import annotations

import ipaddress
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

import pydantic
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.actor import Actor
from certctl.domain.enums import PolicySeverity, PolicyType
from certctl.domain.errors import ValidationError
from certctl.domain.ids import new_id
from certctl.domain.models.policies import (
    AllowedDomainsConfig,
    AllowedEnvironmentsConfig,
    AllowedIssuersConfig,
    CertificateLifetimeConfig,
    PolicyViolation,
    RenewalLeadTimeConfig,
    RequiredMetadataConfig,
    RuleConfig,
)
from certctl.services import audit
from certctl.services.context import ServiceContext
from certctl.store import audit_repo, policies_repo
from certctl.store.rows import Row

log = logging.getLogger("certctl.policy")

C = TypeVar("C", bound=RuleConfig)


class Fact(StrEnum):
    """Certificate facts that live outside the managed_certificates row; loaded only when a rule needs them."""

    RENEWAL_WINDOW = "renewal_window"
    VALIDITY = "validity"


@dataclass(frozen=True)
class CertificateFacts:
    certificate: Mapping[str, Any]
    renewal_window_days: int | None = None
    # (not_before, not_after) of the latest certificate version; None until first issued.
    validity: tuple[datetime, datetime] | None = None


class RuleEvaluator(ABC, Generic[C]):
    rule_type: ClassVar[PolicyType]
    config_model: type[C]
    needs: ClassVar[frozenset[Fact]] = frozenset()

    def parse_config(self, raw: Mapping[str, Any]) -> C:
        return self.config_model.model_validate(dict(raw))

    @abstractmethod
    def check(self, config: C, facts: CertificateFacts) -> str | None:
        """The violation message, or None when the certificate complies."""


class AllowedIssuers(RuleEvaluator[AllowedIssuersConfig]):
    rule_type = PolicyType.ALLOWED_ISSUERS
    config_model = AllowedIssuersConfig

    def check(self, config: AllowedIssuersConfig, facts: CertificateFacts) -> str | None:
        issuer = str(facts.certificate.get("issuer_id") or "")
        if issuer in config.allowed_issuer_ids:
            return None
        return f"issuer '{issuer}' is not in the allowed issuers ({', '.join(config.allowed_issuer_ids)})"


class AllowedDomains(RuleEvaluator[AllowedDomainsConfig]):
    """The common name and every DNS SAN must match an allowed domain.

    A pattern is an exact name, or `*.parent` which matches exactly one label under parent
    (`*.example.com` covers `a.example.com`, not `a.b.example.com` nor `example.com`).
    Email, IP and URI names are not DNS names and are left to other rules.
    """

    rule_type = PolicyType.ALLOWED_DOMAINS
    config_model = AllowedDomainsConfig

    def check(self, config: AllowedDomainsConfig, facts: CertificateFacts) -> str | None:
        cert = facts.certificate
        names = dns_names([cert.get("common_name") or "", *(cert.get("sans") or [])])
        outside = [name for name in names if not domain_allowed(name, config.allowed_domains)]
        if not outside:
            return None
        return f"name(s) outside the allowed domains: {', '.join(outside)}"


class RequiredMetadata(RuleEvaluator[RequiredMetadataConfig]):
    """Each required key must be present in the certificate's tags with a non-blank value."""

    rule_type = PolicyType.REQUIRED_METADATA
    config_model = RequiredMetadataConfig

    def check(self, config: RequiredMetadataConfig, facts: CertificateFacts) -> str | None:
        tags = facts.certificate.get("tags") or {}
        missing = [key for key in config.required_keys if not str(tags.get(key, "")).strip()]
        if not missing:
            return None
        return f"missing required metadata key(s): {', '.join(missing)}"


class AllowedEnvironments(RuleEvaluator[AllowedEnvironmentsConfig]):
    rule_type = PolicyType.ALLOWED_ENVIRONMENTS
    config_model = AllowedEnvironmentsConfig

    def check(self, config: AllowedEnvironmentsConfig, facts: CertificateFacts) -> str | None:
        environment = str(facts.certificate.get("environment") or "").strip()
        if not environment:
            return "certificate has no environment; allowed: " + ", ".join(config.allowed)
        if environment.casefold() in {allowed.casefold() for allowed in config.allowed}:
            return None
        return f"environment '{environment}' is not allowed ({', '.join(config.allowed)})"


class RenewalLeadTime(RuleEvaluator[RenewalLeadTimeConfig]):
    """The certificate's renewal policy must start renewing at least `lead_time_days` before expiry."""

    rule_type = PolicyType.RENEWAL_LEAD_TIME
    config_model = RenewalLeadTimeConfig
    needs = frozenset({Fact.RENEWAL_WINDOW})

    def check(self, config: RenewalLeadTimeConfig, facts: CertificateFacts) -> str | None:
        window = facts.renewal_window_days
        if window is None or window >= config.lead_time_days:
            return None
        policy = facts.certificate.get("renewal_policy_id")
        return (
            f"renewal policy '{policy}' renews {window} day(s) before expiry, "
            f"less than the required lead time of {config.lead_time_days} day(s)"
        )


class CertificateLifetime(RuleEvaluator[CertificateLifetimeConfig]):
    """The latest issued version may not be valid for longer than `max_days` (nothing to check before issuance)."""

    rule_type = PolicyType.CERTIFICATE_LIFETIME
    config_model = CertificateLifetimeConfig
    needs = frozenset({Fact.VALIDITY})

    def check(self, config: CertificateLifetimeConfig, facts: CertificateFacts) -> str | None:
        if facts.validity is None:
            return None
        not_before, not_after = facts.validity
        lifetime = not_after - not_before
        if lifetime <= timedelta(days=config.max_days):
            return None
        days = lifetime / timedelta(days=1)
        return f"certificate lifetime is {days:.1f} days, more than the maximum of {config.max_days} days"


EVALUATORS: dict[PolicyType, RuleEvaluator[Any]] = {
    evaluator.rule_type: evaluator
    for evaluator in (
        AllowedIssuers(), AllowedDomains(), RequiredMetadata(), AllowedEnvironments(),
        RenewalLeadTime(), CertificateLifetime(),
    )
}


def validate_rule_config(rule_type: PolicyType, config: Mapping[str, Any]) -> dict[str, Any]:
    """The normalised config for a rule of this type (defaults filled in), or a 400 naming what is wrong."""
    evaluator = EVALUATORS[rule_type]
    try:
        parsed = evaluator.parse_config(config)
    except pydantic.ValidationError as exc:
        raise ValidationError(f"invalid config for a {rule_type.value} rule: {describe_config_errors(exc)}") from exc
    normalised: dict[str, Any] = parsed.model_dump()
    return normalised


def describe_config_errors(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "config"
        if err["type"] == "missing":
            msg = "is required"
        elif err["type"] == "extra_forbidden":
            msg = "is not a known key for this rule type"
        else:
            msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


# ---- name matching ---------------------------------------------------------------------------------


def dns_names(candidates: Iterable[str]) -> list[str]:
    """Lower-cased DNS names among the candidates, without duplicates (emails, IPs and URIs dropped)."""
    seen: dict[str, None] = {}
    for raw in candidates:
        name = str(raw).strip().lower().rstrip(".")
        if not name or "@" in name or ":" in name or "/" in name:
            continue
        try:
            ipaddress.ip_address(name)
            continue
        except ValueError:
            pass
        seen.setdefault(name, None)
    return list(seen)


def domain_allowed(name: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if name == pattern:
            return True
        if pattern.startswith("*."):
            parent = pattern[1:]  # ".example.com"
            head = name[: -len(parent)] if name.endswith(parent) else ""
            if head and "." not in head:
                return True
    return False


# ---- the engine --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CompiledRule:
    row: Row
    evaluator: RuleEvaluator[Any]
    config: RuleConfig


def _compile(rules: Iterable[Row]) -> list[_CompiledRule]:
    compiled = []
    for rule in rules:
        try:
            rule_type = PolicyType.parse(str(rule["type"]))
            evaluator = EVALUATORS[rule_type]
            config = evaluator.parse_config(rule["config"] or {})
        except (ValueError, KeyError, pydantic.ValidationError) as exc:
            # Rules are validated on write; a bad one can only come from outside the API (a seed,
            # a hand edit). Skip it loudly rather than fail every certificate change.
            log.warning("skipping policy rule %s with an unusable type or config: %s", rule["id"], exc)
            continue
        compiled.append(_CompiledRule(rule, evaluator, config))
    return compiled


async def _load_facts(
    conn: AsyncConnection, certificate: Mapping[str, Any], needs: set[Fact]
) -> CertificateFacts:
    window = None
    validity = None
    if Fact.RENEWAL_WINDOW in needs and certificate.get("renewal_policy_id"):
        window = await policies_repo.renewal_window_days(conn, str(certificate["renewal_policy_id"]))
    if Fact.VALIDITY in needs:
        validity = await policies_repo.latest_version_validity(conn, str(certificate["id"]))
    return CertificateFacts(certificate=certificate, renewal_window_days=window, validity=validity)


def _severity(raw: Any) -> PolicySeverity:
    try:
        return PolicySeverity.parse(str(raw))
    except ValueError:
        return PolicySeverity.WARNING


async def evaluate_certificate(
    conn: AsyncConnection, ctx: ServiceContext, actor: Actor, certificate: Mapping[str, Any], *, new: bool = False
) -> list[PolicyViolation]:
    """Evaluate every enabled rule against one certificate, inside the caller's transaction.

    The certificate's rows in policy_violations are replaced by the new findings (none left
    when it complies), and each finding is audited as `policy_violation_detected`. `new`: the
    certificate was created in this transaction, so it has no stored findings to replace.
    """
    rules = _compile(await policies_repo.list_enabled_rules(conn))
    needs: set[Fact] = set().union(*(r.evaluator.needs for r in rules)) if rules else set()
    facts = await _load_facts(conn, certificate, needs)
    now = ctx.clock.now()
    certificate_id = str(certificate["id"])

    found: list[dict[str, Any]] = []
    for rule in rules:
        message = rule.evaluator.check(rule.config, facts)
        if message is None:
            continue
        found.append({
            "id": new_id("violation"),
            "certificate_id": certificate_id,
            "rule_id": rule.row["id"],
            "message": f"{rule.row['name']}: {message}",
            "severity": _severity(rule.row["severity"]).value,
            "created_at": now,
        })

    if new:
        await policies_repo.add_violations(conn, found)
    else:
        await policies_repo.replace_violations(conn, certificate_id, found)
    if found:
        events = [
            audit.build_event(
                actor, "policy_violation_detected", "certificate", certificate_id,
                {
                    "violation_id": v["id"], "rule_id": v["rule_id"], "severity": v["severity"],
                    "message": v["message"],
                },
                now,
            )
            for v in found
        ]
        await audit_repo.add_events(conn, events)
    return [PolicyViolation.model_validate(v) for v in found]
