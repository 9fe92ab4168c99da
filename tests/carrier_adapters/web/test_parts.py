"""The page's parts on their own: the sentence table, page tokens, page states, statuses."""

from __future__ import annotations

import re
import string

import grpc
import pytest
from google.rpc import status_pb2

from carrier_adapters import sentences
from carrier_adapters.web import i18n
from carrier_adapters.web.app import http_status, typed_number
from carrier_adapters.web.guard import PageTokens, check_origin
from carrier_adapters.web.state import PageStore
from numfed.errors import (
    InvalidArgument,
    NumfedError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from numfed.rpc import SERVER_CAP_DETAILS, error_from_status

NAMES = {"carrier_zh": "中国移动", "carrier_en": "China Mobile"}


def test_every_sentence_is_said_in_both_languages_with_nothing_left_to_fill() -> None:
    tables = [sentences.ERRORS, sentences.BY_CODE, {"": sentences.GENERIC}, i18n.TEXT]
    for table in tables:
        for key, s in table.items():
            for lang in sentences.LANGUAGES:
                fields = {f for _, f, _, _ in string.Formatter().parse(s.say_raw(lang)) if f}
                text = s.say(lang, **{f: "1" for f in fields})
                assert text and "{" not in text, key
            assert re.search(r"[\u4e00-\u9fff]", s.zh) or key in (
                "other_language",
                "other_language_name",
            ), key
    assert set(sentences.ERRORS) >= {
        "WRONG_CODE",
        "TOO_MANY_CODES",
        "NUMBER_NOT_SERVED",
        "HOLDER_NOT_VERIFIED",
        "NO_SESSION",
    }


def test_refusals_read_as_sentences() -> None:
    too_many = ResourceExhausted("TOO_MANY_CODES", "x", retry_after=600)
    assert sentences.explain(too_many, "en", **NAMES) == (
        "Too many codes were asked for this number. Please try again in 10 minutes."
    )
    assert (
        sentences.explain(too_many, "zh", **NAMES)
        == "这个号码申请验证码的次数太多了。请在10分钟后再试。"
    )
    wrong = PermissionDenied("WRONG_CODE", "x", metadata={"attempts_left": "2"})
    assert (
        sentences.explain(wrong, "en", **NAMES) == "That code is wrong. You can try 2 more time(s)."
    )
    last = PermissionDenied("WRONG_CODE", "x", metadata={"attempts_left": "0"})
    assert "ask for a new code" in sentences.explain(last, "en", **NAMES)
    unknown = NumfedError("SOMETHING_NEW", "internal detail")
    assert sentences.explain(unknown, "en", **NAMES) == sentences.GENERIC.en
    gateway_down = Unavailable("UNAVAILABLE", "connection refused", retry_after=30)
    said = sentences.explain(gateway_down, "en", **NAMES)
    assert "try again in 30 s" in said and "refused" not in said
    assert sentences.wait_text(59.2, "en") == "60 s" and sentences.wait_text(61, "zh") == "61秒"
    assert sentences.wait_text(3600, "en") == "60 minutes"


def test_http_statuses() -> None:
    assert http_status(InvalidArgument("MALFORMED_NUMBER", "x")) == (400, None)
    assert http_status(Unauthenticated("NO_SESSION", "x")) == (401, None)
    assert http_status(ResourceExhausted("TOO_MANY_CODES", "x", retry_after=12.2)) == (429, 13)
    assert http_status(ResourceExhausted("OVERLOADED", "x", retry_after=0.5)) == (503, 1)
    assert http_status(Unavailable("UNAVAILABLE", "x")) == (503, 60)
    assert http_status(NumfedError("X", "relayed without a known code")) == (502, None)


def test_grpcs_own_refusals_read_as_busy_on_the_page_and_in_the_cli() -> None:
    """What reaches a front end with no ErrorInfo at all: gRPC's refusal at a server's cap, and
    a call the overloaded server dropped. Both say "busy, come back" (the page's 503 with
    Retry-After, the words ``numfed holder`` prints), never "too many tries" or a 502."""

    def bare(code: grpc.StatusCode, details: str) -> NumfedError:
        return error_from_status(status_pb2.Status(code=code.value[0], message=details))

    capped = bare(grpc.StatusCode.RESOURCE_EXHAUSTED, SERVER_CAP_DETAILS)
    dropped = bare(grpc.StatusCode.CANCELLED, "Received RST_STREAM with error code 8")
    assert (capped.code, capped.reason) == ("RESOURCE_EXHAUSTED", "SERVER_OVERLOADED")
    assert (dropped.code, dropped.reason) == ("CANCELLED", "CANCELLED")
    assert http_status(capped) == (503, 60)
    assert http_status(dropped) == (503, 60)
    assert sentences.explain(capped, "en", **NAMES).startswith("Many people are using this")
    assert sentences.explain(dropped, "en", **NAMES).startswith("The service is busy")
    # A client's own RESOURCE_EXHAUSTED (a message too large, say) is not the server's cap.
    large = bare(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max")
    assert large.reason == "RESOURCE_EXHAUSTED" and http_status(large)[0] == 429


def test_numbers_as_people_type_them() -> None:
    assert typed_number("138 1234 5678") == "+8613812345678"
    assert typed_number(" +86 138-1234-5678 ") == "+8613812345678"
    # Syntax only (which numbers exist is the carriers' word, docs/authority.md): too long, not
    # digits, not ASCII digits, nothing.
    for bad in ("138123456789012345", "abc", "+86 １３８１２３４５６７８", ""):
        with pytest.raises(InvalidArgument):
            typed_number(bad)


def test_page_tokens_belong_to_one_browser() -> None:
    tokens = PageTokens()
    token = tokens.issue("browser-a")
    key = tokens.check("browser-a", token)
    assert key.startswith("browser-a.")
    assert tokens.check("browser-a", tokens.issue("browser-a")) != key  # each page its own
    for browser, bad in [
        ("browser-b", token),
        ("browser-a", token[:-2] + "AA"),
        ("browser-a", ""),
        (None, token),
        ("browser-a", "x" * 100),
        ("browser-a", "not.base64!"),
    ]:
        with pytest.raises(PermissionDenied):
            tokens.check(browser, bad)
    with pytest.raises(PermissionDenied):
        PageTokens().check("browser-a", token)  # another process's key


def test_origin_check() -> None:
    check_origin({}, "http://127.0.0.1:8080")
    check_origin(
        {"origin": "http://127.0.0.1:8080", "sec-fetch-site": "same-origin"},
        "http://127.0.0.1:8080",
    )
    for headers in (
        {"origin": "http://evil.example"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
    ):
        with pytest.raises(PermissionDenied):
            check_origin(headers, "http://127.0.0.1:8080")


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_page_states_are_bounded_and_expire() -> None:
    clock = Clock()
    store = PageStore(ttl=60, limit=2, clock=clock)
    a = store.open("a", "zh")
    a.session_token = "secret"
    store.open("b", "en")
    with pytest.raises(ResourceExhausted) as e:
        store.open("c", "zh")
    assert e.value.reason == "BUSY" and e.value.retry_after == 60
    clock.t = 30
    assert store.get("a") is a  # used: kept live
    clock.t = 61
    assert store.get("b") is None  # idle past the TTL: gone
    assert store.open("c", "zh").session_token == ""
    clock.t = 91
    assert store.get("a") is None and len(store) == 1
    store.close("c")
    assert len(store) == 0
    a.sign_out()
    assert a.session_token == "" and a.lang == "zh"


def test_the_page_answers_without_waiting_for_delayed_acks() -> None:
    # Headers and body leave in two writes; with Nagle's algorithm on, each page waited 40 ms
    # for the browser's delayed ACK (60 ms a page on loopback, 5 ms without).
    import socket

    from carrier_adapters.web.server import _bind

    sock = _bind("127.0.0.1:0")
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        sock.close()
