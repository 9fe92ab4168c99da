"""Frozen trust vectors replayed at a fixed clock (tests/vectors/trust, made once by generate.py).

The kit's trust simulator signs with today's code, so it agrees with today's code whatever
that does; these files were signed once and stay, so a change in how roots, bundles or claims
are encoded or judged shows up here (as tuf-conformance's static repositories do).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from numfed.claims import Purpose, verify_tenure_claim
from numfed.envelope import Envelope
from numfed.errors import Unauthenticated
from numfed.trust import TrustedState
from numfed.trustfiles import load_trusted_state
from numfed.v1 import claim_pb2

VECTORS = Path(__file__).parents[1] / "vectors" / "trust"
EXPECTED = json.loads((VECTORS / "expected.json").read_text())
CLOCK = datetime.fromisoformat(EXPECTED["clock"])


def _envelope(path: Path) -> Envelope:
    return Envelope.from_proto(claim_pb2.Envelope.FromString(path.read_bytes()))


def test_a_three_step_rotation_walks_through_an_expired_intermediate_root() -> None:
    state = load_trusted_state(VECTORS / "rotation", now=CLOCK)
    expected = EXPECTED["rotation"]
    assert state.versions == (expected["root_version"], expected["bundle_version"])
    assert state.root.expires_at > CLOCK
    later = datetime.fromisoformat(expected["final_root_expired_at"]) + timedelta(seconds=1)
    with pytest.raises(Unauthenticated) as err:
        load_trusted_state(VECTORS / "rotation", now=later)
    assert err.value.reason == "ROOT_EXPIRED"


def test_the_intermediate_root_alone_is_expired() -> None:
    rotation = VECTORS / "rotation"
    state = TrustedState(_envelope(rotation / "root-1.pb"), now=CLOCK)
    state.update_roots([_envelope(rotation / "root-2.pb")])
    with pytest.raises(Unauthenticated) as err:
        state.check_final_root(CLOCK)
    assert err.value.reason == "ROOT_EXPIRED"


def test_a_bundle_that_revokes_a_key_refuses_its_claim_and_cannot_be_rolled_back() -> None:
    revocation = VECTORS / "revocation"
    claim = _envelope(revocation / "claim.pb")
    state = TrustedState(_envelope(revocation / "root-1.pb"), now=CLOCK)
    state.update_bundle(_envelope(revocation / "bundle-1.pb"), now=CLOCK)
    verified = verify_tenure_claim(claim, state, now=CLOCK, purposes=[Purpose.QUERY_PRIOR])
    assert verified.carrier_id == "cmcc"
    state.update_bundle(_envelope(revocation / "bundle-2.pb"), now=CLOCK)
    with pytest.raises(Unauthenticated) as err:
        verify_tenure_claim(claim, state, now=CLOCK, purposes=[Purpose.QUERY_PRIOR])
    assert err.value.reason == EXPECTED["revocation"]["claim_under_bundle_2"]
    with pytest.raises(Unauthenticated) as err:
        state.update_bundle(_envelope(revocation / "bundle-1.pb"), now=CLOCK)
    assert err.value.reason == "BUNDLE_ROLLBACK"
