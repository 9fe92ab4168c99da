"""Push delivery of SETs (RFC 8935): one loop per platform whose events go by ``ssf-push``.

The loop follows :class:`gateway.pusher.EventPusher`: it leases the platform's cursor (one
replica pushes to a platform at a time), sends what follows the cursor in log order, and moves
the cursor only on acknowledgement, through :meth:`gateway.eventlog.EventLog.ack`. RFC 8935
sends one SET per request, so a batch is acknowledged once each SET of it that the stream
delivers was: ``202 Accepted`` acknowledges a SET; ``400`` with an RFC 8935 error (``err``) is
the receiver's final word on it, so it counts as delivered, is audited (``SET_REJECTED``) and
is not sent again; any other answer, or none, sends the same SET again after a backoff. Which
SETs of the batch in hand were acknowledged is kept in memory: after a restart or a lease taken
over, the batch is sent again from its first SET (receivers keep each ``jti`` once).

Requests go to the receiver's ``endpoint_url`` with the gateway's client certificate, and the
receiver's server must present *its platform's* certificate (TLS server name
``<id>.platform.numfed``): the endpoint a receiver configures cannot point the gateway at
anyone else. A paused stream, or one without an endpoint yet, holds its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

from gateway.audit import AuditRecord
from gateway.backoff import backoff_seconds
from gateway.eventlog import EventLog
from gateway.facades.ssf.sets import SetSigner, event_set_claims, verification_claims
from gateway.facades.ssf.store import Batch, StreamStore, read_batch
from gateway.facades.ssf.streams import PUSH, Stream
from gateway.results import now_us
from gateway.store import Store
from numfed import pki
from numfed.config import Limits
from numfed.identity import PeerId, Role
from numfed.observability.logs import RetrySummary, failure_reason

__all__ = ["SetPusher", "receiver_tls"]

log = logging.getLogger(__name__)

SET_MEDIA_TYPE = "application/secevent+jwt"
IDLE_SECONDS = 1.0
STREAM_READ = 1.0


def receiver_tls(pki_dir: Path, identity: PeerId) -> ssl.SSLContext:
    """TLS for calling receivers as ``identity``: its certificate, the federation CA."""
    layout = pki.PkiLayout(pki_dir)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(layout.ca_path))
    ctx.load_cert_chain(str(layout.cert_path(identity)), str(layout.key_path(identity)))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class SetPusher:
    def __init__(
        self,
        *,
        platform_id: str,
        streams: StreamStore,
        events: EventLog,
        store: Store,
        signer: SetSigner,
        issuer: Callable[[], str],
        tls: ssl.SSLContext,
        limits: Limits,
        owner: str,
        audit: Callable[[AuditRecord], None] = lambda _record: None,
        on_error: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        self._platform = platform_id
        self._on_error = on_error
        """Told why a SET could not be delivered (the platform's last error, numfed status)."""
        self._failing = RetrySummary(
            log,
            f"SET delivery to {platform_id} failing",
            f"SET delivery to {platform_id} working again",
        )
        self._paused = RetrySummary(
            log,
            f"pushing SETs to {platform_id} paused",
            f"pushing SETs to {platform_id} going again",
        )
        """A SET the receiver does not take, and the push loop starting over (the database
        refusing, say): each logged as its first failure, a summary a minute, its recovery."""
        self._streams = streams
        self._events = events
        self._store = store
        self._signer = signer
        self._issuer = issuer
        self._limits = limits
        self._owner = owner
        self._audit = audit
        self._audience = PeerId(Role.PLATFORM, platform_id).uri
        self._actor = self._audience
        # A request's headers and body leave in two writes: without TCP_NODELAY the second
        # waits for the receiver's delayed ACK (40 ms on Linux), per SET.
        transport = httpx.AsyncHTTPTransport(
            verify=tls, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        )
        self._client = httpx.AsyncClient(transport=transport, timeout=limits.platform_call_timeout)
        self._server_name = f"{platform_id}.platform.numfed"
        self._wake = asyncio.Event()
        self._rng = random.Random()
        self._stream: Stream | None = None
        """The stream as last read: read again every STREAM_READ seconds, or on a wake (the
        receiver changed its endpoint, status or asked for a verification)."""
        self._stream_read = 0.0

    def wake(self) -> None:
        self._stream = None
        self._wake.set()

    async def _current_stream(self) -> Stream:
        now = time.monotonic()
        if self._stream is None or now - self._stream_read >= STREAM_READ:
            self._stream = await self._store.run(self._streams.get, self._platform, PUSH, now_us())
            self._stream_read = now
        return self._stream

    async def close(self) -> None:
        await self._client.aclose()

    async def run(self) -> None:
        """Push until cancelled; a failure of anything but the receiver starts over."""
        try:
            while True:
                try:
                    await self._push()
                except Exception as exc:
                    log.debug("pushing SETs failed; starting over", exc_info=exc)
                    self._paused.failed(failure_reason(exc))
                    await asyncio.sleep(1.0)
        finally:
            await self.close()

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(IDLE_SECONDS):
                await self._wake.wait()

    async def _push(self) -> None:
        lease_us = int(self._limits.lease_seconds * 1e6)
        renewed_us = 0
        cursor = 0
        sent_in_batch: set[int] = set()
        batch_seq = 0
        failures = 0
        while True:
            self._wake.clear()
            if now_us() - renewed_us >= lease_us // 3:
                held = await self._store.run(
                    self._events.lease, self._platform, self._owner, now_us(), lease_us
                )
                if not held:
                    renewed_us = 0
                    await asyncio.sleep(self._limits.lease_seconds / 3)
                    continue
                if renewed_us == 0:
                    cursor = await self._store.run(self._events.cursor, self._platform)
                renewed_us = now_us()
            stream = await self._current_stream()
            self._paused.succeeded()  # the database answers again
            if stream.status != "enabled" or stream.endpoint_url is None:
                await self._idle()  # held, in order, until the receiver is ready
                continue
            if stream.verification_jti is not None:
                if await self._deliver_verification(stream):
                    failures = 0
                else:
                    failures += 1
                    await self._back_off(failures)
                continue
            rows = await self._store.run(self._events.after, cursor, 1)
            if not rows:
                await self._idle()
                continue
            batch = read_batch(*rows[0])
            if batch.seq != batch_seq:
                batch_seq, sent_in_batch = batch.seq, set()
            pending = [
                i
                for i, e in enumerate(batch.events)
                if i not in sent_in_batch and stream.delivers(e.kind)
            ]
            if pending:
                if await self._deliver(stream, batch, pending[0]):
                    sent_in_batch.add(pending[0])
                    failures = 0
                else:
                    failures += 1
                    await self._back_off(failures)
                continue
            await self._store.run(
                self._events.ack, self._platform, batch.seq, now_us(), delivered=batch.seq
            )
            cursor = batch.seq
            self._audit(
                AuditRecord(
                    now_us(),
                    "EVENT_DELIVERY",
                    self._actor,
                    outcome="ACKNOWLEDGED",
                    detail={"through_seq": str(batch.seq), "mode": "ssf-push"},
                )
            )

    async def _back_off(self, failures: int) -> None:
        await asyncio.sleep(
            backoff_seconds(
                failures - 1,
                initial=self._limits.retry_initial_backoff,
                maximum=self._limits.retry_max_backoff,
                multiplier=self._limits.retry_multiplier,
                rng=self._rng,
            )
        )

    async def _deliver(self, stream: Stream, batch: Batch, index: int) -> bool:
        event = batch.events[index]
        claims = event_set_claims(
            event=event,
            envelope=batch.envelope,
            carrier_id=batch.carrier_id,
            issuer=self._issuer(),
            audience=self._audience,
            now=datetime.now(UTC),
        )
        return await self._post(stream, self._signer.sign(claims), str(claims["jti"]))

    async def _deliver_verification(self, stream: Stream) -> bool:
        assert stream.verification_jti is not None
        claims = verification_claims(
            jti=stream.verification_jti,
            stream_id=stream.stream_id,
            state=stream.verification_state,
            issuer=self._issuer(),
            audience=self._audience,
            now=datetime.now(UTC),
        )
        if not await self._post(stream, self._signer.sign(claims), stream.verification_jti):
            return False
        await self._store.run(
            self._streams.verification_delivered, self._platform, stream.verification_jti
        )
        self._stream = None
        return True

    async def _post(self, stream: Stream, token: str, jti: str) -> bool:
        """Send one SET; True once the receiver has its word on it (202, or 400 with err)."""
        assert stream.endpoint_url is not None
        headers = {"content-type": SET_MEDIA_TYPE, "accept": "application/json"}
        if stream.authorization_header:
            headers["authorization"] = stream.authorization_header
        try:
            answer = await self._client.post(
                stream.endpoint_url,
                content=token.encode(),
                headers=headers,
                extensions={"sni_hostname": self._server_name},
            )
        except httpx.HTTPError as exc:
            self._failed(failure_reason(exc))
            return False
        if answer.status_code == 202:
            self._failing.succeeded()
            return True
        err = _rfc8935_error(answer)
        if answer.status_code == 400 and err is not None:
            self._audit(
                AuditRecord(
                    now_us(),
                    "EVENT_DELIVERY",
                    self._actor,
                    outcome="SET_REJECTED",
                    detail={"jti": jti, "err": err[:64], "mode": "ssf-push"},
                )
            )
            log.warning("%s rejected SET %s: %s", self._platform, jti, err)
            self._failing.succeeded()  # the receiver's final word: delivered
            return True
        self._failed(f"HTTP {answer.status_code}")
        return False

    def _failed(self, reason: str) -> None:
        self._on_error(reason)
        self._failing.failed(reason)


def _rfc8935_error(answer: httpx.Response) -> str | None:
    """The ``err`` of an RFC 8935 error response, if the body is one."""
    try:
        body = answer.json()
    except ValueError:
        return None
    err = body.get("err") if isinstance(body, dict) else None
    return err if isinstance(err, str) and err else None
