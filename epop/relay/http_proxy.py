"""
The relay as an HTTPS proxy for e-PMSI: one client connection that began
with an HTTP request head (L{epop.relay.session} sends it here on a first
byte that is an ASCII letter).

The client gets a tunnel (C{CONNECT host:port}) to an allowed destination
(L{epop.relay.destinations}) and nothing else: every other request is
answered with a short plain-text refusal (L{epop.relay.http_answers}), its
status saying why, and closed; nothing is forwarded.  (A browser's plain C{GET} of the relay's
page or PAC file, L{epop.relay.info_page}, is answered, then closed.)  The
session provides L{IRelaySession}, so that the allowlist, the caps, the
chooser and the relay's drain treat it as any workstation's connection,
and it is journaled the same way: the connection opened and closed, and
the tunnel as its operation.

A refusal decided by a wrapper before the head was read (a client outside
C{--allow}, one connection over a cap) waits for the head, so that it is
written in the client's language (C{Accept-Language}, French or English).
The relay stopping does not wait: a client that has not sent its whole
head yet is told at once, in English.

With C{--tunnel-users}, a CONNECT to an allowed destination must also carry
C{Proxy-Authorization: Basic} for one of its users
(L{epop.relay.tunnel_users}), checked after the destination: a site the
relay would refuse anyway gets its 403 without a password prompt, and no
bcrypt run.  The password and the header are never journaled or logged.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from epop.epmsi.proxy import ProxyConfig
from epop.errors import EpopError
from epop.messages import Text
from epop.printable import printable
from epop.relay import http_answers as answers
from epop.relay.client_hello import ServerNameCheck, TunnelHelloRefused
from epop.relay.destinations import Destination, Destinations, parse_destination
from epop.relay.failures import relay_stopping
from epop.relay.http_head import BadHead, HeadReader, RequestHead, language_of, url_destination
from epop.relay.info_page import page_for
from epop.relay.interfaces import IRelaySession
from epop.relay.journaled import JournaledConnection
from epop.relay.proxy_pac import reached_address
from epop.relay.tunnel import FarSide, HeldBack, connect_destination, describe_failure, resolve, splice
from epop.relay.tunnel_users import TunnelUsers, basic_credentials
from epop.tuning import READ_SIZE, SEND_LIMIT, tune

__all__ = ["DEFAULT_TUNNEL_IDLE_TIMEOUT", "HttpProxyFactory", "HttpProxySession"]

#: Seconds a tunnel may carry nothing, either way, before it is closed.
DEFAULT_TUNNEL_IDLE_TIMEOUT = 300.0
#: Time a closing connection gets to flush its refusal.
CLOSE_GRACE = 5.0
#: Refusals decided by a wrapper on the first bytes, answered once the
#: head (and its Accept-Language) is in.
_SAID_AFTER_THE_HEAD = frozenset({"not-authorized", "too-many-connections", "too-many-connections-from-client"})

class _Tunnel:
    """The session's operation: one tunnel, journaled as an object."""

    kind = "tunnel"

    def __init__(self, session: "HttpProxySession", destination: Destination) -> None:
        self.session = session
        self.destination = destination
        self.address: str | None = None
        self.started = session.clock.seconds()
        self.bytes_in = 0
        self.bytes_out = 0
        self.connecting: Deferred[Any] | None = None
        self._released = False
        session.journal_event(
            "object-instantiated",
            Text("Object instantiated: {kind} to {destination}").template,
            kind=self.kind,
            destination=str(destination),
        )

    def abort(self, error: EpopError | None) -> None:
        if self.connecting is not None and not self.connecting.called:
            self.connecting.cancel()

    def release(self, outcome: str, reason: str, error: str | None = None) -> None:
        if self._released:
            return
        self._released = True
        fields: dict[str, Any] = {}
        if self.address is not None:
            fields["destination_address"] = self.address
        if error is not None:
            fields["error"] = error
        self.session.journal_released(
            Text("Object released: {kind} to {destination}: {outcome} ({reason})").template,
            kind=self.kind,
            destination=str(self.destination),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            duration=round(self.session.clock.seconds() - self.started, 6),
            outcome=outcome,
            reason=reason,
            **fields,
        )


class _Stage(Enum):
    """Where an HTTP session stands: the head, then a tunnel or a refusal."""

    #: Reading the request head.
    HEAD = "head"
    #: An allowed CONNECT with --tunnel-users: checking its credentials.
    CREDENTIALS = "credentials"
    #: An allowed CONNECT: resolving and connecting to the destination.
    CONNECTING = "connecting"
    #: Both sides spliced, bytes moving.
    TUNNEL = "tunnel"
    #: Answered or ended: nothing more is read or sent.
    CLOSING = "closing"


@implementer(IRelaySession)
class HttpProxySession(JournaledConnection, Protocol):
    """One client that speaks HTTP to the relay: a head, then a tunnel or a refusal."""

    log = Logger()

    def __init__(self, factory: "HttpProxyFactory", connection_id: int) -> None:
        super().__init__(factory.relay.relay_id, connection_id, factory.reactor, factory.relay.language)
        self.factory = factory
        self.operation: _Tunnel | None = None
        self._reader = HeadReader()
        self._head: RequestHead | None = None
        self._pending: EpopError | None = None
        self._early: list[bytes] = []
        self._far: FarSide | None = None
        self._hello: ServerNameCheck | None = None
        self._sides: tuple[HeldBack, ...] = ()
        self._state = _Stage.HEAD
        self._head_timer: Any = None
        self._idle_timer: Any = None
        self._last_activity = 0.0
        self._grace: Any = None

    # IRelaySession
    def fail(self, error: EpopError) -> None:
        """Refuse, or (during a tunnel) close: the connection cannot go on."""
        if self._state is _Stage.CLOSING:
            return
        if self._state is _Stage.HEAD and self._head is None and error.code in _SAID_AFTER_THE_HEAD:
            # Said once the head is in, in the client's language.
            self._pending = error
            return
        if self._state is _Stage.TUNNEL:
            self._end(error.code, "aborted")
            return
        self._refuse(answers.as_refusal(error))

    def timeoutConnection(self) -> None:
        self._refuse(answers.no_request())

    def count_refused(self, data: bytes) -> None:
        super().count_refused(data)
        if self._pending is not None and self._state is _Stage.HEAD:
            self._read_head(data)

    # connection lifetime
    def connectionMade(self) -> None:
        self._opened = self.clock.seconds()
        self.factory.relay.connections[self.connection_id] = self
        self._head_timer = self.clock.callLater(self.factory.hello_timeout, self._head_too_slow)
        if self.factory.relay.draining:
            self.fail(relay_stopping())

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self._state is _Stage.HEAD:
            self._read_head(data)
        elif self._state in (_Stage.CREDENTIALS, _Stage.CONNECTING):
            self._early.append(data)
        elif self._state is _Stage.TUNNEL:
            self._last_activity = self.clock.seconds()
            self._to_far(data)

    def connectionLost(self, reason: Failure) -> None:
        self.opened()
        self._stop_timers()
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        if self._close_reason is None:
            self._close_reason = "closed-by-client"
        operation, self.operation = self.operation, None
        if operation is not None:
            operation.abort(None)
            operation.release(
                "completed" if self._state is _Stage.TUNNEL else "aborted", self._close_reason, self._close_error
            )
        if self._far is not None and self._far.transport is not None:
            self._far.transport.loseConnection()
        self._state = _Stage.CLOSING
        self.factory.relay.connections.pop(self.connection_id, None)
        self.journal_closed()

    # the head
    def _read_head(self, data: bytes) -> None:
        try:
            found = self._reader.feed(data)
        except BadHead as bad:
            if self._pending is not None:
                self._refuse(answers.as_refusal(self._pending))
            elif bad.status == 431:
                self._refuse(answers.head_too_large(self._reader.limit))
            else:
                self._refuse(answers.bad_request())
            return
        if found is None:
            return
        self._head, rest = found
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self.opened()
        if self._pending is not None:
            self._refuse(answers.as_refusal(self._pending))
            return
        self._decide(self._head, rest)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._pending is not None:
            self._refuse(answers.as_refusal(self._pending))
            return
        self._refuse(answers.head_too_slow(self.factory.hello_timeout))

    def _decide(self, head: RequestHead, rest: bytes) -> None:
        destinations = self.factory.destinations
        if not destinations:
            self._refuse(answers.tunnels_disabled())
            return
        if head.method == "CONNECT":
            try:
                host, port = parse_destination(head.target, default_port=0)
            except ValueError:
                host, port = "", 0
            if not host or not port:
                self._refuse(answers.bad_connect())
                return
            self.asked_for(host, port)
            destination = destinations.find(host, port)
            if destination is None:
                self._refuse(answers.destination_not_allowed(host, port, destinations))
                return
            if self.factory.users is not None:
                self._check_credentials(self.factory.users, head, destination, rest)
                return
            self._open(destination, rest)
            return
        if head.method in ("GET", "HEAD") and head.target.startswith("/") and self._serve_page(head):
            return
        if head.target.lower().startswith(("http://", "https://")):
            if (asked := url_destination(head.target)) is not None:
                self.asked_for(*asked)
            self._refuse(answers.not_a_tunnel(destinations))
            return
        self._refuse(answers.method_not_allowed(destinations))

    # the credentials (--tunnel-users)
    def _check_credentials(
        self, users: TunnelUsers, head: RequestHead, destination: Destination, rest: bytes
    ) -> None:
        """Open the tunnel once the user and password are right; else 407."""
        credentials = basic_credentials(head.header("proxy-authorization"))
        if credentials is None:
            self._refuse(answers.credentials_missing())
            return
        self.user = credentials[0] or None
        self._state = _Stage.CREDENTIALS
        if rest:
            self._early.append(rest)
        # Whatever else the client sends waits in its socket, not here.
        self.transport.pauseProducing()
        d = users.check(*credentials)
        del credentials  # the password goes no further than the check

        def checked(right: bool) -> None:
            if self._state is not _Stage.CREDENTIALS:
                return  # the client left, or the relay is stopping: already answered
            if right:
                early, self._early = self._early, []
                self._open(destination, b"".join(early))
                return
            self.transport.resumeProducing()
            self._refuse(answers.credentials_wrong())

        def not_checked(failure: Failure) -> None:
            self.log.failure(
                "Could not check the password of {user}", failure, user=printable(self.user or "")
            )
            if self._state is not _Stage.CREDENTIALS:
                return
            self.transport.resumeProducing()
            self._refuse(answers.credentials_unchecked())

        d.addCallbacks(checked, not_checked)

    # the tunnel
    def _open(self, destination: Destination, rest: bytes) -> None:
        self._state = _Stage.CONNECTING
        if rest:
            self._early.append(rest)
        # Whatever else the client sends waits in its socket, not here.
        self.transport.pauseProducing()
        tunnel = self.operation = _Tunnel(self, destination)
        factory = self.factory
        far = self._far = FarSide(self)
        if factory.proxy is not None:
            d = connect_destination(
                factory.reactor, far, destination.host, destination.port, None,
                timeout=factory.connect_timeout, proxy=factory.proxy,
            )
        else:
            d = resolve(factory.reactor, destination.host, destination.port)

            def resolved(address: str) -> Deferred[Any]:
                tunnel.address = address
                if not destination.may_resolve_to(address):
                    raise answers.resolves_locally(destination, address)
                return connect_destination(
                    factory.reactor, far, destination.host, destination.port, address,
                    timeout=factory.connect_timeout,
                )

            d.addCallback(resolved)
        tunnel.connecting = d
        d.addCallbacks(self._connected, self._not_connected)

    def _connected(self, far: Any) -> None:
        tunnel = self.operation
        if self._state is not _Stage.CONNECTING or tunnel is None:
            far.transport.abortConnection()
            return
        if tunnel.address is None:
            peer = far.transport.getPeer()
            tunnel.address = None if self.factory.proxy is not None else getattr(peer, "host", None)
        self._state = _Stage.TUNNEL
        answer = b"HTTP/1.1 200 Connection established\r\n\r\n"
        self.bytes_out += len(answer)
        self.transport.write(answer)
        self._sides = splice(self.transport, far.transport, self._drained)
        # A tunnel costs per read and per send, not per byte: large pieces
        # (a new connection reads small ones; see epop.tuning).
        tune(self.transport, read_size=READ_SIZE, send_limit=SEND_LIMIT)
        tune(far.transport, read_size=READ_SIZE, send_limit=SEND_LIMIT)
        if not tunnel.destination.is_literal:
            # No domain fronting: the ClientHello must name the CONNECT host.
            self._hello = ServerNameCheck(tunnel.destination.host)
        early, self._early = self._early, []
        for data in early:
            self._to_far(data)
        if self._state is not _Stage.TUNNEL:
            return
        self.transport.resumeProducing()
        self._last_activity = self.clock.seconds()
        self._idle_timer = self.clock.callLater(self.factory.idle_timeout, self._idle_check)

    def _not_connected(self, failure: Failure) -> None:
        if self._state is not _Stage.CONNECTING:
            return
        self.transport.resumeProducing()
        tunnel = self.operation
        destination = str(tunnel.destination) if tunnel is not None else "?"
        error = failure.value
        if not isinstance(error, answers.Refusal):
            error = answers.failed_to_connect(
                describe_failure(failure, destination, timeout=self.factory.connect_timeout)
            )
        self._refuse(error)

    def _to_far(self, data: bytes) -> None:
        """Forward the client's bytes, once their ClientHello names the CONNECT host."""
        assert self.operation is not None and self._far is not None
        if self._hello is not None:
            # Held until decided: at most a ClientHello (MAX_HELD) and one read.
            try:
                passed = self._hello.feed(data)
            except TunnelHelloRefused as refused:
                self._hello = None
                alert = refused.alert_record()
                self.bytes_out += len(alert)
                self.transport.write(alert)
                self._end(refused.reason, "refused", refused.error)
                return
            if passed is None:
                return
            self._hello, data = None, passed
        self.operation.bytes_in += len(data)
        self._far.transport.write(data)

    def far_received(self, data: bytes) -> None:
        if self.operation is not None:
            self.operation.bytes_out += len(data)
        self.bytes_out += len(data)
        self._last_activity = self.clock.seconds()
        self.transport.write(data)

    def far_lost(self, reason: Failure) -> None:
        if self._state is _Stage.TUNNEL:
            self._end("closed-by-destination", "completed")

    def _drained(self) -> None:
        """A slow reader's buffer has drained: bytes moved."""
        self._last_activity = self.clock.seconds()

    def _idle_check(self) -> None:
        """
        Close the tunnel once nothing moved either way for the idle timeout.
        A side held back by a slow reader is not idle while the reader
        still takes some of its bytes.
        """
        self._idle_timer = None
        # A list, not a generator: each side notes what its reader holds now.
        if any([side.moved() for side in self._sides]):
            self._last_activity = self.clock.seconds()
        left = self._last_activity + self.factory.idle_timeout - self.clock.seconds()
        if left > 0:
            self._idle_timer = self.clock.callLater(left, self._idle_check)
            return
        self._end("tunnel-idle", "aborted")

    def _end(self, reason: str, outcome: str, error: str | None = None) -> None:
        """Close both sides of a tunnel."""
        self.ending_because(reason, error)
        if self.operation is not None:
            self.operation.release(outcome, reason, error)
        self._state = _Stage.CLOSING
        self._stop_timers()
        if self._far is not None and self._far.transport is not None:
            self._far.transport.loseConnection()
        self.transport.loseConnection()
        self._grace = self.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    # answers short of a tunnel
    def _refuse(self, refusal: answers.Refusal) -> None:
        if self._state is _Stage.CLOSING:
            return
        self.opened()
        self._stop_timers()
        self._close_reason = refusal.code
        self._close_error = refusal.cause
        operation, self.operation = self.operation, None
        if operation is not None:
            operation.abort(refusal)
            operation.release("failed" if refusal.status >= 500 else "refused", refusal.code, refusal.cause)
        language = language_of(self._head.header("accept-language") if self._head else "")
        self._answer(refusal.encode(language))

    def _serve_page(self, head: RequestHead) -> bool:
        """
        A browser's C{GET} for the relay's page or its PAC
        (L{epop.relay.info_page}), answered and closed; C{False} if there
        is no such page.
        """
        reached = reached_address(self.transport.getHost(), head.header("host"))
        if reached is None:
            return False
        language = language_of(head.header("accept-language"))
        page = page_for(head.target, self.factory.destinations.entries, reached, language)
        if page is None:
            return False
        self.opened()
        self._stop_timers()
        self._close_reason = page.reason
        # Five minutes: a browser does not fetch the PAC again for every
        # page, and a changed --tunnel-to still reaches it soon.
        # The page is in the client's language: a cache must keep one per language.
        extra = "Cache-Control: max-age=300\r\nVary: Accept-Language\r\nX-Content-Type-Options: nosniff\r\n"
        self._answer(
            answers.encode_answer(200, page.content_type, page.body, extra, with_body=head.method != "HEAD")
        )
        return True

    def _answer(self, data: bytes) -> None:
        """Send one whole answer, then close."""
        self._state = _Stage.CLOSING
        self.bytes_out += len(data)
        self.transport.write(data)
        self.transport.loseConnection()
        self._grace = self.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def _stop_timers(self) -> None:
        for timer in (self._head_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._head_timer = self._idle_timer = None


class HttpProxyFactory(Factory):
    """
    Builds one L{HttpProxySession} per HTTP client, numbered, timed and
    drained with the relay's own connections (C{relay}, the
    L{epop.relay.protocol.RelayFactory}).

    @param destinations: where tunnels may go; empty turns them off.
    @param proxy: the hospital's proxy, for the relay's side of each tunnel.
    @param idle_timeout: seconds a tunnel may carry nothing before it closes.
    @param users: who may open tunnels (C{--tunnel-users}); C{None}: anyone
        the allowlist lets in.
    """

    noisy = False

    def __init__(
        self,
        relay: Any,
        destinations: Destinations,
        *,
        proxy: ProxyConfig | None = None,
        connect_timeout: float = 30.0,
        hello_timeout: float = 30.0,
        idle_timeout: float = DEFAULT_TUNNEL_IDLE_TIMEOUT,
        users: TunnelUsers | None = None,
    ) -> None:
        self.relay = relay
        self.reactor = relay.reactor
        self.destinations = destinations
        self.proxy = proxy
        self.connect_timeout = connect_timeout
        self.hello_timeout = hello_timeout
        self.idle_timeout = idle_timeout
        self.users = users

    def buildProtocol(self, addr: IAddress) -> HttpProxySession:
        return HttpProxySession(self, self.relay.next_connection_id())
