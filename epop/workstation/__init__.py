"""
The workstation's side: the e-POP client (L{send_file}, L{test_connection})
and the settings the C{epop} command saves on a workstation.

It needs nothing from L{epop.relay}: a workstation speaks to the relay only
through the wire format of L{epop.wire}.  Its modules: L{client}, the
operations; L{protocol} and L{states}, the e-POP client protocol and its
table of states; L{direct}, sending straight to e-PMSI; L{upload} and
L{deadlines}, how an upload is followed and bounded in time; L{outcomes},
what the operations end with; L{settings}, the saved settings;
L{commands} and L{settings_commands}, the C{epop} command's subcommands.
The public API is exported here.
"""

from epop.workstation.client import (
    DEFAULT_RELAY_PORT,
    RelayAddress,
    connect_to_relay,
    send_file,
    test_connection,
)
from epop.workstation.deadlines import DEFAULT_STALL_TIMEOUT, DEFAULT_TIMEOUT
from epop.workstation.outcomes import Reply, TestReport, UploadFailed
from epop.workstation.protocol import RelayClientProtocol

__all__ = [
    "DEFAULT_RELAY_PORT",
    "DEFAULT_STALL_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "RelayAddress",
    "RelayClientProtocol",
    "Reply",
    "TestReport",
    "UploadFailed",
    "connect_to_relay",
    "send_file",
    "test_connection",
]
