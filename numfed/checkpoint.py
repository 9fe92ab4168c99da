"""Signed checkpoints of the gateway's audit log, and the keeper every member runs.

A hash chain proves only that the gateway's table agrees with itself: cut its tail, or rewrite
it and recompute every hash, and the chain still verifies. So the gateway signs checkpoints of
the chain's head ("the log ``origin`` has ``size`` entries and entry ``size`` has hash
``head``") with its audit key, which the trust bundle lists, and hands the latest one to every
member. A member keeps the largest checkpoint it was given (:class:`CheckpointKeeper`, after Go's
sumdb client and the transparency-dev witness):

- a smaller one is not taken: the one held stays (a rollback changes nothing);
- one of the same size with another head proves a fork by itself: both envelopes are kept as
  evidence and the offer raises :class:`AuditEquivocation` (``AUDIT_EQUIVOCATION``);
- a larger one replaces the one held. With ``HEAD_SCHEME_CHAIN_V1`` a member cannot check here
  that it extends the one held (that needs the entries between); ``numfed audit verify`` does,
  with the checkpoints members export.

Rules: PLAT-AUD-1, PLAT-AUD-2, CARR-AUD-1 (docs/spec/). Plain Python: no grpc, no SQL. The
gateway's signing side is ``gateway/checkpoints.py``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from numfed.envelope import Envelope, SigningKey, sign, verify
from numfed.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from numfed.timecheck import check_issued_at
from numfed.timeutil import from_timestamp, require_utc, to_timestamp
from numfed.trust import TrustBundle
from numfed.v1 import audit_pb2, claim_pb2

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_PAYLOAD_TYPE",
    "AuditEquivocation",
    "Checkpoint",
    "CheckpointKeeper",
    "HeadScheme",
    "HeldCheckpoints",
    "audit_origin",
    "read_held",
    "sign_checkpoint",
    "verify_checkpoint",
]

log = logging.getLogger(__name__)

CHECKPOINT_PAYLOAD_TYPE = "application/vnd.numfed.audit-checkpoint+proto"
CHECKPOINT_FILE = "audit-checkpoints.json"
"""Where a member keeps its checkpoints, in its state directory."""
FILE_FORMAT = "numfed-audit-checkpoints-v1"
"""The ``format`` of a keeper's file (and of what ``numfed audit checkpoint export`` writes)."""
DAYS_KEPT = 7
"""Besides the latest checkpoint, a keeper keeps the largest one of each of this many days."""
EVIDENCE_KEPT = 16
"""Equivocating pairs a keeper keeps (the first ones seen; one pair already proves a fork)."""
HEAD_BYTES = 32
_ORIGIN = re.compile(r"[\x21-\x7e]{1,128}")


class HeadScheme(enum.Enum):
    """What a checkpoint's head is a hash of."""

    CHAIN_V1 = audit_pb2.HEAD_SCHEME_CHAIN_V1
    """The ``hash`` of audit entry ``size``."""
    RFC6962_V1 = audit_pb2.HEAD_SCHEME_RFC6962_V1
    """Reserved: the RFC 6962 Merkle root of entries 1..size. Not signed yet, so refused."""


def audit_origin(pinned_root: Envelope) -> str:
    """The audit log's origin for the federation whose pinned root (version 1) this is.

    ``numfed/<first 16 hex digits of SHA-256(root payload)>/audit``: every member pins the same
    root, and another federation (a test one, say) has another, so its checkpoints never count.
    """
    return f"numfed/{hashlib.sha256(pinned_root.payload).hexdigest()[:16]}/audit"


def _malformed(what: str) -> InvalidArgument:
    return InvalidArgument("MALFORMED_CHECKPOINT", what)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as signed: entries 1..``size`` of log ``origin`` end in ``head``."""

    origin: str
    size: int
    head: bytes
    head_scheme: HeadScheme
    issued_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "issued_at", require_utc(self.issued_at, "issued_at"))
        if not _ORIGIN.fullmatch(self.origin):
            raise _malformed("origin must be 1 to 128 printable ASCII characters")
        if self.size < 1:
            raise _malformed("a checkpoint covers at least one entry")
        if len(self.head) != HEAD_BYTES:
            raise _malformed(f"head must have {HEAD_BYTES} bytes")

    @classmethod
    def from_payload(cls, payload: bytes) -> Checkpoint:
        try:
            pb = audit_pb2.Checkpoint.FromString(payload)
        except DecodeError as exc:
            raise _malformed("checkpoint payload does not parse") from exc
        try:
            scheme = HeadScheme(pb.head_scheme)
        except ValueError as exc:
            raise _malformed("unknown head_scheme") from exc
        return cls(pb.origin, pb.size, pb.head, scheme, from_timestamp(pb.issued_at))

    def to_proto(self) -> audit_pb2.Checkpoint:
        return audit_pb2.Checkpoint(
            origin=self.origin,
            size=self.size,
            head=self.head,
            head_scheme=self.head_scheme.value,
            issued_at=to_timestamp(self.issued_at),
        )


def sign_checkpoint(checkpoint: Checkpoint, key: SigningKey) -> Envelope:
    """Sign ``checkpoint`` (deterministic bytes) with the gateway's audit key."""
    payload = checkpoint.to_proto().SerializeToString(deterministic=True)
    return sign(CHECKPOINT_PAYLOAD_TYPE, payload, [key])


def verify_checkpoint(envelope: Envelope, bundle: TrustBundle, *, origin: str) -> Checkpoint:
    """The checkpoint in ``envelope``, if an audit key of ``bundle`` signed it for ``origin``.

    Raises ``Unauthenticated``: WRONG_PAYLOAD_TYPE, KEY_REVOKED, UNKNOWN_KEY (no audit key of
    the bundle signed it: signatures by other keys are ignored), BAD_SIGNATURE, WRONG_ORIGIN
    (another log's checkpoint), AUDIT_KEY_NOT_VALID (no key that signed it was valid at its
    ``issued_at``); ``InvalidArgument``: MALFORMED_CHECKPOINT, UNSUPPORTED_HEAD_SCHEME. The
    payload is parsed only after a signature verified.
    """
    if envelope.payload_type != CHECKPOINT_PAYLOAD_TYPE:
        raise Unauthenticated(
            "WRONG_PAYLOAD_TYPE",
            f"expected payload type {CHECKPOINT_PAYLOAD_TYPE!r}, got {envelope.payload_type!r}",
        )
    revoked = bundle.revoked_key_ids
    if envelope.signatures and all(s.keyid in revoked for s in envelope.signatures):
        raise Unauthenticated("KEY_REVOKED", "the checkpoint's audit key has been revoked")
    keys = {k: a.key for k, a in bundle.audit_keys.items() if k not in revoked}
    signers = verify(envelope, keys, payload_type=CHECKPOINT_PAYLOAD_TYPE)
    checkpoint = Checkpoint.from_payload(envelope.payload)
    if checkpoint.origin != origin:
        raise Unauthenticated(
            "WRONG_ORIGIN",
            f"the checkpoint is of log {checkpoint.origin!r}, not {origin!r}",
            metadata={"origin": checkpoint.origin[:128]},
        )
    if not any(bundle.audit_keys[k].valid_at(checkpoint.issued_at) for k in signers):
        raise Unauthenticated(
            "AUDIT_KEY_NOT_VALID", "no audit key that signed the checkpoint was valid when issued"
        )
    if checkpoint.head_scheme is not HeadScheme.CHAIN_V1:
        raise InvalidArgument(
            "UNSUPPORTED_HEAD_SCHEME",
            f"head scheme {checkpoint.head_scheme.name} is not signed yet",
        )
    return checkpoint


class AuditEquivocation(FailedPrecondition):
    """Two checkpoints of one log and size with different heads: the log was forked.

    ``held`` and ``offered`` are both envelopes, the evidence; the keeper has stored them.
    """

    def __init__(self, held: Envelope, offered: Envelope, size: int) -> None:
        super().__init__(
            "AUDIT_EQUIVOCATION",
            f"the gateway signed two different heads for audit log size {size}",
            metadata={"size": str(size)},
        )
        self.held = held
        self.offered = offered


def _encode(envelope: Envelope) -> str:
    return base64.b64encode(envelope.to_proto().SerializeToString(deterministic=True)).decode()


def _decode(text: object, where: Path) -> Envelope:
    try:
        if not isinstance(text, str):
            raise ValueError("not a string")
        raw = base64.b64decode(text, validate=True)
        return Envelope.from_proto(claim_pb2.Envelope.FromString(raw))
    except (ValueError, binascii.Error, DecodeError, InvalidArgument, Unauthenticated) as exc:
        raise FailedPrecondition(
            "CHECKPOINT_FILE_MALFORMED", f"{where}: a checkpoint envelope does not decode"
        ) from exc


def _checkpoint_of(envelope: Envelope | None) -> Checkpoint | None:
    return None if envelope is None else Checkpoint.from_payload(envelope.payload)


@dataclass
class _State:
    latest: Envelope | None = None
    daily: dict[str, Envelope] = field(default_factory=dict)
    evidence: list[tuple[Envelope, Envelope, str]] = field(default_factory=list)

    def held(self) -> list[Envelope]:
        """The checkpoints held (latest first), without the evidence."""
        out = [] if self.latest is None else [self.latest]
        return out + [e for e in self.daily.values() if e not in out]


@dataclass(frozen=True)
class HeldCheckpoints:
    """What one member's checkpoint file holds: every envelope in it, evidence included."""

    holder: str
    origin: str
    envelopes: tuple[Envelope, ...]
    path: Path


def _parse(data: dict[str, Any], path: Path) -> tuple[str, str, _State]:
    if data.get("format") != FILE_FORMAT:
        raise FailedPrecondition("CHECKPOINT_FILE_MALFORMED", f"{path}: not a {FILE_FORMAT} file")
    holder, origin = data.get("holder"), data.get("origin")
    daily, evidence = data.get("daily", {}), data.get("evidence", [])
    if (
        not isinstance(holder, str)
        or not isinstance(origin, str)
        or not isinstance(daily, dict)
        or not isinstance(evidence, list)
        or not all(isinstance(e, dict) for e in evidence)
    ):
        raise FailedPrecondition("CHECKPOINT_FILE_MALFORMED", f"{path}: fields of the wrong type")
    state = _State(
        latest=_decode(data["latest"], path) if data.get("latest") else None,
        daily={str(day): _decode(e, path) for day, e in daily.items()},
        evidence=[
            (_decode(e.get("held"), path), _decode(e.get("offered"), path), str(e.get("seen_at")))
            for e in evidence
        ],
    )
    return holder, origin, state


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FailedPrecondition("CHECKPOINT_FILE_UNREADABLE", f"{path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FailedPrecondition("CHECKPOINT_FILE_MALFORMED", f"{path}: not JSON") from exc
    if not isinstance(data, dict):
        raise FailedPrecondition("CHECKPOINT_FILE_MALFORMED", f"{path}: not a JSON object")
    return data


def read_held(path: Path) -> HeldCheckpoints:
    """Read a member's checkpoint file (a keeper's own, or an export of it)."""
    data = _read_json(path)
    if data is None:
        raise FailedPrecondition("CHECKPOINT_FILE_UNREADABLE", f"{path} does not exist")
    holder, origin, state = _parse(data, path)
    envelopes = state.held() + [e for pair in state.evidence for e in pair[:2]]
    return HeldCheckpoints(holder, origin, tuple(envelopes), path)


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` so that a reader (or a crash) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class CheckpointKeeper:
    """The checkpoints one member holds of the gateway's audit log, in a file of its state dir.

    :meth:`offer` verifies a checkpoint, merges it with what the file holds and writes the file
    back in one step under an exclusive lock (a compare-and-swap: two offers never both replace
    the same checkpoint, so a rollback cannot slip in between). The file holds the latest
    checkpoint, the largest of each of the last :data:`DAYS_KEPT` days, and any equivocating
    pairs seen. ``numfed audit checkpoint export`` copies it for ``numfed audit verify``.
    """

    def __init__(self, path: Path, *, origin: str, holder: str) -> None:
        self.path = Path(path)
        self.origin = origin
        self.holder = holder
        with self._locked():
            self._state = self._load()

    @property
    def latest(self) -> Checkpoint | None:
        """The largest checkpoint held, if any."""
        return _checkpoint_of(self._state.latest)

    @property
    def latest_envelope(self) -> Envelope | None:
        return self._state.latest

    @property
    def evidence(self) -> list[tuple[Envelope, Envelope]]:
        """Equivocating pairs seen: (held, offered)."""
        return [(held, offered) for held, offered, _at in self._state.evidence]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load(self) -> _State:
        data = _read_json(self.path)
        if data is None:
            return _State()
        _holder, origin, state = _parse(data, self.path)
        if origin != self.origin:
            raise FailedPrecondition(
                "CHECKPOINT_FILE_OTHER_ORIGIN",
                f"{self.path} holds checkpoints of {origin!r}, not {self.origin!r}",
            )
        return state

    def _save(self, state: _State, path: Path | None = None) -> None:
        data = {
            "format": FILE_FORMAT,
            "holder": self.holder,
            "origin": self.origin,
            "latest": _encode(state.latest) if state.latest is not None else None,
            "daily": {day: _encode(e) for day, e in sorted(state.daily.items())},
            "evidence": [
                {"held": _encode(h), "offered": _encode(o), "seen_at": at}
                for h, o, at in state.evidence
            ],
        }
        _write_atomically(path or self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        if path is None:
            self._state = state

    def offer(self, envelope: Envelope, bundle: TrustBundle, *, now: datetime) -> Checkpoint:
        """Verify ``envelope`` against ``bundle``'s audit keys and merge it; return the
        checkpoint held afterwards.

        Raises as :func:`verify_checkpoint`, or ``ISSUED_IN_FUTURE`` when the checkpoint is
        dated after ``now`` beyond the bundle's clock skew (one dated ahead would hold a day the
        keeper has not reached, and enough of them push the real days out), nothing changing;
        or :class:`AuditEquivocation` after storing both envelopes when one held has the same
        size and another head.
        """
        offered = verify_checkpoint(envelope, bundle, origin=self.origin)
        check_issued_at(
            offered.issued_at, now, skew=bundle.max_clock_skew, what="the audit checkpoint"
        )
        with self._locked():
            state = self._load()
            for held_env in state.held():
                held = Checkpoint.from_payload(held_env.payload)
                if held.size == offered.size and held.head != offered.head:
                    if len(state.evidence) < EVIDENCE_KEPT:
                        seen = require_utc(now, "now").isoformat()
                        state.evidence.append((held_env, envelope, seen))
                        self._save(state)
                    log.error(
                        "SECURITY: the gateway signed two heads for audit log size %d; both "
                        "checkpoints are kept in %s as evidence",
                        offered.size,
                        self.path,
                    )
                    raise AuditEquivocation(held_env, envelope, offered.size)
            current = _checkpoint_of(state.latest)
            if current is not None and offered.size <= current.size:
                if offered.size < current.size:
                    log.info(
                        "the gateway offered audit checkpoint %d after %d; keeping %d",
                        offered.size,
                        current.size,
                        current.size,
                    )
                self._state = state
                return current
            state.latest = envelope
            state.daily[offered.issued_at.date().isoformat()] = envelope
            for day in sorted(state.daily)[:-DAYS_KEPT]:
                del state.daily[day]
            self._save(state)
            return offered

    def export(self, out: Path) -> None:
        """Write what the keeper holds to ``out`` (atomically) for ``numfed audit verify``."""
        with self._locked():
            state = self._load()
        self._save(state, Path(out))
