"""Holder verification: name + ID number against the current holder, then a one-time SMS code.

Plain domain logic with an injectable clock and code source. The code goes to an SMS outbox
(a JSON-lines file the demo reads, standing in for the carrier's SMS centre).
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from numfed.errors import NotFound, PermissionDenied, ResourceExhausted, Unauthenticated

__all__ = ["Session", "SmsOutbox", "Verifier"]

CODE_TTL = timedelta(minutes=5)
SESSION_TTL = timedelta(minutes=15)
MAX_WRONG_CODES = 5
CODES_PER_WINDOW = 5
CODE_WINDOW = timedelta(minutes=10)


class SmsOutbox:
    def __init__(self, path: Path, signature: str) -> None:
        self.path = path
        self.signature = signature

    def send(self, number: str, code: str, now: datetime) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = f"{self.signature} 您的验证码是 {code}，5分钟内有效。"
        line = {"number": number, "code": code, "sent_at": now.isoformat(), "text": text}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


@dataclass
class _Pending:
    number: str
    holder_id: str
    code: str
    expires: datetime
    wrong: int = 0


@dataclass(frozen=True)
class Session:
    token: str
    number: str
    holder_id: str
    tenure_start: datetime
    expires: datetime
    requests: dict[str, bytes] = field(default_factory=dict, compare=False)
    """request_id -> the signed release envelope, reused verbatim on retries."""
    operations: set[str] = field(default_factory=set, compare=False)


class Verifier:
    def __init__(
        self,
        outbox: SmsOutbox,
        *,
        clock: Callable[[], datetime],
        codes: Callable[[], str] = lambda: f"{secrets.randbelow(10**6):06d}",
    ) -> None:
        self._outbox = outbox
        self._clock = clock
        self._codes = codes
        self._pending: dict[str, _Pending] = {}
        self._sessions: dict[str, Session] = {}
        self._sent: dict[str, list[datetime]] = {}

    def start(
        self, number: str, name: str, id_number: str, current_holder: tuple[str, str, str]
    ) -> tuple[str, datetime]:
        """Check the details against ``(holder_id, name, id_number)``; send a code."""
        holder_id, real_name, real_id = current_holder
        ok_name = hmac.compare_digest(name.encode(), real_name.encode())
        ok_id = hmac.compare_digest(id_number.upper().encode(), real_id.upper().encode())
        if not (ok_name and ok_id):
            raise PermissionDenied(
                "HOLDER_NOT_VERIFIED", "the details do not match the number's current holder"
            )
        now = self._clock()
        recent = [t for t in self._sent.get(number, []) if now - t < CODE_WINDOW]
        if len(recent) >= CODES_PER_WINDOW:
            raise ResourceExhausted("TOO_MANY_CODES", "too many codes for this number; wait")
        self._sent[number] = [*recent, now]
        code = self._codes()
        vid = secrets.token_urlsafe(16)
        self._pending[vid] = _Pending(number, holder_id, code, now + CODE_TTL)
        self._outbox.send(number, code, now)
        return vid, now + CODE_TTL

    def confirm(
        self, verification_id: str, code: str, tenure_start_of: Callable[[str], datetime]
    ) -> Session:
        """Exchange a right code for a session; X comes from the registry at this moment."""
        now = self._clock()
        p = self._pending.get(verification_id)
        if p is None or now > p.expires:
            self._pending.pop(verification_id, None)
            raise NotFound("VERIFICATION_NOT_FOUND", "unknown or expired verification")
        if not hmac.compare_digest(code.encode(), p.code.encode()):
            p.wrong += 1
            if p.wrong >= MAX_WRONG_CODES:
                del self._pending[verification_id]
            raise PermissionDenied("WRONG_CODE", "the code is wrong")
        del self._pending[verification_id]
        s = Session(
            secrets.token_urlsafe(24),
            p.number,
            p.holder_id,
            tenure_start_of(p.number),
            now + SESSION_TTL,
        )
        self._sessions[s.token] = s
        return s

    def session(self, token: str) -> Session:
        s = self._sessions.get(token)
        if s is None or self._clock() > s.expires:
            self._sessions.pop(token, None)
            raise Unauthenticated("NO_SESSION", "no valid holder session; verify again")
        return s
