"""Initial schema: the control-plane inventory, jobs, policies, audit trail and API keys.

The audit table is append-only, enforced by the database itself on both back ends.

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from certctl.store.types import JSONType, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_groups",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("match_os", sa.Text(), server_default="", nullable=False),
        sa.Column("match_architecture", sa.Text(), server_default="", nullable=False),
        sa.Column("match_ip_cidr", sa.Text(), server_default="", nullable=False),
        sa.Column("match_version", sa.Text(), server_default="", nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("(true)"), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_groups")),
        sa.UniqueConstraint("name", name=op.f("uq_agent_groups_name")),
    )
    op.create_table(
        "agents",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("hostname", sa.Text(), server_default="", nullable=False),
        sa.Column("status", sa.Text(), server_default="Offline", nullable=False),
        sa.Column("last_heartbeat_at", UTCDateTime(), nullable=True),
        sa.Column("registered_at", UTCDateTime(), nullable=False),
        sa.Column("api_key_hash", sa.Text(), server_default="", nullable=False),
        sa.Column("os", sa.Text(), server_default="", nullable=False),
        sa.Column("architecture", sa.Text(), server_default="", nullable=False),
        sa.Column("ip_address", sa.Text(), server_default="", nullable=False),
        sa.Column("version", sa.Text(), server_default="", nullable=False),
        sa.Column("retired_at", UTCDateTime(), nullable=True),
        sa.Column("retired_reason", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
        sa.UniqueConstraint("name", name=op.f("uq_agents_name")),
    )
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.create_index(
            "ix_agents_active",
            ["status"],
            unique=False,
            postgresql_where=sa.text("retired_at IS NULL"),
            sqlite_where=sa.text("retired_at IS NULL"),
        )

    op.create_table(
        "api_keys",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), server_default=sa.text("(false)"), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("actor_type", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("resource_type", sa.Text(), nullable=False),
        sa.Column("resource_id", sa.Text(), server_default="", nullable=False),
        sa.Column("details", JSONType, nullable=False),
        sa.Column("timestamp", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_actor", ["actor", "timestamp"], unique=False)
        batch_op.create_index("ix_audit_resource", ["resource_type", "resource_id"], unique=False)
        batch_op.create_index("ix_audit_timestamp", ["timestamp", "id"], unique=False)

    op.create_table(
        "certificate_profiles",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("allowed_key_algorithms", JSONType, nullable=False),
        sa.Column("max_ttl_seconds", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("allowed_ekus", JSONType, nullable=False),
        sa.Column("required_san_patterns", JSONType, nullable=False),
        sa.Column("spiffe_uri_pattern", sa.Text(), server_default="", nullable=False),
        sa.Column("allow_short_lived", sa.Boolean(), server_default=sa.text("(false)"), nullable=False),
        sa.Column("must_staple", sa.Boolean(), server_default=sa.text("(false)"), nullable=False),
        sa.Column("required_csr_attributes", JSONType, nullable=False),
        sa.Column("acme_auth_mode", sa.Text(), server_default="trust_authenticated", nullable=False),
        sa.Column("requires_approval", sa.Boolean(), server_default=sa.text("(false)"), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("(true)"), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificate_profiles")),
        sa.UniqueConstraint("name", name=op.f("uq_certificate_profiles_name")),
    )
    op.create_table(
        "issuers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("config", JSONType, nullable=False),
        sa.Column("encrypted_config", sa.Text(), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("(true)"), nullable=False),
        sa.Column("last_tested_at", UTCDateTime(), nullable=True),
        sa.Column("test_status", sa.Text(), server_default="untested", nullable=False),
        sa.Column("source", sa.Text(), server_default="database", nullable=False),
        sa.Column("hierarchy_mode", sa.Text(), server_default="single", nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_issuers")),
        sa.UniqueConstraint("name", name=op.f("uq_issuers_name")),
    )
    op.create_table(
        "policy_rules",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("config", JSONType, nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("(true)"), nullable=False),
        sa.Column("severity", sa.Text(), server_default="Warning", nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_rules")),
        sa.UniqueConstraint("name", name=op.f("uq_policy_rules_name")),
    )
    op.create_table(
        "teams",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teams")),
        sa.UniqueConstraint("name", name=op.f("uq_teams_name")),
    )
    op.create_table(
        "agent_group_members",
        sa.Column("agent_group_id", sa.Text(), nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("membership_type", sa.Text(), server_default="include", nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_group_id"],
            ["agent_groups.id"],
            name=op.f("fk_agent_group_members_agent_group_id_agent_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_agent_group_members_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("agent_group_id", "agent_id", name=op.f("pk_agent_group_members")),
    )
    op.create_table(
        "deployment_targets",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("config", JSONType, nullable=False),
        sa.Column("encrypted_config", sa.Text(), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("(true)"), nullable=False),
        sa.Column("last_tested_at", UTCDateTime(), nullable=True),
        sa.Column("test_status", sa.Text(), server_default="untested", nullable=False),
        sa.Column("retired_at", UTCDateTime(), nullable=True),
        sa.Column("retired_reason", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_deployment_targets_agent_id_agents"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_targets")),
    )
    with op.batch_alter_table("deployment_targets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deployment_targets_agent_id"), ["agent_id"], unique=False)
        batch_op.create_index(
            "uq_targets_agent_name_live",
            ["agent_id", "name"],
            unique=True,
            postgresql_where=sa.text("retired_at IS NULL"),
            sqlite_where=sa.text("retired_at IS NULL"),
        )

    op.create_table(
        "owners",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), server_default="", nullable=False),
        sa.Column("team_id", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_owners_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_owners")),
    )
    with op.batch_alter_table("owners", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_owners_team_id"), ["team_id"], unique=False)

    op.create_table(
        "renewal_policies",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("renewal_window_days", sa.Integer(), server_default="30", nullable=False),
        sa.Column("auto_renew", sa.Boolean(), server_default=sa.text("(true)"), nullable=False),
        sa.Column("max_retries", sa.Integer(), server_default="3", nullable=False),
        sa.Column("retry_interval_seconds", sa.Integer(), server_default="3600", nullable=False),
        sa.Column("alert_thresholds_days", JSONType, nullable=False),
        sa.Column("alert_channels", JSONType, nullable=False),
        sa.Column("alert_severity_map", JSONType, nullable=False),
        sa.Column("certificate_profile_id", sa.Text(), nullable=True),
        sa.Column("agent_group_id", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_group_id"],
            ["agent_groups.id"],
            name=op.f("fk_renewal_policies_agent_group_id_agent_groups"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["certificate_profile_id"],
            ["certificate_profiles.id"],
            name=op.f("fk_renewal_policies_certificate_profile_id_certificate_profiles"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_renewal_policies")),
        sa.UniqueConstraint("name", name=op.f("uq_renewal_policies_name")),
    )
    op.create_table(
        "managed_certificates",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("common_name", sa.Text(), nullable=False),
        sa.Column("sans", JSONType, nullable=False),
        sa.Column("environment", sa.Text(), server_default="", nullable=False),
        sa.Column("owner_id", sa.Text(), nullable=False),
        sa.Column("team_id", sa.Text(), nullable=False),
        sa.Column("issuer_id", sa.Text(), nullable=False),
        sa.Column("renewal_policy_id", sa.Text(), nullable=False),
        sa.Column("certificate_profile_id", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default="Pending", nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("tags", JSONType, nullable=False),
        sa.Column("last_renewal_at", UTCDateTime(), nullable=True),
        sa.Column("last_deployment_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("revocation_reason", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["certificate_profile_id"],
            ["certificate_profiles.id"],
            name=op.f("fk_managed_certificates_certificate_profile_id_certificate_profiles"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["issuer_id"],
            ["issuers.id"],
            name=op.f("fk_managed_certificates_issuer_id_issuers"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["owners.id"],
            name=op.f("fk_managed_certificates_owner_id_owners"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["renewal_policy_id"],
            ["renewal_policies.id"],
            name=op.f("fk_managed_certificates_renewal_policy_id_renewal_policies"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_managed_certificates_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_managed_certificates")),
        sa.UniqueConstraint("name", name=op.f("uq_managed_certificates_name")),
    )
    with op.batch_alter_table("managed_certificates", schema=None) as batch_op:
        batch_op.create_index("ix_certs_common_name", ["common_name", "id"], unique=False)
        batch_op.create_index("ix_certs_created", ["created_at", "id"], unique=False)
        batch_op.create_index("ix_certs_environment", ["environment", "created_at", "id"], unique=False)
        batch_op.create_index("ix_certs_expires", ["expires_at", "id"], unique=False)
        batch_op.create_index("ix_certs_issuer", ["issuer_id", "created_at", "id"], unique=False)
        batch_op.create_index("ix_certs_owner", ["owner_id", "created_at", "id"], unique=False)
        batch_op.create_index("ix_certs_owner_expires", ["owner_id", "expires_at", "id"], unique=False)
        batch_op.create_index("ix_certs_policy", ["renewal_policy_id"], unique=False)
        batch_op.create_index("ix_certs_profile", ["certificate_profile_id", "created_at", "id"], unique=False)
        batch_op.create_index("ix_certs_status_created", ["status", "created_at", "id"], unique=False)
        batch_op.create_index("ix_certs_status_expires", ["status", "expires_at", "id"], unique=False)
        batch_op.create_index("ix_certs_team", ["team_id", "created_at", "id"], unique=False)
        batch_op.create_index("ix_certs_team_expires", ["team_id", "expires_at", "id"], unique=False)
        batch_op.create_index("ix_certs_updated", ["updated_at", "id"], unique=False)

    op.create_table(
        "certificate_target_mappings",
        sa.Column("certificate_id", sa.Text(), nullable=False),
        sa.Column("target_id", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["managed_certificates.id"],
            name=op.f("fk_certificate_target_mappings_certificate_id_managed_certificates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["deployment_targets.id"],
            name=op.f("fk_certificate_target_mappings_target_id_deployment_targets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("certificate_id", "target_id", name=op.f("pk_certificate_target_mappings")),
    )
    with op.batch_alter_table("certificate_target_mappings", schema=None) as batch_op:
        batch_op.create_index("ix_mappings_target", ["target_id"], unique=False)

    op.create_table(
        "certificate_versions",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("certificate_id", sa.Text(), nullable=False),
        sa.Column("serial_number", sa.Text(), nullable=False),
        sa.Column("not_before", UTCDateTime(), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=False),
        sa.Column("fingerprint_sha256", sa.Text(), nullable=False),
        sa.Column("pem_chain", sa.Text(), nullable=False),
        sa.Column("csr_pem", sa.Text(), server_default="", nullable=False),
        sa.Column("key_algorithm", sa.Text(), server_default="", nullable=False),
        sa.Column("key_size", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["managed_certificates.id"],
            name=op.f("fk_certificate_versions_certificate_id_managed_certificates"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificate_versions")),
        sa.UniqueConstraint("fingerprint_sha256", name=op.f("uq_certificate_versions_fingerprint_sha256")),
    )
    with op.batch_alter_table("certificate_versions", schema=None) as batch_op:
        batch_op.create_index("ix_versions_cert_created", ["certificate_id", "created_at"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("certificate_id", sa.Text(), nullable=True),
        sa.Column("target_id", sa.Text(), nullable=True),
        sa.Column("agent_id", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default="Pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="3", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("deployment_result", JSONType, nullable=True),
        sa.Column("scheduled_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("verification_status", sa.Text(), nullable=True),
        sa.Column("verified_at", UTCDateTime(), nullable=True),
        sa.Column("verification_fingerprint", sa.Text(), nullable=True),
        sa.Column("verification_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_jobs_agent_id_agents"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["managed_certificates.id"],
            name=op.f("fk_jobs_certificate_id_managed_certificates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["deployment_targets.id"],
            name=op.f("fk_jobs_target_id_deployment_targets"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_agent", ["agent_id"], unique=False)
        batch_op.create_index("ix_jobs_certificate", ["certificate_id"], unique=False)
        batch_op.create_index("ix_jobs_created", ["created_at"], unique=False)
        batch_op.create_index("ix_jobs_status_scheduled", ["status", "scheduled_at"], unique=False)

    op.create_table(
        "notification_events",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("certificate_id", sa.Text(), nullable=True),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("recipient", sa.Text(), server_default="", nullable=False),
        sa.Column("message", sa.Text(), server_default="", nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("retry_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_retry_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["managed_certificates.id"],
            name=op.f("fk_notification_events_certificate_id_managed_certificates"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_events")),
    )
    with op.batch_alter_table("notification_events", schema=None) as batch_op:
        batch_op.create_index("ix_notifications_status", ["status", "next_retry_at"], unique=False)

    op.create_table(
        "policy_violations",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("certificate_id", sa.Text(), nullable=False),
        sa.Column("rule_id", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["managed_certificates.id"],
            name=op.f("fk_policy_violations_certificate_id_managed_certificates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["policy_rules.id"],
            name=op.f("fk_policy_violations_rule_id_policy_rules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_violations")),
    )
    with op.batch_alter_table("policy_violations", schema=None) as batch_op:
        batch_op.create_index("ix_violations_cert", ["certificate_id"], unique=False)
        batch_op.create_index("ix_violations_rule", ["rule_id", "created_at"], unique=False)

    op.create_table(
        "issuance_approval_requests",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("certificate_id", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("profile_id", sa.Text(), server_default="", nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), server_default="pending", nullable=False),
        sa.Column("decided_by", sa.Text(), nullable=True),
        sa.Column("decided_at", UTCDateTime(), nullable=True),
        sa.Column("decision_note", sa.Text(), nullable=True),
        sa.Column("metadata", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["managed_certificates.id"],
            name=op.f("fk_issuance_approval_requests_certificate_id_managed_certificates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_issuance_approval_requests_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_issuance_approval_requests")),
    )
    with op.batch_alter_table("issuance_approval_requests", schema=None) as batch_op:
        batch_op.create_index(
            "uq_approval_pending_job",
            ["job_id"],
            unique=True,
            postgresql_where=sa.text("state = 'pending'"),
            sqlite_where=sa.text("state = 'pending'"),
        )
    _make_audit_append_only()


_PG_AUDIT_GUARD = """
CREATE OR REPLACE FUNCTION certctl_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql
"""


def _make_audit_append_only() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_AUDIT_GUARD)
        op.execute(
            "CREATE TRIGGER audit_events_no_update_delete BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION certctl_audit_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION certctl_audit_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_events_no_{verb.lower()} BEFORE {verb} ON audit_events "
                f"BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: {verb} is not allowed'); END"
            )


def _drop_audit_guard() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_update_delete ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS certctl_audit_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")


def downgrade() -> None:
    _drop_audit_guard()
    with op.batch_alter_table("issuance_approval_requests", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_approval_pending_job",
            postgresql_where=sa.text("state = 'pending'"),
            sqlite_where=sa.text("state = 'pending'"),
        )

    op.drop_table("issuance_approval_requests")
    with op.batch_alter_table("policy_violations", schema=None) as batch_op:
        batch_op.drop_index("ix_violations_rule")
        batch_op.drop_index("ix_violations_cert")

    op.drop_table("policy_violations")
    with op.batch_alter_table("notification_events", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_status")

    op.drop_table("notification_events")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_scheduled")
        batch_op.drop_index("ix_jobs_created")
        batch_op.drop_index("ix_jobs_certificate")
        batch_op.drop_index("ix_jobs_agent")

    op.drop_table("jobs")
    with op.batch_alter_table("certificate_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_versions_cert_created")

    op.drop_table("certificate_versions")
    with op.batch_alter_table("certificate_target_mappings", schema=None) as batch_op:
        batch_op.drop_index("ix_mappings_target")

    op.drop_table("certificate_target_mappings")
    with op.batch_alter_table("managed_certificates", schema=None) as batch_op:
        batch_op.drop_index("ix_certs_updated")
        batch_op.drop_index("ix_certs_team_expires")
        batch_op.drop_index("ix_certs_team")
        batch_op.drop_index("ix_certs_status_expires")
        batch_op.drop_index("ix_certs_owner_expires")
        batch_op.drop_index("ix_certs_status_created")
        batch_op.drop_index("ix_certs_profile")
        batch_op.drop_index("ix_certs_policy")
        batch_op.drop_index("ix_certs_owner")
        batch_op.drop_index("ix_certs_issuer")
        batch_op.drop_index("ix_certs_expires")
        batch_op.drop_index("ix_certs_environment")
        batch_op.drop_index("ix_certs_created")
        batch_op.drop_index("ix_certs_common_name")

    op.drop_table("managed_certificates")
    op.drop_table("renewal_policies")
    with op.batch_alter_table("owners", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_owners_team_id"))

    op.drop_table("owners")
    with op.batch_alter_table("deployment_targets", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_targets_agent_name_live",
            postgresql_where=sa.text("retired_at IS NULL"),
            sqlite_where=sa.text("retired_at IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_deployment_targets_agent_id"))

    op.drop_table("deployment_targets")
    op.drop_table("agent_group_members")
    op.drop_table("teams")
    op.drop_table("policy_rules")
    op.drop_table("issuers")
    op.drop_table("certificate_profiles")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_timestamp")
        batch_op.drop_index("ix_audit_resource")
        batch_op.drop_index("ix_audit_actor")

    op.drop_table("audit_events")
    op.drop_table("api_keys")
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_agents_active",
            postgresql_where=sa.text("retired_at IS NULL"),
            sqlite_where=sa.text("retired_at IS NULL"),
        )

    op.drop_table("agents")
    op.drop_table("agent_groups")
