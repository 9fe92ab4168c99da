"""A platform judges signed times itself, with the skew and lifetime of the bundle it holds.

Event batches come to a platform from the gateway's log, possibly long after they were signed
(the platform was away): an old batch is still applied (at-least-once), but one backdated into
the window of a key retired long ago, or dated ahead of the platform's clock, is refused. The
gateway is not trusted for any of it: these batches are delivered as a lying gateway would.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from numfed import pki
from numfed.claims import Purpose
from numfed.events import EventKind, LifecycleEvent, sign_event_batch
from numfed.rpc import error_info
from numfed.timecheck import LOG_KEY_GRACE
from numfed.trust import TrustBundle, sign_bundle
from numfed.v1 import events_pb2, platform_pb2
from tests.platform_stubs.conftest import Running, platform_stub, signed

NUMBER = "+8613812345678"  # cmcc's
X = datetime(2022, 7, 1, 9, tzinfo=UTC)


async def publish_bundle(running: Running, **changes: object) -> TrustBundle:
    """Serve the next bundle with ``changes`` and have the platform take it."""
    current = running.platform.trust.trusted().bundle
    assert current is not None
    bundle = dataclasses.replace(current, version=current.version + 1, **changes)  # type: ignore[arg-type]
    signers = pki.load_root_signers(running.layout.pki_dir)[:2]
    running.trust_gateway.bundle = sign_bundle(bundle, signers).to_proto()
    await running.platform.trust.refresh()
    return bundle


async def retire_cmcc_key(running: Running, closed_ago: timedelta) -> None:
    current = running.platform.trust.trusted().bundle
    assert current is not None
    key_id = running.signer("cmcc").key_id
    keys = dict(current.carrier_keys)
    now = datetime.now(UTC)
    keys[key_id] = dataclasses.replace(
        keys[key_id], not_before=now - timedelta(days=465), not_after=now - closed_ago
    )
    await publish_bundle(running, carrier_keys=keys)


async def deliver(
    running: Running, signed_at: datetime, at: datetime, seq: int = 1, *, held: bool = False
) -> tuple[int, bytes]:
    """Deliver one batch (one DEACTIVATED at ``at``) signed at ``signed_at``; (seq, event id).

    A batch applied, or refused for good, is acknowledged; one ``held`` (refused for a reason
    that may be the platform's own staleness, numfed/staleness.py) is not."""
    event = LifecycleEvent.new(NUMBER, EventKind.DEACTIVATED, at)
    env = sign_event_batch("cmcc", [event], running.signer("cmcc"), now=signed_at)
    async with running.channel() as ch:
        answer = await platform_stub(ch).DeliverEvents(
            platform_pb2.DeliverEventsRequest(
                batches=[events_pb2.SequencedBatch(seq=seq, batch=env.to_proto())]
            ),
            timeout=5,
        )
    if held:
        assert answer.ack_through_seq < seq
    else:
        assert answer.ack_through_seq == seq
    return seq, event.event_id


def applied(running: Running, event_id: bytes) -> bool:
    return event_id in running.platform.store.applied_event_ids()


async def test_a_batch_from_the_log_may_be_old_but_not_from_the_future(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """Signed 20 hours ago (the platform was away), long past the bundle's claim lifetime:
    applied. Dated 300 days ahead: refused."""
    caplog.set_level(logging.WARNING, logger="platform_stubs.events")
    now = datetime.now(UTC)
    _, late = await deliver(running, now - timedelta(hours=20), now - timedelta(hours=21))
    assert applied(running, late)
    assert running.platform.servicer.events.refused == []
    ahead = now + timedelta(days=300)
    seq, event_id = await deliver(running, ahead, ahead, seq=2)
    assert not applied(running, event_id)
    assert running.platform.servicer.events.refused == [seq]
    assert "ISSUED_IN_FUTURE" in caplog.text


async def test_a_retired_keys_batches_are_taken_within_the_grace_only(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """Retired 10 days ago: a batch it signed 12 days ago still arrives. Retired 100 days ago:
    a batch backdated into its window is not applied, nor acknowledged: KEY_OUT_OF_WINDOW may be
    the platform's staleness (a newer bundle may extend the window), so it is held, and only
    after the bounded retries set aside in the dead-letter list, never applied."""
    caplog.set_level(logging.INFO, logger="platform_stubs.events")
    await retire_cmcc_key(running, closed_ago=timedelta(days=10))
    now = datetime.now(UTC)
    _, within = await deliver(running, now - timedelta(days=12), now - timedelta(days=13))
    assert applied(running, within)
    assert timedelta(days=100) > LOG_KEY_GRACE
    await retire_cmcc_key(running, closed_ago=timedelta(days=100))
    _, backdated = await deliver(
        running, now - timedelta(days=101), now - timedelta(days=102), seq=2, held=True
    )
    assert not applied(running, backdated)
    assert "KEY_OUT_OF_WINDOW" in caplog.text


async def test_the_platform_takes_skew_and_lifetime_from_its_bundle(running: Running) -> None:
    """A 10-minute claim, 3 minutes ahead of the platform's clock: refused under the defaults
    (60 s skew), accepted once the bundle allows 5 minutes of skew, refused again once it caps
    claims at 5 minutes."""
    claim = signed(
        running.signer("cmcc"),
        number=NUMBER,
        tenure_start=X,
        purpose=Purpose.QUERY_PRIOR,
        issued=datetime.now(UTC) + timedelta(minutes=3),
        lifetime=timedelta(minutes=10),
    )
    request = platform_pb2.BatchQueryBindingsRequest(
        items=[platform_pb2.QueryItem(item_id="1", claim=claim.to_proto())]
    )

    async def outcome() -> tuple[int, str]:
        async with running.channel() as ch:
            answer = await platform_stub(ch).BatchQueryBindings(request, timeout=5)
        status = answer.results[0].status
        info = error_info(status)
        return status.code, info.reason if info is not None else ""

    assert await outcome() == (grpc.StatusCode.UNAUTHENTICATED.value[0], "ISSUED_IN_FUTURE")
    await publish_bundle(running, max_clock_skew=timedelta(minutes=5))
    assert await outcome() == (0, "")
    await publish_bundle(running, max_claim_lifetime=timedelta(minutes=5))
    assert await outcome() == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "CLAIM_LIFETIME_TOO_LONG",
    )
