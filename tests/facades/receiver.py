"""An SSF receiver written from the standards only, to test the gateway's transmitter.

It knows RFC 8417 (SETs), RFC 8935 (push), RFC 8936 (poll), RFC 9493 (subject identifiers) and
OpenID SSF 1.0 (discovery, verification events), and uses PyJWT for JOSE, not the transmitter's
joserfc: every SET's signature is checked with the key the transmitter's ``jwks_uri`` publishes,
its ``typ``, ``iss``, ``aud``, ``iat`` and ``jti``, the absence of ``sub`` and ``exp``, and one
event per SET. Then the carrier's own signature: the ``numfed_envelope`` inside is verified
against the federation's trust files with numfed's platform SDK (as a platform would), and the
event it names by ``jti`` must say what the SET says. It keeps each ``jti`` once.

Acknowledgements can be lost on purpose (``drop_rate``): a pushed SET is processed and then the
connection is closed without an answer; a polled SET is processed and left out of the next
``ack``. Either way the transmitter must send it again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h11
import httpx
import jwt
from cryptography import x509

from numfed import pki
from numfed.envelope import Envelope
from numfed.events import EventKind, LifecycleEvent, verify_event_batch
from numfed.identity import PeerId, Role
from numfed.trustfiles import load_trusted_state
from numfed.v1 import claim_pb2

__all__ = ["Received", "Receiver"]

SET_MEDIA_TYPE = "application/secevent+jwt"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
KINDS = {
    "https://schemas.openid.net/secevent/risc/event-type/identifier-recycled": (
        EventKind.REASSIGNED
    ),
    "https://numfed.dev/secevent/event-type/deactivated": EventKind.DEACTIVATED,
    "https://numfed.dev/secevent/event-type/pending-release": EventKind.PENDING_RELEASE,
    "https://numfed.dev/secevent/event-type/ported": EventKind.PORTED,
}
GATEWAY_URI = "spiffe://numfed/gateway/main"


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Received:
    """What the receiver kept, in the order it first saw each SET."""

    events: list[LifecycleEvent] = field(default_factory=list)
    verifications: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    duplicates: int = 0
    dropped_acks: int = 0

    def seen_ids(self) -> set[bytes]:
        """The ids of the lifecycle events kept."""
        return {e.event_id for e in self.events}


class Receiver:
    """One platform's receiver of the gateway's SETs."""

    def __init__(
        self,
        *,
        platform_id: str,
        pki_dir: Path,
        trust_dir: Path,
        facade: str,
        drop_rate: float = 0.0,
        seed: int = 7,
    ) -> None:
        self.platform = PeerId(Role.PLATFORM, platform_id)
        self.layout = pki.PkiLayout(pki_dir)
        self.trust_dir = trust_dir
        self.base = f"https://{facade}"
        self.drop_rate = drop_rate
        self.rng = random.Random(seed)
        self.received = Received()
        self.issuer = ""
        self.keys: dict[str, jwt.PyJWK] = {}
        self.new = asyncio.Event()
        self.reject: set[str] = set()
        """jti of SETs this receiver refuses (RFC 8935: 400 with an error) instead of keeping."""
        self.handshakes: list[str | None] = []
        """The TLS server name of each connection to the push endpoint that began."""

    # -- calling the transmitter ---------------------------------------------------------------

    def client(self, **kw: Any) -> httpx.AsyncClient:
        """HTTPS to the gateway with the platform's certificate; the server must be the
        gateway itself (its TLS name), not any member."""
        ctx = ssl.create_default_context(cafile=str(self.layout.ca_path))
        ctx.load_cert_chain(
            str(self.layout.cert_path(self.platform)), str(self.layout.key_path(self.platform))
        )
        return httpx.AsyncClient(verify=ctx, timeout=30, **kw)

    @staticmethod
    def gateway_name() -> dict[str, Any]:
        return {"sni_hostname": "main.gateway.numfed"}

    async def discover(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """SSF §7.2: the configuration at the issuer's well-known path, then its keys."""
        answer = await client.get(
            self.base + "/.well-known/ssf-configuration", extensions=self.gateway_name()
        )
        answer.raise_for_status()
        config: dict[str, Any] = answer.json()
        assert config["issuer"] == self.base, "the issuer is the URL the metadata came from"
        self.issuer = config["issuer"]
        keys = await client.get(config["jwks_uri"], extensions=self.gateway_name())
        keys.raise_for_status()
        self.keys = {k["kid"]: jwt.PyJWK(k) for k in keys.json()["keys"]}
        return config

    # -- checking what arrives -----------------------------------------------------------------

    def verify_set(self, token: str) -> dict[str, Any]:
        """RFC 8417 and SSF §4: the SET's signature and claims; raises ValueError."""
        try:
            header = jwt.get_unverified_header(token)
            if header.get("typ") != "secevent+jwt":
                raise ValueError(f"typ is {header.get('typ')!r}, not secevent+jwt")
            key = self.keys.get(str(header.get("kid")))
            if key is None:
                raise ValueError("signed with a key the jwks_uri does not publish")
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=["EdDSA"],
                audience=self.platform.uri,
                issuer=self.issuer,
                options={"require": ["iss", "aud", "iat", "jti"], "verify_exp": False},
            )
        except jwt.PyJWTError as exc:
            raise ValueError(f"SET does not verify: {exc}") from exc
        if "sub" in claims or "exp" in claims:
            raise ValueError("an SSF SET has neither sub nor exp")
        if not isinstance(claims.get("events"), dict) or len(claims["events"]) != 1:
            raise ValueError("one event per SET")
        return claims

    def verify_event(self, claims: dict[str, Any]) -> LifecycleEvent:
        """The carrier's signed batch inside the SET, and the event the ``jti`` names in it."""
        ((uri, body),) = claims["events"].items()
        kind = KINDS.get(uri)
        if kind is None:
            raise ValueError(f"unexpected event type {uri}")
        raw = _b64decode(body["numfed_envelope"])
        envelope = Envelope.from_proto(claim_pb2.Envelope.FromString(raw))
        now = datetime.now(UTC)
        trust = load_trusted_state(self.trust_dir, now=now)
        batch = verify_event_batch(envelope, trust, now=now, from_log=True)
        event_id = bytes.fromhex(claims["jti"])
        found = [e for e in batch.events if e.event_id == event_id]
        if len(found) != 1:
            raise ValueError("the jti names no event of the signed batch")
        event = found[0]
        subject = claims["sub_id"]
        if subject != {"format": "phone_number", "phone_number": event.number}:
            raise ValueError("sub_id is not the signed event's number")
        if event.kind is not kind or body["numfed_carrier"] != batch.carrier_id:
            raise ValueError("the SET says another kind or carrier than the signed event")
        return event

    def accept(self, token: str) -> str:
        """Verify a SET and keep it once; returns its jti."""
        claims = self.verify_set(token)
        jti = str(claims["jti"])
        if jti in self.received.seen:
            self.received.duplicates += 1
            return jti
        ((uri, body),) = claims["events"].items()
        if uri == VERIFICATION:
            if claims["sub_id"].get("format") != "opaque":
                raise ValueError("a verification's subject is its stream, opaque")
            self.received.verifications.append({"sub_id": claims["sub_id"], **body})
        else:
            self.received.events.append(self.verify_event(claims))
        self.received.seen.add(jti)
        self.new.set()
        return jti

    def drop(self) -> bool:
        dropped = self.rng.random() < self.drop_rate
        self.received.dropped_acks += dropped
        return dropped

    # -- poll (RFC 8936) -----------------------------------------------------------------------

    async def poll_until(
        self, client: httpx.AsyncClient, done: Any, *, max_events: int = 4, within: float = 60
    ) -> None:
        """Poll, acknowledging what was kept (but the dropped), until ``done()``. After an
        empty answer the next poll waits at the transmitter for events (a long poll)."""
        acks: list[str] = []
        immediately = True
        async with asyncio.timeout(within):
            while True:
                answer = await client.post(
                    self.base + "/ssf/poll",
                    json={"ack": acks, "maxEvents": max_events, "returnImmediately": immediately},
                    extensions=self.gateway_name(),
                )
                answer.raise_for_status()
                sets = answer.json()["sets"]
                acks = [jti for jti in (self.accept(t) for t in sets.values()) if not self.drop()]
                if not sets and done():
                    return
                immediately = bool(sets)

    # -- push (RFC 8935) -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def push_endpoint(self) -> Any:
        """Serve RFC 8935's endpoint over HTTPS on loopback (port 0), as the platform, to the
        gateway only; yields its URL."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.layout.ca_path))
        ctx.load_cert_chain(
            str(self.layout.cert_path(self.platform)), str(self.layout.key_path(self.platform))
        )
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.sni_callback = lambda _obj, name, _ctx: self.handshakes.append(name)
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"https://127.0.0.1:{port}/events"
        finally:
            server.close()
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            )
            if san.value.get_values_for_type(x509.UniformResourceIdentifier) != [GATEWAY_URI]:
                return  # only the federation's gateway pushes here
            conn = h11.Connection(h11.SERVER)
            while True:
                request = await self._read(conn, reader)
                if request is None:
                    return
                status, body = self._handle(*request)
                if status == 0:
                    writer.transport.abort()  # processed, but the acknowledgement is lost
                    return
                headers = [("content-length", str(len(body)))]
                if body:
                    headers.append(("content-type", "application/json"))
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                writer.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                await writer.drain()
                conn.start_next_cycle()
        except (ConnectionError, h11.RemoteProtocolError, ssl.SSLError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _read(
        conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request, bytes] | None:
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and request is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, body
            elif isinstance(event, h11.ConnectionClosed):
                return None

    def _handle(self, request: h11.Request, body: bytes) -> tuple[int, bytes]:
        """RFC 8935 §2: 202 for a SET kept, 400 with an error for one that is not; status 0
        drops the acknowledgement."""
        content_type = dict(request.headers).get(b"content-type", b"")
        if request.method != b"POST" or content_type != SET_MEDIA_TYPE.encode():
            return 400, json.dumps({"err": "invalid_request"}).encode()
        try:
            jti = self.verify_set(body.decode())["jti"]
            if jti in self.reject:
                return 400, json.dumps({"err": "invalid_request", "description": "no"}).encode()
            self.accept(body.decode())
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            return 400, json.dumps({"err": "invalid_request", "description": str(exc)}).encode()
        return (0 if self.drop() else 202), b""


def events_of(received: Received, ids: set[bytes]) -> Iterator[bytes]:
    """The ids of the received events among ``ids``, in the order first seen."""
    return (e.event_id for e in received.events if e.event_id in ids)
