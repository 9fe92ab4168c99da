"""numfed's errors as CAMARA errors: the one table (docs/standards.md shows it).

A refusal keeps its numfed ``reason`` (AIP-193) in the body beside CAMARA's ``status``,
``code`` and ``message``, so a platform that knows numfed's reasons (``RECYCLED_PROBE_BUDGET``,
``SPECIFIED_DATE_BEFORE_HISTORY``, …) can still tell them apart; a refusal with a retry delay
(``google.rpc.RetryInfo`` on gRPC) carries it as ``Retry-After`` (seconds, rounded up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from numfed.errors import NumfedError

__all__ = ["BY_CODE", "BY_REASON", "CamaraError", "camara_error"]


@dataclass(frozen=True)
class CamaraError:
    """What CAMARA calls an error: an HTTP status and one of its codes."""

    status: int
    code: str


BY_REASON: dict[str, CamaraError] = {
    # The number is named neither in the body nor by the credentials (numfed never identifies a
    # number from a platform's credentials: there are no three-legged tokens).
    "MISSING_IDENTIFIER": CamaraError(422, "MISSING_IDENTIFIER"),
    # The numbering plan gives the number to a carrier that is not a member of this gateway.
    "CARRIER_NOT_MEMBER": CamaraError(422, "SERVICE_NOT_APPLICABLE"),
    # The platform's probe budget for the number: a business quota, not a rate.
    "RECYCLED_PROBE_BUDGET": CamaraError(429, "QUOTA_EXCEEDED"),
}
"""Reasons whose CAMARA error is not the one of their code."""

BY_CODE: dict[str, CamaraError] = {
    "INVALID_ARGUMENT": CamaraError(400, "INVALID_ARGUMENT"),
    "OUT_OF_RANGE": CamaraError(400, "OUT_OF_RANGE"),
    "UNAUTHENTICATED": CamaraError(401, "UNAUTHENTICATED"),
    "PERMISSION_DENIED": CamaraError(403, "PERMISSION_DENIED"),
    # UNKNOWN_NUMBER: no carrier of the federation serves it ("used by a different network
    # operator" in CAMARA's words); or the serving carrier has no record of it.
    "NOT_FOUND": CamaraError(404, "IDENTIFIER_NOT_FOUND"),
    # RATE_LIMITED (the per-platform rate), OVERLOADED, CALLER_OVERLOADED, ...
    "RESOURCE_EXHAUSTED": CamaraError(429, "TOO_MANY_REQUESTS"),
    "UNAVAILABLE": CamaraError(503, "UNAVAILABLE"),
    "DEADLINE_EXCEEDED": CamaraError(504, "TIMEOUT"),
}
"""numfed's error codes (gRPC status names) as CAMARA errors; anything else is 500 INTERNAL."""

INTERNAL = CamaraError(500, "INTERNAL")


def camara_error(err: NumfedError) -> CamaraError:
    """The CAMARA status and code for a numfed error (the table above)."""
    return BY_REASON.get(err.reason) or BY_CODE.get(err.code) or INTERNAL


def retry_after(err: NumfedError) -> str | None:
    """The ``Retry-After`` value (whole seconds, at least 1) for an error that has a delay."""
    if err.retry_after is None:
        return None
    return str(max(math.ceil(err.retry_after), 1))
