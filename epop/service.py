"""
The relay as a Twisted service, for twistd or for any application's own tree.

L{make_relay_service} only builds objects.  Ports are bound in
C{privilegedStartService} (so a relay started as root can bind and then drop
privileges), the journal file is opened in C{startService}, and everything is
closed in C{stopService}: the listening ports, the open connections, the
journal and e-PMSI's connection pool, in that order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from epop import journal
from epop.allowlist import Allowlist, AllowlistFactory
from epop.journal import FileJournalWriter, IJournalWriter, JournalService
from epop.addressing import format_peer
from epop.local_tls import RelayTLS, SessionChoiceFactory
from epop.proxy import ProxyConfig
from epop.relay import RelayFactory
from epop.upstream import DEFAULT_EPMSI_URL, CheckResult, Upstream, tls_policy

__all__ = [
    "DEFAULT_LISTEN",
    "RelaySettings",
    "RelayService",
    "ListenError",
    "ListeningService",
    "make_relay_service",
]

DEFAULT_LISTEN = "tcp:3358"


class ListenError(CannotListenError):
    """A listen endpoint could not be opened; says which and why."""

    def __init__(self, description: str, why: str) -> None:
        super().__init__(None, description, why)
        self.description = description
        self.why = why

    def __str__(self) -> str:
        hint = ""
        if "in use" in self.why.lower():
            hint = " (is another relay or program already listening there?)"
        return f"cannot listen on {self.description}: {self.why}{hint}"


@dataclass(frozen=True)
class RelaySettings:
    """Everything an administrator chooses about a relay."""

    listen: Sequence[str] = (DEFAULT_LISTEN,)
    epmsi: str = DEFAULT_EPMSI_URL
    ca_file: str | None = None
    journal: str = "epop-journal.jsonl"
    allow: Sequence[str] = ()
    idle_timeout: float = 120.0
    epmsi_timeout: float = 300.0
    connect_timeout: float = 30.0
    proxy: ProxyConfig | None = None
    tls: RelayTLS | None = None
    check_at_start: bool = True
    check_path: str = "/"


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
    ) -> None:
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self._served = served if served is not None else factory
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def _listen(self) -> None:
        if self.port is not None:
            return
        outcome: list[Any] = []
        self.endpoint.listen(self._served).addBoth(outcome.append)
        if not outcome:
            raise ListenError(self.description, "listening did not complete at once")
        if isinstance(outcome[0], Failure):
            reason = outcome[0].value
            if isinstance(reason, CannotListenError) and reason.socketError is not None:
                why = getattr(reason.socketError, "strerror", None) or str(reason.socketError)
            else:
                why = str(reason)
            raise ListenError(self.description, why)
        self.port = outcome[0]

    def startService(self) -> None:
        self._listen()
        super().startService()
        assert self.port is not None
        host = self.port.getHost()
        if getattr(host, "host", None) in ("0.0.0.0", "::"):
            hint = "workstations use any address of this machine, port {port}"
        else:
            hint = "workstations use this address and port"
        journal.emit(
            self.log,
            self.factory.relay_id,
            "listening-opened",
            "e-POP relay listening on {address} (endpoint {endpoint}); " + hint,
            address=format_peer(host),
            port=getattr(host, "port", None),
            endpoint=self.description,
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
                "e-POP relay stopped listening on {address}",
                address=format_peer(host),
                port=getattr(host, "port", None),
            )

        return maybeDeferred(port.stopListening).addBoth(closed)


class RelayService(MultiService):
    """
    A relay: a journal, one listener per endpoint, and e-PMSI's side.

    @ivar factory: the relay's protocol factory, shared by all listeners.
    @ivar upstream: e-PMSI's side, with its connection pool.
    @ivar startup_check: fires with the L{CheckResult} of the start-up check.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: RelaySettings,
        factory: RelayFactory,
        journal_service: JournalService,
        listeners: list[ListeningService],
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.settings = settings
        self.factory = factory
        self.upstream = factory.upstream
        self.listeners = listeners
        self.startup_check: Deferred[CheckResult] | None = None
        journal_service.setServiceParent(self)
        for listener in listeners:
            listener.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        proxy = self.upstream.proxy
        if proxy is not None:
            self.log.info(
                "Reaching e-PMSI through the proxy {proxy}{account}",
                proxy=proxy.address,
                account=f" as {proxy.user}" if proxy.user else "",
            )
        if self.settings.check_at_start:
            self.startup_check = self.upstream.check()
            self.startup_check.addCallback(self._checked)

    def _checked(self, result: CheckResult) -> CheckResult:
        if result.ok:
            self.log.info("e-PMSI check: {text}", text=result.describe(), check=result)
        else:
            self.log.warn(
                "e-PMSI check failed; the relay keeps listening: {text}",
                text=result.describe(),
                check=result,
            )
        return result

    def stopService(self) -> Deferred[Any]:
        if self.startup_check is not None and not self.startup_check.called:
            self.startup_check.cancel()
        # Stop listening first, then close the connections, then the journal.
        listeners = [maybeDeferred(listener.stopService) for listener in self.listeners]
        d = DeferredList(listeners)
        d.addCallback(lambda _: self.factory.close_connections())
        d.addCallback(lambda _: super(RelayService, self).stopService())
        d.addCallback(lambda _: self.upstream.close())
        return d


def make_relay_service(
    reactor: Any,
    settings: RelaySettings = RelaySettings(),
    *,
    journal_writer: Callable[[], IJournalWriter] | None = None,
) -> RelayService:
    """
    Build a relay that any Twisted application can attach with
    C{setServiceParent}.

    @param reactor: the reactor the relay listens, connects and times with.
    @param settings: what to listen on, where e-PMSI is, where to journal.
    @param journal_writer: opens the journal's writer when the service
        starts; by default a L{FileJournalWriter} on C{settings.journal}.
    @raise ValueError: for settings that cannot work (bad URL, unreadable
        CA file, bad endpoint string, bad allowlist entry, unusable TLS
        certificate or key), with a message that says which.
    """
    upstream = Upstream(
        reactor,
        settings.epmsi,
        tls_policy(settings.ca_file),
        connect_timeout=settings.connect_timeout,
        proxy=settings.proxy,
        check_path=settings.check_path,
    )
    relay_id = uuid.uuid4().hex[:12]
    factory = RelayFactory(
        reactor,
        upstream,
        relay_id,
        idle_timeout=settings.idle_timeout,
        epmsi_timeout=settings.epmsi_timeout,
    )
    allowlist = Allowlist(settings.allow)
    checked = AllowlistFactory(factory, allowlist) if allowlist else factory
    served = SessionChoiceFactory(checked, settings.tls, reactor, settings.idle_timeout)
    listeners = []
    for description in settings.listen:
        try:
            endpoint = serverFromString(reactor, description)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"invalid listen endpoint {description!r}: {e}") from None
        listeners.append(ListeningService(description, endpoint, factory, served))
    if journal_writer is None:
        path = settings.journal
        journal_writer = lambda: FileJournalWriter(path)  # noqa: E731
    journal_service = JournalService(relay_id, journal_writer)
    return RelayService(reactor, settings, factory, journal_service, listeners)
