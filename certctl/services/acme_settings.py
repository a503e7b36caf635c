"""ACME server settings (CERTCTL_ACME_SERVER_*; docs/configuration.md "ACME server").

Apart from certctl.services.acme so that `certctl server` can check them at start-up without loading the
services (the supervisor of `--workers N` stays small: it never runs a request).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from certctl.config import SettingsError, env_bool, env_int_between, parse_duration


def _seconds(env: Mapping[str, str], name: str, default: str, minimum: float) -> float:
    return parse_duration(name, env.get(name) or default, minimum)


def _csv(raw: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (raw or "").split(",") if part.strip())


@dataclass(frozen=True)
class AcmeSettings:
    """CERTCTL_ACME_SERVER_* (docs/configuration.md "ACME server"); names follow the reference."""

    enabled: bool = False
    default_profile_id: str = ""
    external_url: str = ""  # the public base URL (scheme://host[:port]) when behind a TLS-terminating proxy
    nonce_ttl: float = 300.0
    order_ttl: float = 86400.0
    authz_ttl: float = 86400.0
    tos_url: str = ""
    website: str = ""
    caa_identities: tuple[str, ...] = ()
    eab_required: bool = False
    eab_required_profiles: tuple[str, ...] = ()
    issuer_id: str = "iss-local"
    team_id: str = "t-acme"
    owner_id: str = "o-acme"
    renewal_policy_id: str = "rp-acme"
    ari_enabled: bool = True
    ari_retry_after: float = 6 * 3600.0
    orders_per_hour: int = 100
    concurrent_orders: int = 5
    key_changes_per_hour: int = 5
    challenge_responses_per_hour: int = 60
    identifier_orders_per_hour: int = 300
    new_accounts_per_hour: int = 0  # per profile; 0 = no limit
    gc_interval: float = 60.0
    validation_wait: float = 2.0  # how long a challenge POST waits for its validation before answering
    database_conns: int = 8  # PostgreSQL: the ACME server's own driver connections per process

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AcmeSettings:
        external = (env.get("CERTCTL_ACME_SERVER_EXTERNAL_URL") or "").strip().rstrip("/")
        if external and not re.match(r"^https?://[^/]+$", external):
            raise SettingsError("CERTCTL_ACME_SERVER_EXTERNAL_URL: must be scheme://host[:port] with no path")
        def limit(name: str, default: int) -> int:
            return env_int_between(env, f"CERTCTL_ACME_SERVER_RATE_LIMIT_{name}", default, 0, 10_000_000)
        return cls(
            enabled=env_bool(env, "CERTCTL_ACME_SERVER_ENABLED", False),
            default_profile_id=(env.get("CERTCTL_ACME_SERVER_DEFAULT_PROFILE_ID") or "").strip(),
            external_url=external,
            nonce_ttl=_seconds(env, "CERTCTL_ACME_SERVER_NONCE_TTL", "5m", 10.0),
            order_ttl=_seconds(env, "CERTCTL_ACME_SERVER_ORDER_TTL", "24h", 60.0),
            authz_ttl=_seconds(env, "CERTCTL_ACME_SERVER_AUTHZ_TTL", "24h", 60.0),
            tos_url=(env.get("CERTCTL_ACME_SERVER_TOS_URL") or "").strip(),
            website=(env.get("CERTCTL_ACME_SERVER_WEBSITE") or "").strip(),
            caa_identities=_csv(env.get("CERTCTL_ACME_SERVER_CAA_IDENTITIES")),
            eab_required=env_bool(env, "CERTCTL_ACME_SERVER_EAB_REQUIRED", False),
            eab_required_profiles=_csv(env.get("CERTCTL_ACME_SERVER_EAB_REQUIRED_PROFILES")),
            issuer_id=(env.get("CERTCTL_ACME_SERVER_ISSUER_ID") or "iss-local").strip(),
            team_id=(env.get("CERTCTL_ACME_SERVER_TEAM_ID") or "t-acme").strip(),
            owner_id=(env.get("CERTCTL_ACME_SERVER_OWNER_ID") or "o-acme").strip(),
            renewal_policy_id=(env.get("CERTCTL_ACME_SERVER_RENEWAL_POLICY_ID") or "rp-acme").strip(),
            ari_enabled=env_bool(env, "CERTCTL_ACME_SERVER_ARI_ENABLED", True),
            ari_retry_after=_seconds(env, "CERTCTL_ACME_SERVER_ARI_POLL_INTERVAL", "6h", 60.0),
            orders_per_hour=limit("ORDERS_PER_HOUR", 100),
            concurrent_orders=limit("CONCURRENT_ORDERS", 5),
            key_changes_per_hour=limit("KEY_CHANGES_PER_HOUR", 5),
            challenge_responses_per_hour=limit("CHALLENGE_RESPONSES_PER_HOUR", 60),
            identifier_orders_per_hour=limit("IDENTIFIER_ORDERS_PER_HOUR", 300),
            new_accounts_per_hour=limit("NEW_ACCOUNTS_PER_HOUR", 0),
            gc_interval=_seconds(env, "CERTCTL_ACME_SERVER_GC_INTERVAL", "1m", 1.0),
            validation_wait=_seconds(env, "CERTCTL_ACME_SERVER_VALIDATION_WAIT", "2s", 0.0),
            database_conns=env_int_between(env, "CERTCTL_ACME_SERVER_DATABASE_CONNS", 8, 1, 1000),
        )
