"""Who a peer is: a role and a member id, written as a SPIFFE-style URI.

Every gateway, carrier and platform is identified by exactly one URI SAN in its mTLS
certificate, ``spiffe://numfed/<role>/<id>``. Parsing is strict (no percent-encoding, query,
fragment, port, user info, upper case or extra path segments) so that one identity has exactly
one spelling and authorization can compare identities by equality.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from numfed.errors import InvalidArgument, Unauthenticated

__all__ = ["TRUST_DOMAIN", "PeerId", "Role"]

TRUST_DOMAIN = "numfed"
_PREFIX = f"spiffe://{TRUST_DOMAIN}/"
_MEMBER_ID = re.compile(r"[a-z0-9_-]{1,32}")
_MAX_URI = len(_PREFIX) + len("platform/") + 32


class Role(enum.Enum):
    """What a peer is in the federation; each RPC is allowed for some roles only."""

    GATEWAY = "gateway"
    CARRIER = "carrier"
    PLATFORM = "platform"


@dataclass(frozen=True, slots=True)
class PeerId:
    """A federation member's identity, e.g. ``PeerId(Role.PLATFORM, "weibo")``.

    Building one with a malformed id raises ``InvalidArgument`` (a configuration error);
    :meth:`parse` raises ``Unauthenticated`` (a peer presented a bad identity).
    """

    role: Role
    id: str

    def __post_init__(self) -> None:
        if not isinstance(self.role, Role):
            raise InvalidArgument("BAD_MEMBER_ID", f"role must be a Role, not {self.role!r}")
        if not isinstance(self.id, str) or not _MEMBER_ID.fullmatch(self.id):
            raise InvalidArgument(
                "BAD_MEMBER_ID", f"member id {self.id!r} is not 1-32 of [a-z0-9_-]"
            )

    @classmethod
    def parse(cls, uri: str) -> PeerId:
        """Parse ``spiffe://numfed/<role>/<id>``; anything else raises ``Unauthenticated``."""
        if not isinstance(uri, str) or len(uri) > _MAX_URI or not uri.startswith(_PREFIX):
            raise _bad(uri, "is not a spiffe://numfed/ URI")
        segments = uri[len(_PREFIX) :].split("/")
        if len(segments) != 2:
            raise _bad(uri, "must have exactly two path segments, <role>/<id>")
        role_name, member_id = segments
        try:
            role = Role(role_name)
        except ValueError:
            raise _bad(uri, f"has unknown role {role_name!r}") from None
        if not _MEMBER_ID.fullmatch(member_id):
            raise _bad(uri, "has a member id that is not 1-32 of [a-z0-9_-]")
        return cls(role, member_id)

    @property
    def uri(self) -> str:
        return f"{_PREFIX}{self.role.value}/{self.id}"

    def __str__(self) -> str:
        return self.uri


def _bad(uri: object, why: str) -> Unauthenticated:
    shown = repr(uri)[:80]
    return Unauthenticated("BAD_PEER_IDENTITY", f"peer identity {shown} {why}")
