"""Holder verification: details match the current holder; codes expire, run out, rate-limit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from carrier_adapters.verification import (
    CODES_PER_WINDOW,
    MAX_RELEASES_PER_SESSION,
    MAX_WRONG_CODES,
    Session,
    SmsOutbox,
    Verifier,
)
from numfed.errors import (
    AlreadyExists,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)

N = "+8613812345678"
NAME, ID_NUMBER = "王伟", "11010119900101123X"
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


def start(v: Verifier, name: str = NAME, id_number: str = ID_NUMBER, number: str = N) -> str:
    vid, _ = v.start(
        number,
        name,
        id_number,
        holder_id="h1",
        holder_name=NAME,
        holder_id_number=ID_NUMBER,
        tenure_start=X,
    )
    return vid


def test_good_path_sends_code_and_opens_session(
    verifier: Verifier, clock: Clock, tmp_path: Path
) -> None:
    vid, expires = verifier.start(
        N,
        NAME,
        ID_NUMBER.lower(),  # the check digit X may be typed in either case
        holder_id="h1",
        holder_name=NAME,
        holder_id_number=ID_NUMBER,
        tenure_start=X,
    )
    assert expires == clock.t + timedelta(minutes=5)
    sms = json.loads((tmp_path / "sms.jsonl").read_text(encoding="utf-8"))
    assert (sms["number"], sms["code"]) == (N, "123456")
    assert sms["text"].startswith("【测试】") and "123456" in sms["text"]
    assert sms["sent_at"] == clock.t.isoformat()
    s = verifier.confirm(vid, "123456")
    assert (s.number, s.holder_id, s.tenure_start) == (N, "h1", X)
    assert s.expires == clock.t + timedelta(minutes=15)
    assert verifier.session(s.token) is s
    with pytest.raises(NotFound):
        verifier.confirm(vid, "123456")  # a code opens one session only


def test_name_and_id_mismatch_get_the_same_answer(verifier: Verifier, tmp_path: Path) -> None:
    answers = []
    for name, id_number in [("李雷", ID_NUMBER), (NAME, "110101199001011230"), ("李雷", "x" * 18)]:
        with pytest.raises(PermissionDenied) as e:
            start(verifier, name, id_number)
        answers.append((e.value.code, e.value.reason, e.value.message, e.value.metadata))
    assert answers[0][1] == "HOLDER_NOT_VERIFIED"
    assert answers[0] == answers[1] == answers[2]
    assert not (tmp_path / "sms.jsonl").exists()  # no code was sent


def test_five_wrong_codes_void_the_verification(verifier: Verifier) -> None:
    vid = start(verifier)
    for left in range(MAX_WRONG_CODES - 1, -1, -1):
        with pytest.raises(PermissionDenied) as e:
            verifier.confirm(vid, "000000")
        assert (e.value.reason, e.value.metadata["attempts_left"]) == ("WRONG_CODE", str(left))
    with pytest.raises(NotFound):
        verifier.confirm(vid, "123456")  # even the right code is too late


def test_four_wrong_codes_leave_the_right_one_valid(verifier: Verifier) -> None:
    vid = start(verifier)
    for _ in range(MAX_WRONG_CODES - 1):
        with pytest.raises(PermissionDenied):
            verifier.confirm(vid, "000000")
    assert verifier.confirm(vid, "123456").holder_id == "h1"


def test_code_expires_after_five_minutes(verifier: Verifier, clock: Clock) -> None:
    vid = start(verifier)
    clock.t += timedelta(minutes=5)
    assert verifier.confirm(vid, "123456")  # still valid at exactly 5 minutes
    vid = start(verifier)
    clock.t += timedelta(minutes=5, microseconds=1)
    with pytest.raises(NotFound):
        verifier.confirm(vid, "123456")


def test_starts_are_rate_limited_per_number(verifier: Verifier, clock: Clock) -> None:
    for _ in range(CODES_PER_WINDOW):
        start(verifier)
        clock.t += timedelta(minutes=1)
    with pytest.raises(ResourceExhausted) as e:
        start(verifier)
    assert e.value.reason == "TOO_MANY_CODES"
    assert e.value.metadata["retry_after_seconds"] == str(5 * 60)
    assert e.value.retry_after == 5 * 60  # sent as google.rpc.RetryInfo
    start(verifier, number="+8613900000000")  # another number is not affected
    clock.t += timedelta(minutes=5)  # the first start leaves the 10-minute window
    start(verifier)


def test_mismatches_count_towards_the_limit(verifier: Verifier) -> None:
    """Guessing names or ID numbers is limited like codes; once limited, nothing is revealed."""
    for _ in range(CODES_PER_WINDOW):
        with pytest.raises(PermissionDenied):
            start(verifier, "李雷")
    with pytest.raises(ResourceExhausted):
        start(verifier)  # right details, but the number is limited


def test_session_expires_after_fifteen_minutes(verifier: Verifier, clock: Clock) -> None:
    s = verifier.confirm(start(verifier), "123456")
    clock.t += timedelta(minutes=15)
    assert verifier.session(s.token) is s
    clock.t += timedelta(microseconds=1)
    with pytest.raises(Unauthenticated):
        verifier.session(s.token)
    with pytest.raises(Unauthenticated):
        verifier.session("not-a-token")


def test_expired_state_is_dropped(verifier: Verifier, clock: Clock) -> None:
    for i in range(50):
        s = verifier.confirm(start(verifier, number=f"+861390000{i:04d}"), "123456")
        start(verifier, number=f"+861390000{i:04d}")
    assert verifier.sizes() == (50, 50, 50)
    clock.t += timedelta(minutes=16)
    start(verifier)
    assert verifier.sizes() == (1, 0, 1)
    with pytest.raises(Unauthenticated):
        verifier.session(s.token)


def _session() -> Session:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    return Session("t", N, "h1", X, now + timedelta(minutes=15))


def test_release_envelope_is_signed_once_per_request_id() -> None:
    s, signed = _session(), list[int]()

    def sign() -> bytes:
        signed.append(len(signed))
        return f"envelope-{len(signed)}".encode()

    first = s.release_envelope("r1", b"body", sign)
    assert s.release_envelope("r1", b"body", sign) == first == b"envelope-1"
    assert s.release_envelope("r2", b"body", sign) == b"envelope-2"
    assert len(signed) == 2
    with pytest.raises(AlreadyExists) as e:
        s.release_envelope("r1", b"other body", sign)
    assert e.value.reason == "REQUEST_ID_REUSED"


def test_release_request_ids_per_session_are_bounded() -> None:
    s = _session()
    for i in range(MAX_RELEASES_PER_SESSION):
        s.release_envelope(f"r{i}", b"body", lambda: b"e")
    with pytest.raises(ResourceExhausted):
        s.release_envelope("one-more", b"body", lambda: b"e")
    assert s.release_envelope("r0", b"body", lambda: b"new") == b"e"  # known ones still answer


def test_full_tables_say_when_they_next_have_room(
    verifier: Verifier, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TOO_MANY_VERIFICATIONS and TOO_MANY_SESSIONS carry a retry delay: until the oldest entry
    expires (and with it a place in the table)."""
    import carrier_adapters.verification as verification

    monkeypatch.setattr(verification, "MAX_PENDING", 2)
    monkeypatch.setattr(verification, "MAX_SESSIONS", 1)
    first = start(verifier, number="+8613900000001")
    clock.t += timedelta(minutes=1)
    second = start(verifier, number="+8613900000002")
    with pytest.raises(ResourceExhausted) as e:
        start(verifier, number="+8613900000003")
    assert e.value.reason == "TOO_MANY_VERIFICATIONS"
    assert e.value.retry_after == 4 * 60  # the first code expires 4 minutes from now

    verifier.confirm(first, "123456")
    clock.t += timedelta(minutes=2)
    with pytest.raises(ResourceExhausted) as e:
        verifier.confirm(second, "123456")
    assert e.value.reason == "TOO_MANY_SESSIONS"
    assert e.value.retry_after == 13 * 60  # the session expires 15 minutes after it opened
