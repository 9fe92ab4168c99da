"""SSF delivery end to end: a scripted lifecycle reaches a receiver written from the RFCs, every
event once after deduplication and in order, by push (RFC 8935) and by poll (RFC 8936), with a
fifth of the acknowledgements lost; the receiver verifies each SET (PyJWT) and the carrier's
signed batch inside it. Acknowledgements move the platform's cursor in the same event log as
gRPC delivery, which another platform reads meanwhile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from gateway.schema import audit_log
from numfed.events import EventKind, LifecycleEvent
from numfed.testing import Federation
from tests.facades.conftest import GATEWAY_NAME, POLL, PUSH
from tests.facades.receiver import Receiver, events_of
from tests.integration.members import eventually
from tests.integration.test_events import delivered, publish, served_by_cmcc


async def script(fed: Federation) -> list[bytes]:
    """Six cmcc numbers each given up, put up for release and reassigned: some lifecycles in
    one batch, some one event per batch. Returns the event ids in the order published."""
    sent: list[bytes] = []
    t = datetime.now(UTC) - timedelta(days=200)
    for k, number in enumerate(served_by_cmcc()[:6]):
        gone = t + timedelta(days=k)
        release = gone + timedelta(days=90)
        life = [
            LifecycleEvent.new(number, EventKind.DEACTIVATED, gone),
            LifecycleEvent.new(number, EventKind.PENDING_RELEASE, release, as_of=release),
            LifecycleEvent.new(
                number,
                EventKind.REASSIGNED,
                release + timedelta(days=1),
                tenure_start=release + timedelta(days=1),
            ),
        ]
        for batch in [life] if k % 2 else [[e] for e in life]:
            await publish(fed, batch)
        sent += [e.event_id for e in life]
    return sent


async def cursor_at_head(fed: Federation, platform: str) -> None:
    gw = fed.gateway

    async def caught_up() -> bool:
        head = await gw.store.run(gw.events.head)
        return bool(await gw.store.run(gw.events.cursor, platform) == head)

    await eventually(caught_up, within=30)


def receiver(fed: Federation, platform: str, drop_rate: float) -> Receiver:
    return Receiver(
        platform_id=platform,
        pki_dir=fed.layout.pki_dir,
        trust_dir=fed.layout.trust_dir,
        facade=fed.layout.facade_endpoints[0],
        drop_rate=drop_rate,
    )


async def delivery_modes(fed: Federation) -> set[str]:
    await fed.gateway.audit.flush()
    with fed.gateway.store.engine.connect() as c:
        return {
            r.detail
            for r in c.execute(
                sa.select(audit_log.c.detail).where(
                    audit_log.c.event == "EVENT_DELIVERY", audit_log.c.outcome == "ACKNOWLEDGED"
                )
            )
        }


async def test_push_delivers_every_event_once_in_order_though_acks_are_lost(
    ssf_fed: Federation,
) -> None:
    rx = receiver(ssf_fed, "weibo", drop_rate=0.2)
    async with rx.client() as client, rx.push_endpoint() as url:
        config = await rx.discover(client)
        assert PUSH in config["delivery_methods_supported"]
        answer = await client.patch(
            config["configuration_endpoint"],
            json={"stream_id": "weibo", "delivery": {"method": PUSH, "endpoint_url": url}},
            extensions=GATEWAY_NAME,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["delivery"] == {"method": PUSH, "endpoint_url": url}
        sent = await script(ssf_fed)
        verify = await client.post(
            config["verification_endpoint"],
            json={"stream_id": "weibo", "state": "push-1"},
            extensions=GATEWAY_NAME,
        )
        assert verify.status_code == 204

        def all_in() -> bool:
            return set(sent) <= rx.received.seen_ids() and bool(rx.received.verifications)

        await eventually(all_in, within=60)
    assert list(events_of(rx.received, set(sent))) == sent, "missing, repeated or out of order"
    assert rx.received.verifications == [
        {"sub_id": {"format": "opaque", "id": "weibo"}, "state": "push-1"}
    ]
    assert rx.received.dropped_acks > 0 and rx.received.duplicates > 0  # the drops happened
    await cursor_at_head(ssf_fed, "weibo")
    assert any('"ssf-push"' in d for d in await delivery_modes(ssf_fed))
    # The same log reached a gRPC platform meanwhile, in the same order.
    assert [i for i in await delivered(ssf_fed, "douyin", len(sent)) if i in set(sent)] == sent


async def test_poll_delivers_every_event_once_in_order_though_acks_are_lost(
    ssf_fed: Federation,
) -> None:
    rx = receiver(ssf_fed, "taobao", drop_rate=0.2)
    async with rx.client() as client:
        config = await rx.discover(client)
        stream = await client.get(
            config["configuration_endpoint"],
            params={"stream_id": "taobao"},
            extensions=GATEWAY_NAME,
        )
        assert stream.json()["delivery"] == {"method": POLL, "endpoint_url": rx.base + "/ssf/poll"}
        sent = await script(ssf_fed)
        verify = await client.post(
            config["verification_endpoint"],
            json={"stream_id": "taobao", "state": "poll-1"},
            extensions=GATEWAY_NAME,
        )
        assert verify.status_code == 204
        # Fewer SETs per answer than some batches hold: batches are acknowledged in parts.
        await rx.poll_until(
            client,
            lambda: set(sent) <= rx.received.seen_ids() and bool(rx.received.verifications),
            max_events=2,
        )
        await cursor_at_head(ssf_fed, "taobao")
    assert list(events_of(rx.received, set(sent))) == sent, "missing, repeated or out of order"
    assert rx.received.verifications == [
        {"sub_id": {"format": "opaque", "id": "taobao"}, "state": "poll-1"}
    ]
    assert rx.received.dropped_acks > 0 and rx.received.duplicates > 0
    assert any('"ssf-poll"' in d for d in await delivery_modes(ssf_fed))


async def test_a_push_goes_only_to_a_server_with_the_platforms_own_certificate(
    ssf_fed: Federation,
) -> None:
    # weibo points its stream at a server holding taobao's certificate: nothing is delivered
    # there (the TLS name is weibo's), and once weibo's own endpoint is set, everything is.
    impostor = receiver(ssf_fed, "taobao", drop_rate=0.0)
    rx = receiver(ssf_fed, "weibo", drop_rate=0.0)
    async with rx.client() as client, impostor.push_endpoint() as wrong, rx.push_endpoint() as url:
        config = await rx.discover(client)
        impostor.issuer, impostor.keys = rx.issuer, rx.keys

        async def point(endpoint: str) -> None:
            answer = await client.patch(
                config["configuration_endpoint"],
                json={"stream_id": "weibo", "delivery": {"method": PUSH, "endpoint_url": endpoint}},
                extensions=GATEWAY_NAME,
            )
            assert answer.status_code == 200, answer.text

        await point(wrong)
        sent = await script(ssf_fed)
        # The pusher tried the wrong server, as weibo's name, and gave up on the handshake.
        await eventually(lambda: len(impostor.handshakes) >= 2, within=30)
        assert set(impostor.handshakes) == {"weibo.platform.numfed"}
        assert not impostor.received.events
        assert await ssf_fed.gateway.store.run(ssf_fed.gateway.events.cursor, "weibo") == 0
        await point(url)
        await eventually(lambda: set(sent) <= rx.received.seen_ids(), within=30)
    assert list(events_of(rx.received, set(sent))) == sent


async def test_a_set_the_receiver_refuses_is_delivered_and_audited_not_resent(
    ssf_fed: Federation,
) -> None:
    # RFC 8935: a 400 with an error is the receiver's word on that SET. The stream goes on
    # (the platform's cursor passes it), the refusal is audited, and it is not sent again.
    rx = receiver(ssf_fed, "weibo", drop_rate=0.0)
    async with rx.client() as client, rx.push_endpoint() as url:
        config = await rx.discover(client)
        await client.patch(
            config["configuration_endpoint"],
            json={"stream_id": "weibo", "delivery": {"method": PUSH, "endpoint_url": url}},
            extensions=GATEWAY_NAME,
        )
        first = LifecycleEvent.new(served_by_cmcc()[0], EventKind.DEACTIVATED, datetime.now(UTC))
        rx.reject.add(first.event_id.hex())
        await publish(ssf_fed, [first])
        sent = await script(ssf_fed)
        await eventually(lambda: set(sent) <= rx.received.seen_ids(), within=30)
        await cursor_at_head(ssf_fed, "weibo")
    assert first.event_id not in rx.received.seen_ids()
    assert list(events_of(rx.received, set(sent))) == sent
    await ssf_fed.gateway.audit.flush()
    with ssf_fed.gateway.store.engine.connect() as c:
        refusals = [
            r.detail
            for r in c.execute(
                sa.select(audit_log.c.detail).where(audit_log.c.outcome == "SET_REJECTED")
            )
        ]
    assert len(refusals) == 1 and first.event_id.hex() in refusals[0]
