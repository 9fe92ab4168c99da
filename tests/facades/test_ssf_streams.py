"""SSF stream management as numfed fixes it: one stream per platform whose events go by SSF,
made by its membership; the receiver sets its endpoint, the events it wants and its status, but
can neither drop events (delete, disable) nor take another's stream; acknowledgements name SETs
delivered, and what the stream does not deliver never holds its cursor back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa

from gateway.schema import audit_log
from numfed.events import EventKind, LifecycleEvent
from numfed.identity import PeerId, Role
from numfed.testing import Federation
from tests.facades.conftest import GATEWAY_NAME, POLL, PUSH, https_client
from tests.facades.receiver import Receiver, events_of
from tests.facades.test_ssf_delivery import cursor_at_head, receiver, script
from tests.integration.test_events import publish, served_by_cmcc

RECYCLED = "https://schemas.openid.net/secevent/risc/event-type/identifier-recycled"


def base(fed: Federation) -> str:
    return "https://" + fed.layout.facade_endpoints[0]


async def call(
    fed: Federation, peer: PeerId | None, verb: str, path: str, **kw: Any
) -> httpx.Response:
    async with https_client(fed.layout.pki_dir, peer) as client:
        return await client.request(verb, base(fed) + path, extensions=GATEWAY_NAME, **kw)


def refusal(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, answer.json()["reason"]


TAOBAO = PeerId(Role.PLATFORM, "taobao")
WEIBO = PeerId(Role.PLATFORM, "weibo")
DOUYIN = PeerId(Role.PLATFORM, "douyin")


async def test_one_stream_per_platform_that_nobody_can_drop(ssf_fed: Federation) -> None:
    f = ssf_fed
    listed = await call(f, TAOBAO, "GET", "/ssf/stream")
    assert [s["stream_id"] for s in listed.json()] == ["taobao"]
    stream = listed.json()[0]
    assert stream["iss"] == base(f) and stream["aud"] == TAOBAO.uri
    assert stream["delivery"] == {"method": POLL, "endpoint_url": base(f) + "/ssf/poll"}
    assert stream["events_delivered"] == stream["events_supported"]
    assert refusal(await call(f, TAOBAO, "POST", "/ssf/stream", json={})) == (409, "STREAM_EXISTS")
    delete = await call(f, TAOBAO, "DELETE", "/ssf/stream", params={"stream_id": "taobao"})
    assert refusal(delete) == (403, "STREAM_DELETE_NOT_ALLOWED")
    other = await call(f, TAOBAO, "GET", "/ssf/stream", params={"stream_id": "weibo"})
    assert refusal(other) == (404, "STREAM_NOT_FOUND")
    disable = await call(
        f, TAOBAO, "POST", "/ssf/status", json={"stream_id": "taobao", "status": "disabled"}
    )
    assert refusal(disable) == (403, "STREAM_DISABLE_NOT_ALLOWED")
    forged = await call(
        f, TAOBAO, "PATCH", "/ssf/stream", json={"stream_id": "taobao", "iss": "https://x"}
    )
    assert refusal(forged) == (400, "TRANSMITTER_FIELD_MISMATCH")
    assert forged.json()["err"] == "invalid_request"
    switch = await call(
        f,
        TAOBAO,
        "PATCH",
        "/ssf/stream",
        json={"stream_id": "taobao", "delivery": {"method": PUSH, "endpoint_url": "https://x/"}},
    )
    assert refusal(switch) == (400, "DELIVERY_METHOD_FIXED")
    # A platform whose events go by gRPC has no stream and may make none.
    assert (await call(f, DOUYIN, "GET", "/ssf/stream")).json() == []
    assert refusal(await call(f, DOUYIN, "POST", "/ssf/stream", json={})) == (
        403,
        "STREAM_NOT_ALLOWED",
    )
    assert refusal(await call(f, DOUYIN, "POST", "/ssf/poll", json={})) == (
        404,
        "STREAM_NOT_FOUND",
    )
    assert refusal(await call(f, WEIBO, "POST", "/ssf/poll", json={})) == (
        403,
        "NOT_A_POLL_STREAM",
    )
    # Only platforms manage streams; only members are served at all.
    carrier = await call(f, PeerId(Role.CARRIER, "cmcc"), "GET", "/ssf/stream")
    assert refusal(carrier) == (403, "ROLE_NOT_ALLOWED")
    assert refusal(await call(f, None, "GET", "/ssf/stream")) == (401, "NO_PEER_IDENTITY")
    nothing_changed = await call(f, TAOBAO, "GET", "/ssf/stream", params={"stream_id": "taobao"})
    assert nothing_changed.json() == stream


async def test_what_the_stream_does_not_deliver_never_holds_it_back(ssf_fed: Federation) -> None:
    rx = receiver(ssf_fed, "taobao", drop_rate=0.0)
    async with rx.client() as client:
        await rx.discover(client)
        answer = await client.patch(
            base(ssf_fed) + "/ssf/stream",
            json={"stream_id": "taobao", "events_requested": [RECYCLED, "urn:example:unknown"]},
            extensions=GATEWAY_NAME,
        )
        assert answer.json()["events_delivered"] == [RECYCLED]
        sent = await script(ssf_fed)
        reassigned = {i for i in sent[2::3]}  # each lifecycle's third event
        await rx.poll_until(client, lambda: reassigned <= rx.received.seen_ids())
        await cursor_at_head(ssf_fed, "taobao")
    assert all(e.kind is EventKind.REASSIGNED for e in rx.received.events)
    assert list(events_of(rx.received, set(sent))) == sent[2::3]


async def test_a_paused_stream_holds_its_events_in_order(ssf_fed: Federation) -> None:
    rx = receiver(ssf_fed, "taobao", drop_rate=0.0)
    async with rx.client() as client:
        await rx.discover(client)
        paused = await client.post(
            base(ssf_fed) + "/ssf/status",
            json={"stream_id": "taobao", "status": "paused", "reason": "maintenance"},
            extensions=GATEWAY_NAME,
        )
        assert paused.json() == {"stream_id": "taobao", "status": "paused", "reason": "maintenance"}
        sent = await script(ssf_fed)
        empty = await client.post(
            base(ssf_fed) + "/ssf/poll",
            json={"returnImmediately": True},
            extensions=GATEWAY_NAME,
        )
        assert empty.json() == {"sets": {}, "moreAvailable": False}
        assert await ssf_fed.gateway.store.run(ssf_fed.gateway.events.cursor, "taobao") == 0
        status = await client.get(
            base(ssf_fed) + "/ssf/status", params={"stream_id": "taobao"}, extensions=GATEWAY_NAME
        )
        assert status.json()["status"] == "paused"
        await client.post(
            base(ssf_fed) + "/ssf/status",
            json={"stream_id": "taobao", "status": "enabled"},
            extensions=GATEWAY_NAME,
        )
        await rx.poll_until(client, lambda: set(sent) <= rx.received.seen_ids())
    assert list(events_of(rx.received, set(sent))) == sent
    await ssf_fed.gateway.audit.flush()
    with ssf_fed.gateway.store.engine.connect() as c:
        changes = [
            (r.actor, r.outcome)
            for r in c.execute(
                sa.select(audit_log.c.actor, audit_log.c.outcome)
                .where(audit_log.c.event == "SSF_STREAM")
                .order_by(audit_log.c.seq)
            )
        ]
    assert changes == [(TAOBAO.uri, "PAUSED"), (TAOBAO.uri, "ENABLED")]


async def test_an_ack_of_a_set_not_delivered_acknowledges_nothing(ssf_fed: Federation) -> None:
    event = LifecycleEvent.new(served_by_cmcc()[0], EventKind.DEACTIVATED, datetime.now(UTC))
    await publish(ssf_fed, [event])
    rx = receiver(ssf_fed, "taobao", drop_rate=0.0)
    async with rx.client() as client:
        await rx.discover(client)
        head = await ssf_fed.gateway.store.run(ssf_fed.gateway.events.head)
        early = await client.post(
            base(ssf_fed) + "/ssf/poll",
            json={"ack": [event.event_id.hex(), "0" * 32], "maxEvents": 0},
            extensions=GATEWAY_NAME,
        )
        assert early.json() == {"sets": {}, "moreAvailable": False}
        assert await ssf_fed.gateway.store.run(ssf_fed.gateway.events.cursor, "taobao") < head
        await rx.poll_until(client, lambda: event.event_id in rx.received.seen_ids())
        await cursor_at_head(ssf_fed, "taobao")


async def test_verification_requests_are_rate_limited(ssf_fed: Federation) -> None:
    first = await call(ssf_fed, TAOBAO, "POST", "/ssf/verify", json={"stream_id": "taobao"})
    assert first.status_code == 204
    again = await call(ssf_fed, TAOBAO, "POST", "/ssf/verify", json={"stream_id": "taobao"})
    assert refusal(again) == (429, "VERIFICATION_TOO_OFTEN")
    assert 1 <= int(again.headers["retry-after"]) <= 10
    wrong = await call(ssf_fed, TAOBAO, "POST", "/ssf/verify", json={"stream_id": "weibo"})
    assert refusal(wrong) == (404, "STREAM_NOT_FOUND")


async def test_discovery_names_every_endpoint_and_the_key(ssf_fed: Federation) -> None:
    rx: Receiver = receiver(ssf_fed, "weibo", drop_rate=0.0)
    async with rx.client() as client:
        config = await rx.discover(client)
    assert config["spec_version"] == "1_0"
    assert set(config["delivery_methods_supported"]) == {PUSH, POLL}
    for name in ("configuration_endpoint", "status_endpoint", "verification_endpoint"):
        assert config[name].startswith(rx.issuer + "/ssf/")
    assert config["default_subjects"] == "ALL"
    assert len(rx.keys) == 1 and all(k.algorithm_name == "EdDSA" for k in rx.keys.values())


async def test_a_set_reported_in_error_is_acknowledged_and_audited(ssf_fed: Federation) -> None:
    event = LifecycleEvent.new(served_by_cmcc()[0], EventKind.DEACTIVATED, datetime.now(UTC))
    await publish(ssf_fed, [event])
    jti = event.event_id.hex()
    poll = base(ssf_fed) + "/ssf/poll"
    async with https_client(ssf_fed.layout.pki_dir, TAOBAO) as client:
        first = await client.post(poll, json={"returnImmediately": True}, extensions=GATEWAY_NAME)
        others = [j for j in first.json()["sets"] if j != jti]  # port halves from the start
        assert jti in first.json()["sets"]
        report = await client.post(
            poll,
            json={
                "ack": others,
                "setErrs": {jti: {"err": "invalid_key", "description": "unknown kid"}},
                "returnImmediately": True,
            },
            extensions=GATEWAY_NAME,
        )
        assert report.json() == {"sets": {}, "moreAvailable": False}  # nothing left to send
        await cursor_at_head(ssf_fed, "taobao")
    await ssf_fed.gateway.audit.flush()
    with ssf_fed.gateway.store.engine.connect() as c:
        details = [
            r.detail
            for r in c.execute(
                sa.select(audit_log.c.detail).where(audit_log.c.outcome == "SET_REJECTED")
            )
        ]
    assert len(details) == 1 and jti in details[0] and "invalid_key" in details[0]
