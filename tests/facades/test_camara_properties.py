"""Property tests of the CAMARA facade against the vendored OpenAPI document (schemathesis).

Requests are generated from ``number-recycling.yaml``, valid and invalid, and sent over HTTPS
with a member platform's certificate to a real federation. Every answer must be no 5xx, a
documented status with the documented content type and headers, and a body valid against the
document's schema; a request the schema refuses must be refused (4xx). The rate and the probe
budget are set out of the way: their 429s are the Commonalities' (tested in
test_camara_same_path.py), not this document's.

``make test`` runs a few examples (``NUMFED_SCHEMATHESIS_EXAMPLES``, 25 by default); raise it
for a longer run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.facades.camara.openapi import API_DOCUMENT
from numfed import pki
from tests.facades.camara_world import World

EXAMPLES = int(os.environ.get("NUMFED_SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
"""Not ``positive_data_acceptance``: a request the schema allows may still name a number no
carrier serves (404) or a day out of range (400). Not ``ignored_auth``: who calls is the client
certificate, never the document's ``Authorization`` token."""

schema = schemathesis.openapi.from_path(API_DOCUMENT)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World.start(
        tmp_path_factory.mktemp("camara-props"),
        limits={
            "recycled_rate": 100000.0,
            "recycled_burst": 100000.0,
            "recycled_distinct_dates": 100000,
        },
    )
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.mark.timeout(600)
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_answer_is_as_documented(
    case: schemathesis.Case[Any], world: World, session: requests.Session
) -> None:
    held = world.credentials["valid"]  # a member platform's certificate, the federation CA
    case.call_and_validate(
        base_url=world.base + "/number-recycling/v0.2",
        session=session,
        checks=CHECKS,
        timeout=30,
        verify=str(pki.PkiLayout(world.pki_dir).ca_path),
        cert=(str(held.cert), str(held.key)),
    )
