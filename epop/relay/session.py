"""
The relay's first look at a workstation's connection: TLS, plain e-POP or
HTTP.

The relay takes encrypted and plain sessions on the same port and tells
them apart by the first byte (a TLS handshake starts with 0x16, an e-POP
HELLO with 0x01); an ASCII letter starts an HTTP request head, for the
relay as an HTTPS proxy (L{epop.relay.http_proxy}).  The certificates and the choices of each side are in
L{epop.local_tls}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IAddress, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import ProtocolWrapper, TimeoutMixin, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from epop.errors import EpopError, ProtocolError
from epop.local_tls import RelayTLS, openssl_words
from epop.messages import Text
from epop.relay.interfaces import count_refused, relay_inside
from epop.relay.failures import relay_stopping
from epop.tuning import MIN_READ_SIZE, tune

__all__ = ["SessionChoiceFactory"]

_TLS_HANDSHAKE = 0x16


def _is_letter(byte: int) -> bool:
    """An HTTP method's first byte (CONNECT, GET...): an ASCII letter."""
    return 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


class _RecordBatcher(ProtocolWrapper):
    """
    Hands the relay, in one call, everything TLS decrypted from one socket
    read.

    Twisted's TLS delivers one record, at most 16 KiB, per call: without
    this, the relay's hashing and forwarding would run 16 times per 256 KiB
    read.  Data that arrives outside a read goes straight through.
    """

    def __init__(self, factory: WrappingFactory, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self._batch: list[bytes] | None = None

    def begin(self) -> None:
        self._batch = []

    def end(self) -> None:
        batch, self._batch = self._batch, None
        if batch:
            self.wrappedProtocol.dataReceived(batch[0] if len(batch) == 1 else b"".join(batch))

    def dataReceived(self, data: bytes) -> None:
        if self._batch is None:
            self.wrappedProtocol.dataReceived(data)
        else:
            self._batch.append(data)

    def connectionLost(self, reason: Failure) -> None:
        self.end()
        if reason.check(SSL.Error):
            # The handshake (or a record) failed: say so, in OpenSSL's words.
            relay_inside(self.wrappedProtocol).ending_because("tls-failed", openssl_words(reason))
        super().connectionLost(reason)


class _Chooser(Protocol, TimeoutMixin):
    """
    Reads the first byte, then hands the connection to TLS or to plain e-POP.
    A peer that sends nothing at all meets the relay's idle timeout all the
    same.
    """

    def __init__(self, factory: "SessionChoiceFactory", addr: IAddress) -> None:
        self._factory = factory
        self._addr = addr
        self._inner: Any = None
        self._batcher: _RecordBatcher | None = None
        self._refused = False
        #: When the connection was accepted.
        self._since = 0.0

    def callLater(self, period: float, func: Any) -> Any:
        return self._factory.clock.callLater(period, func)

    def connectionMade(self) -> None:
        # Small until an upload streams (epop.tuning.ReadBudget): in a rush,
        # every new connection's first read already holds body bytes.
        tune(self.transport, read_size=MIN_READ_SIZE)
        factory = self._factory
        self._since = factory.clock.seconds()
        if factory.max_silent and len(factory.waiting) >= factory.max_silent:
            # Silent connections cost a socket each, so they are bounded.
            # The oldest makes room if it has been silent a while (a flood
            # cannot keep workstations out); in a burst of connections that
            # have not had time to speak, the newcomer is the one refused.
            oldest = next(iter(factory.waiting))
            if self._since - oldest._since >= factory.silent_grace:
                oldest.crowded_out(factory.max_silent)
            else:
                self.crowded_out(factory.max_silent)
                return
        factory.waiting[self] = None
        self.setTimeout(factory.idle_timeout)

    def close(self) -> None:
        """The relay is stopping before this peer said anything: tell it so."""
        self.setTimeout(None)
        self._factory.waiting.pop(self, None)
        self._plain()
        self._refused = True
        relay_inside(self._inner).fail(relay_stopping())

    def crowded_out(self, limit: int) -> None:
        """Too many connections have said nothing yet: this one is closed."""
        self.setTimeout(None)
        self._factory.waiting.pop(self, None)
        self._plain()
        self._refused = True
        relay_inside(self._inner).fail(
            ProtocolError(
                "too-many-silent-connections",
                Text(
                    "The relay holds {limit} connections that have sent nothing yet, its "
                    "maximum; this one is closed. Connect again and send at once.",
                    limit=limit,
                ),
            )
        )

    def timeoutConnection(self) -> None:
        self._factory.waiting.pop(self, None)
        self._plain()
        self._refused = True
        relay_inside(self._inner).timeoutConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._inner is None:
            self.setTimeout(None)
            self._factory.waiting.pop(self, None)
            if self._factory.http is not None and _is_letter(data[0]):
                self._inner = self._factory.http.buildProtocol(self._addr)
                self._inner.makeConnection(self.transport)
            else:
                self._choose(data[0] == _TLS_HANDSHAKE)
        if self._refused:
            count_refused(self._inner, data)
            return
        if self._batcher is None:
            self._inner.dataReceived(data)
            return
        self._batcher.begin()
        try:
            self._inner.dataReceived(data)
        finally:
            self._batcher.end()

    def refuse(self, error: EpopError, received: bytes) -> None:
        """
        A layer outside (the PROXY header) refuses this connection before
        it is handed on: answer and journal it as a plain e-POP connection.
        """
        self.setTimeout(None)
        self._factory.waiting.pop(self, None)
        if self._inner is None:
            self._plain()
        self._refused = True
        count_refused(self._inner, received)
        relay_inside(self._inner).fail(error)

    def ending(self, reason: str, error: str, received: bytes) -> None:
        """A layer outside knows why this connection ends, before any byte reached it."""
        if self._inner is None:
            self._plain()
            self._refused = True
        count_refused(self._inner, received)
        relay_inside(self._inner).ending_because(reason, error)

    def _plain(self) -> None:
        self._inner = self._factory.wrapped.buildProtocol(self._addr)
        self._inner.makeConnection(self.transport)

    def _choose(self, encrypted: bool) -> None:
        factory = self._factory
        if encrypted and factory.tls is not None:
            self._inner = factory.tls.buildProtocol(self._addr)
            self._batcher = self._inner.wrappedProtocol
            self._inner.makeConnection(self.transport)
            return
        self._plain()
        if (encrypted or factory.require) and factory.gate is not None:
            # A client the relay would not serve anyway learns only that.
            refusal = factory.gate(self.transport.getPeer())
            if refusal is not None:
                self._refuse_with(refusal)
                return
        if encrypted:
            self._refuse(
                "tls-not-configured",
                Text(
                    "This relay has no certificate and does not speak TLS: connect "
                    "without encryption, or ask for the relay's certificate to be set up."
                ),
            )
        elif factory.require:
            self._refuse(
                "tls-required",
                Text(
                    "This relay accepts encrypted connections only: connect with TLS "
                    "(epop --tls and the relay's CA certificate)."
                ),
            )

    def _refuse(self, code: str, message: Text) -> None:
        self._refuse_with(ProtocolError(code, message))

    def _refuse_with(self, error: EpopError) -> None:
        self._refused = True
        relay_inside(self._inner).fail(error)

    def connectionLost(self, reason: Failure) -> None:
        self.setTimeout(None)
        self._factory.waiting.pop(self, None)
        if self._inner is None:
            # Closed before a byte: still a connection worth journaling.
            self._plain()
        self._inner.connectionLost(reason)


class _BatchingFactory(WrappingFactory):
    protocol = _RecordBatcher
    noisy = False


class SessionChoiceFactory(Factory):
    """
    Serves TLS and plain e-POP sessions on one port.

    @param wrapped: builds the e-POP protocol (the relay's factory, or the
        allowlist around it).
    @param tls: the relay's TLS settings, or C{None} for plain only.
    @param clock: times the wait for a connection's first byte.
    @param idle_timeout: how long that wait may be.
    @param max_silent: connections that have not sent their first byte yet,
        at most (0: no limit); one more closes the oldest of them if it has
        been silent for C{silent_grace} seconds, else the newcomer.
    @param silent_grace: how long a connection may take to speak before a
        newcomer may crowd it out.
    @param http: builds the HTTP proxy side (L{epop.relay.http_proxy}, inside
        its own allowlist and caps) for a connection whose first byte is an
        ASCII letter; C{None} refuses those as today.
    @param gate: the allowlist's verdict on a peer (an error, or C{None} to
        admit it), asked before a session is refused for its choice of TLS
        or plain, so that a client outside the allowlist learns only that.
    """

    noisy = False

    def __init__(
        self,
        wrapped: IProtocolFactory,
        tls: RelayTLS | None,
        clock: Any,
        idle_timeout: float = 120.0,
        gate: Callable[[IAddress], EpopError | None] | None = None,
        max_silent: int = 0,
        silent_grace: float = 2.0,
        http: IProtocolFactory | None = None,
    ) -> None:
        self.wrapped = wrapped
        self.http = http
        self.max_silent = max_silent
        self.silent_grace = silent_grace
        self.gate = gate
        self.clock = clock
        self.idle_timeout = idle_timeout
        #: Connections still silent, oldest first.
        self.waiting: dict[_Chooser, None] = {}
        self.require = bool(tls and tls.require)
        self.tls = (
            TLSMemoryBIOFactory(tls.options(), False, _BatchingFactory(wrapped))
            if tls is not None
            else None
        )

    def buildProtocol(self, addr: IAddress) -> Protocol:
        return _Chooser(self, addr)

    def close_waiting(self) -> None:
        """Tell every connection still silent that the relay is stopping."""
        for chooser in list(self.waiting):
            chooser.close()
