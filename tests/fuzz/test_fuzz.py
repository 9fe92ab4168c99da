"""Fuzz every RPC of every service: bad input gets a precise error and changes nothing.

One real federation (gateway, three carriers, eight platforms, mTLS, SQLite) serves the whole
package (``conftest.py``). Each RPC gets (a) messages generated from its request descriptor,
(b) valid requests mutated at the byte level, and (c) valid requests with one field changed,
signed claims and event batches included (re-signed or not), from every role. Every answer
must be OK or a precise code (never INTERNAL, UNKNOWN or DATA_LOSS; DEADLINE_EXCEEDED only on a
stream) with one ErrorInfo; a refused request changes nothing; every server still answers a
valid request after each test. ``NUMFED_FUZZ_EXAMPLES`` sets the examples per test (``make fuzz``).
"""

from __future__ import annotations

import os
from typing import cast

import pytest
from google.protobuf.descriptor import Descriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numfed import pki
from numfed.identity import PeerId
from numfed.scenario import CARRIERS, PLATFORMS
from tests.fuzz.harness import CARRIER, RPCS, LiveFederation, Rpc
from tests.fuzz.protofuzz import messages, mutated, one_field_changed
from tests.fuzz.signed import envelope_paths, hints, resigned

EXAMPLES = int(os.environ.get("NUMFED_FUZZ_EXAMPLES", "6"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)


def pool(live: LiveFederation) -> list[str]:
    """Strings the servers know: numbers, members, operations, payload types, a session."""
    held = live.held()
    return [
        *[n for n in live.numbers()[:10] if n not in held[:2]],
        held[2],
        *live.numbers("cucc")[:2],
        *PLATFORMS,
        *CARRIERS,
        live.operation,
        live.holder_operation,
        "operations/" + "0" * 32,
        live.session(),
        "spiffe://numfed/carrier/cmcc",
    ]


_strategies: dict[str, st.SearchStrategy[bytes]] = {}


def generated(live: LiveFederation, rpc: Rpc) -> st.SearchStrategy[bytes]:
    if rpc.id not in _strategies:
        p = pool(live)
        descriptor = cast(Descriptor, rpc.request.DESCRIPTOR)
        _strategies[rpc.id] = messages(descriptor, pool=p, hints=hints(p)).map(
            lambda m: m.SerializeToString()
        )
    return _strategies[rpc.id]


def callers(live: LiveFederation, rpc: Rpc) -> st.SearchStrategy[PeerId | None]:
    """Mostly a role the RPC allows (to get past the policy), else any role."""
    allowed = live.allowed_peer(rpc)
    return st.sampled_from([allowed, allowed, *live.peers(rpc)])


def ids(rpc: Rpc) -> str:
    return rpc.id


def test_every_service_is_fuzzed() -> None:
    services = {r.service for r in RPCS}
    assert services == {"GatewayService", "CarrierService", "PlatformService", "HolderService"}
    assert len(RPCS) == 21
    assert {r.id for r in RPCS if r.stream} == {
        "GatewayService.WatchOperation",
        "HolderService.WatchHolderRelease",
    }


def test_valid_requests_are_answered(live: LiveFederation) -> None:
    """The seeds are valid: each is answered OK from its allowed caller (so the mutations
    below start from requests that get all the way through). First, before the fuzzing uses
    up the verifications a number may start."""
    for rpc in RPCS:
        for seed in live.seeds(rpc, fresh=True):
            out = live.exercise(rpc, live.allowed_peer(rpc), seed.SerializeToString())
            assert out.code.name == "OK", (rpc.id, out)


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("rpc", RPCS, ids=ids)
@FUZZ
@given(data=st.data())
def test_generated_messages(live: LiveFederation, rpc: Rpc, data: st.DataObject) -> None:
    peer = data.draw(callers(live, rpc), label="peer")
    body = data.draw(generated(live, rpc), label="request")
    live.exercise(rpc, peer, body)


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("rpc", RPCS, ids=ids)
@FUZZ
@given(data=st.data())
def test_mutated_bytes(live: LiveFederation, rpc: Rpc, data: st.DataObject) -> None:
    peer = data.draw(callers(live, rpc), label="peer")
    seeds = [m.SerializeToString() for m in live.seeds(rpc)]
    body = data.draw(mutated(seeds), label="request")
    live.exercise(rpc, peer, body)


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("rpc", RPCS, ids=ids)
@FUZZ
@given(data=st.data())
def test_mutated_valid_requests(live: LiveFederation, rpc: Rpc, data: st.DataObject) -> None:
    peer = data.draw(callers(live, rpc), label="peer")
    seed = data.draw(st.sampled_from(live.seeds(rpc)), label="seed")
    p = pool(live)
    signed = bool(envelope_paths(seed)) and data.draw(st.booleans(), label="signed")
    if signed:
        signers = {c: pki.load_carrier_signer(live.pki_dir, c) for c in CARRIERS}
        request = data.draw(resigned(seed, signers, CARRIER, p), label="request")
    else:
        request = data.draw(one_field_changed(seed, pool=p, hints=hints(p)), label="request")
    live.exercise(rpc, peer, request.SerializeToString())
