"""Which roles may call which gateway RPC (invariant 4: only the roles that need it).

The edge applies it after checking that the caller is a member at all (see
:mod:`gateway.membership`): a peer that is not gets UNKNOWN_MEMBER whatever its role.
"""

from __future__ import annotations

from numfed.identity import Role

__all__ = ["POLICY"]

_SVC = "/numfed.v1.GatewayService/"
_CARRIER = frozenset({Role.CARRIER})
_PLATFORM = frozenset({Role.PLATFORM})
_ANY = frozenset({Role.CARRIER, Role.PLATFORM, Role.GATEWAY})

POLICY = {
    _SVC + "GetTrustBundle": _ANY,
    _SVC + "QueryBindings": _CARRIER,
    _SVC + "ReleaseBindings": _CARRIER,
    _SVC + "GetOperation": _CARRIER,
    _SVC + "WatchOperation": _CARRIER,
    _SVC + "CheckRecycled": _PLATFORM,
    _SVC + "PublishEvents": _CARRIER,
    _SVC + "PullEvents": _PLATFORM,
}
