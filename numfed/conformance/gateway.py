"""The kit's stand-in for the gateway: a trust simulator that serves a platform the roots and the
bundle the kit chooses, as tuf-conformance's repository simulator serves a TUF client.

A platform fetches its trust from the gateway (``GetTrustBundle``) and verifies it against the
root it pinned. The kit holds the private keys of that pin (the PKI's root keys), so it can sign
what the federation's root key holders would: bundles, and root rotations to keys it makes for the
run. It can also serve what they never would (:meth:`TrustSimulator.serve_raw`: a root two
versions ahead, a bundle one signature short, another payload type) and watch the platform refuse
it. It honours ``known_root_version`` like the real gateway, logs every request, and, given a
directory, writes every answer it serves there (``NNN-<check>.pb``, a ``GetTrustBundleResponse``)
so that a member can replay a failing check. For a platform's own recycled check it relays the
answer the kit chose to ``CheckRecycled``, whatever the question, and logs the question.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from numfed import pki
from numfed.envelope import Envelope, SigningKey
from numfed.errors import Unavailable
from numfed.identity import Role
from numfed.rpc import ServerHandle, current_peer, start_server
from numfed.trust import CarrierKey, Root, TrustBundle, sign_bundle, sign_root
from numfed.v1 import claim_pb2, gateway_pb2, gateway_pb2_grpc

__all__ = [
    "NARROW_PREFIX",
    "OTHER_CARRIER",
    "PLAN",
    "TEST_CARRIER",
    "TestKeys",
    "TrustRequest",
    "TrustSimulator",
    "start_trust_simulator",
]

SERVICE = "numfed.v1.GatewayService"
POLICY = {
    f"/{SERVICE}/GetTrustBundle": frozenset({Role.GATEWAY, Role.CARRIER, Role.PLATFORM}),
    f"/{SERVICE}/CheckRecycled": frozenset({Role.PLATFORM}),
}
TEST_CARRIER = "cmcc"
"""The carrier id the kit's test keys belong to (any member id would do)."""
OTHER_CARRIER = "cucc"
"""A second carrier, with a key of its own that covers the same numbers (number portability)."""
NARROW_PREFIX = "+86150"
"""The one prefix the kit's narrow key may attest; the kit's numbers never start with it."""
PLAN = {"+86139": TEST_CARRIER, NARROW_PREFIX: TEST_CARRIER, "+86130": OTHER_CARRIER}
"""The kit's numbering plan. The kit's numbers are in +86139 (TEST_CARRIER's); +86131 is in no
range."""
KIT_SKEW = timedelta(seconds=20)
"""The clock skew the kit's bundles publish: not the 60 s default, so that a platform judging
with defaults of its own is seen to (PLAT-CLAIM-9)."""
KIT_LIFETIME = timedelta(minutes=20)
"""The maximum claim lifetime the kit's bundles publish (the default is 30 min)."""


@dataclass(frozen=True)
class TestKeys:
    """Carrier signing keys made for one run; none of them leaves the kit's process."""

    good: SigningKey
    narrow: SigningKey
    """In the bundle, but only for numbers under NARROW_PREFIX."""
    doomed: SigningKey
    """Trusted at first, revoked by a later bundle."""
    stranger: SigningKey
    """Never in any bundle."""
    other: SigningKey
    """OTHER_CARRIER's key, for all of +86 like ``good``: valid, in scope, never revoked."""
    retired: SigningKey
    """TEST_CARRIER's, whose window closed an hour ago."""
    early: SigningKey
    """TEST_CARRIER's, whose window opens in an hour."""
    late: SigningKey
    """TEST_CARRIER's, in the bundle only once the kit publishes a newer one (``with_late``)."""

    @classmethod
    def generate(cls) -> TestKeys:
        return cls(*(SigningKey.generate() for _ in range(8)))

    def bundle(
        self,
        version: int,
        *,
        now: datetime,
        revoke_doomed: bool = False,
        with_late: bool = False,
        lifetime: timedelta = timedelta(days=1),
    ) -> TrustBundle:
        def entry(
            key: SigningKey,
            prefixes: tuple[str, ...],
            carrier_id: str = TEST_CARRIER,
            window: tuple[timedelta, timedelta] = (timedelta(days=-1), timedelta(days=30)),
        ) -> CarrierKey:
            return CarrierKey(key.public, carrier_id, now + window[0], now + window[1], prefixes)

        keys = {
            self.good.key_id: entry(self.good, ("+86",)),
            self.narrow.key_id: entry(self.narrow, (NARROW_PREFIX,)),
            self.doomed.key_id: entry(self.doomed, ("+86",)),
            self.other.key_id: entry(self.other, ("+86",), OTHER_CARRIER),
            self.retired.key_id: entry(
                self.retired, ("+86",), window=(timedelta(days=-30), timedelta(hours=-1))
            ),
            self.early.key_id: entry(
                self.early, ("+86",), window=(timedelta(hours=1), timedelta(days=30))
            ),
        }
        if with_late:
            keys[self.late.key_id] = entry(self.late, ("+86",))
        revoked = frozenset({self.doomed.key_id}) if revoke_doomed else frozenset()
        return TrustBundle(
            version,
            now - timedelta(seconds=1),
            now + lifetime,
            keys,
            revoked,
            PLAN,
            max_clock_skew=KIT_SKEW,
            max_claim_lifetime=KIT_LIFETIME,
        )


@dataclass(frozen=True)
class TrustRequest:
    """One GetTrustBundle the simulator answered: who asked, knowing which root, when, during
    which check, and what it got."""

    peer: str
    known_root_version: int
    at: datetime
    check: str
    served_roots: tuple[int, ...]
    served_bundle: bool


@dataclass
class _Served:
    roots: list[Envelope] = field(default_factory=list)
    """Every root after the pin (v2, v3, …), or whatever serve_raw was given."""
    bundle: Envelope | None = None
    raw: bool = False
    """Serve ``roots`` as they are, whatever the caller knows."""


class _TrustServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, sim: TrustSimulator) -> None:
        self._sim = sim

    async def GetTrustBundle(
        self,
        request: gateway_pb2.GetTrustBundleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> gateway_pb2.GetTrustBundleResponse:
        return self._sim.answer(current_peer().uri, request.known_root_version)

    async def CheckRecycled(
        self,
        request: gateway_pb2.CheckRecycledRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> gateway_pb2.CheckRecycledResponse:
        self._sim.recycled_questions.append(request)
        if self._sim.recycled_answer is None:
            raise Unavailable("NO_ANSWER", "the kit has no recycled answer to relay")
        return gateway_pb2.CheckRecycledResponse(answer=self._sim.recycled_answer)


class TrustSimulator:
    """What the gateway serves a platform: root chain and bundle, under the kit's control.

    ``pin_signers`` are the private keys of the platform's pinned root (version 1). The chain the
    kit builds starts there; :meth:`reset` goes back to it.
    """

    def __init__(self, pin_signers: Sequence[SigningKey], dump_dir: Path | None = None) -> None:
        self.pin_signers = list(pin_signers)
        self.dump_dir = dump_dir
        self.requests: list[TrustRequest] = []
        self.check = ""
        """The check under way (names the dumped answers)."""
        self._served = _Served()
        self.root_version = 1
        self.root_signers: list[SigningKey] = list(pin_signers)
        """The private keys of the newest root the kit made (the pin's at first)."""
        self.root_threshold: int | None = None
        """The newest root's threshold; None for the pin (the kit signs with all its keys)."""
        self.server: ServerHandle | None = None
        self.recycled_answer: claim_pb2.Envelope | None = None
        """What CheckRecycled relays, whatever the question (set by the recycled check)."""
        self.recycled_questions: list[gateway_pb2.CheckRecycledRequest] = []
        """Every CheckRecycled question the platform asked."""

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def reset(self) -> None:
        """Back to the pin: no roots after it, no bundle."""
        self._served = _Served()
        self.root_version = 1
        self.root_signers = list(self.pin_signers)
        self.root_threshold = None

    def root(
        self,
        *,
        version: int,
        keys: Sequence[SigningKey],
        threshold: int,
        expires_at: datetime,
        signers: Sequence[SigningKey],
    ) -> Envelope:
        """A root of ``keys`` signed by ``signers``, kept nowhere (for :meth:`serve_raw`)."""
        root = Root(version, expires_at, {k.key_id: k.public for k in keys}, threshold)
        return sign_root(root, list(signers))

    def rotate_root(
        self,
        *,
        keys: Sequence[SigningKey],
        threshold: int,
        expires_at: datetime,
        signers: Sequence[SigningKey] | None = None,
    ) -> Envelope:
        """Publish root version n+1 of ``keys``, signed by ``signers`` (default: every key of
        version n and of n+1, as a rotation must be), and make it the root the kit signs with."""
        if signers is None:
            signers = [*self.root_signers, *keys]
        envelope = self.root(
            version=self.root_version + 1,
            keys=keys,
            threshold=threshold,
            expires_at=expires_at,
            signers=signers,
        )
        self._served.roots.append(envelope)
        self._served.raw = False
        self.root_version += 1
        self.root_signers = list(keys)
        self.root_threshold = threshold
        return envelope

    def sign_bundle(
        self, bundle: TrustBundle, signers: Sequence[SigningKey] | None = None
    ) -> Envelope:
        """``bundle`` signed by ``signers`` (default: every key of the newest root)."""
        return sign_bundle(bundle, list(self.root_signers if signers is None else signers))

    def publish_bundle(
        self, bundle: TrustBundle, *, signers: Sequence[SigningKey] | None = None
    ) -> Envelope:
        """Serve ``bundle``, signed as :meth:`sign_bundle` does, from now on."""
        envelope = self.sign_bundle(bundle, signers)
        self._served.bundle = envelope
        return envelope

    def serve_envelope(self, envelope: Envelope) -> None:
        """Serve this bundle envelope as it is (an older one, a forged one…)."""
        self._served.bundle = envelope

    def serve_raw(self, *, roots: Sequence[Envelope], bundle: Envelope | None) -> None:
        """Serve exactly these roots (whatever the caller knows) and this bundle, until the
        next :meth:`reset`, :meth:`rotate_root` or :meth:`restore`."""
        self._served = _Served(list(roots), bundle, raw=True)

    def snapshot(self) -> _Served:
        return _Served(list(self._served.roots), self._served.bundle, self._served.raw)

    def restore(self, served: _Served) -> None:
        self._served = _Served(list(served.roots), served.bundle, served.raw)

    def answer(self, peer: str, known_root_version: int) -> gateway_pb2.GetTrustBundleResponse:
        served = self._served
        if served.bundle is None:
            raise Unavailable("KIT_NOT_READY", "the conformance kit serves no bundle yet")
        roots = served.roots
        if not served.raw:  # as the gateway does: only the roots the caller lacks
            roots = [r for r in roots if _root_version(r) > known_root_version]
        answer = gateway_pb2.GetTrustBundleResponse(
            roots=[r.to_proto() for r in roots], bundle=served.bundle.to_proto()
        )
        from datetime import UTC

        request = TrustRequest(
            peer,
            known_root_version,
            datetime.now(UTC),
            self.check,
            tuple(_root_version(r) for r in roots),
            True,
        )
        self.requests.append(request)
        self._dump(answer, request)
        return answer

    def _dump(self, answer: gateway_pb2.GetTrustBundleResponse, request: TrustRequest) -> None:
        if self.dump_dir is None:
            return
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        n = len(self.requests)
        name = f"{n:04d}-{request.check or 'setup'}.pb"
        (self.dump_dir / name).write_bytes(answer.SerializeToString())
        with (self.dump_dir / "index.jsonl").open("a", encoding="utf-8") as index:
            entry = {
                "file": name,
                "check": request.check,
                "peer": request.peer,
                "known_root_version": request.known_root_version,
                "at": request.at.isoformat(),
                "roots": list(request.served_roots),
            }
            index.write(json.dumps(entry) + "\n")

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)


def _root_version(envelope: Envelope) -> int:
    from numfed.v1 import trust_pb2

    try:
        return int(trust_pb2.RootMetadata.FromString(envelope.payload).version)
    except Exception:  # a raw answer may hold anything
        return 0


async def start_trust_simulator(
    pki_dir: Path, listen: str, *, dump_dir: Path | None = None
) -> TrustSimulator:
    """Serve GatewayService.GetTrustBundle (and CheckRecycled) on ``listen`` as the gateway
    (mTLS), signing with the root keys of ``pki_dir``."""
    sim = TrustSimulator(pki.load_root_signers(pki_dir), dump_dir)
    servicer = _TrustServicer(sim)  # type: ignore[abstract]  # other RPCs: UNIMPLEMENTED

    def register(server: grpc.aio.Server) -> str:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
        return SERVICE

    sim.server = await start_server(
        register=[register],
        credentials=pki.server_credentials(pki_dir, pki.GATEWAY),
        policy=POLICY,
        bind=listen,
    )
    return sim
