"""
The HTTP client to e-PMSI, for the relay and for direct sends: one origin,
one connection pool, one TLS policy.

Everything goes through an L{Agent} built here on the L{Upstream}'s own pool,
never through treq's global one, so the owner of an L{Upstream} decides when
its connections close.  Connections are made by an L{IAgentEndpointFactory}:
that is where the certificate is verified and where the address reached is
recorded.

The connectivity check uses treq on that agent.  Relayed requests use the
agent itself: treq always asks for gzip and decodes it, keeps cookies and can
follow redirects, and a relay must hand each workstation e-PMSI's answer as
e-PMSI sent it, never another workstation's session cookie.

What the relay and a direct send use of an L{Upstream} is L{IUpstream};
L{epop.testing.FakeUpstream} provides it too, for tests.
"""

from __future__ import annotations

from http.cookiejar import DefaultCookiePolicy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import TimeoutError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IAddress,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import Attribute, Interface, implementer

from epop.addressing import format_peer
from epop.epmsi.origin import EpmsiOrigin
from epop.epmsi.proxy import ProxyConfig
from epop.epmsi.tunnel import TunnelEndpoint
from epop.errors import EpopError, UpstreamError, describe_upstream_failure
from epop.messages import Text
from epop.tuning import SEND_LIMIT, tune
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar

__all__ = [
    "CheckResult",
    "EpmsiEndpointFactory",
    "IUpstream",
    "Upstream",
    "response_headers",
]

#: Causes that, through a proxy, may as well come from the proxy as from e-PMSI.
_ALSO_THE_PROXY = frozenset({"connection-lost", "timeout"})


def response_headers(response: IResponse) -> list[tuple[str, str]]:
    """
    e-PMSI's answer headers as text, in order, one pair per value: Latin-1,
    as HTTP/1.1 carries them, so that no byte is lost or refused.
    """
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, values in response.headers.getAllRawHeaders()
        for value in values
    ]


class _QuietClientFactory(_HTTP11ClientFactory):
    """Twisted's factory for one connection to e-PMSI, without its "Starting factory" line."""

    noisy = False


class _QuietPool(HTTPConnectionPool):
    """
    A connection pool whose connections leave no "Starting factory
    _HTTP11ClientFactory(...)" line, with a memory address, in twistd's log
    at each upload and check: the relay journals its own lines.
    """

    _factory = _QuietClientFactory


@implementer(IStreamClientEndpoint)
class _BulkEndpoint:
    """
    Connects through C{wrapped}, lets the socket send large writes in one go
    (L{epop.tuning.SEND_LIMIT}), and reports the peer address reached to
    C{record} if given.
    """

    def __init__(
        self, wrapped: IStreamClientEndpoint, record: Callable[[IAddress], None] | None
    ) -> None:
        self._wrapped = wrapped
        self._record = record

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        def connected(protocol: Any) -> Any:
            tune(protocol.transport, send_limit=SEND_LIMIT)
            if self._record is not None:
                self._record(protocol.transport.getPeer())
            return protocol

        return self._wrapped.connect(protocolFactory).addCallback(connected)


@implementer(IAgentEndpointFactory)
class EpmsiEndpointFactory:
    """
    TLS connections to e-PMSI, direct or through a proxy's CONNECT tunnel;
    either way the certificate is checked against e-PMSI's host name.

    Each origin's TLS settings are built once and shared by its connections.
    Built per connection, each one loaded the trusted CAs afresh: with the
    system's store, about 0.85 MiB per upload in flight.
    """

    def __init__(
        self,
        reactor: Any,
        policy: BrowserLikePolicyForHTTPS,
        connect_timeout: float = 30.0,
        on_connected: Callable[[IAddress], None] | None = None,
        proxy: ProxyConfig | None = None,
    ) -> None:
        self._reactor = reactor
        self._policy = policy
        self._timeout = connect_timeout
        self._on_connected = on_connected
        self._proxy = proxy
        self._creators: dict[tuple[bytes, int], Any] = {}

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        inner: IStreamClientEndpoint
        if self._proxy is None:
            inner = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        else:
            inner = TunnelEndpoint(self._reactor, self._proxy, host, uri.port, self._timeout)
        origin = (uri.host, uri.port)
        if origin not in self._creators:
            self._creators[origin] = self._policy.creatorForNetloc(uri.host, uri.port)
        endpoint = wrapClientTLS(self._creators[origin], inner)
        return _BulkEndpoint(endpoint, self._on_connected)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of reaching e-PMSI once: the manual's "Tester e-PMSI"."""

    ok: bool
    url: str
    elapsed: float
    address: str | None = None
    status: int | None = None
    error: EpopError | None = None
    proxy: str | None = None

    def to_wire(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "ok": self.ok,
            "url": self.url,
            "elapsed": round(self.elapsed, 6),
            "address": self.address,
            "status": self.status,
            "proxy": self.proxy,
        }
        if self.error is not None:
            result["error"] = self.error.to_wire()
        return result

    def text(self) -> Text:
        took = f"{self.elapsed * 1000:.0f}"
        if self.ok and self.proxy:
            return Text(
                "e-PMSI {url} reached through the proxy {proxy} in {ms} ms "
                "(TLS verified, HTTP {status})",
                url=self.url,
                proxy=self.proxy,
                ms=took,
                status=self.status,
            )
        if self.ok:
            return Text(
                "e-PMSI {url} reached at {address} in {ms} ms (TLS verified, HTTP {status})",
                url=self.url,
                address=self.address,
                ms=took,
                status=self.status,
            )
        assert self.error is not None
        return Text("{error} (after {ms} ms)", error=self.error.text, ms=took)

    def describe(self, language: str = "en") -> str:
        return self.text().render(language)


@implementer(IBodyProducer)
class _StoppableBody:
    """
    Keeps L{IBodyProducer}'s promise for whatever body it wraps: once the
    HTTP client calls C{stopProducing} (e-PMSI's connection is gone), the
    L{Deferred} from C{startProducing} never fires.

    A relayed upload's body fails its Deferred when the operation is
    aborted, which may be after e-PMSI's connection dropped in the middle of
    the body; Twisted's HTTP client logs such a late result as an error, with
    a traceback, although the request already failed and was reported.
    """

    def __init__(self, wrapped: IBodyProducer) -> None:
        self._wrapped = wrapped
        self.length = wrapped.length
        self._stopped = False

    def startProducing(self, consumer: Any) -> Deferred[None]:
        produced = self._wrapped.startProducing(consumer)
        outcome: Deferred[None] = Deferred(lambda _: produced.cancel())

        def settled(result: object) -> None:
            if self._stopped:
                return None  # nobody listens any more: drop it, failure or not
            if isinstance(result, Failure):
                outcome.errback(result)
            else:
                outcome.callback(None)
            return None

        produced.addBoth(settled)
        return outcome

    def pauseProducing(self) -> None:
        self._wrapped.pauseProducing()

    def resumeProducing(self) -> None:
        self._wrapped.resumeProducing()

    def stopProducing(self) -> None:
        self._stopped = True
        self._wrapped.stopProducing()


class _NoCookies(IndexableCookieJar):
    """A check is anonymous: nothing it is told to remember is kept."""

    def __init__(self) -> None:
        super().__init__(DefaultCookiePolicy(allowed_domains=[]))


class IUpstream(Interface):
    """
    e-PMSI's side, as the relay and a workstation sending directly use it:
    relay one request, check that e-PMSI answers, close.
    """

    url = Attribute("e-PMSI's origin, C{https://host[:port]}: what people are told.")
    proxy = Attribute("The L{ProxyConfig} e-PMSI is reached through, or C{None}.")

    def request(
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: IBodyProducer | None,
    ) -> Deferred[IResponse]:
        """
        Send one request for C{path} (starting with a slash) on e-PMSI's
        origin, with these headers and body.  Fires with the answer, its
        body left unread for the caller to stream, or fails with an
        L{UpstreamError} (L{CancelledError} when cancelled).
        """

    def check() -> Deferred[CheckResult]:
        """
        Reach e-PMSI once, on a fresh connection.  Never fails: the
        L{CheckResult} says how it went.
        """

    def close() -> Deferred[None]:
        """Close the connections kept open; fires when they are closed."""


@implementer(IUpstream)
class Upstream:
    """
    Everything the relay needs to talk to e-PMSI.

    @param reactor: provides the TCP, time and TLS machinery.
    @param url: the e-PMSI origin; request paths are appended to it.
    @param policy: the TLS policy; see L{tls_policy}.
    @param proxy: the HTTP proxy to tunnel through, if any; one pool per
        L{Upstream} means one pool per proxy and credentials.
    @param check_path: what the connectivity check asks for.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str,
        policy: BrowserLikePolicyForHTTPS,
        *,
        connect_timeout: float = 30.0,
        proxy: ProxyConfig | None = None,
        check_path: str = "/",
    ) -> None:
        self.origin = EpmsiOrigin.from_url(url)
        self.proxy = proxy
        self._reactor = reactor
        self._policy = policy
        self._timeout = connect_timeout
        self._check_path = check_path
        self.pool = _QuietPool(reactor, persistent=True)
        self._agent = Agent.usingEndpointFactory(
            reactor, EpmsiEndpointFactory(reactor, policy, connect_timeout, proxy=proxy), self.pool
        )

    @property
    def url(self) -> str:
        return self.origin.url

    def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: IBodyProducer | None,
    ) -> Deferred[IResponse]:
        """
        Send one request to e-PMSI; the answer's body is left unread so the
        caller can stream it.  Failures arrive as L{UpstreamError}.
        """
        url = self.origin.url_for(path).encode("ascii")
        raw = Headers()
        for name, value in headers:
            raw.addRawHeader(name.encode("ascii"), value.encode("latin-1"))
        producer = _StoppableBody(body) if body is not None else None
        d = self._agent.request(method.encode("ascii"), url, raw, producer)

        def failed(failure: Failure) -> Failure:
            if failure.check(CancelledError):
                return failure
            return Failure(self._describe(failure))

        return d.addErrback(failed)

    def check(self) -> Deferred[CheckResult]:
        """
        Reach e-PMSI on a fresh connection: TLS handshake, then an HTTP
        answer to C{HEAD check_path}.  Never fails: the result says how it went.
        """
        clock: IReactorTime = self._reactor
        started = clock.seconds()
        reached: list[IAddress] = []
        pool = _QuietPool(self._reactor, persistent=False)
        client = HTTPClient(
            Agent.usingEndpointFactory(
                self._reactor,
                EpmsiEndpointFactory(
                    self._reactor, self._policy, self._timeout, reached.append, self.proxy
                ),
                pool,
            ),
            cookiejar=_NoCookies(),
        )
        d = client.head(
            self.origin.url_for(self._check_path), allow_redirects=False, unbuffered=True
        )
        # The connect timeout bounds TCP only; this bounds TLS and HTTP too.
        timed_out: list[bool] = []

        def give_up() -> None:
            timed_out.append(True)
            d.cancel()

        deadline = self._reactor.callLater(self._timeout, give_up)

        def answered(response: Any) -> CheckResult:
            deadline.cancel()
            return CheckResult(
                True,
                self.url,
                clock.seconds() - started,
                format_peer(reached[-1]) if reached else None,
                response.code,
                proxy=self.proxy.address if self.proxy else None,
            )

        def failed(failure: Failure) -> CheckResult:
            if timed_out:
                failure = Failure(TimeoutError(f"no answer within {self._timeout:g} s"))
            elif deadline.active():
                deadline.cancel()
            return CheckResult(
                False,
                self.url,
                clock.seconds() - started,
                format_peer(reached[-1]) if reached else None,
                error=self._describe(failure),
                proxy=self.proxy.address if self.proxy else None,
            )

        d.addCallbacks(answered, failed)
        return d

    def _describe(self, failure: Failure) -> UpstreamError:
        error = describe_upstream_failure(failure, self.url, timeout=self._timeout)
        if self.proxy is not None and error.cause in _ALSO_THE_PROXY:
            # A tunnel cut or silent in mid-operation may be the proxy's
            # doing (a limit on tunnels, a restart): name it for IT staff.
            return UpstreamError(
                error.code,
                Text(
                    "Could not reach e-PMSI at {url} through the proxy {proxy}: {reason}.",
                    url=self.url,
                    proxy=self.proxy.address,
                    reason=error.text.params.get("reason", ""),
                ),
                error.cause,
            )
        if self.proxy is not None and error.cause == "tls":
            return UpstreamError(
                error.code,
                Text(
                    "Could not reach e-PMSI at {url} through the proxy {proxy}: {reason}. "
                    "A proxy that inspects HTTPS needs its own CA certificate in --ca-file.",
                    url=self.url,
                    proxy=self.proxy.address,
                    reason=error.text.params.get("reason", ""),
                ),
                error.cause,
            )
        return error

    def close(self) -> Deferred[None]:
        """Close the idle connections the pool keeps."""
        return self.pool.closeCachedConnections()
