"""One claim, one job (a unique claim digest on release jobs); what each platform was delivered.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op
from google.protobuf.message import DecodeError

from numfed.v1 import claim_pb2

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _claim_digest(carrier_id: str, claim_id: bytes) -> bytes:
    """As ``gateway.store.claim_digest`` at this revision (a migration keeps its own copy)."""
    return hashlib.sha256(
        b"numfed/release-claim\x00" + carrier_id.encode() + b"\x00" + claim_id
    ).digest()


def _backfill_claim_digests() -> None:
    """Jobs that still hold their claim get its digest (the oldest job first keeps it)."""
    jobs = sa.table(
        "release_jobs",
        sa.column("job_id", sa.String),
        sa.column("carrier_id", sa.String),
        sa.column("claim", sa.LargeBinary),
        sa.column("created_us", sa.BigInteger),
        sa.column("claim_digest", sa.LargeBinary),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(jobs.c.job_id, jobs.c.carrier_id, jobs.c.claim)
        .where(jobs.c.claim.is_not(None))
        .order_by(jobs.c.created_us, jobs.c.job_id)
    ).all()
    seen: set[bytes] = set()
    for job_id, carrier_id, raw in rows:
        try:
            payload = claim_pb2.Envelope.FromString(raw).payload
            claim_id = claim_pb2.TenureClaim.FromString(payload).claim_id
        except DecodeError:
            continue
        digest = _claim_digest(carrier_id, claim_id)
        if not claim_id or digest in seen:
            continue
        seen.add(digest)
        conn.execute(sa.update(jobs).where(jobs.c.job_id == job_id).values(claim_digest=digest))


def upgrade() -> None:
    with op.batch_alter_table("release_jobs") as batch:
        batch.add_column(sa.Column("claim_digest", sa.LargeBinary(32), nullable=True))
    _backfill_claim_digests()
    op.create_index("uq_release_jobs_claim", "release_jobs", ["claim_digest"], unique=True)
    with op.batch_alter_table("event_cursors") as batch:
        batch.add_column(
            sa.Column("delivered_seq", sa.BigInteger, nullable=False, server_default="0")
        )
    # What was delivered before this revision is not known: the log's head bounds it. (A poll
    # platform holding batches it has not acknowledged yet must not be refused their ack.)
    op.execute(
        "UPDATE event_cursors SET delivered_seq = (SELECT COALESCE(MAX(seq), 0) FROM event_batches)"
    )


def downgrade() -> None:
    with op.batch_alter_table("event_cursors") as batch:
        batch.drop_column("delivered_seq")
    op.drop_index("uq_release_jobs_claim", table_name="release_jobs")
    with op.batch_alter_table("release_jobs") as batch:
        batch.drop_column("claim_digest")
