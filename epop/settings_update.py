"""
Saving settings into an C{[epop]} settings file an administrator wrote by
hand (the relay's C{--config}), without losing what they wrote.

The console changes a few keys; the file also holds the administrator's
comments, blank lines, key spelling, byte order mark and line endings, and
all of that must survive: a key's value is replaced where it stands, a
removed key takes only its own lines, a new key goes at the end of the
section.  The file is written atomically (L{epop.files.write_atomically}),
keeping its mode, and read back: a file that would not read is never left
behind.

This module knows the syntax every C{[epop]} file shares
(L{epop.settings_file}); what a file may hold is its reader's business, so
the caller gives it (the relay's: L{epop.relay.saved_settings}).  A value's
type says how it is written: a flag (C{bool}) as yes/no, a list one value
per indented line, a text on the key's line.

The console's password has its own file (C{--console-password-file}),
written here too: passwords never go in the settings file.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from epop.files import write_atomically
from epop.settings_file import SECTION, SettingsError, Wording, read_section

__all__ = [
    "Change",
    "Reader",
    "read_syntax",
    "remove_password_file",
    "update_settings_file",
    "write_password_file",
]

#: What a key may be changed to: a text, a flag, a repeatable key's values,
#: or None to remove it.
Change = str | bool | Sequence[str] | None
#: Reads a settings file as its program will, raising L{SettingsError}.
Reader = Callable[[str], object]

_NEW_FILE_MODE = 0o644
_BOM = "\ufeff"
_COMMENT = ("#", ";")
_KEY_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
#: The indentation of a repeatable key's value lines, under the key.
_INDENT = "    "


#: The syntax alone: what any [epop] file must be, whatever its keys.
_SYNTAX = Wording(
    unreadable="cannot read the settings file {path}: {reason}",
    not_utf8="cannot read the settings file {path}: it is not UTF-8 text",
    before_section="{where}: the settings must come after an [" + SECTION + "] header",
    other_section="{path}: unknown section [{name}]",
    section_twice="{where}: the section [{name}] is given twice",
    not_key_value="{where}: cannot read {text!r}: expected 'key = value'",
    key_twice="{where}: {key}: the key is given twice",
    no_section=None,
)


def _raw(key: str, value: str) -> list[str]:
    """A value as its non-blank lines: how it reads back, whatever its key."""
    return [line for line in value.split("\n") if line]


def read_syntax(path: str) -> object:
    """The default L{Reader}: the shared syntax, any key."""
    return read_section(path, _SYNTAX, _raw)


@dataclass
class _Key:
    """Where a key stands: its line, and the lines of its value under it."""

    name: str
    line: int
    values: list[int]


class _Lines:
    """The file's lines, each with its own ending, and where each key is."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines(keepends=True)
        self.section: int | None = None
        self.keys: dict[str, _Key] = {}
        #: The last line that is neither blank nor a comment, in the section.
        self.last = -1
        current: _Key | None = None
        indent = 0
        for index, raw in enumerate(self.lines):
            line = raw.strip()
            if not line or line.startswith(_COMMENT):
                continue
            here = len(raw) - len(raw.lstrip())
            if current is not None and here > indent:
                current.values.append(index)
                self.last = index
                continue
            current = None
            if line.startswith("["):
                self.section = index
                self.last = index
                continue
            key = line.partition("=")[0].strip().lower()
            current = self.keys[key] = _Key(key, index, [])
            indent = here
            self.last = index

    def ending(self) -> str:
        """The file's line ending: its first line's, LF for a new file."""
        for line in self.lines:
            if line.endswith("\r\n"):
                return "\r\n"
            if line.endswith("\n"):
                return "\n"
        return "\n"


def _check_change(key: str, value: Change) -> None:
    """Refuse what could not be written safely, naming the key."""
    if not isinstance(key, str) or not _KEY_NAME.fullmatch(key):
        raise ValueError(f"{key!r} is not a settings key name (lowercase letters, digits, dashes)")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_text(key, value)
        return
    if not isinstance(value, Sequence):
        raise ValueError(f"{key}: {value!r} is not a text, a flag or a list of texts")
    for entry in value:
        _check_text(key, entry)
        if entry.startswith(_COMMENT):
            raise ValueError(f"{key}: {entry!r} would read as a comment")


def _check_text(key: str, value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{key}: {value!r} is not a text")
    if not value.strip():
        raise ValueError(f"{key}: the value is empty; remove the key instead (None)")
    if value.splitlines() != [value]:
        raise ValueError(f"{key}: a value cannot hold a line break")
    if value != value.strip():
        raise ValueError(f"{key}: {value!r} starts or ends with spaces, which would be lost")


def _key_lines(key: str, value: Change, found: _Key | None, lines: list[str],
               newline: str) -> list[str]:
    """The lines that say C{key = value}, in the file's style where it has the key."""
    if found is not None:
        raw = lines[found.line]
        head = raw[: raw.index("=") + 1]
        indent = raw[: len(raw) - len(raw.lstrip())]
        if found.values:
            first = lines[found.values[0]]
            under = first[: len(first) - len(first.lstrip())]
        else:
            under = indent + _INDENT
    else:
        head, under = f"{key} =", _INDENT
    if isinstance(value, bool):
        return [f"{head} {'yes' if value else 'no'}{newline}"]
    if isinstance(value, str):
        return [f"{head} {value}{newline}"]
    assert value is not None
    return [f"{head}{newline}"] + [f"{under}{entry}{newline}" for entry in value]


def _expected(value: Change) -> list[str] | None:
    """The value's lines as they read back (L{_raw})."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ["yes" if value else "no"]
    if isinstance(value, str):
        return [value]
    return list(value)


def update_settings_file(
    path: str,
    changes: Mapping[str, Change],
    *,
    header: str | None = None,
    read: Reader = read_syntax,
) -> None:
    """
    Change some keys of the settings file C{path}, keeping everything else
    as the administrator wrote it.

    A key's value is replaced where it stands (a repeatable key's values one
    per indented line under it, a flag as yes/no); C{None} removes the key's
    own lines, not the comments around it; a key not in the file is added
    at the end of the section.  A missing file is created (mode 0644) with
    C{header} as comment lines; an existing one keeps its mode, and its
    owner and group where this process may keep them (as root).

    @param read: reads the file as its program will (the relay's, from
        L{epop.relay.saved_settings}); the shared syntax alone by default.
    @raise ValueError: a change that cannot be written safely, naming its key.
    @raise SettingsError: the file does not C{read} (it is left unchanged),
        or would not with these changes (it is put back as it was).
    @raise OSError: the file cannot be written.
    """
    for key, value in changes.items():
        _check_change(key, value)
    before: bytes | None = None
    mode, owner = _NEW_FILE_MODE, None
    if os.path.lexists(path):
        read(path)  # refuse a file its program would not read
        with open(path, "rb") as stream:
            before = stream.read()
            found = os.fstat(stream.fileno())
        mode, owner = stat.S_IMODE(found.st_mode), (found.st_uid, found.st_gid)
        text = before.decode("utf-8")
    else:
        text = "".join(f"# {line}".rstrip() + "\n" for line in (header or "").splitlines())
    # A symbolic link stays one: the file it names is the one replaced.
    path = os.path.realpath(path)
    bom = text.startswith(_BOM)
    data = _updated(text.removeprefix(_BOM), changes)
    write_atomically(path, ((_BOM if bom else "") + data).encode("utf-8"), mode, owner)
    try:
        _check_written(path, changes, read)
    except SettingsError:
        if before is None:
            os.unlink(path)
        else:
            write_atomically(path, before, mode, owner)
        raise


def _updated(text: str, changes: Mapping[str, Change]) -> str:
    """C{text} with C{changes} made, line by line."""
    parsed = _Lines(text)
    lines = list(parsed.lines)
    newline = parsed.ending()
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += newline
    # New keys go after the section's last key, below every key replaced;
    # then the replacements, from the bottom up, so line numbers above stay right.
    replaced: dict[int, tuple[_Key, list[str]]] = {}
    added: list[str] = []
    for key, value in changes.items():
        found = parsed.keys.get(key)
        if found is None:
            if value is not None:
                added += _key_lines(key, value, None, lines, newline)
            continue
        new = [] if value is None else _key_lines(key, value, found, lines, newline)
        replaced[found.line] = (found, new)
    if parsed.section is None:
        lines.append(f"[{SECTION}]{newline}")
        end = len(lines)
    else:
        end = parsed.last + 1
    lines[end:end] = added
    for line in sorted(replaced, reverse=True):
        found, new = replaced[line]
        for index in sorted(found.values, reverse=True):
            del lines[index]
        lines[found.line : found.line + 1] = new
    return "".join(lines)


def _check_written(path: str, changes: Mapping[str, Change], read: Reader) -> None:
    """Read the file back as its program will, and make sure it says what was saved."""
    read(path)
    found = read_section(path, _SYNTAX, _raw) or []
    values = {setting.key: setting.value for setting in found}
    for key, value in changes.items():
        if values.get(key) != _expected(value):
            raise SettingsError(
                f"{path}: {key}: the saved file reads {values.get(key)!r}, "
                f"not {_expected(value)!r}; it was put back as it was"
            )


def write_password_file(path: str, password: str) -> None:
    """
    Write a password file (C{--console-password-file}): the password on the
    first line, readable by its owner only (0600), written atomically.

    @raise ValueError: an empty password, or one holding a line break.
    """
    if not password:
        raise ValueError("the password is empty")
    if password.splitlines() != [password]:
        raise ValueError("the password cannot hold a line break")
    write_atomically(path, (password + "\n").encode("utf-8"), 0o600)


def remove_password_file(path: str) -> None:
    """Remove a password file; one already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
