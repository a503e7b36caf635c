"""Discovery: network scan targets, discovery scans, discovered certificates (dedup on fingerprint, agent, path).

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from certctl.store.types import JSONType, UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "network_scan_targets",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("cidrs", JSONType, nullable=False),
        sa.Column("ports", JSONType, nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("scan_interval_hours", sa.Integer(), server_default="6", nullable=False),
        sa.Column("timeout_ms", sa.Integer(), server_default="5000", nullable=False),
        sa.Column("last_scan_at", UTCDateTime(), nullable=True),
        sa.Column("last_scan_duration_ms", sa.Integer(), nullable=True),
        sa.Column("last_scan_certs_found", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_scan_targets")),
        sa.UniqueConstraint("name", name=op.f("uq_network_scan_targets_name")),
    )
    op.create_table(
        "discovery_scans",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("network_scan_target_id", sa.Text(), nullable=True),
        sa.Column("directories", JSONType, nullable=False),
        sa.Column("certificates_found", sa.Integer(), server_default="0", nullable=False),
        sa.Column("certificates_new", sa.Integer(), server_default="0", nullable=False),
        sa.Column("errors_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("errors", JSONType, nullable=False),
        sa.Column("scan_duration_ms", sa.Integer(), server_default="0", nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_discovery_scans_agent_id_agents"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["network_scan_target_id"],
            ["network_scan_targets.id"],
            name=op.f("fk_discovery_scans_network_scan_target_id_network_scan_targets"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_discovery_scans")),
    )
    op.create_index("ix_discovery_scans_agent", "discovery_scans", ["agent_id", "started_at", "id"], unique=False)
    op.create_index(
        op.f("ix_discovery_scans_network_scan_target_id"), "discovery_scans", ["network_scan_target_id"], unique=False
    )
    op.create_index("ix_discovery_scans_started", "discovery_scans", ["started_at", "id"], unique=False)
    op.create_table(
        "discovered_certificates",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("fingerprint_sha256", sa.Text(), nullable=False),
        sa.Column("common_name", sa.Text(), server_default="", nullable=False),
        sa.Column("sans", JSONType, nullable=False),
        sa.Column("serial_number", sa.Text(), server_default="", nullable=False),
        sa.Column("issuer_dn", sa.Text(), server_default="", nullable=False),
        sa.Column("subject_dn", sa.Text(), server_default="", nullable=False),
        sa.Column("not_before", UTCDateTime(), nullable=True),
        sa.Column("not_after", UTCDateTime(), nullable=True),
        sa.Column("key_algorithm", sa.Text(), server_default="", nullable=False),
        sa.Column("key_size", sa.Integer(), server_default="0", nullable=False),
        sa.Column("is_ca", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("pem_data", sa.Text(), server_default="", nullable=False),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("source_format", sa.Text(), server_default="PEM", nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("discovery_scan_id", sa.Text(), nullable=True),
        sa.Column("managed_certificate_id", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default="Unmanaged", nullable=False),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("dismissed_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_discovered_certificates_agent_id_agents"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["discovery_scan_id"],
            ["discovery_scans.id"],
            name=op.f("fk_discovered_certificates_discovery_scan_id_discovery_scans"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["managed_certificate_id"],
            ["managed_certificates.id"],
            name=op.f("fk_discovered_certificates_managed_certificate_id_managed_certificates"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_discovered_certificates")),
    )
    op.create_index(
        "ix_discovered_agent", "discovered_certificates", ["agent_id", "created_at", "id"], unique=False
    )
    op.create_index(
        op.f("ix_discovered_certificates_managed_certificate_id"),
        "discovered_certificates",
        ["managed_certificate_id"],
        unique=False,
    )
    op.create_index("ix_discovered_created", "discovered_certificates", ["created_at", "id"], unique=False)
    op.create_index("ix_discovered_not_after", "discovered_certificates", ["not_after"], unique=False)
    op.create_index(
        "ix_discovered_status", "discovered_certificates", ["status", "created_at", "id"], unique=False
    )
    op.create_index(
        "uq_discovered_fingerprint_agent_path",
        "discovered_certificates",
        ["fingerprint_sha256", "agent_id", "source_path"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_discovered_fingerprint_agent_path", table_name="discovered_certificates")
    op.drop_index("ix_discovered_status", table_name="discovered_certificates")
    op.drop_index("ix_discovered_not_after", table_name="discovered_certificates")
    op.drop_index("ix_discovered_created", table_name="discovered_certificates")
    op.drop_index(op.f("ix_discovered_certificates_managed_certificate_id"), table_name="discovered_certificates")
    op.drop_index("ix_discovered_agent", table_name="discovered_certificates")
    op.drop_table("discovered_certificates")
    op.drop_index("ix_discovery_scans_started", table_name="discovery_scans")
    op.drop_index(op.f("ix_discovery_scans_network_scan_target_id"), table_name="discovery_scans")
    op.drop_index("ix_discovery_scans_agent", table_name="discovery_scans")
    op.drop_table("discovery_scans")
    op.drop_table("network_scan_targets")
