"""Wire the gateway together from its config and run it (``numfed gateway serve``).

Members come and go while it runs: the config file is watched (see :mod:`gateway.membership`)
and each member's link, event pusher, carrier channel and portability sync are started and
stopped one member at a time. The edge serves only the members in force, and refuses
certificates on the CA's revocation list.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc

from gateway.admission import admission
from gateway.audit import AuditRecord, AuditWriter
from gateway.authority import Portability
from gateway.dispatcher import Dispatcher
from gateway.eventlog import EventLog
from gateway.membership import ConfigWatcher, Membership, MembershipChange
from gateway.observability import CarrierHealth, GatewayObserver
from gateway.platforms import PlatformLink
from gateway.policy import POLICY
from gateway.pseudonym import Pseudonymizer, load_or_create_key
from gateway.publisher import EventPublisher
from gateway.pusher import EventPusher
from gateway.results import now_us
from gateway.schema import number_ports, port_halves
from gateway.service import GatewayServicer, TrustFiles
from gateway.store import Store
from gateway.watchers import JobWatchers
from numfed import pki
from numfed.config import GatewayConfig, Member, load_gateway_config
from numfed.envelope import Envelope
from numfed.errors import NumfedError, PermissionDenied
from numfed.events import EventKind, verify_event_batch
from numfed.identity import PeerId, Role
from numfed.observability import metrics
from numfed.observability.logs import RetrySummary, failure_reason
from numfed.portability import NumberPlan
from numfed.portstate import PortStore
from numfed.rpc import MAX_MESSAGE_BYTES, ServerHandle, start_server
from numfed.serving import process_telemetry, run_until_signalled
from numfed.trust import TrustedState
from numfed.trustfiles import load_trusted_state, read_bundle, read_roots
from numfed.v1 import carrier_pb2, carrier_pb2_grpc, gateway_pb2_grpc

__all__ = ["Gateway", "serve"]

log = logging.getLogger(__name__)

GATEWAY_PEER = PeerId(Role.GATEWAY, "main")
SERVICE = "numfed.v1.GatewayService"


def channel_options() -> list[tuple[str, int]]:
    """Options of the gateway's channels to members: a member that comes back after an outage
    or a restart is reconnected within 2 s (gRPC's default backoff grows to two minutes)."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


def wake_all(pushers: Iterable[EventPusher]) -> None:
    for p in pushers:
        p.wake()


def _platform_link(config: GatewayConfig, member: Member) -> PlatformLink:
    # Each channel checks that the server is the member it names (not just any member).
    channel = pki.secure_channel(
        member.endpoint,
        config.pki_dir,
        GATEWAY_PEER,
        server=PeerId(Role.PLATFORM, member.id),
        options=channel_options(),
    )
    return PlatformLink(member.id, channel, config.limits)


def _carrier_channel(config: GatewayConfig, member: Member) -> grpc.aio.Channel:
    return pki.secure_channel(
        member.endpoint,
        config.pki_dir,
        GATEWAY_PEER,
        server=PeerId(Role.CARRIER, member.id),
        options=channel_options(),
    )


@dataclass
class Gateway:
    """A running gateway: server, dispatcher and background tasks."""

    config: GatewayConfig
    store: Store
    server: ServerHandle
    dispatcher: Dispatcher
    links: dict[str, PlatformLink]
    carrier_channels: dict[str, grpc.aio.Channel]
    portability: Portability
    pseudonym: Pseudonymizer
    audit: AuditWriter
    events: EventLog
    publisher: EventPublisher
    ports: PortStore
    trust: TrustedState
    membership: Membership
    revocations: pki.RevocationList
    carrier_stubs: dict[str, carrier_pb2_grpc.CarrierServiceAsyncStub]
    pushers: dict[str, EventPusher]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    member_tasks: dict[PeerId, asyncio.Task[None]] = field(default_factory=dict)
    """Per member: a platform's event pusher, a carrier's portability sync."""
    watcher: ConfigWatcher | None = None
    synced: set[str] = field(default_factory=set)
    _halves_from: set[str] = field(default_factory=set)
    _all_halves: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once every carrier has told the gateway which numbers it serves."""
    stopping: bool = False
    carrier_health: dict[str, CarrierHealth] = field(default_factory=dict)
    """Per carrier: its last sync and its last failure (``numfed status``)."""
    observer: GatewayObserver | None = None

    @property
    def serving(self) -> bool:
        """Health says SERVING: every carrier synced (or the wait ran out), not stopping."""
        return self.ready.is_set() and not self.stopping

    @property
    def port(self) -> int:
        return self.server.port

    @classmethod
    async def start(cls, config: GatewayConfig) -> Gateway:
        """Open the database, start serving and the background work; a failure on the way
        closes what was opened (so a process that cannot start exits cleanly)."""
        store = Store(config.database_url)
        opened: list[Callable[[], Awaitable[None]]] = []
        try:
            return await cls._start(config, store, opened)
        except BaseException:
            for close in reversed(opened):
                with contextlib.suppress(Exception):
                    await close()
            store.close()
            raise

    @classmethod
    async def _start(
        cls, config: GatewayConfig, store: Store, opened: list[Callable[[], Awaitable[None]]]
    ) -> Gateway:
        layout = pki.PkiLayout(config.pki_dir)
        store.lock_single_replica()
        await store.run(store.migrate)
        # SQLite serves one replica: leases left by a killed process are ours to take back.
        if store.dialect == "sqlite":
            await store.run(store.release_leases, None, now_us())
        pseudonym = Pseudonymizer(
            load_or_create_key(config.pseudonym_key_file or config.state_dir / "pseudonym.key")
        )
        now = datetime.now(UTC)
        trust = load_trusted_state(config.trust_dir, now=now)
        if trust.bundle is not None:
            log.info(
                "trust bundle v%d accepted from %s (root v%d; expires %s)",
                trust.bundle.version,
                config.trust_dir,
                trust.root.version,
                trust.bundle.expires_at.isoformat(timespec="seconds"),
            )
        trust_files = TrustFiles(read_roots(config.trust_dir), read_bundle(config.trust_dir))
        links = {m.id: _platform_link(config, m) for m in config.platforms}
        carrier_channels = {m.id: _carrier_channel(config, m) for m in config.carriers}
        opened += [link.close for link in links.values()]
        opened += [channel.close for channel in carrier_channels.values()]
        carrier_stubs = {
            c: carrier_pb2_grpc.CarrierServiceStub(ch) for c, ch in carrier_channels.items()
        }
        membership = Membership(
            GATEWAY_PEER, [m.id for m in config.carriers], [m.id for m in config.platforms]
        )
        revocations = pki.RevocationList(layout)
        ports = PortStore((number_ports, port_halves), pseudonym)
        portability = Portability(NumberPlan.from_bundle(trust.bundle), pseudonym)
        portability.apply(await store.run(ports.read_completed, store.engine, 0))
        watchers = JobWatchers()
        owner = f"gw-{secrets.token_hex(6)}"  # this replica's name on its leases
        audit = AuditWriter(store.engine, store.run)
        events = EventLog(store.engine)
        pushers: dict[str, EventPusher] = {}
        dispatcher = Dispatcher(
            audit=audit.record,
            store=store,
            links=links,
            limits=config.limits,
            owner=owner,
            on_change=watchers.notify,
        )
        publisher = EventPublisher(
            store=store,
            events=events,
            ports=ports,
            portability=portability,
            pseudonym=pseudonym,
            audit=audit.record,
            on_events=lambda: wake_all(pushers.values()),
        )
        servicer = GatewayServicer(
            store=store,
            trust=trust,
            trust_files=trust_files,
            links=links,
            portability=portability,
            pseudonym=pseudonym,
            dispatcher=dispatcher,
            watchers=watchers,
            limits=config.limits,
            audit=audit,
            carrier_stubs=carrier_stubs,
            events=events,
            publisher=publisher,
        )

        def register(server: grpc.aio.Server) -> str:
            gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
            return SERVICE

        handle = await start_server(
            register=[register],
            credentials=pki.server_credentials(layout, GATEWAY_PEER),
            policy=POLICY,
            bind=config.listen,
            admission=admission(config.limits),
            members=membership,
            revocations=revocations,
            not_serving=[SERVICE] if config.carriers else [],
        )
        opened.append(lambda: handle.stop(0))
        gw = cls(
            config=config,
            store=store,
            server=handle,
            dispatcher=dispatcher,
            links=links,
            carrier_channels=carrier_channels,
            portability=portability,
            pseudonym=pseudonym,
            audit=audit,
            events=events,
            membership=membership,
            revocations=revocations,
            carrier_stubs=carrier_stubs,
            pushers=pushers,
            publisher=publisher,
            ports=ports,
            trust=trust,
        )
        audit.start()
        gw.observer = GatewayObserver(gw)
        metrics.add_source(gw.observer)
        # Ready once every carrier has told us which numbers it serves.
        if not config.carriers:
            gw.ready.set()
        gw.tasks.append(asyncio.create_task(dispatcher.run()))
        for platform in config.platforms:
            gw._start_pusher(platform)
        for carrier in config.carriers:
            gw._start_sync(carrier)
        if config.source is not None:
            gw.watcher = ConfigWatcher(config.source, config, gw.apply_members)
            gw.tasks.append(asyncio.create_task(gw.watcher.run()))
        gw.tasks.append(asyncio.create_task(gw._follow_ports()))
        gw.tasks.append(asyncio.create_task(gw._serve_after_wait()))
        return gw

    # -- members -------------------------------------------------------------------------------

    def _start_pusher(self, member: Member) -> None:
        if member.events != "push":
            return  # a polling platform calls PullEvents itself
        pusher = EventPusher(
            link=self.links[member.id],
            events=self.events,
            store=self.store,
            limits=self.config.limits,
            owner=self.dispatcher.owner,
            audit=self.audit.record,
        )
        self.pushers[member.id] = pusher
        self.member_tasks[PeerId(Role.PLATFORM, member.id)] = asyncio.create_task(pusher.run())

    def _start_sync(self, member: Member) -> None:
        task = asyncio.create_task(self._sync_carrier_forever(member))
        self.member_tasks[PeerId(Role.CARRIER, member.id)] = task

    async def _stop_task(self, peer: PeerId) -> None:
        task = self.member_tasks.pop(peer, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _add_platform(self, member: Member) -> None:
        self.links[member.id] = _platform_link(self.config, member)
        self._start_pusher(member)

    async def _remove_platform(self, platform_id: str) -> None:
        """No more queries, releases or event pushes to it; calls out to it are cancelled."""
        link = self.links.pop(platform_id, None)
        self.pushers.pop(platform_id, None)
        await self._stop_task(PeerId(Role.PLATFORM, platform_id))
        if link is not None:
            await link.close()

    def _add_carrier(self, member: Member) -> None:
        channel = _carrier_channel(self.config, member)
        self.carrier_channels[member.id] = channel
        self.carrier_stubs[member.id] = carrier_pb2_grpc.CarrierServiceStub(channel)
        self._start_sync(member)

    async def _remove_carrier(self, carrier_id: str) -> None:
        """No more recycled checks or portability syncs to it."""
        self.carrier_stubs.pop(carrier_id, None)
        channel = self.carrier_channels.pop(carrier_id, None)
        await self._stop_task(PeerId(Role.CARRIER, carrier_id))
        self.synced.discard(carrier_id)
        if channel is not None:
            await channel.close()

    async def apply_members(self, new: GatewayConfig, change: MembershipChange) -> None:
        """Serve and call the members of ``new``: removed members are refused at once, then
        their links, pushers and syncs stop; added members are called first, then served."""
        staying = [m.id for m in self.config.carriers if m.id not in change.carriers.removed]
        kept = [m.id for m in self.config.platforms if m.id not in change.platforms.removed]
        self.membership.set(carriers=staying, platforms=kept)
        for carrier_id in change.carriers.removed:
            await self._remove_carrier(carrier_id)
        for platform_id in change.platforms.removed:
            await self._remove_platform(platform_id)
        for member in change.carriers.changed:
            await self._remove_carrier(member.id)
        for member in change.platforms.changed:
            await self._remove_platform(member.id)
        self.config = dataclasses.replace(
            self.config, carriers=new.carriers, platforms=new.platforms
        )
        for member in change.carriers.added + change.carriers.changed:
            self._add_carrier(member)
        for member in change.platforms.added + change.platforms.changed:
            self._add_platform(member)
        self.membership.set(
            carriers=[m.id for m in new.carriers], platforms=[m.id for m in new.platforms]
        )
        if self._halves_from >= {m.id for m in new.carriers}:
            self._all_halves.set()  # the carrier still missing may be the one removed
        await self._mark_ready_if_synced()

    def reload(self) -> None:
        """Re-read the config file and the revocation list now (SIGHUP)."""
        if self.watcher is not None:
            self.watcher.reload()
        self.revocations.refresh()

    async def _mark_ready_if_synced(self) -> None:
        if self.synced >= {m.id for m in self.config.carriers} and not self.stopping:
            await self.server.set_serving(SERVICE, True)
            self.ready.set()

    async def sync_carrier(self, member: Member) -> int:
        """Take a carrier's signed port halves, then (once every carrier's halves are in)
        compare what it says it serves with who serves each number. Returns how many numbers
        the carrier claims but does not serve (disputes: logged and audited, never applied)."""
        await self._take_port_halves(member)
        self._halves_from.add(member.id)
        if self._halves_from >= {m.id for m in self.config.carriers}:
            self._all_halves.set()
        # A port's other half may come from a later carrier; one that never answers holds
        # nobody up for longer than carrier_sync_wait.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_halves.wait(), self.config.limits.carrier_sync_wait)
        await self._refresh_ports()  # another replica may have completed ports meanwhile
        return await self._count_disputes(member)

    async def _count_disputes(self, member: Member) -> int:
        stub = carrier_pb2_grpc.CarrierServiceStub(self.carrier_channels[member.id])
        token = ""
        disputed = listed = 0
        while True:
            page = await stub.ListServedNumbers(
                carrier_pb2.ListServedNumbersRequest(page_size=5000, page_token=token),
                timeout=self.config.limits.default_call_timeout,
            )
            listed += len(page.numbers)
            disputed += sum(1 for n in page.numbers if self.portability.carrier_for(n) != member.id)
            token = page.next_page_token
            if not token:
                break
        if disputed:
            log.warning(
                "portability: %s lists %d of %d numbers that another carrier serves "
                "(a port without both carriers' halves?)",
                member.id,
                disputed,
                listed,
            )
            self.audit.record(
                AuditRecord(
                    now_us(),
                    "PORTABILITY_DISPUTE",
                    PeerId(Role.CARRIER, member.id).uri,
                    outcome="NOT_APPLIED",
                    detail={"numbers": str(disputed), "listed": str(listed)},
                )
            )
        return disputed

    async def _take_port_halves(self, member: Member) -> None:
        """Judge and log every signed port half the carrier holds that the gateway lacks."""
        stub = carrier_pb2_grpc.CarrierServiceStub(self.carrier_channels[member.id])
        actor = PeerId(Role.CARRIER, member.id).uri
        token = ""
        while True:
            page = await stub.ListPortHalves(
                carrier_pb2.ListPortHalvesRequest(page_token=token),
                timeout=self.config.limits.default_call_timeout,
            )
            if page.HasField("batch"):
                try:
                    envelope = Envelope.from_proto(page.batch)
                    batch = verify_event_batch(envelope, self.trust, now=datetime.now(UTC))
                    if batch.carrier_id != member.id or any(
                        e.kind is not EventKind.PORTED for e in batch.events
                    ):
                        raise PermissionDenied(
                            "NOT_PORT_HALVES", "a sync answer holds the carrier's own halves only"
                        )
                    raw = page.batch.SerializeToString(deterministic=True)
                    await self.publisher.publish(batch, raw, actor=actor, only_if_changed=True)
                except NumfedError as err:
                    log.warning(
                        "port halves from %s refused: %s %s", member.id, err.reason, err.message
                    )
                    self.audit.record(
                        AuditRecord(now_us(), "PORT_HALVES", actor, outcome=err.reason)
                    )
            token = page.next_page_token
            if not token:
                return

    async def _sync_carrier_forever(self, member: Member) -> None:
        """Sync with a carrier; retry until it answers, then every minute. Nothing a carrier
        answers ends this loop: a bad answer is logged and tried again later. The log says
        when a carrier is first synced or its disputes change, and summarises failures."""
        delay = 0.2
        health = self.carrier_health.setdefault(member.id, CarrierHealth())
        unreachable = RetrySummary(
            log, f"carrier {member.id} not reachable", f"carrier {member.id} reachable again"
        )
        reported: int | None = None
        while True:
            try:
                disputed = await self.sync_carrier(member)
                unreachable.succeeded()
                level = logging.INFO if disputed != reported else logging.DEBUG
                log.log(level, "carrier %s synced (%d disputed numbers)", member.id, disputed)
                reported = disputed
                health.synced_at = time.time()
                self.synced.add(member.id)
                await self._mark_ready_if_synced()
                delay = 60.0
            except grpc.aio.AioRpcError as exc:
                health.failed(exc)
                unreachable.failed(failure_reason(exc))
                delay = min(delay * 2, 5.0) if delay < 60 else 0.2
            except Exception as exc:  # a carrier's bad answer or a database error: retry
                health.failed(exc)
                log.warning(
                    "sync with carrier %s failed (%s: %s); retrying",
                    member.id,
                    type(exc).__name__,
                    exc,
                )
                delay = 5.0
            await asyncio.sleep(delay)

    async def _serve_after_wait(self) -> None:
        """Serve once every carrier has synced, or after carrier_sync_wait at the latest: one
        carrier that never answers must not keep the federation down. Until a carrier's halves
        are in, claims for numbers ported to it are refused (NUMBER_NOT_SERVED): safe."""
        await asyncio.sleep(self.config.limits.carrier_sync_wait)
        if not self.ready.is_set():
            missing = sorted({m.id for m in self.config.carriers} - self.synced)
            log.warning("serving without a sync from %s (not reachable yet)", ", ".join(missing))
            if not self.stopping:
                await self.server.set_serving(SERVICE, True)
            self.ready.set()

    async def _refresh_ports(self) -> None:
        """Mirror ports completed through other replicas into the claim path's view."""
        fresh = await self.store.run(
            self.ports.read_completed, self.store.engine, self.portability.seq
        )
        self.portability.apply(fresh)

    async def _follow_ports(self) -> None:
        failing = RetrySummary(
            log, "reading completed ports failing", "reading completed ports working again"
        )
        while True:
            await asyncio.sleep(self.config.limits.portability_refresh)
            try:
                await self._refresh_ports()
                failing.succeeded()
            except Exception as exc:  # the database may be away for a while: try again
                failing.failed(failure_reason(exc))

    async def stop(self, grace: float = 2.0) -> None:
        """Stop gracefully: health NOT_SERVING and no new calls at once; calls and release
        batches in flight get up to ``grace`` seconds to finish; then the leases this replica
        holds are given back, so another replica (or the next start) takes over at once."""
        self.stopping = True
        if self.observer is not None:
            metrics.remove_source(self.observer)
        await asyncio.gather(self.server.stop(grace), self.dispatcher.stop(grace))
        tasks = self.tasks + list(self.member_tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.audit.stop()
        for link in self.links.values():
            await link.close()
        for ch in self.carrier_channels.values():
            await ch.close()
        owner = self.dispatcher.owner
        try:
            await self.store.run(self.store.release_leases, owner, now_us())
            await self.store.run(self.events.unlease, owner)
        finally:
            self.store.close()


async def serve(config_path: Path) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully (see :meth:`Gateway.stop`)."""
    config = load_gateway_config(config_path)
    async with process_telemetry("gateway", config.telemetry, routes=("/status",)) as telemetry:
        gw = await Gateway.start(config)
        assert gw.observer is not None
        telemetry.routes["/status"] = gw.observer.status_json
        print(f"gateway listening on port {gw.port}", flush=True)  # for scripts: it is up
        await run_until_signalled(
            lambda: gw.stop(config.limits.shutdown_grace), on_hangup=gw.reload
        )
