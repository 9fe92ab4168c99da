"""Holder verification: details match the current holder; codes expire, run out, rate-limit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from carrier_adapters.verification import MAX_WRONG_CODES, SmsOutbox, Verifier
from numfed.errors import NotFound, PermissionDenied, ResourceExhausted, Unauthenticated

N = "+8613812345678"
HOLDER = ("h1", "王伟", "11010119900101123X")
X = datetime(2022, 7, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2026, 11, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(tmp_path: Path, clock: Clock) -> Verifier:
    return Verifier(
        SmsOutbox(tmp_path / "sms.jsonl", "【测试】"), clock=clock, codes=lambda: "123456"
    )


def test_good_path_sends_code_and_opens_session(verifier: Verifier, tmp_path: Path) -> None:
    vid, _ = verifier.start(N, "王伟", "11010119900101123x", HOLDER)
    sms = json.loads((tmp_path / "sms.jsonl").read_text(encoding="utf-8"))
    assert sms["number"] == N and sms["code"] == "123456" and "123456" in sms["text"]
    s = verifier.confirm(vid, "123456", lambda n: X)
    assert (s.number, s.holder_id, s.tenure_start) == (N, "h1", X)
    assert verifier.session(s.token) is s


@pytest.mark.parametrize(
    ("name", "id_number"), [("李雷", HOLDER[2]), ("王伟", "110101199001011230")]
)
def test_mismatch_gets_the_same_answer(verifier: Verifier, name: str, id_number: str) -> None:
    with pytest.raises(PermissionDenied) as e:
        verifier.start(N, name, id_number, HOLDER)
    assert e.value.reason == "HOLDER_NOT_VERIFIED"


def test_wrong_codes_void_the_verification(verifier: Verifier) -> None:
    vid, _ = verifier.start(N, *HOLDER[1:], HOLDER)
    for _ in range(MAX_WRONG_CODES):
        with pytest.raises(PermissionDenied):
            verifier.confirm(vid, "000000", lambda n: X)
    with pytest.raises(NotFound):
        verifier.confirm(vid, "123456", lambda n: X)  # even the right code is too late


def test_expired_code(verifier: Verifier, clock: Clock) -> None:
    vid, _ = verifier.start(N, *HOLDER[1:], HOLDER)
    clock.t += timedelta(minutes=6)
    with pytest.raises(NotFound):
        verifier.confirm(vid, "123456", lambda n: X)


def test_codes_are_rate_limited_per_number(verifier: Verifier, clock: Clock) -> None:
    for _ in range(5):
        verifier.start(N, *HOLDER[1:], HOLDER)
    with pytest.raises(ResourceExhausted):
        verifier.start(N, *HOLDER[1:], HOLDER)
    clock.t += timedelta(minutes=11)
    verifier.start(N, *HOLDER[1:], HOLDER)


def test_session_expires(verifier: Verifier, clock: Clock) -> None:
    vid, _ = verifier.start(N, *HOLDER[1:], HOLDER)
    s = verifier.confirm(vid, "123456", lambda n: X)
    clock.t += timedelta(minutes=16)
    with pytest.raises(Unauthenticated):
        verifier.session(s.token)
