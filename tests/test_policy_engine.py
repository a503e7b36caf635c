"""The policy engine: each rule evaluator on its own, config validation, and evaluation against the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from certctl.domain.actor import Actor
from certctl.domain.enums import PolicyType
from certctl.domain.errors import ValidationError
from certctl.services import policy_engine
from certctl.services.policy_engine import EVALUATORS, CertificateFacts, domain_allowed, validate_rule_config
from certctl.store import rows
from certctl.store.schema import (
    certificate_versions,
    managed_certificates,
    owners,
    policy_rules,
    policy_violations,
    renewal_policies,
    teams,
)
from tests.conftest import Api
from tests.factories import unique

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def cert(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": "mc-1", "name": "api", "common_name": "api.example.com", "sans": ["api.example.com"],
        "environment": "prod", "issuer_id": "iss-local", "tags": {"owner": "alice"},
        "renewal_policy_id": "rp-default", "expires_at": None,
    }
    values.update(overrides)
    return values


def check(rule_type: PolicyType, config: dict[str, Any], facts: CertificateFacts) -> str | None:
    evaluator = EVALUATORS[rule_type]
    return evaluator.check(evaluator.parse_config(config), facts)


# ---- evaluators ------------------------------------------------------------------------------------


def test_every_policy_type_has_an_evaluator() -> None:
    assert set(EVALUATORS) == set(PolicyType)


def test_allowed_issuers() -> None:
    config = {"allowed_issuer_ids": ["iss-local", "iss-acme"]}
    assert check(PolicyType.ALLOWED_ISSUERS, config, CertificateFacts(cert())) is None
    message = check(PolicyType.ALLOWED_ISSUERS, config, CertificateFacts(cert(issuer_id="iss-other")))
    assert message is not None and "iss-other" in message


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("a.example.com", True),
        ("example.com", True),
        ("a.b.example.com", False),
        ("evilexample.com", False),
        ("x.internal.example.org", True),
        ("internal.example.org", False),
        ("other.org", False),
    ],
)
def test_domain_wildcard_matches_exactly_one_label(name: str, allowed: bool) -> None:
    patterns = ["*.example.com", "example.com", "*.internal.example.org"]
    assert domain_allowed(name, patterns) is allowed


def test_allowed_domains_checks_common_name_and_every_dns_san() -> None:
    config = {"allowed_domains": ["*.Example.com."]}  # normalised: lower case, no trailing dot
    ok = cert(common_name="www.example.com", sans=["api.example.com", "ops@corp.net", "10.0.0.1", "::1"])
    assert check(PolicyType.ALLOWED_DOMAINS, config, CertificateFacts(ok)) is None

    bad_cn = cert(common_name="www.other.com", sans=["api.example.com"])
    message = check(PolicyType.ALLOWED_DOMAINS, config, CertificateFacts(bad_cn))
    assert message is not None and "www.other.com" in message

    bad_san = cert(common_name="www.example.com", sans=["a.b.example.com", "API.other.net"])
    message = check(PolicyType.ALLOWED_DOMAINS, config, CertificateFacts(bad_san))
    assert message is not None and "a.b.example.com" in message and "api.other.net" in message


def test_required_metadata() -> None:
    config = {"required_keys": ["owner", "cost-center"]}
    complete = cert(tags={"owner": "alice", "cost-center": "42"})
    assert check(PolicyType.REQUIRED_METADATA, config, CertificateFacts(complete)) is None
    message = check(PolicyType.REQUIRED_METADATA, config, CertificateFacts(cert(tags={"owner": " "})))
    assert message is not None and "owner" in message and "cost-center" in message


def test_allowed_environments() -> None:
    config = {"allowed": ["prod", "staging"]}
    assert check(PolicyType.ALLOWED_ENVIRONMENTS, config, CertificateFacts(cert(environment="Prod"))) is None
    message = check(PolicyType.ALLOWED_ENVIRONMENTS, config, CertificateFacts(cert(environment="dev")))
    assert message is not None and "dev" in message
    assert check(PolicyType.ALLOWED_ENVIRONMENTS, config, CertificateFacts(cert(environment=""))) is not None


def test_renewal_lead_time_compares_the_policy_window() -> None:
    assert check(PolicyType.RENEWAL_LEAD_TIME, {}, CertificateFacts(cert(), renewal_window_days=30)) is None
    message = check(PolicyType.RENEWAL_LEAD_TIME, {}, CertificateFacts(cert(), renewal_window_days=29))
    assert message is not None and "29" in message and "30" in message  # default lead time is 30
    config = {"lead_time_days": 14}
    assert check(PolicyType.RENEWAL_LEAD_TIME, config, CertificateFacts(cert(), renewal_window_days=14)) is None
    assert check(PolicyType.RENEWAL_LEAD_TIME, config, CertificateFacts(cert(), renewal_window_days=7)) is not None


def test_certificate_lifetime_uses_latest_version() -> None:
    config = {"max_days": 90}
    assert check(PolicyType.CERTIFICATE_LIFETIME, config, CertificateFacts(cert())) is None  # not issued yet
    ninety = CertificateFacts(cert(), validity=(NOW, NOW + timedelta(days=90)))
    assert check(PolicyType.CERTIFICATE_LIFETIME, config, ninety) is None
    long = CertificateFacts(cert(), validity=(NOW, NOW + timedelta(days=397)))
    message = check(PolicyType.CERTIFICATE_LIFETIME, config, long)
    assert message is not None and "397.0" in message and "90" in message


# ---- config validation -----------------------------------------------------------------------------


def test_validate_rule_config_fills_defaults() -> None:
    assert validate_rule_config(PolicyType.RENEWAL_LEAD_TIME, {}) == {"lead_time_days": 30}
    assert validate_rule_config(PolicyType.ALLOWED_DOMAINS, {"allowed_domains": ["*.A.com"]}) == {
        "allowed_domains": ["*.a.com"]
    }


@pytest.mark.parametrize(
    ("rule_type", "config", "expected"),
    [
        (PolicyType.ALLOWED_ISSUERS, {}, "allowed_issuer_ids: is required"),
        (PolicyType.ALLOWED_ISSUERS, {"allowed_issuer_ids": []}, "allowed_issuer_ids"),
        (PolicyType.ALLOWED_ISSUERS, {"allowed_issuer_ids": "iss-local"}, "allowed_issuer_ids"),
        (PolicyType.ALLOWED_DOMAINS, {"allowed_domains": ["bad domain"]}, "not a domain name"),
        (PolicyType.ALLOWED_DOMAINS, {"allowed_domains": ["a.*.com"]}, "not a domain name"),
        (PolicyType.REQUIRED_METADATA, {"required_keys": [""]}, "required_keys.0"),
        (PolicyType.ALLOWED_ENVIRONMENTS, {"environments": ["prod"]}, "environments: is not a known key"),
        (PolicyType.RENEWAL_LEAD_TIME, {"lead_time_days": 0}, "lead_time_days"),
        (PolicyType.RENEWAL_LEAD_TIME, {"lead_time_days": "30"}, "lead_time_days"),
        (PolicyType.CERTIFICATE_LIFETIME, {}, "max_days: is required"),
        (PolicyType.CERTIFICATE_LIFETIME, {"max_days": -1}, "max_days"),
    ],
)
def test_validate_rule_config_rejects_bad_config(
    rule_type: PolicyType, config: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ValidationError) as info:
        validate_rule_config(rule_type, config)
    assert expected in info.value.message and rule_type.value in info.value.message


# ---- against the database --------------------------------------------------------------------------


async def insert_certificate(api: Api, **overrides: Any) -> dict[str, Any]:
    """A managed_certificates row (with its own team and owner) written straight to the store."""
    now = api.services.ctx.clock.now()
    team_id, owner_id = unique("t"), unique("o")
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, teams, {"id": team_id, "name": team_id, "created_at": now, "updated_at": now})
        await rows.insert_row(conn, owners, {
            "id": owner_id, "name": "owner", "team_id": team_id, "created_at": now, "updated_at": now,
        })
        values = {
            **cert(), "owner_id": owner_id, "team_id": team_id, "status": "Active",
            "created_at": now, "updated_at": now, **overrides,
        }
        await rows.insert_row(conn, managed_certificates, values)
    return values


async def insert_rule(api: Api, rule_id: str, rule_type: PolicyType, config: dict[str, Any], **extra: Any) -> None:
    now = api.services.ctx.clock.now()
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, policy_rules, {
            "id": rule_id, "name": rule_id, "type": rule_type.value, "config": config,
            "enabled": True, "severity": "Warning", "created_at": now, "updated_at": now, **extra,
        })


async def evaluate(api: Api, certificate: dict[str, Any]) -> list[Any]:
    ctx = api.services.ctx
    async with ctx.db.transaction() as conn:
        return await policy_engine.evaluate_certificate(conn, ctx, Actor("alice"), certificate)


async def stored_violations(api: Api) -> list[Any]:
    async with api.services.ctx.db.read() as conn:
        return await rows.list_rows(conn, policy_violations)


async def test_evaluate_certificate_stores_and_replaces_violations(api: Api) -> None:
    certificate = await insert_certificate(api, environment="dev", tags={})
    await insert_rule(api, "rule-env", PolicyType.ALLOWED_ENVIRONMENTS, {"allowed": ["prod"]}, severity="critical")
    await insert_rule(api, "rule-meta", PolicyType.REQUIRED_METADATA, {"required_keys": ["owner"]})
    await insert_rule(api, "rule-off", PolicyType.ALLOWED_ISSUERS, {"allowed_issuer_ids": ["x"]}, enabled=False)
    await insert_rule(api, "rule-broken", PolicyType.ALLOWED_ISSUERS, {"nonsense": True})

    found = await evaluate(api, certificate)
    assert sorted(v.rule_id for v in found) == ["rule-env", "rule-meta"]
    env = next(v for v in found if v.rule_id == "rule-env")
    assert env.severity.value == "Critical" and env.certificate_id == "mc-1" and "dev" in env.message
    assert env.id.startswith("violation-")
    assert sorted(r["rule_id"] for r in await stored_violations(api)) == ["rule-env", "rule-meta"]
    assert (await api.audit_actions("certificate")).count("policy_violation_detected") == 2

    # The certificate is fixed: its findings are replaced by nothing.
    fixed = {**certificate, "environment": "prod", "tags": {"owner": "bob"}}
    assert await evaluate(api, fixed) == []
    assert await stored_violations(api) == []
    assert (await api.audit_actions("certificate")).count("policy_violation_detected") == 2


async def test_evaluate_reads_renewal_window_and_latest_version(api: Api) -> None:
    certificate = await insert_certificate(api)
    now = api.services.ctx.clock.now()
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, renewal_policies, {
            "id": "rp-short", "name": "short", "renewal_window_days": 7, "alert_thresholds_days": [7],
            "alert_channels": {}, "alert_severity_map": {}, "created_at": now, "updated_at": now,
        })
        await rows.update_row(conn, managed_certificates, "mc-1", {"renewal_policy_id": "rp-short"})
        for n, (days, created) in enumerate([(30, now - timedelta(days=60)), (400, now)]):
            await rows.insert_row(conn, certificate_versions, {
                "id": f"v{n}", "certificate_id": "mc-1", "serial_number": str(n), "not_before": created,
                "not_after": created + timedelta(days=days), "fingerprint_sha256": f"fp{n}", "pem_chain": "x",
                "created_at": created,
            })
    await insert_rule(api, "rule-lead", PolicyType.RENEWAL_LEAD_TIME, {"lead_time_days": 14})
    await insert_rule(api, "rule-life", PolicyType.CERTIFICATE_LIFETIME, {"max_days": 397}, severity="Error")

    found = await evaluate(api, {**certificate, "renewal_policy_id": "rp-short"})
    by_rule = {v.rule_id: v for v in found}
    assert set(by_rule) == {"rule-lead", "rule-life"}
    assert "7 day(s)" in by_rule["rule-lead"].message
    assert "400.0 days" in by_rule["rule-life"].message and by_rule["rule-life"].severity.value == "Error"


async def test_evaluate_rolls_back_with_the_callers_transaction(api: Api) -> None:
    certificate = await insert_certificate(api, environment="dev")
    await insert_rule(api, "rule-env", PolicyType.ALLOWED_ENVIRONMENTS, {"allowed": ["prod"]})
    ctx = api.services.ctx
    with pytest.raises(RuntimeError):
        async with ctx.db.transaction() as conn:
            assert len(await policy_engine.evaluate_certificate(conn, ctx, Actor("alice"), certificate)) == 1
            raise RuntimeError("the caller's change failed")
    assert await stored_violations(api) == []
    assert "policy_violation_detected" not in await api.audit_actions("certificate")
