"""
The extra form fields of C{epop send} (C{-F NAME=VALUE}).

e-PMSI's form wants the user's password (C{userPwd}); typed on the command
line it would stay in the shell's history and show in the process list.
So a value can also be read, as curl reads C{-F NAME=<FILE}, from a file
(C{-F userPwd=<FILE}) or from standard input (C{-F userPwd=<-}): its first
line, without the line end.  Errors name the field and the file, never the
value.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from twisted.python import usage

from epop.messages import Text, system_reason

__all__ = ["FormField", "read_form_fields"]

STANDARD_INPUT = "-"


@dataclass(frozen=True)
class FormField:
    """One C{-F}: a value given, or the file (C{-} for standard input) that holds it."""

    name: str
    value: str = ""
    source: str | None = None

    @classmethod
    def parse(cls, text: str) -> FormField:
        """C{NAME=VALUE} or C{NAME=<FILE}, or a usage error that does not repeat the value."""
        name, sep, value = text.partition("=")
        if not sep:
            raise usage.UsageError(Text("-F {text}: expected NAME=VALUE or NAME=<FILE", text=repr(text)))
        if not name:
            raise usage.UsageError(Text("-F =...: the form field has no name (expected NAME=VALUE)"))
        if not value:
            # Most likely -F userPwd=<FILE unquoted: the shell took "<FILE" as a redirection.
            raise usage.UsageError(
                Text("-F {name}=: the value is empty; to read it from a file, quote it: "
                     "-F '{name}=<FILE' (unquoted, the shell takes < as a redirection)", name=name)
            )
        if not value.startswith("<"):
            return cls(name, value)
        if value == "<":
            raise usage.UsageError(
                Text("-F {name}=<: give the file to read the value from, or - for standard input", name=name)
            )
        return cls(name, source=value[1:])

    def read(self, stdin: TextIO | None, language: str = "en") -> str:
        """
        The value: given, or the first line of its file or of standard input
        (asked for in C{language} on a terminal).
        """
        if self.source is None:
            return self.value
        if self.source == STANDARD_INPUT:
            where = Text("standard input")
            if stdin is not None and stdin.isatty():
                try:
                    line = getpass.getpass(Text("{name} (not shown): ", name=self.name).render(language))
                except EOFError:  # Ctrl-D at the prompt: nothing typed
                    line = ""
            else:
                line = stdin.readline() if stdin is not None else ""
        else:
            where = Text.literal(self.source)
            line = self._first_line()
        value = line.rstrip("\r\n")
        if not value:
            raise usage.UsageError(
                Text("-F {name}=<{source}: the first line of {where} is empty", name=self.name,
                     source=self.source, where=where)
            )
        return value

    def _first_line(self) -> str:
        assert self.source is not None
        try:
            with open(self.source, encoding="utf-8") as f:
                return f.readline()
        except OSError as e:
            why: Text = system_reason(e)
        except UnicodeDecodeError:
            why = Text("it is not UTF-8 text")
        raise usage.UsageError(
            Text("-F {name}=<{source}: cannot read {source}: {why}", name=self.name, source=self.source, why=why)
        )


def read_form_fields(
    fields: Sequence[FormField], stdin: TextIO | None, language: str = "en"
) -> list[tuple[str, str]]:
    """Every field's (name, value), reading files and standard input now."""
    from_stdin = [field.name for field in fields if field.source == STANDARD_INPUT]
    if len(from_stdin) > 1:
        raise usage.UsageError(
            Text("-F {names}: standard input can give only one value (NAME=<-)", names=", ".join(from_stdin))
        )
    return [(field.name, field.read(stdin, language)) for field in fields]
