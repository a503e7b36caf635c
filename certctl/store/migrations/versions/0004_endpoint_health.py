"""Endpoint health checks (TLS probe monitor) and their probe history.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from certctl.store.types import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "endpoint_health_checks",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("server_name", sa.Text(), nullable=True),
        sa.Column("certificate_id", sa.Text(), nullable=True),
        sa.Column("network_scan_target_id", sa.Text(), nullable=True),
        sa.Column("expected_fingerprint", sa.Text(), nullable=True),
        sa.Column("observed_fingerprint", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default="Unknown", nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("check_interval_seconds", sa.Integer(), server_default="300", nullable=False),
        sa.Column("timeout_ms", sa.Integer(), server_default="5000", nullable=False),
        sa.Column("degraded_threshold", sa.Integer(), server_default="2", nullable=False),
        sa.Column("down_threshold", sa.Integer(), server_default="5", nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("response_time_ms", sa.Integer(), nullable=True),
        sa.Column("tls_version", sa.Text(), nullable=True),
        sa.Column("cipher_suite", sa.Text(), nullable=True),
        sa.Column("cert_subject", sa.Text(), nullable=True),
        sa.Column("cert_issuer", sa.Text(), nullable=True),
        sa.Column("cert_not_after", UTCDateTime(), nullable=True),
        sa.Column("last_checked_at", UTCDateTime(), nullable=True),
        sa.Column("last_success_at", UTCDateTime(), nullable=True),
        sa.Column("last_failure_at", UTCDateTime(), nullable=True),
        sa.Column("last_transition_at", UTCDateTime(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("acknowledged", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("acknowledged_by", sa.Text(), nullable=True),
        sa.Column("acknowledged_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["certificate_id"], ["managed_certificates.id"],
            name=op.f("fk_endpoint_health_checks_certificate_id_managed_certificates"), ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["network_scan_target_id"], ["network_scan_targets.id"],
            name=op.f("fk_endpoint_health_checks_network_scan_target_id_network_scan_targets"), ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endpoint_health_checks")),
    )
    op.create_index(
        op.f("ix_endpoint_health_checks_certificate_id"), "endpoint_health_checks", ["certificate_id"], unique=False
    )
    op.create_index(
        op.f("ix_endpoint_health_checks_network_scan_target_id"), "endpoint_health_checks",
        ["network_scan_target_id"], unique=False,
    )
    op.create_index("ix_health_checks_status", "endpoint_health_checks", ["status", "created_at", "id"], unique=False)
    op.create_table(
        "endpoint_health_history",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("health_check_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("response_time_ms", sa.Integer(), nullable=True),
        sa.Column("observed_fingerprint", sa.Text(), nullable=True),
        sa.Column("tls_version", sa.Text(), nullable=True),
        sa.Column("cipher_suite", sa.Text(), nullable=True),
        sa.Column("cert_subject", sa.Text(), nullable=True),
        sa.Column("cert_issuer", sa.Text(), nullable=True),
        sa.Column("cert_not_before", UTCDateTime(), nullable=True),
        sa.Column("cert_not_after", UTCDateTime(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("checked_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["health_check_id"], ["endpoint_health_checks.id"],
            name=op.f("fk_endpoint_health_history_health_check_id_endpoint_health_checks"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endpoint_health_history")),
    )
    op.create_index(
        "ix_health_history_check", "endpoint_health_history", ["health_check_id", "checked_at", "id"], unique=False
    )
    op.create_index("ix_health_history_checked", "endpoint_health_history", ["checked_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_health_history_checked", table_name="endpoint_health_history")
    op.drop_index("ix_health_history_check", table_name="endpoint_health_history")
    op.drop_table("endpoint_health_history")
    op.drop_index("ix_health_checks_status", table_name="endpoint_health_checks")
    op.drop_index(op.f("ix_endpoint_health_checks_network_scan_target_id"), table_name="endpoint_health_checks")
    op.drop_index(op.f("ix_endpoint_health_checks_certificate_id"), table_name="endpoint_health_checks")
    op.drop_table("endpoint_health_checks")
