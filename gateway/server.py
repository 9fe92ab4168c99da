"""Wire the gateway together from its config and run it (``numfed gateway serve``).

Members come and go while it runs: the config file is watched (see :mod:`gateway.membership`)
and each member's link, event pusher, carrier channel and portability sync are started and
stopped one member at a time. The edge serves only the members in force, and refuses
certificates on the CA's revocation list. The trust directory is watched too
(:mod:`gateway.trustview`): newer trust files take effect without a restart, and every answer
(and every call to a platform) says which root and bundle versions the gateway holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from gateway.admission import admission
from gateway.audit import AuditRecord, AuditWriter
from gateway.authority import Portability
from gateway.checkpoints import Checkpointer
from gateway.dispatcher import Dispatcher
from gateway.eventlog import EventLog
from gateway.facades.camara.app import CamaraFacade
from gateway.facades.edge import Edge
from gateway.facades.server import FacadeHandle, bound_url, start_facades
from gateway.facades.ssf.app import SsfTransmitter
from gateway.facades.ssf.pusher import SetPusher, receiver_tls
from gateway.facades.ssf.sets import SetSigner
from gateway.facades.ssf.store import StreamStore
from gateway.membership import ConfigWatcher, Membership, MembershipChange
from gateway.observability import CarrierHealth, GatewayObserver
from gateway.platforms import PlatformLink
from gateway.policy import POLICY
from gateway.pseudonym import Pseudonymizer, load_or_create_key
from gateway.publisher import EventPublisher
from gateway.pusher import EventPusher, LogHead
from gateway.results import now_us
from gateway.schema import number_ports, port_halves
from gateway.service import GatewayServicer
from gateway.store import Store
from gateway.trustview import TrustView, TrustWatcher, hold_no_less, keep, load_view
from gateway.watchers import JobWatchers
from numfed import pki
from numfed.checkpoint import audit_origin
from numfed.config import GatewayConfig, Member, load_gateway_config
from numfed.envelope import Envelope, SigningKey
from numfed.errors import NumfedError, PermissionDenied
from numfed.events import EventKind, verify_event_batch
from numfed.identity import PeerId, Role
from numfed.observability import metrics
from numfed.observability.logs import RetrySummary, failure_reason
from numfed.portability import NumberPlan
from numfed.portstate import PortStore
from numfed.rpc import MAX_MESSAGE_BYTES, Admission, ServerHandle, start_server
from numfed.serving import process_telemetry, run_until_signalled
from numfed.trust import VERSION_METADATA_KEY, TrustedState
from numfed.trusthints import hint_for
from numfed.truststore import TrustStore
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


def wake_all(pushers: Iterable[EventPusher | SetPusher]) -> None:
    for p in pushers:
        p.wake()


def _audit_signer(layout: pki.PkiLayout, gateway_id: str) -> SigningKey | None:
    """The gateway's audit key, if its PKI has one (older PKIs do not: nothing is signed)."""
    if not layout.audit_key_path(gateway_id).exists():
        return None
    return pki.load_audit_signer(layout, gateway_id)


def _trust_store(config: GatewayConfig) -> TrustStore:
    """Where the gateway keeps the trust last in force, the floor of its next start."""
    return TrustStore(config.state_dir / "trust")


def _log_trust_in_force(trust_dir: Path, view: TrustView) -> None:
    """The trust the gateway starts with, in one line (later changes: gateway.trustview)."""
    bundle = view.state.bundle
    assert bundle is not None  # load_view raises unless a bundle is held
    log.info(
        "trust files in %s in force: root v%d, bundle v%d (expires %s)",
        trust_dir,
        view.state.root.version,
        bundle.version,
        bundle.expires_at.isoformat(timespec="seconds"),
    )


def _platform_link(
    config: GatewayConfig, member: Member, versions: Callable[[], str]
) -> PlatformLink:
    # Each channel checks that the server is the member it names (not just any member); each
    # call tells it the trust versions the gateway holds and carries its trace context (request
    # metadata set per call, PlatformLink.call: on the fan-out path that costs less than a
    # client interceptor's task per call).
    channel = pki.secure_channel(
        member.endpoint,
        config.pki_dir,
        GATEWAY_PEER,
        server=PeerId(Role.PLATFORM, member.id),
        options=channel_options(),
        limits=config.limits,
        traced=False,
    )
    return PlatformLink(
        member.id,
        channel,
        config.limits,
        metadata=lambda: ((VERSION_METADATA_KEY, versions()),),
    )


def _carrier_channel(config: GatewayConfig, member: Member) -> grpc.aio.Channel:
    return pki.secure_channel(
        member.endpoint,
        config.pki_dir,
        GATEWAY_PEER,
        server=PeerId(Role.CARRIER, member.id),
        options=channel_options(),
        limits=config.limits,
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
    checkpointer: Checkpointer
    events: EventLog
    publisher: EventPublisher
    ports: PortStore
    servicer: GatewayServicer
    membership: Membership
    revocations: pki.RevocationList
    carrier_stubs: dict[str, carrier_pb2_grpc.CarrierServiceAsyncStub]
    pushers: dict[str, EventPusher]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    member_tasks: dict[PeerId, asyncio.Task[None]] = field(default_factory=dict)
    """Per member: a platform's event pusher, a carrier's portability sync."""
    watcher: ConfigWatcher | None = None
    trust_watcher: TrustWatcher | None = None
    synced: set[str] = field(default_factory=set)
    _halves_from: set[str] = field(default_factory=set)
    _all_halves: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once every carrier has told the gateway which numbers it serves."""
    _stopped: bool = False
    admission: Admission | None = None
    """The RPC classes' bounds, shared by the gRPC edge and the facades."""
    facades: FacadeHandle | None = None
    """The CAMARA and SSF facades over HTTPS, when ``facade_listen`` is set."""
    ssf: SsfTransmitter | None = None
    set_pushers: dict[str, SetPusher] = field(default_factory=dict)
    """Per platform whose events go by ``ssf-push``: its SET pusher."""
    event_head: LogHead | None = None
    """The event log's head, read once for every pusher (:class:`gateway.pusher.LogHead`)."""
    carrier_health: dict[str, CarrierHealth] = field(default_factory=dict)
    """Per carrier: its last sync and its last failure (``numfed status``)."""
    observer: GatewayObserver | None = None
    """What a scrape and ``/status`` read (``gateway/observability.py``)."""

    @property
    def serving(self) -> bool:
        """Health says SERVING: every carrier synced (or the wait ran out), not stopping."""
        return self.ready.is_set() and not self._stopped

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def trust_view(self) -> TrustView:
        """The trust in force (see :mod:`gateway.trustview`)."""
        return self.servicer.trust_view

    @property
    def trust(self) -> TrustedState:
        return self.servicer.trust_view.state

    def _versions(self) -> str:
        return self.servicer.trust_view.versions

    def apply_trust(self, view: TrustView) -> None:
        """Serve and verify with ``view`` from now on, take its numbering plan, and keep it as
        the floor of the next start (:func:`gateway.trustview.hold_no_less`)."""
        keep(view, _trust_store(self.config))
        self.portability.plan = NumberPlan.from_bundle(view.state.bundle)
        self.servicer.trust_view = view

    @classmethod
    async def start(cls, config: GatewayConfig) -> Gateway:
        """Start serving ``config``. If a step fails (the port is taken, say), what the steps
        before it opened (store, channels, server) is closed again before the error is raised."""
        async with contextlib.AsyncExitStack() as undo:
            gw = await cls._start(config, undo)
            undo.pop_all()  # the gateway owns all of it now: Gateway.stop closes it
        return gw

    @classmethod
    async def _start(cls, config: GatewayConfig, undo: contextlib.AsyncExitStack) -> Gateway:
        layout = pki.PkiLayout(config.pki_dir)
        store = Store(config.database_url)
        undo.callback(store.close)
        store.lock_single_replica()
        await store.run(store.migrate)
        # SQLite serves one replica: leases left by a killed process are ours to take back.
        if store.dialect == "sqlite":
            await store.run(store.release_leases, None, now_us())
        pseudonym = Pseudonymizer(
            load_or_create_key(config.pseudonym_key_file or config.state_dir / "pseudonym.key")
        )
        view, _ = load_view(config.trust_dir, now=datetime.now(UTC))
        hold_no_less(view, _trust_store(config), now=datetime.now(UTC))
        keep(view, _trust_store(config))
        _log_trust_in_force(config.trust_dir, view)

        def versions() -> str:
            return servicer.trust_view.versions  # the view in force at the time of each call

        links = {m.id: _platform_link(config, m, versions) for m in config.platforms}
        carrier_channels = {m.id: _carrier_channel(config, m) for m in config.carriers}
        for link in links.values():
            undo.push_async_callback(link.close)
        for channel in carrier_channels.values():
            undo.push_async_callback(channel.close)
        carrier_stubs = {
            c: carrier_pb2_grpc.CarrierServiceStub(ch) for c, ch in carrier_channels.items()
        }
        membership = Membership(
            GATEWAY_PEER, [m.id for m in config.carriers], [m.id for m in config.platforms]
        )
        revocations = pki.RevocationList(layout)
        ports = PortStore((number_ports, port_halves), pseudonym)
        portability = Portability(NumberPlan.from_bundle(view.state.bundle), pseudonym)
        portability.apply(await store.run(ports.read_completed, store.engine, 0))
        watchers = JobWatchers()
        owner = f"gw-{secrets.token_hex(6)}"  # this replica's name on its leases
        audit = AuditWriter(store.engine, store.run, max_backlog=config.limits.audit_max_backlog)
        checkpointer = Checkpointer(
            store.engine,
            store.run,
            signer=_audit_signer(layout, config.gateway_id),
            origin=audit_origin(Envelope.from_proto(view.roots[0])),
            interval=config.limits.audit_checkpoint_interval,
        )
        events = EventLog(store.engine)
        head = LogHead(store, events)
        pushers: dict[str, EventPusher] = {}
        set_pushers: dict[str, SetPusher] = {}

        def on_events() -> None:
            """New batches in the log: every pusher and every long poll looks again."""
            head.changed()
            wake_all([*pushers.values(), *set_pushers.values()])
            if gw.ssf is not None:
                gw.ssf.wake()

        dispatcher = Dispatcher(
            audit=audit.record,
            audit_room=audit.room,
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
            on_events=on_events,
        )

        async def refresh_ports() -> None:
            portability.apply(await store.run(ports.read_completed, store.engine, portability.seq))

        servicer = GatewayServicer(
            store=store,
            trust=view,
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
            refresh_ports=refresh_ports,
            checkpoint=lambda: checkpointer.latest,
        )

        bounds = admission(config.limits)

        def register(server: grpc.aio.Server) -> str:
            gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
            return SERVICE

        handle = await start_server(
            register=[register],
            credentials=pki.server_credentials(layout, GATEWAY_PEER),
            policy=POLICY,
            bind=config.listen,
            admission=bounds,
            members=membership,
            revocations=revocations,
            not_serving=[SERVICE] if config.carriers else [],
            initial_metadata=lambda metadata: hint_for(
                servicer.trust_view.state.versions, metadata
            ),
            limits=config.limits,
        )
        undo.push_async_callback(handle.stop, 0)
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
            checkpointer=checkpointer,
            events=events,
            membership=membership,
            revocations=revocations,
            carrier_stubs=carrier_stubs,
            pushers=pushers,
            publisher=publisher,
            ports=ports,
            servicer=servicer,
            admission=bounds,
            set_pushers=set_pushers,
            event_head=head,
        )
        audit.start()
        checkpointer.start()
        gw.observer = GatewayObserver(gw)
        metrics.add_source(gw.observer)
        if config.facade_listen is not None:
            try:
                await gw._start_facades(config.facade_listen)
            except BaseException:
                await gw.stop(0)  # nothing half started stays behind
                raise
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
        gw.trust_watcher = TrustWatcher(config.trust_dir, lambda: gw.trust_view, gw.apply_trust)
        gw.tasks.append(asyncio.create_task(gw.trust_watcher.run()))
        return gw

    # -- members -------------------------------------------------------------------------------

    async def _start_facades(self, listen: str) -> None:
        """Serve the CAMARA and SSF facades on ``listen`` (docs/standards.md)."""
        config = self.config
        assert self.admission is not None
        key_file = config.ssf_key_file or config.state_dir / "ssf-set.key.pem"
        edge = Edge(self.membership, self.revocations, self.admission)
        camara = CamaraFacade(edge=edge, recycled=self.servicer.recycled, limits=config.limits)
        self.ssf = ssf = SsfTransmitter(
            edge=edge,
            streams=StreamStore(self.store.engine, self.events),
            store=self.store,
            signer=SetSigner.load_or_create(key_file),
            platforms=lambda: {m.id: m for m in self.config.platforms},
            audit=self.audit.record,
            on_stream_change=self._wake_set_pusher,
        )

        def routes(port: int) -> list[Any]:
            base = config.facade_url or bound_url(listen, port)
            return camara.routes(base) + ssf.routes(base)

        self.facades = await start_facades(listen, config.pki_dir, GATEWAY_PEER, routes)

    def _wake_set_pusher(self, platform_id: str) -> None:
        pusher = self.set_pushers.get(platform_id)
        if pusher is not None:
            pusher.wake()

    def _start_pusher(self, member: Member) -> None:
        if member.events == "ssf-push":
            self._start_set_pusher(member)
            return
        if member.events != "push":
            return  # a polling platform polls itself (PullEvents, or SSF's poll endpoint)
        pusher = EventPusher(
            link=self.links[member.id],
            events=self.events,
            store=self.store,
            limits=self.config.limits,
            owner=self.dispatcher.owner,
            audit=self.audit.record,
            audit_room=self.audit.room,
            head=self.event_head,
        )
        self.pushers[member.id] = pusher
        self.member_tasks[PeerId(Role.PLATFORM, member.id)] = asyncio.create_task(pusher.run())

    def _start_set_pusher(self, member: Member) -> None:
        ssf = self.ssf
        if ssf is None:
            log.error("%s takes events by SSF push, but no facade_listen is set", member.id)
            return
        pusher = SetPusher(
            platform_id=member.id,
            streams=StreamStore(self.store.engine, self.events),
            events=self.events,
            store=self.store,
            signer=ssf.signer,
            issuer=lambda: ssf.issuer,
            tls=receiver_tls(self.config.pki_dir, GATEWAY_PEER),
            limits=self.config.limits,
            owner=self.dispatcher.owner,
            audit=self.audit.record,
            on_error=self.links[member.id].note_error,
        )
        self.set_pushers[member.id] = pusher
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
        self.links[member.id] = _platform_link(self.config, member, self._versions)
        self._start_pusher(member)

    async def _remove_platform(self, platform_id: str) -> None:
        """No more queries, releases or event pushes to it; calls out to it are cancelled."""
        link = self.links.pop(platform_id, None)
        self.pushers.pop(platform_id, None)
        self.set_pushers.pop(platform_id, None)
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
        """Re-read the config file, the revocation list and the trust files now (SIGHUP)."""
        if self.watcher is not None:
            self.watcher.reload()
        self.revocations.refresh()
        if self.trust_watcher is not None:
            self.trust_watcher.reload()

    async def _mark_ready_if_synced(self) -> None:
        if self.synced >= {m.id for m in self.config.carriers} and not self._stopped:
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
            async with asyncio.timeout(self.config.limits.carrier_sync_wait):
                await self._all_halves.wait()
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
            if not self._stopped:
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
        batches in flight get up to ``grace`` seconds to finish; then, once nothing of this
        replica works on the database any more, the leases it holds are given back, so another
        replica (or the next start) takes over at once. Each step runs even if one before it
        failed, so the tasks, channels and store always end. A second call does nothing.
        Scrapes stop reading it at once; the process logs ``stopping`` and ``stopped`` around
        this (``numfed.serving``), the server its services going NOT_SERVING.
        """
        if self._stopped:
            return
        self._stopped = True
        if self.observer is not None:
            metrics.remove_source(self.observer)
        async with contextlib.AsyncExitStack() as after:  # runs these last to first
            after.callback(self.store.close)
            for ch in self.carrier_channels.values():
                after.push_async_callback(ch.close)
            for link in self.links.values():
                after.push_async_callback(link.close)
            after.push_async_callback(self.checkpointer.stop)  # anchors the last flush
            after.push_async_callback(self.audit.stop, self.config.limits.shutdown_grace)
            after.push_async_callback(self._give_back_leases)
            after.push_async_callback(self._cancel_tasks)
            stopping = [self.server.stop(grace), self.dispatcher.stop(grace)]
            if self.facades is not None:
                stopping.append(self.facades.stop(grace))
            stopped = await asyncio.gather(*stopping, return_exceptions=True)
            for outcome in stopped:
                if isinstance(outcome, BaseException):
                    raise outcome

    async def _cancel_tasks(self) -> None:
        tasks = self.tasks + list(self.member_tasks.values())
        for t in tasks:
            t.cancel()
        # A cancelled task is done only once its database work is (see numfed.db.DbThread).
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _give_back_leases(self) -> None:
        owner = self.dispatcher.owner
        try:
            await self.store.run(self.store.release_leases, owner, now_us())
        finally:
            await self.store.run(self.events.unlease, owner)


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
