"""The seven reference platforms: the SDK over a SQLite store seeded with the demo's world."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import grpc

from numfed import pki
from numfed.checkpoint import CHECKPOINT_FILE
from numfed.config import PlatformConfig, load_platform_config
from numfed.identity import PeerId, Role
from numfed.observability import metrics
from numfed.rpc import ServerHandle, SoleGateway, start_server
from numfed.scenario import PLATFORMS, demo_scenario
from numfed.serving import process_telemetry, run_until_signalled
from numfed.truststore import TRUST_STORE_DIR
from numfed.v1 import conformance_pb2_grpc, platform_pb2_grpc
from platform_stubs.admin import remove_socket, socket_path, start_admin_server
from platform_stubs.conformance import (
    CONFORMANCE_POLICY,
    CONFORMANCE_SERVICE,
    PlatformConformanceServicer,
)
from platform_stubs.events import EventApplier, EventPuller
from platform_stubs.observability import PlatformObserver
from platform_stubs.rules import Masker
from platform_stubs.sdk import Knobs, PlatformServicer
from platform_stubs.store import PlatformStore
from platform_stubs.trustclient import TrustClient

__all__ = ["REFERENCE_PLATFORMS", "PlatformHandle", "serve", "start_platform"]

log = logging.getLogger(__name__)

REFERENCE_PLATFORMS = PLATFORMS
SERVICE = "numfed.v1.PlatformService"
_GATEWAY_ONLY = frozenset({Role.GATEWAY})
# Rule PLAT-OPS-2: PlatformService answers the federation's gateway only.
POLICY = {
    f"/{SERVICE}/BatchQueryBindings": _GATEWAY_ONLY,
    f"/{SERVICE}/BatchReleaseBindings": _GATEWAY_ONLY,
    f"/{SERVICE}/DeliverEvents": _GATEWAY_ONLY,
}


def _masking_secret(state_dir: Path) -> bytes:
    """The platform's own secret for masked labels and binding refs (created on first start)."""
    path = state_dir / "masking.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def seed_from_scenario(store: PlatformStore, platform_id: str) -> int:
    """Seed the demo world's accounts once (a store that has accounts is left alone)."""
    if not store.is_empty():
        return 0
    rows = [
        (b.account_id, b.nickname, b.number, b.kind, b.bound_at)
        for b in demo_scenario().bindings_on(platform_id)
    ]
    store.seed(rows)
    return len(rows)


@dataclass
class PlatformHandle:
    config: PlatformConfig
    server: ServerHandle
    servicer: PlatformServicer
    store: PlatformStore
    trust: TrustClient
    tasks: list[asyncio.Task[None]]
    puller: EventPuller | None = None
    admin: ServerHandle | None = None
    """PlatformAdminService on its Unix socket (``platform_stubs.admin.socket_path``)."""
    observer: PlatformObserver | None = None
    stopped: bool = False
    """Whether :meth:`stop` was called."""

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float = 2.0) -> None:
        self.stopped = True
        if self.observer is not None:
            metrics.remove_source(self.observer)
        await self.server.stop(grace)
        if self.admin is not None:
            await self.admin.stop(grace)
            remove_socket(socket_path(self.config), private_folder=self.config.admin_socket is None)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.trust.close()
        if self.puller is not None:
            await self.puller.close()
        self.store.close()


async def start_platform(
    config: PlatformConfig, *, servicer_class: type[PlatformServicer] = PlatformServicer
) -> PlatformHandle:
    """Start a reference platform; healthy once it holds a verified trust bundle.

    Its trust is persisted in ``state_dir/trust`` and restored at the next start; the version
    hints of the gateway's calls and answers make it refresh at once when it is behind.

    ``servicer_class`` lets tests start a deliberately broken platform on the same footing.
    With ``config.conformance`` it also serves PlatformConformanceService (test only). Its
    operator's PlatformAdminService listens on its Unix socket (``admin.socket_path``).
    """
    peer = PeerId(Role.PLATFORM, config.platform_id)
    store = PlatformStore(config.state_dir / "platform.db")
    if config.seed_scenario:
        await store.run(seed_from_scenario, store, config.platform_id)
    trust = TrustClient(
        trust_dir=config.trust_dir,
        pki_dir=config.pki_dir,
        peer=peer,
        gateway=config.gateway,
        state_dir=config.state_dir / TRUST_STORE_DIR,
        min_refresh_interval=config.trust_refresh_min_interval,
        checkpoint_file=config.state_dir / CHECKPOINT_FILE,
        limits=config.limits,
    )
    servicer = servicer_class(
        platform_id=config.platform_id,
        trust=trust,
        store=store,
        masker=Masker(_masking_secret(config.state_dir)),
        knobs=Knobs(latency_ms=config.latency_ms, error_rate=config.error_rate),
        events=EventApplier(
            trust=trust,
            store=store,
            retry_limit=config.event_retry_limit,
            retry_window=config.event_retry_window,
        ),
    )

    def register(server: grpc.aio.Server) -> str:
        platform_pb2_grpc.add_PlatformServiceServicer_to_server(servicer, server)
        return SERVICE

    def register_conformance(server: grpc.aio.Server) -> str:
        conformance_pb2_grpc.add_PlatformConformanceServiceServicer_to_server(
            PlatformConformanceServicer(platform_id=config.platform_id, store=store, trust=trust),
            server,
        )
        return CONFORMANCE_SERVICE

    try:
        handle = await start_server(
            register=[register, register_conformance] if config.conformance else [register],
            credentials=pki.server_credentials(config.pki_dir, peer),
            policy={**POLICY, **CONFORMANCE_POLICY} if config.conformance else POLICY,
            bind=config.listen,
            members=SoleGateway(pki.GATEWAY),
            revocations=pki.RevocationList(config.pki_dir),
            not_serving=[SERVICE],  # until it holds a verified bundle (PLAT-OPS-1)
            on_metadata=trust.notice_metadata,  # the gateway's trust versions: refresh if behind
            limits=config.limits,
        )
    except BaseException:  # an address in use, say: close what was opened, then say so
        await trust.close()
        store.close()
        raise
    try:
        admin = await start_admin_server(socket_path(config), servicer.events)
    except BaseException:
        await handle.stop(0)
        await trust.close()
        store.close()
        raise

    async def health_follows_trust() -> None:
        """PLAT-OPS-1: SERVING exactly while a verified bundle is held."""
        while True:
            await trust.ready.wait()
            await handle.set_serving(SERVICE, True)
            await trust.wait_until(lambda _state: not trust.ready.is_set())
            await handle.set_serving(SERVICE, False)

    tasks = [
        asyncio.create_task(trust.run(config.trust_refresh)),
        asyncio.create_task(health_follows_trust()),
    ]
    puller = None
    if config.events == "poll":
        puller = EventPuller(
            applier=servicer.events,
            gateway=config.gateway,
            pki_dir=config.pki_dir,
            peer=peer,
            interceptors=[trust.hints],
            limits=config.limits,
        )

        async def pull_when_trusted() -> None:
            await trust.ready.wait()
            await puller.run()

        tasks.append(asyncio.create_task(pull_when_trusted()))
    observer = PlatformObserver(store, trust)
    metrics.add_source(observer)
    return PlatformHandle(config, handle, servicer, store, trust, tasks, puller, admin, observer)


async def serve(config_path: Path) -> None:
    config = load_platform_config(config_path)
    async with process_telemetry(f"platform-{config.platform_id}", config.telemetry):
        handle = await start_platform(config)
        print(f"platform {config.platform_id} listening on port {handle.port}", flush=True)
        await run_until_signalled(handle.stop)
