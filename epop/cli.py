"""
The C{epop} command: C{send}, C{test}, C{config}, C{trust},
C{proxy-settings}, C{interfaces}, C{sandbox}, and C{journal} and
C{connections} to read a relay's journal.

Each subcommand lives with its role, its options next to its handler
(L{COMMANDS} lists them); this module holds what they all share: the
top-level options, parsing and the usage errors, the saved settings every
command checks, the exit status (the table in C{docs/exit-status.md}, the
values in L{epop.command}), SIGINT and SIGTERM, and what a standard output
that takes no more means.

Exit status: 0 on success; 1 when e-PMSI or the relay answered with an error
or could not be reached; 2 for a usage or settings error; 3 when the whole
file was sent but its answer was lost, so that only e-PMSI knows whether it
has it; 128 + N when signal N (SIGINT: 130, SIGTERM: 143) interrupted a send
or a test; 141 (128 + SIGPIPE) when standard output was closed early, as by
C{| head}.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TextIO

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.python import usage
from twisted.python.failure import Failure

from epop.command import (
    EXIT_ANSWER_LOST,
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Command,
    CommandOptions,
    exit_status_for_signal,
    output_lost,
    usage_reason,
)
from epop.errors import EpopError
from epop.help import TranslatedHelp, usage_line
from epop.journal.commands import ConnectionsOptions, JournalOptions, connections, journal
from epop.messages import LANGUAGES, Text, choose_language, language_asked
from epop.relay.commands import InterfacesOptions, interfaces
from epop.sandbox.commands import SandboxOptions, sandbox
from epop.workstation.commands import SendOptions, TestOptions, send, test
from epop.workstation.settings import ClientSettings, SettingsError, settings_path
from epop.workstation.trust import TrustOptions, trust
from epop.workstation.settings_commands import (
    ConfigOptions,
    ProxySettingsOptions,
    config,
    proxy_settings,
)

__all__ = [
    "COMMANDS",
    "EXIT_ANSWER_LOST",
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Interruption",
    "Options",
    "ProcessSignals",
    "Subcommand",
    "exit_status_for_signal",
    "main",
    "run",
]


@dataclass(frozen=True)
class Subcommand:
    """One subcommand: its options, what runs it, and its line in C{epop --help}."""

    options: type[usage.Options]
    #: Given the run's L{Command} and the parsed options; returns the exit
    #: status, or a Deferred of it.
    handler: Callable[[Command, Any], int | Deferred[int]]
    summary: str
    #: Whether the command logs (Twisted's log, to standard error) as it runs.
    logs: bool = False


#: Every subcommand: its options, its handler and its line in C{epop --help}.
COMMANDS: dict[str, Subcommand] = {
    "send": Subcommand(SendOptions, send, "Send a file to e-PMSI."),
    "test": Subcommand(TestOptions, test, "Test the connection to e-PMSI."),
    "config": Subcommand(ConfigOptions, config, "Show or change the saved settings."),
    "trust": Subcommand(TrustOptions, trust, "Trust a relay's certificate on first use (TLS)."),
    "proxy-settings": Subcommand(ProxySettingsOptions, proxy_settings, "Find this machine's proxy for e-PMSI."),
    "interfaces": Subcommand(InterfacesOptions, interfaces, "List the addresses the relay can listen on."),
    "sandbox": Subcommand(SandboxOptions, sandbox, "Run the local e-PMSI sandbox.", logs=True),
    "journal": Subcommand(JournalOptions, journal, "Show a relay's journal, or follow it."),
    "connections": Subcommand(ConnectionsOptions, connections, "List the connections a relay's journal tells of."),
}


def _language(value: str) -> str:
    """
    C{--lang}, checked as soon as it is read: before a C{--help} that follows
    it, and before the subcommand, so that the error points to C{epop --help}.
    A L{usage.UsageError}, not a ValueError: Twisted would word that one itself.
    """
    if value not in LANGUAGES:
        raise usage.UsageError(Text("--lang must be one of {languages}", languages=", ".join(LANGUAGES)))
    return value


class Options(TranslatedHelp):
    synopsis = "Usage: epop [--lang fr|en] COMMAND ..."
    longdesc = "Send PMSI files to e-PMSI, directly or through an e-POP relay."
    optParameters = [
        ["lang", None, None, "Language of messages: fr or en (default: from LC_ALL, LC_MESSAGES or LANG).", _language],
    ]
    subCommands = [[name, None, entry.options, entry.summary] for name, entry in COMMANDS.items()]
    #: Whose locale chooses the language of C{--help} (L{run} gives its own).
    environ: Mapping[str, str] | None = None

    # Not a CommandOptions: its arguments after the subcommand are the
    # subcommand's, never to be reordered.
    opt_version = CommandOptions.opt_version

    def getSynopsis(self) -> str:
        if self.subCommand is not None:
            # The start of the command's own synopsis: "Usage: epop send FILE ...".
            return usage_line("Usage: epop", self.help_language())
        return super().getSynopsis()

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError(
                Text("give a command: {commands}", commands=", ".join(c[0] for c in self.subCommands))
            )


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


def _subcommands(options: usage.Options) -> list[str]:
    """The subcommands chosen so far (C{config}, C{set}): where the help for a usage error is."""
    names = []
    while getattr(options, "subCommand", None):
        names.append(options.subCommand)
        options = options.subOptions
    return names


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
    stdin: TextIO | None = None,
) -> Deferred[int]:
    """
    Run one command on C{reactor}; the Deferred fires with the exit status.
    C{stdout} takes bytes (e-PMSI's answers are passed on as they are),
    C{stderr} takes text, C{stdin} gives text (a password typed or piped).
    L{Interruption.interrupt} on C{interruption} stops a send or a test in
    flight (what SIGINT and SIGTERM do).
    """
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr
    environ = os.environ if environ is None else environ
    interruption = interruption if interruption is not None else Interruption()
    options = Options()
    options.environ = environ

    def reader_language() -> str:
        """The language asked for, even when the parser refused the command line before reading C{--lang}."""
        asked = options["lang"] if options["lang"] in LANGUAGES else language_asked(argv)
        return choose_language(environ, asked)

    try:
        options.parseOptions(argv)
        language = choose_language(environ, options["lang"])
        command = Command(
            reactor,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            environ=environ,
            language=language,
            saved=ClientSettings.load(settings_path(environ)),
            interruption=interruption,
        )
        subcommand = COMMANDS[options.subCommand]
        if subcommand.logs:
            _start_logging(stderr)
        # Usage and settings errors are raised before anything is done.
        outcome = subcommand.handler(command, options.subOptions)
    except (usage.UsageError, SettingsError) as e:
        language = reader_language()
        reason = usage_reason(e).render(language)
        see = Text("Try '{command}'.", command=" ".join(["epop", *_subcommands(options), "--help"]))
        stderr.write(f"epop: {reason}\n{see.render(language)}\n")
        return succeed(EXIT_USAGE)
    except KeyboardInterrupt:  # Ctrl-C at a prompt (-F userPwd=<-), before the reactor runs
        stopped = Text("Interrupted ({signal}): nothing was done.", signal="SIGINT")
        stderr.write(f"\nepop: {stopped.render(reader_language())}\n")
        return succeed(exit_status_for_signal(signal.SIGINT))
    except OSError as e:  # --help, config show... when standard output takes no more
        status = output_lost(e, stderr, reader_language())
        if status is None:
            raise
        return succeed(status)

    def failed(failure: Failure) -> int:
        status = output_lost(failure.value, stderr, language)
        if status is not None:
            return status
        if failure.check(EpopError):
            stderr.write(f"epop: {failure.value.render(language)}\n")
        else:
            unexpected = Text("unexpected error: {why}", why=failure.getErrorMessage())
            stderr.write(f"epop: {unexpected.render(language)}\n")
            stderr.write(failure.getTraceback())
        return EXIT_FAILED

    def settled(code: int) -> int:
        interruption.settle(code)
        return code

    d = outcome if isinstance(outcome, Deferred) else succeed(outcome)
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


def _quiet_if_stdout_closed(status: int, language: str = "en") -> int:
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
        found = output_lost(e, sys.stderr, language)
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
    raise SystemExit(_quiet_if_stdout_closed(status, choose_language(os.environ, language_asked(args)))) from None
