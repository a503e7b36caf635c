"""ACME issuer connector: persisted ACME client accounts and ARI renewal hints.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from certctl.store.types import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "acme_client_accounts",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("issuer_id", sa.Text(), nullable=False),
        sa.Column("directory_url", sa.Text(), nullable=False),
        sa.Column("account_url", sa.Text(), nullable=True),
        sa.Column("contact", sa.Text(), server_default="", nullable=False),
        sa.Column("sealed_key", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["issuer_id"], ["issuers.id"],
                                name=op.f("fk_acme_client_accounts_issuer_id_issuers"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_client_accounts")),
    )
    op.create_index("uq_acme_client_accounts_issuer_directory", "acme_client_accounts",
                    ["issuer_id", "directory_url"], unique=True)
    op.create_table(
        "acme_renewal_info",
        sa.Column("version_id", sa.Text(), nullable=False),
        sa.Column("certificate_id", sa.Text(), nullable=False),
        sa.Column("issuer_id", sa.Text(), nullable=False),
        sa.Column("ari_cert_id", sa.Text(), nullable=False),
        sa.Column("window_start", UTCDateTime(), nullable=True),
        sa.Column("window_end", UTCDateTime(), nullable=True),
        sa.Column("renew_at", UTCDateTime(), nullable=True),
        sa.Column("explanation_url", sa.Text(), nullable=True),
        sa.Column("next_check_at", UTCDateTime(), nullable=False),
        sa.Column("checked_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["certificate_id"], ["managed_certificates.id"],
                                name=op.f("fk_acme_renewal_info_certificate_id_managed_certificates"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["version_id"], ["certificate_versions.id"],
                                name=op.f("fk_acme_renewal_info_version_id_certificate_versions"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_acme_renewal_info")),
    )
    op.create_index("ix_acme_renewal_info_certificate", "acme_renewal_info", ["certificate_id"])
    op.create_index("ix_acme_renewal_info_next_check", "acme_renewal_info", ["next_check_at"])
    op.create_index("ix_acme_renewal_info_renew_at", "acme_renewal_info", ["renew_at"])


def downgrade() -> None:
    op.drop_index("ix_acme_renewal_info_renew_at", table_name="acme_renewal_info")
    op.drop_index("ix_acme_renewal_info_next_check", table_name="acme_renewal_info")
    op.drop_index("ix_acme_renewal_info_certificate", table_name="acme_renewal_info")
    op.drop_table("acme_renewal_info")
    op.drop_index("uq_acme_client_accounts_issuer_directory", table_name="acme_client_accounts")
    op.drop_table("acme_client_accounts")
