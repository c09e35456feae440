"""
The C{[epop]} settings files, the relay's (C{twistd epop --config}) and the
workstation's (C{epop config}): one syntax, one reader, one error type.

The syntax is the INI subset both document: one C{[epop]} section,
C{key = value} lines, comment lines starting with C{#} or C{;}, and indented
continuation lines that add a line to the value above (the relay's
repeatable keys take one value a line).  Keys are case-insensitive; a UTF-8
byte order mark, as Notepad writes, is ignored.

What each mistake is called differs by audience (the relay's administrator
reads "key", the workstation's user "setting"), so each caller gives its
L{Wording}; what is a mistake, and which line it is on, is decided here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epop.messages import Text, reason_of, system_reason

__all__ = [
    "SECTION",
    "Setting",
    "SettingsError",
    "ValueLineError",
    "Wording",
    "read_section",
    "where",
    "where_text",
]

SECTION = "epop"

_COMMENT = ("#", ";")


class SettingsError(ValueError):
    """A setting or settings file that cannot be used; the message says where and why."""


class ValueLineError(ValueError):
    """
    A mistake on one line of a value that spans several: the message is put
    after that line's number rather than the key's.

    @ivar index: the line, counted from 0 (the key's own line) in the value
        the check was given.
    """

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Wording:
    """
    The messages of one kind of settings file, as C{str.format} templates,
    or as L{Text} templates (without parameters) to be told in the reader's
    language.

    Every template may use C{{path}}; those about one line also C{{where}}
    (the path and line), C{{text}} (the line, stripped) and C{{name}} (a
    section's name); C{key_twice} uses C{{key}} and C{{first}} (the line
    where the key was first given).
    """

    #: The file cannot be read: C{{reason}} says why.
    unreadable: str | Text
    #: The file is not UTF-8: C{{byte}} is where.
    not_utf8: str | Text
    before_section: str | Text
    other_section: str | Text
    section_twice: str | Text
    not_key_value: str | Text
    key_twice: str | Text
    #: A file without the section; C{None}: it holds no settings, and that is fine.
    no_section: str | Text | None


@dataclass(frozen=True)
class Setting:
    """One key of the section, with its value as the caller checked it."""

    key: str
    line: int
    value: Any


def where(path: str | Path, line: int | None) -> str:
    """The file and line, for messages."""
    return f"{path}, line {line}" if line else str(path)


def where_text(path: str | Path, line: int | None) -> Text:
    """The file and line, for messages in the reader's language."""
    return Text("{path}, line {line}", path=str(path), line=line) if line else Text.literal(str(path))


def _message(template: str | Text, path: str | Path, line: int | None = None, **fields: Any) -> str | Text:
    """One of a L{Wording}'s messages: a L{Text} when its template is one."""
    if isinstance(template, Text):
        return Text(template.template, path=str(path), where=where_text(path, line), **fields)
    return template.format(path=path, where=where(path, line), **fields)


def read_section(
    path: str | Path,
    wording: Wording,
    check: Callable[[str, str], Any],
    *,
    missing_ok: bool = False,
) -> list[Setting] | None:
    """
    Read the C{[epop]} section of C{path}, in the order of its lines.

    @param check: takes a key and its value (lines joined with newlines,
        each stripped) and returns what to keep, or raises L{ValueError}
        saying what is wrong: the message is put after the file and line
        (of the key, or the value's line a L{ValueLineError} names).
    @param missing_ok: a missing file is C{None} rather than an error.
    @raise SettingsError: at the first mistake, in the order of the lines.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as e:
        if missing_ok:
            return None
        raise SettingsError(_message(wording.unreadable, path, reason=system_reason(e))) from None
    except OSError as e:
        raise SettingsError(_message(wording.unreadable, path, reason=system_reason(e))) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SettingsError(_message(wording.not_utf8, path, byte=e.start)) from None
    return _Reader(str(path), wording, check).read(text)


class _Reader:
    """One pass over the lines, keeping the key whose value is being read."""

    def __init__(self, path: str, wording: Wording, check: Callable[[str, str], Any]) -> None:
        self.path = path
        self.wording = wording
        self.check = check
        self.found: list[Setting] = []
        self.first_line: dict[str, int] = {}
        # The key being read: its name, line, indentation, value lines and
        # their numbers in the file.
        self.key: str | None = None
        self.key_line = 0
        self.indent = 0
        self.lines: list[str] = []
        self.numbers: list[int] = []

    def fail(self, template: str | Text, number: int, **fields: Any) -> SettingsError:
        return SettingsError(_message(template, self.path, number, **fields))

    def read(self, text: str) -> list[Setting]:
        in_section = seen_section = False
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if line.startswith(_COMMENT):
                continue
            if not line:
                if self.key is not None:
                    self.lines.append("")
                    self.numbers.append(number)
                continue
            indent = len(raw) - len(raw.lstrip())
            if self.key is not None and indent > self.indent:
                self.lines.append(line)
                self.numbers.append(number)
                continue
            self.finish()
            if line.startswith("["):
                name = line[1:-1].strip() if line.endswith("]") else None
                if name is None:
                    raise self.fail(self.wording.not_key_value, number, text=line)
                if name != SECTION:
                    raise self.fail(self.wording.other_section, number, text=line, name=name)
                if seen_section:
                    raise self.fail(self.wording.section_twice, number, text=line, name=name)
                in_section = seen_section = True
                continue
            if not in_section:
                raise self.fail(self.wording.before_section, number, text=line)
            key, equals, value = line.partition("=")
            key = key.strip().lower()
            if not equals or not key:
                raise self.fail(self.wording.not_key_value, number, text=line)
            if key in self.first_line:
                raise self.fail(
                    self.wording.key_twice, number, key=key, first=self.first_line[key]
                )
            self.first_line[key] = number
            self.key, self.key_line, self.indent = key, number, indent
            self.lines, self.numbers = [value.strip()], [number]
        self.finish()
        if not seen_section and self.wording.no_section is not None:
            raise SettingsError(_message(self.wording.no_section, self.path))
        return self.found

    def finish(self) -> None:
        """Check the key just read, now that its value is whole."""
        if self.key is None:
            return
        key, self.key = self.key, None
        while self.lines and not self.lines[-1]:
            self.lines.pop()
        try:
            value = self.check(key, "\n".join(self.lines))
        except ValueError as e:
            line = self.key_line
            if isinstance(e, ValueLineError) and 0 <= e.index < len(self.numbers):
                line = self.numbers[e.index]
            where = where_text(self.path, line)
            raise SettingsError(Text("{where}: {reason}", where=where, reason=reason_of(e))) from None
        self.found.append(Setting(key, self.key_line, value))
