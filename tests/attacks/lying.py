"""What a lying member does, written from the contracts: sign with its own key, call with its
own certificate, and read what every verifier now believes."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from gateway.server import Gateway
from numfed import pki
from numfed.claims import Purpose, TenureClaim, sign_claim
from numfed.config import load_gateway_config
from numfed.envelope import SigningKey
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.federation import CARRIER_PREFIXES
from numfed.identity import PeerId, Role
from numfed.portability import NumberPlan
from numfed.rpc import rpc_error_info
from numfed.testing import Federation, until_serving
from numfed.trust import CarrierKey, TrustBundle, TrustedState, sign_bundle
from numfed.trustfiles import load_trusted_state, write_envelope
from numfed.v1 import claim_pb2, gateway_pb2, gateway_pb2_grpc

__all__ = [
    "call_gateway",
    "half",
    "publish",
    "refused",
    "restart_gateway",
    "serving_at_platforms",
    "signed_batch",
    "tenure_claim",
    "write_bundle",
]


def signed_batch(
    fed: Federation,
    carrier: str,
    *events: LifecycleEvent,
    key: SigningKey | None = None,
    now: datetime | None = None,
) -> claim_pb2.Envelope:
    signer = key or pki.load_carrier_signer(fed.layout.pki_dir, carrier)
    return sign_event_batch(carrier, events, signer, now=now or datetime.now(UTC)).to_proto()


def half(number: str, donor: str, recipient: str, at: datetime) -> LifecycleEvent:
    """A PORTED half as a lying carrier writes it: built without the checks the honest code
    path makes on construction, so a malformed one reaches the verifier as signed bytes."""
    event = object.__new__(LifecycleEvent)
    for name, value in {
        "event_id": secrets.token_bytes(16),
        "number": number,
        "kind": EventKind.PORTED,
        "at": at,
        "as_of": None,
        "tenure_start": None,
        "from_carrier": donor,
        "to_carrier": recipient,
    }.items():
        object.__setattr__(event, name, value)
    return event


def tenure_claim(
    fed: Federation, carrier: str, number: str, purpose: Purpose, tenure_start: datetime
) -> claim_pb2.Envelope:
    claim = TenureClaim.new(
        number=number,
        carrier_id=carrier,
        tenure_start=tenure_start,
        purpose=purpose,
        now=datetime.now(UTC),
    )
    return sign_claim(claim, pki.load_carrier_signer(fed.layout.pki_dir, carrier)).to_proto()


async def call_gateway(
    fed: Federation, peer: PeerId, method: str, request: object, *, target: str = ""
) -> object:
    async with pki.secure_channel(
        target or fed.layout.gateway_endpoint, fed.layout.pki_dir, peer
    ) as ch:
        return await getattr(gateway_pb2_grpc.GatewayServiceStub(ch), method)(request, timeout=10)


async def publish(
    fed: Federation, carrier: str, batch: claim_pb2.Envelope, *, target: str = ""
) -> int:
    """PublishEvents as ``carrier``; the batch's seq."""
    answer = await call_gateway(
        fed,
        PeerId(Role.CARRIER, carrier),
        "PublishEvents",
        gateway_pb2.PublishEventsRequest(batch=batch),
        target=target,
    )
    return int(answer.seq)  # type: ignore[attr-defined]


async def refused(fed: Federation, peer: PeerId, method: str, request: object) -> str:
    """The refusal of a call as "CODE REASON" (the test fails when the call succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call_gateway(fed, peer, method, request)
    info = rpc_error_info(e.value)
    return f"{e.value.code().name} {info.reason if info else '-'}"


def serving_at_platforms(fed: Federation, number: str) -> dict[str, str | None]:
    """Who serves ``number`` at each platform, as far as it has applied the event log."""
    out: dict[str, str | None] = {}
    for p, handle in fed.platforms.items():
        plan = NumberPlan.from_bundle(handle.trust.trusted().bundle)
        out[p] = handle.store.serving_carriers([number], plan)[number]
    return out


def write_bundle(
    fed: Federation,
    *,
    version: int,
    extra_keys: Mapping[str, SigningKey] | None = None,
    revoked: Mapping[str, SigningKey] | None = None,
    retired: Mapping[str, SigningKey] | None = None,
    number_ranges: Mapping[str, str] | None = None,
) -> TrustedState:
    """Sign and write a new trust bundle (the federation's root keys, as its operators would):
    the current one's keys and plan, plus ``extra_keys`` (key -> carrier), minus the keys in
    ``revoked`` (carrier -> key), which are listed as revoked (a compromise: nothing they signed
    counts), with the keys in ``retired`` (carrier -> key) kept but their window closed now (a
    rotation: what they signed in their window still counts)."""
    now = datetime.now(UTC)
    trust_dir = fed.layout.trust_dir
    current = load_trusted_state(trust_dir, now=now).bundle
    assert current is not None
    keys = dict(current.carrier_keys)
    gone = {k.public.key_id for k in (revoked or {}).values()}
    for key_id in gone:
        keys.pop(key_id, None)
    for signer in (retired or {}).values():
        old = keys[signer.public.key_id]
        keys[signer.public.key_id] = CarrierKey(
            key=old.key,
            carrier_id=old.carrier_id,
            not_before=old.not_before,
            not_after=now,
            number_prefixes=old.number_prefixes,
        )
    for carrier, signer in (extra_keys or {}).items():
        keys[signer.public.key_id] = CarrierKey(
            key=signer.public,
            carrier_id=carrier,
            not_before=now - timedelta(days=1),
            not_after=now + timedelta(days=365),
            number_prefixes=CARRIER_PREFIXES,
        )
    bundle = TrustBundle(
        version=version,
        issued_at=now,
        expires_at=now + timedelta(days=30),
        carrier_keys=keys,
        revoked_key_ids=frozenset(current.revoked_key_ids | gone),
        number_ranges=current.number_ranges if number_ranges is None else number_ranges,
    )
    signers = pki.load_root_signers(fed.layout.pki_dir)
    write_envelope(trust_dir / "bundle.pb", sign_bundle(bundle, signers[:2]))
    return load_trusted_state(trust_dir, now=now)


async def restart_gateway(fed: Federation) -> Gateway:
    """Stop the gateway and start it again from its config (and the trust files on disk), as an
    operator deploys a new trust bundle; the database and the members stay."""
    await fed.gateway.stop(0)
    gw = await Gateway.start(load_gateway_config(fed.layout.gateway_config))
    fed.gateway = gw
    async with asyncio.timeout(20):
        await gw.ready.wait()
    await until_serving(gw, fed.running_platforms())
    return gw
