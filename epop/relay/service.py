"""
The relay as a Twisted service, for twistd or for any application's own tree.

L{make_relay_service} only builds objects.  Ports are bound in
C{privilegedStartService} (so a relay started as root can bind and then drop
privileges), the journal file is opened in C{startService}, and everything is
closed in C{stopService}: the listening ports, the open connections (after
up to C{drain_seconds} for the operations in flight), the journal and
e-PMSI's connection pool, in that order.

The allowlist can be replaced while the relay runs (L{RelayService.set_allowlist}),
e.g. when twistd gets C{SIGHUP}; the change is journaled.
"""

from __future__ import annotations

import errno
import uuid
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from epop.addressing import format_peer
from epop.epmsi.origin import tls_policy
from epop.epmsi.upstream import CheckResult, Upstream
from epop.journal import events as journal
from epop.journal.observer import JournalService
from epop.messages import Text, log_format, reason_of, system_reason
from epop.journal.writer import (
    FileJournalWriter,
    IJournalWriter,
    RotatingJournalWriter,
)
from epop.relay.allowlist import Allowlist, AllowlistFactory
from epop.relay.limits import (
    MAX_SILENT_CONNECTIONS,
    SILENT_GRACE,
    ConnectionLimits,
    LimitsFactory,
)
from epop.relay.http_proxy import HttpProxyFactory
from epop.relay.tunnel_users import TunnelUsers
from epop.relay.network_interfaces import (
    LocalAddress,
    addresses_for_listen_host,
    local_addresses,
)
from epop.relay.protocol import RelayFactory
from epop.relay.session import SessionChoiceFactory
from epop.relay.settings import DEFAULT_LISTEN, RelaySettings, listen_endpoint

__all__ = [
    "DEFAULT_LISTEN",
    "RelaySettings",
    "RelayService",
    "ListenError",
    "RelayListening",
    "StartRefused",
    "ListeningService",
    "listen_at_once",
    "ReloadRefused",
    "make_relay_service",
]


class ReloadRefused(ValueError):
    """A reload that must change nothing; C{error} is the journal's code for why."""

    def __init__(self, problem: str | Text, error: str) -> None:
        super().__init__(problem)
        self.error = error


class ListenError(CannotListenError):
    """
    A listen endpoint could not be opened; says which and why, in one line.

    @ivar addresses: this machine's addresses, when the endpoint named one it
        does not have (C{EADDRNOTAVAIL}): the system's "Cannot assign
        requested address" alone does not say which ones would do.
    """

    def __init__(
        self, description: str, why: str | Text, addresses: Sequence[LocalAddress] | None = None
    ) -> None:
        super().__init__(None, description, str(why))
        self.description = description
        #: The system's reason, in English; C{why_text} is its L{Text}.
        self.why = str(why)
        self.why_text = why
        self.addresses = addresses

    @property
    def text(self) -> Text:
        """The whole message, to render in the administrator's language."""
        if "in use" in self.why.lower():
            return Text(
                "cannot listen on {description}: {why} (is another relay or program already listening there?)",
                description=self.description,
                why=self.why_text,
            )
        if self.addresses is not None:
            listed = ", ".join(f"{a.address} ({a.interface})" for a in self.addresses)
            return Text(
                "cannot listen on {description}: {why}; this machine's addresses are: {listed}; "
                "see epop interfaces",
                description=self.description,
                why=self.why_text,
                listed=listed or Text("none"),
            )
        return Text("cannot listen on {description}: {why}", description=self.description, why=self.why_text)

    def __str__(self) -> str:
        return str(self.text)


def listen_at_once(
    endpoint: IStreamServerEndpoint,
    factory: Factory,
    description: str,
    machine_addresses: Callable[[], Sequence[LocalAddress]] | None = None,
) -> IListeningPort:
    """
    Listen on C{endpoint} now: a service that must not start without its
    port (twistd then exits with the reason) cannot wait for a Deferred.

    @param machine_addresses: lists this machine's addresses for the error
        when the endpoint names another one (default L{local_addresses}).
    @raise ListenError: naming C{description} and the system's reason.
    """
    outcome: list[Any] = []
    endpoint.listen(factory).addBoth(outcome.append)
    if not outcome:
        raise ListenError(description, Text("listening did not complete at once"))
    if isinstance(outcome[0], Failure):
        reason = outcome[0].value
        addresses = None
        if isinstance(reason, CannotListenError) and reason.socketError is not None:
            error = reason.socketError
            why: str | Text = system_reason(error) if isinstance(error, OSError) else str(error)
            if getattr(reason.socketError, "errno", None) == errno.EADDRNOTAVAIL:
                addresses = local_addresses() if machine_addresses is None else machine_addresses()
        else:
            why = reason_of(reason)
        raise ListenError(description, why, addresses)
    port: IListeningPort = outcome[0]
    return port


class ListeningService(Service):
    """
    Listens on one endpoint and journals when listening opens and closes.

    A port that cannot be bound raises L{CannotListenError} from
    C{privilegedStartService}: twistd then exits with the reason instead of
    running a relay that listens nowhere.
    """

    log = Logger()

    def __init__(
        self,
        description: str,
        endpoint: IStreamServerEndpoint,
        factory: RelayFactory,
        served: Factory | None = None,
        language: str = "en",
    ) -> None:
        #: The language of the lines logged for the administrator.
        self.language = language
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.served = served if served is not None else factory
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.bind()

    def bind(self) -> None:
        """Open the port (if not open yet); journaled only once started."""
        if self.port is not None:
            return
        self.port = listen_at_once(self.endpoint, self.served, self.description)

    def unbind(self) -> Deferred[None] | None:
        """Close a port opened by L{bind} whose listening never started: nothing to journal."""
        port, self.port = self.port, None
        return None if port is None else maybeDeferred(port.stopListening)

    def startService(self) -> None:
        self.bind()
        super().startService()
        assert self.port is not None
        host = self.port.getHost()
        line = Text("e-POP relay listening on {address} (endpoint {endpoint}); workstations use this address and port")
        addresses = ""
        if getattr(host, "host", None) in ("0.0.0.0", "::"):
            # The manual showed IP:port in the title bar: say what to type.
            found = addresses_for_listen_host(host.host, host.port)
            addresses = ", ".join(found) or Text("none: this machine has no network address").render(self.language)
            line = Text("e-POP relay listening on {address} (endpoint {endpoint}); workstations type one of: {addresses}")
        journal.emit(
            self.log,
            self.factory.relay_id,
            "listening-opened",
            line.template,
            language=self.language,
            address=format_peer(host),
            port=getattr(host, "port", None),
            endpoint=self.description,
            addresses=addresses,
        )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        host = port.getHost()

        def closed(result: object) -> None:
            journal.emit(
                self.log,
                self.factory.relay_id,
                "listening-closed",
                Text("e-POP relay stopped listening on {address}").template,
                language=self.language,
                address=format_peer(host),
                port=getattr(host, "port", None),
            )

        return maybeDeferred(port.stopListening).addBoth(closed)


class RelayListening(Exception):
    """The relay is listening: stop it first (its settings change only while stopped)."""

    def __init__(self) -> None:
        super().__init__("the relay is listening: stop listening first")


class StartRefused(Exception):
    """
    Listening did not start, and why: e-PMSI could not be reached (C{check})
    or a port could not be opened (C{listen_error}).  Nothing listens.
    """

    def __init__(self, check: CheckResult | None = None, listen_error: ListenError | None = None) -> None:
        super().__init__(str(listen_error) if listen_error is not None else check.describe() if check else "")
        self.check = check
        self.listen_error = listen_error


@dataclass(frozen=True)
class _Serving:
    """Everything one set of settings listens and relays with."""

    upstream: Upstream
    factory: RelayFactory
    allowlist_factory: AllowlistFactory
    limits_factory: LimitsFactory
    listeners: list[ListeningService]


def _serving(
    reactor: Any, settings: RelaySettings, relay_id: str, first_connection_id: int, language: str
) -> _Serving:
    """
    Build the listeners and the factories behind them for C{settings}; what
    they log for the administrator is in C{language}.

    @raise ValueError: for an unusable TLS certificate or key.
    """
    upstream = Upstream(
        reactor,
        settings.epmsi,
        tls_policy(settings.ca_file),
        connect_timeout=settings.connect_timeout,
        proxy=settings.proxy,
        check_path=settings.check_path,
    )
    factory = RelayFactory(
        reactor,
        upstream,
        relay_id,
        idle_timeout=settings.idle_timeout,
        epmsi_timeout=settings.epmsi_timeout,
        hello_timeout=settings.hello_timeout,
        frame_timeout=settings.frame_timeout,
        upload_min_rate=settings.upload_min_rate,
        upload_grace=settings.upload_grace,
        checks_per_connection=settings.checks_per_connection,
        checks_per_client=settings.checks_per_client,
        first_connection_id=first_connection_id,
        language=language,
    )
    limits = ConnectionLimits(settings.max_connections, settings.max_connections_per_client)
    # The allowlist first: a client it refuses is neither counted nor told of caps.
    limited = LimitsFactory(factory, limits)
    # Always in place, so that the list can change while the relay runs.
    checked = AllowlistFactory(limited, Allowlist(settings.allow))
    # The HTTP side (CONNECT tunnels): the same allowlist, counted against the same caps.
    http = HttpProxyFactory(
        factory,
        settings.destinations(),
        proxy=settings.proxy,
        connect_timeout=settings.connect_timeout,
        hello_timeout=settings.hello_timeout,
        idle_timeout=settings.tunnel_idle_timeout,
        users=(
            None
            if settings.tunnel_users is None
            else TunnelUsers.for_reactor(settings.tunnel_users, reactor, language)
        ),
    )
    http_checked = AllowlistFactory(LimitsFactory(http, limits, same_as=limited), same_as=checked)
    served = SessionChoiceFactory(
        checked,
        settings.tls,
        reactor,
        settings.idle_timeout,
        gate=checked.refusal,
        # Silent connections are not counted against the caps (their client
        # is not known yet behind a load balancer), but they are bounded too.
        max_silent=MAX_SILENT_CONNECTIONS,
        silent_grace=SILENT_GRACE,
        http=http_checked,
    )
    listeners = [
        ListeningService(description, listen_endpoint(reactor, description, language), factory, served, language)
        for description in settings.listen
    ]
    return _Serving(upstream, factory, checked, limited, listeners)


class RelayService(MultiService):
    """
    A relay: a journal, one listener per endpoint, and e-PMSI's side.

    It listens when started, and may stop and start listening again while
    it runs (L{stop_listening}, L{start_listening}: the original's "Arrêter
    l'écoute" and "Lancer l'écoute"), with other settings in between
    (L{change_settings}).

    @ivar startup_check: fires with the L{CheckResult} of the start-up check.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: RelaySettings,
        relay_id: str,
        journal_service: JournalService,
        language: str = "en",
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.settings = settings
        self.relay_id = relay_id
        self._language = language
        self._serving = _serving(reactor, settings, relay_id, 1, language)
        self._watchers: list[Callable[[], None]] = []
        #: A start or stop is under way; a stop asked meanwhile waits in C{_after_change}.
        self._changing = False
        self._after_change: list[Deferred[None]] = []
        self.startup_check: Deferred[CheckResult] | None = None
        journal_service.setServiceParent(self)

    @property
    def language(self) -> str:
        """
        The language of the log's texts for people (C{twistd epop --lang});
        the events' fields are the same in every language.  Given when the
        relay is built, as its parts (the journal's writer, the listeners)
        log in it too.
        """
        return self._language

    @property
    def factory(self) -> RelayFactory:
        """The relay's protocol factory, shared by all listeners."""
        return self._serving.factory

    @property
    def upstream(self) -> Upstream:
        """e-PMSI's side, with its connection pool."""
        return self._serving.upstream

    @property
    def listeners(self) -> list[ListeningService]:
        """One per C{listen} endpoint of the settings in force, logging in the relay's language."""
        return self._serving.listeners

    @property
    def allowlist_factory(self) -> AllowlistFactory:
        """Checks each new connection against the allowlist in force."""
        return self._serving.allowlist_factory

    @property
    def limits_factory(self) -> LimitsFactory:
        """Counts the connections served, against the caps."""
        return self._serving.limits_factory

    @property
    def listening(self) -> bool:
        """Whether any of the relay's ports is open to workstations."""
        return any(listener.running and listener.port is not None for listener in self.listeners)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if not self.settings.listen_at_start:
            return
        # Bound here, so that a relay started as root binds before dropping privileges.
        for listener in self.listeners:
            listener.privilegedStartService()

    def startService(self) -> None:
        super().startService()
        if not self.settings.listen_at_start:
            line = Text("Not listening yet (--no-listen-at-start): start listening from the console")
            self.log.info(log_format(line, self.language))
            return
        for listener in self.listeners:
            listener.startService()
        proxy = self.upstream.proxy
        if proxy is not None:
            if proxy.user:
                line = Text("Reaching e-PMSI through the proxy {proxy} as {user}")
            else:
                line = Text("Reaching e-PMSI through the proxy {proxy}")
            self.log.info(log_format(line, self.language), proxy=proxy.address, user=proxy.user)
        self._say_https_proxy()
        if self.settings.check_at_start:
            self.startup_check = self.upstream.check()
            self.startup_check.addCallback(self._checked)

    def watch(self, watcher: Callable[[], None]) -> Callable[[], None]:
        """
        Call C{watcher} each time listening starts or stops or the settings
        change (a console's page follows the relay so).  Returns the
        function that stops it.
        """
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher) if watcher in self._watchers else None

    def _changed(self) -> None:
        for watcher in list(self._watchers):
            try:
                watcher()
            except Exception:
                self.log.failure("A watcher of the relay failed")

    def _say_https_proxy(self) -> None:
        """The HTTPS proxy mode in a line, for the admin reading twistd's log."""
        destinations = self.settings.destinations()
        if not destinations:
            line = Text("HTTPS proxy mode off (--no-tunnel): only e-POP clients are served")
            self.log.info(log_format(line, self.language))
            return
        users = self.settings.tunnel_users
        pac = [f"http://{address}/proxy.pac" for address in self.listening_addresses()]
        if users:
            line = Text(
                "Also an HTTPS proxy on the same port(s), tunnelling only to {destinations}, for the users of "
                "{users}; browsers take their settings from {pac} (or /wpad.dat)"
            )
        else:
            line = Text(
                "Also an HTTPS proxy on the same port(s), tunnelling only to {destinations}, for every allowed "
                "client; browsers take their settings from {pac} (or /wpad.dat)"
            )
        self.log.info(
            log_format(line, self.language),
            destinations=destinations.describe(),
            users=users,
            pac=", ".join(pac) or Text("/proxy.pac on the relay's address and port").render(self.language),
        )

    def listening_addresses(self) -> list[str]:
        """
        Each open port's C{host:port} as workstations type it (a wildcard:
        this machine's addresses): what the original showed in its title bar.
        """
        found: list[str] = []
        for listener in self.listeners:
            host = listener.port.getHost() if listener.port is not None else None
            if isinstance(getattr(host, "host", None), str) and isinstance(getattr(host, "port", None), int):
                found.extend(addresses_for_listen_host(host.host, host.port))
        return found

    def _checked(self, result: CheckResult) -> CheckResult:
        if result.ok:
            self.log.info(
                log_format(Text("e-PMSI check: {text}"), self.language),
                text=result.describe(self.language),
                check=result,
            )
        else:
            self.log.warn(
                log_format(Text("e-PMSI check failed; the relay keeps listening: {text}"), self.language),
                text=result.describe(self.language),
                check=result,
            )
        return result

    def test_epmsi(self) -> Deferred[CheckResult]:
        """Reach e-PMSI once, with the settings in force: the original's "Tester e-PMSI"."""
        return self.upstream.check()

    def change_settings(self, settings: RelaySettings) -> None:
        """
        Use C{settings} from the next L{start_listening} on; the original's
        settings too could change only while it did not listen.

        @raise RelayListening: while listening.
        @raise ValueError: for an unusable TLS certificate or key; nothing changes.
        """
        if self.listening or self._changing:
            raise RelayListening()
        serving = _serving(self.reactor, settings, self.relay_id, self.factory.upcoming_connection_id, self.language)
        old, self._serving, self.settings = self._serving, serving, settings
        old.upstream.close()
        self._changed()

    def start_listening(self, *, require_epmsi: bool = True) -> Deferred[CheckResult]:
        """
        Listen again, after checking that e-PMSI can be reached: fires with
        that check.  Fails with L{StartRefused} when e-PMSI cannot be reached
        (unless not C{require_epmsi}) or a port cannot be opened; then
        nothing listens.  Fails with L{RelayListening} if listening already.
        """
        if self.listening or self._changing:
            return fail(RelayListening())
        if self.factory.draining:
            # The last stop drained this factory: the next connections get fresh ones.
            self._serving = _serving(
                self.reactor, self.settings, self.relay_id, self.factory.upcoming_connection_id, self.language
            )
        self._changing = True
        d = self.upstream.check()

        def checked(check: CheckResult) -> CheckResult:
            if not check.ok and require_epmsi:
                raise StartRefused(check=check)
            opened: list[ListeningService] = []
            try:
                for listener in self.listeners:
                    listener.bind()
                    opened.append(listener)
            except ListenError as e:
                for listener in opened:
                    listener.unbind()
                raise StartRefused(check=check, listen_error=e) from None
            for listener in self.listeners:
                listener.startService()
            self._say_https_proxy()
            return check

        return d.addCallback(checked).addBoth(self._change_done)

    def _change_done(self, result: Any) -> Any:
        self._changing = False
        waiting, self._after_change = self._after_change, []
        for d in waiting:
            d.callback(None)
        self._changed()
        return result

    def stop_listening(self) -> Deferred[None]:
        """
        Close the listening ports, let the transfers in flight finish (up to
        C{drain_seconds}), close the rest: as on stop, but the process, the
        journal and whatever else runs beside the relay go on.  Stopping a
        relay that does not listen does nothing.
        """
        if self._changing:
            waiting = Deferred[None]()
            self._after_change.append(waiting)
            return waiting.addCallback(lambda _: self.stop_listening())
        if not self.listening:
            return succeed(None)
        self._changing = True
        return self._close_listening().addBoth(self._change_done).addCallback(lambda _: None)

    def _close_listening(self) -> Deferred[Any]:
        """Stop listening first, then drain, then close e-PMSI's pool."""
        if self.startup_check is not None and not self.startup_check.called:
            self.startup_check.cancel()
        listeners = [maybeDeferred(listener.stopService) for listener in self.listeners]
        d = DeferredList(listeners)

        def drain(_: object) -> Deferred[Any]:
            # Connections that have not said a word yet are told at once.
            for listener in self.listeners:
                if isinstance(listener.served, SessionChoiceFactory):
                    listener.served.close_waiting()
            return self.factory.drain(self.settings.drain_seconds)

        d.addCallback(drain)
        d.addCallback(lambda _: self.upstream.close())
        return d

    @property
    def allowlist(self) -> Allowlist:
        """The allowlist in force (empty: everyone)."""
        return self.allowlist_factory.allowlist

    def set_allowlist(self, entries: Iterable[str], *, source: str = "the application") -> Allowlist:
        """
        Replace the allowlist (empty: everyone) for every connection checked
        from now on; connections already admitted, and their transfers, go
        on.  Journaled as C{settings-reloaded}.

        @param source: where the list came from, for the journal's text.
        @raise ValueError: for a bad entry, naming it; the old list stays.
        """
        allowlist = Allowlist(entries)
        self.allowlist_factory.set_allowlist(allowlist)
        self.settings = self.settings.with_allow(allowlist)
        journal.emit(
            self.log,
            self.factory.relay_id,
            "settings-reloaded",
            Text("Settings reloaded from {source}: clients allowed: {allowed}", source=source, allowed=_allowed(allowlist)),
            language=self.language,
            allow=list(allowlist.entries),
            outcome="completed",
        )
        self._changed()
        return allowlist

    def reload_allowlist(self, load: Callable[[], Iterable[str]], *, source: str) -> bool:
        """
        Replace the allowlist with what C{load} returns (twistd's C{SIGHUP}
        loads the C{--config} file's).  If it raises L{ValueError}
        (unreadable or invalid settings, or L{ReloadRefused}), keep the old
        list and journal why.  Returns whether the list was replaced.
        """
        try:
            self.set_allowlist(list(load()), source=source)
        except ReloadRefused as e:
            self.reload_failed(reason_of(e), source=source, error=e.error)
            return False
        except ValueError as e:
            self.reload_failed(reason_of(e), source=source)
            return False
        return True

    def reload_failed(self, problem: str | Text, *, source: str, error: str = "bad-settings") -> None:
        """Journal a reload that changed nothing, and why: the old list stays."""
        journal.emit(
            self.log,
            self.factory.relay_id,
            "settings-reloaded",
            Text(
                "Settings not reloaded from {source}: {problem}; clients allowed are still: {allowed}",
                source=source,
                problem=problem,
                allowed=_allowed(self.allowlist),
            ),
            level=LogLevel.warn,
            language=self.language,
            allow=list(self.allowlist.entries),
            outcome="failed",
            error=error,
        )

    def stopService(self) -> Deferred[Any]:
        # Stop listening first, then let the transfers in flight finish (up
        # to drain_seconds), then close the journal.
        d = self._close_listening()
        d.addCallback(lambda _: super(RelayService, self).stopService())
        return d


def _allowed(allowlist: Allowlist) -> Text:
    """The clients an allowlist lets in, for the journal's text."""
    return Text.literal(allowlist.describe()) if allowlist.entries else Text("everyone")


def make_relay_service(
    reactor: Any,
    settings: RelaySettings = RelaySettings(),
    *,
    journal_writer: Callable[[], IJournalWriter] | None = None,
    language: str = "en",
) -> RelayService:
    """
    Build a relay that any Twisted application can attach with
    C{setServiceParent}.

    @param reactor: the reactor the relay listens, connects and times with.
    @param settings: what to listen on, where e-PMSI is, where to journal.
    @param journal_writer: opens the journal's writer when the service
        starts; by default a L{FileJournalWriter} on C{settings.journal},
        or a L{RotatingJournalWriter} if C{settings.journal_rotate} is set.
    @param language: the language of the lines it logs for the
        administrator (C{twistd epop --lang}); the journal stays English.
    @raise ValueError: for an unusable TLS certificate or key; every other
        setting was checked when C{settings} was made (L{RelaySettings}).
    """
    relay_id = uuid.uuid4().hex[:12]
    if journal_writer is None:
        path = settings.journal
        if settings.journal_rotate:
            rotate, keep = settings.journal_rotate, settings.journal_keep
            journal_writer = lambda: RotatingJournalWriter(path, rotate, keep, reactor, language)  # noqa: E731
        else:
            journal_writer = lambda: FileJournalWriter(path, language)  # noqa: E731
    journal_service = JournalService(relay_id, journal_writer, reactor, language)
    return RelayService(reactor, settings, relay_id, journal_service, language)
