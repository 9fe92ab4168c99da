"""The gateway's trust: what it verifies claims with and hands out, and how new files take effect.

A :class:`TrustView` is one load of the trust directory: the verified state and the signed roots
and bundle served by ``GetTrustBundle``, always from the same load. It is immutable; the gateway
holds one and replaces it by a single assignment. :class:`TrustWatcher` looks at the directory
once a second (and at once on SIGHUP) and applies changed files to a copy of the current state,
as any verifier would: an older ``bundle.pb``, a changed or missing ``root-k.pb``, an expired
bundle or a signature short of the threshold is refused, one line is logged, and the view in
force stays. So the gateway serves the newest trust without a restart and never steps back.

Nor across a restart: every view in force is also persisted in the gateway's own state
(``state_dir/trust``, :class:`numfed.truststore.TrustStore`, as platforms and carriers keep
theirs), and :func:`hold_no_less` refuses to start on trust files older than it, or other than
it at the same version (a host whose files were put back to an older copy would otherwise trust
a revoked key and an older numbering plan again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from numfed.envelope import Envelope
from numfed.errors import FailedPrecondition, NumfedError, Unauthenticated
from numfed.trust import TrustedState, TrustReason, UpdateResult, format_versions
from numfed.trustfiles import read_bundle, read_roots
from numfed.truststore import TrustStore
from numfed.v1 import claim_pb2

__all__ = ["TrustView", "TrustWatcher", "hold_no_less", "keep", "load_view"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrustView:
    """One load of the trust directory. ``state`` is never updated in place."""

    state: TrustedState
    roots: tuple[claim_pb2.Envelope, ...]
    """Root versions 1..n, as served (n is the state's root version)."""
    bundle: claim_pb2.Envelope
    """The bundle the state holds, as served."""

    @property
    def versions(self) -> str:
        """The versions held, as the ``numfed-trust-version`` metadata value."""
        return format_versions(*self.state.versions)


def load_view(
    trust_dir: Path, *, now: datetime, base: TrustView | None = None
) -> tuple[TrustView, UpdateResult]:
    """Verify the trust directory: from its ``root-1.pb`` (``base`` None, at start) or on top
    of ``base``, whose roots the files must repeat byte for byte. ``base`` is left as it was."""
    files = read_roots(trust_dir)
    if not files:
        raise FailedPrecondition("TRUST_FILES_MISSING", f"{trust_dir} has no root-1.pb")
    bundle = Envelope.from_proto(read_bundle(trust_dir))
    if base is None:
        state = TrustedState(Envelope.from_proto(files[0]), now=now)
        held: tuple[claim_pb2.Envelope, ...] = ()
    else:
        held = base.roots
        if len(files) < len(held):
            raise Unauthenticated(
                TrustReason.ROOT_ROLLBACK,
                f"{trust_dir} holds roots 1..{len(files)}; root v{len(held)} is in force",
            )
        for version, (old, new) in enumerate(zip(held, files, strict=False), 1):
            if old.payload != new.payload or old.payload_type != new.payload_type:
                raise Unauthenticated(
                    TrustReason.ROOT_EQUIVOCATION,
                    f"root-{version}.pb differs from the root v{version} in force",
                )
        state = base.state.copy()
    result = state.update([Envelope.from_proto(r) for r in files], bundle, now=now)
    held_bundle = state.bundle_envelope
    assert held_bundle is not None  # update() raises unless a bundle is held
    roots = held + tuple(files[len(held) : state.root.version])
    return TrustView(state, roots, held_bundle.to_proto()), result


def hold_no_less(view: TrustView, store: TrustStore, *, now: datetime) -> None:
    """Refuse ``view`` (the trust files at start) if the gateway held newer trust before.

    The persisted root and bundle are restored on top of the files' ``root-1.pb`` (a persisted
    root not chained from it is ``ROOT_EQUIVOCATION``), then the files are applied on top of
    them as any verifier applies a newer answer (TUF 5.3, 5.4). The files must reach the same
    versions with the same bytes. Raises FailedPrecondition with the reason: ``ROOT_ROLLBACK``
    (the files stop at an older root), ``BUNDLE_ROLLBACK`` (an older bundle),
    ``BUNDLE_EQUIVOCATION`` (another bundle at the held version), ``ROOT_EQUIVOCATION``, or
    the reason the files failed to verify on top of what was held. Nothing held yet: passes.
    To go back on purpose, an operator removes ``state_dir/trust`` (docs/trust-operations.md).
    """
    if store.load().root is None:
        return
    files_bundle = view.state.bundle_envelope
    assert files_bundle is not None  # load_view raises unless a bundle is held
    try:
        held = store.restore(Envelope.from_proto(view.roots[0]), now=now)
        held_versions = held.versions
        held.update([Envelope.from_proto(r) for r in view.roots], files_bundle, now=now)
    except NumfedError as err:
        raise FailedPrecondition(
            err.reason,
            f"trust files in force before this start are newer than or differ from these: "
            f"{err.message}",
        ) from err
    root, bundle = view.state.versions
    if held.root.version != root:
        raise FailedPrecondition(
            TrustReason.ROOT_ROLLBACK,
            f"the trust files stop at root v{root}; root v{held.root.version} was in force",
        )
    held_bundle = held.bundle_envelope
    if held_bundle is not None and held_bundle.payload != files_bundle.payload:
        raise FailedPrecondition(
            TrustReason.BUNDLE_EQUIVOCATION,
            f"the trust files hold another bundle v{bundle} than the one in force "
            f"(root v{held_versions[0]}, bundle v{held_versions[1]} held before)",
        )


def keep(view: TrustView, store: TrustStore) -> None:
    """Persist ``view`` as the floor of the next start (:func:`hold_no_less`). A write that
    fails is logged: the view still applies (refusing newer trust would not be safer)."""
    bundle = view.state.bundle_envelope
    assert bundle is not None  # load_view raises unless a bundle is held
    try:
        store.save_root(view.state.root_envelope)
        store.save_bundle(bundle)
    except NumfedError as err:
        log.error("trust in force not persisted: %s: %s", err.reason, err.message)


def _looked_at(trust_dir: Path) -> tuple[tuple[str, int, int, int], ...] | None:
    """What tells one version of the directory's files from the next."""
    entries = []
    try:
        with os.scandir(trust_dir) as found:
            for e in found:
                if e.name.endswith(".pb"):
                    st = e.stat()
                    entries.append((e.name, st.st_mtime_ns, st.st_size, st.st_ino))
    except OSError:
        return None
    return tuple(sorted(entries))


class TrustWatcher:
    """Applies the trust directory's files when they change (looked at every ``interval``
    seconds) or when told to (:meth:`reload`, on SIGHUP).

    ``current`` gives the view in force; ``apply`` gets each newer view that verified.
    """

    def __init__(
        self,
        trust_dir: Path,
        current: Callable[[], TrustView],
        apply: Callable[[TrustView], None],
        *,
        interval: float = 1.0,
    ) -> None:
        self.trust_dir = trust_dir
        self._current = current
        self._apply = apply
        self._interval = interval
        self._seen = _looked_at(trust_dir)
        self._asked = asyncio.Event()
        self.attempts = 0
        """Loads tried since start (applied or refused)."""
        self._tried = asyncio.Condition()

    def reload(self) -> None:
        """Read the files again now, changed or not (SIGHUP)."""
        self._asked.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._asked.wait()
            asked = self._asked.is_set()
            self._asked.clear()
            seen = _looked_at(self.trust_dir)
            if not asked and seen == self._seen:
                continue
            self._seen = seen
            try:
                self.reload_now("SIGHUP" if asked else "files changed")
            except Exception:  # never let the watcher die
                log.exception(
                    "applying %s failed; the next change or SIGHUP retries", self.trust_dir
                )
            async with self._tried:
                self.attempts += 1
                self._tried.notify_all()

    async def wait_for_attempt(self, after: int) -> None:
        """Return once more than ``after`` loads have been tried (for tests and tools)."""
        async with self._tried:
            await self._tried.wait_for(lambda: self.attempts > after)

    def reload_now(self, why: str) -> bool:
        """Verify the files on top of the view in force; apply them if they verify and are
        newer. Returns whether the view changed."""
        base = self._current()
        try:
            view, result = load_view(self.trust_dir, now=datetime.now(UTC), base=base)
        except NumfedError as err:
            root, bundle = base.state.versions
            log.error(
                "trust files in %s not applied (%s): %s: %s; root v%d and bundle v%d stay",
                self.trust_dir,
                why,
                err.reason,
                err.message,
                root,
                bundle,
            )
            return False
        if not result.changed:
            return False
        self._apply(view)
        log.info("trust files in %s applied (%s): %s", self.trust_dir, why, result.describe())
        return True
