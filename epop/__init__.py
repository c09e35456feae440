"""
e-POP: send PMSI files to e-PMSI from workstations without Internet access.

A relay runs on a machine that reaches e-PMSI; workstations send through it
with the e-POP protocol (``docs/protocol.md``).  The public API:

- L{make_relay_service} and L{RelaySettings}: the relay as a Twisted service.
- L{send_file} and L{test_connection}: the workstation side (L{epop.workstation}).
"""

from epop._version import __version__
from epop.errors import RelayCannotStart
from epop.workstation import RelayAddress, send_file, test_connection
from epop.relay.service import RelaySettings, make_relay_service

__all__ = [
    "__version__",
    "RelayAddress",
    "RelayCannotStart",
    "RelaySettings",
    "make_relay_service",
    "send_file",
    "test_connection",
]
