"""Table definitions (SQLAlchemy Core). Names follow the reference schema (core.md §7).

Alembic migrations under `migrations/versions` are the source of truth for what exists in a
database; this module must describe the same thing (a test compares them).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

from certctl.store.types import JSONType, UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _id() -> Column[str]:
    return Column("id", Text, primary_key=True)


def _stamps() -> list[Column[object]]:
    return [
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    ]


teams = Table(
    "teams", metadata, _id(),
    Column("name", Text, nullable=False, unique=True),
    Column("description", Text, nullable=False, server_default=""),
    *_stamps(),
)

owners = Table(
    "owners", metadata, _id(),
    Column("name", Text, nullable=False),
    Column("email", Text, nullable=False, server_default=""),
    Column("team_id", Text, ForeignKey("teams.id", ondelete="CASCADE"), nullable=True, index=True),
    *_stamps(),
)

certificate_profiles = Table(
    "certificate_profiles", metadata, _id(),
    Column("name", Text, nullable=False, unique=True),
    Column("description", Text, nullable=False, server_default=""),
    Column("allowed_key_algorithms", JSONType, nullable=False),
    Column("max_ttl_seconds", BigInteger, nullable=False, server_default="0"),
    Column("allowed_ekus", JSONType, nullable=False),
    Column("required_san_patterns", JSONType, nullable=False),
    Column("spiffe_uri_pattern", Text, nullable=False, server_default=""),
    Column("allow_short_lived", Boolean, nullable=False, server_default=text("false")),
    Column("must_staple", Boolean, nullable=False, server_default=text("false")),
    Column("required_csr_attributes", JSONType, nullable=False),
    Column("acme_auth_mode", Text, nullable=False, server_default="trust_authenticated"),
    Column("requires_approval", Boolean, nullable=False, server_default=text("false")),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    # Where the key of a certificate under this profile is made: "agent", "server", or "" for
    # the server-wide CERTCTL_KEYGEN_MODE.
    Column("key_generation_mode", Text, nullable=False, server_default=""),
    *_stamps(),
)

agent_groups = Table(
    "agent_groups", metadata, _id(),
    Column("name", Text, nullable=False, unique=True),
    Column("description", Text, nullable=False, server_default=""),
    Column("match_os", Text, nullable=False, server_default=""),
    Column("match_architecture", Text, nullable=False, server_default=""),
    Column("match_ip_cidr", Text, nullable=False, server_default=""),
    Column("match_version", Text, nullable=False, server_default=""),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    *_stamps(),
)

renewal_policies = Table(
    "renewal_policies", metadata, _id(),
    Column("name", Text, nullable=False, unique=True),
    Column("renewal_window_days", Integer, nullable=False, server_default="30"),
    Column("auto_renew", Boolean, nullable=False, server_default=text("true")),
    Column("max_retries", Integer, nullable=False, server_default="3"),
    Column("retry_interval_seconds", Integer, nullable=False, server_default="3600"),
    Column("alert_thresholds_days", JSONType, nullable=False),
    Column("alert_channels", JSONType, nullable=False),
    Column("alert_severity_map", JSONType, nullable=False),
    Column(
        "certificate_profile_id", Text,
        ForeignKey("certificate_profiles.id", ondelete="SET NULL"), nullable=True,
    ),
    Column("agent_group_id", Text, ForeignKey("agent_groups.id", ondelete="SET NULL"), nullable=True),
    *_stamps(),
)

issuers = Table(
    "issuers", metadata, _id(),
    Column("name", Text, nullable=False, unique=True),
    Column("type", Text, nullable=False),
    Column("config", JSONType, nullable=False),  # redacted view, never holds secrets
    Column("encrypted_config", Text, nullable=True),  # AES-256-GCM sealed full config
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("last_tested_at", UTCDateTime, nullable=True),
    Column("test_status", Text, nullable=False, server_default="untested"),
    Column("source", Text, nullable=False, server_default="database"),
    Column("hierarchy_mode", Text, nullable=False, server_default="single"),
    *_stamps(),
)

agents = Table(
    "agents", metadata, _id(),
    Column("name", Text, nullable=False, unique=True),
    Column("hostname", Text, nullable=False, server_default=""),
    Column("status", Text, nullable=False, server_default="Offline"),
    Column("last_heartbeat_at", UTCDateTime, nullable=True),
    Column("registered_at", UTCDateTime, nullable=False),
    Column("api_key_hash", Text, nullable=False, server_default=""),
    Column("os", Text, nullable=False, server_default=""),
    Column("architecture", Text, nullable=False, server_default=""),
    Column("ip_address", Text, nullable=False, server_default=""),
    Column("version", Text, nullable=False, server_default=""),
    Column("retired_at", UTCDateTime, nullable=True),
    Column("retired_reason", Text, nullable=True),
    *_stamps(),
)
Index("ix_agents_active", agents.c.status, postgresql_where=agents.c.retired_at.is_(None),
      sqlite_where=agents.c.retired_at.is_(None))

agent_group_members = Table(
    "agent_group_members", metadata,
    Column("agent_group_id", Text, ForeignKey("agent_groups.id", ondelete="CASCADE"), primary_key=True),
    Column("agent_id", Text, ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
    Column("membership_type", Text, nullable=False, server_default="include"),
    Column("created_at", UTCDateTime, nullable=False),
)

deployment_targets = Table(
    "deployment_targets", metadata, _id(),
    Column("name", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("agent_id", Text, ForeignKey("agents.id", ondelete="RESTRICT"), nullable=False, index=True),
    Column("config", JSONType, nullable=False),
    Column("encrypted_config", Text, nullable=True),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("last_tested_at", UTCDateTime, nullable=True),
    Column("test_status", Text, nullable=False, server_default="untested"),
    Column("retired_at", UTCDateTime, nullable=True),
    Column("retired_reason", Text, nullable=True),
    *_stamps(),
)
# A target name is unique per agent among live targets; retiring a target frees its name.
Index("uq_targets_agent_name_live", deployment_targets.c.agent_id, deployment_targets.c.name, unique=True,
      postgresql_where=deployment_targets.c.retired_at.is_(None),
      sqlite_where=deployment_targets.c.retired_at.is_(None))

managed_certificates = Table(
    "managed_certificates", metadata, _id(),
    Column("name", Text, nullable=False, unique=True),
    Column("common_name", Text, nullable=False),
    Column("sans", JSONType, nullable=False),
    Column("environment", Text, nullable=False, server_default=""),
    Column("owner_id", Text, ForeignKey("owners.id", ondelete="RESTRICT"), nullable=False),
    Column("team_id", Text, ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
    Column("issuer_id", Text, ForeignKey("issuers.id", ondelete="RESTRICT"), nullable=False),
    Column("renewal_policy_id", Text, ForeignKey("renewal_policies.id", ondelete="RESTRICT"), nullable=False),
    Column(
        "certificate_profile_id", Text,
        ForeignKey("certificate_profiles.id", ondelete="SET NULL"), nullable=True,
    ),
    Column("status", Text, nullable=False, server_default="Pending"),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("tags", JSONType, nullable=False),
    Column("last_renewal_at", UTCDateTime, nullable=True),
    Column("last_deployment_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("revocation_reason", Text, nullable=True),
    Column("source", Text, nullable=False, server_default=""),
    *_stamps(),
)
# The list endpoint's sorts each walk one index (sort key + id tie-breaker, see certificates_repo);
# equality filters lead with their column, then the default sort, so filter + default order is one
# index range. `name` is unique and needs no extra index.
_mc = managed_certificates.c
Index("ix_certs_created", _mc.created_at, _mc.id)
Index("ix_certs_updated", _mc.updated_at, _mc.id)
Index("ix_certs_expires", _mc.expires_at, _mc.id)
Index("ix_certs_common_name", _mc.common_name, _mc.id)
Index("ix_certs_status_created", _mc.status, _mc.created_at, _mc.id)
# "what expires next" within a status, a team or an owner: the inventory's most common question.
Index("ix_certs_status_expires", _mc.status, _mc.expires_at, _mc.id)
Index("ix_certs_team_expires", _mc.team_id, _mc.expires_at, _mc.id)
Index("ix_certs_owner_expires", _mc.owner_id, _mc.expires_at, _mc.id)
Index("ix_certs_environment", _mc.environment, _mc.created_at, _mc.id)
Index("ix_certs_owner", _mc.owner_id, _mc.created_at, _mc.id)
Index("ix_certs_team", _mc.team_id, _mc.created_at, _mc.id)
Index("ix_certs_issuer", _mc.issuer_id, _mc.created_at, _mc.id)
Index("ix_certs_profile", _mc.certificate_profile_id, _mc.created_at, _mc.id)
# The renewal scan: one policy's certificates inside its window, soonest expiry first (migration 0011).
Index("ix_certs_policy_expires", _mc.renewal_policy_id, _mc.expires_at, _mc.id)

certificate_versions = Table(
    "certificate_versions", metadata, _id(),
    Column("certificate_id", Text, ForeignKey("managed_certificates.id", ondelete="CASCADE"), nullable=False),
    Column("serial_number", Text, nullable=False),
    Column("not_before", UTCDateTime, nullable=False),
    Column("not_after", UTCDateTime, nullable=False),
    Column("fingerprint_sha256", Text, nullable=False, unique=True),
    Column("pem_chain", Text, nullable=False),
    Column("csr_pem", Text, nullable=False, server_default=""),
    Column("key_algorithm", Text, nullable=False, server_default=""),
    Column("key_size", Integer, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    # Which certctl CA signed it (NULL for outside CAs) and which job produced it. A job yields at
    # most one version (crash safety: a retried job can never store a second one).
    Column("ca_id", Text, ForeignKey("intermediate_cas.id", ondelete="RESTRICT"), nullable=True),
    Column("job_id", Text, nullable=True),
)
Index("ix_versions_cert_created", certificate_versions.c.certificate_id, certificate_versions.c.created_at)
# Serials are canonical lowercase hex without padding (certctl.pki.serials); unique per signing CA.
Index("uq_versions_ca_serial", certificate_versions.c.ca_id, certificate_versions.c.serial_number, unique=True,
      postgresql_where=certificate_versions.c.ca_id.is_not(None),
      sqlite_where=certificate_versions.c.ca_id.is_not(None))
Index("ix_versions_serial", certificate_versions.c.serial_number)
Index("uq_versions_job", certificate_versions.c.job_id, unique=True,
      postgresql_where=certificate_versions.c.job_id.is_not(None),
      sqlite_where=certificate_versions.c.job_id.is_not(None))

# The private key of a version whose key the server generated (profile key generation `server`),
# sealed with the config encryption key. Never returned by the API and never exported.
certificate_private_keys = Table(
    "certificate_private_keys", metadata,
    Column("version_id", Text, ForeignKey("certificate_versions.id", ondelete="CASCADE"), primary_key=True),
    Column("sealed_key", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

certificate_target_mappings = Table(
    "certificate_target_mappings", metadata,
    Column("certificate_id", Text, ForeignKey("managed_certificates.id", ondelete="CASCADE"), primary_key=True),
    Column("target_id", Text, ForeignKey("deployment_targets.id", ondelete="CASCADE"), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
)
Index("ix_mappings_target", certificate_target_mappings.c.target_id)

jobs = Table(
    "jobs", metadata, _id(),
    Column("type", Text, nullable=False),
    Column("certificate_id", Text, ForeignKey("managed_certificates.id", ondelete="CASCADE"), nullable=True),
    Column("target_id", Text, ForeignKey("deployment_targets.id", ondelete="SET NULL"), nullable=True),
    Column("agent_id", Text, ForeignKey("agents.id", ondelete="SET NULL"), nullable=True),
    Column("status", Text, nullable=False, server_default="Pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False, server_default="3"),
    Column("last_error", Text, nullable=True),
    Column("deployment_result", JSONType, nullable=True),
    Column("scheduled_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    Column("verification_status", Text, nullable=True),
    Column("verified_at", UTCDateTime, nullable=True),
    Column("verification_fingerprint", Text, nullable=True),
    Column("verification_error", Text, nullable=True),
    # The CSR an agent submitted for this job (agent key generation), kept for the version row.
    Column("csr_pem", Text, nullable=True),
    # Who runs it and until when: a Running job whose lease ran out (crashed server) is requeued.
    Column("claimed_by", Text, nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    *_stamps(),
)
Index("ix_jobs_status_scheduled", jobs.c.status, jobs.c.scheduled_at)
Index("ix_jobs_agent", jobs.c.agent_id)
Index("ix_jobs_certificate", jobs.c.certificate_id)
Index("ix_jobs_created", jobs.c.created_at)

issuance_approval_requests = Table(
    "issuance_approval_requests", metadata, _id(),
    Column("certificate_id", Text, ForeignKey("managed_certificates.id", ondelete="CASCADE"), nullable=False),
    Column("job_id", Text, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("profile_id", Text, nullable=False, server_default=""),
    Column("requested_by", Text, nullable=False),
    Column("state", Text, nullable=False, server_default="pending"),
    Column("decided_by", Text, nullable=True),
    Column("decided_at", UTCDateTime, nullable=True),
    Column("decision_note", Text, nullable=True),
    Column("metadata", JSONType, nullable=False),
    *_stamps(),
)
Index("uq_approval_pending_job", issuance_approval_requests.c.job_id, unique=True,
      postgresql_where=issuance_approval_requests.c.state == "pending",
      sqlite_where=issuance_approval_requests.c.state == "pending")

policy_rules = Table(
    "policy_rules", metadata, _id(),
    Column("name", Text, nullable=False, unique=True),
    Column("type", Text, nullable=False),
    Column("config", JSONType, nullable=False),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("severity", Text, nullable=False, server_default="Warning"),
    *_stamps(),
)

policy_violations = Table(
    "policy_violations", metadata, _id(),
    Column("certificate_id", Text, ForeignKey("managed_certificates.id", ondelete="CASCADE"), nullable=False),
    Column("rule_id", Text, ForeignKey("policy_rules.id", ondelete="CASCADE"), nullable=False),
    Column("message", Text, nullable=False),
    Column("severity", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
Index("ix_violations_rule", policy_violations.c.rule_id, policy_violations.c.created_at)
Index("ix_violations_cert", policy_violations.c.certificate_id)

audit_events = Table(
    "audit_events", metadata, _id(),
    Column("actor", Text, nullable=False),
    Column("actor_type", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("resource_type", Text, nullable=False),
    Column("resource_id", Text, nullable=False, server_default=""),
    Column("details", JSONType, nullable=False),
    Column("timestamp", UTCDateTime, nullable=False),
)
Index("ix_audit_timestamp", audit_events.c.timestamp, audit_events.c.id)
Index("ix_audit_resource", audit_events.c.resource_type, audit_events.c.resource_id)
Index("ix_audit_actor", audit_events.c.actor, audit_events.c.timestamp)
Index("ix_audit_action_timestamp", audit_events.c.action, audit_events.c.timestamp, audit_events.c.id)  # the outbox

notification_events = Table(
    "notification_events", metadata, _id(),
    Column("type", Text, nullable=False),
    Column("certificate_id", Text, ForeignKey("managed_certificates.id", ondelete="CASCADE"), nullable=True),
    Column("channel", Text, nullable=False),
    Column("recipient", Text, nullable=False, server_default=""),
    Column("message", Text, nullable=False, server_default=""),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("error", Text, nullable=True),
    Column("retry_count", Integer, nullable=False, server_default="0"),
    Column("next_retry_at", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)
Index("ix_notifications_status", notification_events.c.status, notification_events.c.next_retry_at)

api_keys = Table(
    "api_keys", metadata,
    Column("name", Text, primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),  # SHA-256 hex; the key itself is never stored
    Column("admin", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", UTCDateTime, nullable=False),
)


# ---- CA engine (issue 3) -------------------------------------------------------------------------

# Every CA certctl signs with: the persisted self-signed root of a local issuer, a sub-CA loaded from
# CERTCTL_CA_CERT_PATH (parent_ca_id NULL, its outside parents in external_chain_pem), and the
# intermediates created under them. Only a key *reference* is stored (key_driver_id), never key bytes.
intermediate_cas = Table(
    "intermediate_cas", metadata, _id(),
    Column("owning_issuer_id", Text, ForeignKey("issuers.id", ondelete="RESTRICT"), nullable=False),
    Column("parent_ca_id", Text, ForeignKey("intermediate_cas.id", ondelete="RESTRICT"), nullable=True),
    Column("name", Text, nullable=False),
    Column("subject", JSONType, nullable=False),
    Column("state", Text, nullable=False, server_default="active"),
    Column("cert_pem", Text, nullable=False),
    Column("external_chain_pem", Text, nullable=False, server_default=""),
    Column("key_driver_id", Text, nullable=False),
    Column("key_algorithm", Text, nullable=False),
    Column("serial_number", Text, nullable=False),
    Column("not_before", UTCDateTime, nullable=False),
    Column("not_after", UTCDateTime, nullable=False),
    Column("path_len_constraint", Integer, nullable=True),
    Column("name_constraints", JSONType, nullable=False),
    Column("ocsp_responder_url", Text, nullable=False, server_default=""),
    Column("metadata", JSONType, nullable=False),
    Column("retired_at", UTCDateTime, nullable=True),
    Column("retire_note", Text, nullable=True),
    *_stamps(),
)
Index("uq_intermediate_cas_issuer_name", intermediate_cas.c.owning_issuer_id, intermediate_cas.c.name, unique=True)
Index("ix_intermediate_cas_parent", intermediate_cas.c.parent_ca_id)
# At most one active root per issuer.
Index("uq_intermediate_cas_active_root", intermediate_cas.c.owning_issuer_id, unique=True,
      postgresql_where=(intermediate_cas.c.parent_ca_id.is_(None)) & (intermediate_cas.c.state == "active"),
      sqlite_where=(intermediate_cas.c.parent_ca_id.is_(None)) & (intermediate_cas.c.state == "active"))

# One row per revoked certificate (leaf or CA), keyed by the CA that signed it and its canonical serial.
certificate_revocations = Table(
    "certificate_revocations", metadata, _id(),
    Column("issuer_id", Text, nullable=False),
    Column("ca_id", Text, nullable=True),  # NULL: signed by an outside CA
    Column("serial_number", Text, nullable=False),
    Column("certificate_id", Text, nullable=True),
    Column("version_id", Text, nullable=True),
    Column("reason", Text, nullable=False),
    Column("reason_code", Integer, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=False),
    Column("revoked_by", Text, nullable=False),
    Column("not_after", UTCDateTime, nullable=True),  # expired entries may leave the CRL (RFC 5280 §3.3)
    Column("short_lived", Boolean, nullable=False, server_default=text("false")),
    Column("issuer_notified", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", UTCDateTime, nullable=False),
)
Index("uq_revocations_issuer_serial", certificate_revocations.c.issuer_id, certificate_revocations.c.serial_number,
      unique=True)
Index("ix_revocations_ca", certificate_revocations.c.ca_id, certificate_revocations.c.serial_number)
Index("ix_revocations_certificate", certificate_revocations.c.certificate_id)
# OCSP responders of every server poll the newest revocations (certctl.services.status): a range scan.
Index("ix_revocations_created", certificate_revocations.c.created_at)

# The signed CRL of each CA, pre-generated by the scheduler and rebuilt right after a revocation.
crl_cache = Table(
    "crl_cache", metadata,
    Column("ca_id", Text, ForeignKey("intermediate_cas.id", ondelete="CASCADE"), primary_key=True),
    Column("issuer_id", Text, nullable=False),
    Column("crl_number", BigInteger, nullable=False),  # monotonic per CA (RFC 5280 §5.2.3)
    Column("this_update", UTCDateTime, nullable=False),
    Column("next_update", UTCDateTime, nullable=False),
    Column("crl_der", LargeBinary, nullable=False),
    Column("etag", Text, nullable=False),
    Column("entries", Integer, nullable=False),
    Column("revocations_seen", Integer, nullable=False),  # revocation rows counted when built: staleness check
    Column("generated_at", UTCDateTime, nullable=False),
)

crl_generation_events = Table(
    "crl_generation_events", metadata, _id(),
    Column("ca_id", Text, nullable=False),
    Column("issuer_id", Text, nullable=False),
    Column("crl_number", BigInteger, nullable=True),
    Column("entries", Integer, nullable=False, server_default="0"),
    Column("duration_ms", Integer, nullable=False, server_default="0"),
    Column("trigger", Text, nullable=False),  # scheduled | revocation | on_read
    Column("error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)
Index("ix_crl_events_ca", crl_generation_events.c.ca_id, crl_generation_events.c.created_at)

# The delegated OCSP responder certificate of each CA (RFC 6960 §4.2.2.2), rotated before it expires.
ocsp_responders = Table(
    "ocsp_responders", metadata,
    Column("ca_id", Text, ForeignKey("intermediate_cas.id", ondelete="CASCADE"), primary_key=True),
    Column("cert_pem", Text, nullable=False),
    Column("key_driver_id", Text, nullable=False),
    Column("not_before", UTCDateTime, nullable=False),
    Column("not_after", UTCDateTime, nullable=False),
    *_stamps(),
)

# Leases for work that must run on one server at a time (scheduler loops); works on both back ends.
scheduler_leases = Table(
    "scheduler_leases", metadata,
    Column("name", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)


# ---- Discovery (issue 4) -------------------------------------------------------------------------

# CIDR ranges and ports the server's network scanner probes for TLS certificates (connectors.md §5).
network_scan_targets = Table(
    "network_scan_targets", metadata, _id(),
    Column("name", Text, nullable=False, unique=True),
    Column("cidrs", JSONType, nullable=False),  # normalised, each at most /20
    Column("ports", JSONType, nullable=False),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("scan_interval_hours", Integer, nullable=False, server_default="6"),
    Column("timeout_ms", Integer, nullable=False, server_default="5000"),
    Column("last_scan_at", UTCDateTime, nullable=True),
    Column("last_scan_duration_ms", Integer, nullable=True),
    Column("last_scan_certs_found", Integer, nullable=True),
    *_stamps(),
)

# One row per discovery report (an agent's filesystem scan, or one network scan as `server-scanner`).
discovery_scans = Table(
    "discovery_scans", metadata, _id(),
    Column("agent_id", Text, ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    Column(
        "network_scan_target_id", Text,
        ForeignKey("network_scan_targets.id", ondelete="SET NULL"), nullable=True, index=True,
    ),
    Column("directories", JSONType, nullable=False),
    Column("certificates_found", Integer, nullable=False, server_default="0"),
    Column("certificates_new", Integer, nullable=False, server_default="0"),
    Column("errors_count", Integer, nullable=False, server_default="0"),
    Column("errors", JSONType, nullable=False),  # the first errors only; all are counted in errors_count
    Column("scan_duration_ms", Integer, nullable=False, server_default="0"),
    Column("started_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime, nullable=True),
)
Index("ix_discovery_scans_started", discovery_scans.c.started_at, discovery_scans.c.id)
Index("ix_discovery_scans_agent", discovery_scans.c.agent_id, discovery_scans.c.started_at, discovery_scans.c.id)

# Certificates found by discovery, keyed by (fingerprint, agent, source path): Unmanaged → Managed | Dismissed.
discovered_certificates = Table(
    "discovered_certificates", metadata, _id(),
    Column("fingerprint_sha256", Text, nullable=False),
    Column("common_name", Text, nullable=False, server_default=""),
    Column("sans", JSONType, nullable=False),
    Column("serial_number", Text, nullable=False, server_default=""),  # canonical hex (certctl.pki.serials)
    Column("issuer_dn", Text, nullable=False, server_default=""),
    Column("subject_dn", Text, nullable=False, server_default=""),
    Column("not_before", UTCDateTime, nullable=True),
    Column("not_after", UTCDateTime, nullable=True),
    Column("key_algorithm", Text, nullable=False, server_default=""),
    Column("key_size", Integer, nullable=False, server_default="0"),
    Column("is_ca", Boolean, nullable=False, server_default=text("false")),
    Column("pem_data", Text, nullable=False, server_default=""),  # the certificate only, never a key
    Column("source_path", Text, nullable=False),
    Column("source_format", Text, nullable=False, server_default="PEM"),
    Column("agent_id", Text, ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    Column("discovery_scan_id", Text, ForeignKey("discovery_scans.id", ondelete="SET NULL"), nullable=True),
    Column(
        "managed_certificate_id", Text,
        ForeignKey("managed_certificates.id", ondelete="SET NULL"), nullable=True, index=True,
    ),
    Column("status", Text, nullable=False, server_default="Unmanaged"),
    Column("first_seen_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("dismissed_at", UTCDateTime, nullable=True),
    *_stamps(),
)
_dc = discovered_certificates.c
Index("uq_discovered_fingerprint_agent_path", _dc.fingerprint_sha256, _dc.agent_id, _dc.source_path, unique=True)
# The list's filters each lead an index that ends in its order (newest first).
Index("ix_discovered_created", _dc.created_at, _dc.id)
Index("ix_discovered_agent", _dc.agent_id, _dc.created_at, _dc.id)
Index("ix_discovered_status", _dc.status, _dc.created_at, _dc.id)
Index("ix_discovered_not_after", _dc.not_after)

# Endpoint health checks (core.md §1 EndpointHealthCheck): a TLS probe of host:port on an interval.
# status: Unknown (never probed) | Healthy | Degraded | Down | CertMismatch.
endpoint_health_checks = Table(
    "endpoint_health_checks", metadata, _id(),
    Column("endpoint", Text, nullable=False),  # host:port ([v6]:port)
    Column("server_name", Text, nullable=True),  # SNI; the host when it is a name
    Column(
        "certificate_id", Text, ForeignKey("managed_certificates.id", ondelete="SET NULL"), nullable=True, index=True,
    ),
    Column(
        "network_scan_target_id", Text,
        ForeignKey("network_scan_targets.id", ondelete="SET NULL"), nullable=True, index=True,
    ),
    Column("expected_fingerprint", Text, nullable=True),
    Column("observed_fingerprint", Text, nullable=True),
    Column("status", Text, nullable=False, server_default="Unknown"),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("check_interval_seconds", Integer, nullable=False, server_default="300"),
    Column("timeout_ms", Integer, nullable=False, server_default="5000"),
    Column("degraded_threshold", Integer, nullable=False, server_default="2"),
    Column("down_threshold", Integer, nullable=False, server_default="5"),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("response_time_ms", Integer, nullable=True),
    Column("tls_version", Text, nullable=True),
    Column("cipher_suite", Text, nullable=True),
    Column("cert_subject", Text, nullable=True),
    Column("cert_issuer", Text, nullable=True),
    Column("cert_not_after", UTCDateTime, nullable=True),
    Column("last_checked_at", UTCDateTime, nullable=True),
    Column("last_success_at", UTCDateTime, nullable=True),
    Column("last_failure_at", UTCDateTime, nullable=True),
    Column("last_transition_at", UTCDateTime, nullable=True),
    Column("failure_reason", Text, nullable=True),
    Column("acknowledged", Boolean, nullable=False, server_default=text("false")),
    Column("acknowledged_by", Text, nullable=True),
    Column("acknowledged_at", UTCDateTime, nullable=True),
    *_stamps(),
)
Index("ix_health_checks_status", endpoint_health_checks.c.status, endpoint_health_checks.c.created_at,
      endpoint_health_checks.c.id)

# One row per probe; purged after CERTCTL_HEALTH_CHECK_HISTORY_RETENTION (30 days).
endpoint_health_history = Table(
    "endpoint_health_history", metadata, _id(),
    Column(
        "health_check_id", Text, ForeignKey("endpoint_health_checks.id", ondelete="CASCADE"), nullable=False,
    ),
    Column("status", Text, nullable=False),
    Column("response_time_ms", Integer, nullable=True),
    Column("observed_fingerprint", Text, nullable=True),
    Column("tls_version", Text, nullable=True),
    Column("cipher_suite", Text, nullable=True),
    Column("cert_subject", Text, nullable=True),
    Column("cert_issuer", Text, nullable=True),
    Column("cert_not_before", UTCDateTime, nullable=True),
    Column("cert_not_after", UTCDateTime, nullable=True),
    Column("failure_reason", Text, nullable=True),
    Column("checked_at", UTCDateTime, nullable=False),
)
Index("ix_health_history_check", endpoint_health_history.c.health_check_id, endpoint_health_history.c.checked_at,
      endpoint_health_history.c.id)
Index("ix_health_history_checked", endpoint_health_history.c.checked_at)

# ---- ACME server (RFC 8555, migration 0005) ---------------------------------------------------------
# External account binding keys (RFC 8555 §7.3.4): the HMAC key sealed with the config encryption key,
# shown once at creation; bound to the account that used it (single use).
acme_eab_keys = Table(
    "acme_eab_keys", metadata, _id(),
    Column("profile_id", Text, ForeignKey("certificate_profiles.id", ondelete="CASCADE"), nullable=True),
    Column("sealed_hmac_key", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("account_id", Text, nullable=True),
    Column("created_by", Text, nullable=False, server_default=""),
    Column("created_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
)

# One account per (profile, key thumbprint): the same key on two profiles is two accounts.
acme_accounts = Table(
    "acme_accounts", metadata, _id(),
    Column("profile_id", Text, ForeignKey("certificate_profiles.id", ondelete="CASCADE"), nullable=False),
    Column("thumbprint", Text, nullable=False),
    Column("jwk", JSONType, nullable=False),
    Column("status", Text, nullable=False, server_default="valid"),
    Column("contact", JSONType, nullable=False),
    Column("terms_agreed", Boolean, nullable=False, server_default=text("false")),
    Column("eab_key_id", Text, nullable=True),
    *_stamps(),
)
Index("uq_acme_accounts_profile_thumbprint", acme_accounts.c.profile_id, acme_accounts.c.thumbprint, unique=True)

acme_orders = Table(
    "acme_orders", metadata, _id(),
    Column("account_id", Text, ForeignKey("acme_accounts.id", ondelete="CASCADE"), nullable=False),
    Column("profile_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("identifiers", JSONType, nullable=False),
    Column("not_before", UTCDateTime, nullable=True),
    Column("not_after", UTCDateTime, nullable=True),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("error", JSONType, nullable=True),
    Column("certificate_id", Text, nullable=True),  # the managed certificate finalize created
    Column("version_id", Text, nullable=True),
    Column("replaces", Text, nullable=True),  # RFC 9773 certificate id as the client sent it
    Column("replaces_order_id", Text, nullable=True),
    *_stamps(),
)
Index("ix_acme_orders_account", acme_orders.c.account_id, acme_orders.c.created_at, acme_orders.c.id)
Index("ix_acme_orders_status_expires", acme_orders.c.status, acme_orders.c.expires_at)
Index("ix_acme_orders_version", acme_orders.c.version_id)
# A certificate is replaced by at most one order (RFC 9773 §5 alreadyReplaced).
Index("uq_acme_orders_replaces", acme_orders.c.replaces_order_id, unique=True,
      postgresql_where=acme_orders.c.replaces_order_id.is_not(None),
      sqlite_where=acme_orders.c.replaces_order_id.is_not(None))

acme_authorizations = Table(
    "acme_authorizations", metadata, _id(),
    Column("order_id", Text, ForeignKey("acme_orders.id", ondelete="CASCADE"), nullable=False),
    Column("account_id", Text, nullable=False),
    Column("identifier_type", Text, nullable=False),
    Column("identifier_value", Text, nullable=False),
    Column("wildcard", Boolean, nullable=False, server_default=text("false")),
    Column("status", Text, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    *_stamps(),
)
Index("ix_acme_authorizations_order", acme_authorizations.c.order_id)

acme_challenges = Table(
    "acme_challenges", metadata, _id(),
    Column("authz_id", Text, ForeignKey("acme_authorizations.id", ondelete="CASCADE"), nullable=False),
    Column("type", Text, nullable=False),
    Column("token", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("validated_at", UTCDateTime, nullable=True),
    Column("error", JSONType, nullable=True),
    Column("validation_record", JSONType, nullable=True),
    *_stamps(),
)
Index("ix_acme_challenges_authz", acme_challenges.c.authz_id)
Index("ix_acme_challenges_status_updated", acme_challenges.c.status, acme_challenges.c.updated_at)

# Replay nonces (RFC 8555 §6.5): single use (consuming deletes the row), shared by every replica.
acme_nonces = Table(
    "acme_nonces", metadata,
    Column("value", Text, primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False),
)
Index("ix_acme_nonces_expires", acme_nonces.c.expires_at)

# ACME issuer connector (certctl.connectors.issuers.acme): one ACME account per issuer and directory URL. The
# account key is made once, sealed with the config encryption key before it is registered, and reused.
acme_client_accounts = Table(
    "acme_client_accounts", metadata, _id(),
    Column("issuer_id", Text, ForeignKey("issuers.id", ondelete="CASCADE"), nullable=False),
    Column("directory_url", Text, nullable=False),
    Column("account_url", Text, nullable=True),  # NULL until the CA answered newAccount
    Column("contact", Text, nullable=False, server_default=""),
    Column("sealed_key", Text, nullable=False),
    *_stamps(),
)
Index("uq_acme_client_accounts_issuer_directory", acme_client_accounts.c.issuer_id,
      acme_client_accounts.c.directory_url, unique=True)

# ARI (RFC 9773): the CA's suggested renewal window of an ACME-issued version, the moment picked inside it
# (renew_at, §4.2) and when to ask again (Retry-After). The renewal scan uses the newest version's row.
acme_renewal_info = Table(
    "acme_renewal_info", metadata,
    Column("version_id", Text, ForeignKey("certificate_versions.id", ondelete="CASCADE"), primary_key=True),
    Column("certificate_id", Text, ForeignKey("managed_certificates.id", ondelete="CASCADE"), nullable=False),
    Column("issuer_id", Text, nullable=False),
    Column("ari_cert_id", Text, nullable=False),
    Column("window_start", UTCDateTime, nullable=True),
    Column("window_end", UTCDateTime, nullable=True),
    Column("renew_at", UTCDateTime, nullable=True),
    Column("explanation_url", Text, nullable=True),
    Column("next_check_at", UTCDateTime, nullable=False),
    Column("checked_at", UTCDateTime, nullable=True),
)
Index("ix_acme_renewal_info_certificate", acme_renewal_info.c.certificate_id)
Index("ix_acme_renewal_info_next_check", acme_renewal_info.c.next_check_at)
Index("ix_acme_renewal_info_renew_at", acme_renewal_info.c.renew_at)

# Shared rate limits (certctl.services.rate_limits): one token bucket per key, leased from in batches by every
# replica. Times are Unix seconds; `expires_at` is when the bucket is full again, after which the row means
# nothing and is deleted.
rate_limit_buckets = Table(
    "rate_limit_buckets", metadata,
    Column("key", Text, primary_key=True),
    Column("tokens", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
)
Index("ix_rate_limit_buckets_expires_at", rate_limit_buckets.c.expires_at)

# Big list totals, shared by every server process (certctl.services.certificates, migration 0010): a process that
# has no figure for a filter, or whose figure is due, takes one another process counted recently instead of
# counting again. `key` is the filter; `counted_at` is epoch seconds.
certificate_list_counts = Table(
    "certificate_list_counts", metadata,
    Column("key", Text, primary_key=True),
    Column("total", BigInteger, nullable=False),
    Column("counted_at", Double, nullable=False),
)

# Notifications (certctl.services.notifications, migration 0008). `dedup_key` names what a row is about (an audit
# event, or a certificate's expiry threshold); with the channel it is unique, so the outbox scan and the expiry
# scan can run again, on any replica, without making a second row. `claimed_by`/`claim_expires_at` is the
# delivery lease: one sender per row at a time, the lease returns it if that sender dies mid-way.
notification_dedup_key = Column("dedup_key", Text, nullable=True)
notification_events.append_column(notification_dedup_key)
notification_events.append_column(Column("claimed_by", Text, nullable=True))
notification_events.append_column(Column("claim_expires_at", UTCDateTime, nullable=True))
Index("uq_notification_events_dedup_key_channel", notification_events.c.dedup_key, notification_events.c.channel,
      unique=True)
Index("ix_notification_events_certificate", notification_events.c.certificate_id)

# Where the notification outbox scan of audit_events has got to (one row per scan name).
notification_cursors = Table(
    "notification_cursors", metadata,
    Column("name", Text, primary_key=True),
    Column("timestamp", UTCDateTime, nullable=False),
    Column("event_id", Text, nullable=False),
)
