"""
C{twistd epop}: options in, a relay service out.

Options become L{RelaySettings} at parse time, which checks them, so that a
mistake is a usage error that names the option; L{makeService} only builds
objects.  What needs the command line itself (the proxy and its password,
TLS options that go together, a journal folder twistd can write in) is
checked here.

Options may also come from a settings file (C{--config}, see
L{epop.relay.settings}); the command line overrides it.  With one, C{SIGHUP}
re-reads the file and applies its C{allow} entries to new connections
(L{RelayService.reload_allowlist}); without one, it logs that there is
nothing to reload, and the relay goes on.
"""

from __future__ import annotations

import os
import signal
import sys
import unicodedata
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage

from epop.command import usage_reason
from epop.console.service import DEFAULT_CONSOLE, NO_CONSOLE, ConsoleSettings, make_console_service
from epop.epmsi.proxy import (
    PASSWORD_VARIABLE,
    ProxyAccountError,
    ProxyConfig,
    load_proxy_password,
    resolve_proxy,
)
from epop.epmsi.proxy_setting import is_system
from epop.errors import RelayCannotStart
from epop.help import TranslatedHelp, usage_line
from epop.local_tls import RelayTLS
from epop.messages import LANGUAGES, Text, choose_language, language_asked, log_format, reason_of
from epop.relay.own_authority import AUTO, OwnAuthorityError, coverage_for, own_authority_tls
from epop.relay.service import (
    DEFAULT_LISTEN,
    ListenError,
    RelayService,
    ReloadRefused,
    make_relay_service,
)
from epop.relay.settings import (
    NUMBERS,
    RelaySettings,
    RelaySettingsError,
    SettingKeys,
    SettingsError,
    SettingsFile,
    command_line_keys,
    prefixed,
    read_settings_file,
)
from epop.secret_options import refuse_abbreviated_secrets
from epop.tuning import keep_buffers_on_heap

if TYPE_CHECKING:
    from epop.console.relay_backend import ConsoleFiles


class _NamedParameter(usage.CoerceParameter):
    """
    A parameter whose bad value is reported as C{--NAME: problem}, rather
    than Twisted's "Parameter type enforcement failed: problem", which does
    not say which option was wrong.
    """

    def dispatch(self, parameterName: str, value: str | None) -> None:
        if value is None:
            super().dispatch(parameterName, value)
            return
        try:
            self.options.opts[parameterName] = self.coerce(value)
        except ValueError as e:
            option = "--" + parameterName
            raise usage.UsageError(Text("{name}: {problem}", name=option, problem=reason_of(e))) from None


def _language(value: str) -> str:
    """C{--lang}: one of L{LANGUAGES}."""
    if value not in LANGUAGES:
        raise ValueError(Text("expected fr or en, not {value!r}", value=value))
    return value


class Refused(usage.UsageError):
    """
    A usage error of C{twistd epop}: twistd prints C{str()} of it, so that is
    the reason in the administrator's language; C{args[0]} is its L{Text}.
    """

    def __init__(self, reason: Text, language: str) -> None:
        super().__init__(reason)
        self.language = language

    def __str__(self) -> str:
        return self.args[0].render(self.language)


#: The names of the options a refusal's template mentions (L{Options._refuse}).
_OTHERS = ("option", "other")


#: Options whose value is a secret or the file of one: never abbreviated.
SECRET_OPTIONS = ("proxy-password-file", "console-password-file", "tunnel-users", "tls-key")


class Options(TranslatedHelp):
    log = Logger()

    synopsis = "[options]"
    longdesc = (
        "Run an e-POP relay: workstations without Internet access send their "
        "PMSI files to it, and it forwards them to e-PMSI over HTTPS."
    )
    optParameters = [
        ["lang", None, None, "Language of the messages for people: fr or en (default: the locale's, from LC_ALL, LC_MESSAGES or LANG).", _language],
        ["config", None, None, "Settings file (INI, one [epop] section, keys named like these options); the command line overrides it, and SIGHUP reloads its allow entries."],
        ["epmsi", None, RelaySettings.epmsi, "e-PMSI's HTTPS origin."],
        ["ca-file", None, None, "PEM file of CA certificates trusted for e-PMSI (default: the system's)."],
        ["journal", None, RelaySettings.journal, "Path of the journal (JSON lines)."],
        ["journal-rotate", None, None, "Start a new journal file each UTC day ('daily') or at a size (500K, 100M, 1G; bytes without a suffix). Default: never."],
        ["journal-keep", None, RelaySettings.journal_keep, "Rotated journal files to keep, the oldest deleted first (0 keeps them all).", NUMBERS["journal_keep"]],
        ["idle-timeout", None, RelaySettings.idle_timeout, "Seconds of silence from a workstation before its connection is closed.", NUMBERS["idle_timeout"]],
        ["epmsi-timeout", None, RelaySettings.epmsi_timeout, "Seconds an operation may make no progress while waiting on e-PMSI before it is cancelled.", NUMBERS["epmsi_timeout"]],
        ["connect-timeout", None, RelaySettings.connect_timeout, "Seconds to connect to e-PMSI.", NUMBERS["connect_timeout"]],
        ["hello-timeout", None, RelaySettings.hello_timeout, "Seconds a workstation has, from its first byte, to send its whole HELLO (an encrypted session's TLS handshake included).", NUMBERS["hello_timeout"]],
        ["frame-timeout", None, RelaySettings.frame_timeout, "Seconds a frame from a workstation has to arrive whole, from its first byte.", NUMBERS["frame_timeout"]],
        ["upload-min-rate", None, RelaySettings.upload_min_rate, "Bytes per second an upload must average over its whole length once --upload-grace has passed; time the relay holds it back for e-PMSI does not count (0: no minimum).", NUMBERS["upload_min_rate"]],
        ["upload-grace", None, RelaySettings.upload_grace, "Seconds an upload runs before its average rate is checked.", NUMBERS["upload_grace"]],
        ["checks-per-connection", None, RelaySettings.checks_per_connection, "e-PMSI checks one connection may ask for in a minute (0: no limit).", NUMBERS["checks_per_connection"]],
        ["checks-per-client", None, RelaySettings.checks_per_client, "e-PMSI checks the connections from one workstation address may ask for in a minute (0: no limit).", NUMBERS["checks_per_client"]],
        ["drain-seconds", None, RelaySettings.drain_seconds, "On stop, seconds the transfers in flight get to finish before they are aborted (0: abort at once).", NUMBERS["drain_seconds"]],
        ["proxy", None, None, "HTTP proxy to reach e-PMSI through: http://HOST:PORT, or 'system' for this machine's settings."],
        ["proxy-user", None, None, "User name for the proxy (Basic authentication)."],
        ["proxy-password-file", None, None, f"File whose first line is the proxy password (or set {PASSWORD_VARIABLE}; never on the command line)."],
        ["tls-cert", None, None, "PEM certificate of the relay, or 'auto' for the relay's own authority and certificate (see --tls-dir): workstations may then encrypt the local hop (same port)."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        ["tls-chain", None, None, "PEM intermediate certificates sent with --tls-cert."],
        ["tls-dir", None, None, "With --tls-cert auto: the folder of the relay's own certificate authority and certificate (default: a tls folder beside the journal)."],
        ["tls-client-ca", None, None, "Require workstations to present a certificate signed by this PEM CA (mutual TLS)."],
        ["max-connections", None, RelaySettings.max_connections, "Connections served at once, in all; more are refused with an error (0: no limit).", NUMBERS["max_connections"]],
        ["max-connections-per-client", None, RelaySettings.max_connections_per_client, "Connections served at once from one client address (0: no limit).", NUMBERS["max_connections_per_client"]],
        ["tunnel-idle-timeout", None, RelaySettings.tunnel_idle_timeout, "Seconds an HTTPS tunnel may carry nothing, either way, before it is closed.", NUMBERS["tunnel_idle_timeout"]],
        ["console", None, DEFAULT_CONSOLE, "Endpoint of the relay's console, a web page to watch and run it ('none': no console). Anywhere but this machine it needs --tls-cert and --console-password-file."],
        ["console-password-file", None, None, "File whose first line is the console's password (needed when the console listens on the network)."],
        ["tunnel-users", None, None, "htpasswd file of bcrypt entries (htpasswd -B): HTTPS tunnels then need one of its users and passwords (proxy authentication). Read again when it changes."],
    ]
    optFlags = [
        ["no-check", None, "Do not check at start-up that e-PMSI can be reached."],
        ["require-tls", None, "Refuse unencrypted sessions (needs --tls-cert)."],
        ["no-tunnel", None, "Do not act as an HTTPS proxy (CONNECT) for e-PMSI: HTTP requests are refused."],
        ["no-listen-at-start", None, "Start with listening stopped, until the console's 'Start listening' (needs the console)."],
    ]
    compData = usage.Completions(
        optActions={"ca-file": usage.CompleteFiles("*.pem"), "journal": usage.CompleteFiles()}
    )

    def __init__(self) -> None:
        super().__init__()
        # usage.Options has no hook for how a coerce failure is worded:
        # replace its dispatchers so that the message names the option.
        for name, dispatcher in list(self._dispatch.items()):
            if isinstance(dispatcher, usage.CoerceParameter):
                self._dispatch[name] = _NamedParameter(self, dispatcher.coerce)
        self["listen"] = []
        self["allow"] = []
        self["tunnel-to"] = []
        self.proxy: ProxyConfig | None = None
        #: The --config file as read at start-up, if any.
        self.settings_file: SettingsFile | None = None
        #: Options given on the command line: they win over the file.
        self.given: frozenset[str] = frozenset()
        #: Parsing failed: the usage twistd prints before the reason is one line.
        self.refused = False
        #: The language of the messages for people: C{--lang}, else the locale's.
        self.language = choose_language()

    def parseOptions(self, options: list[str] | None = None) -> None:
        arguments = sys.argv[1:] if options is None else options
        self.language = choose_language(override=language_asked(arguments))
        try:
            refuse_abbreviated_secrets(arguments, self, SECRET_OPTIONS)
            self.given = command_line_keys(self, arguments)
            super().parseOptions(options)
        except usage.UsageError as e:
            self.refused = True
            if self.parent is not None:
                # twistd prints its own synopsis before the reason: in the same language.
                self.parent.synopsis = usage_line(self.parent.getSynopsis(), self.language)
            raise Refused(usage_reason(e), self.language) from None

    def getUsage(self, width: int | None = None) -> str:
        """
        After a usage error, one line instead of every option: twistd prints
        the usage, then the reason, and the reason is what matters.
        """
        if self.refused:
            return Text("The reason follows; 'twistd epop --help' lists every option.").render(self.language) + "\n"
        return super().getUsage(width)

    def _refuse(
        self, key: str, problem: Text | str, *others: str, command_line: Text | str | None = None
    ) -> usage.UsageError:
        """
        The usage error for the value of option C{key}, worded where the
        administrator typed it: C{--KEY: problem} on the command line,
        C{FILE, line N: KEY: problem} when it came from the settings file.

        @param others: options C{problem} names, written C{--name} on the
            command line and C{name} in the file: in a L{Text}, its
            C{{option}} and C{{other}} (in a C{str}, its C{{}}s).
        @param command_line: the whole command-line message, when it says
            more than C{--KEY: problem} (e.g. the value).
        """

        def spelled(prefix: str) -> Text:
            if isinstance(problem, str):
                return Text.literal(problem.format(*[prefix + o for o in others]) if others else problem)
            named = {name: prefix + option for name, option in zip(_OTHERS, others)}
            return Text(problem.template, **{**problem.params, **named})

        found = self.settings_file
        if found is not None and key in found.values and key not in self.given:
            return usage.UsageError(
                Text("{where}: {key}: {problem}", where=found.where(key), key=key, problem=spelled(""))
            )
        if command_line is not None:
            return usage.UsageError(command_line)
        return usage.UsageError(prefixed(f"--{key}", spelled("--")))

    def opt_listen(self, description: str) -> None:
        """Endpoint to listen on, e.g. tcp:3358:interface=192.168.1.10 (repeatable; default tcp:3358)."""
        self["listen"].append(description)

    def opt_allow(self, entry: str) -> None:
        """Only this client address or network may connect, e.g. 10.1.2.3 or 10.1.0.0/16 (repeatable; default: everyone)."""
        self["allow"].append(entry)

    def opt_tunnel_to(self, entry: str) -> None:
        """HTTPS tunnels may also go to HOST[:PORT] (port 443 by default; repeatable)."""
        self["tunnel-to"].append(entry)

    def _apply_settings_file(self) -> None:
        """Take from --config every option the command line did not give."""
        path = os.path.abspath(self["config"])  # SIGHUP re-reads it after twistd's chdir
        keys = SettingKeys.of(self)
        try:
            found = read_settings_file(path, keys)
        except SettingsError as e:
            raise usage.UsageError(reason_of(e)) from None
        self.settings_file = found
        for name, value in found.values.items():
            if name in self.given:
                continue
            method = getattr(self, "opt_" + name.replace("-", "_"), None)
            if name in keys.repeatable:
                self[name] = list(value)
            elif name in keys.flags and method is not None:
                if value:
                    method()
            elif name in keys.flags:
                self[name] = 1 if value else 0
            elif name in keys.handlers and method is not None:
                try:
                    method(value)
                except usage.UsageError as e:
                    raise usage.UsageError(
                        Text("{where}: {key}: {problem}", where=found.where(name), key=name, problem=reason_of(e))
                    ) from None
            else:
                self[name] = value

    def postOptions(self) -> None:
        if self["config"]:
            self._apply_settings_file()
        if self["lang"]:
            self.language = self["lang"]
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        try:
            password = load_proxy_password(self["proxy-password-file"])
        except ValueError as e:
            raise self._refuse("proxy-password-file", reason_of(e)) from None
        try:
            self.proxy, source = resolve_proxy(
                self["proxy"], self["epmsi"], user=self["proxy-user"], password=password
            )
        except ProxyAccountError as e:
            # The user's setting, when there is one; else the URL named the user.
            raise self._refuse("proxy-user" if self["proxy-user"] else "proxy", reason_of(e)) from None
        except ValueError as e:
            raise self._refuse("proxy", reason_of(e)) from None
        if self["proxy"] and is_system(self["proxy"]):
            self.log.info(
                log_format(Text("--proxy system: {found}"), self.language),
                found=f"{self.proxy.url} ({source})" if self.proxy else source,
            )
        # Before --tls-cert auto makes its folder beside the journal's.
        folder = os.path.dirname(os.path.abspath(self["journal"]))
        if not os.path.exists(folder):
            # Not made here: like twistd's own --logfile, so that a mistyped
            # path stops the relay instead of journaling where no one looks.
            missing = Text(
                "the folder {folder} does not exist (the relay does not create it): create it for the "
                "relay's user, or choose another place",
                folder=folder,
            )
            raise self._refuse(
                "journal",
                missing,
                command_line=Text("--journal {journal}: {problem}", journal=self["journal"], problem=missing),
            )
        if not os.access(folder, os.W_OK):
            raise self._refuse(
                "journal",
                Text("cannot write in {folder}", folder=folder),
                command_line=Text("--journal {journal}: cannot write in {folder}", journal=self["journal"], folder=folder),
            )
        self.tls = self._tls()
        try:
            self._settings = self._make_settings()
        except RelaySettingsError as e:
            raise self._refuse(e.key, e.problem, command_line=e.command_line) from None
        self.console = self._console()
        if self["no-listen-at-start"] and self.console.endpoint is None:
            raise self._refuse(
                "no-listen-at-start",
                Text("needs the console (not --console none): only the console can start listening then"),
            )

    def _console(self) -> ConsoleSettings:
        """The console's settings, refused here when they cannot work."""
        endpoint = self["console"]
        console = ConsoleSettings(
            None if endpoint.strip().lower() == NO_CONSOLE else endpoint,
            self["console-password-file"],
            self.tls,
            self.language,
        )
        try:
            console.check()
        except ValueError as e:
            raise self._refuse("console", reason_of(e)) from None
        try:
            console.password()
        except ValueError as e:
            raise self._refuse("console-password-file", reason_of(e)) from None
        return console

    def _tls(self) -> RelayTLS | None:
        if self["tls-cert"] == AUTO:
            return self._own_authority_tls()
        if self["tls-dir"]:
            raise self._refuse("tls-dir", _needs_auto(), "tls-cert")
        if not self["tls-cert"]:
            for name in ("tls-key", "tls-chain", "tls-client-ca"):
                if self[name]:
                    raise self._refuse(name, Text("needs {option}"), "tls-cert")
            if self["require-tls"]:
                raise self._refuse("require-tls", Text("needs {option} and {other}"), "tls-cert", "tls-key")
            return None
        if not self["tls-key"]:
            raise self._refuse("tls-cert", Text("needs {option}"), "tls-key")
        tls = RelayTLS(
            self["tls-cert"],
            self["tls-key"],
            self["tls-chain"],
            self["tls-client-ca"],
            self["require-tls"],
        )
        try:
            tls.options()
        except ValueError as e:
            raise self._refuse("tls-cert", reason_of(e)) from None
        # As --tls-cert auto logs its fingerprints: the first line to read when a workstation's TLS fails.
        self.log.info("{text}", text=tls.described().render(self.language))
        return tls

    def _own_authority_tls(self) -> RelayTLS:
        """
        C{--tls-cert auto}: the relay's own authority and a certificate for
        every address it listens on, the console's included
        (L{epop.relay.own_authority}).
        """
        for name in ("tls-key", "tls-chain"):
            if self[name]:
                raise self._refuse(name, _not_with_auto(), "tls-cert")
        folder = self["tls-dir"] or os.path.join(os.path.dirname(os.path.abspath(self["journal"])), "tls")
        listen = list(self["listen"])
        if self["console"].strip().lower() != NO_CONSOLE:
            listen.append(self["console"])
        try:
            tls = own_authority_tls(
                folder,
                coverage_for(listen),
                client_ca=self["tls-client-ca"],
                require=bool(self["require-tls"]),
                language=self.language,
            )
        except OwnAuthorityError as e:
            raise self._refuse("tls-dir" if self["tls-dir"] else "tls-cert", reason_of(e)) from None
        try:
            tls.options()
        except ValueError as e:  # the files above are fine: the client CA is not
            raise self._refuse("tls-client-ca", reason_of(e)) from None
        return tls

    def settings(self) -> RelaySettings:
        """The relay's settings, as checked when the options were parsed."""
        return self._settings

    def _make_settings(self) -> RelaySettings:
        return RelaySettings(
            listen=tuple(self["listen"]),
            epmsi=self["epmsi"],
            ca_file=self["ca-file"],
            journal=self["journal"],
            journal_rotate=self["journal-rotate"],
            journal_keep=self["journal-keep"],
            allow=tuple(self["allow"]),
            idle_timeout=self["idle-timeout"],
            epmsi_timeout=self["epmsi-timeout"],
            connect_timeout=self["connect-timeout"],
            hello_timeout=self["hello-timeout"],
            frame_timeout=self["frame-timeout"],
            upload_min_rate=self["upload-min-rate"],
            upload_grace=self["upload-grace"],
            checks_per_connection=self["checks-per-connection"],
            checks_per_client=self["checks-per-client"],
            proxy=self.proxy,
            tls=self.tls,
            check_at_start=not self["no-check"],
            listen_at_start=not self["no-listen-at-start"],
            drain_seconds=self["drain-seconds"],
            max_connections=self["max-connections"],
            max_connections_per_client=self["max-connections-per-client"],
            tunnel_to=tuple(self["tunnel-to"]),
            no_tunnel=bool(self["no-tunnel"]),
            tunnel_idle_timeout=self["tunnel-idle-timeout"],
            tunnel_users=self["tunnel-users"],
        )


def _not_with_auto() -> Text:
    """
    The refusal of --tls-key or --tls-chain beside --tls-cert auto, with
    C{{option}} where L{Options._refuse} names the option as the person wrote it.
    """
    return Text(
        "cannot be given with {option} auto, which makes the relay's own key "
        "and sends its authority's certificate as the chain"
    )


def _needs_auto() -> Text:
    """The refusal of --tls-dir without --tls-cert auto (C{{option}} as in L{_not_with_auto})."""
    return Text("is the folder of {option} auto: give that too, or leave it out")


def reload_allowlist(relay: RelayService, options: Options) -> bool:
    """
    SIGHUP: read the settings file again and apply its allow entries.  A
    file that no longer reads keeps the old list; both cases are journaled
    (L{RelayService.reload_allowlist}).
    """
    assert options.settings_file is not None
    path = options.settings_file.path
    return relay.reload_allowlist(partial(_allow_from_file, options), source=path)


def _allow_from_file(options: Options) -> tuple[str, ...]:
    """
    The settings file's allow entries, read again.

    @raise SettingsError: the file no longer reads.
    @raise ReloadRefused: C{--allow} on the command line overrides the file.
    """
    assert options.settings_file is not None
    path = options.settings_file.path
    found = read_settings_file(path, SettingKeys.of(options))
    if "allow" in options.given:
        raise ReloadRefused(
            Text("--allow is given on the command line, which overrides the settings file"),
            error="allow-on-command-line",
        )
    later = [
        name
        for name in options.settings_file.changed(found)
        if name != "allow" and name not in options.given
    ]
    if later:
        _TwistdRelay.log.warn(
            log_format(
                Text("{path}: {names} changed; only allow is applied on reload, the rest when the relay restarts"),
                options.language,
            ),
            path=path,
            names=", ".join(later),
        )
    return found.allow


def _unaccented(text: str) -> str:
    """
    C{text} without its accents: a detaching twistd hands its parent the
    reason's first 100 bytes and prints them as a bytes literal, where
    "déjà" would read C{d\\xe9j\\xe0}; "deja" stays readable.
    """
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


class _TwistdRelay(MultiService):
    """
    Under twistd, a port that cannot be bound ends the program with one
    clear line instead of a traceback.  C{SIGHUP} (where the platform has
    it) calls C{reload} with C{--config}, and without one says there is
    nothing to reload, until the relay has stopped: never its default
    action, which would end the relay without a word (C{systemctl reload}
    out of habit).
    """

    log = Logger()

    def __init__(
        self, reload: Callable[[], object] | None = None, language: str = "en", log_on_stderr: bool = False
    ) -> None:
        super().__init__()
        self._reload = reload
        self._language = language
        self._log_on_stderr = log_on_stderr
        self._previous_hangup: Any = None

    def privilegedStartService(self) -> None:
        self._hook_hangup()
        try:
            super().privilegedStartService()
        except ListenError as e:
            reason = e.text.render(self._language)
            self.log.critical("epop: {reason}", reason=reason)
            # In the foreground twistd sends stderr to its log: say it where
            # the relay was started too (a daemon's own stderr is /dev/null,
            # its parent prints the exception's text instead), unless the log
            # line just written is already there.
            terminal = sys.__stderr__
            if terminal is not None and not self._log_on_stderr:
                try:
                    terminal.write(f"epop: {reason}\n")
                    terminal.flush()
                except (OSError, ValueError):
                    pass
            short = Text("cannot listen on {description}: {why}", description=e.description, why=e.why_text)
            raise RelayCannotStart(_unaccented(short.render(self._language))) from None

    def startService(self) -> None:
        # Before the relay journals that it listens: from then on, a SIGHUP
        # must reload, never end the process (SIGHUP's default action).
        self._hook_hangup()
        super().startService()

    def _hook_hangup(self) -> None:
        hangup = getattr(signal, "SIGHUP", None)
        if hangup is None or self._previous_hangup is not None:
            return
        from twisted.internet import reactor

        reload = self._reload if self._reload is not None else self._nothing_to_reload

        def hung_up(signum: int, frame: Any) -> None:
            # Signal handlers may run between any two bytecodes: hand over
            # to the reactor rather than touch the relay from here.
            reactor.callFromThread(reload)

        previous = signal.signal(hangup, hung_up)
        self._previous_hangup = signal.SIG_DFL if previous is None else previous

    def _nothing_to_reload(self) -> None:
        self.log.warn(
            log_format(
                Text("SIGHUP: nothing to reload: the relay was started without --config; it goes on as it is"),
                self._language,
            )
        )

    def stopService(self) -> Any:
        def restore(result: object) -> object:
            # Only once stopped: a reload during the drain must not kill the relay.
            if self._previous_hangup is not None:
                signal.signal(signal.SIGHUP, self._previous_hangup)
                self._previous_hangup = None
            return result

        return maybeDeferred(super().stopService).addBoth(restore)


def console_files(options: Options) -> "ConsoleFiles":
    """
    Where the console saves: the C{--config} file, or, without one, a file
    beside the journal that a relay started with C{--config} would read.
    """
    from epop.console.relay_backend import ConsoleFiles

    if options.settings_file is not None:
        config, in_use = options.settings_file.path, True
    else:
        folder = os.path.dirname(os.path.abspath(options["journal"]))
        config, in_use = os.path.join(folder, "epop-relay.ini"), False
    return ConsoleFiles(
        config,
        config_in_use=in_use,
        overridden=options.given,
        proxy_password_file=options["proxy-password-file"],
        saved=partial(_saved_by_console, options) if in_use else None,
    )


def _saved_by_console(options: Options) -> None:
    """
    The console saved the settings file, and the relay already uses what it
    saved: a later C{SIGHUP} compares the file with this, not with the file
    read at start, so it does not warn of the console's own changes.
    """
    assert options.settings_file is not None
    try:
        options.settings_file = read_settings_file(options.settings_file.path, SettingKeys.of(options))
    except SettingsError as e:
        _TwistdRelay.log.warn("{problem}", problem=reason_of(e).render(options.language))


def _log_on_stderr(twistd_options: Any) -> bool:
    """
    Whether twistd's log reaches standard error's file: C{twistd -n} without
    C{--logfile} nor C{--syslog} logs to standard output, often the same terminal.
    """
    if twistd_options is None or not twistd_options.get("nodaemon") or twistd_options.get("syslog"):
        return False
    if twistd_options.get("logfile") not in (None, "-"):
        return False
    try:
        out, err = os.fstat(sys.__stdout__.fileno()), os.fstat(sys.__stderr__.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    # twistd epop owns this process, so it may tune the allocator for it.
    keep_buffers_on_heap()
    relay = make_relay_service(reactor, options.settings(), language=options.language)
    reload = None
    if options.settings_file is not None:
        reload = partial(reload_allowlist, relay, options)
    top = _TwistdRelay(reload, options.language, _log_on_stderr(options.parent))
    relay.setServiceParent(top)
    if options.console.endpoint is not None:
        # Imported here: the console's backend saves settings with this module's options.
        from epop.console.relay_backend import RelayConsoleBackend

        backend = RelayConsoleBackend(reactor, relay, console_files(options), globalLogPublisher)
        make_console_service(reactor, backend, options.console).setServiceParent(top)
    return top
