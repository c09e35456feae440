"""
The console's own listening port, and the settings that say where it is.

The console changes the relay's settings, so by default it listens only on
this machine (C{tcp:3359:interface=127.0.0.1}).  Anywhere else it needs
the relay's certificate (it is then served over HTTPS, so that the
password and cookie do not cross the network in clear) and a password (a
URL copied out of a log is not enough for a door open to the network).
On this machine it is plain HTTP whatever the relay's TLS settings: the
machine talks to itself, and its browser and C{curl} then open the
console without the relay's authority.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site

from epop.console.access import ConsoleAccess, load_console_password
from epop.console.backend import IConsoleBackend
from epop.console.events import EventHub
from epop.console.resource import ConsoleResource
from epop.local_tls import RelayTLS, server_options
from epop.messages import Text, reason_of
from epop.relay.service import ListenError, listen_at_once
from epop.relay.settings import PortOutOfRange, check_listening_port

#: Where the console listens unless told otherwise.
DEFAULT_CONSOLE = "tcp:3359:interface=127.0.0.1"
#: What C{--console} takes to turn the console off.
NO_CONSOLE = "none"

_LOOPBACK_NAMES = ("localhost",)


def console_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """
    The endpoint of a C{--console} string: C{tcp:}, C{tcp6:} or C{unix:}.

    @raise ValueError: for anything else, saying what is accepted.
    """
    if description.partition(":")[0].lower() not in ("tcp", "tcp6", "unix"):
        raise ValueError(
            Text(
                "{description}: the console listens on tcp:PORT:interface=ADDRESS or "
                "unix:PATH (on the network, with --tls-cert, it is served over HTTPS by itself)",
                description=description,
            )
        )
    try:
        endpoint = serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(Text("{description}: invalid endpoint ({reason})", description=description, reason=str(e))) from None
    assert isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint))
    try:
        check_listening_port(endpoint)
    except PortOutOfRange as e:
        raise ValueError(Text("{name}: {problem}", name=description, problem=reason_of(e))) from None
    return endpoint


def listens_locally(description: str) -> tuple[bool, Text | str]:
    """
    Whether the console endpoint C{description} is reachable from this
    machine only, and where it listens: its address, or in words for the
    administrator's language ("all addresses").  C{unix:} sockets count as
    local.
    """
    endpoint = console_endpoint(None, description)
    if isinstance(endpoint, UNIXServerEndpoint):
        return True, Text("a Unix socket")
    interface = getattr(endpoint, "_interface", "")
    if interface in ("", "0.0.0.0", "::"):
        return False, Text("all addresses")
    if interface.lower() in _LOOPBACK_NAMES:
        return True, interface
    try:
        return ipaddress.ip_address(interface.partition("%")[0]).is_loopback, interface
    except ValueError:  # a host name: whatever it resolves to, not only this machine
        return False, interface


class _ConsoleSite(Site):
    """
    The console's site, without an access-log line per request: the page
    reads the API all the time, and would bury the relay's own log.
    """

    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


#: A console on this machine only, as the refusal of any other suggests.
ONLY_HERE = "--console tcp:3359:interface=127.0.0.1"


@dataclass(frozen=True)
class ConsoleSettings:
    """
    Where the console listens (C{None}: no console), its password file,
    the relay's TLS settings (the console is served with them only when
    it listens beyond this machine: L{served_tls}), and the language of
    the lines it logs for the administrator.
    """

    endpoint: str | None = DEFAULT_CONSOLE
    password_file: str | None = None
    tls: RelayTLS | None = None
    language: str = "en"

    def check(self) -> None:
        """
        Refuse an endpoint that does not parse, or one open to the network
        without TLS and a password.

        @raise ValueError: saying what is missing and why.
        """
        if self.endpoint is None:
            return
        local, where = listens_locally(self.endpoint)
        if local:
            return
        missing: list[Text | str] = []
        if self.tls is None:
            missing.append(
                Text(
                    "a certificate (--tls-cert and --tls-key, or --tls-cert auto for the relay's own; "
                    "the console is then served over HTTPS)"
                )
            )
        if self.password_file is None:
            missing.append("--console-password-file")
        if missing:
            needed = missing[0] if len(missing) == 1 else Text("{first} and {second}", first=missing[0], second=missing[1])
            raise ValueError(
                Text(
                    "the console listens on {where}, not only on this machine: it needs {needed}; "
                    "or keep it on this machine (e.g. {example}) and reach it through SSH",
                    where=where,
                    needed=needed,
                    example=ONLY_HERE,
                )
            )

    @property
    def served_tls(self) -> RelayTLS | None:
        """
        The TLS the console is served with: the relay's, when the console
        listens beyond this machine; none on loopback or a Unix socket,
        where TLS with the relay's own authority would only make this
        machine's browser warn and C{curl} fail.
        """
        if self.endpoint is None or self.tls is None or listens_locally(self.endpoint)[0]:
            return None
        return self.tls

    def password(self) -> str | None:
        """
        The console's password, read now.

        @raise ValueError: the file cannot be read or its first line is empty.
        """
        return None if self.password_file is None else load_console_password(self.password_file)


class ConsoleService(Service):
    """
    Listens on the console's endpoint from C{privilegedStartService} (a
    port below 1024 may need the privileges twistd drops afterwards; a port
    that cannot be bound stops the start, as the relay's own does), logs
    the URL that opens it, and follows the backend's live changes.
    """

    log = Logger()

    def __init__(self, reactor: Any, backend: IConsoleBackend, settings: ConsoleSettings) -> None:
        assert settings.endpoint is not None
        settings.check()
        self.reactor = reactor
        self.backend = backend
        self.settings = settings
        self.access = ConsoleAccess(reactor, settings.password(), language=settings.language)
        self.hub = EventHub(reactor)
        self.site = _ConsoleSite(ConsoleResource(backend, self.access, self.hub))
        self.port: IListeningPort | None = None
        self._unwatch: Any = None

    def _factory(self) -> Any:
        tls = self.settings.served_tls
        if tls is None:
            return self.site
        # The relay's certificate, without asking browsers for one of their own.
        options = server_options(tls.cert, tls.key, tls.chain)
        return TLSMemoryBIOFactory(options, False, self.site)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._bind()

    def _bind(self) -> None:
        if self.port is not None:
            return
        description = self.settings.endpoint
        assert description is not None
        try:
            endpoint = console_endpoint(self.reactor, description)
        except ValueError as e:
            raise ListenError(description, reason_of(e)) from None
        self.port = listen_at_once(endpoint, self._factory(), f"{description} (the console)")

    def startService(self) -> None:
        self._bind()
        super().startService()
        assert self.port is not None
        host = self.port.getHost()
        self.access.listening_on(
            getattr(host, "host", ""), getattr(host, "port", 0), self.settings.served_tls is not None
        )
        self._unwatch = self.hub.watch(self.backend.watch)
        self.access.log_url()

    def stopService(self) -> Any:
        super().stopService()
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            unwatch()
        self.hub.close_all()
        port, self.port = self.port, None
        return None if port is None else maybeDeferred(port.stopListening)


def make_console_service(reactor: Any, backend: IConsoleBackend, settings: ConsoleSettings) -> ConsoleService:
    """The console for C{backend}, as C{settings} say (checked)."""
    return ConsoleService(reactor, backend, settings)
