"""Audit events by action and time: the notification outbox reads the few events that notify among all of them.

Without it, each outbox run (every minute) walked every audit event of its ten-minute lookback by time and kept
the few with a notifying action: at 500 API calls/s, each audited, that was ~300,000 rows and ~80 ms of one core,
long enough to show in the API's tail latency on a two-core machine.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_audit_action_timestamp", "audit_events", ["action", "timestamp", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_action_timestamp", table_name="audit_events")
