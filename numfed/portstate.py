"""Port state in SQL, for every verifier that keeps it: the gateway and the platforms.

The rules are :mod:`numfed.portability`'s; this module only loads the state of a batch's numbers
and writes back what :func:`~numfed.portability.judge` changed, inside the caller's transaction
(the gateway's event log append, under its lock; a platform's event application), so a batch is
judged against exactly the log before it (docs/authority.md). Numbers are stored under a key of
the caller's choosing: the gateway's pseudonyms, or the number itself at a platform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from numfed.events import LifecycleEvent
from numfed.portability import Judgement, NumberPlan, NumberState, Port, PortHalf, judge

__all__ = ["PortStore", "port_tables"]


def port_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """Define ``number_ports`` and ``port_halves`` in ``metadata``.

    ``number_ports``: each number's last completed port (both halves in); it is served by
    ``carrier_id`` since ``ported_us``, and ``seq`` is the event batch that completed it. A
    number with no row is served by its range holder. ``port_halves``: halves still waiting for
    the other carrier's half (bounded per number and signer).
    """
    ports = sa.Table(
        "number_ports",
        metadata,
        sa.Column("number_key", sa.String(64), primary_key=True),
        sa.Column("carrier_id", sa.String(32), nullable=False),
        sa.Column("from_carrier", sa.String(32), nullable=False),
        sa.Column("ported_us", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.Index("ix_number_ports_seq", "seq"),
    )
    halves = sa.Table(
        "port_halves",
        metadata,
        sa.Column("number_key", sa.String(64), primary_key=True),
        sa.Column("ported_us", sa.BigInteger, primary_key=True),
        sa.Column("from_carrier", sa.String(32), primary_key=True),
        sa.Column("to_carrier", sa.String(32), primary_key=True),
        sa.Column("signer", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    return ports, halves


class PortStore:
    """Loads and saves :class:`~numfed.portability.NumberState` in the two tables of
    :func:`port_tables`, each number under ``key(number)``."""

    def __init__(self, tables: tuple[sa.Table, sa.Table], key: Callable[[str], str] = str) -> None:
        self._ports, self._halves = tables
        self._pseudonym = key

    def load(self, conn: sa.Connection, numbers: Sequence[str]) -> dict[str, NumberState]:
        """The state of each of ``numbers`` that has any (others are served by the plan)."""
        keys = {self._pseudonym(n): n for n in numbers}
        if not keys:
            return {}
        ports = {
            r.number_key: Port(r.ported_us, r.from_carrier, r.carrier_id)
            for r in conn.execute(
                sa.select(self._ports).where(self._ports.c.number_key.in_(list(keys)))
            )
        }
        pending: dict[str, list[PortHalf]] = {}
        for r in conn.execute(
            sa.select(self._halves).where(self._halves.c.number_key.in_(list(keys)))
        ):
            half = PortHalf(r.ported_us, r.from_carrier, r.to_carrier, r.signer)
            pending.setdefault(r.number_key, []).append(half)
        return {
            keys[k]: NumberState(ports.get(k), tuple(sorted(pending.get(k, ()))))
            for k in set(ports) | set(pending)
        }

    def save(self, conn: sa.Connection, judgement: Judgement, seq: int, now_us: int) -> None:
        """Write the new state of every number ``judgement`` changed (batch ``seq``)."""
        c_ = self._halves.c
        for number, state in judgement.states.items():
            key = self._pseudonym(number)
            conn.execute(sa.delete(self._halves).where(c_.number_key == key))
            if state.pending:
                conn.execute(
                    sa.insert(self._halves),
                    [
                        {
                            "number_key": key,
                            "ported_us": h.at_us,
                            "from_carrier": h.from_carrier,
                            "to_carrier": h.to_carrier,
                            "signer": h.signer,
                            "seq": seq,
                        }
                        for h in state.pending
                    ],
                )
        for number, port in judgement.completed:
            row = {
                "number_key": self._pseudonym(number),
                "carrier_id": port.to_carrier,
                "from_carrier": port.from_carrier,
                "ported_us": port.at_us,
                "seq": seq,
                "updated_us": now_us,
            }
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            stmt = insert(self._ports).values(**row)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[self._ports.c.number_key],
                    set_={k: stmt.excluded[k] for k in row if k != "number_key"},
                )
            )

    def judge(
        self,
        conn: sa.Connection,
        signer: str,
        events: Sequence[LifecycleEvent],
        plan: NumberPlan,
        *,
        live: bool = False,
    ) -> Judgement:
        """Judge a batch against the state in the database (raises PermissionDenied)."""
        states = self.load(conn, sorted({e.number for e in events}))
        return judge(signer, events, states, plan, live=live)

    def read_completed(self, engine: sa.Engine, seq: int) -> list[tuple[str, str, int]]:
        """(number pseudonym, serving carrier, seq) of every port completed after batch ``seq``."""
        c_ = self._ports.c
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(c_.number_key, c_.carrier_id, c_.seq).where(c_.seq > seq).order_by(c_.seq)
            ).all()
        return [(r.number_key, r.carrier_id, int(r.seq)) for r in rows]
