"""Ports for members (numfed.federation.free_ports): two federations set up at once on one
machine (pytest's workers, a benchmark beside a test run) are never handed the same port, which
one member would then fail to bind (CANNOT_LISTEN: address already in use)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from numfed.federation import PORT_HOLD, free_ports, pick_ports

LOW, HIGH = 21000, 21099  # 100 ports: two processes taking 40 each would share some at random

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
    with pytest.raises(OSError, match="no 1 free ports left"):
        pick_ports(1, LOW, LOW + 3, ledger, now=1000.0 + PORT_HOLD / 2)
    assert len(pick_ports(3, LOW, LOW + 3, ledger, now=1001.0 + 2 * PORT_HOLD)) == 3


@pytest.mark.timeout(30)
def test_a_port_in_use_is_never_handed_out(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", LOW))
        taken.listen()
        ports = pick_ports(4, LOW, LOW + 4, tmp_path / "ports.ledger")
    assert LOW not in ports and sorted(ports) == list(range(LOW + 1, LOW + 5))


@pytest.mark.timeout(30)
def test_free_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    ports = free_ports(20)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert len(set(ports)) == 20 and all(1024 < p < low for p in ports)
