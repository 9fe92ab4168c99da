"""Ports need both carriers: completed ports and pending halves replace the synced registry.

The old ``portability`` table held whatever each carrier last listed, one party's word; its rows
are not carried over. Serving carriers now come from the numbering plan in the trust bundle and
from ports both donor and recipient signed (docs/authority.md); carriers hand their signed port
halves to the gateway at the next sync.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("portability")
    op.create_table(
        "number_ports",
        sa.Column("number_key", sa.String(64), primary_key=True),
        sa.Column("carrier_id", sa.String(32), nullable=False),
        sa.Column("from_carrier", sa.String(32), nullable=False),
        sa.Column("ported_us", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_number_ports_seq", "number_ports", ["seq"])
    op.create_table(
        "port_halves",
        sa.Column("number_key", sa.String(64), nullable=False),
        sa.Column("ported_us", sa.BigInteger, nullable=False),
        sa.Column("from_carrier", sa.String(32), nullable=False),
        sa.Column("to_carrier", sa.String(32), nullable=False),
        sa.Column("signer", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("number_key", "ported_us", "from_carrier", "to_carrier", "signer"),
    )


def downgrade() -> None:
    op.drop_table("port_halves")
    op.drop_index("ix_number_ports_seq", "number_ports")
    op.drop_table("number_ports")
    op.create_table(
        "portability",
        sa.Column("number_key", sa.String(64), primary_key=True),
        sa.Column("carrier_id", sa.String(32), nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
