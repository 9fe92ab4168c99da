"""What a verifier persists of its trust, so that a restart never trusts less than before.

A :class:`TrustStore` keeps, in a directory of the verifier's own state, the newest root it
verified (``root.pb``) and the newest bundle it accepted (``bundle.pb``). At start the verifier
restores from them (:meth:`numfed.trust.TrustedState.restore`), so a bundle older than one it
once held is a rollback even after a restart, and a root chain once walked is not walked again
(TUF's client workflow 5.3.8 and 5.4.5; python-tuf's ``Updater._persist_metadata``). Each file
is replaced atomically; a failed write is ``UNAVAILABLE`` / ``TRUST_STORE_UNWRITABLE``, a disk
problem and never an attack.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from numfed.envelope import Envelope
from numfed.errors import NumfedError, Unavailable
from numfed.trust import TrustedState, UpdateResult
from numfed.trustfiles import write_envelope
from numfed.v1 import claim_pb2

__all__ = ["TRUST_STORE_DIR", "StoredTrust", "TrustStore"]

log = logging.getLogger(__name__)

TRUST_STORE_DIR = "trust"
"""The store's directory in a member's state directory (platforms and carrier adapters)."""


@dataclass(frozen=True)
class StoredTrust:
    """What a store held: the newest root and the newest bundle, each None when absent."""

    root: Envelope | None = None
    bundle: Envelope | None = None


class TrustStore:
    """The persisted trust of one verifier, in ``directory`` (created on the first save)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def root_path(self) -> Path:
        return self.directory / "root.pb"

    @property
    def bundle_path(self) -> Path:
        return self.directory / "bundle.pb"

    def load(self) -> StoredTrust:
        """The persisted root and bundle. A file that is missing is None; one that does not
        read or parse raises (a verifier must not quietly trust less than it did)."""
        return StoredTrust(self._load(self.root_path), self._load(self.bundle_path))

    def _load(self, path: Path) -> Envelope | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise Unavailable("TRUST_STORE_UNREADABLE", f"cannot read {path}: {exc}") from exc
        try:
            return Envelope.from_proto(claim_pb2.Envelope.FromString(data))
        except NumfedError as exc:
            raise Unavailable("TRUST_STORE_UNREADABLE", f"{path}: {exc.message}") from exc
        except Exception as exc:
            raise Unavailable("TRUST_STORE_UNREADABLE", f"{path} is not an envelope") from exc

    def restore(
        self, pin: Envelope, *, now: datetime, kind: type[TrustedState] = TrustedState
    ) -> TrustedState:
        """The persisted trust on top of ``pin``, else the pin alone. A persisted root that
        does not verify raises (the verifier must not trust less than it did); a persisted
        bundle the root does not sign is dropped, as a root rotation drops it (TUF's
        fast-forward recovery). ``kind``: the state class to make (the conformance kit's broken
        members substitute their own)."""
        stored = self.load()
        state = kind.restore(pin, root=stored.root, now=now)
        if stored.bundle is None:
            return state
        try:
            return kind.restore(pin, root=stored.root, bundle=stored.bundle, now=now)
        except NumfedError as err:
            log.warning(
                "persisted trust bundle dropped (%s: %s); root v%d kept",
                err.reason,
                err.message,
                state.root.version,
            )
            return state

    def update(
        self, state: TrustedState, roots: Sequence[Envelope], bundle: Envelope, *, now: datetime
    ) -> UpdateResult:
        """:meth:`TrustedState.update` that persists what it accepts: each root at once, the
        bundle once the whole answer verified (so after a failure the files hold the last good
        point)."""
        held = state.bundle_envelope
        result = state.update(roots, bundle, now=now, on_root=self.save_root)
        if state.bundle_envelope is not held and state.bundle_envelope is not None:
            self.save_bundle(state.bundle_envelope)
        return result

    def save_root(self, envelope: Envelope) -> None:
        """Persist a root just accepted (each one, as it is accepted)."""
        self._save(self.root_path, envelope)

    def save_bundle(self, envelope: Envelope) -> None:
        """Persist a bundle just accepted."""
        self._save(self.bundle_path, envelope)

    def clear(self) -> None:
        """Forget what was persisted (a verifier taken back to its pin, as in a first start)."""
        for path in (self.bundle_path, self.root_path):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise Unavailable("TRUST_STORE_UNWRITABLE", f"cannot remove {path}: {exc}") from exc

    def _save(self, path: Path, envelope: Envelope) -> None:
        try:
            write_envelope(path, envelope)
        except OSError as exc:
            raise Unavailable("TRUST_STORE_UNWRITABLE", f"cannot write {path}: {exc}") from exc
