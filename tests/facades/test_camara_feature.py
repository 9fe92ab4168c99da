"""CAMARA's own test definitions for Number Recycling v0.2.0, run against a real federation.

The scenarios are the vendored ``number-recycling.feature``, unchanged; the step definitions
are numfed's: credentials map onto certificates as :mod:`tests.facades.camara_world` says, and
the numbers and dates onto the demo scenario's histories:

* the user's number: ``recycled_once``, whose current holder's tenure began 2022-07-01T09:00Z
  (17:00 in Shanghai): 2023-01-01 is a day the user held it (``false``), 2020-01-01 a day the
  previous holder did (``true``);
* a number the service does not apply to: one the numbering plan gives to ctcc, once ctcc is no
  member of the gateway.

One scenario cannot apply and is skipped saying why: a three-legged token that identifies the
number (numfed never takes a number from a platform's credentials).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import jsonschema
import pytest
import yaml
from pytest_bdd import given, parsers, scenarios, then, when
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from gateway.facades.camara.openapi import API_DOCUMENT, FEATURE_FILE
from numfed.scenario import demo_scenario
from tests.facades.camara_world import CHECK, World
from tests.integration.members import without_member

# The module's federation is set up before each test's own fixtures (the grpc leak check among
# them): pytest-bdd steps ask for it by name, later than that check would otherwise see.
pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("world")]

WORLD = demo_scenario()
NUMBER = WORLD.showcase["recycled_once"]
USER_SIGNED_UP = "2023-01-01"  # after the current holder's tenure began
PREVIOUS_USER_SIGNED_UP = "2020-01-01"  # in the previous holder's tenure
SHANGHAI = ZoneInfo("Asia/Shanghai")

scenarios(str(FEATURE_FILE))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World.start(
        tmp_path_factory.mktemp("camara"),
        limits={"recycled_rate": 1000.0, "recycled_burst": 1000.0},
    )
    try:
        yield w
    finally:
        w.stop()


@dataclass
class Call:
    """The request a scenario builds, and the answer it got."""

    credentials: str = "valid"
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    raw_body: bytes | None = None
    response: httpx.Response | None = None

    @property
    def answer(self) -> httpx.Response:
        assert self.response is not None, "no request was sent"
        return self.response


@pytest.fixture
def call() -> Call:
    return Call()


def _schema(ref: str) -> jsonschema.protocols.Validator:
    """A validator for a schema of the vendored API document (``/components/schemas/X``)."""
    doc = yaml.safe_load(API_DOCUMENT.read_text(encoding="utf-8"))
    registry: Registry[Any] = Registry().with_resource(
        "urn:number-recycling", Resource.from_contents(doc, default_specification=DRAFT4)
    )
    return jsonschema.Draft4Validator({"$ref": "urn:number-recycling#" + ref}, registry=registry)


# -- Background -------------------------------------------------------------------------------


@given(parsers.parse('an environment at "{root}"'))
def environment(world: World) -> None:
    assert world.base.startswith("https://")


@given(parsers.parse('the resource "{resource}"'))
def resource(resource: str) -> None:
    assert resource == CHECK


@given(parsers.parse('the header "{name}" is set to "{value}"'))
def header(call: Call, name: str, value: str) -> None:
    call.headers[name] = value


@given('the header "Authorization" is set to a valid access token')
@given(
    'the header "Authorization" is set to a valid access which does not identify a single '
    "phone number"
)
def valid_credentials(call: Call) -> None:
    call.credentials = "valid"


@given('the header "x-correlator" complies with the schema at "#/components/schemas/XCorrelator"')
def correlator(call: Call) -> None:
    call.headers["x-correlator"] = str(uuid.uuid4())


@given("the request body is set by default to a request body compliant with the schema")
def default_body(call: Call) -> None:
    call.body = {"phoneNumber": NUMBER, "specifiedDate": USER_SIGNED_UP}


# -- Given: numbers and dates -----------------------------------------------------------------


@given(
    "a valid phone number supported by the service, identified by the access token or provided "
    "in the request body"
)
@given(
    "a valid testing phone number supported by the service, identified by the access token or "
    "provided in the request body"
)
def supported_number(call: Call) -> None:
    call.body["phoneNumber"] = NUMBER


@given(
    'the request body property "$.specifiedDate" is set to a date on which the user signed '
    "contracts with Service Provider"
)
def user_signed_up(call: Call) -> None:
    call.body["specifiedDate"] = USER_SIGNED_UP


@given("the same phone number was cancelled by the User A and is used by User B")
def recycled_number(call: Call) -> None:
    assert len(WORLD.histories[NUMBER].events) > 1  # a previous holder, then the current one
    call.body["phoneNumber"] = NUMBER


@given(
    'the request body property "$.specifiedDate" is set to a date on which the User A signed '
    "contracts with Service Provider"
)
def previous_user_signed_up(call: Call) -> None:
    call.body["specifiedDate"] = PREVIOUS_USER_SIGNED_UP


@given(
    parsers.parse(
        "the request body is set to a valid parameter combination with property "
        '"$.specifiedDate" set to "{value}"'
    )
)
def invalid_date(call: Call, value: str) -> None:
    # The feature names no examples for <invalid_specifiedDate>: one that is not YYYY-MM-DD.
    call.body["specifiedDate"] = "31/10/2024" if value.startswith("<") else value


@given("the request body is not included")
def no_body(call: Call) -> None:
    call.body = None


@given(parsers.parse('the request body is set to "{text}"'))
def literal_body(call: Call, text: str) -> None:
    call.body = None
    call.raw_body = text.encode()


@given('the request body property "$.specifiedDate" is set to a value in the future')
def future_date(call: Call) -> None:
    tomorrow = datetime.now(SHANGHAI).date() + timedelta(days=2)
    call.body["specifiedDate"] = tomorrow.isoformat()


@given(
    "the request body is set to any value which is not compliant with the OAS schema at "
    '"/components/schemas/CreateCheckNumRecycling"'
)
def noncompliant_body(call: Call) -> None:
    body: dict[str, Any] = {"phoneNumber": 8613812345678, "specifiedDate": ["2023-01-01"]}
    assert not _schema("/components/schemas/CreateCheckNumRecycling").is_valid(body)
    call.body = body


@given(
    'the request body property "$.phoneNumber" does not comply with the OAS schema at '
    '"/components/schemas/PhoneNumber"'
)
def noncompliant_number(call: Call) -> None:
    call.body["phoneNumber"] = "8613812345678"
    assert not _schema("/components/schemas/PhoneNumber").is_valid(call.body["phoneNumber"])


@given('the request body property "$.phoneNumber" is not included')
def no_number(call: Call) -> None:
    call.body.pop("phoneNumber", None)


@given("that the service is not available for all phone numbers commercialized by the operator")
def carrier_not_member(world: World) -> None:
    # ctcc stays in the signed numbering plan but is no longer a member of the gateway.
    gw = world.thread.fed.gateway
    config = world.thread.fed.layout.gateway_config
    text = config.read_text()
    if '\nid = "ctcc"\n' in text:
        config.write_text(without_member(text, "carrier", "ctcc"))
        assert gw.watcher is not None
        world.thread.run(gw.watcher.reload_now("test"))


@given(
    "a valid phone number, identified by the token or provided in the request body, for which "
    "the service is not applicable"
)
def number_not_applicable(call: Call) -> None:
    ctcc = WORLD.histories_served_by("ctcc", datetime.now(UTC))[0].number
    call.body["phoneNumber"] = ctcc


# -- Given: credentials -----------------------------------------------------------------------


@given('the header "Authorization" is set to an expired access token')
def expired(call: Call) -> None:
    call.credentials = "revoked"


@given(
    'the header "Authorization" is set to an invalid access token which is invalid for reasons '
    "other than lifetime expiry"
)
def invalid(call: Call) -> None:
    call.credentials = "two identities"


@given('the header "Authorization" is not sent')
def no_credentials(call: Call) -> None:
    call.credentials = "none"


@given('the header "Authorization" is set to an access token without the required scope')
def without_scope(call: Call) -> None:
    call.credentials = "carrier"


@given('the header "Authorization" is set to a valid access token identifying a phone number')
def three_legged(call: Call) -> None:
    pytest.skip(
        "numfed has no three-legged tokens: a platform always names the number "
        "(docs/standards.md, 'What the CAMARA facade does not support')"
    )


# -- When -------------------------------------------------------------------------------------


@when(parsers.parse('the HTTP "{verb}" request is sent'))
@when(parsers.parse('the request "{operation}" is sent'))
def send(world: World, call: Call, verb: str = "POST", operation: str = "") -> None:
    assert verb == "POST" and operation in ("", "checkNumberRecycling")
    content = call.raw_body
    if call.body is not None:
        content = json.dumps(call.body).encode()
    with world.client(call.credentials) as client:
        call.response = client.post(world.base + CHECK, content=content, headers=call.headers)


# -- Then -------------------------------------------------------------------------------------


@then(parsers.re(r'the response status code is "?(?P<status>\d+)"?'))
def status_code(call: Call, status: str) -> None:
    assert call.answer.status_code == int(status), call.answer.text


@then(parsers.parse('the response header "Content-Type" is "{value}"'))
def content_type(call: Call, value: str) -> None:
    assert call.answer.headers["content-type"].split(";")[0] == value


@then('the response header "x-correlator" has same value as the request header "x-correlator"')
def same_correlator(call: Call) -> None:
    assert call.answer.headers["x-correlator"] == call.headers["x-correlator"]


@then(parsers.parse('the response body complies with the OAS schema at "{ref}"'))
def complies(call: Call, ref: str) -> None:
    _schema(ref).validate(call.answer.json())


@then(parsers.parse('the value of response property "$.phoneNumberRecycled" is {value}'))
def recycled_value(call: Call, value: str) -> None:
    assert call.answer.json()["phoneNumberRecycled"] is {"true": True, "false": False}[value]


@then(parsers.parse('the response property "$.code" is "{code}"'))
def error_code(call: Call, code: str) -> None:
    assert call.answer.json()["code"] == code, call.answer.text


@then(parsers.parse('the response property "$.status" is {status:d}'))
def error_status(call: Call, status: int) -> None:
    assert call.answer.json()["status"] == status


@then('the response property "$.message" contains a user friendly text')
def friendly(call: Call) -> None:
    message = call.answer.json()["message"]
    assert isinstance(message, str) and 10 <= len(message) <= 400
    assert "Traceback" not in message and "Error(" not in message


def test_the_vendored_documents_are_the_release() -> None:
    """The feature file is number-recycling v0.2.0's, unchanged (its first line says so)."""
    assert FEATURE_FILE.read_text().startswith(
        "Feature: CAMARA Number Recycling API, v0.2.0 - Operation checkNumberRecycling"
    )
    assert yaml.safe_load(API_DOCUMENT.read_text())["info"]["version"] == "0.2.0"
