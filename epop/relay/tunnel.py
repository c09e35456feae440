"""
The far end of an HTTP CONNECT tunnel: resolve, connect, splice.

The relay resolves the destination's name once and connects to the address
it got (L{resolve}, L{connect_destination}), directly or through the
hospital's proxy (L{epop.epmsi.tunnel.TunnelEndpoint}, which asks the proxy
for the same CONNECT with the relay's own Basic credentials).  Then
L{splice} registers each transport as the other's producer, as
L{twisted.protocols.portforward} does: a side that reads slowly pauses the
other, so the relay holds at most a socket buffer each way, whatever the
size of the transfer.  It also says whether a side held back that way
still moves (L{HeldBack}): such a tunnel is slow, not idle.  The bytes are
TLS the relay never decrypts.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol as TypingProtocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IPushProducer, IResolutionReceiver
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from epop.addressing import ip_of
from epop.epmsi.proxy import ProxyConfig, ProxyError
from epop.epmsi.tunnel import OneProtocolFactory, TunnelEndpoint
from epop.errors import UpstreamError, describe_destination_failure
from epop.messages import Text
from epop.tuning import unsent

__all__ = ["FarSide", "HeldBack", "IFarEnd", "connect_destination", "describe_failure", "resolve", "splice"]


class IFarEnd(TypingProtocol):
    """What the far side tells the session that owns it."""

    def far_received(self, data: bytes) -> None: ...

    def far_lost(self, reason: Failure) -> None: ...


@implementer(IResolutionReceiver)
class _FirstAddress:
    def __init__(self, host: str) -> None:
        self.host = host
        self.found: list[str] = []
        self.done: Deferred[str] = Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.found.append(address.host)

    def resolutionComplete(self) -> None:
        if self.found:
            self.done.callback(self.found[0])
        else:
            self.done.errback(DNSLookupError(self.host))


def resolve(reactor: Any, host: str, port: int) -> Deferred[str]:
    """The first address C{host} resolves to (an IP literal is its own)."""
    if ip_of(host) is not None:
        return succeed(host)
    receiver = _FirstAddress(host)
    reactor.nameResolver.resolveHostName(receiver, host, port)
    return receiver.done


class FarSide(Protocol):
    """The relay's connection to the destination; every byte goes to its session."""

    def __init__(self, session: IFarEnd) -> None:
        self.session = session

    def dataReceived(self, data: bytes) -> None:
        self.session.far_received(data)

    def connectionLost(self, reason: Failure) -> None:
        self.session.far_lost(reason)


def connect_destination(
    reactor: Any,
    far: FarSide,
    host: str,
    port: int,
    address: str | None,
    *,
    timeout: float,
    proxy: ProxyConfig | None = None,
) -> Deferred[Any]:
    """
    Connect C{far} to the destination: to C{address} (already resolved)
    directly, or to C{host} through C{proxy}, which resolves it itself.
    """
    if proxy is not None:
        return TunnelEndpoint(reactor, proxy, host, port, timeout).connect(OneProtocolFactory(far))
    assert address is not None
    kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
    return kind(reactor, address, port, timeout=timeout).connect(OneProtocolFactory(far))


@implementer(IPushProducer)
class HeldBack:
    """
    One side's transport as the producer of the other side, its reader:
    passes on the reader's pauses and resumes, and tells whether this side,
    held back, still moves (L{moved}).
    """

    def __init__(self, transport: Any, reader: Any, drained: Callable[[], None]) -> None:
        self.transport = transport
        self.reader = reader
        #: The reader's write buffer is full and has not drained yet.
        self.paused = False
        self._drained = drained
        self._unsent: int | None = None

    def pauseProducing(self) -> None:
        self.paused = True
        self._unsent = unsent(self.reader)
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self.transport.resumeProducing()
        self._drained()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def moved(self) -> bool:
        """
        Held back, and the reader took some of its bytes since the pause or
        the last call (C{True} too when the relay cannot see its buffer).
        """
        if not self.paused:
            return False
        now = unsent(self.reader)
        moved = now is None or now != self._unsent
        self._unsent = now
        return moved


def splice(client: Any, far: Any, drained: Callable[[], None] = lambda: None) -> tuple[HeldBack, HeldBack]:
    """
    Each transport the other's producer: the client's socket buffer full
    pauses reading from the far side, and the other way round.  C{drained}
    is called when a full buffer has drained.

    @return: the client's side and the far side.
    """
    client_side, far_side = HeldBack(client, far, drained), HeldBack(far, client, drained)
    far.registerProducer(client_side, True)
    client.registerProducer(far_side, True)
    return client_side, far_side


def describe_failure(failure: Failure, destination: str, *, timeout: float) -> UpstreamError:
    """
    Why the relay could not connect a tunnel, naming the destination it
    tried (which may not be e-PMSI), directly or through the proxy.
    """
    refusal = failure.value
    if isinstance(refusal, ProxyError):
        # The proxy's own words, under the destination's name instead of e-PMSI's.
        return UpstreamError(
            refusal.code,
            Text(
                "Could not reach {destination} through the proxy {proxy}: {reason}",
                destination=destination,
                proxy=refusal.proxy.address,
                reason=refusal.reason,
            ),
            refusal.cause,
        )
    return describe_destination_failure(failure, destination, timeout=timeout)
