"""Stream configuration and status, as SSF defines them, for one stream per platform.

Plain rules, no transport and no SQL. The federation decides what SSF leaves to a transmitter:

* Each platform whose events go by SSF (``events = "ssf-push"`` or ``"ssf-poll"`` in the
  gateway's ``[[platform]]`` entry) is one receiver with one stream, whose id is the platform
  id. The stream exists from the moment the platform is a member, so nothing published before
  its receiver first calls is lost: creating another is 409, deleting it 403.
* The delivery method is the config's; a receiver sets its push ``endpoint_url`` (and an
  ``authorization_header``), the events it wants (``events_requested``; absent: every event type
  the gateway supports) and a ``description``.
* Status ``enabled`` or ``paused`` (events held, in order, nothing dropped). ``disabled`` would
  drop events, which numfed never does: 403.
* Every subject is in every stream (``default_subjects`` ``ALL``): a receiver that named the
  numbers it cares about would tell the gateway whose numbers its users have.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.facades.ssf.sets import EVENT_TYPES
from numfed.errors import InvalidArgument, NotFound, PermissionDenied
from numfed.events import EventKind

__all__ = [
    "POLL",
    "PUSH",
    "Stream",
    "method_of",
    "status_update",
    "stream_update",
]

PUSH = "urn:ietf:rfc:8935"
POLL = "urn:ietf:rfc:8936"
MODES = {"ssf-push": PUSH, "ssf-poll": POLL}
SUPPORTED = tuple(EVENT_TYPES.values())
"""Event types the gateway sends, in a fixed order."""
STATUSES = ("enabled", "paused")
MAX_REQUESTED = 32
MAX_URI = 256
MAX_DESCRIPTION = 400
MAX_REASON = 200
MAX_ENDPOINT = 2048
MAX_AUTHORIZATION = 4096
MIN_VERIFICATION_INTERVAL = 10
"""Seconds a receiver waits between two verification requests (429 sooner)."""
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_TRANSMITTER_FIELDS = ("iss", "aud", "events_supported", "events_delivered")


def method_of(events_mode: str) -> str | None:
    """The SSF delivery method of a platform's ``events`` mode; None for gRPC delivery."""
    return MODES.get(events_mode)


@dataclass(frozen=True)
class Stream:
    """One receiver's stream: what the federation fixed and what the receiver set."""

    stream_id: str
    method: str
    status: str = "enabled"
    reason: str | None = None
    events_requested: tuple[str, ...] | None = None
    endpoint_url: str | None = None
    authorization_header: str | None = None
    description: str | None = None
    verification_jti: str | None = None
    verification_state: str | None = None
    verification_us: int | None = None

    @property
    def events_delivered(self) -> tuple[str, ...]:
        """Supported event types the receiver asked for (all, if it named none)."""
        if self.events_requested is None:
            return SUPPORTED
        return tuple(t for t in SUPPORTED if t in self.events_requested)

    def delivers(self, kind: EventKind) -> bool:
        return EVENT_TYPES[kind] in self.events_delivered

    def config(self, *, issuer: str, audience: str, poll_url: str) -> dict[str, Any]:
        """The stream configuration object (SSF, "Stream Configuration")."""
        delivery: dict[str, Any] = {"method": self.method}
        if self.method == POLL:
            delivery["endpoint_url"] = poll_url
        elif self.endpoint_url is not None:
            delivery["endpoint_url"] = self.endpoint_url
        out: dict[str, Any] = {
            "stream_id": self.stream_id,
            "iss": issuer,
            "aud": audience,
            "delivery": delivery,
            "events_supported": list(SUPPORTED),
            "events_delivered": list(self.events_delivered),
            "min_verification_interval": MIN_VERIFICATION_INTERVAL,
        }
        if self.events_requested is not None:
            out["events_requested"] = list(self.events_requested)
        if self.description is not None:
            out["description"] = self.description
        return out

    def status_object(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stream_id": self.stream_id, "status": self.status}
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    def requested_json(self) -> str | None:
        return None if self.events_requested is None else json.dumps(self.events_requested)

    @staticmethod
    def requested_from_json(text: str | None) -> tuple[str, ...] | None:
        return None if text is None else tuple(json.loads(text))


def own_stream(body: Mapping[str, Any], stream: Stream) -> None:
    """The request names the caller's own stream (NOT_FOUND ``STREAM_NOT_FOUND`` otherwise: a
    receiver learns nothing of other streams)."""
    stream_id = body.get("stream_id")
    if not isinstance(stream_id, str):
        raise InvalidArgument("MISSING_STREAM_ID", "stream_id is required")
    if stream_id != stream.stream_id:
        raise NotFound("STREAM_NOT_FOUND", "no stream with this stream_id for this receiver")


def _requested(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument("BAD_EVENTS_REQUESTED", "events_requested is an array of URIs")
    if len(value) > MAX_REQUESTED or any(len(v) > MAX_URI for v in value):
        raise InvalidArgument(
            "BAD_EVENTS_REQUESTED", f"at most {MAX_REQUESTED} URIs of {MAX_URI} characters"
        )
    return tuple(dict.fromkeys(value))


def _endpoint(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_ENDPOINT:
        raise InvalidArgument("BAD_ENDPOINT_URL", "endpoint_url is an https URL")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument("BAD_ENDPOINT_URL", "endpoint_url is not a URL") from exc
    if parts.scheme != "https" or not parts.hostname or parts.fragment or parts.username:
        raise InvalidArgument(
            "BAD_ENDPOINT_URL", "endpoint_url must be https://host[:port]/path (no user, no #)"
        )
    del port
    return value


def _delivery(value: Any, stream: Stream, poll_url: str) -> dict[str, str | None]:
    if not isinstance(value, dict):
        raise InvalidArgument("BAD_DELIVERY", "delivery is an object")
    method = value.get("method", stream.method)
    if method != stream.method:
        raise InvalidArgument(
            "DELIVERY_METHOD_FIXED",
            f"this stream's delivery method is {stream.method}: the federation's config sets it",
            metadata={"method": stream.method},
        )
    if stream.method == POLL:
        if value.get("endpoint_url", poll_url) != poll_url:
            raise InvalidArgument(
                "BAD_ENDPOINT_URL", "a poll stream's endpoint_url is the gateway's"
            )
        return {}
    endpoint = value.get("endpoint_url")
    header = value.get("authorization_header")
    if header is not None and (
        not isinstance(header, str)
        or len(header) > MAX_AUTHORIZATION
        or not _PRINTABLE.fullmatch(header)
    ):
        raise InvalidArgument("BAD_AUTHORIZATION_HEADER", "authorization_header is printable ASCII")
    return {
        "endpoint_url": None if endpoint is None else _endpoint(endpoint),
        "authorization_header": header,
    }


def stream_update(
    stream: Stream,
    body: Any,
    *,
    replace: bool,
    issuer: str,
    audience: str,
    poll_url: str,
) -> Stream:
    """The stream after a PATCH (``replace`` False: what the body names changes) or a PUT
    (``replace`` True: what the body leaves out is deleted) of its configuration.

    Transmitter-supplied members may be present only with the values they have
    (``TRANSMITTER_FIELD_MISMATCH``); ``events_delivered`` is compared before the update.
    """
    if not isinstance(body, dict):
        raise InvalidArgument("MALFORMED_BODY", "the body must be a JSON object")
    own_stream(body, stream)
    current = stream.config(issuer=issuer, audience=audience, poll_url=poll_url)
    for name in _TRANSMITTER_FIELDS:
        if name in body and body[name] != current[name]:
            raise InvalidArgument(
                "TRANSMITTER_FIELD_MISMATCH",
                f"{name} is set by the transmitter and is {current[name]!r}",
                metadata={"field": name},
            )
    changes: dict[str, Any] = {}
    if replace:
        changes = {
            "events_requested": None,
            "description": None,
            "endpoint_url": None,
            "authorization_header": None,
        }
    if "events_requested" in body:
        changes["events_requested"] = _requested(body["events_requested"])
    if "description" in body:
        description = body["description"]
        if not isinstance(description, str):
            raise InvalidArgument("BAD_DESCRIPTION", "description is a string")
        changes["description"] = description[:MAX_DESCRIPTION]
    if "delivery" in body:
        changes.update(_delivery(body["delivery"], stream, poll_url))
    return dataclasses.replace(stream, **changes)


def status_update(stream: Stream, body: Any) -> Stream:
    """The stream after a receiver's status update: ``enabled`` or ``paused`` (BAD_STATUS
    otherwise); ``disabled`` is PERMISSION_DENIED ``STREAM_DISABLE_NOT_ALLOWED``."""
    if not isinstance(body, dict):
        raise InvalidArgument("MALFORMED_BODY", "the body must be a JSON object")
    own_stream(body, stream)
    status = body.get("status")
    if status == "disabled":
        raise PermissionDenied(
            "STREAM_DISABLE_NOT_ALLOWED",
            "a disabled stream drops events, and numfed drops none: pause it instead",
        )
    if status not in STATUSES:
        raise InvalidArgument("BAD_STATUS", 'status is "enabled" or "paused"')
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidArgument("BAD_REASON", "reason is a string")
    return dataclasses.replace(
        stream, status=status, reason=None if reason is None else reason[:MAX_REASON]
    )
