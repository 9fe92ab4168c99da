"""The days each platform asked the recycled check about, per number (the probe budget).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recycled_asked_dates",
        sa.Column("platform_id", sa.String(32), nullable=False),
        sa.Column("number_key", sa.String(64), nullable=False),
        sa.Column("specified_date", sa.Date, nullable=False),
        sa.Column("asked_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("platform_id", "number_key", "specified_date"),
    )


def downgrade() -> None:
    op.drop_table("recycled_asked_dates")
