"""Big certificate-list totals shared by every server process (certificate_list_counts).

Each worker and replica used to count the same big filter itself: with two workers on two cores, two counts of
700,000 rows at once, and a worker that had never served a filter counted it in the request, with parallel
workers, while the other one served from its cache.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "certificate_list_counts",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("counted_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_certificate_list_counts")),
    )


def downgrade() -> None:
    op.drop_table("certificate_list_counts")
