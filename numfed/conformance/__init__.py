"""The conformance kit: proves that a platform or carrier keeps the federation's rules.

``numfed conformance platform`` plays the gateway and the carriers against a platform;
``numfed conformance carrier`` plays the gateway against a carrier adapter. Each runs named
checks (:mod:`numfed.conformance.platform`, :mod:`numfed.conformance.carrier`) and reports a
table (compact lines when its output is not a terminal), optionally JUnit XML and JSON files,
and exit code 0 only when every check passes. Each check names the rules of ``docs/spec/`` it
tests (:mod:`numfed.conformance.spec`). Test data reaches the member through its test-only
conformance service (``protos/numfed/v1/conformance.proto``).
"""

from numfed.conformance.carrier import CARRIER_SUITE, CarrierTarget, run_carrier_kit
from numfed.conformance.platform import PLATFORM_SUITE, PlatformTarget, run_platform_kit
from numfed.conformance.report import (
    Check,
    Report,
    Result,
    Status,
    Xfails,
    render,
    render_compact,
    write_json,
    write_junit,
)

__all__ = [
    "CARRIER_SUITE",
    "PLATFORM_SUITE",
    "CarrierTarget",
    "Check",
    "PlatformTarget",
    "Report",
    "Result",
    "Status",
    "Xfails",
    "render",
    "render_compact",
    "run_carrier_kit",
    "run_platform_kit",
    "write_json",
    "write_junit",
]
