"""Notifications: dedup key and delivery lease on notification_events, the outbox cursor.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from certctl.store.types import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notification_events") as batch:
        batch.add_column(sa.Column("dedup_key", sa.Text(), nullable=True))
        batch.add_column(sa.Column("claimed_by", sa.Text(), nullable=True))
        batch.add_column(sa.Column("claim_expires_at", UTCDateTime(), nullable=True))
    op.create_index("uq_notification_events_dedup_key_channel", "notification_events", ["dedup_key", "channel"],
                    unique=True)
    op.create_index("ix_notification_events_certificate", "notification_events", ["certificate_id"])
    op.create_table(
        "notification_cursors",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("timestamp", UTCDateTime(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_notification_cursors")),
    )


def downgrade() -> None:
    op.drop_table("notification_cursors")
    op.drop_index("ix_notification_events_certificate", table_name="notification_events")
    op.drop_index("uq_notification_events_dedup_key_channel", table_name="notification_events")
    with op.batch_alter_table("notification_events") as batch:
        batch.drop_column("claim_expires_at")
        batch.drop_column("claimed_by")
        batch.drop_column("dedup_key")
