"""`certctl server --demo`: a realistic inventory so the dashboard, API and CLI have something to show.

The seed runs only on a database with no certificates, in one transaction, behind a lock (several
server workers may boot at once). It writes:
- organisation: 4 teams, 6 owners; issuers (the local CA row plus an ACME and a Vault issuer whose
  configs are sealed, with a redacted copy in `config`); 3 profiles; 3 renewal policies;
- fleet: 6 agents (2 of them Offline), 2 agent groups, 10 deployment targets of 8 types;
- 30 certificates covering every status, whose versions hold real PEM chains from a throwaway
  two-tier demo CA (the latest version's not_after is the certificate's expires_at), target mappings;
- 180 days of jobs (Issuance/Renewal/Deployment; Completed/Failed/Cancelled plus a few in flight),
  the audit events that go with them, policy rules with the violations they find, notifications.

Every date derives from `ctx.clock`, so the statistics endpoints show a plausible picture "now".
The layout is fixed (a seeded RNG); only keys, serials and fingerprints differ between runs.
"""

from __future__ import annotations

import logging
import random
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table

from certctl.domain.actor import Actor
from certctl.domain.enums import (
    ActorType,
    AgentStatus,
    CertificateStatus,
    IssuerType,
    JobStatus,
    JobType,
    PolicySeverity,
    PolicyType,
    RevocationReason,
    TargetType,
)
from certctl.domain.errors import ConflictError
from certctl.domain.ids import new_id
from certctl.domain.keys import hash_key
from certctl.domain.redaction import is_secret_key, redact_config
from certctl.pki.demo_certs import DemoCA, DemoLeaf
from certctl.pki.sealing import ConfigSealer
from certctl.services.audit import build_event
from certctl.services.bootstrap import DEFAULT_RENEWAL_POLICY_ID, LOCAL_ISSUER_ID
from certctl.services.context import ServiceContext
from certctl.store import demo_repo
from certctl.store.schema import (
    agent_group_members,
    agent_groups,
    agents,
    audit_events,
    certificate_profiles,
    certificate_target_mappings,
    certificate_versions,
    deployment_targets,
    issuance_approval_requests,
    issuers,
    jobs,
    managed_certificates,
    notification_events,
    owners,
    policy_rules,
    policy_violations,
    renewal_policies,
    teams,
)

log = logging.getLogger("certctl.demo")

HISTORY_DAYS = 180
DAY = timedelta(days=1)
ACME_ISSUER_ID = "iss-acme-demo"
VAULT_ISSUER_ID = "iss-vault-demo"

Row = dict[str, Any]


@dataclass(frozen=True)
class DemoResult:
    """How many rows of each table the seed wrote."""

    counts: dict[str, int]


async def seed_demo(ctx: ServiceContext) -> DemoResult | None:
    """Seed the demo inventory unless certificates already exist. Returns None when nothing was written."""
    now = ctx.clock.now().replace(microsecond=0)
    try:
        async with ctx.db.transaction() as conn:
            await demo_repo.lock_for_seeding(conn)
            if await demo_repo.certificate_count(conn):
                log.info("demo inventory not seeded: the database already holds certificates")
                return None
            has_local = bool(await demo_repo.existing_ids(conn, issuers, [LOCAL_ISSUER_ID]))
            has_default = bool(await demo_repo.existing_ids(conn, renewal_policies, [DEFAULT_RENEWAL_POLICY_ID]))
            inventory = _Builder(now, ctx.sealer, has_local_issuer=has_local, has_default_policy=has_default).build()
            await demo_repo.bulk_insert(conn, inventory.batches())
    except ConflictError as exc:
        # A name the demo uses is already taken (or another worker won the race): keep the data as it is.
        log.warning("demo inventory not seeded: %s", exc)
        return None
    counts = inventory.counts()
    log.info("demo inventory seeded", extra={"counts": counts})
    return DemoResult(counts)


# --- the fixed layout -------------------------------------------------------------------------------

_TEAMS = [
    ("team-platform", "Platform Engineering", "Edge, load balancers, shared web front ends"),
    ("team-payments", "Payments", "Checkout, payment gateway and partner integrations"),
    ("team-identity", "Identity & Access", "SSO, directory and authentication services"),
    ("team-data", "Data Services", "Streaming, analytics and observability"),
]

# id, display name, actor name used in audit events, email, team
_OWNERS = [
    ("o-alice", "Alice Chen", "alice", "alice.chen@example.com", "team-platform"),
    ("o-erin", "Erin Schmidt", "erin", "erin.schmidt@example.com", "team-platform"),
    ("o-bob", "Bob Martins", "bob", "bob.martins@example.com", "team-payments"),
    ("o-frank", "Frank Ito", "frank", "frank.ito@example.com", "team-payments"),
    ("o-carol", "Carol Nguyen", "carol", "carol.nguyen@example.com", "team-identity"),
    ("o-dave", "Dave Okafor", "dave", "dave.okafor@example.com", "team-data"),
]

# id, name, hostname, os, arch, ip (RFC 5737 documentation ranges), status, seconds since heartbeat
_AGENTS = [
    ("agent-web-01", "web-01", "web-01.prod.example.com", "linux", "amd64", "192.0.2.11", AgentStatus.ONLINE, 14),
    ("agent-web-02", "web-02", "web-02.prod.example.com", "linux", "amd64", "192.0.2.12", AgentStatus.ONLINE, 37),
    ("agent-lb-01", "lb-01", "lb-01.edge.example.com", "linux", "arm64", "198.51.100.5", AgentStatus.ONLINE, 22),
    ("agent-k8s-prod", "k8s-prod", "k8s-prod.example.com", "linux", "amd64", "198.51.100.40", AgentStatus.ONLINE, 9),
    ("agent-win-iis-01", "win-iis-01", "iis-01.corp.example.com", "windows", "amd64", "203.0.113.21",
     AgentStatus.OFFLINE, 3 * 86400 + 4100),
    ("agent-mail-01", "mail-01", "mail-01.prod.example.com", "linux", "amd64", "203.0.113.25",
     AgentStatus.OFFLINE, 7 * 3600 + 300),
]
_AGENT_VERSIONS = {"agent-win-iis-01": "0.9.4", "agent-mail-01": "0.9.4"}

# id, name, type, agent, config (secrets here are generated per seed and sealed)
_TARGETS: list[tuple[str, str, TargetType, str, dict[str, Any]]] = [
    ("target-web-01-nginx", "nginx", TargetType.NGINX, "agent-web-01", {
        "cert_path": "/etc/nginx/tls/site.crt", "key_path": "/etc/nginx/tls/site.key",
        "chain_path": "/etc/nginx/tls/chain.pem", "reload_command": "systemctl reload nginx"}),
    ("target-web-02-nginx", "nginx", TargetType.NGINX, "agent-web-02", {
        "cert_path": "/etc/nginx/tls/site.crt", "key_path": "/etc/nginx/tls/site.key",
        "chain_path": "/etc/nginx/tls/chain.pem", "reload_command": "systemctl reload nginx"}),
    ("target-web-02-apache", "apache", TargetType.APACHE, "agent-web-02", {
        "cert_path": "/etc/apache2/tls/auth.crt", "key_path": "/etc/apache2/tls/auth.key",
        "chain_path": "/etc/apache2/tls/chain.pem", "reload_command": "apachectl graceful"}),
    ("target-lb-01-haproxy", "haproxy", TargetType.HAPROXY, "agent-lb-01", {
        "pem_path": "/etc/haproxy/certs/edge.pem", "reload_command": "systemctl reload haproxy"}),
    ("target-lb-01-f5", "f5-edge", TargetType.F5, "agent-lb-01", {
        "host": "f5-mgmt.example.com", "partition": "Common", "username": "certctl", "password": "",
        "ssl_profile": "clientssl-shop"}),
    ("target-k8s-ingress", "ingress-tls", TargetType.KUBERNETES_SECRETS, "agent-k8s-prod", {
        "namespace": "ingress", "secret_name": "edge-tls", "kubeconfig_path": "/etc/certctl/kubeconfig"}),
    ("target-k8s-payments", "payments-tls", TargetType.KUBERNETES_SECRETS, "agent-k8s-prod", {
        "namespace": "payments", "secret_name": "checkout-tls", "kubeconfig_path": "/etc/certctl/kubeconfig"}),
    ("target-win-iis", "iis-default-site", TargetType.IIS, "agent-win-iis-01", {
        "site_name": "Default Web Site", "binding_port": 443, "cert_store": "My"}),
    ("target-mail-postfix", "postfix", TargetType.POSTFIX, "agent-mail-01", {
        "cert_path": "/etc/postfix/tls/mail.crt", "key_path": "/etc/postfix/tls/mail.key",
        "reload_command": "postfix reload"}),
    ("target-mail-dovecot", "dovecot", TargetType.DOVECOT, "agent-mail-01", {
        "cert_path": "/etc/dovecot/tls/mail.crt", "key_path": "/etc/dovecot/tls/mail.key",
        "reload_command": "doveadm reload"}),
]


@dataclass(frozen=True)
class _Cert:
    slug: str
    cn: str
    sans: tuple[str, ...]
    env: str
    owner: str
    issuer: str  # "local" | "acme" | "vault"
    status: CertificateStatus
    expires_in_days: float | None  # None: never issued
    targets: tuple[str, ...] = ()
    profile: str | None = "prof-tls-server"
    key: tuple[str, int] = ("ECDSA", 256)
    tags: dict[str, str] = field(default_factory=dict)
    lifetime_days: int | None = None  # default by issuer
    ekus: tuple[str, ...] = ("serverAuth",)
    source: str = ""
    event_days_ago: float = 0.0  # revoked/archived/failed: when that happened


_S = CertificateStatus
_CERTS = [
    # Active
    _Cert("www-prod", "www.example.com", ("www.example.com", "example.com"), "production", "o-alice", "acme",
          _S.ACTIVE, 61, ("target-web-01-nginx", "target-web-02-nginx", "target-lb-01-haproxy"),
          tags={"app": "storefront", "cost_center": "cc-1001"}, source="ACME"),
    _Cert("api-prod", "api.example.com", ("api.example.com",), "production", "o-bob", "acme", _S.ACTIVE, 74,
          ("target-lb-01-haproxy", "target-k8s-ingress"), tags={"app": "public-api", "cost_center": "cc-2001"},
          source="ACME"),
    _Cert("checkout-prod", "checkout.example.com", ("checkout.example.com",), "production", "o-frank", "acme",
          _S.ACTIVE, 47, ("target-k8s-payments",), tags={"app": "checkout", "cost_center": "cc-2001", "pci": "true"},
          source="ACME"),
    _Cert("auth-prod", "auth.example.com", ("auth.example.com", "login.example.com"), "production", "o-carol",
          "local", _S.ACTIVE, 212, ("target-web-02-apache",), key=("RSA", 2048),
          tags={"app": "sso", "cost_center": "cc-3001"}),
    _Cert("sso-internal", "sso.corp.example.com", ("sso.corp.example.com",), "production", "o-carol", "vault",
          _S.ACTIVE, 88, profile="prof-internal-mtls", ekus=("serverAuth", "clientAuth"),
          tags={"app": "sso", "cost_center": "cc-3001"}),
    _Cert("grafana-internal", "grafana.corp.example.com", ("grafana.corp.example.com",), "production", "o-dave",
          "vault", _S.ACTIVE, 53, ("target-k8s-ingress",), tags={"app": "observability"}),
    _Cert("kafka-broker-1", "kafka-1.data.example.com", ("kafka-1.data.example.com",), "production", "o-dave",
          "vault", _S.ACTIVE, 101, profile="prof-internal-mtls", ekus=("serverAuth", "clientAuth"),
          tags={"app": "kafka", "cost_center": "cc-4001"}),
    _Cert("mail-prod", "mail.example.com", ("mail.example.com", "smtp.example.com", "imap.example.com"),
          "production", "o-erin", "local", _S.ACTIVE, 143, ("target-mail-postfix", "target-mail-dovecot"),
          tags={"app": "mail", "cost_center": "cc-1002"}),
    _Cert("api-staging", "api.staging.example.com", ("api.staging.example.com",), "staging", "o-bob", "acme",
          _S.ACTIVE, 39, ("target-web-02-nginx",), tags={"app": "public-api", "cost_center": "cc-2001"},
          source="ACME"),
    _Cert("www-staging", "www.staging.example.com", ("www.staging.example.com",), "staging", "o-alice", "acme",
          _S.ACTIVE, 82, ("target-web-01-nginx",), tags={"app": "storefront", "cost_center": "cc-1001"},
          source="ACME"),
    _Cert("payments-gateway", "payments-gw.example.com", ("payments-gw.example.com",), "production", "o-frank",
          "local", _S.ACTIVE, 268, ("target-k8s-payments",), profile="prof-internal-mtls",
          ekus=("serverAuth", "clientAuth"), tags={"app": "gateway", "cost_center": "cc-2002", "pci": "true"}),
    _Cert("shop-vip", "shop.example.com", ("shop.example.com",), "production", "o-bob", "local", _S.ACTIVE, 317,
          ("target-lb-01-f5",), key=("RSA", 2048), tags={"app": "storefront", "cost_center": "cc-2001"}),
    # Expiring (within 30 days)
    _Cert("intranet", "intranet.corp.example.com", ("intranet.corp.example.com",), "production", "o-erin",
          "local", _S.EXPIRING, 9, ("target-win-iis",), tags={"app": "intranet", "cost_center": "cc-1002"}),
    _Cert("vpn-gateway", "vpn.example.com", ("vpn.example.com",), "production", "o-alice", "local", _S.EXPIRING,
          17, key=("RSA", 3072), profile="prof-high-assurance", tags={"app": "vpn", "cost_center": "cc-1001"}),
    _Cert("metrics-staging", "metrics.staging.example.com", ("metrics.staging.example.com",), "staging",
          "o-dave", "vault", _S.EXPIRING, 24, tags={"app": "observability", "cost_center": "cc-4001"}),
    _Cert("status-page", "status.example.com", ("status.example.com",), "production", "o-alice", "acme",
          _S.EXPIRING, 5, ("target-web-01-nginx",), tags={"app": "status", "cost_center": "cc-1001"},
          source="ACME"),
    _Cert("ldap-dev", "ldap.dev.example.com", ("ldap.dev.example.com",), "development", "o-carol", "vault",
          _S.EXPIRING, 13, tags={"app": "directory"}),
    # Expired
    _Cert("legacy-portal", "portal-legacy.example.com", ("portal-legacy.example.com",), "production", "o-erin",
          "local", _S.EXPIRED, -4, ("target-win-iis",), key=("RSA", 2048), lifetime_days=825, profile=None,
          tags={"app": "legacy-portal"}),
    _Cert("jenkins-dev", "jenkins.dev.example.com", ("jenkins.dev.example.com",), "lab", "o-dave", "local",
          _S.EXPIRED, -19, tags={"app": "ci", "cost_center": "cc-4002"}),
    _Cert("api-v1-staging", "api-v1.staging.example.com", ("api-v1.staging.example.com",), "staging", "o-bob",
          "acme", _S.EXPIRED, -33, tags={"app": "public-api", "cost_center": "cc-2001"}, source="ACME"),
    # RenewalInProgress
    _Cert("cdn-origin", "origin.example.com", ("origin.example.com",), "production", "o-alice", "acme",
          _S.RENEWAL_IN_PROGRESS, 6, ("target-web-01-nginx", "target-lb-01-haproxy"),
          tags={"app": "cdn", "cost_center": "cc-1001"}, source="ACME", event_days_ago=0.1),
    _Cert("search-prod", "search.example.com", ("search.example.com",), "production", "o-dave", "vault",
          _S.RENEWAL_IN_PROGRESS, 8, ("target-k8s-ingress",), tags={"app": "search", "cost_center": "cc-4001"},
          event_days_ago=0.05),
    # Failed
    _Cert("partner-edi", "edi.partner.example.com", ("edi.partner.example.com",), "production", "o-frank", "acme",
          _S.FAILED, 2, ("target-lb-01-haproxy",), tags={"app": "edi", "cost_center": "cc-2002"}, source="ACME",
          event_days_ago=0.4),
    _Cert("backup-dev", "backup.dev.example.com", ("backup.dev.example.com",), "development", "o-erin", "vault",
          _S.FAILED, None, tags={"app": "backup"}, event_days_ago=3.2),
    # Revoked
    _Cert("test-app-staging", "test-app.staging.example.com", ("test-app.staging.example.com",), "staging",
          "o-bob", "local", _S.REVOKED, 231, tags={"app": "test-app", "cost_center": "cc-2001"}, event_days_ago=12),
    _Cert("shop-old", "shop-old.example.com", ("shop-old.example.com",), "production", "o-frank", "acme",
          _S.REVOKED, 57, tags={"app": "storefront", "cost_center": "cc-2001"}, source="ACME", event_days_ago=26),
    # Archived
    _Cert("campaign-2025", "promo.example.com", ("promo.example.com",), "production", "o-alice", "acme",
          _S.ARCHIVED, -100, tags={"app": "marketing", "cost_center": "cc-1003"}, source="ACME", event_days_ago=64),
    _Cert("old-wiki", "wiki-old.corp.example.com", ("wiki-old.corp.example.com",), "development", "o-erin",
          "local", _S.ARCHIVED, 120, tags={"app": "wiki"}, event_days_ago=31),
    # Pending
    _Cert("billing-prod", "billing.example.com", ("billing.example.com",), "production", "o-frank", "local",
          _S.PENDING, None, ("target-k8s-payments",), profile="prof-high-assurance", key=("RSA", 3072),
          tags={"app": "billing", "cost_center": "cc-2002", "pci": "true"}, event_days_ago=0.8),
    _Cert("data-lake-dev", "lake.dev.example.com", ("lake.dev.example.com",), "development", "o-dave", "vault",
          _S.PENDING, None, tags={"app": "data-lake", "cost_center": "cc-4001"}, event_days_ago=0.3),
]

_RULES: list[tuple[str, str, PolicyType, dict[str, Any], PolicySeverity]] = [
    ("rule-allowed-domains", "Names under example.com", PolicyType.ALLOWED_DOMAINS,
     {"allowed_domains": ["example.com", "*.example.com", "*.corp.example.com"]}, PolicySeverity.WARNING),
    ("rule-required-metadata", "Cost centre and app tags", PolicyType.REQUIRED_METADATA,
     {"required_keys": ["app", "cost_center"]}, PolicySeverity.WARNING),
    ("rule-allowed-environments", "Known environments", PolicyType.ALLOWED_ENVIRONMENTS,
     {"allowed": ["production", "staging", "development"]}, PolicySeverity.ERROR),
    ("rule-renewal-lead-time", "Renew 30 days ahead", PolicyType.RENEWAL_LEAD_TIME,
     {"lead_time_days": 30}, PolicySeverity.WARNING),
    ("rule-max-lifetime", "At most 398 days", PolicyType.CERTIFICATE_LIFETIME,
     {"max_days": 398}, PolicySeverity.CRITICAL),
]

_LIFETIME_DAYS = {"acme": 90, "vault": 120, "local": 365}
_POLICY_BY_ISSUER = {"acme": "rp-public-web", "vault": "rp-internal-services", "local": DEFAULT_RENEWAL_POLICY_ID}
_MAX_VERSIONS = 4
_RENEW_ERRORS = {
    "acme": "acme: urn:ietf:params:acme:error:connection: timeout during connect (likely firewall problem)",
    "vault": "vault: 403 permission denied (token expired)",
    "local": "issuer unavailable: signer busy, retry scheduled",
}
_DEPLOY_ERRORS = [
    "reload command exited with status 1: nginx: [emerg] cannot load certificate key",
    "agent did not report within 5 minutes",
    "target unreachable: connection refused",
]


class _Builder:
    """Builds every row in memory; nothing here touches the database."""

    def __init__(self, now: datetime, sealer: ConfigSealer, *, has_local_issuer: bool, has_default_policy: bool):
        self.now = now
        self.start = now - HISTORY_DAYS * DAY
        self.sealer = sealer
        self.rng = random.Random(20260101)  # fixed layout across runs (not security related)
        self.has_local_issuer = has_local_issuer
        self.has_default_policy = has_default_policy
        self.tables: dict[str, list[Row]] = {}
        self.ca = DemoCA(now)
        self.setup_at = now - 900 * DAY  # before the oldest certificate
        self.created: dict[str, datetime] = {}

    # -- helpers --------------------------------------------------------------------------------
    def add(self, table: Table, row: Row) -> None:
        self.tables.setdefault(table.name, []).append(row)

    def audit(
        self, at: datetime, actor: str, actor_type: ActorType, action: str, resource_type: str,
        resource_id: str, details: dict[str, Any] | None = None,
    ) -> None:
        if self.start <= at <= self.now:  # the trail covers the history window only
            event = build_event(Actor(actor, actor_type), action, resource_type, resource_id, details, at)
            self.add(audit_events, event)

    def sealed(self, config: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """(redacted view, sealed full config); configs without secrets need no sealing."""
        if any(is_secret_key(k) and v not in (None, "") for k, v in config.items()):
            return redact_config(config), self.sealer.seal(config)
        return dict(config), None

    def jitter(self, hours: float) -> timedelta:
        return timedelta(seconds=self.rng.uniform(0, hours * 3600))

    # -- the inventory --------------------------------------------------------------------------
    def build(self) -> _Inventory:
        self.organisation()
        self.fleet()
        self.policies()
        for spec in _CERTS:
            self.certificate(spec)
        self.background_activity()
        self.add(audit_events, build_event(
            Actor.system(), "demo_inventory_seeded", "system", "demo",
            {"certificates": len(_CERTS), "history_days": HISTORY_DAYS}, self.now,
        ))
        return _Inventory(self.tables)

    def organisation(self) -> None:
        at = self.setup_at
        for team_id, name, description in _TEAMS:
            self.add(teams, {"id": team_id, "name": name, "description": description,
                             "created_at": at, "updated_at": at})
        for owner_id, name, _actor, email, team_id in _OWNERS:
            self.add(owners, {"id": owner_id, "name": name, "email": email, "team_id": team_id,
                              "created_at": at, "updated_at": at})
        acme_config = {
            "directory_url": "https://acme.example.com/directory", "email": "pki-team@example.com",
            "challenge_type": "http-01", "eab_kid": "kid-demo-01", "eab_hmac_key": secrets.token_urlsafe(32),
        }
        vault_config = {
            "address": "https://vault.example.com:8200", "mount": "pki_int", "role": "internal-services",
            "token": "hvs." + secrets.token_urlsafe(24),
        }
        for issuer_id, name, kind, config, status in (
            (ACME_ISSUER_ID, "ACME (demo)", IssuerType.ACME, acme_config, "success"),
            (VAULT_ISSUER_ID, "Vault PKI (demo)", IssuerType.VAULT_PKI, vault_config, "failed"),
        ):
            view, sealed = self.sealed(config)
            tested = self.now - timedelta(hours=self.rng.uniform(2, 60))
            self.add(issuers, {
                "id": issuer_id, "name": name, "type": kind.value, "config": view, "encrypted_config": sealed,
                "enabled": True, "last_tested_at": tested, "test_status": status, "source": "database",
                "hierarchy_mode": "single", "created_at": at, "updated_at": at,
            })
            self.audit(tested, "alice", ActorType.USER, "issuer_tested", "issuer", issuer_id, {"result": status})
        profiles: list[tuple[str, str, str, list[dict[str, Any]], int, list[str], list[str], bool]] = [
            ("prof-tls-server", "TLS server", "Public and internal HTTPS endpoints",
             [{"algorithm": "ECDSA", "min_size": 256}, {"algorithm": "RSA", "min_size": 2048}],
             398 * 86400, ["serverAuth"], [], False),
            ("prof-internal-mtls", "Internal mTLS", "Service-to-service mutual TLS",
             [{"algorithm": "ECDSA", "min_size": 256}, {"algorithm": "RSA", "min_size": 2048}],
             398 * 86400, ["serverAuth", "clientAuth"], [r"^.*\.example\.com$"], False),
            ("prof-high-assurance", "High assurance", "Payment and remote-access endpoints; issuance needs approval",
             [{"algorithm": "RSA", "min_size": 3072}, {"algorithm": "ECDSA", "min_size": 384}],
             365 * 86400, ["serverAuth"], [r"^.*\.example\.com$"], True),
        ]
        for prof_id, name, description, algorithms, ttl, ekus, patterns, approval in profiles:
            self.add(certificate_profiles, {
                "id": prof_id, "name": name, "description": description, "allowed_key_algorithms": algorithms,
                "max_ttl_seconds": ttl, "allowed_ekus": ekus, "required_san_patterns": patterns,
                "spiffe_uri_pattern": "", "allow_short_lived": False, "must_staple": False,
                "required_csr_attributes": [], "acme_auth_mode": "trust_authenticated",
                "requires_approval": approval, "enabled": True, "created_at": at, "updated_at": at,
            })
        channels = {"informational": ["Email"], "warning": ["Email", "Slack"], "critical": ["Email", "Webhook"]}
        severity = {"30": "informational", "14": "warning", "7": "warning", "0": "critical"}
        for policy_id, name, window, auto, retries, interval, profile in (
            ("rp-public-web", "Public web (ACME)", 30, True, 5, 900, "prof-tls-server"),
            ("rp-internal-services", "Internal services", 21, True, 3, 3600, "prof-internal-mtls"),
            ("rp-manual-review", "Manual review", 45, False, 0, 3600, "prof-high-assurance"),
        ):
            self.add(renewal_policies, {
                "id": policy_id, "name": name, "renewal_window_days": window, "auto_renew": auto,
                "max_retries": retries, "retry_interval_seconds": interval,
                "alert_thresholds_days": [30, 14, 7, 0], "alert_channels": channels,
                "alert_severity_map": severity, "certificate_profile_id": profile, "agent_group_id": None,
                "created_at": at, "updated_at": at,
            })

    def fleet(self) -> None:
        registered = self.setup_at + 2 * DAY
        for agent_id, name, host, os_name, arch, ip, status, silent in _AGENTS:
            self.add(agents, {
                "id": agent_id, "name": name, "hostname": host, "status": status.value,
                "last_heartbeat_at": self.now - timedelta(seconds=silent), "registered_at": registered,
                # A random key nobody holds: demo agents cannot authenticate.
                "api_key_hash": hash_key(secrets.token_urlsafe(32)),
                "os": os_name, "architecture": arch, "ip_address": ip,
                "version": _AGENT_VERSIONS.get(agent_id, "1.0.2"), "retired_at": None, "retired_reason": None,
                "created_at": registered, "updated_at": self.now - timedelta(seconds=silent),
            })
        for group_id, name, description, match_os, match_arch in (
            ("ag-linux-fleet", "Linux fleet", "Every Linux host", "linux", ""),
            ("ag-arm-edge", "ARM edge", "ARM load balancers at the edge", "linux", "arm64"),
        ):
            self.add(agent_groups, {
                "id": group_id, "name": name, "description": description, "match_os": match_os,
                "match_architecture": match_arch, "match_ip_cidr": "", "match_version": "", "enabled": True,
                "created_at": self.setup_at, "updated_at": self.setup_at,
            })
        self.add(agent_group_members, {"agent_group_id": "ag-arm-edge", "agent_id": "agent-lb-01",
                                       "membership_type": "include", "created_at": self.setup_at})
        self.add(agent_group_members, {"agent_group_id": "ag-linux-fleet", "agent_id": "agent-mail-01",
                                       "membership_type": "exclude", "created_at": self.setup_at})
        for target_id, name, kind, agent_id, config in _TARGETS:
            full = dict(config)
            if "password" in full:
                full["password"] = secrets.token_urlsafe(18)
            view, sealed = self.sealed(full)
            tested = self.now - timedelta(hours=self.rng.uniform(1, 72))
            offline = agent_id in ("agent-win-iis-01", "agent-mail-01")
            self.add(deployment_targets, {
                "id": target_id, "name": name, "type": kind.value, "agent_id": agent_id, "config": view,
                "encrypted_config": sealed, "enabled": True, "last_tested_at": tested,
                "test_status": "failed" if offline else "success", "retired_at": None, "retired_reason": None,
                "created_at": registered + DAY, "updated_at": registered + DAY,
            })

    def policies(self) -> None:
        at = self.start + 3 * DAY
        for rule_id, name, kind, config, sev in _RULES:
            self.add(policy_rules, {"id": rule_id, "name": name, "type": kind.value, "config": config,
                                    "enabled": True, "severity": sev.value, "created_at": at, "updated_at": at})
            self.audit(at, "alice", ActorType.USER, "policy_rule_created", "policy_rule", rule_id,
                       {"type": kind.value})

    # -- one certificate with its history --------------------------------------------------------
    def issuer_id(self, kind: str) -> str:
        if kind == "acme":
            return ACME_ISSUER_ID
        if kind == "vault" or not self.has_local_issuer:
            return VAULT_ISSUER_ID
        return LOCAL_ISSUER_ID

    def policy_id(self, spec: _Cert) -> str:
        if spec.slug in ("status-page", "vpn-gateway"):
            return "rp-manual-review"  # no auto-renewal: why they sit in Expiring
        wanted = _POLICY_BY_ISSUER[spec.issuer]
        if wanted == DEFAULT_RENEWAL_POLICY_ID and not self.has_default_policy:
            return "rp-public-web"
        return wanted

    def certificate(self, spec: _Cert) -> None:
        cert_id = f"mc-{spec.slug}"
        owner = next(o for o in _OWNERS if o[0] == spec.owner)
        actor = owner[2]
        lifetime = timedelta(days=spec.lifetime_days or _LIFETIME_DAYS[spec.issuer])
        event_at = self.now - timedelta(days=spec.event_days_ago)
        leaves: list[DemoLeaf] = []
        if spec.expires_in_days is not None:
            expires = self.now + timedelta(days=spec.expires_in_days) + self.jitter(6)
            windows = [(expires - lifetime, expires)]
            step = lifetime - 30 * DAY
            while len(windows) < _MAX_VERSIONS and windows[0][0] - step >= self.start:
                begin = windows[0][0] - step
                windows.insert(0, (begin, begin + lifetime))
            leaves = [
                self.ca.issue(spec.cn, spec.sans, nb, na, key_algorithm=spec.key[0], key_size=spec.key[1],
                              ekus=spec.ekus)
                for nb, na in windows
            ]
            created = leaves[0].not_before - timedelta(minutes=20)
        else:
            created = event_at - timedelta(hours=2)
        latest = leaves[-1] if leaves else None
        updated = max(created, latest.not_before if latest else created)
        revoked_at: datetime | None = None
        reason: str | None = None
        if spec.status in (_S.REVOKED, _S.ARCHIVED, _S.FAILED, _S.RENEWAL_IN_PROGRESS):
            updated = max(updated, event_at)
        if spec.status == _S.REVOKED:
            revoked_at = event_at
            reason = (RevocationReason.KEY_COMPROMISE if spec.slug.startswith("test") else
                      RevocationReason.CESSATION_OF_OPERATION).value
        deployed = latest.not_before + timedelta(minutes=6) if latest and spec.targets else None
        self.created[cert_id] = created
        self.add(managed_certificates, {
            "id": cert_id, "name": spec.slug, "common_name": spec.cn, "sans": list(spec.sans),
            "environment": spec.env, "owner_id": spec.owner, "team_id": owner[4],
            "issuer_id": self.issuer_id(spec.issuer), "renewal_policy_id": self.policy_id(spec),
            "certificate_profile_id": spec.profile, "status": spec.status.value,
            "expires_at": latest.not_after if latest else None, "tags": dict(spec.tags),
            "last_renewal_at": latest.not_before if len(leaves) > 1 and latest else None,
            "last_deployment_at": deployed, "revoked_at": revoked_at, "revocation_reason": reason,
            "source": spec.source, "created_at": created, "updated_at": updated,
        })
        self.audit(created, actor, ActorType.USER, "certificate_created", "certificate", cert_id,
                   {"common_name": spec.cn, "environment": spec.env})
        for target_id in spec.targets:
            self.add(certificate_target_mappings, {"certificate_id": cert_id, "target_id": target_id,
                                                   "created_at": created})
        for index, leaf in enumerate(leaves):
            self.version(cert_id, spec, leaf, index, is_latest=leaf is latest)
        self.status_history(cert_id, spec, actor, event_at, latest)
        self.violations(cert_id, spec, created if latest is None else latest.not_before, leaves)

    def version(self, cert_id: str, spec: _Cert, leaf: DemoLeaf, index: int, *, is_latest: bool) -> None:
        issued = leaf.not_before
        self.add(certificate_versions, {
            "id": new_id("certver"), "certificate_id": cert_id, "serial_number": leaf.serial_number,
            "not_before": leaf.not_before, "not_after": leaf.not_after,
            "fingerprint_sha256": leaf.fingerprint_sha256, "pem_chain": leaf.pem_chain, "csr_pem": "",
            "key_algorithm": leaf.key_algorithm, "key_size": leaf.key_size, "created_at": issued,
        })
        if issued < self.start:
            return  # before the history window: no jobs or audit for it
        kind = JobType.ISSUANCE if index == 0 else JobType.RENEWAL
        agent = _agent_of(spec.targets[0]) if spec.targets else None
        failed_at = issued - timedelta(hours=self.rng.uniform(6, 40))
        if kind is JobType.RENEWAL and self.rng.random() < 0.3 and failed_at >= self.start:
            self.job(kind, cert_id, None, agent, JobStatus.FAILED, failed_at, attempts=3,
                     error=_RENEW_ERRORS[spec.issuer])
            self.audit(failed_at, "system", ActorType.SYSTEM, "renewal_failed", "certificate", cert_id,
                       {"error": _RENEW_ERRORS[spec.issuer]})
        self.job(kind, cert_id, None, agent, JobStatus.COMPLETED, issued - timedelta(minutes=3))
        action = "certificate_issued" if kind is JobType.ISSUANCE else "certificate_renewed"
        self.audit(issued, "system", ActorType.SYSTEM, action, "certificate", cert_id,
                   {"serial_number": leaf.serial_number, "not_after": leaf.not_after.isoformat()})
        for target_id in spec.targets:
            target_agent = _agent_of(target_id)
            failing = is_latest and target_agent == "agent-win-iis-01"
            status = JobStatus.FAILED if failing else JobStatus.COMPLETED
            at = issued + timedelta(minutes=5)
            self.job(JobType.DEPLOYMENT, cert_id, target_id, target_agent, status, at,
                     error="agent did not report within 5 minutes" if failing else None,
                     fingerprint=None if failing else leaf.fingerprint_sha256)
            self.audit(at + timedelta(minutes=1), _agent_name(target_agent), ActorType.AGENT,
                       "deployment_failed" if failing else "deployment_completed", "certificate", cert_id,
                       {"target_id": target_id})

    def status_history(
        self, cert_id: str, spec: _Cert, actor: str, event_at: datetime, latest: DemoLeaf | None
    ) -> None:
        agent = _agent_of(spec.targets[0]) if spec.targets else None
        if spec.status == _S.REVOKED:
            self.audit(event_at, actor, ActorType.USER, "certificate_revoked", "certificate", cert_id,
                       {"reason": "keyCompromise" if spec.slug.startswith("test") else "cessationOfOperation"})
            self.notify("Revocation", cert_id, spec, event_at, "sent", channel="Webhook")
            self.notify("Revocation", cert_id, spec, event_at, "sent")
        elif spec.status == _S.ARCHIVED:
            self.audit(event_at, actor, ActorType.USER, "certificate_archived", "certificate", cert_id)
        elif spec.status == _S.RENEWAL_IN_PROGRESS:
            self.job(JobType.RENEWAL, cert_id, None, agent, JobStatus.AWAITING_CSR, event_at)
            self.audit(event_at, "system", ActorType.SYSTEM, "renewal_started", "certificate", cert_id)
        elif spec.status == _S.FAILED:
            error = _RENEW_ERRORS[spec.issuer]
            kind = JobType.ISSUANCE if latest is None else JobType.RENEWAL
            for hours_before in (48, 24, 0):
                at = event_at - timedelta(hours=hours_before)
                self.job(kind, cert_id, None, agent, JobStatus.FAILED, at, attempts=3, error=error)
            self.audit(event_at, "system", ActorType.SYSTEM, f"{kind.value.lower()}_failed", "certificate",
                       cert_id, {"error": error})
            self.notify("RenewalFailure", cert_id, spec, event_at, "sent")
            self.notify("RenewalFailure", cert_id, spec, event_at, "dead", channel="Webhook")
        elif spec.status == _S.PENDING and spec.profile == "prof-high-assurance":
            job_id = self.job(JobType.ISSUANCE, cert_id, None, None, JobStatus.AWAITING_APPROVAL, event_at)
            self.add(issuance_approval_requests, {
                "id": f"ar-{uuid.UUID(int=self.rng.getrandbits(128), version=4)}", "certificate_id": cert_id,
                "job_id": job_id, "profile_id": spec.profile, "requested_by": actor, "state": "pending",
                "decided_by": None, "decided_at": None, "decision_note": None,
                "metadata": {"reason": "new billing endpoint"}, "created_at": event_at, "updated_at": event_at,
            })
            self.audit(event_at, actor, ActorType.USER, "approval_requested", "certificate", cert_id,
                       {"job_id": job_id})
        elif spec.status == _S.EXPIRING and latest is not None:
            for threshold in (30, 14, 7):
                at = latest.not_after - timedelta(days=threshold)
                if at <= self.now:
                    self.notify("ExpirationWarning", cert_id, spec, at, "sent",
                                message=f"{spec.cn} expires in {threshold} days [threshold:{threshold}]")
        elif spec.status == _S.EXPIRED and latest is not None:
            self.notify("ExpirationWarning", cert_id, spec, latest.not_after, "sent",
                        message=f"{spec.cn} has expired [threshold:0]")

    def job(
        self, kind: JobType, cert_id: str, target_id: str | None, agent_id: str | None, status: JobStatus,
        at: datetime, *, attempts: int | None = None, error: str | None = None, fingerprint: str | None = None,
    ) -> str:
        """A job whose work finished (or stopped) at `at`; in-flight jobs were created then."""
        job_id = new_id("job")
        terminal = status.terminal
        scheduled = at - timedelta(minutes=2) if terminal else at
        started = scheduled + timedelta(seconds=self.rng.uniform(3, 50))
        if status in (JobStatus.PENDING, JobStatus.AWAITING_APPROVAL):
            started_at: datetime | None = None
        elif status is JobStatus.CANCELLED:
            started_at = None
        else:
            started_at = started
        verified = kind is JobType.DEPLOYMENT and status is JobStatus.COMPLETED
        self.add(jobs, {
            "id": job_id, "type": kind.value, "certificate_id": cert_id, "target_id": target_id,
            "agent_id": agent_id, "status": status.value,
            "attempts": attempts if attempts is not None else (0 if started_at is None else 1),
            "max_attempts": 3, "last_error": error, "deployment_result": None,
            "scheduled_at": scheduled, "started_at": started_at,
            "completed_at": at if terminal else None,
            "verification_status": "success" if verified else None,
            "verified_at": at + timedelta(seconds=30) if verified else None,
            "verification_fingerprint": fingerprint if verified else None,
            "verification_error": None,
            "created_at": scheduled, "updated_at": at,
        })
        return job_id

    def notify(
        self, kind: str, cert_id: str, spec: _Cert, at: datetime, status: str, *, channel: str = "Email",
        message: str | None = None,
    ) -> None:
        owner_email = next(o[3] for o in _OWNERS if o[0] == spec.owner)
        dead = status == "dead"
        self.add(notification_events, {
            "id": new_id("notif"), "type": kind, "certificate_id": cert_id, "channel": channel,
            "recipient": "https://hooks.example.com/certctl" if channel == "Webhook" else owner_email,
            "message": message or f"{kind} for {spec.cn}", "sent_at": None if dead else at, "status": status,
            "error": "webhook returned 503" if dead else None, "retry_count": 5 if dead else 0,
            "next_retry_at": None, "last_error": "webhook returned 503" if dead else None, "created_at": at,
        })

    def violations(self, cert_id: str, spec: _Cert, at: datetime, leaves: list[DemoLeaf]) -> None:
        if spec.status in (_S.ARCHIVED, _S.REVOKED):
            return
        for rule_id, _name, kind, config, severity in _RULES:
            message = _violation(kind, config, spec, leaves, self.policy_window(spec))
            if message is None:
                continue
            found = max(at, self.start + 3 * DAY) + timedelta(minutes=1)
            self.add(policy_violations, {"id": new_id("viol"), "certificate_id": cert_id, "rule_id": rule_id,
                                         "message": message, "severity": severity.value, "created_at": found})
            self.audit(found, "system", ActorType.SYSTEM, "policy_violation_detected", "certificate", cert_id,
                       {"rule_id": rule_id, "severity": severity.value})

    def policy_window(self, spec: _Cert) -> int:
        return {"rp-public-web": 30, "rp-internal-services": 21, "rp-manual-review": 45}.get(self.policy_id(spec), 30)

    def background_activity(self) -> None:
        """Day-to-day noise: re-deployments after drift, cancelled duplicates, tag edits, retried renewals."""
        mapped = [(f"mc-{c.slug}", c) for c in _CERTS if c.targets and c.expires_in_days is not None]
        for day in range(HISTORY_DAYS):
            base = self.start + day * DAY
            for _ in range(self.rng.choice((0, 1, 1, 2, 2, 3))):
                at = base + self.jitter(24)
                existing = [(cid, spec) for cid, spec in mapped if self.created[cid] < at]
                if at >= self.now or not existing:
                    continue
                cert_id, spec = self.rng.choice(existing)
                target_id = self.rng.choice(spec.targets)
                agent_id = _agent_of(target_id)
                roll = self.rng.random()
                if roll < 0.80:
                    self.job(JobType.DEPLOYMENT, cert_id, target_id, agent_id, JobStatus.COMPLETED, at)
                    self.audit(at, _agent_name(agent_id), ActorType.AGENT, "deployment_completed", "certificate",
                               cert_id, {"target_id": target_id, "trigger": "drift"})
                elif roll < 0.90:
                    error = self.rng.choice(_DEPLOY_ERRORS)
                    self.job(JobType.DEPLOYMENT, cert_id, target_id, agent_id, JobStatus.FAILED, at,
                             attempts=3, error=error)
                    self.audit(at, _agent_name(agent_id), ActorType.AGENT, "deployment_failed", "certificate",
                               cert_id, {"target_id": target_id, "error": error})
                elif roll < 0.95:
                    job_id = self.job(JobType.DEPLOYMENT, cert_id, target_id, agent_id, JobStatus.CANCELLED, at)
                    self.audit(at, "system", ActorType.SYSTEM, "job_cancelled", "job", job_id,
                               {"reason": "superseded by a newer deployment", "certificate_id": cert_id})
                else:
                    job_id = self.job(JobType.RENEWAL, cert_id, None, agent_id, JobStatus.CANCELLED, at)
                    self.audit(at, self.rng.choice(_OWNERS)[2], ActorType.USER, "job_cancelled", "job", job_id,
                               {"reason": "manual renewal requested twice", "certificate_id": cert_id})
            if self.rng.random() < 0.35:
                spec = self.rng.choice(_CERTS)
                at = base + self.jitter(24)
                actor = next(o[2] for o in _OWNERS if o[0] == spec.owner)
                self.audit(at, actor, ActorType.USER, "certificate_updated", "certificate", f"mc-{spec.slug}",
                           {"fields": ["tags"]})


def _agent_of(target_id: str) -> str:
    return next(t[3] for t in _TARGETS if t[0] == target_id)


def _agent_name(agent_id: str) -> str:
    return next(a[1] for a in _AGENTS if a[0] == agent_id)


def _violation(
    kind: PolicyType, config: dict[str, Any], spec: _Cert, leaves: list[DemoLeaf], window_days: int
) -> str | None:
    """The same checks the policy engine makes, applied to the demo rows so stored violations are true."""
    if kind is PolicyType.ALLOWED_DOMAINS:
        allowed: list[str] = config["allowed_domains"]
        # `*.x` matches exactly one label (core.md §1).
        bad = [n for n in spec.sans if not any(_domain_matches(n, a) for a in allowed)]
        return f"names outside the allowed domains: {', '.join(bad)}" if bad else None
    if kind is PolicyType.REQUIRED_METADATA:
        missing = [k for k in config["required_keys"] if k not in spec.tags]
        return f"missing required tags: {', '.join(missing)}" if missing else None
    if kind is PolicyType.ALLOWED_ENVIRONMENTS:
        return None if spec.env in config["allowed"] else f"environment '{spec.env}' is not allowed"
    if kind is PolicyType.RENEWAL_LEAD_TIME:
        lead: int = config["lead_time_days"]
        if window_days < lead:
            return f"renewal window of {window_days} days is shorter than the {lead}-day lead time"
        return None
    if kind is PolicyType.CERTIFICATE_LIFETIME and leaves:
        days = (leaves[-1].not_after - leaves[-1].not_before).days
        limit: int = config["max_days"]
        return f"lifetime of {days} days exceeds {limit}" if days > limit else None
    return None


def _domain_matches(name: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return name == pattern


class _Inventory:
    # Foreign-key order for the inserts.
    ORDER: tuple[Table, ...] = (
        teams, owners, certificate_profiles, agent_groups, renewal_policies, issuers, agents,
        agent_group_members, deployment_targets, managed_certificates, certificate_versions,
        certificate_target_mappings, jobs, issuance_approval_requests, policy_rules, policy_violations,
        notification_events, audit_events,
    )

    def __init__(self, tables: dict[str, list[Row]]) -> None:
        self.tables = tables

    def batches(self) -> list[tuple[Table, list[Row]]]:
        return [(table, self.tables.get(table.name, [])) for table in self.ORDER]

    def counts(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self.tables.items()}
