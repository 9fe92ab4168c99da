"""The holder's page over HTTP: strict headers, CSRF refused before anything happens, refusals as
sentences with the right status, a crowd turned away with Retry-After, and sessions that end
with the page."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from carrier_adapters.base import CarrierHandle
from carrier_adapters.web.guard import CONTENT_SECURITY_POLICY
from numfed.rpc import SERVER_CAP_DETAILS, server_cap_refusal
from numfed.scenario import Holder, demo_scenario
from tests.carrier_adapters.conftest import Running
from tests.carrier_adapters.web.conftest import Visitor, error_of, start_web_carrier
from tests.helpers.metrics import total
from tests.integration.holder import sms_code

WORLD = demo_scenario()
PORTED = WORLD.showcase["ported"]  # served by cmcc
FRESH = WORLD.showcase["fresh"]  # served by ctcc


def holder_of(number: str) -> Holder:
    tenure = WORLD.histories[number].current_tenure(datetime.now(UTC))
    assert tenure is not None
    return WORLD.holders[tenure.holder_id]


def outbox(handle: CarrierHandle) -> Path:
    return handle.adapter.config.state_dir / "sms-outbox.jsonl"


def sent(handle: CarrierHandle) -> int:
    path = outbox(handle)
    return len(path.read_text().splitlines()) if path.exists() else 0


async def verify(visitor: Visitor, handle: CarrierHandle, number: str = PORTED) -> None:
    await visitor.open()
    assert (await visitor.post("/number", {"number": number})).status_code == 200
    h = holder_of(number)
    answer = await visitor.post("/code", {"name": h.name, "id_number": h.id_number})
    assert answer.status_code == 200, error_of(answer)
    code = sms_code(handle.adapter.config.state_dir, number)
    answer = await visitor.post("/confirm", {"code": code})
    assert answer.status_code == 200 and 'table class="claim"' in answer.text, error_of(answer)


async def test_every_answer_carries_the_strict_headers(
    visitor: Visitor, web: CarrierHandle
) -> None:
    page = await visitor.open()
    static = await visitor.client.get("/static/holder.js")
    for answer in (page, static):
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    # A session cookie (no Max-Age, no Expires: gone when the browser closes), HttpOnly, Strict.
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "max-age" not in cookie.lower() and "expires" not in cookie.lower()
    # Nothing inline for the CSP to refuse: every script from a file, no style or on* attributes.
    await verify(visitor, web)
    views = [page.text, (await visitor.post("/query")).text, (await visitor.post("/own")).text]
    for html in views:
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
        assert not re.search(r"\sstyle=|\son[a-z]+=", html)


async def test_posts_from_elsewhere_are_refused_before_anything_happens(
    running: Running, web: CarrierHandle, visitor: Visitor
) -> None:
    await visitor.open()
    assert (await visitor.post("/number", {"number": PORTED})).status_code == 200
    h = holder_of(PORTED)
    details = {"name": h.name, "id_number": h.id_number}
    base = str(visitor.client.base_url)
    stranger = Visitor(httpx.AsyncClient(base_url=base, timeout=10), token=visitor.token)
    attempts = [
        visitor.client.post("/code", data=details, headers={"accept-language": "en"}),  # no token
        visitor.post("/code", details, origin="http://evil.example"),
        visitor.post("/code", details, **{"sec-fetch-site": "cross-site"}),
        stranger.post("/code", details),  # a token copied into another browser
    ]
    for answer in [await a for a in attempts]:
        assert answer.status_code == 403
        assert "another site" in answer.text  # the PAGE_EXPIRED sentence, in a page of its own
    await stranger.client.aclose()
    assert sent(web) == 0  # no code was sent
    assert running.gateway.calls == []
    answer = await visitor.post("/code", details, origin=base.rstrip("/"))  # the page itself
    assert answer.status_code == 200 and sent(web) == 1


async def test_refusals_are_sentences_with_the_right_status(
    web: CarrierHandle, visitor: Visitor
) -> None:
    await visitor.open()
    answer = await visitor.post("/number", {"number": "12345"})
    assert answer.status_code == 400
    assert error_of(answer).startswith("That is not a valid mobile number")
    answer = await visitor.post("/number", {"number": FRESH[3:]})  # 11 digits, +86 added
    assert answer.status_code == 200
    h = holder_of(FRESH)
    answer = await visitor.post("/code", {"name": h.name, "id_number": h.id_number})
    assert answer.status_code == 404
    assert error_of(answer).startswith("China Mobile does not serve this number")
    assert 'id="number"' in answer.text  # back to step 1

    await visitor.post("/number", {"number": PORTED})
    answer = await visitor.post("/code", {"name": "冒名", "id_number": holder_of(PORTED).id_number})
    assert answer.status_code == 403
    assert "does not match the holder" in error_of(answer)
    answer = await visitor.post("/code", {"name": "冒名", "id_number": "123"})
    assert answer.status_code == 400 and "18 characters" in error_of(answer)


async def test_code_limits_say_how_long_to_wait(
    running: Running, web: CarrierHandle, visitor: Visitor
) -> None:
    """The carrier's limit per number (5 codes per 10 minutes) reaches the holder as "wait 10
    minutes" (its RetryInfo); the page's own limit per browser as a wait too."""
    h = holder_of(PORTED)
    details = {"name": h.name, "id_number": h.id_number}
    base = str(visitor.client.base_url)
    for _ in range(5):  # each from another browser, so the page's own limit stays out of it
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            other = Visitor(c)
            await other.open()
            await other.post("/number", {"number": PORTED})
            assert (await other.post("/code", details)).status_code == 200
    await visitor.open()
    await visitor.post("/number", {"number": PORTED})
    answer = await visitor.post("/code", details)
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "600"
    assert error_of(answer) == (
        "Too many codes were asked for this number. Please try again in 10 minutes."
    )
    # The page's own limit: five code requests from one browser, then one a minute.
    for _ in range(4):
        await visitor.post("/code", details)
    answer = await visitor.post("/code", details)
    assert answer.status_code == 429 and "Too many tries from this page" in error_of(answer)
    assert 1 <= int(answer.headers["retry-after"]) <= 60


async def test_a_wrong_code_is_refused_and_counts_down(
    web: CarrierHandle, visitor: Visitor
) -> None:
    await visitor.open(lang="zh")
    await visitor.post("/number", {"number": PORTED})
    h = holder_of(PORTED)
    await visitor.post("/code", {"name": h.name, "id_number": h.id_number})
    right = sms_code(web.adapter.config.state_dir, PORTED)
    wrong = "000000" if right != "000000" else "111111"
    for left in (4, 3, 2, 1):
        answer = await visitor.post("/confirm", {"code": wrong})
        assert answer.status_code == 403
        assert error_of(answer) == f"验证码不对。还可以再试{left}次。"
    answer = await visitor.post("/confirm", {"code": wrong})
    assert error_of(answer) == "这个验证码已过期或已用完尝试次数。请重新获取验证码。"
    assert 'id="name"' in answer.text  # the page asks for a new code


async def test_an_unexpected_failure_shows_a_sentence_never_a_trace(
    web: CarrierHandle, visitor: Visitor, caplog: pytest.LogCaptureFixture
) -> None:
    assert web.web is not None

    async def broken(*args: object) -> None:
        raise RuntimeError("secret internals at 0xdeadbeef")

    web.web.page.client.start = broken  # type: ignore[method-assign,assignment]
    await visitor.open()
    await visitor.post("/number", {"number": PORTED})
    answer = await visitor.post("/code", {"name": "x", "id_number": "1" * 18})
    assert answer.status_code == 500
    assert error_of(answer) == "Something went wrong on our side. Please try again later."
    for leak in ("Traceback", "RuntimeError", "secret internals", "0xdeadbeef"):
        assert leak not in answer.text
    assert "secret internals" in caplog.text  # logged for the operator


async def test_a_crowd_is_turned_away_with_retry_after_while_admitted_requests_finish(
    running: Running,
) -> None:
    limits = dataclasses.replace(
        running.carriers["cmcc"].adapter.config.limits,
        holder_web_concurrency=1,
        holder_web_queue=0,
        holder_web_retry_after=7,
    )
    handle = await start_web_carrier(running, limits)
    base = f"http://127.0.0.1:{handle.web_port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            visitor = Visitor(c)
            await verify(visitor, handle)
            running.gateway.hold = asyncio.Event()
            slow = asyncio.create_task(visitor.post("/query"))
            async with asyncio.timeout(10):
                await running.gateway.held.get()  # the one slot is taken
            for _ in range(3):
                async with httpx.AsyncClient(base_url=base, timeout=10) as other:
                    busy = await other.get("/", headers={"accept-language": "zh-CN"})
                assert busy.status_code == 503
                assert busy.headers["retry-after"] == "7"
                assert "请在7秒后再试" in busy.text
                assert busy.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            running.gateway.hold.set()
            assert (await slow).status_code == 200
            assert (await c.get("/")).status_code == 200  # room again
    finally:
        running.gateway.hold = None
        await handle.stop(0)


@pytest.mark.parametrize(
    ("code", "details"),
    [
        # The gateway at its cap (numfed.rpc.call_cap): gRPC refuses before any handler.
        (grpc.StatusCode.RESOURCE_EXHAUSTED, SERVER_CAP_DETAILS),
        # A call the overloaded gateway dropped on the way (launch day's 502s).
        (grpc.StatusCode.CANCELLED, "Received RST_STREAM with error code 8"),
    ],
)
async def test_an_overloaded_gateway_is_a_503_with_retry_after_never_a_502(
    running: Running,
    web: CarrierHandle,
    visitor: Visitor,
    code: grpc.StatusCode,
    details: str,
) -> None:
    await verify(visitor, web)
    running.gateway.bare = (code, details)
    try:
        answer = await visitor.post("/query")
    finally:
        running.gateway.bare = None
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "60"  # it said no delay: the page's default wait
    assert "try again in 60 s" in error_of(answer)
    assert len(running.gateway.of("QueryBindings")) == 1
    answer = await visitor.post("/query")  # the gateway has room again: the same page works
    assert answer.status_code == 200, error_of(answer)


async def test_the_holder_channel_at_its_cap_is_a_503_on_the_page(running: Running) -> None:
    """The holder channel (the page's way into the carrier) has the gateway's cap too: past its
    classes' bounds plus the headroom, gRPC refuses, and the page says 503 with Retry-After."""
    limits = dataclasses.replace(
        running.carriers["cmcc"].adapter.config.limits,
        max_concurrent_holder_calls=1,
        max_queued_holder_calls=4,
        max_holder_watches=1,
        admission_queue_wait=30.0,
        server_call_headroom=1,
    )  # cap: 1 + 4 + 1 + 0 + 1 = 7
    handle = await start_web_carrier(running, limits)
    base = f"http://127.0.0.1:{handle.web_port}"
    try:
        async with (
            httpx.AsyncClient(base_url=base, timeout=30) as a,
            httpx.AsyncClient(base_url=base, timeout=30) as b,
            httpx.AsyncClient(base_url=base, timeout=30) as c,
            grpc.aio.insecure_channel(f"127.0.0.1:{handle.holder_port}") as ch,
        ):
            visitors = [Visitor(a), Visitor(b), Visitor(c)]
            for v in visitors:
                await verify(v, handle)
            running.gateway.hold = asyncio.Event()
            held = asyncio.create_task(visitors[0].post("/query"))  # running, at the gateway
            async with asyncio.timeout(10):
                await running.gateway.held.get()
            queued = asyncio.create_task(visitors[1].post("/query"))  # waits for the slot
            async with asyncio.timeout(10):
                while total("numfed_admission_queue_depth", rpc_class="holder") < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            # Health Watches on the holder channel until gRPC refuses one: the cap is reached.
            health = health_pb2_grpc.HealthStub(ch)
            watches: list[Any] = []
            refused: grpc.aio.AioRpcError | None = None
            for _ in range(10):
                call = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
                try:
                    await call.read()
                except grpc.aio.AioRpcError as exc:
                    refused = exc
                    break
                watches.append(call)
            assert refused is not None and server_cap_refusal(refused), refused
            assert len(watches) <= 5
            answer = await visitors[2].post("/query")
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "60"
            assert error_of(answer).startswith("Many people are using this service")
            # What was admitted finishes.
            running.gateway.hold.set()
            assert (await held).status_code == 200
            assert (await queued).status_code == 200
            for call in watches:
                call.cancel()
    finally:
        running.gateway.hold = None
        await handle.stop(0)


async def test_a_crowd_on_the_holder_page_shows_in_the_carriers_metrics(
    running: Running,
) -> None:
    """The operator sees a crowd turned away: the page's admission classes and every request's
    status are in the carrier process's metrics, as the gRPC edges' are."""
    limits = dataclasses.replace(
        running.carriers["cmcc"].adapter.config.limits,
        holder_web_concurrency=1,
        holder_web_queue=0,
    )
    handle = await start_web_carrier(running, limits)
    base = f"http://127.0.0.1:{handle.web_port}"
    refused = "numfed_admission_rejections_total"
    shed = "http_server_request_duration_seconds_count"
    before = total(refused, rpc_class="page", reason="OVERLOADED")
    shed_before = total(shed, http_route="/", http_response_status_code="503")
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            visitor = Visitor(c)
            await verify(visitor, handle)
            running.gateway.hold = asyncio.Event()
            slow = asyncio.create_task(visitor.post("/query"))
            async with asyncio.timeout(10):
                await running.gateway.held.get()  # the one slot is taken
            assert total("numfed_admission_calls_active", rpc_class="page") >= 1
            assert total("numfed_admission_limit", rpc_class="page", kind="concurrency") >= 1
            for _ in range(3):
                async with httpx.AsyncClient(base_url=base, timeout=10) as other:
                    assert (await other.get("/")).status_code == 503
            running.gateway.hold.set()
            assert (await slow).status_code == 200
    finally:
        running.gateway.hold = None
        await handle.stop(0)
    assert total(refused, rpc_class="page", reason="OVERLOADED") - before == 3
    assert total(shed, http_route="/", http_response_status_code="503") - shed_before == 3
    assert total(shed, http_route="/{action:path}", http_response_status_code="200") >= 1


async def test_closing_the_page_signs_the_holder_out(
    running: Running, web: CarrierHandle, visitor: Visitor
) -> None:
    await verify(visitor, web)
    assert web.web is not None and len(web.web.page.store) == 1
    beacon = await visitor.client.post("/signout", data={"page_token": visitor.token})
    assert beacon.status_code == 204
    assert len(web.web.page.store) == 0  # forgotten at once
    answer = await visitor.post("/query")
    assert answer.status_code == 401
    assert error_of(answer).startswith("You have been signed out")
    assert running.gateway.calls == []


async def test_the_session_belongs_to_the_page_not_the_browser(
    running: Running, web: CarrierHandle, visitor: Visitor
) -> None:
    """A new page in the same browser (a reload, another tab) starts signed out."""
    await verify(visitor, web)
    await visitor.open()  # a new page: a new page token
    answer = await visitor.post("/query")
    assert answer.status_code == 401
    assert running.gateway.calls == []


async def test_a_form_too_large_is_refused(web: CarrierHandle, visitor: Visitor) -> None:
    await visitor.open()
    answer = await visitor.post("/number", {"number": "1" * 20_000})
    assert answer.status_code == 400


async def test_the_page_listens_on_loopback_only(running: Running) -> None:
    from carrier_adapters.base import start_carrier
    from numfed.errors import InvalidArgument
    from tests.carrier_adapters.conftest import on_port_zero

    config = on_port_zero(running.layout, "cmcc", running.gateway_server.port)
    for listen in ("0.0.0.0:0", "10.0.0.1:8080", "example.com:80"):
        with pytest.raises(InvalidArgument) as e:
            await start_carrier(dataclasses.replace(config, holder_web_listen=listen))
        assert e.value.reason == "BAD_CONFIG" and "holder_web_listen" in e.value.message
