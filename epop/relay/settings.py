"""
The relay's settings file: C{twistd epop --config relay.ini}.

One C{[epop]} section whose keys are the long options without their dashes
(C{listen}, C{idle-timeout}, C{require-tls}...).  The keys are read off the
twistd options class itself (L{SettingKeys.of}), so an option added there is
accepted here with no change to this module.  A repeatable option takes one
value per line (INI continuation lines); a flag takes yes/no, true/false or
1/0.  The command line overrides the file, and a repeatable option given on
the command line replaces the file's list instead of adding to it.

Passwords never go in this file: the proxy password stays in
C{--proxy-password-file} or C{EPOP_PROXY_PASSWORD}.

Every mistake is a L{SettingsError} naming the file, the line when there is
one, the key and the problem, so that twistd can print it as a usage error
instead of a traceback.
"""

from __future__ import annotations

import configparser
import getopt
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.python import reflect, usage, util

from epop.relay.allowlist import Allowlist

__all__ = [
    "SECTION",
    "SettingKeys",
    "SettingsError",
    "SettingsFile",
    "command_line_keys",
    "read_settings_file",
]

SECTION = "epop"

_FLAG_VALUES = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}

#: Options that cannot be set from the file: the file itself.
_NOT_IN_FILE = frozenset({"config"})

_PASSWORD_HINT = (
    "passwords are never read from the settings file; put the proxy password "
    "in the file named by proxy-password-file, or in EPOP_PROXY_PASSWORD"
)

#: A "key = value" line at the start of a line, for line numbers in messages.
_KEY_LINE = re.compile(r"^([^\s=#;\[][^=]*?)\s*=")
_SECTION_LINE = re.compile(r"^\[([^\]]*)\]")


class SettingsError(ValueError):
    """A settings file that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class SettingKeys:
    """
    The keys a settings file may hold, taken from a twistd options class so
    that the file and the command line can never disagree.

    @ivar parameters: options that take one value, with their coerce
        function (C{None} for plain strings).
    @ivar flags: options that are on or off.
    @ivar repeatable: options given once per value (C{--listen}, C{--allow}).
    @ivar handlers: other C{opt_} methods that take one value.
    """

    parameters: Mapping[str, Callable[[str], Any] | None]
    flags: frozenset[str]
    repeatable: frozenset[str]
    handlers: frozenset[str]

    @classmethod
    def of(cls, options: usage.Options) -> SettingKeys:
        """Read the keys off C{options}: its parameters, flags and C{opt_} methods."""
        declared: list[Any] = []
        reflect.accumulateClassList(type(options), "optParameters", declared)
        parameters = {}
        for entry in declared:
            name, _short, _default, _doc, coerce = util.padTo(5, entry)
            parameters[name] = coerce
        declared = []
        reflect.accumulateClassList(type(options), "optFlags", declared)
        flags = {util.padTo(3, entry)[0] for entry in declared}
        base: dict[str, Any] = {}
        reflect.addMethodNamesToDict(usage.Options, base, "opt_")
        methods: dict[str, Any] = {}
        reflect.addMethodNamesToDict(type(options), methods, "opt_")
        repeatable, handlers = set(), set()
        for method_name in methods:
            if method_name in base:
                continue  # --help, --version
            name = method_name.replace("_", "-")
            method = getattr(options, "opt_" + method_name)
            if usage.flagFunction(method, method_name):
                flags.add(name)
            elif isinstance(options.get(name), list):
                repeatable.add(name)
            else:
                handlers.add(name)
        for name in _NOT_IN_FILE:
            parameters.pop(name, None)
            flags.discard(name)
            handlers.discard(name)
        return cls(parameters, frozenset(flags), frozenset(repeatable), frozenset(handlers))

    def names(self) -> list[str]:
        """Every accepted key, sorted, for messages."""
        return sorted({*self.parameters, *self.flags, *self.repeatable, *self.handlers})


@dataclass(frozen=True)
class SettingsFile:
    """
    A settings file, read and checked.

    @ivar values: each key present, with its value: C{str} or the coerced
        type for a parameter, C{bool} for a flag, a tuple of C{str} for a
        repeatable option.
    @ivar lines: the line of each key, for messages about it.
    """

    path: str
    values: Mapping[str, Any]
    lines: Mapping[str, int]

    @property
    def allow(self) -> tuple[str, ...]:
        """The file's allowlist; empty (everyone) when the key is absent."""
        return tuple(self.values.get("allow", ()))

    def where(self, key: str) -> str:
        """The file and line of C{key}, for messages."""
        return _where(self.path, self.lines.get(key))

    def changed(self, other: SettingsFile) -> list[str]:
        """Keys whose value differs in C{other}, sorted."""
        keys = set(self.values) | set(other.values)
        return sorted(k for k in keys if self.values.get(k) != other.values.get(k))


def _where(path: str, line: int | None) -> str:
    return f"{path}, line {line}" if line else path


def _key_lines(text: str) -> dict[str, int]:
    """Where each key of the [epop] section is, as configparser keeps no lines."""
    found: dict[str, int] = {}
    section = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _SECTION_LINE.match(line)
        if header:
            section = header.group(1).strip()
            continue
        key = _KEY_LINE.match(line)
        if key and section == SECTION:
            found.setdefault(key.group(1).strip().lower(), number)
    return found


def _parse(path: str, text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None,
        strict=True,
        delimiters=("=",),
        # No DEFAULT section: a [DEFAULT] header is as unknown as any other.
        default_section="\x00",
    )
    try:
        parser.read_string(text, source=path)
    except configparser.MissingSectionHeaderError as e:
        raise SettingsError(
            f"{_where(path, e.lineno)}: the settings must come after an [{SECTION}] header"
        ) from None
    except configparser.DuplicateSectionError as e:
        raise SettingsError(
            f"{_where(path, e.lineno)}: the section [{e.section}] is given twice"
        ) from None
    except configparser.DuplicateOptionError as e:
        raise SettingsError(
            f"{_where(path, e.lineno)}: {e.option}: the key is given twice; give a "
            "repeatable key's values one per line, indented, under a single key"
        ) from None
    except configparser.ParsingError as e:
        line = e.errors[0][0]
        lines = text.splitlines()
        content = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        raise SettingsError(
            f"{_where(path, line)}: cannot read {content!r}: expected 'key = value', an "
            "indented continuation line, a [section] header or a # comment"
        ) from None
    return parser


def _number(value: str, coerce: Callable[[str], Any]) -> Any:
    try:
        number = coerce(value)
    except (ValueError, TypeError):
        raise ValueError(f"{value!r} is not a number") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"{value!r} is not a number")
    return number


def _value(
    key: str,
    items: list[str],
    keys: SettingKeys,
    check_endpoint: Callable[[str], None] | None,
) -> Any:
    """Check and convert one key's value; ValueError says what is wrong."""
    if key in keys.repeatable:
        if key == "allow":
            Allowlist(items)
        if key == "listen" and check_endpoint is not None:
            for description in items:
                check_endpoint(description)
        return tuple(items)
    if len(items) > 1:
        raise ValueError(f"takes one value, not {len(items)} lines")
    if not items:
        raise ValueError("has no value; leave the key out to get the default")
    [value] = items
    if key in keys.flags:
        try:
            return _FLAG_VALUES[value.lower()]
        except KeyError:
            raise ValueError(
                f"{value!r} is not yes or no (yes, no, true, false, 1 or 0)"
            ) from None
    coerce = keys.parameters.get(key)
    if coerce in (float, int):
        return _number(value, coerce)
    if coerce is not None:
        return coerce(value)
    return value


def read_settings_file(
    path: str,
    keys: SettingKeys,
    *,
    check_endpoint: Callable[[str], None] | None = None,
) -> SettingsFile:
    """
    Read and check a settings file.

    @param keys: what the file may hold (L{SettingKeys.of} the options).
    @param check_endpoint: raises L{ValueError} for a C{listen} value that
        is not an endpoint string (it needs a reactor, which this module
        does not import).
    @raise SettingsError: naming the file, line, key and problem.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as e:
        raise SettingsError(f"cannot read the settings file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"cannot read the settings file {path}: it is not UTF-8 text") from None
    parser = _parse(path, text)
    lines = _key_lines(text)
    others = [name for name in parser.sections() if name != SECTION]
    if others:
        raise SettingsError(
            f"{path}: unknown section [{others[0]}]; the settings file has a single "
            f"[{SECTION}] section"
        )
    if not parser.has_section(SECTION):
        raise SettingsError(f"{path}: no [{SECTION}] section; the settings go under an [{SECTION}] header")
    valid = set(keys.names())
    values: dict[str, Any] = {}
    for key, raw in parser.items(SECTION):
        where = _where(path, lines.get(key))
        if "password" in key and key not in valid:
            raise SettingsError(f"{where}: {key}: {_PASSWORD_HINT}")
        if key not in valid:
            raise SettingsError(
                f"{where}: unknown key {key!r}; valid keys are: {', '.join(keys.names())}"
            )
        items = [line.strip() for line in raw.splitlines() if line.strip()]
        try:
            values[key] = _value(key, items, keys, check_endpoint)
        except ValueError as e:
            raise SettingsError(f"{where}: {key}: {e}") from None
    return SettingsFile(path, values, {k: v for k, v in lines.items() if k in values})


def command_line_keys(options: usage.Options, arguments: Sequence[str]) -> frozenset[str]:
    """
    The long names of the options given in C{arguments}: those override the
    settings file.  An argument list C{getopt} rejects gives the empty set,
    and C{parseOptions} then reports the mistake itself.
    """
    try:
        found, _ = getopt.getopt(list(arguments), options.shortOpt, options.longOpt)
    except getopt.GetoptError:
        return frozenset()
    names = set()
    for flag, _value in found:
        name = flag.lstrip("-")
        name = options.synonyms.get(name) or options.synonyms.get(name.replace("-", "_"), name)
        names.add(name.replace("_", "-"))
    return frozenset(names)
