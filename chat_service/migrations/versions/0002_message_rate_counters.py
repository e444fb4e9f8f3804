"""message rate counters

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_rate_counters",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("window_minute", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_message_rate_counters")),
    )


def downgrade() -> None:
    op.drop_table("message_rate_counters")
