"""SSF streams and delivery in the gateway database, over the event log's own cursor.

A platform's position is its row in ``event_cursors``, as for gRPC delivery: ``acked_seq``
moves only through :meth:`gateway.eventlog.EventLog.acknowledge`, never beyond
``delivered_seq``. SETs are per event and acknowledged one by one (by ``jti``), so the SETs a
receiver acknowledged in batches its cursor has not passed are kept in ``ssf_acks`` until it
passes them: the cursor moves past a batch once every SET of it that the stream delivers is
acknowledged. A ``jti`` that names no SET delivered and unacknowledged acknowledges nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway.eventlog import EventLog
from gateway.facades.ssf.sets import jti_of
from gateway.facades.ssf.streams import MIN_VERIFICATION_INTERVAL, Stream
from gateway.schema import event_cursors, ssf_acks, ssf_streams
from numfed.errors import ResourceExhausted
from numfed.events import LifecycleEvent
from numfed.v1 import claim_pb2, events_pb2

__all__ = ["Batch", "Polled", "StreamStore", "read_batch"]

WALK_BATCHES = 100
"""Most batches one poll looks through for SETs to return."""


@dataclass(frozen=True)
class Batch:
    """One signed batch of the log, read for its events."""

    seq: int
    carrier_id: str
    envelope: bytes
    events: tuple[LifecycleEvent, ...]


def read_batch(seq: int, raw: bytes) -> Batch:
    """A batch of the log with its events (verified when it was published)."""
    envelope = claim_pb2.Envelope.FromString(raw)
    pb = events_pb2.EventBatch.FromString(envelope.payload)
    return Batch(seq, pb.carrier_id, raw, tuple(LifecycleEvent.from_proto(e) for e in pb.events))


@dataclass
class Polled:
    """What one poll did and returns."""

    stream: Stream
    sets: list[tuple[Batch, int]] = field(default_factory=list)
    """(batch, index of the event in it) of each SET to return, in log order."""
    more: bool = False
    cursor_before: int = 0
    cursor_after: int = 0
    verification_acknowledged: bool = False


def _insert(c: sa.Connection) -> type[sqlite.Insert] | type[postgresql.Insert]:
    return postgresql.Insert if c.dialect.name == "postgresql" else sqlite.Insert


class StreamStore:
    """Streams (``ssf_streams``) and poll delivery over the event log."""

    def __init__(self, engine: sa.Engine, events: EventLog) -> None:
        self.engine = engine
        self.events = events

    # -- streams -------------------------------------------------------------------------------

    def _ensure(self, c: sa.Connection, platform_id: str, now_us: int) -> None:
        insert = (postgresql.insert if c.dialect.name == "postgresql" else sqlite.insert)(
            ssf_streams
        )
        c.execute(
            insert.values(
                platform_id=platform_id, status="enabled", updated_us=now_us
            ).on_conflict_do_nothing(index_elements=[ssf_streams.c.platform_id])
        )

    def _read(self, c: sa.Connection, platform_id: str, method: str) -> Stream:
        r = c.execute(sa.select(ssf_streams).where(ssf_streams.c.platform_id == platform_id)).one()
        return Stream(
            stream_id=platform_id,
            method=method,
            status=r.status,
            reason=r.reason,
            events_requested=Stream.requested_from_json(r.events_requested),
            endpoint_url=r.endpoint_url,
            authorization_header=r.authorization_header,
            description=r.description,
            verification_jti=r.verification_jti,
            verification_state=r.verification_state,
            verification_us=r.verification_us,
        )

    def get(self, platform_id: str, method: str, now_us: int) -> Stream:
        """The platform's stream (made, enabled, on first use)."""
        with self.engine.begin() as c:
            self._ensure(c, platform_id, now_us)
            return self._read(c, platform_id, method)

    def save(self, stream: Stream, now_us: int) -> None:
        """Store what a receiver set (configuration or status)."""
        with self.engine.begin() as c:
            self._ensure(c, stream.stream_id, now_us)
            c.execute(
                sa.update(ssf_streams)
                .where(ssf_streams.c.platform_id == stream.stream_id)
                .values(
                    status=stream.status,
                    reason=stream.reason,
                    events_requested=stream.requested_json(),
                    endpoint_url=stream.endpoint_url,
                    authorization_header=stream.authorization_header,
                    description=stream.description,
                    updated_us=now_us,
                )
            )

    def request_verification(
        self, platform_id: str, jti: str, state: str | None, now_us: int
    ) -> None:
        """Hold a verification event for the stream (replacing one not yet delivered), unless
        the last request was under MIN_VERIFICATION_INTERVAL ago (RESOURCE_EXHAUSTED
        ``VERIFICATION_TOO_OFTEN``, with the wait)."""
        with self.engine.begin() as c:
            self._ensure(c, platform_id, now_us)
            last = c.execute(
                sa.select(ssf_streams.c.verification_us).where(
                    ssf_streams.c.platform_id == platform_id
                )
            ).scalar_one()
            wait_us = (last or 0) + MIN_VERIFICATION_INTERVAL * 1_000_000 - now_us
            if last is not None and wait_us > 0:
                raise ResourceExhausted(
                    "VERIFICATION_TOO_OFTEN",
                    f"at most one verification request per {MIN_VERIFICATION_INTERVAL} s",
                    retry_after=wait_us / 1e6,
                )
            c.execute(
                sa.update(ssf_streams)
                .where(ssf_streams.c.platform_id == platform_id)
                .values(verification_jti=jti, verification_state=state, verification_us=now_us)
            )

    def verification_delivered(self, platform_id: str, jti: str) -> bool:
        """The verification event ``jti`` was acknowledged: drop it (False if it is gone)."""
        with self.engine.begin() as c:
            return self._clear_verification(c, platform_id, jti)

    @staticmethod
    def _clear_verification(c: sa.Connection, platform_id: str, jti: str) -> bool:
        done = c.execute(
            sa.update(ssf_streams)
            .where(ssf_streams.c.platform_id == platform_id, ssf_streams.c.verification_jti == jti)
            .values(verification_jti=None, verification_state=None)
        )
        return done.rowcount == 1

    # -- poll delivery (RFC 8936) --------------------------------------------------------------

    def poll(
        self,
        platform_id: str,
        method: str,
        acks: Collection[str],
        max_events: int,
        now_us: int,
    ) -> Polled:
        """One poll, in one transaction: take the acknowledgements (``acks``: the ``jti`` of
        SETs acknowledged or reported in error), move the cursor past every batch now wholly
        acknowledged, and pick up to ``max_events`` unacknowledged SETs in log order (none
        while the stream is paused), recording their batches as delivered."""
        with self.engine.begin() as c:
            self.events.ensure_cursor(c, platform_id, now_us)
            self._ensure(c, platform_id, now_us)
            cursor = sa.select(event_cursors.c.acked_seq, event_cursors.c.delivered_seq).where(
                event_cursors.c.platform_id == platform_id
            )
            if c.dialect.name == "postgresql":
                cursor = cursor.with_for_update()  # one poll of a platform at a time
            acked, delivered = (int(v) for v in c.execute(cursor).one())
            stream = self._read(c, platform_id, method)
            polled = Polled(stream, cursor_before=acked, cursor_after=acked)
            wanted = set(acks)
            if stream.verification_jti is not None and stream.verification_jti in wanted:
                polled.verification_acknowledged = self._clear_verification(
                    c, platform_id, stream.verification_jti
                )
            window = [
                read_batch(s, raw)
                for s, raw in EventLog.read_after(c, acked, delivered - acked)
                if s <= delivered
            ]
            done = self._acked(c, platform_id, acked)
            fresh = [
                (b.seq, i)
                for b in window
                for i, e in enumerate(b.events)
                if jti_of(e.event_id) in wanted and (b.seq, i) not in done
            ]
            if fresh:
                c.execute(
                    sa.insert(ssf_acks),
                    [{"platform_id": platform_id, "seq": s, "event_index": i} for s, i in fresh],
                )
                done.update(fresh)
            walked = list(window)
            if stream.status == "enabled" and max_events > 0:
                walked, polled.sets, polled.more, whole = self._pick(
                    c, acked, window, done, stream, max_events
                )
                through = max([whole, *(b.seq for b, _ in polled.sets)])
                if through > delivered:
                    self.events.mark_delivered(c, platform_id, through)
                    delivered = through
            new = acked
            for b in walked:
                if b.seq > delivered or not all(
                    (b.seq, i) in done for i, e in enumerate(b.events) if stream.delivers(e.kind)
                ):
                    break
                new = b.seq
            if new > acked:
                self.events.acknowledge(c, platform_id, new, now_us, 0)
                c.execute(
                    sa.delete(ssf_acks).where(
                        ssf_acks.c.platform_id == platform_id, ssf_acks.c.seq <= new
                    )
                )
                polled.cursor_after = new
            return polled

    @staticmethod
    def _acked(c: sa.Connection, platform_id: str, after: int) -> set[tuple[int, int]]:
        rows = c.execute(
            sa.select(ssf_acks.c.seq, ssf_acks.c.event_index).where(
                ssf_acks.c.platform_id == platform_id, ssf_acks.c.seq > after
            )
        )
        return {(int(r.seq), int(r.event_index)) for r in rows}

    def _pick(
        self,
        c: sa.Connection,
        start: int,
        window: list[Batch],
        done: set[tuple[int, int]],
        stream: Stream,
        max_events: int,
    ) -> tuple[list[Batch], list[tuple[Batch, int]], bool, int]:
        """Walk the log from the cursor ``start``: (batches walked, SETs to send, more left?,
        the last batch walked whole: every SET of it sent or skipped; 0 if none)."""
        walked: list[Batch] = []
        picked: list[tuple[Batch, int]] = []
        whole = 0
        for batch in self._walk(c, start, window):
            walked.append(batch)
            for i, e in enumerate(batch.events):
                if (batch.seq, i) in done or not stream.delivers(e.kind):
                    continue
                if len(picked) == max_events:
                    return walked, picked, True, whole
                picked.append((batch, i))
            whole = batch.seq
            if len(walked) >= WALK_BATCHES:
                return walked, picked, bool(EventLog.read_after(c, batch.seq, 1)), whole
        return walked, picked, False, whole

    @staticmethod
    def _walk(c: sa.Connection, start: int, window: list[Batch]) -> Iterator[Batch]:
        """The batches after ``start`` in log order: ``window`` (already read), then the log."""
        yield from window
        last = window[-1].seq if window else start
        while rows := EventLog.read_after(c, last, 20):
            for seq, raw in rows:
                yield read_batch(seq, raw)
                last = seq
