"""numfed's exceptions: one root, one class per gRPC status category.

Domain code raises these and never imports grpc; the transport edge (an interceptor) maps
``code`` to a gRPC status and ``reason``/``metadata`` to one ``google.rpc.ErrorInfo``.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ERROR_DOMAIN",
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "NumfedError",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]

ERROR_DOMAIN = "numfed.dev"


class NumfedError(Exception):
    """Root of every error numfed raises on purpose.

    ``reason`` is an UPPER_SNAKE constant (AIP-193) that clients may branch on; the message is
    for people. ``code`` names the gRPC status code the error maps to.
    """

    code = "INTERNAL"

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after: float | None = retry_after
        """Seconds after which a retry may succeed; sent as google.rpc.RetryInfo."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r})"


class InvalidArgument(NumfedError):
    """The input is malformed, whatever the system's state."""

    code = "INVALID_ARGUMENT"


class Unauthenticated(NumfedError):
    """A signature, certificate or key does not verify (or is expired or revoked)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(NumfedError):
    """The caller is who it says, but may not do this."""

    code = "PERMISSION_DENIED"


class FailedPrecondition(NumfedError):
    """The system is not in a state that allows this."""

    code = "FAILED_PRECONDITION"


class NotFound(NumfedError):
    """The named thing does not exist (or is not the caller's to see)."""

    code = "NOT_FOUND"


class AlreadyExists(NumfedError):
    """The named thing exists already with a different body."""

    code = "ALREADY_EXISTS"


class OutOfRange(NumfedError):
    """A value is valid in form but outside what can be answered."""

    code = "OUT_OF_RANGE"


class ResourceExhausted(NumfedError):
    """Overloaded or rate-limited; retry later."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(NumfedError):
    """The caller's time ran out."""

    code = "DEADLINE_EXCEEDED"


class Unavailable(NumfedError):
    """A peer could not be reached; retrying may help."""

    code = "UNAVAILABLE"
