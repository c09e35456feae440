"""
The C{epop} command: C{send}, C{test} and C{sandbox}.

Exit status: 0 on success; 1 when e-PMSI or the relay answered with an error
or could not be reached; 2 for a usage error.
"""

from __future__ import annotations

import getopt
import os
import sys
from typing import Any, TextIO

from twisted.internet.defer import Deferred, succeed
from twisted.python import usage
from twisted.python.failure import Failure

from epop._version import __version__
from epop.client import DEFAULT_TIMEOUT, Endpoint, Reply, TestReport, send_file, test_connection
from epop.errors import EpopError
from epop.upstream import DEFAULT_EPMSI_URL, EpmsiOrigin

__all__ = ["main"]

DEFAULT_UPLOAD_PATH = "/syriusUpload.do"


class _Options(usage.Options):
    """Our version, and file arguments before or after the options."""

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"epop {__version__}")
        sys.exit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        # usage.Options stops at the first argument, but people type
        # "epop send FILE --relay HOST" as the synopsis shows it.
        argv = sys.argv[1:] if options is None else options
        try:
            found, args = getopt.gnu_getopt(argv, self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from None
        reordered: list[str] = []
        for name, value in found:
            takes_value = (
                name[2:] + "=" in self.longOpt
                if name.startswith("--")
                else name[1] + ":" in self.shortOpt
            )
            reordered.extend([name, value] if takes_value else [name])
        super().parseOptions(reordered + ["--"] + args)


class _TargetOptions(_Options):
    """Where to send: through a relay, or directly to e-PMSI."""

    optFlags = [["direct", None, "Send straight to e-PMSI (this workstation has Internet access)."]]

    def __init__(self) -> None:
        super().__init__()
        self.relay: Endpoint | None = None

    def opt_relay(self, text: str) -> None:
        """The relay's address: HOST or HOST:PORT (port 3358 by default)."""
        try:
            self.relay = Endpoint.parse(text)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def check_target(self) -> None:
        if self["direct"] and self.relay is not None:
            raise usage.UsageError("choose one: --relay HOST[:PORT] or --direct, not both")
        if not self["direct"] and self.relay is None:
            raise usage.UsageError("say where to send: --relay HOST[:PORT], or --direct")
        if self.relay is not None and self["ca-file"]:
            raise usage.UsageError(
                "--ca-file applies to --direct only: through a relay, the relay checks e-PMSI"
            )
        try:
            EpmsiOrigin.from_url(self["epmsi"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be a positive number of seconds")


_TARGET_PARAMETERS = [
    ["epmsi", None, DEFAULT_EPMSI_URL, "e-PMSI's HTTPS origin, with --direct."],
    ["ca-file", None, None, "PEM file of CA certificates trusted for e-PMSI, with --direct."],
    ["timeout", None, DEFAULT_TIMEOUT, "Seconds to wait for an answer when connecting.", float],
]


class SendOptions(_TargetOptions):
    synopsis = "FILE (--relay HOST[:PORT] | --direct [--epmsi URL]) [options]"
    longdesc = (
        "Upload FILE to e-PMSI as an HTML form (multipart/form-data POST). "
        "e-PMSI's answer is written to standard output; the exit status is 0 "
        "only for a 2xx answer."
    )
    optParameters = _TARGET_PARAMETERS + [
        ["to", None, DEFAULT_UPLOAD_PATH, "Path on e-PMSI to post the form to."],
        ["field", None, "file", "Form field that carries the file."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, str]] = []

    def opt_F(self, text: str) -> None:
        """Extra form field NAME=VALUE (repeatable), e.g. -F year=2026."""
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise usage.UsageError(f"-F {text!r}: expected NAME=VALUE")
        self.fields.append((name, value))

    opt_form = opt_F

    def parseArgs(self, path: str) -> None:
        self["file"] = path

    def postOptions(self) -> None:
        self.check_target()
        path = self["file"]
        if not os.path.isfile(path):
            raise usage.UsageError(f"{path}: no such file")
        if not os.access(path, os.R_OK):
            raise usage.UsageError(f"{path}: not readable by this user")
        if not self["to"].startswith("/"):
            raise usage.UsageError("--to must be a path starting with '/', e.g. /syriusUpload.do")


class TestOptions(_TargetOptions):
    synopsis = "(--relay HOST[:PORT] | --direct [--epmsi URL])"
    longdesc = (
        "Test the connection to e-PMSI, through the relay or directly, and say "
        "which step failed if one did."
    )
    optParameters = _TARGET_PARAMETERS

    def postOptions(self) -> None:
        self.check_target()


class SandboxOptions(_Options):
    synopsis = "[--port PORT] [--interface ADDRESS] [--directory PATH]"
    longdesc = (
        "Run the e-PMSI sandbox: a local HTTPS server that stands in for e-PMSI "
        "and answers each upload with a JSON receipt."
    )
    optParameters = [
        ["port", "p", 8443, "TCP port to listen on.", int],
        ["interface", None, "127.0.0.1", "Address to listen on."],
        ["directory", "d", "epop-sandbox", "Folder for the sandbox's certificates and uploads."],
    ]


class Options(usage.Options):
    synopsis = "Usage: epop"
    longdesc = "Send PMSI files to e-PMSI, directly or through an e-POP relay."
    subCommands = [
        ["send", None, SendOptions, "Send a file to e-PMSI."],
        ["test", None, TestOptions, "Test the connection to e-PMSI."],
        ["sandbox", None, SandboxOptions, "Run the local e-PMSI sandbox."],
    ]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"epop {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("give a command: send, test or sandbox")


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def _run_send(reactor: Any, options: SendOptions, stdout: Any, stderr: TextIO) -> Deferred[int]:
    started = reactor.seconds()
    d = send_file(
        reactor,
        options["file"],
        to=options["to"],
        field=options["field"],
        fields=options.fields,
        relay=options.relay,
        epmsi=options["epmsi"],
        ca_file=options["ca-file"],
        output=stdout,
        timeout=options["timeout"],
    )

    def answered(reply: Reply) -> int:
        stdout.flush()
        how = f"through relay {options.relay}" if options.relay else "directly"
        took = reactor.seconds() - started
        size = os.path.getsize(options["file"])
        stderr.write(
            f"\nSent {options['file']} ({_size(size)}) {how} in {took:.1f} s: "
            f"e-PMSI answered {reply.status} {reply.reason}.\n"
        )
        return 0 if reply.ok else 1

    return d.addCallback(answered)


def _run_test(reactor: Any, options: TestOptions, stderr: TextIO, stdout: Any) -> Deferred[int]:
    d = test_connection(
        reactor,
        relay=options.relay,
        epmsi=options["epmsi"],
        ca_file=options["ca-file"],
        timeout=options["timeout"],
    )

    def reported(report: TestReport) -> int:
        if report.ok:
            stdout.write(report.describe().encode() + b"\n")
            return 0
        steps = {"relay": "reaching the relay", "epmsi": "reaching e-PMSI"}
        head = f"Test failed while {steps.get(report.failed_step or '', 'starting')}:"
        stderr.write(head + "\n" + report.describe() + "\n")
        return 1

    return d.addCallback(reported)


def _run_sandbox(reactor: Any, options: SandboxOptions) -> Deferred[int]:
    from twisted.python.filepath import FilePath

    from epop.sandbox import SandboxService

    service = SandboxService(
        reactor,
        FilePath(os.path.abspath(options["directory"])),
        port=options["port"],
        interface=options["interface"],
    )
    service.startService()
    forever: Deferred[int] = Deferred()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    return forever


def _start_logging(stderr: TextIO) -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(
        textFileLogObserver(stderr), [LogLevelFilterPredicate(LogLevel.info)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def run(reactor: Any, argv: list[str], stdout: Any = None, stderr: TextIO | None = None) -> Deferred[int]:
    """
    Run one command on C{reactor}; the Deferred fires with the exit status.
    C{stdout} takes bytes (e-PMSI's answers are passed on as they are),
    C{stderr} takes text.
    """
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        command = options.subCommand or ""
        stderr.write(f"epop: {e}\nTry 'epop {command + ' ' if command else ''}--help'.\n")
        return succeed(2)
    sub = options.subOptions
    if options.subCommand == "sandbox":
        _start_logging(stderr)
        d = _run_sandbox(reactor, sub)
    elif options.subCommand == "send":
        d = _run_send(reactor, sub, stdout, stderr)
    else:
        d = _run_test(reactor, sub, stderr, stdout)

    def failed(failure: Failure) -> int:
        if failure.check(EpopError):
            stderr.write(f"epop: {failure.value}\n")
        else:
            stderr.write(f"epop: unexpected error: {failure.getErrorMessage()}\n")
            stderr.write(failure.getTraceback())
        return 1

    return d.addErrback(failed)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    from twisted.internet.task import react

    args = sys.argv[1:] if argv is None else argv

    def start(reactor: Any) -> Deferred[None]:
        def leave(code: int) -> None:
            if code:
                raise SystemExit(code)

        return run(reactor, args).addCallback(leave)

    react(start)
