"""Test support for numfed and its members: whole federations and members in conformance mode.

Also a pytest plugin (registered as the ``pytest11`` entry point ``numfed``, so it loads
wherever numfed is installed; or name it in ``pytest_plugins = ["numfed.testing.plugin"]``):
see :mod:`numfed.testing.plugin` for its fixtures.
"""

from numfed.testing.conformance import start_conformance_carrier, start_conformance_platform
from numfed.testing.federation import (
    Federation,
    FederationProcesses,
    spawn_federation,
    start_federation,
    until_serving,
)

__all__ = [
    "Federation",
    "FederationProcesses",
    "spawn_federation",
    "start_conformance_carrier",
    "start_conformance_platform",
    "start_federation",
    "until_serving",
]
