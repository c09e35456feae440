"""
Fault injection on real loopback sockets: a TCP link that breaks on cue, and
request bodies a test releases piece by piece.

L{FaultyLink} listens on C{127.0.0.1}, port 0, and forwards every connection
to a target port (the sandbox), as L{twisted.protocols.portforward} does:
each side is the other's producer, so a peer that stops reading stops the
other.  Once C{after} bytes have gone towards the target it injects its
fault: C{"reset"} (both sides aborted, so the kernel sends RST),
C{"close"} (both sides closed in order, FIN), or C{"stall"} (it stops
reading and forwarding, like a server that hangs).  With C{tunnel=True} it is
a minimal HTTP proxy: it answers one C{CONNECT} with C{200} and then
forwards, which is how a corporate proxy that drops its tunnels looks from
the relay.

L{GatedBody} is an L{IBodyProducer} that writes a first part of a body, then
waits for the test to open its gate before writing the rest, so a test can
act at a known point of an upload instead of racing it.

L{serve_big_answers} gives the sandbox a large answer to stream back (for a
workstation or e-PMSI to cut), and L{spawn_epop} runs the C{epop} command as
a real process, to see its exit status and standard error, or to kill it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.static import NoRangeStaticProducer
from zope.interface import implementer

from tests.support import TestSandbox, write_random_file

__all__ = [
    "BigAnswers",
    "EpopProcess",
    "FaultyLink",
    "GatedBody",
    "in_flight",
    "multipart_form",
    "serve_big_answers",
    "spawn_epop",
    "start_faulty_link",
]

#: What L{FaultyLink} does once its byte budget is spent.
FAULTS = ("reset", "close", "stall")

#: Longest CONNECT request head the tunnel mode reads.
_MAX_CONNECT_HEAD = 8192


def multipart_form(
    boundary: str, parts: list[tuple[str, str | None, bytes]]
) -> tuple[str, bytes]:
    """
    A C{multipart/form-data} body: each part is C{(name, filename, content)},
    a file part when C{filename} is not C{None}.  Returns the Content-Type
    value and the body.
    """
    chunks: list[bytes] = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        chunks.append(
            b"--%s\r\nContent-Disposition: %s\r\n\r\n%s\r\n"
            % (boundary.encode("ascii"), disposition.encode("utf-8"), content)
        )
    chunks.append(b"--%s--\r\n" % (boundary.encode("ascii"),))
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks)


@implementer(IBodyProducer)
class GatedBody:
    """
    A body of known length written in two steps: C{body[:gate_at]} at once,
    the rest when L{open_gate} is called (a gate at or past the end lets the
    whole body go at once).  L{stopped} fires if the consumer
    asks it to stop (its connection is gone).
    """

    def __init__(self, body: bytes, gate_at: int) -> None:
        self.length = len(body)
        self._body = body
        self._gate_at = gate_at
        self._consumer: Any = None
        self._finished: Deferred[None] | None = None
        self.stopped: Deferred[None] = Deferred()

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._consumer = consumer
        self._finished = Deferred()
        consumer.write(self._body[: self._gate_at])
        if self._gate_at >= self.length:
            self._finished.callback(None)
        return self._finished

    def open_gate(self) -> None:
        """Write the rest of the body and say it is done."""
        if self._finished is None or self._finished.called:
            return
        self._consumer.write(self._body[self._gate_at :])
        self._finished.callback(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        if not self.stopped.called:
            self.stopped.callback(None)


class _Outbound(Protocol):
    """The link's connection to the target: hands what it reads back."""

    def __init__(self, inbound: "_Inbound") -> None:
        self.inbound = inbound

    def connectionMade(self) -> None:
        self.inbound.outbound_ready(self)

    def dataReceived(self, data: bytes) -> None:
        self.inbound.from_target(data)

    def connectionLost(self, reason: Failure) -> None:
        self.inbound.outbound_lost()


class _Inbound(Protocol):
    """One connection the link accepted, and its fate."""

    def __init__(self, link: "FaultyLink") -> None:
        self.link = link
        self.outbound: _Outbound | None = None
        self.pending: list[bytes] = []
        self.head = b""
        self.tunnelled = not link.tunnel
        self.stalled = False
        self.finished = False
        self.resume_call: Any = None

    def connectionMade(self) -> None:
        self.link.connections.add(self)
        if self.tunnelled:
            self._connect()

    def _connect(self) -> None:
        self.transport.pauseProducing()
        endpoint = TCP4ClientEndpoint(self.link.reactor, "127.0.0.1", self.link.target_port)
        d = connectProtocol(endpoint, _Outbound(self))
        d.addErrback(lambda _: self.transport.abortConnection())

    def outbound_ready(self, outbound: _Outbound) -> None:
        if self.finished:
            outbound.transport.abortConnection()
            return
        self.outbound = outbound
        # Each side is the other's producer: a peer that stops reading
        # stops the other one, so the link never buffers a whole body.
        outbound.transport.registerProducer(self.transport, True)
        self.transport.registerProducer(outbound.transport, True)
        if self.link.tunnel:
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        pending, self.pending = self.pending, []
        for data in pending:
            self._towards_target(data)
        if not self.stalled and not self.finished:
            self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.stalled or self.finished:
            return  # a hung server: nothing goes anywhere any more
        if not self.tunnelled:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > _MAX_CONNECT_HEAD:
                    self.transport.abortConnection()
                return
            request, rest = self.head[: end + 4], self.head[end + 4 :]
            self.link.connect_requests.append(request)
            self.tunnelled = True
            if rest:
                self.pending.append(rest)
            self._connect()
            return
        if self.outbound is None:
            self.pending.append(data)
        else:
            self._towards_target(data)

    def _towards_target(self, data: bytes) -> None:
        assert self.outbound is not None
        link = self.link
        # One fault per link: once injected, later connections go through.
        armed = link.fault is not None and link.counting == "request" and not link.injected.called
        budget = link.after - link.forwarded if armed else len(data)
        if budget < len(data):
            data = data[: max(budget, 0)]
        if data:
            link.forwarded += len(data)
            self.outbound.transport.write(data)
            if link.rate and not armed:
                self._throttle(len(data) / link.rate)
        if armed and link.forwarded >= link.after:
            self._inject()

    def _throttle(self, seconds: float) -> None:
        """A slow line: read nothing more from the relay for C{seconds}."""
        self.transport.pauseProducing()

        def resume() -> None:
            if not self.stalled and not self.finished:
                self.transport.resumeProducing()

        self.resume_call = self.link.reactor.callLater(seconds, resume)

    def _inject(self) -> None:
        link = self.link
        if link.fault == "stall":
            self.stalled = True
            self.transport.pauseProducing()
        else:
            self.finished = True
            for transport in (self.transport, self.outbound and self.outbound.transport):
                if transport is None:
                    continue
                if link.fault == "reset":
                    transport.abortConnection()
                else:
                    transport.loseConnection()
        if not link.injected.called:
            link.injected.callback(link.fault)

    def from_target(self, data: bytes) -> None:
        if self.stalled or self.finished:
            return
        link = self.link
        armed = link.fault is not None and link.counting == "answer" and not link.injected.called
        if armed and link.forwarded < link.answer_after:
            self.transport.write(data)  # the TLS handshake, not the answer yet
            return
        if armed:
            data = data[: max(link.after - link.answered, 0)]
        link.answered += len(data)
        if data:
            self.transport.write(data)
        if armed and link.answered >= link.after:
            self._inject()

    def outbound_lost(self) -> None:
        self.outbound = None
        self.transport.loseConnection()

    def release(self) -> None:
        """Read again after a stall, throwing the bytes away, to notice the peer leave."""
        if self.stalled:
            self.transport.resumeProducing()

    def connectionLost(self, reason: Failure) -> None:
        self.finished = True
        if self.resume_call is not None and self.resume_call.active():
            self.resume_call.cancel()
        self.link.connections.discard(self)
        if self.outbound is not None:
            # The far side must not mistake the end for a complete request.
            self.outbound.transport.abortConnection()
        self.link._connection_gone()


class FaultyLink(Factory):
    """
    A forwarder to C{127.0.0.1:target_port} that injects C{fault} once,
    after C{after} bytes towards the target (the whole link counts, not one
    connection), then forwards faithfully again, so a test can check that
    the next upload goes through; C{fault=None} never injects anything.
    With C{counting="answer"}, the C{after} bytes are counted the other way,
    from the target: the fault hits e-PMSI's answer (counted only once
    C{answer_after} bytes went towards the target, so that the TLS handshake
    is left alone).  With C{rate} (bytes
    per second), it forwards no faster than that once the fault is
    injected, or from the start without a fault: a slow line.

    @ivar injected: fires with the fault's name when it happens.
    @ivar forwarded: bytes delivered towards the target so far.
    @ivar answered: bytes delivered from the target so far.
    @ivar connect_requests: the raw CONNECT heads received (tunnel mode).
    """

    def __init__(
        self,
        reactor: Any,
        target_port: int,
        *,
        after: int = 0,
        fault: str | None = None,
        tunnel: bool = False,
        rate: float | None = None,
        counting: str = "request",
        answer_after: int = 0,
    ) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, not {fault!r}")
        if counting not in ("request", "answer"):
            raise ValueError(f"counting must be 'request' or 'answer', not {counting!r}")
        self.reactor = reactor
        self.target_port = target_port
        self.after = after
        self.fault = fault
        self.tunnel = tunnel
        self.rate = rate
        self.counting = counting
        self.answer_after = answer_after
        self.forwarded = 0
        self.answered = 0
        self.connections: set[_Inbound] = set()
        self.connect_requests: list[bytes] = []
        self.injected: Deferred[str | None] = Deferred()
        self.port: IListeningPort | None = None
        self._idle: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> _Inbound:
        return _Inbound(self)

    @property
    def url_port(self) -> int:
        assert self.port is not None
        return self.port.getHost().port

    def release(self) -> None:
        """End a stall: connections read again (and drop what they read)."""
        for connection in list(self.connections):
            connection.release()

    def close(self) -> Deferred[None]:
        """Abort every connection; fires once they are all gone."""
        if not self.connections:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        for connection in list(self.connections):
            connection.finished = True
            connection.transport.abortConnection()
        return waiter

    def _connection_gone(self) -> None:
        if not self.connections:
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                waiter.callback(None)


def start_faulty_link(
    testcase: TestCase, reactor: Any, target_port: int, **options: Any
) -> FaultyLink:
    """Listen with a L{FaultyLink} on 127.0.0.1, port 0, until the test ends."""
    link = FaultyLink(reactor, target_port, **options)
    link.port = reactor.listenTCP(0, link, interface="127.0.0.1")
    testcase.addCleanup(link.close)
    testcase.addCleanup(link.port.stopListening)
    return link


class BigAnswers(Resource):
    """
    The sandbox's resource, except that C{GET /big} answers C{size} bytes,
    read from a file as the client takes them: e-PMSI's answer to stream back
    while a workstation goes away.
    """

    isLeaf = True

    def __init__(self, wrapped: Resource, content: FilePath) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._content = content

    def render(self, request: Any) -> Any:
        if request.method == b"GET" and request.path == b"/big":
            request.setHeader(b"Content-Type", b"application/octet-stream")
            request.setHeader(b"Content-Length", b"%d" % (self._content.getsize(),))
            handle = self._content.open("rb")
            request.notifyFinish().addBoth(lambda _: handle.close())
            NoRangeStaticProducer(request, handle).start()
            return NOT_DONE_YET
        return self._wrapped.render(request)


def serve_big_answers(testcase: TestCase, sandbox: TestSandbox, size: int) -> None:
    """Make C{sandbox} answer C{GET /big} with C{size} pseudo-random bytes."""
    content = FilePath(testcase.mktemp())
    write_random_file(content.path, size, seed=size)
    sandbox.site.resource = BigAnswers(sandbox.site.resource, content)


def in_flight(sandbox: TestSandbox) -> list[str]:
    """
    What the sandbox still has going: open connections and hidden
    (partial) uploads.  Empty once every aborted upload has been cleaned up.
    """
    busy = [f"connection {id(channel):x}" for channel in sandbox.site._channels]
    if sandbox.upload_directory.isdir():
        busy += [
            child.basename()
            for child in sandbox.upload_directory.children()
            if child.basename().startswith(".")
        ]
    return busy


class EpopProcess(ProcessProtocol):
    """An C{epop} command run as its own process: its output and its end."""

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()
        self.process: Any = None

    def outReceived(self, data: bytes) -> None:
        self.stdout += data

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback((reason.value.exitCode, reason.value.signal))

    def kill(self) -> None:
        """SIGKILL: the workstation vanishes, its kernel closes the socket."""
        if not self.ended.called:
            self.process.signalProcess("KILL")

    async def finished(self, reactor: Any, timeout: float) -> tuple[int | None, int | None]:
        """Exit status and signal; killed if it outlives C{timeout}."""
        timer = reactor.callLater(timeout, self.kill)
        try:
            return await self.ended
        finally:
            if timer.active():
                timer.cancel()


def spawn_epop(testcase: TestCase, reactor: Any, *argv: str) -> EpopProcess:
    """
    Run C{epop ARGV...} with the test's Python, no saved settings and
    English messages; killed at the end of the test if still running.
    """
    child = EpopProcess()
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.lower().endswith("_proxy") and not key.startswith(("LANG", "LC_"))
    }
    environ.update(EPOP_CONFIG=os.path.abspath(testcase.mktemp()), LANG="C.UTF-8")
    program = [sys.executable, "-c", "from epop.cli import main; main()", *argv]
    child.process = reactor.spawnProcess(child, sys.executable, program, env=environ)

    async def reap() -> None:
        child.kill()
        await child.ended

    testcase.addCleanup(lambda: Deferred.fromCoroutine(reap()))
    return child
