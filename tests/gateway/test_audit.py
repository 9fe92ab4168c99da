"""The audit log's hash chain: any changed, removed or reordered entry is detected."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.audit import AuditRecord, append, read_chain
from gateway.schema import audit_log
from gateway.store import Store
from numfed import pki
from numfed.cli import main
from numfed.federation import write_trust

RECORDS = [
    AuditRecord(
        1_000 + i, "QUERY", "spiffe://numfed/carrier/cmcc", f"k{i}", "ACCEPTED", {"i": str(i)}
    )
    for i in range(6)
]


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    store = Store(f"sqlite:///{tmp_path / 'gw.db'}")
    store.migrate()
    with store.engine.begin() as conn:
        append(conn, RECORDS[:3])
        append(conn, RECORDS[3:])  # a second batch chains onto the first
    return store.engine


def test_intact_chain_verifies(engine: sa.Engine) -> None:
    report = read_chain(engine)
    assert report.ok and report.entries == 6


def test_changed_entry_detected(engine: sa.Engine) -> None:
    with engine.begin() as c:
        c.execute(sa.update(audit_log).where(audit_log.c.seq == 4).values(outcome="REFUSED"))
    report = read_chain(engine)
    assert not report.ok and report.first_bad_seq == 4 and "changed" in report.problem


def test_removed_entry_detected(engine: sa.Engine) -> None:
    with engine.begin() as c:
        c.execute(sa.delete(audit_log).where(audit_log.c.seq == 2))
    report = read_chain(engine)
    assert not report.ok and report.first_bad_seq == 2


def test_removed_last_entry_changes_nothing_before_it(engine: sa.Engine) -> None:
    # Truncation at the end leaves a valid shorter chain: only a signed checkpoint of the head
    # that someone else holds shows it (tests/integration/test_audit_checkpoints.py).
    with engine.begin() as c:
        c.execute(sa.delete(audit_log).where(audit_log.c.seq == 6))
    assert read_chain(engine).entries == 5


def test_reordered_entries_detected(engine: sa.Engine) -> None:
    with engine.begin() as c:
        rows = {r.seq: dict(r._mapping) for r in c.execute(sa.select(audit_log))}
        c.execute(sa.delete(audit_log).where(audit_log.c.seq.in_([3, 5])))
        swapped_3 = {**rows[5], "seq": 3}
        swapped_5 = {**rows[3], "seq": 5}
        c.execute(sa.insert(audit_log), [swapped_3, swapped_5])
    report = read_chain(engine)
    assert not report.ok and report.first_bad_seq == 3


def test_rewritten_hash_is_still_detected_by_the_next_link(engine: sa.Engine) -> None:
    from gateway.audit import entry_hash

    with engine.begin() as c:
        row = c.execute(sa.select(audit_log).where(audit_log.c.seq == 2)).one()
        forged = AuditRecord(row.at_us, row.event, row.actor, row.number_key, "FORGED", {"i": "1"})
        c.execute(
            sa.update(audit_log)
            .where(audit_log.c.seq == 2)
            .values(outcome="FORGED", hash=entry_hash(2, forged, row.prev_hash))
        )
    report = read_chain(engine)
    assert not report.ok and report.first_bad_seq == 3


def test_cli_verify(tmp_path: Path, engine: sa.Engine) -> None:
    layout = pki.init_pki(tmp_path / "pki", carriers=("cmcc",), platforms=())
    write_trust(layout.root, tmp_path / "trust", now=datetime.now(UTC), carriers=("cmcc",))
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[gateway]\nlisten = "127.0.0.1:1"\npki_dir = "pki"\ntrust_dir = "trust"\n'
        f'state_dir = "state"\ndatabase_url = "{engine.url}"\n'
    )
    assert main(["audit", "verify", "--config", str(cfg)]) == 0
    with engine.begin() as c:
        c.execute(sa.update(audit_log).where(audit_log.c.seq == 1).values(actor="someone else"))
    assert main(["audit", "verify", "--config", str(cfg)]) == 1
