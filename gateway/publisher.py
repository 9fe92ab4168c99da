"""Carriers' signed event batches into the event log: judged, appended, announced.

``PublishEvents`` and the gateway's sync with each carrier (its signed port halves) both come
through :class:`EventPublisher`, so both are held to the same authority rules
(docs/authority.md): a batch is judged against the port state of the log before it, inside
the append transaction, and refused whole when any event breaks a rule. Its audit entries
(``EVENTS_PUBLISHED``, and ``PORT_COMPLETED`` for each port it completes) are chained in that
same transaction.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from gateway.audit import AuditRecord
from gateway.authority import Portability
from gateway.eventlog import EventLog
from gateway.results import now_us
from gateway.store import Store
from numfed.events import VerifiedBatch
from numfed.portability import Judgement
from numfed.portstate import PortStore

__all__ = ["EventPublisher"]


class EventPublisher:
    def __init__(
        self,
        *,
        store: Store,
        events: EventLog,
        ports: PortStore,
        portability: Portability,
        pseudonym: Callable[[str], str],
        on_events: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._events = events
        self._ports = ports
        self._portability = portability
        self._pseudonym = pseudonym
        self._on_events = on_events

    async def publish(
        self, batch: VerifiedBatch, raw: bytes, *, actor: str, only_if_changed: bool = False
    ) -> int | None:
        """Judge and append ``batch`` (``raw``: its envelope's bytes); return its seq.

        Raises PermissionDenied (nothing changes) when its signer may not publish one of its
        events. With ``only_if_changed`` (the sync, which re-reads the carrier's history) a
        batch that would change no port state is not appended and None is returned; without it
        (PublishEvents) the batch is judged as published now (``live``: a new port half only
        while its donor serves the number).
        """
        plan = self._portability.plan
        at = now_us()
        judged: list[Judgement] = []

        def authorize(conn: sa.Connection) -> Callable[[int], None] | None:
            judgement = self._ports.judge(
                conn, batch.carrier_id, batch.events, plan, live=not only_if_changed
            )
            if only_if_changed and not judgement.changed:
                return None
            judged.append(judgement)
            return lambda seq: self._ports.save(conn, judgement, seq, at)

        def audit(seq: int) -> list[AuditRecord]:
            """The batch's entries, chained in its append transaction."""
            completed = judged[0].completed if judged else []
            records = [
                AuditRecord(
                    at,
                    "PORT_COMPLETED",
                    actor,
                    self._pseudonym(number),
                    "COMPLETED",
                    {"from": port.from_carrier, "to": port.to_carrier, "seq": str(seq)},
                )
                for number, port in completed
            ]
            return [
                *records,
                AuditRecord(
                    at,
                    "EVENTS_PUBLISHED",
                    actor,
                    "",
                    "ACCEPTED",
                    {"seq": str(seq), "events": str(len(batch.events))},
                ),
            ]

        seq = await self._store.run(
            self._events.append,
            batch.carrier_id,
            raw,
            len(batch.events),
            at,
            authorize,
            audit=audit,
        )
        if seq is None:
            return None
        for number, port in judged[0].completed:
            self._portability.record(self._pseudonym(number), port.to_carrier, seq)
        self._on_events()
        return seq
