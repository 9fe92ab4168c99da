"""Certificate revocation ends access before expiry, on every server, without a restart.

``numfed pki revoke`` puts a certificate on the CA-signed list in the PKI directory; the
gateway, the platforms and the carriers (all reading that directory here) refuse it within
about a second with UNAUTHENTICATED / CERTIFICATE_REVOKED. A list signed by another CA is
ignored, and the list in force stays.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography import x509

from numfed import cli, pki
from numfed.identity import PeerId, Role
from numfed.v1 import carrier_pb2, carrier_pb2_grpc, platform_pb2, platform_pb2_grpc
from tests.helpers.certs import crl_signed_by
from tests.integration.conftest import Federation
from tests.integration.members import eventually, outcome

WEIBO = PeerId(Role.PLATFORM, "weibo")
TAOBAO = PeerId(Role.PLATFORM, "taobao")
REVOKED = "UNAUTHENTICATED CERTIFICATE_REVOKED"


@pytest.fixture
def fed(sqlite_federation: Federation) -> Federation:
    return sqlite_federation


def revoke(fed: Federation, peer: PeerId) -> None:
    assert cli.main(["pki", "revoke", str(fed.layout.pki_dir), "--member", peer.uri]) == 0


async def test_a_revoked_member_is_refused_by_the_gateway(fed: Federation) -> None:
    target, d = fed.layout.gateway_endpoint, fed.layout.pki_dir
    assert await outcome(target, d, WEIBO, "GetTrustBundle") == "OK"
    revoke(fed, WEIBO)

    async def refused() -> bool:
        return await outcome(target, d, WEIBO, "GetTrustBundle") == REVOKED

    await eventually(refused)
    assert await outcome(target, d, TAOBAO, "GetTrustBundle") == "OK"


async def test_a_revoked_gateway_certificate_is_refused_by_platforms_and_carriers(
    fed: Federation,
) -> None:
    d = fed.layout.pki_dir
    platform = f"127.0.0.1:{fed.platforms['weibo'].port}"
    carrier = f"127.0.0.1:{fed.carriers['cmcc'].port}"
    query = platform_pb2.BatchQueryBindingsRequest(items=[platform_pb2.QueryItem(item_id="i1")])
    listing = carrier_pb2.ListServedNumbersRequest(page_size=1)

    async def answers() -> tuple[str, str]:
        return (
            await outcome(
                platform,
                d,
                pki.GATEWAY,
                "BatchQueryBindings",
                query,
                stub=platform_pb2_grpc.PlatformServiceStub,
            ),
            await outcome(
                carrier,
                d,
                pki.GATEWAY,
                "ListServedNumbers",
                listing,
                stub=carrier_pb2_grpc.CarrierServiceStub,
            ),
        )

    assert await answers() == ("OK", "OK")
    revoke(fed, pki.GATEWAY)

    async def refused() -> bool:
        return await answers() == (REVOKED, REVOKED)

    await eventually(refused)


async def test_a_list_signed_by_another_ca_is_ignored(
    fed: Federation, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target, d = fed.layout.gateway_endpoint, fed.layout.pki_dir
    revoke(fed, WEIBO)

    async def weibo_refused() -> bool:
        return await outcome(target, d, WEIBO, "GetTrustBundle") == REVOKED

    await eventually(weibo_refused)
    # Another CA (same name as ours) signs a newer list that spares weibo and revokes taobao.
    other = pki.CertificateAuthority.load(pki.init_pki(tmp_path / "other", carriers=()))
    layout = pki.PkiLayout(d)
    taobao = x509.load_pem_x509_certificate(layout.cert_path(TAOBAO).read_bytes())
    with caplog.at_level(logging.WARNING, logger="numfed.pki"):
        layout.crl_path.write_bytes(crl_signed_by(other, [taobao.serial_number], 99))

        async def ignored() -> bool:
            await outcome(target, d, TAOBAO, "GetTrustBundle")  # the gateway looks on a call
            return "does not verify" in caplog.text

        await eventually(ignored)
    fed.gateway.revocations.refresh()  # whichever server logged first, the gateway has looked
    assert await outcome(target, d, TAOBAO, "GetTrustBundle") == "OK"
    assert await weibo_refused(), "the list in force was dropped"
