"""
C{epop sandbox}: the e-PMSI stand-in run from the command line, for a demo
or a manual test.

Only its options live here; the sandbox itself (L{epop.sandbox.service}) is
imported when the command runs, so that no other command pays for it.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import CannotListenError
from twisted.python import usage

from epop.command import Command, CommandOptions
from epop.errors import EpopError
from epop.messages import Text, reason_of, system_reason
from epop.sandbox.retention import DEFAULT_KEEP, parse_keep

__all__ = ["SandboxOptions", "sandbox"]


class SandboxOptions(CommandOptions):
    synopsis = "[--port PORT] [--interface ADDRESS] [--directory PATH] [--keep N|SIZE|all] [--reject PATH=STATUS]"
    longdesc = (
        "Run the e-PMSI sandbox: a local HTTPS server that stands in for e-PMSI "
        "and answers each upload with a JSON receipt."
    )
    optParameters = [
        ["port", "p", 8443, "TCP port to listen on (0: any free port)."],
        ["interface", None, "127.0.0.1", "Address to listen on."],
        ["directory", "d", "epop-sandbox", "Folder for the sandbox's certificates and uploads."],
        ["keep", None, DEFAULT_KEEP, "Uploads kept, the oldest deleted first: a number (20), a total size (500M, 2G) or 'all'."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["reject"] = {}

    def opt_reject(self, value: str) -> None:
        """Refuse uploads to PATH with an HTTP STATUS (400 to 599), to rehearse a refusal: PATH=STATUS (repeatable)."""
        path, equals, status = value.rpartition("=")
        if not equals or not path.startswith("/") or not status.isdigit() or not 400 <= int(status) <= 599:
            raise usage.UsageError(
                Text("--reject: expected PATH=STATUS, a path starting with / and a status from 400 to 599 "
                     "(e.g. /syriusUpload.do=403), not {value}", value=repr(value))
            )
        self["reject"][path] = int(status)

    def postOptions(self) -> None:
        text = str(self["port"])
        if not text.isdigit() or int(text) > 65535:
            raise usage.UsageError(Text("--port: expected a port number from 0 to 65535, not {value}", value=repr(text)))
        self["port"] = int(text)
        try:
            self["keep"] = parse_keep(self["keep"])
        except ValueError as e:
            raise usage.UsageError(Text("--keep: {reason}", reason=reason_of(e))) from None


def sandbox(command: Command, options: SandboxOptions) -> Deferred[int]:
    """Serve until the reactor stops (Ctrl-C); the sandbox logs to standard error."""
    from twisted.python.filepath import FilePath

    from epop.sandbox.service import SandboxService

    service = SandboxService(
        command.reactor,
        FilePath(os.path.abspath(options["directory"])),
        port=options["port"],
        interface=options["interface"],
        keep=options["keep"],
        reject=options["reject"],
        language=command.language,
    )
    try:
        service.startService()
    except CannotListenError as e:
        # Most often another sandbox, or the relay's test run, on that port.
        error = e.socketError
        reason = system_reason(error) if isinstance(error, OSError) else Text.literal(str(error))
        return fail(
            EpopError(
                "sandbox-cannot-listen",
                Text(
                    "The sandbox cannot listen on {interface} port {port}: {reason}. "
                    "Choose another --port (0: any free port).",
                    interface=options["interface"],
                    port=options["port"],
                    reason=reason,
                ),
            )
        )
    command.reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    return Deferred()  # runs until the reactor stops
