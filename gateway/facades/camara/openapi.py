"""CAMARA's own OpenAPI documents, vendored (``vendor/``), and the response check made of them.

Every response the facade sends is checked first against the response the API document gives
for its status (``number-recycling.yaml``: 200, 400, 401, 403, 404, 422), or, for the statuses
it leaves to the Commonalities release it is based on, against ``CAMARA_common.yaml`` (429,
500, 503, 504): the body's JSON schema and the ``x-correlator`` header's. The schemas are
OpenAPI 3.0 schema objects, checked as JSON Schema draft 4 (which they are a subset of) with
their local ``$ref`` resolved; ``format`` is an annotation, as in JSON Schema.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator

__all__ = [
    "API_DOCUMENT",
    "COMMON_DOCUMENT",
    "CORRELATOR",
    "FEATURE_FILE",
    "ResponseCheck",
    "response_check",
]

VENDOR = Path(__file__).parent / "vendor"
API_DOCUMENT = VENDOR / "number-recycling.yaml"
COMMON_DOCUMENT = VENDOR / "commonalities" / "CAMARA_common.yaml"
FEATURE_FILE = VENDOR / "number-recycling.feature"
CHECK_PATH = "/check"
JSON = "application/json"


_PLACEHOLDER = re.compile(r"\{ \{ ([A-Z_]+) \} \}")
"""``{ { SPECIFIC_CODE } }``: CAMARA_common.yaml is a template for API documents, and its
examples hold placeholders that are not YAML; they are read as the strings they stand for."""


def _load(path: Path) -> dict[str, Any]:
    text = _PLACEHOLDER.sub(r'"{{\1}}"', path.read_text(encoding="utf-8"))
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def _pointer(doc: Mapping[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"only local references are used here, not {ref!r}")
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _inline(doc: Mapping[str, Any], node: Any) -> Any:
    """``node`` with every local ``$ref`` replaced by what it points to (no cycles here)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(doc, _pointer(doc, node["$ref"]))
        return {k: _inline(doc, v) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(doc, v) for v in node]
    return node


@dataclass(frozen=True)
class ResponseCheck:
    """The documented responses of ``POST /check``, by status."""

    bodies: Mapping[int, Draft4Validator]
    correlator: re.Pattern[str]

    def problems(self, status: int, body: Any, headers: Mapping[str, str]) -> list[str]:
        """What is wrong with a response, by the documents (empty: nothing)."""
        validator = self.bodies.get(status)
        if validator is None:
            return [f"status {status} is documented neither by the API nor the Commonalities"]
        found = [
            f"body: {e.message} at {'/'.join(map(str, e.absolute_path)) or '(root)'}"
            for e in validator.iter_errors(body)
        ]
        correlator = headers.get("x-correlator")
        if correlator is not None and not self.correlator.fullmatch(correlator):
            found.append("x-correlator does not match the XCorrelator schema")
        return found


def _correlator_pattern(api: Mapping[str, Any]) -> re.Pattern[str]:
    pattern = str(api["components"]["schemas"]["XCorrelator"]["pattern"])
    # An ECMA regex anchored with ^...$ (the whole value), taken as a full match.
    return re.compile(pattern.removeprefix("^").removesuffix("$"))


CORRELATOR = _correlator_pattern(_load(API_DOCUMENT))
"""The XCorrelator schema's pattern (the API document's), matched whole."""


@functools.cache
def response_check() -> ResponseCheck:
    """The response check, made once from the vendored documents."""
    api, common = _load(API_DOCUMENT), _load(COMMON_DOCUMENT)
    operation = api["paths"][CHECK_PATH]["post"]
    bodies: dict[int, Draft4Validator] = {}
    for status, response in operation["responses"].items():
        content = _inline(api, response)["content"][JSON]
        bodies[int(status)] = Draft4Validator(content["schema"])
    for status in (429, 500, 503, 504):
        response = common["components"]["responses"][f"Generic{status}"]
        bodies[status] = Draft4Validator(_inline(common, response)["content"][JSON]["schema"])
    for validator in bodies.values():
        Draft4Validator.check_schema(validator.schema)
    return ResponseCheck(bodies, _correlator_pattern(api))
