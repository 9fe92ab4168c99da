"""The gateway's tables (SQLAlchemy Core). Alembic migrations in ``migrations/`` create them.

Times are integer microseconds since the Unix epoch (UTC) so that SQLite and PostgreSQL compare
them the same way. Numbers are stored only as keyed pseudonyms (``number_key``); a job keeps the
signed claim only while it has platforms left to answer.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
)

from numfed.portstate import port_tables

metadata = MetaData()

release_jobs = Table(
    "release_jobs",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("carrier_id", String(32), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("request_digest", LargeBinary(32), nullable=False),
    Column("number_key", String(64), nullable=False),
    Column("purpose", SmallInteger, nullable=False),
    Column("claim", LargeBinary, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("deadline_us", BigInteger, nullable=False),
    Column("done_us", BigInteger, nullable=True),
    Column("claim_digest", LargeBinary(32), nullable=True),
    # The W3C traceparent of the call that made the job, so its dispatch continues the trace.
    Column("trace_context", String(64), nullable=True),
    UniqueConstraint("carrier_id", "request_id", name="uq_release_jobs_request"),
    # One release claim, one job: SHA-256 of (carrier, claim_id), unique (NULL for jobs made
    # before revision 0006 whose claim was already dropped).
    Index("uq_release_jobs_claim", "claim_digest", unique=True),
)

release_tasks = Table(
    "release_tasks",
    metadata,
    Column("job_id", String(32), ForeignKey("release_jobs.job_id"), primary_key=True),
    Column("platform_id", String(32), primary_key=True),
    Column("state", SmallInteger, nullable=False),
    Column("outcome", SmallInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_us", BigInteger, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until_us", BigInteger, nullable=True),
    Column("result", LargeBinary, nullable=True),
    Column("updated_us", BigInteger, nullable=False),
    Column("lease_from_us", BigInteger, nullable=True),
    Index("ix_release_tasks_due", "state", "next_attempt_us"),
)

task_leases = Table(
    "task_leases",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("platform_id", String(32), primary_key=True),
    Column("owner", String(64), primary_key=True),
    Column("from_us", BigInteger, primary_key=True),
    Column("until_us", BigInteger, nullable=False),
    Column("finished", Boolean, nullable=False),
)
"""Every lease a replica was granted on a task, from grant to release, expiry or outcome: the
database's own record that no task was held by two replicas at once."""

number_ports, port_halves = port_tables(metadata)
"""Who serves which number beyond the numbering plan: completed ports and pending halves, by
number pseudonym (numfed/portstate.py, docs/authority.md)."""

recycled_asked_dates = Table(
    "recycled_asked_dates",
    metadata,
    Column("platform_id", String(32), primary_key=True),
    Column("number_key", String(64), primary_key=True),
    Column("specified_date", Date, primary_key=True),
    Column("asked_us", BigInteger, nullable=False),
)
"""The days each platform asked the recycled check about, per number: the probe budget's memory
(``gateway/probing.py``). ``asked_us`` is when the platform first asked about the day in the
current window; a day whose window passed is dropped the next time the platform asks about the
number, so a (platform, number) keeps at most a budget's worth of rows."""

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at_us", BigInteger, nullable=False),
    Column("event", String(32), nullable=False),
    Column("actor", String(96), nullable=False),
    Column("number_key", String(64), nullable=False),
    Column("outcome", String(64), nullable=False),
    Column("detail", String, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("head", String(64), nullable=False),
    Column("issued_us", BigInteger, nullable=False),
    Column("envelope", LargeBinary, nullable=False),
)
"""The checkpoints the gateway signed of its own audit log (``gateway/checkpoints.py``): one per
size, so no replica ever signs a second head for a size; ``head`` is the hex hash of entry
``size`` and ``envelope`` the signed ``numfed.v1.Checkpoint`` as handed to members."""

event_batches = Table(
    "event_batches",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("carrier_id", String(32), nullable=False),
    Column("received_us", BigInteger, nullable=False),
    Column("events", Integer, nullable=False),
    Column("envelope", LargeBinary, nullable=False),
)

event_cursors = Table(
    "event_cursors",
    metadata,
    Column("platform_id", String(32), primary_key=True),
    Column("acked_seq", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until_us", BigInteger, nullable=True),
    Column("delivered_seq", BigInteger, nullable=False, server_default="0"),
)
"""``acked_seq``: what the platform acknowledged; ``delivered_seq``: the highest seq the gateway
delivered to it (returned by PullEvents, or sent in a DeliverEvents call that was answered). A
platform can acknowledge only what it was delivered: ``acked_seq <= delivered_seq``."""

ssf_streams = Table(
    "ssf_streams",
    metadata,
    Column("platform_id", String(32), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("reason", String(200), nullable=True),
    Column("events_requested", String, nullable=True),
    Column("endpoint_url", String(2048), nullable=True),
    Column("authorization_header", String(4096), nullable=True),
    Column("description", String(400), nullable=True),
    Column("verification_jti", String(64), nullable=True),
    Column("verification_state", String(600), nullable=True),
    Column("verification_us", BigInteger, nullable=True),
    Column("updated_us", BigInteger, nullable=False),
)
"""One OpenID Shared Signals stream per platform whose events go by SSF (``events =
"ssf-push"`` or ``"ssf-poll"``): what the receiver configured (events requested, as a JSON
array, None for all; its push endpoint; a description), the status it set (enabled or paused),
and the verification event it asked for and has not acknowledged yet. Delivery itself uses the
platform's row in ``event_cursors`` like every other method (gateway/facades/ssf)."""

ssf_acks = Table(
    "ssf_acks",
    metadata,
    Column("platform_id", String(32), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("event_index", Integer, primary_key=True),
)
"""SETs a polling receiver acknowledged (by ``jti``) in batches its cursor has not passed yet:
the cursor moves past a batch once every SET of it is acknowledged, and the rows of the
batches it passed are deleted, so a platform keeps at most the SETs it holds unacknowledged."""
