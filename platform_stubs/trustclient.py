"""A platform's view of the trust bundle: pinned root on disk, bundle fetched from the gateway.

The gateway only carries the signed metadata; the platform verifies it against the root it
pinned itself, so a compromised gateway cannot slip in a carrier key. What the platform accepts
is persisted in its own state (:class:`numfed.truststore.TrustStore`): each root as it is
accepted, and each newer bundle. A restarted platform starts from there, so it never accepts a
bundle older than one it held before, and never walks the root chain twice.

It refreshes every minute, and at once (at most once a second, one refresh at a time) when the
gateway says it holds newer versions (:mod:`numfed.trusthints`) or a caller asks
(:meth:`TrustClient.refresh_if_behind`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import grpc

from numfed import pki
from numfed.checkpoint import CheckpointKeeper, audit_origin
from numfed.config import Limits
from numfed.envelope import Envelope
from numfed.errors import NumfedError, Unavailable
from numfed.identity import PeerId
from numfed.observability.logs import RetrySummary, failure_reason
from numfed.trust import TrustedState
from numfed.trustfiles import read_roots
from numfed.trusthints import VersionHintReader, versions_in
from numfed.truststore import TrustStore
from numfed.v1 import gateway_pb2, gateway_pb2_grpc

__all__ = ["MIN_REFRESH_INTERVAL", "TrustClient"]

log = logging.getLogger(__name__)

RECONNECT = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)]
"""A platform started before its gateway reconnects within 2 s of the gateway coming up (gRPC's
default backoff grows to two minutes)."""
MIN_REFRESH_INTERVAL = 1.0
"""Seconds between two refreshes that a hint or :meth:`TrustClient.refresh_if_behind` starts."""


def _why(exc: grpc.aio.AioRpcError | NumfedError) -> str:
    if isinstance(exc, NumfedError):
        return f"{exc.reason}: {exc.message}"
    return f"{exc.code().name}: {exc.details()}"


class TrustClient:
    """The trust a platform verifies with, kept fresh from the gateway.

    ``state_dir`` is where the accepted root and bundle are persisted (None: nowhere, for
    tests of a platform's first start only).
    """

    state_class: ClassVar[type[TrustedState]] = TrustedState
    """The trust state machine kept (the conformance kit's broken members swap in one with a
    rule broken)."""

    def __init__(
        self,
        *,
        trust_dir: Path,
        pki_dir: Path,
        peer: PeerId,
        gateway: str,
        state_dir: Path | None = None,
        min_refresh_interval: float = MIN_REFRESH_INTERVAL,
        checkpoint_file: Path | None = None,
        limits: Limits | None = None,
    ) -> None:
        roots = read_roots(trust_dir)
        if not roots:
            raise Unavailable("NO_PINNED_ROOT", f"{trust_dir} has no root-1.pb to pin")
        self._store = TrustStore(state_dir) if state_dir is not None else None
        self._pin = Envelope.from_proto(roots[0])
        self.state = self._restore(self._pin)
        self.checkpoints: CheckpointKeeper | None = None
        """The gateway's audit checkpoints this platform keeps (with ``checkpoint_file``)."""
        if checkpoint_file is not None:
            origin = audit_origin(self._pin)
            self.checkpoints = CheckpointKeeper(checkpoint_file, origin=origin, holder=peer.uri)
        self.ready = asyncio.Event()
        """Set while the platform holds a verified bundle it fetched (PLAT-OPS-1: its health
        is SERVING exactly then); cleared when it holds none."""
        self.hints = VersionHintReader(self.notice, self._held)
        """Add to every channel to the gateway, so that its answers' version hints count (each
        call states the versions held, and only an answer with news carries one)."""
        self._channel = pki.secure_channel(
            gateway,
            pki_dir,
            peer,
            server=pki.GATEWAY,
            options=RECONNECT,
            interceptors=[self.hints],
            limits=limits,
        )
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._unreachable = RetrySummary(
            log,
            "gateway not reachable for the trust bundle",
            "gateway reachable again for the trust bundle",
            level=logging.INFO,
        )
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._min_interval = min_refresh_interval
        self._last_attempt = float("-inf")
        self._pending: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[bool]] = set()
        self._hint: tuple[int, int] | None = None
        """The newest hint noticed that the hint follower has not acted on yet."""
        self._hints_task: asyncio.Task[bool] | None = None

    @property
    def gateway(self) -> gateway_pb2_grpc.GatewayServiceAsyncStub:
        """The gateway, on the channel trust is fetched on (its answers' version hints count)."""
        return self._stub

    def _restore(self, pin: Envelope) -> TrustedState:
        """The persisted trust, else the pin (rule PLAT-TRUST-6, :meth:`TrustStore.restore`)."""
        now = datetime.now(UTC)
        if self._store is None:
            return self.state_class(pin, now=now)
        return self._store.restore(pin, now=now, kind=self.state_class)

    def trusted(self) -> TrustedState:
        """The state to verify with; UNAVAILABLE until a bundle has been accepted."""
        if not self.ready.is_set():
            raise Unavailable("NO_TRUST_BUNDLE", "the platform has no trust bundle yet")
        return self.state

    async def refresh(self, *, wait_for_ready: bool = False) -> bool:
        """Fetch and verify the roots and bundle now; True when the held state changed (rules
        PLAT-TRUST-11, sending the root version held).

        One refresh runs at a time. ``wait_for_ready``: wait up to the call's 5 s for the
        gateway to come up instead of failing at once. Each root accepted is persisted at once;
        the bundle once the whole answer verified, so after a failure the files hold the last
        good point.
        """
        async with self._lock:
            self._last_attempt = asyncio.get_running_loop().time()
            state = self.state
            answer = await self._stub.GetTrustBundle(
                gateway_pb2.GetTrustBundleRequest(known_root_version=state.root.version),
                timeout=5,
                wait_for_ready=wait_for_ready,
            )
            roots = [Envelope.from_proto(r) for r in answer.roots]
            bundle = Envelope.from_proto(answer.bundle)
            now = datetime.now(UTC)
            try:
                if self._store is not None:
                    result = self._store.update(state, roots, bundle, now=now)
                else:
                    result = state.update(roots, bundle, now=now)
            finally:
                if state.bundle is None:  # a new root dropped the bundle it does not sign
                    self.ready.clear()
                await self._notify()
            if result.changed:
                log.info("trust updated: %s", result.describe())
            self.ready.set()
            self._keep_checkpoint(answer)
            await self._notify()
            return result.changed

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def reset(self) -> None:
        """Back to the pin, as at a first start: forget every root and bundle accepted, in
        memory and on disk; no bundle is held until the next refresh (conformance mode's
        ResetTrust)."""
        async with self._lock:
            if self._store is not None:
                self._store.clear()
            self.state = self.state_class(self._pin, now=datetime.now(UTC))
            self.ready.clear()
            await self._notify()

    async def reload(self) -> None:
        """Rebuild the trust from what was persisted, as a restart does; nothing is fetched, so
        the platform is not ready until the next refresh (conformance mode's ReloadTrust)."""
        async with self._lock:
            self.state = self._restore(self._pin)
            self.ready.clear()
            await self._notify()

    def _keep_checkpoint(self, answer: gateway_pb2.GetTrustBundleResponse) -> None:
        """Keep the gateway's audit checkpoint from a GetTrustBundle answer (a bad one, or proof
        of a fork kept as evidence, never blocks trust)."""
        bundle = self.state.bundle
        if self.checkpoints is None or bundle is None or not answer.HasField("checkpoint"):
            return
        try:
            now = datetime.now(UTC)
            self.checkpoints.offer(Envelope.from_proto(answer.checkpoint), bundle, now=now)
        except NumfedError as err:
            log.warning("audit checkpoint not kept: %s %s", err.reason, err.message)

    def behind(self, versions: tuple[int, int]) -> bool:
        return self.state.behind(versions)

    async def refresh_if_behind(self, hint: tuple[int, int] | None = None) -> bool:
        """Refresh unless ``hint`` (the root and bundle versions someone holds) is no newer
        than what is held; True when the held state changed.

        No hint: refresh (a claim named a key the bundle lacks, say), sharing a refresh already
        under way: callers that arrive meanwhile wait for it and take its result, so however many
        claims fail at once, the gateway is asked once. With a hint, a caller whose hint the
        shared refresh did not reach starts one of its own (the refresh may have begun before
        what made this call ask). A refresh starts no sooner than ``min_refresh_interval`` (1 s)
        after the last. A failed refresh is logged, not raised. The hint itself never changes
        trust.
        """
        if hint is not None and not self.state.behind(hint):
            return False
        before = self.state.versions
        own = False
        while not own:
            task = self._pending
            if task is None or task.done():
                task = self._pending = asyncio.create_task(self._paced_refresh(hint))
                own = True
            await asyncio.shield(task)
            if hint is None or not self.state.behind(hint):
                break
        return self.state.versions != before

    async def _paced_refresh(self, hint: tuple[int, int] | None) -> None:
        loop = asyncio.get_running_loop()
        wait = self._last_attempt + self._min_interval - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if hint is not None and not self.state.behind(hint):
            return  # a refresh meanwhile caught up
        try:
            await self.refresh()
        except (grpc.aio.AioRpcError, NumfedError) as exc:
            log.info("trust refresh failed (%s)", _why(exc))

    def notice(self, versions: tuple[int, int]) -> None:
        """A peer holds ``versions``: refresh in the background if they are newer (rule
        PLAT-TRUST-17).

        One background task follows the hints: a hint that comes while it runs replaces the one
        waiting (the newest counts), so however many answers and calls carry a hint, and however
        far ahead it lies, they start at most one refresh a second and keep one task, never one
        each (a gateway that states versions it cannot serve costs a fetch a second, no more).
        """
        if not self.state.behind(versions):
            return
        self._hint = versions
        if self._hints_task is None or self._hints_task.done():
            task = asyncio.get_running_loop().create_task(self._follow_hints())
            self._hints_task = task
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _follow_hints(self) -> bool:
        """Refresh for the newest hint noticed, until no hint waits."""
        changed = False
        while (hint := self._hint) is not None:
            self._hint = None
            changed |= await self.refresh_if_behind(hint)
        return changed

    def notice_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        """The gateway's call metadata (a PlatformService request): see :meth:`notice`."""
        hint = versions_in(metadata)
        if hint is not None:
            self.notice(hint)

    async def wait_until(self, condition: Callable[[TrustedState], bool]) -> None:
        """Return once ``condition`` holds for the state (checked after each refresh)."""
        async with self._changed:
            await self._changed.wait_for(lambda: condition(self.state))

    def _held(self) -> tuple[int, int]:
        """(root version, bundle version) held now; bundle version 0 when none is held."""
        bundle = self.state.bundle
        return self.state.root.version, bundle.version if bundle is not None else 0

    async def run(self, every: float = 60.0) -> None:
        """Fetch at once, retrying until the gateway answers; then refresh every ``every`` s."""
        delay = 0.1
        while True:
            try:
                await self.refresh()
                self._unreachable.succeeded()
                delay = every
            except (grpc.aio.AioRpcError, NumfedError) as exc:
                self._unreachable.failed(failure_reason(exc))
                delay = min(max(delay * 2, 0.1), 5.0) if not self.ready.is_set() else every
            await asyncio.sleep(delay)

    async def close(self) -> None:
        tasks = [*self._background, *([self._pending] if self._pending is not None else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._channel.close()
