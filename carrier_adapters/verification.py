"""Holder verification: name + ID number against the current holder, then a one-time SMS code.

Plain domain logic (no grpc, no SQL) with an injectable clock and code source. The code goes to
an SMS outbox, a JSON-lines file the demo reads, standing in for the carrier's SMS centre.

Rules: a code is 6 digits, valid 5 minutes, void after 5 wrong answers. Each number may start
at most 5 verifications per 10 minutes, whether the details match or not, so the limit also
stops anyone from guessing a holder's name or ID number. A name or ID number mismatch gets one
answer whichever of the two was wrong. A right code opens a 15-minute session bound to
(number, holder, X). All state is in memory and bounded: expired entries are dropped as new ones
arrive, and past a cap new verifications are refused with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from numfed.errors import (
    AlreadyExists,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)

__all__ = [
    "CODES_PER_WINDOW",
    "CODE_TTL",
    "CODE_WINDOW",
    "MAX_PENDING",
    "MAX_RELEASES_PER_SESSION",
    "MAX_WRONG_CODES",
    "SESSION_TTL",
    "Session",
    "SmsOutbox",
    "Verifier",
]

CODE_TTL = timedelta(minutes=5)
SESSION_TTL = timedelta(minutes=15)
MAX_WRONG_CODES = 5
CODES_PER_WINDOW = 5
CODE_WINDOW = timedelta(minutes=10)
MAX_PENDING = 100_000
"""Verifications waiting for their code, across all numbers."""
MAX_SESSIONS = 100_000
MAX_RELEASES_PER_SESSION = 64
"""Distinct release request_ids one session may use (each keeps its signed envelope)."""

K = TypeVar("K")
V = TypeVar("V")


def random_code() -> str:
    return f"{secrets.randbelow(10**6):06d}"


def _drop_front(entries: dict[K, V], expired: Callable[[V], bool]) -> None:
    """Drop expired entries from the front of ``entries`` (kept in expiry order)."""
    while entries:
        key, value = next(iter(entries.items()))
        if not expired(value):
            return
        del entries[key]


def _until_first_expires(
    entries: dict[K, V], expires: Callable[[V], datetime], now: datetime
) -> float:
    """Seconds until the front entry of ``entries`` (kept in expiry order) expires: when a full
    table next has room."""
    first = next(iter(entries.values()), None)
    left = (expires(first) - now).total_seconds() if first is not None else 0.0
    return max(left, 1.0)


class SmsOutbox:
    """Appends each SMS as one JSON line: number, code, sent_at, text."""

    def __init__(self, path: Path, signature: str) -> None:
        self.path = path
        self.signature = signature

    def send(self, number: str, code: str, now: datetime) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = f"{self.signature}您的验证码是{code}，5分钟内有效。请勿泄露给他人。"
        line = {"number": number, "code": code, "sent_at": now.isoformat(), "text": text}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


@dataclass
class _Pending:
    number: str
    holder_id: str
    tenure_start: datetime
    code: str
    expires: datetime
    wrong: int = 0


@dataclass(eq=False)
class Session:
    """A verified holder: bound to one number, one holder and their tenure start X."""

    token: str
    number: str
    holder_id: str
    tenure_start: datetime
    expires: datetime
    operations: set[str] = field(default_factory=set)
    """Names of the release operations this session started (the only ones it may watch)."""
    _releases: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)

    def release_envelope(
        self, request_id: str, fingerprint: bytes, sign: Callable[[], bytes]
    ) -> bytes:
        """The signed envelope for ``request_id``: made once, then reused verbatim (AIP-155).

        ``fingerprint`` stands for the rest of the request; reusing a request_id with another
        one is ALREADY_EXISTS rather than silently answering the first request again.
        """
        known = self._releases.get(request_id)
        if known is not None:
            if not hmac.compare_digest(known[0], fingerprint):
                raise AlreadyExists(
                    "REQUEST_ID_REUSED",
                    "request_id was used before with a different request",
                    metadata={"request_id": request_id},
                )
            return known[1]
        if len(self._releases) >= MAX_RELEASES_PER_SESSION:
            raise ResourceExhausted("TOO_MANY_RELEASES", "too many releases in one session")
        envelope = sign()
        self._releases[request_id] = (fingerprint, envelope)
        return envelope

    def has_release(self, request_id: str) -> bool:
        """Whether an envelope is held for ``request_id`` (an earlier call signed it)."""
        return request_id in self._releases

    def forget_release(self, request_id: str) -> None:
        """Drop the envelope of a release the gateway refused: a refusal changes nothing."""
        self._releases.pop(request_id, None)


class Verifier:
    def __init__(
        self,
        outbox: SmsOutbox,
        *,
        clock: Callable[[], datetime],
        codes: Callable[[], str] = random_code,
    ) -> None:
        self._outbox = outbox
        self._clock = clock
        self._codes = codes
        # Insertion order is expiry order (constant TTLs, a clock that does not go back), so
        # expired entries are always at the front.
        self._pending: dict[str, _Pending] = {}
        self._sessions: dict[str, Session] = {}
        self._starts: dict[str, list[datetime]] = {}
        """number -> its recent starts; ordered by each number's latest start."""

    def start(
        self,
        number: str,
        name: str,
        id_number: str,
        *,
        holder_id: str,
        holder_name: str,
        holder_id_number: str,
        tenure_start: datetime,
    ) -> tuple[str, datetime]:
        """Check the details against the current holder's; send a code. -> (id, expiry)."""
        now = self._clock()
        self._prune(now)
        self._count_start(number, now)
        ok_name = hmac.compare_digest(name.encode(), holder_name.encode())
        ok_id = hmac.compare_digest(id_number.upper().encode(), holder_id_number.upper().encode())
        if not (ok_name and ok_id):
            raise PermissionDenied(
                "HOLDER_NOT_VERIFIED", "the details do not match the number's current holder"
            )
        if len(self._pending) >= MAX_PENDING:
            raise ResourceExhausted(
                "TOO_MANY_VERIFICATIONS",
                "too many verifications; retry",
                retry_after=_until_first_expires(self._pending, lambda p: p.expires, now),
            )
        code = self._codes()
        vid = secrets.token_urlsafe(16)
        self._pending[vid] = _Pending(number, holder_id, tenure_start, code, now + CODE_TTL)
        self._outbox.send(number, code, now)
        return vid, now + CODE_TTL

    def confirm(self, verification_id: str, code: str) -> Session:
        """Exchange the right code for a session."""
        now = self._clock()
        self._prune(now)
        p = self._pending.get(verification_id)
        if p is None or now > p.expires:
            raise NotFound("VERIFICATION_NOT_FOUND", "unknown or expired verification")
        if not hmac.compare_digest(code.encode(), p.code.encode()):
            p.wrong += 1
            if p.wrong >= MAX_WRONG_CODES:
                del self._pending[verification_id]
            raise PermissionDenied(
                "WRONG_CODE",
                "the code is wrong",
                metadata={"attempts_left": str(MAX_WRONG_CODES - p.wrong)},
            )
        del self._pending[verification_id]
        if len(self._sessions) >= MAX_SESSIONS:
            raise ResourceExhausted(
                "TOO_MANY_SESSIONS",
                "too many holder sessions; retry",
                retry_after=_until_first_expires(self._sessions, lambda s: s.expires, now),
            )
        s = Session(
            secrets.token_urlsafe(24), p.number, p.holder_id, p.tenure_start, now + SESSION_TTL
        )
        self._sessions[s.token] = s
        return s

    def session(self, token: str) -> Session:
        s = self._sessions.get(token)
        if s is None or self._clock() > s.expires:
            raise Unauthenticated("NO_SESSION", "no valid holder session; verify again")
        return s

    def _count_start(self, number: str, now: datetime) -> None:
        recent = [t for t in self._starts.get(number, []) if now - t < CODE_WINDOW]
        if len(recent) >= CODES_PER_WINDOW:
            wait = max(int((CODE_WINDOW - (now - recent[0])).total_seconds()), 1)
            raise ResourceExhausted(
                "TOO_MANY_CODES",
                "too many verifications for this number; wait",
                metadata={"retry_after_seconds": str(wait)},
                retry_after=wait,
            )
        self._starts.pop(number, None)
        self._starts[number] = [*recent, now]

    def _prune(self, now: datetime) -> None:
        _drop_front(self._pending, lambda p: p.expires < now)
        _drop_front(self._sessions, lambda s: s.expires < now)
        _drop_front(self._starts, lambda starts: now - starts[-1] >= CODE_WINDOW)

    def sizes(self) -> tuple[int, int, int]:
        """(pending verifications, sessions, numbers with recent starts): for tests and metrics."""
        return len(self._pending), len(self._sessions), len(self._starts)
