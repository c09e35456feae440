"""
The workstation against a relay or an e-PMSI that misbehaves: every
Deferred of L{epop.workstation} fires, with an error that says which step failed
and whether e-PMSI got the file, whatever the peer does.  Units run on a
L{MemoryReactorClock} and L{StringTransport}: no real sleeping.
"""

from __future__ import annotations

import socket
from typing import Any

import trustme
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import ThrottlingFactory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.workstation import (
    DEFAULT_STALL_TIMEOUT,
    RelayAddress,
    RelayClientProtocol,
    UploadFailed,
    send_file,
    test_connection,
)
from epop.errors import EpopError, ProtocolError, UpstreamError
from epop.multipart import MultipartFileBody, make_cooperator
from epop.sandbox.ca import server_tls_options
from epop.wire import Frame, FrameReader, FrameType, encode_message
from tests.relaying import start_relay
from tests.support import make_trustme_sandbox, poll_until, write_random_file
from tests.test_cli_interrupt import Forwarder

WELCOME = encode_message(FrameType.WELCOME, {"version": 1, "relay": "test", "epmsi": "x"})
RELAY = IPv4Address("TCP", "127.0.0.1", 3358)


def _frames(data: bytes) -> list[Frame]:
    return [frame for frame in FrameReader().feed(data) if isinstance(frame, Frame)]


class _SocketTransport(StringTransport):
    """
    Pauses its producer once C{room} bytes are written, as a full socket
    buffer does, until L{drain} makes room again.
    """

    def __init__(self, room: int = 1 << 40) -> None:
        super().__init__(peerAddress=RELAY)
        self.room = room
        self.paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and not self.paused and len(self.value()) >= self.room:
            self.paused = True
            self.producer.pauseProducing()

    def drain(self, more: int) -> None:
        self.room += more
        if self.paused and self.producer is not None:
            self.paused = False
            self.producer.resumeProducing()


def _body_ended(transport: StringTransport) -> bool:
    tail = transport.value()[-200:]
    index = tail.rfind(bytes([FrameType.BODY_END]) + b"\x00\x00\x00")
    return index >= 0 and _frames(tail[index:])[-1].kind is FrameType.BODY_END


class _Drive:
    """Turns the memory reactor until a Deferred fires, a bounded number of times."""

    @staticmethod
    def until(clock: MemoryReactorClock, d: Deferred[Any], steps: int = 200) -> None:
        for _ in range(steps):
            if d.called:
                return
            clock.advance(0)


class UnitCase(SynchronousTestCase):
    """A relay connection on a memory reactor, with a small file to send."""

    size = 1024 * 1024

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.path = self.mktemp()
        write_random_file(self.path, self.size, seed=3)

    def body(self) -> MultipartFileBody:
        return MultipartFileBody(
            self.path, field="file", cooperator=make_cooperator(self.clock), read_size=64 * 1024
        )

    def connected(
        self, stall_timeout: float = 60, room: int = 1 << 40
    ) -> tuple[RelayClientProtocol, _SocketTransport]:
        protocol = RelayClientProtocol(self.clock, timeout=10, stall_timeout=stall_timeout)
        transport = _SocketTransport(room)
        protocol.makeConnection(transport)
        protocol.dataReceived(WELCOME)
        self.assertEqual(self.successResultOf(protocol.welcomed), protocol)
        return protocol, transport

    def send(self, room: int = 1 << 40, **options: Any) -> tuple[Deferred[Any], Protocol, _SocketTransport]:
        """Start L{send_file} through a relay, connected on the memory reactor."""
        d = send_file(self.clock, self.path, to="/syriusUpload.do", relay=RelayAddress("127.0.0.1"), **options)
        self.clock.advance(0)
        host, port, factory, _, _ = self.clock.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = _SocketTransport(room)
        protocol.makeConnection(transport)
        return d, protocol, transport


class RelayGoneDuringUploadTests(UnitCase):
    def test_transport_stops_the_body_before_the_protocol_hears(self) -> None:
        """
        A TCP transport stops its producer before telling the protocol the
        connection is lost; the upload then fails at once, saying the relay
        closed during the upload and e-PMSI did not get the file, and
        nothing is raised into the reactor.
        """
        protocol, transport = self.connected(room=300 * 1024)
        d = protocol.request("POST", "/syriusUpload.do", [], self.body())
        self.clock.advance(0)
        self.assertTrue(transport.paused)
        self.assertNoResult(d)
        transport.producer.stopProducing()
        protocol.connectionLost(Failure(ConnectionLost("Connection reset by peer")))
        error = self.failureResultOf(d, EpopError).value
        self.assertEqual((error.code, error.cause), ("relay-closed", "connection-lost"))
        self.assertIn("during the upload", error.message)
        self.assertIn("e-PMSI did not receive the file", error.message)
        self.assertNotIn(b"sha256", transport.value())  # no BODY_END was sent
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_producer_calls_after_the_end_are_harmless(self) -> None:
        """Pausing, resuming or stopping a finished or stopped body is a no-op."""
        body = self.body()
        done = body.startProducing(StringTransport())
        body.stopProducing()
        body.stopProducing()
        body.pauseProducing()
        body.resumeProducing()
        body.resumeProducing()
        self.assertNoResult(done)
        finished = self.body()
        consumer = StringTransport()
        self.successResultOf(_run(self.clock, finished.startProducing(consumer)))
        finished.stopProducing()
        finished.pauseProducing()
        finished.resumeProducing()
        self.assertEqual(len(consumer.value()), finished.length)

    def test_send_file_says_what_became_of_the_file(self) -> None:
        """Through send_file, the failure names the step and says the file was not delivered."""
        d, protocol, transport = self.send(room=300 * 1024)
        protocol.dataReceived(WELCOME)
        self.clock.advance(0)
        transport.producer.stopProducing()
        protocol.connectionLost(Failure(ConnectionLost()))
        error = self.failureResultOf(d, UploadFailed).value
        self.assertEqual((error.code, error.step, error.maybe_delivered), ("relay-closed", "upload", False))
        self.assertIn("was not delivered", error.outcome("rss.zip").render("en"))
        self.assertIn("n'a pas été remis", error.outcome("rss.zip").render("fr"))
        self.assertIn("sending the file through the relay", error.outcome("rss.zip").render("en"))


def _run(clock: MemoryReactorClock, d: Deferred[Any]) -> Deferred[Any]:
    _Drive.until(clock, d)
    return d


class StallTests(UnitCase):
    """Silence is bounded by the stall timeout; the Deferred fires then, not before."""

    def test_check_without_answer(self) -> None:
        """WELCOME, then nothing after CHECK: fails after stall_timeout with 'no answer in time'."""
        protocol, transport = self.connected(stall_timeout=30)
        d = protocol.check()
        self.clock.advance(29.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        error = self.failureResultOf(d, EpopError).value
        self.assertEqual((error.code, error.cause), ("stalled", "timeout"))
        self.assertIn("no answer to the check within 30 s", error.message)
        self.assertTrue(transport.disconnecting)

    def test_body_taken_then_no_answer(self) -> None:
        """The relay takes the whole body and says nothing: fails, saying e-PMSI may have it."""
        d, protocol, transport = self.send(stall_timeout=45)
        protocol.dataReceived(WELCOME)
        self.clock.advance(0)
        self.assertTrue(_body_ended(transport))
        self.clock.advance(44)
        self.assertNoResult(d)
        self.clock.advance(1)
        error = self.failureResultOf(d, UploadFailed).value
        self.assertEqual((error.code, error.step, error.maybe_delivered), ("stalled", "answer", True))
        self.assertIn("after the whole file was sent", error.message)
        self.assertIn("may have received it", error.outcome("rss.zip").render("en"))

    def test_relay_stops_taking_the_body(self) -> None:
        """Backpressure that never lifts: fails after stall_timeout, file not delivered."""
        d, protocol, transport = self.send(room=300 * 1024, stall_timeout=45)
        protocol.dataReceived(WELCOME)
        self.clock.advance(0)
        self.assertTrue(transport.paused)
        sent = len(transport.value())
        self.clock.advance(44.9)
        self.assertNoResult(d)
        self.assertEqual(len(transport.value()), sent)
        self.clock.advance(0.1)
        error = self.failureResultOf(d, UploadFailed).value
        self.assertEqual((error.code, error.step, error.maybe_delivered), ("stalled", "upload", False))
        self.assertIn("while sending the file to the relay", error.message)
        self.assertTrue(transport.disconnecting)

    def test_progress_keeps_it_alive(self) -> None:
        """A slow upload that keeps moving is never cut, however long it takes."""
        d, protocol, transport = self.send(room=64 * 1024, stall_timeout=10)
        protocol.dataReceived(WELCOME)
        self.clock.advance(0)
        for _ in range(40):
            if _body_ended(transport):
                break
            self.clock.advance(9)
            transport.drain(64 * 1024)
            self.clock.advance(0)
        self.assertNoResult(d)
        self.assertGreater(self.clock.seconds(), 3 * 10)
        self.assertTrue(_body_ended(transport))
        protocol.dataReceived(
            encode_message(FrameType.RESPONSE, {"status": 200, "reason": "OK", "headers": []})
            + encode_message(FrameType.RESPONSE_END, {"length": 0})
        )
        self.assertEqual(self.successResultOf(d).status, 200)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_default_is_longer_than_the_relays_wait_on_epmsi(self) -> None:
        """The relay gives up on e-PMSI after 300 s by default and says why: it must speak first."""
        self.assertGreater(DEFAULT_STALL_TIMEOUT, 300)

    def test_accepts_then_silent(self) -> None:
        """A peer that accepts and never answers fails after the connect timeout."""
        d, protocol, transport = self.send(timeout=5)
        self.clock.advance(5)
        error = self.failureResultOf(d, UploadFailed).value
        self.assertEqual((error.code, error.step, error.maybe_delivered), ("relay-unreachable", "connect", False))


class GarbageTests(UnitCase):
    """Anything that is not the protocol fails the operation, without a traceback."""

    cases = [
        ("unknown frame type", b"GET / HTTP/1.1\r\n\r\n"),
        ("bad JSON", b"\x20\x00\x00\x00\x03{{{"),
        ("status not a number", encode_message(FrameType.RESPONSE, {"status": "abc"})),
        ("no status", encode_message(FrameType.RESPONSE, {"reason": "x"})),
        ("headers not pairs", encode_message(FrameType.RESPONSE, {"status": 200, "headers": [1]})),
        ("end before response", encode_message(FrameType.RESPONSE_END, {"length": 0})),
        ("data before response", encode_message(FrameType.DATA, {})),
    ]

    def test_request(self) -> None:
        """Each kind of garbage during a request fails it with a protocol error."""
        for name, garbage in self.cases:
            protocol, transport = self.connected()
            d = protocol.request("GET", "/")
            protocol.dataReceived(garbage)
            error = self.failureResultOf(d, ProtocolError).value
            self.assertIn(error.code, ("bad-frame", "unexpected-frame", "frame-too-large"), name)
            self.assertTrue(transport.disconnecting, name)

    def test_answer_shorter_than_announced(self) -> None:
        """RESPONSE_END announcing more bytes than arrived fails the request."""
        protocol, transport = self.connected()
        d = protocol.request("GET", "/")
        protocol.dataReceived(
            encode_message(FrameType.RESPONSE, {"status": 200, "reason": "OK", "headers": []})
            + encode_message(FrameType.DATA, {"a": 1})  # 7 bytes: {"a":1}
            + encode_message(FrameType.RESPONSE_END, {"length": 100})
        )
        error = self.failureResultOf(d, ProtocolError).value
        self.assertIn("announced 100 bytes and 7 arrived", error.message)
        self.assertIn("annoncé 100 octets", error.render("fr"))

    def test_check(self) -> None:
        """A CHECK_RESULT with fields of the wrong kind is garbage too."""
        protocol, transport = self.connected()
        d = protocol.check()
        protocol.dataReceived(encode_message(FrameType.CHECK_RESULT, {"ok": True, "elapsed": "soon"}))
        self.assertEqual(self.failureResultOf(d, ProtocolError).value.code, "bad-frame")

    def test_reset_during_check(self) -> None:
        """A reset during a check fails it, saying the relay closed before answering."""
        protocol, transport = self.connected()
        d = protocol.check()
        protocol.connectionLost(Failure(ConnectionLost()))
        error = self.failureResultOf(d, EpopError).value
        self.assertEqual(error.code, "relay-closed")
        self.assertIn("before answering", error.message)

    def test_test_connection_reports_a_silent_relay(self) -> None:
        """test_connection reports a relay that says WELCOME then nothing, after the stall timeout."""
        d = test_connection(self.clock, relay=RelayAddress("127.0.0.1"), stall_timeout=20)
        self.clock.advance(0)
        host, port, factory, _, _ = self.clock.tcpClients[-1]
        protocol = factory.buildProtocol(RELAY)
        protocol.makeConnection(StringTransport(peerAddress=RELAY))
        protocol.dataReceived(WELCOME)
        self.clock.advance(19)
        self.assertNoResult(d)
        self.clock.advance(1)
        report = self.successResultOf(d)
        self.assertEqual((report.failed_step, report.error.code), ("relay", "stalled"))


class CancelTests(UnitCase):
    def test_cancel_during_upload(self) -> None:
        """Cancelling drops the connection without BODY_END, so e-PMSI never gets the whole file."""
        d, protocol, transport = self.send(room=300 * 1024)
        protocol.dataReceived(WELCOME)
        self.clock.advance(0)
        d.cancel()
        error = self.failureResultOf(d, UploadFailed).value
        self.assertEqual((error.code, error.step, error.maybe_delivered), ("cancelled", "upload", False))
        self.assertTrue(transport.disconnecting)
        written = transport.value()
        for _ in range(20):
            self.clock.advance(0)
        self.assertEqual(transport.value(), written)  # the body stopped
        self.assertFalse(_body_ended(transport))
        self.assertLess(len(written), self.size)

    def test_cancel_while_connecting(self) -> None:
        """Cancelling before WELCOME drops the connection and says the file was not sent."""
        d, protocol, transport = self.send()
        d.cancel()
        error = self.failureResultOf(d, UploadFailed).value
        self.assertEqual((error.code, error.step, error.maybe_delivered), ("cancelled", "connect", False))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])


# On loopback: a real relay and sandbox, an upload slowed down by a throttled
# forwarder so that the test acts while it runs.


class LoopbackFaultTests(TestCase):
    """Aborted uploads end with the right error, no logged traceback, nothing stored."""

    timeout = 60
    size = 16 * 1024 * 1024

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.path = self.mktemp()
        write_random_file(self.path, self.size, seed=4)

    def throttled(self, port: int) -> tuple[Forwarder, RelayAddress]:
        forwarder = Forwarder("127.0.0.1", port)
        listening = reactor.listenTCP(
            0, ThrottlingFactory(forwarder, readLimit=2 * 1024 * 1024), interface="127.0.0.1"
        )
        self.addCleanup(listening.stopListening)
        self.addCleanup(forwarder.cut)
        return forwarder, RelayAddress("127.0.0.1", listening.getHost().port)

    async def uploading(self, forwarder: Forwarder, d: Deferred[Any]) -> None:
        going = await poll_until(reactor, lambda: d.called or forwarder.received > 1024 * 1024, 200, 0.05)
        if d.called:
            d.addErrback(lambda f: self.fail(f"ended early: {f.getErrorMessage()}"))
            await d
        self.assertTrue(going, forwarder.received)

    async def failed(self, d: Deferred[Any], within: float = 10) -> UploadFailed:
        done = await poll_until(reactor, lambda: d.called, int(within * 20), 0.05)
        self.assertTrue(done, f"no result after {within} s")
        return await self.assertFailure(d, UploadFailed)

    async def test_relay_stops_with_short_drain(self) -> None:
        """A relay stopped with no drain: 'relay-stopping', the file not delivered."""
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path, drain_seconds=0)
        forwarder, endpoint = self.throttled(relay.port)
        d = send_file(reactor, self.path, to="/syriusUpload.do", relay=endpoint)
        await self.uploading(forwarder, d)
        await relay.service.stopService()
        error = await self.failed(d)
        self.assertEqual((error.step, error.maybe_delivered), ("upload", False))
        # ERROR then an aborted connection: TCP may drop the ERROR on the way.
        self.assertIn(error.code, ("relay-stopping", "relay-closed"))
        self.assertEqual(self.sandbox.complete_files(), [])

    async def test_epmsi_goes_down(self) -> None:
        """e-PMSI (the sandbox) drops mid-upload: the relay's error, the file not delivered."""
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        forwarder, endpoint = self.throttled(relay.port)
        d = send_file(reactor, self.path, to="/syriusUpload.do", relay=endpoint)
        await self.uploading(forwarder, d)
        await self.sandbox.port.stopListening()
        await self.sandbox.site.close_connections()
        error = await self.failed(d)
        self.assertEqual((error.step, error.maybe_delivered), ("upload", False))
        # The relay sends ERROR then closes while body bytes still arrive, so
        # TCP may drop its ERROR: either way the workstation must say why.
        self.assertIn(error.code, ("epmsi-unreachable", "relay-closed"))
        self.assertEqual(self.sandbox.complete_files(), [])
        # Twisted's HTTP client logs the relay's body failing after e-PMSI's
        # connection is gone ("not in valid state to finalize request"): the
        # relay's side, not the workstation's.
        self.flushLoggedErrors(UpstreamError)

    async def test_small_file_epmsi_never_reached(self) -> None:
        """
        A file small enough to be wholly taken by the relay before it tries
        e-PMSI, which refuses the connection: not delivered, never "may have
        received it".
        """
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        relay = start_relay(self, reactor, f"https://127.0.0.1:{port}", self.sandbox.ca_path)
        small = self.mktemp()
        write_random_file(small, 7, seed=5)
        d = send_file(reactor, small, to="/syriusUpload.do", relay=RelayAddress("127.0.0.1", relay.port))
        error = await self.failed(d)
        self.assertEqual((error.code, error.reason.cause), ("epmsi-unreachable", "refused"))
        self.assertEqual((error.step, error.maybe_delivered), ("epmsi", False))
        self.assertIn(
            "was not delivered: e-PMSI did not receive it (failed step: the relay reaching e-PMSI).",
            error.outcome(small).render(),
        )


class _Silent(Protocol):
    """An e-PMSI that takes the request, or stops taking it, and never answers."""

    def __init__(self, reading: bool) -> None:
        self.reading = reading

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        if not self.reading:
            self.transport.pauseProducing()

    def connectionLost(self, reason: Failure) -> None:
        self.factory.connections.remove(self)


class DirectStallTests(TestCase):
    """Sending directly: silence from e-PMSI is bounded by the stall timeout too."""

    timeout = 60

    def start(self, reading: bool) -> str:
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1")
        self.ca_path = self.mktemp()
        ca.cert_pem.write_to_path(self.ca_path)
        factory = Factory.forProtocol(lambda: _Silent(reading))
        factory.connections = []
        options = server_tls_options(
            b"".join(pem.bytes() for pem in server.cert_chain_pems), server.private_key_pem.bytes()
        )
        port = reactor.listenSSL(0, factory, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [p.transport.abortConnection() for p in list(factory.connections)])
        return f"https://127.0.0.1:{port.getHost().port}"

    async def send(self, reading: bool, size: int) -> UploadFailed:
        url = self.start(reading)
        path = self.mktemp()
        write_random_file(path, size, seed=6)
        d = send_file(reactor, path, to="/syriusUpload.do", epmsi=url, ca_file=self.ca_path, stall_timeout=0.5)
        done = await poll_until(reactor, lambda: d.called, 200, 0.05)
        self.assertTrue(done)
        return await self.assertFailure(d, UploadFailed)

    async def test_takes_the_file_never_answers(self) -> None:
        """The whole file taken, no answer: 'stalled', and e-PMSI may have the file."""
        error = await self.send(reading=True, size=64 * 1024)
        self.assertEqual((error.code, error.step, error.maybe_delivered), ("stalled", "answer", True))
        self.assertIn("after the whole file was sent", error.message)

    async def test_stops_taking_the_file(self) -> None:
        """e-PMSI stops reading mid-upload: 'stalled' while sending, not delivered."""
        error = await self.send(reading=False, size=32 * 1024 * 1024)
        self.assertEqual((error.code, error.step, error.maybe_delivered), ("stalled", "upload", False))
        self.assertIn("while sending the file to e-PMSI", error.message)
