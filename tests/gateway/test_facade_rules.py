"""The facades' plain rules: CAMARA's error table and day, SSF's stream updates and SETs."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import jwt
import pytest

from gateway.facades.camara.app import parse_day
from gateway.facades.camara.errors import BY_CODE, camara_error
from gateway.facades.camara.openapi import response_check
from gateway.facades.ssf.sets import EVENT_TYPES, SetSigner, event_set_claims
from gateway.facades.ssf.streams import POLL, PUSH, Stream, status_update, stream_update
from numfed.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NumfedError,
    PermissionDenied,
    ResourceExhausted,
)
from numfed.events import EventKind, LifecycleEvent

ISSUER = "https://gw.example"
AUD = "spiffe://numfed/platform/weibo"
POLL_URL = ISSUER + "/ssf/poll"


@pytest.mark.parametrize(
    ("err", "status", "code"),
    [
        (InvalidArgument("MALFORMED_NUMBER", "m"), 400, "INVALID_ARGUMENT"),
        (InvalidArgument("MISSING_IDENTIFIER", "m"), 422, "MISSING_IDENTIFIER"),
        (NotFound("UNKNOWN_NUMBER", "m"), 404, "IDENTIFIER_NOT_FOUND"),
        (FailedPrecondition("CARRIER_NOT_MEMBER", "m"), 422, "SERVICE_NOT_APPLICABLE"),
        (ResourceExhausted("RECYCLED_PROBE_BUDGET", "m"), 429, "QUOTA_EXCEEDED"),
        (ResourceExhausted("RATE_LIMITED", "m"), 429, "TOO_MANY_REQUESTS"),
        (PermissionDenied("ROLE_NOT_ALLOWED", "m"), 403, "PERMISSION_DENIED"),
        (DeadlineExceeded("NO_TIME_LEFT", "m"), 504, "TIMEOUT"),
        (FailedPrecondition("SOMETHING_ELSE", "m"), 500, "INTERNAL"),
    ],
)
def test_every_error_becomes_a_documented_camara_error(
    err: NumfedError, status: int, code: str
) -> None:
    mapped = camara_error(err)
    assert (mapped.status, mapped.code) == (status, code)
    body = {"status": status, "code": code, "message": err.message, "reason": err.reason}
    assert response_check().problems(status, body, {}) == []


def test_every_code_in_the_table_is_documented() -> None:
    for mapped in BY_CODE.values():
        body = {"status": mapped.status, "code": mapped.code, "message": "m"}
        assert response_check().problems(mapped.status, body, {}) == [], mapped


def test_an_undocumented_answer_is_caught() -> None:
    check = response_check()
    assert check.problems(200, {"phoneNumberRecycled": "yes"}, {})
    assert check.problems(418, {}, {})
    assert check.problems(200, {"phoneNumberRecycled": True}, {"x-correlator": "a b"})


@pytest.mark.parametrize("text", ["2024-2-01", "2024/02/01", "２０２４-02-01", "2024-02-30", ""])
def test_a_day_is_a_full_rfc3339_date(text: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_day(text)
    assert e.value.reason == "BAD_DATE"


def test_parse_day() -> None:
    assert parse_day("2024-02-29") == date(2024, 2, 29)


def push_stream(**kw: object) -> Stream:
    return Stream(stream_id="weibo", method=PUSH, **kw)  # type: ignore[arg-type]


def update(stream: Stream, body: object, *, replace: bool = False) -> Stream:
    return stream_update(
        stream, body, replace=replace, issuer=ISSUER, audience=AUD, poll_url=POLL_URL
    )


def test_patch_changes_what_it_names_and_put_deletes_what_it_leaves_out() -> None:
    s = push_stream(description="d", endpoint_url="https://rx.example/events")
    patched = update(
        s, {"stream_id": "weibo", "events_requested": [EVENT_TYPES[EventKind.REASSIGNED]]}
    )
    assert patched.description == "d" and patched.endpoint_url == "https://rx.example/events"
    assert patched.events_delivered == (EVENT_TYPES[EventKind.REASSIGNED],)
    replaced = update(patched, {"stream_id": "weibo"}, replace=True)
    assert replaced.description is None and replaced.endpoint_url is None
    assert replaced.events_requested is None and len(replaced.events_delivered) == 4


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"stream_id": "taobao"}, "STREAM_NOT_FOUND"),
        ({}, "MISSING_STREAM_ID"),
        ({"stream_id": "weibo", "aud": "someone"}, "TRANSMITTER_FIELD_MISMATCH"),
        ({"stream_id": "weibo", "delivery": {"method": POLL}}, "DELIVERY_METHOD_FIXED"),
        (
            {"stream_id": "weibo", "delivery": {"method": PUSH, "endpoint_url": "http://x/"}},
            "BAD_ENDPOINT_URL",
        ),
        (
            {"stream_id": "weibo", "delivery": {"endpoint_url": "https://u:p@x/"}},
            "BAD_ENDPOINT_URL",
        ),
        (
            {"stream_id": "weibo", "delivery": {"authorization_header": "Bearer x\r\nX: y"}},
            "BAD_AUTHORIZATION_HEADER",
        ),
        ({"stream_id": "weibo", "events_requested": "all"}, "BAD_EVENTS_REQUESTED"),
        ({"stream_id": "weibo", "description": 7}, "BAD_DESCRIPTION"),
        (["stream_id"], "MALFORMED_BODY"),
    ],
)
def test_a_bad_update_changes_nothing(body: object, reason: str) -> None:
    with pytest.raises(NumfedError) as e:
        update(push_stream(), body)
    assert e.value.reason == reason


def test_status_is_enabled_or_paused_never_disabled() -> None:
    s = push_stream()
    assert status_update(s, {"stream_id": "weibo", "status": "paused"}).status == "paused"
    with pytest.raises(PermissionDenied):
        status_update(s, {"stream_id": "weibo", "status": "disabled"})
    with pytest.raises(InvalidArgument):
        status_update(s, {"stream_id": "weibo", "status": "off"})


def test_a_set_is_an_ssf_set_signed_with_the_published_key(tmp_path: Path) -> None:
    signer = SetSigner.load_or_create(tmp_path / "k.pem")
    assert SetSigner.load_or_create(tmp_path / "k.pem").kid == signer.kid  # kept, not remade
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    event = LifecycleEvent.new("+8613812345678", EventKind.REASSIGNED, at, tenure_start=at)
    claims = event_set_claims(
        event=event, envelope=b"\x01\x02", carrier_id="cmcc", issuer=ISSUER, audience=AUD, now=at
    )
    token = signer.sign(claims)
    key = jwt.PyJWK(signer.jwks()["keys"][0])
    assert jwt.get_unverified_header(token)["typ"] == "secevent+jwt"
    decoded = jwt.decode(token, key.key, algorithms=["EdDSA"], audience=AUD, issuer=ISSUER)
    assert decoded["jti"] == event.event_id.hex() and "sub" not in decoded and "exp" not in decoded
    body = decoded["events"][EVENT_TYPES[EventKind.REASSIGNED]]
    assert body["numfed_envelope"] == "AQI" and body["numfed_tenure_start"].endswith(".678901Z")
    assert "d" not in signer.jwks()["keys"][0]  # the public key only


def test_the_facades_answer_without_waiting_for_delayed_acks() -> None:
    # Without TCP_NODELAY every answer waited 40 ms for the client's delayed ACK.
    import socket

    from gateway.facades.server import _bind

    sock = _bind("127.0.0.1:0")
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        sock.close()


def test_a_base_url_with_a_path_puts_the_routes_under_it() -> None:
    # SSF §7.2: the configuration is at the host's root, the issuer's path after it.
    from starlette.routing import Route

    from gateway.facades.camara.app import CamaraFacade
    from gateway.facades.ssf.app import SsfTransmitter

    base = "https://gw.example/numfed"
    ssf = SsfTransmitter.__new__(SsfTransmitter)  # routes need no stores
    camara = CamaraFacade.__new__(CamaraFacade)
    paths = {r.path for r in [*ssf.routes(base), *camara.routes(base)] if isinstance(r, Route)}
    assert paths == {
        "/.well-known/ssf-configuration/numfed",
        "/numfed/ssf/jwks.json",
        "/numfed/ssf/stream",
        "/numfed/ssf/status",
        "/numfed/ssf/verify",
        "/numfed/ssf/poll",
        "/numfed/number-recycling/v0.2/check",
    }
