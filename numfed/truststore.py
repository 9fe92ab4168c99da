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
from dataclasses import dataclass
from pathlib import Path

from numfed.envelope import Envelope
from numfed.errors import NumfedError, Unavailable
from numfed.trustfiles import write_envelope
from numfed.v1 import claim_pb2

__all__ = ["StoredTrust", "TrustStore"]

log = logging.getLogger(__name__)


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
