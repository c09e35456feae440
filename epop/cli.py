"""
The C{epop} command: C{send}, C{test}, C{config}, C{proxy-settings},
C{sandbox}, and C{journal} and C{connections} to read a relay's journal.

C{send} and C{test} take their defaults from the workstation's saved
settings (L{epop.workstation.settings}); flags override them.

Exit status (the table in C{docs/exit-status.md}): 0 on success; 1 when
e-PMSI or the relay answered with an error or could not be reached; 2 for a
usage or settings error; 3 when the whole file was sent but its answer was
lost, so that only e-PMSI knows whether it has it; 128 + N when signal N
(SIGINT: 130, SIGTERM: 143) interrupted a send or a test; 141 (128 +
SIGPIPE) when standard output was closed early, as by C{| head}.
"""

from __future__ import annotations

import errno
import getopt
import getpass
import math
import os
import signal
import sys
from collections.abc import Mapping
from contextlib import suppress
from typing import Any, TextIO

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.python import usage
from twisted.python.failure import Failure

from epop._version import __version__
from epop.workstation.client import (
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_TIMEOUT,
    RelayAddress,
    Reply,
    TestReport,
    UploadFailed,
    send_file,
    test_connection,
)
from epop.workstation.settings import (
    SETTING_DESCRIPTIONS,
    ClientSettings,
    SettingsError,
    settings_path,
)
from epop.addressing import DEFAULT_PORT, RELAY_ADDRESS_HELP
from epop.errors import EpopError
from epop.journal.events import EVENT_TYPES
from epop.journal.connections import RunChecker, connection_summaries, connections_table
from epop.journal.filters import JournalFilter, parse_connection, parse_since
from epop.journal.reader import (
    DEFAULT_JOURNAL,
    JournalFollower,
    NotAJournalFile,
    Problem,
    check_journal_path,
    read_journal,
)
from epop.journal.table import journal_header, journal_row, journal_table
from epop.local_tls import ClientTLS
from epop.messages import LANGUAGES, Text, choose_language
from epop.printable import safe_json
from epop.epmsi.proxy import PASSWORD_VARIABLE, ProxyConfig, load_proxy_password, resolve_proxy
from epop.epmsi.upstream import DEFAULT_EPMSI_URL, EpmsiOrigin

__all__ = [
    "EXIT_ANSWER_LOST",
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Interruption",
    "ProcessSignals",
    "exit_status_for_signal",
    "main",
    "run",
]

#: The exit statuses of C{epop}; docs/exit-status.md has the whole table.
EXIT_OK = 0
#: e-PMSI answered with an error, or the relay or e-PMSI failed or could not
#: be reached: the file was not delivered (or e-PMSI refused it).
EXIT_FAILED = 1
#: A usage or settings error: nothing was sent.
EXIT_USAGE = 2
#: All of the file was sent but its answer was lost: e-PMSI may have it.
#: Distinct from 1 so that a script never sends the same file twice blindly.
EXIT_ANSWER_LOST = 3
#: Standard output was closed early (C{epop journal | head}): 128 + SIGPIPE,
#: what a shell reports for a tool killed by it.
EXIT_BROKEN_PIPE = 141


def exit_status_for_signal(number: int) -> int:
    """128 + N, as shells report a command killed by signal N (SIGINT: 130)."""
    return 128 + number

DEFAULT_UPLOAD_PATH = "/syriusUpload.do"
DEFAULT_FIELD = "file"


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


#: Errors that can only mean standard output is full (a disk, a quota).
_OUTPUT_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def _output_lost(error: BaseException, stderr: TextIO) -> int | None:
    """
    The exit status when C{error} means standard output takes no more:
    141, quietly, when its reader went away (C{epop journal | head}), as a
    tool killed by SIGPIPE would; 1, said in one line, when its disk is
    full.  C{None} for any other error.
    """
    if isinstance(error, BrokenPipeError):
        return EXIT_BROKEN_PIPE
    if isinstance(error, OSError) and error.errno in _OUTPUT_FULL:
        stderr.write(f"epop: cannot write to standard output: {error.strerror}\n")
        return EXIT_FAILED
    return None


def _positive_seconds(name: str, value: object) -> float:
    """An option's value as a finite, positive number of seconds, or a usage error naming it."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise usage.UsageError(f"--{name}: expected a positive number of seconds, not {value!r}")
    return seconds


class _TargetOptions(_Options):
    """
    Where to send: through a relay, or directly to e-PMSI (perhaps through
    a proxy).  Flags win over the saved settings, which win over defaults.
    """

    optFlags = [
        ["direct", None, "Send straight to e-PMSI (this workstation has Internet access)."],
        ["tls", None, "Encrypt the connection to the relay (TLS), checking its certificate."],
    ]
    optParameters = [
        ["relay", None, None, f"The relay's address: {RELAY_ADDRESS_HELP}."],
        ["epmsi", None, None, f"e-PMSI's HTTPS origin, with --direct [default: {DEFAULT_EPMSI_URL}]."],
        ["ca-file", None, None, "PEM file of CA certificates trusted for e-PMSI, with --direct."],
        ["proxy", None, None, "With --direct: HTTP proxy http://HOST:PORT, or 'system' for this machine's settings."],
        ["proxy-user", None, None, "With --direct: user name for the proxy."],
        ["proxy-password-file", None, None, f"With --direct: file holding the proxy password (or set {PASSWORD_VARIABLE})."],
        ["relay-ca", None, None, "With --tls: PEM CA certificate that signs the relay's certificate (default: the system's)."],
        ["tls-client-cert", None, None, "With --tls: this workstation's PEM certificate, for relays that require one."],
        ["tls-client-key", None, None, "With --tls: the PEM private key of --tls-client-cert."],
        ["timeout", None, DEFAULT_TIMEOUT, "Seconds to wait for an answer when connecting."],
        ["stall-timeout", None, DEFAULT_STALL_TIMEOUT,
         "Give up after this many seconds with nothing moving once connected: nothing of the "
         "file taken, no answer received. Longer than the relay's own wait on e-PMSI (300 s)."],
    ]

    relay: RelayAddress | None = None
    tls: ClientTLS | None = None
    epmsi: str = DEFAULT_EPMSI_URL
    ca_file: str | None = None
    proxy: ProxyConfig | None = None

    def resolve(self, saved: ClientSettings, environ: Mapping[str, str]) -> None:
        """Combine flags, saved settings and defaults; check they can work."""
        if self["direct"] and self["relay"] is not None:
            raise usage.UsageError("choose one: --relay HOST[:PORT] or --direct, not both")
        if self["direct"]:
            mode = "direct"
        elif self["relay"] is not None:
            mode = "relay"
        else:
            mode = saved.get("mode") or ("relay" if saved.get("relay") else "")
        if not mode:
            raise usage.UsageError(
                "say where to send: --relay HOST[:PORT], or --direct "
                "(or save it once: epop config set relay HOST)"
            )
        for name in ("timeout", "stall-timeout"):
            self[name] = _positive_seconds(name, self[name])
        tls_flags = ("relay-ca", "tls-client-cert", "tls-client-key")
        if mode == "relay":
            if not self["tls"] and any(self[flag] for flag in tls_flags):
                raise usage.UsageError("--relay-ca and --tls-client-* need --tls")
            if self["tls"]:
                if bool(self["tls-client-cert"]) != bool(self["tls-client-key"]):
                    raise usage.UsageError("--tls-client-cert and --tls-client-key go together")
                self.tls = ClientTLS(
                    self["relay-ca"], self["tls-client-cert"], self["tls-client-key"]
                )
            for flag in ("ca-file", "proxy", "proxy-user", "proxy-password-file"):
                if self[flag] is not None:
                    raise usage.UsageError(
                        f"--{flag} applies to --direct only: through a relay, the relay "
                        "reaches e-PMSI with its own settings"
                    )
            text = self["relay"] or saved.get("relay")
            if not text:
                raise usage.UsageError("the saved mode is 'relay' but no relay is saved: give --relay HOST")
            try:
                self.relay = RelayAddress.parse(text)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
            return
        if self["tls"] or any(self[flag] for flag in tls_flags):
            raise usage.UsageError("--tls and its options apply to --relay: with --direct, e-PMSI is always reached over TLS")
        self.epmsi = self["epmsi"] or saved.get("epmsi") or DEFAULT_EPMSI_URL
        self.ca_file = self["ca-file"] or saved.get("ca-file")
        try:
            EpmsiOrigin.from_url(self.epmsi)
            password = load_proxy_password(self["proxy-password-file"], environ)
            self.proxy, _ = resolve_proxy(
                self["proxy"] or saved.get("proxy"),
                self.epmsi,
                user=self["proxy-user"] or saved.get("proxy-user"),
                password=password if password is not None else saved.get("proxy-password"),
                environ=environ,
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


class SendOptions(_TargetOptions):
    synopsis = "FILE [--relay HOST[:PORT] | --direct] [options]"
    longdesc = (
        "Upload FILE to e-PMSI as an HTML form (multipart/form-data POST). "
        "e-PMSI's answer is written to standard output; the exit status is 0 "
        "only for a 2xx answer, 1 for any other answer or failure, 2 for a usage "
        "error, 3 when the whole file was sent but the answer was lost (check on "
        "e-PMSI before sending again), 130 or 143 when interrupted (SIGINT, "
        "SIGTERM: the upload is stopped before e-PMSI gets the whole file). "
        "Without --relay or --direct, the saved settings say where to send "
        "(see 'epop config')."
    )
    optParameters = [
        ["to", None, None, f"Path on e-PMSI to post the form to [default: {DEFAULT_UPLOAD_PATH}]."],
        ["field", None, None, f"Form field that carries the file [default: {DEFAULT_FIELD}]."],
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
        path = self["file"]
        if os.path.isdir(path):
            raise usage.UsageError(f"{path} is a folder: give the file to send")
        if not os.path.isfile(path):
            raise usage.UsageError(f"{path}: no such file")
        if not os.access(path, os.R_OK):
            raise usage.UsageError(f"{path}: not readable by this user")

    def resolve(self, saved: ClientSettings, environ: Mapping[str, str]) -> None:
        super().resolve(saved, environ)
        self.to = self["to"] or saved.get("to") or DEFAULT_UPLOAD_PATH
        self.field = self["field"] or saved.get("field") or DEFAULT_FIELD
        if not self.to.startswith("/"):
            raise usage.UsageError("--to must be a path starting with '/', e.g. /syriusUpload.do")


class TestOptions(_TargetOptions):
    synopsis = "[--relay HOST[:PORT] | --direct] [options]"
    longdesc = (
        "Test the connection to e-PMSI, through the relay or directly, and say "
        "which step failed if one did. Without --relay or --direct, the saved "
        "settings say which."
    )


class _ConfigSet(_Options):
    synopsis = "KEY VALUE"
    longdesc = (
        "Save one setting. Keys: "
        + "; ".join(f"{key}: {text}" for key, text in SETTING_DESCRIPTIONS.items())
        + ". For proxy-password give '-' as VALUE: the password is then read from "
        "standard input, so that it never shows in the command line."
    )

    def parseArgs(self, key: str, value: str) -> None:
        self["key"], self["value"] = key, value


class _ConfigUnset(_Options):
    synopsis = "KEY"

    def parseArgs(self, key: str) -> None:
        self["key"] = key


class ConfigOptions(_Options):
    synopsis = "(show | path | set KEY VALUE | unset KEY)"
    longdesc = (
        "The workstation's saved settings, filled in once and used by 'epop send' "
        "and 'epop test' when no flag says otherwise. The file is "
        "~/.config/epop/client.ini (%APPDATA%\\epop\\client.ini on Windows), or "
        "wherever EPOP_CONFIG points; it is readable by its owner only."
    )
    subCommands = [
        ["show", None, _Options, "Print the saved settings (never the password)."],
        ["path", None, _Options, "Print where the settings file is."],
        ["set", None, _ConfigSet, "Save one setting."],
        ["unset", None, _ConfigUnset, "Remove one setting."],
    ]
    defaultSubCommand = "show"


class ProxySettingsOptions(_Options):
    synopsis = "[--pac FILE] [--save]"
    longdesc = (
        "Find the proxy this machine would use to reach e-PMSI (the manual's "
        "'Importer les parametres de proxy'): environment variables, the "
        "Windows registry, macOS settings or a PAC file, NO_PROXY included. "
        "--save stores the result in the saved settings."
    )
    optFlags = [["save", None, "Store what was found in the saved settings."]]
    optParameters = [
        ["pac", None, None, "Evaluate this PAC file (path or file:// URL) instead of the system's settings."],
        ["epmsi", None, DEFAULT_EPMSI_URL, "The address to find a proxy for."],
    ]


class InterfacesOptions(_Options):
    synopsis = "[--port PORT]"
    longdesc = (
        "List this machine's addresses the relay can listen on (the manual's "
        "'Adresse IP' list), with the --listen option to use for each and the "
        "address workstations then type."
    )
    optParameters = [["port", "p", DEFAULT_PORT, "The relay's port.", int]]


class SandboxOptions(_Options):
    synopsis = "[--port PORT] [--interface ADDRESS] [--directory PATH]"
    longdesc = (
        "Run the e-PMSI sandbox: a local HTTPS server that stands in for e-PMSI "
        "and answers each upload with a JSON receipt."
    )
    optParameters = [
        ["port", "p", 8443, "TCP port to listen on (0: any free port)."],
        ["interface", None, "127.0.0.1", "Address to listen on."],
        ["directory", "d", "epop-sandbox", "Folder for the sandbox's certificates and uploads."],
    ]

    def postOptions(self) -> None:
        text = str(self["port"])
        if not text.isdigit() or int(text) > 65535:
            raise usage.UsageError(f"--port: expected a port number from 0 to 65535, not {text!r}")
        self["port"] = int(text)


class JournalOptions(_Options):
    synopsis = "[PATH] [--connection ID]... [--type TYPE]... [--since TIME] [--follow] [--json]"
    longdesc = (
        "Show a relay's journal (the manual's 'Journal d'ecoute'): client IP, local "
        "date, type and description of each event. PATH is the relay's --journal "
        f"file [default: {DEFAULT_JOURNAL}]; with --since, its rotated files are "
        "read too when they hold events that recent."
    )
    optFlags = [
        ["follow", "f", "Then print new events as the relay writes them, across rotations, until Ctrl-C."],
        ["json", None, "Print the records as they are, one JSON object a line."],
    ]
    optParameters = [
        ["since", None, None, "Only events from then on: 2026-11-25, 2026-11-25T08:30 (local time), today, yesterday, or 30m, 1h, 2d ago."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["connections"] = []
        self["types"] = []

    def opt_connection(self, value: str) -> None:
        """Only the events of this connection: ID, or RUN:ID as connection numbers restart at each run (repeatable)."""
        try:
            self["connections"].append(parse_connection(value))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def opt_type(self, value: str) -> None:
        """Only the events of this type, e.g. connection-closed (repeatable; the types are in docs/journal.md)."""
        if value not in EVENT_TYPES:
            raise usage.UsageError(f"--type {value}: expected one of {', '.join(EVENT_TYPES)}")
        self["types"].append(value)

    def parseArgs(self, path: str = DEFAULT_JOURNAL) -> None:
        self["path"] = path

    def postOptions(self) -> None:
        if self["since"] is not None:
            try:
                parse_since(self["since"], 0.0)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None


class ConnectionsOptions(_Options):
    synopsis = "[PATH] [--since TIME] [--json]"
    longdesc = (
        "List the workstation connections a relay's journal tells of, open and "
        "closed (the manual's 'Connexions'): id, client, when opened and closed, "
        "duration, bytes in and out, and why it closed. It reads the journal as it "
        f"is, so it works on a running relay. PATH defaults to {DEFAULT_JOURNAL}."
    )
    optFlags = [["json", None, "Print one JSON object a connection."]]
    optParameters = [
        ["since", None, None, "Also read the rotated files back to then (same forms as 'epop journal --since'); connections closed before are left out."],
    ]

    def parseArgs(self, path: str = DEFAULT_JOURNAL) -> None:
        self["path"] = path

    postOptions = JournalOptions.postOptions


class Options(usage.Options):
    synopsis = "Usage: epop"
    longdesc = "Send PMSI files to e-PMSI, directly or through an e-POP relay."
    optParameters = [
        ["lang", None, None, "Language of messages: fr or en (default: from LC_ALL, LC_MESSAGES or LANG)."],
    ]
    subCommands = [
        ["send", None, SendOptions, "Send a file to e-PMSI."],
        ["test", None, TestOptions, "Test the connection to e-PMSI."],
        ["config", None, ConfigOptions, "Show or change the saved settings."],
        ["proxy-settings", None, ProxySettingsOptions, "Find this machine's proxy for e-PMSI."],
        ["interfaces", None, InterfacesOptions, "List the addresses the relay can listen on."],
        ["sandbox", None, SandboxOptions, "Run the local e-PMSI sandbox."],
        ["journal", None, JournalOptions, "Show a relay's journal, or follow it."],
        ["connections", None, ConnectionsOptions, "List the connections a relay's journal tells of."],
    ]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"epop {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if self["lang"] not in (None, *LANGUAGES):
            raise usage.UsageError(f"--lang must be one of {', '.join(LANGUAGES)}")
        if self.subCommand is None:
            raise usage.UsageError("give a command: " + ", ".join(c[0] for c in self.subCommands))


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


class Interruption:
    """
    Where SIGINT and SIGTERM go.  A send or a test in flight is cancelled,
    which drops its connection before e-PMSI gets a whole file, and the
    command then exits 128 + N; with nothing in flight (the sandbox, a
    followed journal) C{otherwise} runs, by default stopping the reactor.

    Once the command's outcome is known (L{settle}), it is the exit status:
    a signal that comes after e-PMSI's answer, while the process is still
    on its way out, only stops the reactor.  So what was printed (e-PMSI's
    answer and "Sent ...") and the exit status always agree, whichever of
    the answer and the signal the reactor sees first.
    """

    def __init__(self, otherwise: Any = None) -> None:
        self.signal: int | None = None
        #: The command's own exit status, once it has one.
        self.outcome: int | None = None
        self._operation: Deferred[Any] | None = None
        self.otherwise = otherwise

    def watch(self, operation: Deferred[Any]) -> None:
        """Cancel C{operation} when a signal comes, until it has a result."""
        self._operation = operation

        def finished(result: Any) -> Any:
            self._operation = None
            return result

        # Not Deferred.called: a Deferred waiting on another one is "called".
        operation.addBoth(finished)

    def settle(self, status: int) -> None:
        """The command came to its outcome: no signal may change it now."""
        if self.outcome is None:
            self.outcome = status
        self._operation = None

    def interrupt(self, number: int) -> None:
        if self.outcome is None and self._operation is not None and self.signal is None:
            self.signal = number
            self._operation.cancel()
        elif self.otherwise is not None:
            # Nothing to cancel, a second signal, or the outcome is known:
            # stop as Twisted would.
            self.otherwise()

    def exit_status(self, status: Any) -> Any:
        """
        The status to exit with: the outcome's when the command reached one.
        Without one, a signal stopped the reactor before the send or test
        ended (a second Ctrl-C), and react() then says 0: it was interrupted.
        """
        if self.outcome is not None:
            return self.outcome
        if self.signal is not None and not status:
            return exit_status_for_signal(self.signal)
        return status

    def describe(self) -> str:
        assert self.signal is not None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return str(self.signal)


class _Command:
    """One run of the command: its streams, environment and saved settings."""

    def __init__(
        self,
        reactor: Any,
        stdout: Any,
        stderr: TextIO,
        environ: Mapping[str, str],
        language: str = "en",
        interruption: Interruption | None = None,
    ) -> None:
        self.reactor = reactor
        self.stdout = stdout
        self.stderr = stderr
        self.environ = environ
        self.language = language
        self.interruption = interruption if interruption is not None else Interruption()

    def complain(self, text: Text | str) -> None:
        """One line on standard error, in the reader's language."""
        line = text.render(self.language) if isinstance(text, Text) else text
        self.stderr.write(f"epop: {line}\n")

    def say(self, text: str) -> None:
        self.stdout.write(text.encode() + b"\n")

    def send(self, options: SendOptions) -> Deferred[int]:
        started = self.reactor.seconds()
        d = send_file(
            self.reactor,
            options["file"],
            to=options.to,
            field=options.field,
            fields=options.fields,
            relay=options.relay,
            epmsi=options.epmsi,
            ca_file=options.ca_file,
            proxy=options.proxy,
            tls=options.tls,
            output=self.stdout,
            timeout=options["timeout"],
            stall_timeout=options["stall-timeout"],
        )
        self.interruption.watch(d)

        def answered(reply: Reply) -> int:
            self.stdout.flush()
            if options.relay and options.tls:
                how = Text("through relay {relay} (TLS)", relay=str(options.relay))
            elif options.relay:
                how = Text("through relay {relay}", relay=str(options.relay))
            elif options.proxy:
                how = Text("directly, through the proxy {proxy}", proxy=options.proxy.address)
            else:
                how = Text("directly")
            summary = Text(
                "Sent {file} ({size}) {how} in {seconds} s: e-PMSI answered {status} {reason}.",
                file=options["file"],
                size=_size(os.path.getsize(options["file"])),
                how=how,
                seconds=f"{self.reactor.seconds() - started:.1f}",
                status=reply.status,
                reason=reply.reason,
            )
            self.stderr.write("\n" + summary.render(self.language) + "\n")
            return EXIT_OK if reply.ok else EXIT_FAILED

        def failed(failure: Failure) -> int | Failure:
            if not failure.check(UploadFailed):
                return failure
            error: UploadFailed = failure.value
            if self.interruption.signal is not None:
                self.complain(
                    Text(
                        "Interrupted ({signal}): the upload was stopped.",
                        signal=self.interruption.describe(),
                    )
                )
            else:
                self.complain(error.text)
            self.complain(error.outcome(options["file"]))
            if self.interruption.signal is not None:
                return exit_status_for_signal(self.interruption.signal)
            return EXIT_ANSWER_LOST if error.maybe_delivered else EXIT_FAILED

        return d.addCallbacks(answered, failed)

    def test(self, options: TestOptions) -> Deferred[int]:
        d = test_connection(
            self.reactor,
            relay=options.relay,
            epmsi=options.epmsi,
            ca_file=options.ca_file,
            proxy=options.proxy,
            tls=options.tls,
            timeout=options["timeout"],
            stall_timeout=options["stall-timeout"],
        )
        self.interruption.watch(d)

        def interrupted(failure: Failure) -> int | Failure:
            if self.interruption.signal is None or not failure.check(CancelledError):
                return failure
            self.complain(
                Text("Interrupted ({signal}): the test was stopped.", signal=self.interruption.describe())
            )
            return exit_status_for_signal(self.interruption.signal)

        def reported(report: TestReport) -> int:
            if self.interruption.signal is not None and not report.ok:
                # A direct check reports its cancellation as a failed step.
                return interrupted(Failure(CancelledError()))
            if report.ok:
                self.say(report.describe(self.language))
                return 0
            head = Text("Test failed at this step: {step}.", step=report.step)
            self.stderr.write(
                head.render(self.language) + "\n" + report.describe(self.language) + "\n"
            )
            return EXIT_FAILED

        return d.addCallbacks(reported, interrupted)

    def config(self, options: ConfigOptions, saved: ClientSettings) -> int:
        action, sub = options.subCommand, options.subOptions
        if action == "path":
            self.say(str(saved.path))
            return 0
        if action == "show":
            items = saved.items_for_display()
            self.say(f"# {saved.path}")
            if not items:
                self.say("# no settings saved yet: epop config set KEY VALUE")
            for key, value in items:
                self.say(f"{key} = {value}")
            return 0
        key = sub["key"]
        if action == "set":
            value = sub["value"]
            if key == "proxy-password" and value == "-":
                value = self._read_password()
            saved.set(key, value)
        else:
            saved.unset(key)
        saved.save()
        self.stderr.write(f"Saved in {saved.path}.\n")
        return 0

    def _read_password(self) -> str:
        if sys.stdin is not None and sys.stdin.isatty():
            return getpass.getpass("Proxy password: ")
        line = sys.stdin.readline() if sys.stdin is not None else ""
        return line.rstrip("\r\n")

    def proxy_settings(self, options: ProxySettingsOptions, saved: ClientSettings) -> int:
        from epop.epmsi.system_proxy import discover_proxy

        found = discover_proxy(options["epmsi"], environ=self.environ, pac=options["pac"])
        self.say(found.describe())
        if not options["save"]:
            return 0 if not found.unresolved else 1
        if found.unresolved:
            self.stderr.write("Nothing saved: the proxy could not be determined.\n")
            return 1
        if found.proxy is None:
            saved.unset("proxy")
            saved.unset("proxy-user")
        else:
            saved.set("proxy", found.proxy)
            if found.user:
                saved.set("proxy-user", found.user)
        saved.save()
        self.stderr.write(f"Saved in {saved.path}.\n")
        return 0

    def interfaces(self, options: InterfacesOptions) -> int:
        from epop.relay.network_interfaces import local_addresses

        found = local_addresses()
        if not found:
            self.say(Text("This machine has no network address.").render(self.language))
            return 1
        for address in found:
            self.say(
                Text(
                    "{address} ({interface}): --listen {listen}  (workstations type {client})",
                    address=address.address,
                    interface=address.interface,
                    listen=address.listen_string(options["port"]),
                    client=address.client_address(options["port"]),
                ).render(self.language)
            )
        return 0

    def sandbox(self, options: SandboxOptions) -> Deferred[int]:
        from twisted.python.filepath import FilePath

        from epop.sandbox.service import SandboxService

        _start_logging(self.stderr)
        service = SandboxService(
            self.reactor,
            FilePath(os.path.abspath(options["directory"])),
            port=options["port"],
            interface=options["interface"],
        )
        service.startService()
        self.reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        return Deferred()  # runs until the reactor stops

    def _problem(self, problem: Problem) -> None:
        self.stderr.write(problem.describe().render(self.language) + "\n")

    def _unreadable(self, path: str, error: OSError) -> Deferred[int]:
        if isinstance(error, NotAJournalFile):
            message = error.describe()
        else:
            # The file that failed: the journal, or one of its rotated files.
            named = error.filename if isinstance(error.filename, str) else path
            message = Text("Cannot read {path}: {why}.", path=named, why=error.strerror or str(error))
        self.stderr.write(message.render(self.language) + "\n")
        return succeed(1)

    def journal(self, options: JournalOptions) -> Deferred[int]:
        path = options["path"]
        since = parse_since(options["since"], self.reactor.seconds()) if options["since"] else None
        wanted = JournalFilter(tuple(options["connections"]), tuple(options["types"]), since)
        if options["follow"]:
            try:
                # A device would be read forever, a FIFO would block: refused
                # now, not waited for.
                check_journal_path(path)
            except OSError as e:
                return self._unreadable(path, e)
            return self._follow(path, wanted, options["json"])
        try:
            records = [r for r in read_journal(path, since, self._problem) if wanted.matches(r)]
        except OSError as e:
            return self._unreadable(path, e)
        if options["json"]:
            for record in records:
                self.say(safe_json(record))
        else:
            for line in journal_table(records, self.language):
                self.say(line)
        return succeed(0)

    def _follow(self, path: str, wanted: JournalFilter, as_json: bool) -> Deferred[int]:
        # Follows until the reactor stops (Ctrl-C), or the reader of our
        # output goes away (epop journal -f | grep -m1 ...).
        done: Deferred[int] = Deferred()
        follower: JournalFollower | None = None

        def show(record: dict[str, Any]) -> None:
            if done.called or not wanted.matches(record):
                return
            try:
                if as_json:
                    self.say(safe_json(record))
                else:
                    self.say(journal_row(record, self.language))
                self.stdout.flush()
            except OSError as e:
                status = _output_lost(e, self.stderr)
                if status is None:
                    raise
                if follower is not None:
                    follower.stop()
                done.callback(status)

        if not as_json:
            for line in journal_header(self.language):
                self.say(line)
        if wanted.since is not None:
            try:
                for record in read_journal(path, wanted.since, self._problem, current=False):
                    show(record)
                    if done.called:
                        return done
            except OSError as e:
                return self._unreadable(path, e)
        follower = JournalFollower(path, show, self.reactor, on_problem=self._problem)
        follower.start()
        if follower.waiting:
            self.stderr.write(Text("Waiting for {path} to appear.", path=path).render(self.language) + "\n")
        self.reactor.addSystemEventTrigger("before", "shutdown", follower.stop)
        return done

    def connections(self, options: ConnectionsOptions) -> Deferred[int]:
        path = options["path"]
        since = parse_since(options["since"], self.reactor.seconds()) if options["since"] else None
        try:
            records = list(read_journal(path, since, self._problem))
        except OSError as e:
            return self._unreadable(path, e)
        summaries = [
            summary
            for summary in connection_summaries(records, self.reactor.seconds(), RunChecker(path, records))
            if since is None or summary.closed is None or summary.closed >= since
        ]
        if options["json"]:
            for summary in summaries:
                self.say(safe_json(summary.to_json()))
        elif not summaries:
            self.stderr.write(Text("No connections in {path}.", path=path).render(self.language) + "\n")
        else:
            for line in connections_table(summaries, self.language):
                self.say(line)
        return succeed(0)


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


def run(
    reactor: Any,
    argv: list[str],
    stdout: Any = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    interruption: Interruption | None = None,
) -> Deferred[int]:
    """
    Run one command on C{reactor}; the Deferred fires with the exit status.
    C{stdout} takes bytes (e-PMSI's answers are passed on as they are),
    C{stderr} takes text.  L{Interruption.interrupt} on C{interruption}
    stops a send or a test in flight (what SIGINT and SIGTERM do).
    """
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr
    environ = os.environ if environ is None else environ
    command = _Command(reactor, stdout, stderr, environ, choose_language(environ), interruption)
    options = Options()
    try:
        options.parseOptions(argv)
        command.language = choose_language(environ, options["lang"])
        saved = ClientSettings.load(settings_path(environ))
        sub = options.subOptions
        if isinstance(sub, _TargetOptions):
            sub.resolve(saved, environ)
        if options.subCommand == "config":
            return succeed(command.config(sub, saved))
        if options.subCommand == "proxy-settings":
            return succeed(command.proxy_settings(sub, saved))
        if options.subCommand == "interfaces":
            return succeed(command.interfaces(sub))
    except (usage.UsageError, SettingsError) as e:
        name = options.subCommand or ""
        stderr.write(f"epop: {e}\nTry 'epop {name + ' ' if name else ''}--help'.\n")
        return succeed(EXIT_USAGE)
    except OSError as e:  # --help, config show... when standard output takes no more
        status = _output_lost(e, stderr)
        if status is None:
            raise
        return succeed(status)
    try:
        if options.subCommand == "sandbox":
            d = command.sandbox(sub)
        elif options.subCommand == "journal":
            d = command.journal(sub)
        elif options.subCommand == "connections":
            d = command.connections(sub)
        elif options.subCommand == "send":
            d = command.send(sub)
        else:
            d = command.test(sub)
    except OSError as e:
        status = _output_lost(e, stderr)
        if status is None:
            raise
        return succeed(status)

    def failed(failure: Failure) -> int:
        status = _output_lost(failure.value, stderr)
        if status is not None:
            return status
        if failure.check(EpopError):
            stderr.write(f"epop: {failure.value.render(command.language)}\n")
        else:
            stderr.write(f"epop: unexpected error: {failure.getErrorMessage()}\n")
            stderr.write(failure.getTraceback())
        return EXIT_FAILED

    def settled(code: int) -> int:
        command.interruption.settle(code)
        return code

    return d.addErrback(failed).addCallback(settled)


class ProcessSignals:
    """
    The process's SIGINT and SIGTERM.  While the command runs they go to an
    L{Interruption}.  Once its exit status is decided they are ignored: on
    its way out Python puts back the default action, and a Ctrl-C that
    lands then (just after "Sent ... e-PMSI answered 200 OK.") would kill
    the process, which the shell reports as 130, for a delivered file.
    """

    def install(self, reactor: Any, interruption: Interruption) -> None:
        """
        Route the signals to C{interruption}.  Run once the reactor runs: it
        replaces the handlers the reactor installed, which would stop it
        with the operation still in flight and the exit status 0.
        """

        def handler(number: int, frame: Any) -> None:
            reactor.callFromThread(interruption.interrupt, number)

        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, handler)

    def leaving(self) -> None:
        """The exit status is decided: no signal may change it any more."""
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)


def _quiet_if_stdout_closed(status: int) -> int:
    """
    Flush standard output now, while a closed pipe can still be told apart:
    when the reader went away (C{epop journal | head}), say nothing and
    exit 141, as a tool killed by SIGPIPE would, rather than let Python
    print a traceback on its way out.
    """
    if sys.stdout is None:  # started with no standard output at all
        return status
    lost = False
    try:
        sys.stdout.flush()
    except OSError as e:
        found = _output_lost(e, sys.stderr)
        if found is None:
            raise
        status = status or found
        lost = True
    if lost or status == EXIT_BROKEN_PIPE:
        # What is left in the buffer can never be written: drop it quietly.
        with suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
    return status


def main(
    argv: list[str] | None = None,
    *,
    reactor: Any = None,
    signals: ProcessSignals | None = None,
) -> None:
    """
    Console entry point.  C{reactor} and C{signals} let a test run the
    whole of it, signals included, on a fake reactor.
    """
    from twisted.internet.task import react

    args = sys.argv[1:] if argv is None else argv
    signals = signals if signals is not None else ProcessSignals()
    interruption = Interruption()

    def start(reactor: Any) -> Deferred[None]:
        def stop() -> None:
            with suppress(ReactorNotRunning):
                reactor.stop()

        interruption.otherwise = stop
        reactor.callWhenRunning(signals.install, reactor, interruption)

        def leave(code: int) -> None:
            if code:
                raise SystemExit(code)

        return run(reactor, args, interruption=interruption).addCallback(leave)

    try:
        react(start, _reactor=reactor)
    except SystemExit as leaving:
        status = interruption.exit_status(leaving.code)
    signals.leaving()
    raise SystemExit(_quiet_if_stdout_closed(status)) from None
