"""Release jobs, their per-platform tasks, and the portability registry.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "release_jobs",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("carrier_id", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("request_digest", sa.LargeBinary(32), nullable=False),
        sa.Column("number_key", sa.String(64), nullable=False),
        sa.Column("purpose", sa.SmallInteger, nullable=False),
        sa.Column("claim", sa.LargeBinary, nullable=True),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("deadline_us", sa.BigInteger, nullable=False),
        sa.Column("done_us", sa.BigInteger, nullable=True),
        sa.UniqueConstraint("carrier_id", "request_id", name="uq_release_jobs_request"),
    )
    op.create_table(
        "release_tasks",
        sa.Column("job_id", sa.String(32), sa.ForeignKey("release_jobs.job_id"), primary_key=True),
        sa.Column("platform_id", sa.String(32), primary_key=True),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("outcome", sa.SmallInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_us", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until_us", sa.BigInteger, nullable=True),
        sa.Column("result", sa.LargeBinary, nullable=True),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_release_tasks_due", "release_tasks", ["state", "next_attempt_us"])
    op.create_table(
        "portability",
        sa.Column("number_key", sa.String(64), primary_key=True),
        sa.Column("carrier_id", sa.String(32), nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("portability")
    op.drop_index("ix_release_tasks_due", "release_tasks")
    op.drop_table("release_tasks")
    op.drop_table("release_jobs")
