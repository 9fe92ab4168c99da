"""SPIFFE-style peer identities: one spelling per member, everything else refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from numfed.errors import InvalidArgument, Unauthenticated
from numfed.identity import PeerId, Role


@pytest.mark.parametrize(
    ("uri", "role", "member"),
    [
        ("spiffe://numfed/gateway/main", Role.GATEWAY, "main"),
        ("spiffe://numfed/carrier/cmcc", Role.CARRIER, "cmcc"),
        ("spiffe://numfed/platform/weibo", Role.PLATFORM, "weibo"),
        ("spiffe://numfed/platform/a_b-9", Role.PLATFORM, "a_b-9"),
        ("spiffe://numfed/platform/" + "x" * 32, Role.PLATFORM, "x" * 32),
    ],
)
def test_parse_round_trips(uri: str, role: Role, member: str) -> None:
    peer = PeerId.parse(uri)
    assert peer == PeerId(role, member)
    assert peer.uri == uri
    assert str(peer) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "spiffe://numfed/platform",  # one segment
        "spiffe://numfed/platform/weibo/x",  # three segments
        "spiffe://numfed/platform/weibo/",  # trailing slash
        "spiffe://numfed//weibo",
        "spiffe://numfed/platform/",
        "spiffe://other/platform/weibo",  # foreign trust domain
        "spiffe://numfed.evil/platform/weibo",
        "spiffe://numfed:443/platform/weibo",
        "spiffe://user@numfed/platform/weibo",
        "SPIFFE://numfed/platform/weibo",  # one spelling only
        "spiffe://NUMFED/platform/weibo",
        "https://numfed/platform/weibo",
        "spiffe://numfed/Platform/weibo",
        "spiffe://numfed/admin/root",  # unknown role
        "spiffe://numfed/platform/Weibo",
        "spiffe://numfed/platform/wei%62o",
        "spiffe://numfed/platform/weibo?x=1",
        "spiffe://numfed/platform/weibo#x",
        "spiffe://numfed/platform/weibo\n",
        "spiffe://numfed/platform/" + "x" * 33,
        " spiffe://numfed/platform/weibo",
    ],
)
def test_parse_refuses_anything_else(uri: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        PeerId.parse(uri)
    assert info.value.reason == "BAD_PEER_IDENTITY"


@pytest.mark.parametrize("member", ["", "Weibo", "wei bo", "a/b", "x" * 33, "weibo\n"])
def test_constructor_refuses_bad_member_ids(member: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        PeerId(Role.PLATFORM, member)
    assert info.value.reason == "BAD_MEMBER_ID"


def test_identity_module_does_not_import_grpc() -> None:
    import numfed.identity

    source = Path(numfed.identity.__file__).read_text(encoding="utf-8")
    assert not re.search(r"^\s*(import|from)\s+grpc\b", source, re.MULTILINE)
