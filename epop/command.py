"""
What every subcommand of C{epop} is given and gives back: the base of its
options, one run's context (reactor, streams, environment, language), and
the exit statuses.

It sits apart from L{epop.cli} so that each role's commands
(L{epop.workstation.commands}, L{epop.journal.commands}, ...) can use it
while L{epop.cli} lists them all.
"""

from __future__ import annotations

import errno
import getopt
import math
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

from twisted.python import usage

from epop._version import __version__
from epop.help import TranslatedHelp
from epop.messages import Text, language_asked
from epop.secret_options import refuse_abbreviated_secrets

if TYPE_CHECKING:
    from epop.cli import Interruption
    from epop.workstation.settings import ClientSettings

__all__ = [
    "EXIT_ANSWER_LOST",
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Command",
    "CommandOptions",
    "exit_status_for_signal",
    "output_lost",
    "positive_seconds",
    "usage_reason",
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


#: Errors that can only mean standard output is full (a disk, a quota).
_OUTPUT_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def output_lost(error: BaseException, stderr: TextIO, language: str = "en") -> int | None:
    """
    The exit status when C{error} means standard output takes no more:
    141, quietly, when its reader went away (C{epop journal | head}), as a
    tool killed by SIGPIPE would; 1, said in one line (in C{language}),
    when its disk is full.  C{None} for any other error.
    """
    if isinstance(error, BrokenPipeError):
        return EXIT_BROKEN_PIPE
    if isinstance(error, OSError) and error.errno in _OUTPUT_FULL:
        reason = Text("cannot write to standard output: {why}", why=error.strerror)
        stderr.write(f"epop: {reason.render(language)}\n")
        return EXIT_FAILED
    return None


#: The usage errors of getopt and of Twisted's usage.Options, which speak
#: English only: a pattern's group, if it has one, is the template's {name}.
_PARSER_WORDS: tuple[tuple[re.Pattern[str], Text], ...] = (
    (re.compile(r"option (-\S+) not recognized"), Text("option {name} not recognized")),
    (re.compile(r"option (-\S+) requires argument"), Text("option {name} requires argument")),
    (re.compile(r"option (-\S+) must not have an argument"), Text("option {name} must not have an argument")),
    (re.compile(r"option (-\S+) not a unique prefix"), Text("option {name} not a unique prefix")),
    (re.compile(r"No such option '(.*)'"), Text("No such option '{name}'")),
    (re.compile(r"Unknown command: (.*)"), Text("Unknown command: {name}")),
    (re.compile(r"Parameter '(.*)' requires an argument\."), Text("Parameter '{name}' requires an argument.")),
    (re.compile(r"Wrong number of arguments\."), Text("Wrong number of arguments.")),
)


def positive_seconds(name: str, value: object) -> float:
    """An option's value as a finite, positive number of seconds, or a usage error naming it."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise usage.UsageError(Text("--{name}: expected a positive number of seconds, not {value}", name=name, value=repr(value)))
    return seconds


def usage_reason(error: BaseException) -> Text:
    """
    A usage or settings error for a person: its L{Text}, or the parser's
    known English words made a L{Text}, so that all of them can be French.
    """
    if error.args and isinstance(error.args[0], Text):
        return error.args[0]
    words = str(error)
    for pattern, text in _PARSER_WORDS:
        found = pattern.fullmatch(words)
        if found:
            return Text(text.template, name=found.group(1)) if pattern.groups else text
    return Text.literal(words)


class CommandOptions(TranslatedHelp):
    """Our version, file arguments before or after the options, help in the reader's language."""

    #: Options whose value is a secret or the file of one: never abbreviated.
    secret_options: tuple[str, ...] = ()

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"epop {__version__}")
        sys.exit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        # usage.Options stops at the first argument, but people type
        # "epop send FILE --relay HOST" as the synopsis shows it.
        argv = sys.argv[1:] if options is None else options
        refuse_abbreviated_secrets(argv, self, self.secret_options, anywhere=True)
        # With subcommands, the options end at the subcommand's name: the rest are its own.
        stop_at_argument = "+" if getattr(self, "subCommands", None) else ""
        try:
            found, args = getopt.gnu_getopt(argv, stop_at_argument + self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            if e.opt == "lang":
                raise usage.UsageError(self._lang_goes_first(argv)) from None
            raise usage.UsageError(usage_reason(e)) from None
        reordered: list[str] = []
        for name, value in found:
            takes_value = (
                name[2:] + "=" in self.longOpt
                if name.startswith("--")
                else name[1] + ":" in self.shortOpt
            )
            reordered.extend([name, value] if takes_value else [name])
        try:
            super().parseOptions(reordered + ["--"] + args)
        except usage.UsageError as e:
            if str(e) != "Wrong number of arguments.":
                raise
            # Twisted's words alone do not say which arguments: the synopsis does.
            raise usage.UsageError(
                Text("wrong number of arguments: {synopsis}", synopsis=self.command_synopsis())
            ) from None

    def _lang_goes_first(self, argv: list[str]) -> Text:
        """C{epop test --lang en}: C{--lang} is C{epop}'s own option, given before the command."""
        words: list[str] = []
        options: Any = self
        while options.parent is not None:
            words.insert(0, options.parent.subCommand)
            options = options.parent
        example = " ".join(["epop", "--lang", language_asked(argv) or "fr|en", *words, "..."])
        return Text("--lang goes before the command: {example}", example=example)


class Command:
    """
    One run of the command, as its handler sees it: the reactor, the
    streams (standard output takes bytes, e-PMSI's answers are passed on as
    they are; standard input and error take text), the environment, the
    reader's language, the workstation's saved settings, and where signals
    go (L{epop.cli.Interruption}).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        stdin: TextIO | None,
        stdout: Any,
        stderr: TextIO,
        environ: Mapping[str, str],
        language: str,
        saved: ClientSettings,
        interruption: Interruption,
    ) -> None:
        self.reactor = reactor
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.environ = environ
        self.language = language
        self.saved = saved
        self.interruption = interruption

    def render(self, text: Text | str) -> str:
        """C{text} in the reader's language."""
        return text.render(self.language) if isinstance(text, Text) else text

    def say(self, text: Text | str) -> None:
        """One line on standard output, in the reader's language."""
        self.stdout.write(self.render(text).encode() + b"\n")

    def tell(self, text: Text | str) -> None:
        """One line on standard error, in the reader's language."""
        self.stderr.write(self.render(text) + "\n")

    def complain(self, text: Text | str) -> None:
        """One line on standard error, in the reader's language, after C{epop: }."""
        self.tell(f"epop: {self.render(text)}")
