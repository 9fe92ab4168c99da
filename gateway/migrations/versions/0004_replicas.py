"""Several replicas: lease start on tasks, the record of every lease, leased event cursors.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("release_tasks") as batch:
        batch.add_column(sa.Column("lease_from_us", sa.BigInteger, nullable=True))
    op.create_table(
        "task_leases",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("platform_id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("from_us", sa.BigInteger, nullable=False),
        sa.Column("until_us", sa.BigInteger, nullable=False),
        sa.Column("finished", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("job_id", "platform_id", "owner", "from_us"),
    )
    with op.batch_alter_table("event_cursors") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lease_until_us", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("event_cursors") as batch:
        batch.drop_column("lease_until_us")
        batch.drop_column("lease_owner")
    op.drop_table("task_leases")
    with op.batch_alter_table("release_tasks") as batch:
        batch.drop_column("lease_from_us")
