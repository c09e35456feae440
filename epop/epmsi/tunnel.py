"""
HTTPS to e-PMSI through a corporate HTTP proxy: the CONNECT tunnel.

Twisted's L{ProxyAgent} never sends CONNECT, so HTTPS through a proxy is
built here on Twisted's public hooks: L{TunnelEndpoint} connects to the
proxy, asks it for a tunnel to e-PMSI (with C{Proxy-Authorization: Basic}
when a user is set), and once the proxy says 200 hands the connection to
whatever protocol it was asked to connect, usually the TLS layer that
L{twisted.internet.endpoints.wrapClientTLS} puts around it.  TLS then runs
end to end inside the tunnel: the proxy never sees the content, and e-PMSI
never sees the proxy's credentials.

Every way the proxy can say no is a L{ProxyError} whose C{cause} names it;
when the refusal's body is short plain text (the e-POP relay's CONNECT mode
says exactly why, in the language the CONNECT asked for), the error quotes
it (L{epop.epmsi.proxy_words}).
The proxy's settings themselves are in L{epop.epmsi.proxy}.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from epop._version import __version__
from epop.addressing import host_port
from epop.epmsi.proxy import PASSWORD_VARIABLE, ProxyConfig, ProxyError
from epop.epmsi.proxy_words import body_to_read, proxy_words
from epop.messages import LANGUAGES, Text

__all__ = ["MAX_ANSWER_HEAD", "OneProtocolFactory", "TunnelEndpoint"]

#: Largest CONNECT answer head we read before calling it garbage.
MAX_ANSWER_HEAD = 64 * 1024

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?")


def _refusal(
    proxy: ProxyConfig, status: int, reason: str, head: bytes, words: str | None = None
) -> ProxyError:
    """
    The error for a refusal; with the proxy's own C{words}, those say why,
    rather than a guess from the status (kept for 407, whose advice fits).
    """
    said = f"{status} {reason}".strip()
    cause, guess = _guess(status, said, head, proxy.user)
    if words is None:
        text = guess
    elif status == 407:
        text = Text('{refusal} The proxy says: "{words}"', refusal=guess, words=words)
    else:
        text = Text('the proxy refused the tunnel ({said}): "{words}"', said=said, words=words)
    return ProxyError(proxy, cause, text)


def _guess(status: int, said: str, head: bytes, user: str | None) -> tuple[str, Text]:
    """The cause and its text, from the status alone."""
    if status == 407:
        schemes = [
            line.split(b":", 1)[1].strip().split(b" ", 1)[0].decode("latin-1")
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"proxy-authenticate:")
        ]
        if schemes and not any(s.lower() == "basic" for s in schemes):
            return (
                "proxy-auth-unsupported",
                Text(
                    "the proxy asks for {schemes} authentication ({said}), and only Basic "
                    "is supported: ask for an account with Basic authentication, or for "
                    "e-PMSI to be reachable without one.",
                    schemes=", ".join(schemes),
                    said=said,
                ),
            )
        if user is None:
            return (
                "proxy-auth-required",
                Text(
                    "the proxy demands a user name and password ({said}). Give the proxy "
                    "user and its password (password file or {variable}).",
                    said=said,
                    variable=PASSWORD_VARIABLE,
                ),
            )
        return (
            "proxy-auth-rejected",
            Text(
                "the proxy rejected the user name '{user}' or its password ({said}). "
                "Check both with the IT department.",
                user=user,
                said=said,
            ),
        )
    if status == 403:
        return (
            "proxy-forbidden",
            Text(
                "the proxy forbids this destination ({said}). Ask the IT department to "
                "allow HTTPS (CONNECT) to e-PMSI.",
                said=said,
            ),
        )
    return "proxy-error", Text("the proxy refused the tunnel ({said}).", said=said)


class _TunnelProtocol(Protocol):
    """Asks for the tunnel, then passes every byte to the tunnelled protocol."""

    def __init__(self, endpoint: "TunnelEndpoint", factory: IProtocolFactory) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._head = b""
        self.tunnelled: Any = None
        self.opened: Deferred[Any] = Deferred()
        #: A refusal whose body is being read: status, reason phrase, head.
        self._refused: tuple[int, str, bytes] | None = None
        self._body = b""
        self._body_size = 0
        self._body_exact = False

    def connectionMade(self) -> None:
        endpoint = self._endpoint
        target = host_port(endpoint.host, endpoint.port).encode("idna")
        lines = [
            b"CONNECT " + target + b" HTTP/1.1",
            b"Host: " + target,
            b"User-Agent: epop/" + __version__.encode(),
        ]
        authorization = endpoint.proxy.authorization()
        if authorization is not None:
            lines.append(b"Proxy-Authorization: " + authorization)
        if endpoint.proxy.language in LANGUAGES:
            # A plain tag: the e-POP relay answers its refusals in it.
            lines.append(b"Accept-Language: " + endpoint.proxy.language.encode("ascii"))
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self.tunnelled is not None:
            self.tunnelled.dataReceived(data)
            return
        if self._refused is not None:
            self._read_body(data)
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_ANSWER_HEAD:
                self._refuse(self._garbage())
            return
        head, rest = self._head[:end], self._head[end + 4 :]
        self._head = b""
        match = _STATUS_LINE.fullmatch(head.split(b"\r\n", 1)[0])
        if match is None:
            self._refuse(self._garbage())
            return
        status = int(match.group(1))
        if status // 100 != 2:
            reason = (match.group(2) or b"").decode("latin-1")
            self._refused = (status, reason, head)
            to_read = body_to_read(head)
            if to_read is None:
                self._refuse(self.refusal())
                return
            self._body_size, self._body_exact = to_read
            self._read_body(rest)
            return
        self.tunnelled = self._factory.buildProtocol(self.transport.getPeer())
        self.tunnelled.makeConnection(self.transport)
        self.opened.callback(self.tunnelled)
        if rest:
            self.tunnelled.dataReceived(rest)

    def _read_body(self, data: bytes) -> None:
        """Gather the refusal's body; refuse once it is whole (or L{MAX_BODY})."""
        self._body += data
        if len(self._body) >= self._body_size:
            self._refuse(self.refusal(self._body[: self._body_size]))

    def refusal(self, body: bytes | None = None) -> ProxyError | None:
        """
        The proxy's refusal, quoting C{body} when it says something; C{None}
        before any refusal arrived.
        """
        if self._refused is None:
            return None
        status, reason, head = self._refused
        words = None if body is None else proxy_words(head, body)
        return _refusal(self._endpoint.proxy, status, reason, head, words)

    def _garbage(self) -> ProxyError:
        return ProxyError(
            self._endpoint.proxy,
            "proxy-error",
            Text(
                "the proxy answered CONNECT with something that is not HTTP: is this "
                "address really an HTTP proxy?"
            ),
        )

    def _refuse(self, error: ProxyError) -> None:
        self.transport.abortConnection()
        if not self.opened.called:
            self.opened.errback(error)

    def connectionLost(self, reason: Failure = netError.ConnectionDone) -> None:  # type: ignore[assignment]
        if self.tunnelled is not None:
            self.tunnelled.connectionLost(reason)
        elif self._refused is not None:
            if not self.opened.called:
                # Until the close is how long a body without Content-Length is;
                # one cut short of its Content-Length is not quoted.
                whole = not self._body_exact
                self.opened.errback(self.refusal(self._body if whole else None))
        elif not self.opened.called:
            self.opened.errback(
                ProxyError(
                    self._endpoint.proxy,
                    "proxy-error",
                    Text("the proxy closed the connection without answering CONNECT."),
                )
            )


class OneProtocolFactory(Factory):
    """
    Hands a connection the one protocol made for it (as
    L{twisted.internet.endpoints.connectProtocol} does), without a
    "Starting factory" line in twistd's log for every connection.
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """
    A connection to C{host:port} through C{proxy}'s CONNECT tunnel.

    @param timeout: seconds for the whole handshake (reaching the proxy and
        its answer); past them the attempt fails with cause C{proxy-timeout},
        or, when a refusal arrived but not yet its body, as that refusal.
    @param proxy_endpoint: how to reach the proxy; by default a
        L{HostnameEndpoint} to its host and port.
    """

    def __init__(
        self,
        reactor: Any,
        proxy: ProxyConfig,
        host: str,
        port: int,
        timeout: float = 30.0,
        proxy_endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        self.reactor = reactor
        self.proxy = proxy
        self.host = host
        self.port = port
        self.timeout = timeout
        self._proxy_endpoint = proxy_endpoint or HostnameEndpoint(reactor, proxy.host, proxy.port)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        tunnel = _TunnelProtocol(self, protocolFactory)
        state: dict[str, Any] = {"reason": None}

        def cancel(result: Deferred[Any]) -> None:
            stop(None)

        result: Deferred[Any] = Deferred(cancel)

        def stop(reason: ProxyError | None) -> None:
            state["reason"] = reason
            if not connecting.called:
                connecting.cancel()
                return
            if tunnel.transport is not None:
                tunnel.transport.abortConnection()
            if not tunnel.opened.called:
                tunnel.opened.errback(reason or CancelledError())

        def timed_out() -> None:
            # A refusal whose body is slow is still that refusal, without its words.
            stop(
                tunnel.refusal()
                or ProxyError(
                    self.proxy,
                    "proxy-timeout",
                    Text(
                        "the proxy did not open the tunnel within {seconds} s.",
                        seconds=f"{self.timeout:g}",
                    ),
                )
            )

        deadline = self.reactor.callLater(self.timeout, timed_out)
        connecting = self._proxy_endpoint.connect(OneProtocolFactory(tunnel))

        def unreachable(failure: Failure) -> Failure:
            if state["reason"] is not None:
                return Failure(state["reason"])
            if failure.check(CancelledError, netError.ConnectingCancelledError):
                return failure
            return Failure(_unreachable(self.proxy, failure))

        connecting.addErrback(unreachable)
        connecting.addCallback(lambda _: tunnel.opened)

        def settled(outcome: Any) -> Any:
            if deadline.active():
                deadline.cancel()
            if isinstance(outcome, Failure) and state["reason"] is not None:
                outcome = Failure(state["reason"])
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)
            return None

        connecting.addBoth(settled)
        return result


def _unreachable(proxy: ProxyConfig, failure: Failure) -> ProxyError:
    value = failure.value
    if isinstance(value, netError.DNSLookupError):
        text = Text("its host name was not found. Check the proxy's name.")
    elif isinstance(value, netError.ConnectionRefusedError):
        text = Text(
            "it refused the connection: nothing listens there. Check the proxy's address and port."
        )
    elif isinstance(value, (netError.TimeoutError, netError.TCPTimedOutError)):
        text = Text("it did not answer in time. Check the proxy's address.")
    else:
        text = Text("it could not be reached ({why}).", why=failure.getErrorMessage())
    return ProxyError(proxy, "proxy-unreachable", text)
