"""OpenID Shared Signals streams and the SETs acknowledged ahead of a receiver's cursor.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ssf_streams",
        sa.Column("platform_id", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("events_requested", sa.String, nullable=True),
        sa.Column("endpoint_url", sa.String(2048), nullable=True),
        sa.Column("authorization_header", sa.String(4096), nullable=True),
        sa.Column("description", sa.String(400), nullable=True),
        sa.Column("verification_jti", sa.String(64), nullable=True),
        sa.Column("verification_state", sa.String(600), nullable=True),
        sa.Column("verification_us", sa.BigInteger, nullable=True),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "ssf_acks",
        sa.Column("platform_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("event_index", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("platform_id", "seq", "event_index"),
    )


def downgrade() -> None:
    op.drop_table("ssf_acks")
    op.drop_table("ssf_streams")
