"""ACME server: accounts, orders, authorizations, challenges, nonces, external account binding keys.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from certctl.store.types import JSONType, UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "acme_eab_keys",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("profile_id", sa.Text(), nullable=True),
        sa.Column("sealed_hmac_key", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("account_id", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["profile_id"], ["certificate_profiles.id"],
                                name=op.f("fk_acme_eab_keys_profile_id_certificate_profiles"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_eab_keys")),
    )
    op.create_table(
        "acme_accounts",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("profile_id", sa.Text(), nullable=False),
        sa.Column("thumbprint", sa.Text(), nullable=False),
        sa.Column("jwk", JSONType, nullable=False),
        sa.Column("status", sa.Text(), server_default="valid", nullable=False),
        sa.Column("contact", JSONType, nullable=False),
        sa.Column("terms_agreed", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("eab_key_id", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["profile_id"], ["certificate_profiles.id"],
                                name=op.f("fk_acme_accounts_profile_id_certificate_profiles"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_accounts")),
    )
    op.create_index("uq_acme_accounts_profile_thumbprint", "acme_accounts", ["profile_id", "thumbprint"], unique=True)
    op.create_table(
        "acme_orders",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("profile_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("identifiers", JSONType, nullable=False),
        sa.Column("not_before", UTCDateTime(), nullable=True),
        sa.Column("not_after", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("error", JSONType, nullable=True),
        sa.Column("certificate_id", sa.Text(), nullable=True),
        sa.Column("version_id", sa.Text(), nullable=True),
        sa.Column("replaces", sa.Text(), nullable=True),
        sa.Column("replaces_order_id", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["acme_accounts.id"],
                                name=op.f("fk_acme_orders_account_id_acme_accounts"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_orders")),
    )
    op.create_index("ix_acme_orders_account", "acme_orders", ["account_id", "created_at", "id"], unique=False)
    op.create_index("ix_acme_orders_status_expires", "acme_orders", ["status", "expires_at"], unique=False)
    op.create_index("ix_acme_orders_version", "acme_orders", ["version_id"], unique=False)
    op.create_index("uq_acme_orders_replaces", "acme_orders", ["replaces_order_id"], unique=True,
                    postgresql_where=sa.text("replaces_order_id IS NOT NULL"),
                    sqlite_where=sa.text("replaces_order_id IS NOT NULL"))
    op.create_table(
        "acme_authorizations",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("order_id", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("identifier_type", sa.Text(), nullable=False),
        sa.Column("identifier_value", sa.Text(), nullable=False),
        sa.Column("wildcard", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["acme_orders.id"],
                                name=op.f("fk_acme_authorizations_order_id_acme_orders"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_authorizations")),
    )
    op.create_index("ix_acme_authorizations_order", "acme_authorizations", ["order_id"], unique=False)
    op.create_table(
        "acme_challenges",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("authz_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("validated_at", UTCDateTime(), nullable=True),
        sa.Column("error", JSONType, nullable=True),
        sa.Column("validation_record", JSONType, nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["authz_id"], ["acme_authorizations.id"],
                                name=op.f("fk_acme_challenges_authz_id_acme_authorizations"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_challenges")),
    )
    op.create_index("ix_acme_challenges_authz", "acme_challenges", ["authz_id"], unique=False)
    op.create_index("ix_acme_challenges_status_updated", "acme_challenges", ["status", "updated_at"], unique=False)
    op.create_table(
        "acme_nonces",
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("value", name=op.f("pk_acme_nonces")),
    )
    op.create_index("ix_acme_nonces_expires", "acme_nonces", ["expires_at"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        # Spending a nonce is one INSERT per ACME request: unlogged, it writes no WAL and its commit waits for no
        # disk flush. The table is emptied by a PostgreSQL crash (and is not on streaming replicas), which at
        # worst lets a nonce spent in the last CERTCTL_ACME_SERVER_NONCE_TTL be used once more (docs/acme.md).
        op.execute("ALTER TABLE acme_nonces SET UNLOGGED")


def downgrade() -> None:
    op.drop_index("ix_acme_nonces_expires", table_name="acme_nonces")
    op.drop_table("acme_nonces")
    op.drop_index("ix_acme_challenges_status_updated", table_name="acme_challenges")
    op.drop_index("ix_acme_challenges_authz", table_name="acme_challenges")
    op.drop_table("acme_challenges")
    op.drop_index("ix_acme_authorizations_order", table_name="acme_authorizations")
    op.drop_table("acme_authorizations")
    op.drop_index("uq_acme_orders_replaces", table_name="acme_orders")
    op.drop_index("ix_acme_orders_version", table_name="acme_orders")
    op.drop_index("ix_acme_orders_status_expires", table_name="acme_orders")
    op.drop_index("ix_acme_orders_account", table_name="acme_orders")
    op.drop_table("acme_orders")
    op.drop_index("uq_acme_accounts_profile_thumbprint", table_name="acme_accounts")
    op.drop_table("acme_accounts")
    op.drop_table("acme_eab_keys")
