"""
Flow control through a real tunnel: a destination that stops reading keeps
the relay's memory flat.  A real client writes through the relay to a real
TCP server on loopback that has paused; the bytes the relay holds in user
space (its two transports' write buffers, read by a probe on every write)
must stay under a small bound, the relay must stop reading from the client,
and once the destination reads again every byte arrives, in order.  Sizes,
not times: every wait is bounded in count.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from epop.relay.http_proxy import HttpProxySession
from tests.relaying import RunningRelay, start_relay
from tests.support import poll_until

#: Most the client writes: far more than the relay may hold, and than the
#: kernel's socket buffers on the way.
MOST = 32 * 1024 * 1024
#: What the relay may hold in user space, both transports together: a
#: transport pauses its producer past C{bufferSize} (64 KiB), and one more
#: read (up to C{bufferSize}) may land before the pause takes effect.
BOUND = 4 * FileDescriptor.bufferSize
CHUNK = 16 * 1024


def unsent(transport: FileDescriptor) -> int:
    """Bytes written to a Twisted transport and not yet given to the kernel."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def socket_transport(transport: Any) -> FileDescriptor:
    """The TCP transport under the relay's wrappers (allowlist, limits, chooser)."""
    for _ in range(10):
        if isinstance(transport, FileDescriptor):
            return transport
        transport = transport.transport
    raise AssertionError(f"no socket under {transport!r}")


class StalledDestination:
    """A loopback TCP server that stops reading as soon as a connection arrives."""

    def __init__(self, testcase: TestCase) -> None:
        self.digest = hashlib.sha256()
        self.received = 0
        self.connections: list[Protocol] = []
        destination = self

        class Stalled(Protocol):
            def connectionMade(self) -> None:
                self.transport.pauseProducing()
                destination.connections.append(self)

            def dataReceived(self, data: bytes) -> None:
                destination.digest.update(data)
                destination.received += len(data)

        listening = reactor.listenTCP(0, Factory.forProtocol(Stalled), interface="127.0.0.1")
        self.port: int = listening.getHost().port
        testcase.addCleanup(listening.stopListening)
        testcase.addCleanup(lambda: [c.transport.abortConnection() for c in self.connections])

    def resume(self) -> None:
        for connection in self.connections:
            connection.transport.resumeProducing()


@implementer(IPushProducer)
class Writer(Protocol):
    """
    CONNECTs, then writes a known stream (up to L{MOST} bytes) as fast as
    its own transport takes it: paused when its buffer fills, on again when
    it drains.
    """

    def __init__(self, target: str, total: int) -> None:
        self.target = target
        self.total = total
        self.answer = b""
        self.tunnel_open: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.written = 0
        self.digest = hashlib.sha256()
        self.paused = False
        self._counter = 0
        self._sampler: Any = None

    def connectionMade(self) -> None:
        self.transport.write(f"CONNECT {self.target} HTTP/1.1\r\n\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        self.answer += data
        if not self.tunnel_open.called and b"\r\n\r\n" in self.answer:
            self.tunnel_open.callback(None)

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(None)

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self._pump()

    def _chunk(self) -> bytes:
        """The next piece of the stream: hashes of a counter, never the same twice."""
        self._counter += 1
        seed = hashlib.sha256(self._counter.to_bytes(8, "big")).digest()
        return (seed * (CHUNK // len(seed)))[: min(CHUNK, self.total - self.written)]

    def _pump(self) -> None:
        while not self.paused and self.written < self.total:
            chunk = self._chunk()
            self.written += len(chunk)
            self.digest.update(chunk)
            self.transport.write(chunk)
        if self.written >= self.total:
            self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        reactor.callLater(0, self._pump)

    def stopProducing(self) -> None:
        self.paused = True


class HeldProbe:
    """The most the relay held, measured after every write on either of its transports."""

    def __init__(self, transports: list[FileDescriptor]) -> None:
        self.transports = transports
        self.most = 0
        self.samples = 0
        for transport in transports:
            transport.write = self._after(transport.write)  # type: ignore[method-assign]
            transport.writeSequence = self._after(transport.writeSequence)  # type: ignore[method-assign]

    def _after(self, write: Any) -> Any:
        def probed(data: Any) -> None:
            write(data)
            self.sample()

        return probed

    def sample(self) -> int:
        held = sum(unsent(t) for t in self.transports)
        self.most = max(self.most, held)
        self.samples += 1
        return held


class SlowDestinationTests(TestCase):
    def setUp(self) -> None:
        self.destination = StalledDestination(self)
        self.relay: RunningRelay = start_relay(
            self, reactor, "https://127.0.0.1:1", None, tunnel_to=(f"127.0.0.1:{self.destination.port}",)
        )

    def session(self) -> HttpProxySession:
        [session] = self.relay.service.factory.connections.values()
        assert isinstance(session, HttpProxySession), session
        return session

    async def test_memory_flat_then_every_byte(self) -> None:
        writer = Writer(f"127.0.0.1:{self.destination.port}", MOST)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.relay.port), writer)
        self.addCleanup(writer.transport.abortConnection)
        await writer.tunnel_open
        self.assertEqual(writer.answer, b"HTTP/1.1 200 Connection established\r\n\r\n")
        session = self.session()
        assert session._far is not None
        from_client = socket_transport(session.transport)
        to_destination = socket_transport(session._far.transport)
        probe = HeldProbe([from_client, to_destination])
        writer.start()

        # Everything on the way fills up, then the client cannot write more
        # (or, were nothing held back, it writes everything).
        def stuck() -> bool:
            probe.sample()
            return writer.written >= MOST or (writer.paused and from_client not in reactor.getReaders())

        self.assertTrue(await poll_until(reactor, stuck, attempts=400), (writer.written, probe.most))
        stalled_at = writer.written
        self.assertLessEqual(probe.most, BOUND, f"the relay held {probe.most} bytes with {stalled_at} written")
        self.assertLess(stalled_at, MOST, "the client wrote everything: nothing was held back")
        self.assertGreater(stalled_at, 4 * BOUND, "too little written to tell a flat memory from a growing one")
        self.assertEqual(self.destination.received, 0)
        self.assertGreater(probe.samples, stalled_at // (4 * CHUNK))

        # The destination reads again: every byte arrives, in order, memory still flat.
        self.destination.resume()
        self.assertTrue(
            await poll_until(reactor, lambda: self.destination.received >= MOST, attempts=600),
            (self.destination.received, writer.written),
        )
        self.assertEqual(self.destination.received, MOST)
        self.assertEqual(self.destination.digest.hexdigest(), writer.digest.hexdigest())
        self.assertLessEqual(probe.most, BOUND)
        writer.transport.loseConnection()
        await writer.closed
        self.assertTrue(await poll_until(reactor, lambda: self.relay.records("object-released")))
        [released] = self.relay.records("object-released")
        self.assertEqual((released["outcome"], released["bytes_in"]), ("completed", MOST))
