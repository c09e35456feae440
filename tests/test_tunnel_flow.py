"""
Flow control through a real tunnel: a side that stops reading keeps the
relay's memory flat.  A real client writes through the relay to a real TCP
server on loopback that has paused (and the other way round); the bytes the
relay holds in user space (its two transports' write buffers, read by a
probe on every write) must stay under a small bound while megabytes go
through, the relay must stop reading from the writer, and once the reader
reads again every byte arrives, in order.  Sizes, not times: every wait is
bounded in count.
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
from epop.tuning import READ_SIZE
from tests.relaying import RunningRelay, start_relay
from tests.support import poll_until

#: Most the client writes: far more than the relay may hold, and than the
#: kernel's socket buffers on the way.
MOST = 32 * 1024 * 1024
#: What the relay may hold in user space, both transports together: each
#: transport pauses its producer past C{bufferSize} (64 KiB), and one more
#: read (an open tunnel reads up to L{READ_SIZE}) may land before the pause
#: takes effect.
BOUND = 2 * (FileDescriptor.bufferSize + READ_SIZE)
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


@implementer(IPushProducer)
class Stream:
    """
    Writes a known stream of C{total} bytes to a transport as fast as it
    takes it: paused when its buffer fills, on again when it drains.
    """

    def __init__(self, transport: Any, total: int) -> None:
        self.transport = transport
        self.total = total
        self.written = 0
        self.digest = hashlib.sha256()
        self.paused = False
        self._counter = 0

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


class Received:
    """What one side got: a count and a digest."""

    def __init__(self) -> None:
        self.count = 0
        self.digest = hashlib.sha256()

    def add(self, data: bytes) -> None:
        self.count += len(data)
        self.digest.update(data)


class Destination:
    """
    A loopback TCP server, the tunnel's destination: it stops reading as
    soon as a connection arrives (C{stalled}), or writes a stream of
    C{sends} bytes to it.
    """

    def __init__(self, testcase: TestCase, *, stalled: bool = False, sends: int = 0) -> None:
        self.received = Received()
        self.connections: list[Protocol] = []
        self.stream: Stream | None = None
        destination = self

        class Server(Protocol):
            def connectionMade(self) -> None:
                destination.connections.append(self)
                if stalled:
                    self.transport.pauseProducing()
                if sends:
                    destination.stream = Stream(self.transport, sends)
                    destination.stream.start()

            def dataReceived(self, data: bytes) -> None:
                destination.received.add(data)

        listening = reactor.listenTCP(0, Factory.forProtocol(Server), interface="127.0.0.1")
        self.port: int = listening.getHost().port
        testcase.addCleanup(listening.stopListening)
        testcase.addCleanup(lambda: [c.transport.abortConnection() for c in self.connections])

    def resume(self) -> None:
        for connection in self.connections:
            connection.transport.resumeProducing()


class Client(Protocol):
    """CONNECTs to C{target}; what comes after the relay's answer is C{received}."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.answer = b""
        self.received = Received()
        self.tunnel_open: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(f"CONNECT {self.target} HTTP/1.1\r\n\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel_open.called:
            self.received.add(data)
            return
        self.answer += data
        if b"\r\n\r\n" in self.answer:
            self.answer, _, rest = self.answer.partition(b"\r\n\r\n")
            self.received.add(rest)
            self.tunnel_open.callback(None)

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(None)


class HeldProbe:
    """The most the relay held, measured after every write on either of its transports."""

    def __init__(self, transports: list[FileDescriptor]) -> None:
        self.transports = transports
        self.most = 0
        self.samples = 0
        #: Bytes the relay wrote on these transports since the probe was set.
        self.passed = 0
        for transport in transports:
            transport.write = self._after(transport.write)  # type: ignore[method-assign]
            transport.writeSequence = self._after(transport.writeSequence)  # type: ignore[method-assign]

    def _after(self, write: Any) -> Any:
        def probed(data: Any) -> None:
            write(data)
            self.passed += len(data) if isinstance(data, bytes) else sum(map(len, data))
            self.sample()

        return probed

    def sample(self) -> int:
        held = sum(unsent(t) for t in self.transports)
        self.most = max(self.most, held)
        self.samples += 1
        return held


class FlowTests(TestCase):
    """A side that stops reading stops the other side; the relay holds a bounded amount meanwhile."""

    async def open_tunnel(self, destination: Destination) -> tuple[RunningRelay, Client, HttpProxySession]:
        relay = start_relay(self, reactor, "https://127.0.0.1:1", None, tunnel_to=(f"127.0.0.1:{destination.port}",))
        client = Client(f"127.0.0.1:{destination.port}")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", relay.port), client)
        self.addCleanup(client.transport.abortConnection)
        await client.tunnel_open
        self.assertEqual(client.answer, b"HTTP/1.1 200 Connection established")
        [session] = relay.service.factory.connections.values()
        assert isinstance(session, HttpProxySession) and session._far is not None, session
        return relay, client, session

    async def stalls(self, stream: Stream, reader: FileDescriptor, probe: HeldProbe) -> int:
        """
        Wait (bounded) until C{stream} can write no more because the relay
        stopped reading from C{reader}, or until it wrote everything (nothing
        was held back); check what the relay held meanwhile.
        """

        def stuck() -> bool:
            probe.sample()
            return stream.written >= stream.total or (stream.paused and reader not in reactor.getReaders())

        self.assertTrue(await poll_until(reactor, stuck, attempts=400), (stream.written, probe.most))
        stalled_at = stream.written
        self.assertLessEqual(probe.most, BOUND, f"the relay held {probe.most} bytes with {stalled_at} written")
        self.assertLess(stalled_at, stream.total, "everything was written: nothing was held back")
        self.assertGreater(stalled_at, 4 * BOUND, "too little written to tell a flat memory from a growing one")
        # Measured while much more than it holds went through it.
        self.assertGreater(probe.passed, 4 * BOUND, (probe.passed, stalled_at))
        return stalled_at

    async def test_slow_destination(self) -> None:
        """The destination stops reading: the relay stops reading the client, then every byte arrives."""
        destination = Destination(self, stalled=True)
        relay, client, session = await self.open_tunnel(destination)
        assert session._far is not None
        from_client = socket_transport(session.transport)
        probe = HeldProbe([from_client, socket_transport(session._far.transport)])
        stream = Stream(client.transport, MOST)
        stream.start()
        await self.stalls(stream, from_client, probe)
        self.assertEqual(destination.received.count, 0)

        destination.resume()
        self.assertTrue(
            await poll_until(reactor, lambda: destination.received.count >= MOST, attempts=600),
            (destination.received.count, stream.written),
        )
        self.assertEqual(destination.received.count, MOST)
        self.assertEqual(destination.received.digest.hexdigest(), stream.digest.hexdigest())
        self.assertLessEqual(probe.most, BOUND)
        client.transport.loseConnection()
        await client.closed
        self.assertTrue(await poll_until(reactor, lambda: relay.records("object-released")))
        [released] = relay.records("object-released")
        self.assertEqual((released["outcome"], released["bytes_in"]), ("completed", MOST))

    async def test_slow_client(self) -> None:
        """The client stops reading: the relay stops reading the destination, then every byte arrives."""
        destination = Destination(self, sends=MOST)
        relay, client, session = await self.open_tunnel(destination)
        client.transport.pauseProducing()
        assert session._far is not None and destination.stream is not None
        from_destination = socket_transport(session._far.transport)
        probe = HeldProbe([socket_transport(session.transport), from_destination])
        await self.stalls(destination.stream, from_destination, probe)

        client.transport.resumeProducing()
        self.assertTrue(
            await poll_until(reactor, lambda: client.received.count >= MOST, attempts=600),
            (client.received.count, destination.stream.written),
        )
        self.assertEqual(client.received.count, MOST)
        self.assertEqual(client.received.digest.hexdigest(), destination.stream.digest.hexdigest())
        self.assertLessEqual(probe.most, BOUND)
        client.transport.loseConnection()
        await client.closed
        self.assertTrue(await poll_until(reactor, lambda: relay.records("object-released")))
        [released] = relay.records("object-released")
        self.assertEqual(released["bytes_out"], MOST)
