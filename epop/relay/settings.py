"""
The relay's settings: what each may be, checked once, and the file they may
come from.

L{RelaySettings} checks every value when it is made, so that C{twistd epop
--...}, C{--config relay.ini} and C{make_relay_service(RelaySettings(...))}
refuse the same things with the same words (L{RelaySettingsError} names the
field; the command line puts the option in front, the file its line and key).

The settings file, C{twistd epop --config relay.ini}:

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

import ast
import copy
import getopt
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.python import reflect, usage, util

from epop.addressing import DEFAULT_PORT
from epop.epmsi.origin import DEFAULT_EPMSI_URL, EpmsiOrigin, trust_root_from_pem
from epop.epmsi.proxy import ProxyConfig
from epop.journal.writer import parse_rotate
from epop.local_tls import RelayTLS
from epop.messages import Text, reason_of, system_reason
from epop.relay import pacing
from epop.relay.allowlist import Allowlist
from epop.relay.destinations import Destinations, parse_destination
from epop.relay.http_proxy import DEFAULT_TUNNEL_IDLE_TIMEOUT
from epop.relay.limits import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_CLIENT
from epop.relay.proxy_header import HAPROXY_PREFIX, ProxyHeaderEndpoint
from epop.relay.tunnel_users import read_users
from epop.settings_file import (
    SECTION,
    SettingsError,
    ValueLineError,
    Wording,
    read_section,
    where_text,
)

__all__ = [
    "DEFAULT_LISTEN",
    "NUMBERS",
    "Number",
    "RelaySettings",
    "RelaySettingsError",
    "PortOutOfRange",
    "check_listening_port",
    "listen_endpoint",
    "prefixed",
    "SECTION",
    "SettingKeys",
    "SettingsError",
    "SettingsFile",
    "command_line_keys",
    "read_settings_file",
]

DEFAULT_LISTEN = f"tcp:{DEFAULT_PORT}"


class RelaySettingsError(SettingsError):
    """
    A relay setting that cannot work.

    @ivar field: the L{RelaySettings} field, e.g. C{idle_timeout}.
    @ivar problem: what is wrong, naming the value, e.g. "expected a positive
        number of seconds, not 0" (C{str()} of it is the English).
    """

    def __init__(
        self, field: str, problem: Text | str, *, command_line: Text | str | None = None
    ) -> None:
        self.problem = problem if isinstance(problem, Text) else Text.literal(problem)
        super().__init__(prefixed(field, self.problem))
        self.field = field
        self._command_line = command_line

    @property
    def key(self) -> str:
        """The option, and settings file key, that sets the field."""
        return self.field.replace("_", "-")

    @property
    def command_line(self) -> Text:
        """The message for C{twistd epop}: C{--OPTION: problem}."""
        if self._command_line is None:
            return prefixed(f"--{self.key}", self.problem)
        return self._command_line if isinstance(self._command_line, Text) else Text.literal(self._command_line)


def prefixed(name: str, problem: Text | str) -> Text:
    """C{name: problem}, or C{name must...} (C{needs...}) when the problem ends a sentence."""
    problem = problem if isinstance(problem, Text) else Text.literal(problem)
    if str(problem).startswith(("must ", "needs ")):
        return Text("{name} {problem}", name=name, problem=problem)
    return Text("{name}: {problem}", name=name, problem=problem)


@dataclass(frozen=True)
class Number:
    """
    What a numeric setting may be: the command line and the settings file
    read it from text (L{parse}), the Python API checks the value (L{check}),
    and both say the same thing about a bad one.
    """

    kind: type[int] | type[float]
    #: What a valid value is, e.g. "a positive number of seconds".
    expected: Text
    #: What 0 means, if 0 is allowed (e.g. "no limit").
    zero: Text | None = None

    def __call__(self, text: str) -> int | float:
        """Read C{text}; the C{ValueError} names no option (the caller does)."""
        try:
            number = self.kind(text)
        except ValueError:
            raise ValueError(self._problem(repr(text))) from None
        if not self._allows(number):
            raise ValueError(self._problem(repr(text)))
        return number

    def check(self, value: object) -> None:
        """Refuse a value of the wrong type or out of range."""
        kinds = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not self._allows(value):
            raise ValueError(self._problem(repr(value)))

    def _allows(self, number: float) -> bool:
        return 0 <= number < math.inf and (number != 0 or self.zero is not None)

    def _problem(self, shown: str) -> Text:
        if self.zero is None:
            return Text("expected {expected}, not {shown}", expected=self.expected, shown=shown)
        return Text(
            "expected {expected}, not {shown} (0: {zero})", expected=self.expected, shown=shown, zero=self.zero
        )


_SECONDS = Number(float, Text("a positive number of seconds"))
_CHECKS = Number(int, Text("a whole number of checks a minute"), zero=Text("no limit"))
_CONNECTIONS = Number(int, Text("a whole number of connections"), zero=Text("no limit"))

#: Every numeric field of L{RelaySettings}, with what it may be.
NUMBERS: Mapping[str, Number] = {
    "idle_timeout": _SECONDS,
    "epmsi_timeout": _SECONDS,
    "connect_timeout": _SECONDS,
    "hello_timeout": _SECONDS,
    "frame_timeout": _SECONDS,
    "upload_min_rate": Number(float, Text("a number of bytes per second"), zero=Text("no minimum")),
    "upload_grace": _SECONDS,
    "checks_per_connection": _CHECKS,
    "checks_per_client": _CHECKS,
    "drain_seconds": Number(float, Text("a number of seconds"), zero=Text("abort at once")),
    "journal_keep": Number(int, Text("a whole number of rotated files"), zero=Text("keep all")),
    "max_connections": _CONNECTIONS,
    "max_connections_per_client": _CONNECTIONS,
    "tunnel_idle_timeout": _SECONDS,
}


def listen_endpoint(reactor: Any, description: str, language: str = "en") -> IStreamServerEndpoint:
    """
    The endpoint for a C{listen} string.  C{haproxy:} strings read the PROXY
    header with L{ProxyHeaderEndpoint}, which checks the addresses it gives,
    instead of Twisted's reader, and logs its refusals in C{language}.

    @raise ValueError: for a string that names no endpoint, saying why in
        words for the administrator rather than Twisted's parser's.
    """
    inner = description[len(HAPROXY_PREFIX) :] if description.startswith(HAPROXY_PREFIX) else description
    try:
        endpoint = serverFromString(reactor, inner)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(_endpoint_problem(inner, e)) from None
    except OSError as e:  # ssl: reads its certificate when parsed
        raise ValueError(
            Text("cannot read {file}: {why}", file=e.filename or Text("its certificate"), why=system_reason(e))
        ) from None
    check_listening_port(endpoint)
    return ProxyHeaderEndpoint(endpoint, language) if inner is not description else endpoint


class PortOutOfRange(ValueError):
    """An endpoint string's port that no socket can have."""


def check_listening_port(endpoint: IStreamServerEndpoint) -> None:
    """
    Refuse a port outside 0-65535 (0: the system chooses).  Twisted's parser
    takes any whole number, and only C{bind()} would refuse it, in its own
    English words and once the other ports have started.

    @raise PortOutOfRange: saying what a port may be.
    """
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise PortOutOfRange(Text("the port must be a number from 0 to 65535"))


#: Twisted's parser's messages, and what to say instead.
_NOT_A_NUMBER = re.compile(r"invalid literal for int\(\) with base 10: (?P<value>.*)")
_UNKNOWN_TYPE = re.compile(r"Unknown endpoint type: (?P<value>.*)")
_UNKNOWN_PARAMETER = re.compile(r".*got an unexpected keyword argument (?P<value>.*)")
_MISSING = re.compile(r".*missing \d+ required positional arguments?: (?P<value>.*)")
_TOO_MANY = re.compile(r".*takes .* positional arguments? but \d+ (were|was) given")
_TYPES = Text("tcp:PORT, tcp6:PORT, unix:PATH or ssl:PORT, optionally after haproxy:")


def _endpoint_problem(description: str, error: Exception) -> Text:
    """What is wrong with an endpoint string, from Twisted's parser's C{error}."""
    text = str(error)
    if match := _NOT_A_NUMBER.fullmatch(text):
        value = _literal(match["value"])
        fields = description.split(":")
        if fields[1:2] == [value] or f"port={value}" in fields:
            return Text("the port {value!r} is not a number", value=value)
        return Text("{value!r} is not a number", value=value)
    if match := _UNKNOWN_TYPE.fullmatch(text):
        return Text("unknown endpoint type {value!r}: expected {types}", value=_literal(match["value"]), types=_TYPES)
    if match := _UNKNOWN_PARAMETER.fullmatch(text):
        return Text("unknown parameter {value!r}", value=_literal(match["value"]))
    if match := _MISSING.fullmatch(text):
        return Text("no {value} given", value=match["value"].replace(chr(39), ""))
    if _TOO_MANY.fullmatch(text):
        return Text("too many fields separated by ':'")
    return Text.literal(text)


def _literal(text: str) -> str:
    """The value Twisted's message quotes with repr, as it was typed."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, str) else text


@dataclass(frozen=True)
class RelaySettings:
    """
    Everything an administrator chooses about a relay, checked when made.

    @raise RelaySettingsError: for a value that cannot work, naming its field.
    """

    listen: Sequence[str] = (DEFAULT_LISTEN,)
    epmsi: str = DEFAULT_EPMSI_URL
    ca_file: str | None = None
    journal: str = "epop-journal.jsonl"
    #: None (one file, never rotated), "daily" or a size such as "100M".
    journal_rotate: str | None = None
    #: Rotated journal files kept; 0 keeps them all.
    journal_keep: int = 30
    allow: Sequence[str] = ()
    idle_timeout: float = 120.0
    epmsi_timeout: float = 300.0
    connect_timeout: float = 30.0
    #: Seconds a workstation has to send its whole HELLO, from its first byte.
    hello_timeout: float = pacing.DEFAULT_HELLO_TIMEOUT
    #: Seconds a control frame has to arrive whole, from its first byte.
    frame_timeout: float = pacing.DEFAULT_FRAME_TIMEOUT
    #: Bytes per second an upload must average after upload_grace (0: none).
    upload_min_rate: float = pacing.DEFAULT_UPLOAD_MIN_RATE
    upload_grace: float = pacing.DEFAULT_UPLOAD_GRACE
    #: e-PMSI checks a minute per connection, and per client address (0: no limit).
    checks_per_connection: int = pacing.DEFAULT_CHECKS_PER_CONNECTION
    checks_per_client: int = pacing.DEFAULT_CHECKS_PER_CLIENT
    proxy: ProxyConfig | None = None
    tls: RelayTLS | None = None
    check_at_start: bool = True
    #: Listen as soon as the service starts (the original's "Lancer l'écoute
    #: à l'exécution"); if not, until L{RelayService.start_listening}.
    listen_at_start: bool = True
    check_path: str = "/"
    #: Seconds the operations in flight get to finish when the relay stops.
    drain_seconds: float = 30.0
    #: Connections served at once, in all (0: no limit).
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: Connections served at once from one client address (0: no limit).
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT
    #: More destinations for HTTP CONNECT tunnels, HOST[:PORT] (443 by default).
    tunnel_to: Sequence[str] = ()
    #: No HTTP CONNECT tunnels at all: HTTP requests are refused.
    no_tunnel: bool = False
    #: Seconds a tunnel may carry nothing, either way, before it is closed.
    tunnel_idle_timeout: float = DEFAULT_TUNNEL_IDLE_TIMEOUT
    #: An htpasswd file of bcrypt entries (htpasswd -B): tunnels then need
    #: one of its users (Proxy-Authorization: Basic).  None: no users.
    tunnel_users: str | None = None

    def __post_init__(self) -> None:
        # The types first: a rule's check may assume them.
        _check_strings("listen", self.listen, "endpoint", "tcp:3358")
        _check_strings("allow", self.allow, "address or network", "10.1.0.0/16")
        _check_type("epmsi", self.epmsi, str, "an https:// URL")
        _check_type("ca_file", self.ca_file, (str, type(None)), "the path of a PEM file, or None")
        _check_type("journal", self.journal, str, "the path of the journal")
        _check_type("journal_rotate", self.journal_rotate, (str, type(None)), "'daily', a size such as '100M', or None")
        _check_type("check_at_start", self.check_at_start, bool, "True or False")
        _check_type("listen_at_start", self.listen_at_start, bool, "True or False")
        _check_type("check_path", self.check_path, str, "a path starting with /")
        _check_type("tls", self.tls, (RelayTLS, type(None)), "a RelayTLS or None")
        _check_strings("tunnel_to", self.tunnel_to, "destination", "www.example.org:443")
        _check_type("no_tunnel", self.no_tunnel, bool, "True or False")
        _check_type("tunnel_users", self.tunnel_users, (str, type(None)), "the path of an htpasswd file, or None")
        for entry in self.tunnel_to:
            check_tunnel_to(entry)
        for description in self.listen:
            check_listen(description)
        # Their messages name what they are about: the option need not.
        _check("epmsi", EpmsiOrigin.from_url, self.epmsi, named=True)
        if self.ca_file is not None:
            _check("ca_file", trust_root_from_pem, self.ca_file, named=True)
        if not self.journal.strip():
            raise RelaySettingsError("journal", Text("expected the path of the journal, not ''"))
        if self.journal_rotate is not None:
            _check("journal_rotate", parse_rotate, self.journal_rotate)
        check_allow(self.allow)
        for name, number in NUMBERS.items():
            _check(name, number.check, getattr(self, name))
        check_proxy(self.proxy)
        if self.tunnel_users is not None:
            _check("tunnel_users", read_users, self.tunnel_users)
        if not self.check_path.startswith("/"):
            raise RelaySettingsError(
                "check_path", Text("expected a path starting with /, not {value!r}", value=self.check_path)
            )

    def destinations(self) -> Destinations:
        """Where HTTP CONNECT tunnels may go; empty with C{no_tunnel}."""
        if self.no_tunnel:
            return Destinations(None)
        origin = EpmsiOrigin.from_url(self.epmsi)
        return Destinations(
            (origin.host, origin.port), self.epmsi == DEFAULT_EPMSI_URL, self.tunnel_to
        )

    def with_allow(self, allow: Allowlist) -> RelaySettings:
        """These settings with another allowlist, already checked."""
        changed = copy.copy(self)
        object.__setattr__(changed, "allow", allow.entries)
        return changed


def _check(field: str, check: Callable[[Any], object], value: Any, *, named: bool = False) -> None:
    try:
        check(value)
    except ValueError as e:
        raise RelaySettingsError(field, reason_of(e), command_line=reason_of(e) if named else None) from None


def _check_type(field: str, value: object, kinds: type | tuple[type, ...], expected: str) -> None:
    """Refuse a value of the wrong type, which only the Python API can give."""
    if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
        raise RelaySettingsError(field, Text("expected {expected}, not {value!r}", expected=expected, value=value))


def _check_strings(field: str, values: object, item: str, example: str) -> None:
    """Refuse anything but a sequence of strings; a bare string is a common slip."""
    if isinstance(values, str):
        raise RelaySettingsError(
            field,
            Text(
                "expected a list of strings, not the string {values!r}: write [{values!r}] for a single {item}",
                values=values,
                item=item,
            ),
        )
    if not isinstance(values, Sequence) or not all(isinstance(v, str) for v in values):
        raise RelaySettingsError(
            field,
            Text("expected a list of strings such as [{example!r}], not {values!r}", example=example, values=values),
        )


def check_proxy(proxy: object) -> None:
    """
    Refuse a proxy that cannot work.  The API takes a resolved
    L{ProxyConfig}, never a URL or C{"system"}: finding this machine's proxy
    may fetch a PAC file and is done once, where the relay is set up
    (L{epop.epmsi.proxy.resolve_proxy}, as C{twistd epop --proxy} does).
    """
    if proxy is None:
        return
    if not isinstance(proxy, ProxyConfig):
        # Never the value itself: a URL may hold a password.
        raise RelaySettingsError(
            "proxy",
            Text(
                "expected a ProxyConfig or None, not a {kind}: for a URL or 'system', give the "
                "ProxyConfig that epop.epmsi.proxy.resolve_proxy returns first",
                kind=type(proxy).__name__,
            ),
        )
    try:
        proxy.check()
    except ValueError as e:
        if proxy.user and proxy.password is None:
            raise RelaySettingsError(
                "proxy", Text("{problem}: give the ProxyConfig its password", problem=reason_of(e))
            ) from None
        raise RelaySettingsError("proxy", reason_of(e)) from None


def check_listen(description: str) -> None:
    """Refuse a C{listen} string that names no endpoint, or a port no socket can have."""
    try:
        listen_endpoint(None, description)  # its syntax only: no reactor is used
    except ValueError as e:
        if isinstance(e, PortOutOfRange):
            problem = Text("{name}: {problem}", name=description, problem=reason_of(e))
        else:
            problem = Text("{description}: invalid endpoint ({reason})", description=description, reason=reason_of(e))
        raise RelaySettingsError(
            "listen", problem, command_line=Text("--listen {problem}", problem=problem)
        ) from None


def check_tunnel_to(entry: str) -> None:
    """Refuse a C{tunnel_to} entry that is not C{HOST[:PORT]}."""
    try:
        parse_destination(entry)
    except ValueError as e:
        raise RelaySettingsError("tunnel_to", reason_of(e)) from None


def check_allow(entries: Sequence[str]) -> Allowlist:
    """The allowlist of C{entries}, or the error that names the bad one."""
    try:
        return Allowlist(entries)
    except ValueError as e:
        problem = reason_of(e)
        if any("," in entry or len(entry.split()) > 1 for entry in entries):
            # Several entries on one line, as other products' lists are written.
            problem = Text(
                "{problem}; one address or network per line (indented under allow =), or repeat --allow",
                problem=problem,
            )
        raise RelaySettingsError("allow", problem) from None


_FLAG_VALUES = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}

#: Options that cannot be set from the file: the file itself.
_NOT_IN_FILE = frozenset({"config"})

_PASSWORD_HINT = Text(
    "passwords are never read from the settings file; put the proxy password "
    "in the file named by proxy-password-file, or in EPOP_PROXY_PASSWORD"
)

#: How the relay's settings file words each mistake (L{epop.settings_file}).
_WORDING = Wording(
    unreadable=Text("cannot read the settings file {path}: {reason}"),
    not_utf8=Text("cannot read the settings file {path}: it is not UTF-8 text"),
    before_section=Text("{where}: the settings must come after an [epop] header"),
    other_section=Text("{path}: unknown section [{name}]; the settings file has a single [epop] section"),
    section_twice=Text("{where}: the section [{name}] is given twice"),
    not_key_value=Text(
        "{where}: cannot read {text!r}: expected 'key = value', an indented continuation "
        "line, a [section] header or a # comment"
    ),
    key_twice=Text(
        "{where}: {key}: the key is given twice; give a repeatable key's values one per "
        "line, indented, under a single key"
    ),
    no_section=Text("{path}: no [epop] section; the settings go under an [epop] header"),
)


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

    def where(self, key: str) -> Text:
        """The file and line of C{key}, for messages."""
        return where_text(self.path, self.lines.get(key))

    def changed(self, other: SettingsFile) -> list[str]:
        """Keys whose value differs in C{other}, sorted."""
        keys = set(self.values) | set(other.values)
        return sorted(k for k in keys if self.values.get(k) != other.values.get(k))


def _number(value: str, coerce: Callable[[str], Any]) -> Any:
    try:
        number = coerce(value)
    except (ValueError, TypeError):
        raise ValueError(Text("{value!r} is not a number", value=value)) from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(Text("{value!r} is not a number", value=value))
    return number


#: How the file checks each entry of a repeatable key, one line at a time.
_ENTRY_CHECKS: Mapping[str, Callable[[str], object]] = {
    "allow": lambda entry: check_allow([entry]),
    "listen": check_listen,
    "tunnel-to": check_tunnel_to,
}


def _value(key: str, lines: list[tuple[int, str]], keys: SettingKeys) -> Any:
    """
    Check and convert one key's value, given as its non-blank lines with
    their index in the value; ValueError says what is wrong (a
    L{ValueLineError} on which line).
    """
    items = [text for _index, text in lines]
    if key in keys.repeatable:
        entry_check = _ENTRY_CHECKS.get(key)
        for index, text in lines:
            try:
                if entry_check is not None:
                    entry_check(text)
            except RelaySettingsError as e:
                raise ValueLineError(e.problem, index) from None
        return tuple(items)
    if len(items) > 1:
        raise ValueError(Text("takes one value, not {count} lines", count=len(items)))
    if not items:
        raise ValueError(Text("has no value; leave the key out to get the default"))
    [value] = items
    if key in keys.flags:
        try:
            return _FLAG_VALUES[value.lower()]
        except KeyError:
            raise ValueError(
                Text("{value!r} is not yes or no (yes, no, true, false, 1 or 0)", value=value)
            ) from None
    coerce = keys.parameters.get(key)
    if coerce in (float, int):
        return _number(value, coerce)
    if coerce is not None:
        return coerce(value)
    return value


def read_settings_file(path: str, keys: SettingKeys) -> SettingsFile:
    """
    Read and check a settings file.

    @param keys: what the file may hold (L{SettingKeys.of} the options).
    @raise SettingsError: naming the file, line, key and problem.
    """
    valid = set(keys.names())

    def check(key: str, raw: str) -> Any:
        if "password" in key and key not in valid:
            raise ValueError(Text("{key}: {problem}", key=key, problem=_PASSWORD_HINT))
        if key not in valid:
            raise ValueError(
                Text("unknown key {key!r}; valid keys are: {keys}", key=key, keys=", ".join(keys.names()))
            )
        lines = [(i, line.strip()) for i, line in enumerate(raw.split("\n")) if line.strip()]
        try:
            return _value(key, lines, keys)
        except ValueLineError as e:
            raise ValueLineError(Text("{key}: {problem}", key=key, problem=reason_of(e)), e.index) from None
        except ValueError as e:
            raise ValueError(Text("{key}: {problem}", key=key, problem=reason_of(e))) from None

    found = read_section(path, _WORDING, check)
    assert found is not None
    return SettingsFile(
        path, {s.key: s.value for s in found}, {s.key: s.line for s in found}
    )


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
