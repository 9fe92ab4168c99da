"""``numfed holder`` as a process against a real federation: the whole journey by hand."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from numfed.scenario import demo_scenario
from numfed.testing import Federation, start_federation
from tests.integration.holder import sms_code

WORLD = demo_scenario()
pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def fed(tmp_path: Path) -> AsyncIterator[Federation]:
    federation = await start_federation(tmp_path / "fed")
    try:
        yield federation
    finally:
        await federation.stop()


async def holder(fed: Federation, session: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "numfed",
        "holder",
        *args,
        "--session",
        str(session),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_journey_by_hand(fed: Federation, tmp_path: Path) -> None:
    number = WORLD.showcase["recycled_once"]  # cmcc
    now = datetime.now(UTC)
    tenure = WORLD.histories[number].current_tenure(now)
    assert tenure is not None
    h = WORLD.holders[tenure.holder_id]
    target = fed.layout.holder_endpoints["cmcc"]
    session = tmp_path / "session.json"

    code, out, _ = await holder(
        fed, session, "start", number, "--name", h.name, "--id-number", h.id_number,
        "--target", target,
    )  # fmt: skip
    assert code == 0 and "A code was sent by SMS" in out
    assert oct(session.stat().st_mode & 0o777) == "0o600"
    right = sms_code(fed.layout.root / "state" / "carrier-cmcc", number)
    wrong = "000000" if right != "000000" else "111111"
    code, _, err = await holder(fed, session, "confirm", wrong)
    assert code == 2
    assert "That code is wrong. You can try 4 more time(s). (WRONG_CODE)" in err
    assert "Traceback" not in err
    code, out, _ = await holder(fed, session, "confirm", right)
    assert code == 0 and "2022-07-01 09:00" in out and "QUERY_PRIOR" in out
    assert h.name not in out and h.id_number not in out

    code, out, _ = await holder(fed, session, "query")
    assert code == 0
    for p in ("weibo", "taobao", "douyin", "meituan", "labels"):
        assert re.search(rf"{p}\s.*binding\(s\) of previous holders", out), out
    assert re.search(r"xiaomi\s.*Clean", out)

    code, out, _ = await holder(fed, session, "release", "--watch")
    assert code == 0, out
    assert re.search(r"labels\s.*Released 2", out) and re.search(r"weibo\s.*Released 1", out)
    assert re.search(r"xiaomi\s.*Nothing to release", out)
    assert "found" not in out.lower()  # a release says what happened, not what a query found
    code, out, _ = await holder(fed, session, "query")
    assert "binding(s) of previous holders" not in out

    code, out, _ = await holder(fed, session, "own")
    refs = re.findall(r"\bb_[0-9a-f]{24}\b", out)
    assert code == 0 and len(refs) == 4  # weibo, xiaomi, dianping (at X), the courier mark
    code, out, _ = await holder(fed, session, "own", "--release", refs[0], "--watch")
    assert code == 0 and "Released 1" in out
    code, out, _ = await holder(fed, session, "own")
    assert len(re.findall(r"\bb_[0-9a-f]{24}\b", out)) == 3

    code, out, _ = await holder(fed, session, "proof")
    assert code == 0
    (token,) = [line for line in out.splitlines() if line.startswith("nfp1.")]
    verify = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "numfed", "verify", token, "--trust", str(fed.layout.trust_dir),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    said, _ = await verify.communicate()
    assert verify.returncode == 0 and number in said.decode()


async def test_refusals_print_sentences(fed: Federation, tmp_path: Path) -> None:
    session = tmp_path / "s.json"
    fresh = WORLD.showcase["fresh"]  # a ctcc number, asked of cmcc
    code, _, err = await holder(
        fed, session, "start", fresh, "--name", "x", "--id-number", "1" * 18,
        "--target", fed.layout.holder_endpoints["cmcc"],
    )  # fmt: skip
    assert code == 2
    assert "This carrier does not serve this number." in err
    code, _, err = await holder(fed, tmp_path / "none.json", "query")
    assert code == 2 and "numfed holder start" in err
