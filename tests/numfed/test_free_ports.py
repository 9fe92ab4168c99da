"""Ports for members (numfed.federation.free_ports): two federations set up at once on one
machine (pytest's workers, a benchmark beside a test run) are never handed the same port, which
one member would then fail to bind (CANNOT_LISTEN: address already in use)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from numfed.federation import PORT_HOLD, free_ports, pick_ports, port_ledger, port_range

# 100 ports (two processes taking 40 each would share some at random), just below the ones
# free_ports hands out: the federations of other tests and benchmarks running meanwhile never
# bind them.
LOW = max(port_range()[0] - 150, 1025)
HIGH = LOW + 99

PICKER = f"""
import json, sys, time
from pathlib import Path
from numfed.federation import pick_ports
ledger, start = Path(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
print(json.dumps([p for _ in range(40) for p in pick_ports(1, {LOW}, {HIGH}, ledger)]))
"""


@pytest.mark.timeout(60)
def test_processes_picking_ports_at_once_never_get_the_same_one(tmp_path: Path) -> None:
    ledger = tmp_path / "ports.ledger"
    start = str(time.time() + 1.0)
    pickers = [
        subprocess.Popen(
            [sys.executable, "-c", PICKER, str(ledger), start], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    got = [json.loads(p.communicate(timeout=50)[0]) for p in pickers]
    assert all(len(ports) == 40 for ports in got)
    assert not set(got[0]) & set(got[1])
    assert all(LOW <= p <= HIGH for ports in got for p in ports)


@pytest.mark.timeout(30)
def test_a_held_port_is_handed_out_again_once_its_hold_is_over(tmp_path: Path) -> None:
    ledger = tmp_path / "ports.ledger"
    first = pick_ports(3, LOW, LOW + 3, ledger, now=1000.0)
    assert pick_ports(1, LOW, LOW + 3, ledger, now=1000.0 + PORT_HOLD / 2) == [
        p for p in range(LOW, LOW + 4) if p not in first
    ]
    assert len(pick_ports(3, LOW, LOW + 3, ledger, now=1001.0 + 2 * PORT_HOLD)) == 3


@pytest.mark.timeout(30)
def test_a_port_in_use_is_never_handed_out(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", LOW))
        taken.listen()
        ports = pick_ports(4, LOW, LOW + 4, tmp_path / "ports.ledger")
        with pytest.raises(OSError, match="no 5 free ports left"):
            pick_ports(5, LOW, LOW + 4, tmp_path / "other.ledger")
    assert LOW not in ports and sorted(ports) == list(range(LOW + 1, LOW + 5))


@pytest.mark.timeout(30)
def test_free_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    ports = free_ports(20)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert len(set(ports)) == 20 and all(1024 < p < low for p in ports)


@pytest.mark.timeout(30)
def test_every_process_of_the_user_shares_one_ledger_whatever_its_tmpdir(tmp_path: Path) -> None:
    """A process given a TMPDIR of its own (the demo's test gives ``numfed demo`` one, and
    checks that it is left empty) records its ports in the user's one ledger all the same:
    with a ledger per TMPDIR, it and the machine's other federations could be handed the same
    port."""
    own = tmp_path / "own"
    own.mkdir()
    picked = subprocess.run(
        [sys.executable, "-c", "from numfed.federation import free_ports; print(*free_ports(3))"],
        env={**os.environ, "TMPDIR": str(own)},
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    ports = {int(p) for p in picked.stdout.split()}
    assert len(ports) == 3 and list(own.iterdir()) == []
    held = {int(line.split()[0]) for line in port_ledger().read_text().splitlines()}
    assert ports <= held


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["symlink", "hard link"])
def test_a_ledger_that_is_another_name_for_a_file_is_refused_and_the_file_untouched(
    tmp_path: Path, how: str
) -> None:
    """The ledger sits in the shared temporary directory, where another user can make its name
    point at a file of ours (symlink) or be a second name of one (hard link): nothing is
    written through it."""
    precious = tmp_path / "precious"
    precious.write_text("not a ledger\n")
    ledger = tmp_path / "ports.ledger"
    if how == "symlink":
        ledger.symlink_to(precious)
    else:
        os.link(precious, ledger)
    with pytest.raises(OSError, match="port ledger"):
        pick_ports(1, LOW, HIGH, ledger)
    assert precious.read_text() == "not a ledger\n"


@pytest.mark.timeout(30)
@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_ledger_of_another_user_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    ledger = tmp_path / "ports.ledger"
    ledger.write_text("")
    os.chown(ledger, 65534, 65534)
    with pytest.raises(OSError, match="port ledger"):
        pick_ports(1, LOW, HIGH, ledger)
    assert ledger.read_text() == ""


@pytest.mark.timeout(30)
def test_a_ledger_with_bytes_that_are_not_text_is_read_past(tmp_path: Path) -> None:
    """A damaged ledger (bytes that are no text) costs the damaged lines, never every later
    call: the holds on the lines around them still count."""
    ledger = tmp_path / "ports.ledger"
    ledger.write_bytes(b"\xff\xfe\x00\x9c\n" + f"{LOW} {1000.0 + PORT_HOLD}\n".encode())
    assert LOW not in pick_ports(3, LOW, LOW + 3, ledger, now=1000.0)


@pytest.mark.timeout(30)
def test_no_port_is_held_for_longer_than_the_hold(tmp_path: Path) -> None:
    """A line that holds a port past now + PORT_HOLD (the clock set back since it was written,
    or a damaged file: ``inf``) holds it for PORT_HOLD from now, not for ever."""
    ledger = tmp_path / "ports.ledger"
    ledger.write_text(f"{LOW} inf\n{LOW + 1} {1000.0 + 100 * PORT_HOLD}\n")
    assert sorted(pick_ports(2, LOW, LOW + 3, ledger, now=1000.0)) == [LOW + 2, LOW + 3]
    holds = [float(line.split()[1]) for line in ledger.read_text().splitlines()]
    assert len(holds) == 4 and max(holds) <= 1000.0 + PORT_HOLD


@pytest.mark.timeout(30)
def test_when_every_free_port_is_held_those_held_longest_are_handed_out_again(
    tmp_path: Path,
) -> None:
    """Holds never end early, so a process that asks often (pgtemp, the fixtures, a
    benchmark's 1,000 platforms) can have every free port of the range held: then the ports
    held longest, whose members have most likely come and gone, are handed out again rather
    than none (free_ports raising OSError in the middle of a test run)."""
    ledger = tmp_path / "ports.ledger"
    first = pick_ports(1, LOW, LOW + 1, ledger, now=1000.0)
    second = pick_ports(1, LOW, LOW + 1, ledger, now=1010.0)
    assert pick_ports(1, LOW, LOW + 1, ledger, now=1020.0) == first
    assert pick_ports(1, LOW, LOW + 1, ledger, now=1030.0) == second
