"""The trust directory: signed root chain and trust bundle as files.

``root-<n>.pb`` holds the Envelope of root version n (``root-1.pb`` is what verifiers pin) and
``bundle.pb`` the Envelope of the current trust bundle, each a serialized ``numfed.v1.Envelope``.
Every reader replays the chain from the pin with the rules of :class:`numfed.trust.TrustedState`.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path

from numfed.envelope import Envelope
from numfed.errors import FailedPrecondition, InvalidArgument
from numfed.trust import TrustedState
from numfed.v1 import claim_pb2

__all__ = [
    "load_trusted_state",
    "read_bundle",
    "read_roots",
    "write_atomically",
    "write_envelope",
]

_ROOT = re.compile(r"root-([1-9][0-9]{0,8})\.pb")


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` so that a reader, or the next start after a crash, sees the old file or
    the new one, never a part: a temporary file in the same directory, fsync, ``os.replace``,
    then fsync of the directory. Raises ``OSError``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_envelope(path: Path, envelope: Envelope) -> None:
    """Write one envelope atomically (see :func:`write_atomically`). Raises ``OSError``."""
    write_atomically(path, envelope.to_proto().SerializeToString(deterministic=True))


def _read(path: Path) -> claim_pb2.Envelope:
    try:
        return claim_pb2.Envelope.FromString(path.read_bytes())
    except OSError as exc:
        raise FailedPrecondition("TRUST_FILE_MISSING", f"cannot read {path}: {exc}") from exc
    except Exception as exc:
        raise InvalidArgument("TRUST_FILE_MALFORMED", f"{path} is not an envelope") from exc


def read_roots(trust_dir: Path) -> list[claim_pb2.Envelope]:
    """Every root envelope, in version order, checked to run 1..n without a gap."""
    found = sorted(
        (int(m.group(1)), p)
        for p in trust_dir.glob("root-*.pb")
        if (m := _ROOT.fullmatch(p.name)) is not None
    )
    if [v for v, _ in found] != list(range(1, len(found) + 1)):
        raise FailedPrecondition("TRUST_FILES_GAP", f"{trust_dir}: root files must run 1..n")
    return [_read(p) for _, p in found]


def read_bundle(trust_dir: Path) -> claim_pb2.Envelope:
    return _read(trust_dir / "bundle.pb")


def load_trusted_state(
    trust_dir: Path, *, now: datetime, pinned_root: Path | None = None
) -> TrustedState:
    """Verify the directory's roots and bundle from the pinned root (default ``root-1.pb``).

    Expired intermediate roots are walked through; the newest root and the bundle must be
    unexpired (``ROOT_EXPIRED``, ``BUNDLE_EXPIRED``).
    """
    roots = read_roots(trust_dir)
    if not roots:
        raise FailedPrecondition("TRUST_FILES_MISSING", f"{trust_dir} has no root-1.pb")
    pinned = Envelope.from_proto(_read(pinned_root) if pinned_root else roots[0])
    state = TrustedState(pinned, now=now)
    state.update(
        [Envelope.from_proto(r) for r in roots],
        Envelope.from_proto(read_bundle(trust_dir)),
        now=now,
    )
    return state
