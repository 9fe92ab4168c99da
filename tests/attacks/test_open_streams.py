"""A member removed from the federation, or whose certificate is revoked, keeps every stream it
opened before.

The edge checks membership and the revocation list when a call starts (numfed/rpc.py,
`_Interceptor._identify`), never again while a server stream runs. docs/architecture.md says
removed members "are refused at once" and a revoked certificate is refused "on every RPC"; a
WatchOperation stream started a moment before goes on being served for as long as its job runs
(a release job may run for `limits.release_job_deadline`, a day by default), each progress change
of the job streamed to a peer the federation has expelled. (Each new RPC on the same open channel
is refused: the certificate is checked per call.)

Impact: low. The stream shows only the caller's own job, but "removed" and "revoked" do not end
a member's access, and the admission slot the stream holds stays taken.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2

from numfed import pki
from numfed.claims import Purpose
from numfed.identity import PeerId, Role
from numfed.scenario import demo_scenario
from numfed.testing import Federation, start_federation
from numfed.v1 import gateway_pb2, gateway_pb2_grpc
from tests.attacks.lying import tenure_claim
from tests.integration.members import eventually, outcome, without_member

WORLD = demo_scenario()
N = WORLD.showcase["recycled_once"]
CMCC = PeerId(Role.CARRIER, "cmcc")


@pytest.fixture
async def fed(tmp_path: Path) -> AsyncIterator[Federation]:
    """weibo fails every call, so a release to it keeps retrying (a job that stays open)."""
    f = await start_federation(
        tmp_path / "fed",
        settle=False,
        platform_knobs={"weibo": {"error_rate": 1.0}},
        limits={"retry_initial_backoff": 0.1, "retry_max_backoff": 0.3},
    )
    try:
        yield f
    finally:
        await f.stop()


def remove_cmcc(fed: Federation) -> None:
    path = fed.layout.gateway_config
    path.write_text(without_member(path.read_text(), "carrier", "cmcc"))


def revoke_cmcc(fed: Federation) -> None:
    pki.revoke(fed.layout.pki_dir, CMCC)


@pytest.mark.parametrize("expel", [remove_cmcc, revoke_cmcc], ids=["removed", "revoked"])
async def test_an_expelled_member_loses_its_open_watch(
    fed: Federation, expel: Callable[[Federation], None]
) -> None:
    x = WORLD.histories[N].tenure_start(datetime.now(UTC))
    request = gateway_pb2.ReleaseBindingsRequest(
        request_id="r-watch",
        claim=tenure_claim(fed, "cmcc", N, Purpose.RELEASE_PRIOR, x),
        platform_ids=["weibo"],
    )
    target, pki_dir = fed.layout.gateway_endpoint, fed.layout.pki_dir
    async with pki.secure_channel(target, pki_dir, CMCC) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        started = await stub.ReleaseBindings(request, timeout=10)
        watch = stub.WatchOperation(
            gateway_pb2.WatchOperationRequest(name=started.name), timeout=60
        )
        first = await watch.read()
        assert isinstance(first, operations_pb2.Operation) and not first.done

        expel(fed)
        get = gateway_pb2.GetOperationRequest(name=started.name)
        # A new call from cmcc is refused now (within the gateway's reload period).
        await eventually(
            lambda: _refused(outcome(target, pki_dir, CMCC, "GetOperation", get)), within=15
        )
        # Messages already on the wire when the refusal took effect may still arrive (the job
        # changes with every retry, and the client had read only the first); then the stream
        # must end with the refusal, within the gateway's recheck period, not run on to the
        # caller's deadline.
        late: list[object] = []
        try:
            async with asyncio.timeout(10):
                while True:
                    op = await watch.read()
                    if op is grpc.aio.EOF:
                        pytest.fail("the stream ended without saying why")
                    late.append(op)
        except grpc.aio.AioRpcError as err:
            assert err.code() in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED,
            ), err
            return
        except TimeoutError:
            watch.cancel()
            pytest.fail(
                f"the expelled member's WatchOperation stream is still open after 10 s "
                f"({len(late)} messages since)"
            )


async def _refused(call: Awaitable[str]) -> bool:
    return await call in (
        "PERMISSION_DENIED UNKNOWN_MEMBER",
        "UNAUTHENTICATED CERTIFICATE_REVOKED",
    )
