"""CA engine: the CA hierarchy, revocations, CRL cache, OCSP responders, scheduler leases.

Also links each certificate version to the CA and the job that produced it (one version per job
at most), keeps server-generated private keys sealed, and gives jobs a CSR column and a lease.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from certctl.store.types import JSONType, UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "certificate_revocations",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("issuer_id", sa.Text(), nullable=False),
        sa.Column("ca_id", sa.Text(), nullable=True),
        sa.Column("serial_number", sa.Text(), nullable=False),
        sa.Column("certificate_id", sa.Text(), nullable=True),
        sa.Column("version_id", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("reason_code", sa.Integer(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_by", sa.Text(), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=True),
        sa.Column("short_lived", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("issuer_notified", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificate_revocations")),
    )
    op.create_index("ix_revocations_ca", "certificate_revocations", ["ca_id", "serial_number"], unique=False)
    op.create_index("ix_revocations_certificate", "certificate_revocations", ["certificate_id"], unique=False)
    op.create_index("ix_revocations_created", "certificate_revocations", ["created_at"], unique=False)
    op.create_index(
        "uq_revocations_issuer_serial", "certificate_revocations", ["issuer_id", "serial_number"], unique=True
    )
    op.create_table(
        "crl_generation_events",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("ca_id", sa.Text(), nullable=False),
        sa.Column("issuer_id", sa.Text(), nullable=False),
        sa.Column("crl_number", sa.BigInteger(), nullable=True),
        sa.Column("entries", sa.Integer(), server_default="0", nullable=False),
        sa.Column("duration_ms", sa.Integer(), server_default="0", nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crl_generation_events")),
    )
    op.create_index("ix_crl_events_ca", "crl_generation_events", ["ca_id", "created_at"], unique=False)
    op.create_table(
        "scheduler_leases",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_leases")),
    )
    op.create_table(
        "intermediate_cas",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("owning_issuer_id", sa.Text(), nullable=False),
        sa.Column("parent_ca_id", sa.Text(), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("subject", JSONType, nullable=False),
        sa.Column("state", sa.Text(), server_default="active", nullable=False),
        sa.Column("cert_pem", sa.Text(), nullable=False),
        sa.Column("external_chain_pem", sa.Text(), server_default="", nullable=False),
        sa.Column("key_driver_id", sa.Text(), nullable=False),
        sa.Column("key_algorithm", sa.Text(), nullable=False),
        sa.Column("serial_number", sa.Text(), nullable=False),
        sa.Column("not_before", UTCDateTime(), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=False),
        sa.Column("path_len_constraint", sa.Integer(), nullable=True),
        sa.Column("name_constraints", JSONType, nullable=False),
        sa.Column("ocsp_responder_url", sa.Text(), server_default="", nullable=False),
        sa.Column("metadata", JSONType, nullable=False),
        sa.Column("retired_at", UTCDateTime(), nullable=True),
        sa.Column("retire_note", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owning_issuer_id"],
            ["issuers.id"],
            name=op.f("fk_intermediate_cas_owning_issuer_id_issuers"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["parent_ca_id"],
            ["intermediate_cas.id"],
            name=op.f("fk_intermediate_cas_parent_ca_id_intermediate_cas"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_intermediate_cas")),
    )
    op.create_index("ix_intermediate_cas_parent", "intermediate_cas", ["parent_ca_id"], unique=False)
    op.create_index(
        "uq_intermediate_cas_active_root",
        "intermediate_cas",
        ["owning_issuer_id"],
        unique=True,
        postgresql_where=sa.text("parent_ca_id IS NULL AND state = 'active'"),
        sqlite_where=sa.text("parent_ca_id IS NULL AND state = 'active'"),
    )
    op.create_index("uq_intermediate_cas_issuer_name", "intermediate_cas", ["owning_issuer_id", "name"], unique=True)
    op.create_table(
        "crl_cache",
        sa.Column("ca_id", sa.Text(), nullable=False),
        sa.Column("issuer_id", sa.Text(), nullable=False),
        sa.Column("crl_number", sa.BigInteger(), nullable=False),
        sa.Column("this_update", UTCDateTime(), nullable=False),
        sa.Column("next_update", UTCDateTime(), nullable=False),
        sa.Column("crl_der", sa.LargeBinary(), nullable=False),
        sa.Column("etag", sa.Text(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("revocations_seen", sa.Integer(), nullable=False),
        sa.Column("generated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ca_id"], ["intermediate_cas.id"], name=op.f("fk_crl_cache_ca_id_intermediate_cas"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("ca_id", name=op.f("pk_crl_cache")),
    )
    op.create_table(
        "ocsp_responders",
        sa.Column("ca_id", sa.Text(), nullable=False),
        sa.Column("cert_pem", sa.Text(), nullable=False),
        sa.Column("key_driver_id", sa.Text(), nullable=False),
        sa.Column("not_before", UTCDateTime(), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ca_id"],
            ["intermediate_cas.id"],
            name=op.f("fk_ocsp_responders_ca_id_intermediate_cas"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("ca_id", name=op.f("pk_ocsp_responders")),
    )
    op.create_table(
        "certificate_private_keys",
        sa.Column("version_id", sa.Text(), nullable=False),
        sa.Column("sealed_key", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["certificate_versions.id"],
            name=op.f("fk_certificate_private_keys_version_id_certificate_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_certificate_private_keys")),
    )
    with op.batch_alter_table("certificate_versions") as batch_op:
        batch_op.add_column(sa.Column("ca_id", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("job_id", sa.Text(), nullable=True))
        batch_op.create_index("ix_versions_serial", ["serial_number"], unique=False)
        batch_op.create_index(
            "uq_versions_ca_serial",
            ["ca_id", "serial_number"],
            unique=True,
            postgresql_where=sa.text("ca_id IS NOT NULL"),
            sqlite_where=sa.text("ca_id IS NOT NULL"),
        )
        batch_op.create_index(
            "uq_versions_job",
            ["job_id"],
            unique=True,
            postgresql_where=sa.text("job_id IS NOT NULL"),
            sqlite_where=sa.text("job_id IS NOT NULL"),
        )
        batch_op.create_foreign_key(
            op.f("fk_certificate_versions_ca_id_intermediate_cas"),
            "intermediate_cas",
            ["ca_id"],
            ["id"],
            ondelete="RESTRICT",
        )
    with op.batch_alter_table("certificate_profiles") as batch_op:
        batch_op.add_column(sa.Column("key_generation_mode", sa.Text(), server_default="", nullable=False))
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("csr_pem", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("certificate_profiles") as batch_op:
        batch_op.drop_column("key_generation_mode")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("claimed_by")
        batch_op.drop_column("csr_pem")
    with op.batch_alter_table("certificate_versions") as batch_op:
        batch_op.drop_constraint(op.f("fk_certificate_versions_ca_id_intermediate_cas"), type_="foreignkey")
        batch_op.drop_index(
            "uq_versions_job",
            postgresql_where=sa.text("job_id IS NOT NULL"),
            sqlite_where=sa.text("job_id IS NOT NULL"),
        )
        batch_op.drop_index(
            "uq_versions_ca_serial",
            postgresql_where=sa.text("ca_id IS NOT NULL"),
            sqlite_where=sa.text("ca_id IS NOT NULL"),
        )
        batch_op.drop_index("ix_versions_serial")
        batch_op.drop_column("job_id")
        batch_op.drop_column("ca_id")
    op.drop_table("certificate_private_keys")
    op.drop_table("ocsp_responders")
    op.drop_table("crl_cache")
    op.drop_index("uq_intermediate_cas_issuer_name", table_name="intermediate_cas")
    op.drop_index(
        "uq_intermediate_cas_active_root",
        table_name="intermediate_cas",
        postgresql_where=sa.text("parent_ca_id IS NULL AND state = 'active'"),
        sqlite_where=sa.text("parent_ca_id IS NULL AND state = 'active'"),
    )
    op.drop_index("ix_intermediate_cas_parent", table_name="intermediate_cas")
    op.drop_table("intermediate_cas")
    op.drop_table("scheduler_leases")
    op.drop_index("ix_crl_events_ca", table_name="crl_generation_events")
    op.drop_table("crl_generation_events")
    op.drop_index("uq_revocations_issuer_serial", table_name="certificate_revocations")
    op.drop_index("ix_revocations_created", table_name="certificate_revocations")
    op.drop_index("ix_revocations_certificate", table_name="certificate_revocations")
    op.drop_index("ix_revocations_ca", table_name="certificate_revocations")
    op.drop_table("certificate_revocations")
