"""
e-POP: send PMSI files to e-PMSI from workstations without Internet access.

A relay runs on a machine that reaches e-PMSI; workstations send through it
with the e-POP protocol (``docs/protocol.md``).  The public API:

- L{make_relay_service} and L{RelaySettings}: the relay as a Twisted service.
- L{send_file} and L{test_connection}: the workstation side (L{epop.workstation}).

Each name is imported when first used, so that a workstation never loads
the relay's code, nor the relay the workstation's (``docs/architecture.md``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from epop._version import __version__

if TYPE_CHECKING:
    from epop.errors import RelayCannotStart
    from epop.relay.service import make_relay_service
    from epop.relay.settings import RelaySettings
    from epop.workstation import RelayAddress, send_file, test_connection

__all__ = [
    "__version__",
    "RelayAddress",
    "RelayCannotStart",
    "RelaySettings",
    "make_relay_service",
    "send_file",
    "test_connection",
]

#: The module that holds each public name.
_HOMES = {
    "RelayAddress": "epop.workstation",
    "RelayCannotStart": "epop.errors",
    "RelaySettings": "epop.relay.settings",
    "make_relay_service": "epop.relay.service",
    "send_file": "epop.workstation",
    "test_connection": "epop.workstation",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'epop' has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
