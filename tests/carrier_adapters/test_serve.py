"""``numfed carrier serve``: a real process that serves until SIGTERM; config checks at start."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from carrier_adapters import ADAPTERS, start_carrier
from carrier_adapters.base import CARRIER_SERVICE
from numfed import pki
from numfed.config import load_carrier_config
from numfed.errors import FailedPrecondition, InvalidArgument
from numfed.federation import FederationLayout


def _serving(layout: FederationLayout, endpoint: str) -> bool:
    creds = pki.channel_credentials(pki.PkiLayout(layout.pki_dir), pki.GATEWAY)
    with grpc.secure_channel(endpoint, creds) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=CARRIER_SERVICE), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(status.status == health_pb2.HealthCheckResponse.SERVING)


def test_serve_runs_until_sigterm(layout: FederationLayout) -> None:
    config = str(layout.carrier_configs["cucc"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "numfed", "carrier", "serve", "--config", config],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not _serving(layout, layout.carrier_endpoints["cucc"]):
            assert proc.poll() is None, proc.communicate()[0].decode()
            assert time.monotonic() < deadline, "carrier never became SERVING"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0, out.decode()
    assert b"China Unicom" in out


@pytest.mark.parametrize("endpoint", ["0.0.0.0:0", "192.0.2.1:0", "carrier.example:0"])
async def test_holder_channel_must_be_on_loopback(layout: FederationLayout, endpoint: str) -> None:
    config = load_carrier_config(layout.carrier_configs["cmcc"])
    with pytest.raises(InvalidArgument) as e:
        await start_carrier(dataclasses.replace(config, holder_listen=endpoint))
    assert e.value.reason == "BAD_CONFIG"


async def test_each_carrier_has_its_adapter(layout: FederationLayout) -> None:
    assert sorted(ADAPTERS) == ["cmcc", "ctcc", "cucc"]
    assert {a.sms_signature for a in ADAPTERS.values()} == {
        "【中国移动】",
        "【中国联通】",
        "【中国电信】",
    }
    config = load_carrier_config(layout.carrier_configs["cmcc"])
    with pytest.raises(InvalidArgument):
        ADAPTERS["cucc"](config)  # an adapter refuses another carrier's config
    # Any other carrier id gets the generic adapter (tests/carrier_adapters/test_generic.py),
    # which, like every adapter, needs that carrier's own signing key.
    with pytest.raises(FailedPrecondition) as err:
        await start_carrier(dataclasses.replace(config, carrier_id="zzcc"))
    assert err.value.reason == "PKI_FILE_MISSING"
