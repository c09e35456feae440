"""
Unit tests for L{epop.relay.protocol} with C{StringTransport} and a clock: timeouts,
flow control, the integrity hold-back and request validation.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from epop.errors import ProtocolError
from epop.relay.interfaces import IRelaySession, count_refused, relay_inside
from epop.relay.protocol import RelayFactory, RelayProtocol
from epop.relay.request_rules import parse_request
from epop.tuning import HELD_TAIL
from epop.epmsi.upstream import CheckResult
from epop.testing import FakeUpstream
from epop.wire import Frame, FrameReader, FrameType, encode_message
from tests.relaying import HELLO
from tests.support import InMemoryBody


class ListConsumer:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


class RelayProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.upstream = FakeUpstream()
        self.factory = RelayFactory(self.clock, self.upstream, "test-relay", idle_timeout=120)
        self.protocol: RelayProtocol = self.factory.buildProtocol(IPv4Address("TCP", "10.1.2.3", 5555))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 5555))
        self.protocol.makeConnection(self.transport)

    def frames(self) -> list[Frame]:
        return [f for f in FrameReader().feed(self.transport.value()) if isinstance(f, Frame)]

    def errors(self) -> list[str]:
        return [f.message()["code"] for f in self.frames() if f.kind is FrameType.ERROR]

    def upload(self, length: int, first: bytes) -> Any:
        """Start an upload with its C{first} body bytes, which open e-PMSI's request."""
        request = {"method": "POST", "path": "/syriusUpload.do", "headers": [], "length": length}
        self.protocol.dataReceived(HELLO + encode_message(FrameType.REQUEST, request) + first)
        return self.upstream.requests[-1].body

    def test_idle_timeout(self) -> None:
        """A workstation silent for the idle timeout gets an error and is closed."""
        self.protocol.dataReceived(HELLO)
        self.clock.advance(119)
        self.assertEqual(self.errors(), [])
        self.clock.advance(1)
        self.assertEqual(self.errors(), ["idle-timeout"])
        self.assertTrue(self.transport.disconnecting)

    def test_activity_resets_idle_timeout(self) -> None:
        """Each byte received restarts the idle countdown."""
        body = self.upload(1000, b"x")
        body.startProducing(ListConsumer())
        self.clock.advance(100)
        self.protocol.dataReceived(b"y")
        self.clock.advance(100)
        self.assertEqual(self.errors(), [])

    def test_no_idle_timeout_while_epmsi_works(self) -> None:
        """While e-PMSI is the slow side, the workstation is not timed out."""
        self.protocol.dataReceived(HELLO + encode_message(FrameType.CHECK, {}))
        self.clock.advance(1000)
        self.assertEqual(self.errors(), [])
        self.upstream.checks[0].callback(CheckResult(True, "https://e", 0.1, "1.2.3.4:443", 200))
        self.assertEqual(self.frames()[-1].kind, FrameType.CHECK_RESULT)
        self.clock.advance(120)
        self.assertEqual(self.errors(), ["idle-timeout"])

    def test_no_idle_timeout_while_paused_by_epmsi(self) -> None:
        """Backpressure from e-PMSI pauses the workstation without timing it out."""
        body = self.upload(100, b"x")
        done = body.startProducing(ListConsumer())
        self.assertEqual(self.transport.producerState, "producing")
        body.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        self.clock.advance(250)
        self.assertEqual(self.errors(), [])
        body.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")
        self.clock.advance(120)
        self.assertEqual(self.errors(), ["idle-timeout"])
        self.assertEqual(self.failureResultOf(done, ProtocolError).value.code, "idle-timeout")

    def test_stalled_epmsi_is_given_up(self) -> None:
        """An operation on which nothing moves for the e-PMSI timeout is cancelled."""
        body = self.upload(100, b"x" * 10)
        done = body.startProducing(ListConsumer())
        body.pauseProducing()
        self.clock.advance(299)
        self.assertEqual(self.errors(), [])
        self.clock.advance(1)
        self.assertEqual(self.errors(), ["stalled"])
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.failureResultOf(done).value.code, "stalled")

    def test_no_early_response_end(self) -> None:
        """e-PMSI's early answer ends only once the upload has been verified."""
        from twisted.internet.testing import StringTransport as Sink
        from twisted.web.client import Response
        from twisted.web.http_headers import Headers

        body = self.upload(4, b"ab")
        consumer = ListConsumer()
        body.startProducing(consumer)
        self.protocol.dataReceived(b"cd")
        response = Response((b"HTTP", 1, 1), 413, b"Too Large", Headers(), Sink())
        self.upstream.requests[-1].answer.callback(response)
        response._bodyDataFinished()
        kinds = [f.kind for f in self.frames()]
        self.assertIn(FrameType.RESPONSE, kinds)
        self.assertNotIn(FrameType.RESPONSE_END, kinds)
        sha = hashlib.sha256(b"abcd").hexdigest()
        self.protocol.dataReceived(encode_message(FrameType.BODY_END, {"sha256": sha}))
        self.assertEqual(self.frames()[-1].kind, FrameType.RESPONSE_END)

    def test_body_waits_for_epmsi_connection(self) -> None:
        """Until e-PMSI's connection is ready the workstation is paused, and early bytes kept."""
        body = self.upload(6 + HELD_TAIL, b"abc")
        self.assertEqual(self.transport.producerState, "paused")
        consumer = ListConsumer()
        body.startProducing(consumer)
        self.assertEqual(self.transport.producerState, "producing")
        self.protocol.dataReceived(b"def")
        self.assertEqual(consumer.chunks, [b"abc", b"def"])

    def test_last_chunk_held_until_hash_matches(self) -> None:
        """e-PMSI gets the body's last HELD_TAIL bytes only once the client's SHA-256 matches."""
        data = bytes(range(200))
        body = self.upload(len(data), data[:120])
        consumer = ListConsumer()
        done = body.startProducing(consumer)
        self.protocol.dataReceived(data[120:])
        self.assertEqual(consumer.chunks, [data[:120], data[120:-HELD_TAIL]])
        self.assertNoResult(done)
        sha = hashlib.sha256(data).hexdigest()
        self.protocol.dataReceived(encode_message(FrameType.BODY_END, {"sha256": sha}))
        self.assertEqual(consumer.chunks, [data[:120], data[120:-HELD_TAIL], data[-HELD_TAIL:]])
        self.assertIsNone(self.successResultOf(done))

    def test_mismatch_never_delivers_last_chunk(self) -> None:
        """A wrong hash fails e-PMSI's request one chunk short, and tells the client."""
        body = self.upload(10, b"0123456789")
        consumer = ListConsumer()
        done = body.startProducing(consumer)
        self.protocol.dataReceived(encode_message(FrameType.BODY_END, {"sha256": "ab" * 32}))
        self.assertEqual(consumer.chunks, [])
        self.failureResultOf(done)
        self.assertEqual(self.errors(), ["integrity-mismatch"])
        self.assertTrue(self.transport.disconnecting)

    def test_short_body_fails_epmsi_request(self) -> None:
        """A workstation that leaves mid-body fails e-PMSI's request."""
        body = self.upload(10, b"01234")
        consumer = ListConsumer()
        done = body.startProducing(consumer)
        self.protocol.connectionLost(Failure_done())
        self.failureResultOf(done)
        self.assertEqual(consumer.chunks, [])

    def test_bug_in_an_operation_is_an_internal_error(self) -> None:
        """An operation that crashes logs the bug and tells the workstation, rather than hang."""
        self.protocol.dataReceived(HELLO + encode_message(FrameType.CHECK, {}))
        self.upstream.checks[0].callback(object())  # not a CheckResult
        self.assertEqual(self.errors(), ["internal-error"])
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)

    def test_bug_in_a_relayed_request_is_an_internal_error(self) -> None:
        request = {"method": "GET", "path": "/", "headers": [], "length": 0}
        self.protocol.dataReceived(HELLO + encode_message(FrameType.REQUEST, request))
        self.upstream.requests[0][4].callback(object())  # not a response
        self.assertEqual(self.errors(), ["internal-error"])
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)

    def test_frame_before_hello(self) -> None:
        """Operations before the handshake are refused."""
        self.protocol.dataReceived(encode_message(FrameType.CHECK, {}))
        self.assertEqual(self.errors(), ["unexpected-frame"])

    def test_welcome_names_version(self) -> None:
        """The relay answers HELLO with the version chosen and its e-PMSI origin."""
        self.protocol.dataReceived(HELLO)
        welcome = self.frames()[0]
        self.assertEqual(welcome.kind, FrameType.WELCOME)
        self.assertEqual(welcome.message()["version"], 1)
        self.assertEqual(welcome.message()["epmsi"], "https://epmsi.example")


def Failure_done() -> Any:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    return Failure(ConnectionDone())


class ParseRequestTests(SynchronousTestCase):
    def good(self, **changes: Any) -> dict[str, Any]:
        request: dict[str, Any] = {"method": "POST", "path": "/up.do?x=1", "headers": [], "length": 1}
        request.update(changes)
        return request

    def test_accepts_a_plain_request(self) -> None:
        """A path with a query and ordinary headers goes through unchanged."""
        self.assertEqual(
            parse_request(self.good(headers=[["Content-Type", "text/plain"]])),
            ("POST", "/up.do?x=1", [("Content-Type", "text/plain")], 1),
        )

    def test_refuses(self) -> None:
        """Anything that could leave the e-PMSI origin or smuggle headers is refused."""
        bad = [
            self.good(path="http://elsewhere/"),
            self.good(path="elsewhere/x"),
            self.good(path="/with space"),
            self.good(path="/\u00e9"),
            self.good(method="CONNECT"),
            self.good(length=-1),
            self.good(length="12"),
            self.good(length=True),
            self.good(headers=[["Host", "elsewhere"]]),
            self.good(headers=[["Proxy-Authorization", "Basic x"]]),
            self.good(headers=[["Transfer-Encoding", "chunked"]]),
            self.good(headers=[["X-A", "b\r\nHost: elsewhere"]]),
            self.good(headers=[["Bad Name", "x"]]),
            self.good(headers=[["only-one"]]),
            self.good(headers=[["X", "y"]] * 101),
            self.good(path="/abc\n"),
            self.good(headers=[["X-A\n", "b"]]),
            self.good(headers=[["X-A", "b\x01"]]),
            self.good(headers=[["X-A", "\u20ac"]]),
            self.good(method=["GET"]),
        ]
        for request in bad:
            with self.assertRaises(ProtocolError, msg=repr(request)) as caught:
                parse_request(request)
            self.assertEqual(caught.exception.code, "bad-request")


class ClientRelayPairTests(SynchronousTestCase):
    """The client and the relay protocols speak to each other (iosim)."""

    def setUp(self) -> None:
        from twisted.test import iosim

        from epop.workstation import RelayClientProtocol

        self.clock = MemoryReactorClock()
        self.upstream = FakeUpstream()
        factory = RelayFactory(self.clock, self.upstream, "pair")
        server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
        self.client = RelayClientProtocol(self.clock)
        self.pump = iosim.connect(
            server, iosim.makeFakeServer(server), self.client, iosim.makeFakeClient(self.client)
        )
        self.assertIs(self.successResultOf(self.client.welcomed), self.client)

    def test_check(self) -> None:
        """CHECK travels to e-PMSI's side and its result comes back whole."""
        result = self.client.check()
        self.pump.flush()
        self.upstream.checks[0].callback(CheckResult(True, "https://e", 0.25, "192.0.2.1:443", 200))
        self.pump.flush()
        checked = self.successResultOf(result)
        self.assertEqual((checked.ok, checked.address, checked.status), (True, "192.0.2.1:443", 200))

    def test_upload_reaches_epmsi_side_intact(self) -> None:
        """An upload's bytes, hash and answer cross both protocols unchanged."""
        from twisted.internet.testing import StringTransport as Sink
        from twisted.web.client import Response
        from twisted.web.http_headers import Headers

        reply = self.client.request("POST", "/up.do?x=1", [("X-Test", "1")], InMemoryBody([b"payload" * 1000]))
        self.pump.flush()
        method, path, headers, body, answered = self.upstream.requests[0]
        self.assertEqual((method, path, headers), ("POST", "/up.do?x=1", [("X-Test", "1")]))
        consumer = ListConsumer()
        body.startProducing(consumer)
        self.pump.flush()
        self.assertEqual(b"".join(consumer.chunks), b"payload" * 1000)
        response = Response((b"HTTP", 1, 1), 200, b"OK", Headers({b"x-answer": [b"yes"]}), Sink())
        answered.callback(response)
        response._bodyDataReceived(b"receipt")
        response._bodyDataFinished()
        self.pump.flush()
        done = self.successResultOf(reply)
        self.assertEqual((done.status, done.body), (200, b"receipt"))
        self.assertIn(("x-answer", "yes"), [(n.lower(), v) for n, v in done.headers])


class SilentConnectionTests(SynchronousTestCase):
    def test_silent_peer_times_out(self) -> None:
        """A peer that never sends a byte still meets the idle timeout, with an error frame."""
        from epop.relay.session import SessionChoiceFactory

        clock = MemoryReactorClock()
        relay = RelayFactory(clock, FakeUpstream(), "silent", idle_timeout=120)
        served = SessionChoiceFactory(relay, None, clock, 120)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 5555))
        served.buildProtocol(IPv4Address("TCP", "10.1.2.3", 5555)).makeConnection(transport)
        clock.advance(119)
        self.assertEqual(transport.value(), b"")
        clock.advance(1)
        [frame] = [f for f in FrameReader().feed(transport.value()) if isinstance(f, Frame)]
        self.assertEqual((frame.kind, frame.message()["code"]), (FrameType.ERROR, "idle-timeout"))
        self.assertTrue(transport.disconnecting)


class RelaySessionInterfaceTests(SynchronousTestCase):
    """The layers around the relay's protocol reach it through IRelaySession only."""

    def setUp(self) -> None:
        self.relay = RelayFactory(MemoryReactorClock(), FakeUpstream(), "interface", idle_timeout=120)
        self.peer = IPv4Address("TCP", "10.1.2.3", 5555)

    def test_protocol_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IRelaySession, self.relay.buildProtocol(self.peer)))

    def test_found_inside_its_wrappers(self) -> None:
        """Through the limits and the allowlist, the relay's protocol and nothing before it."""
        from epop.relay.allowlist import AllowlistFactory
        from epop.relay.limits import LimitsFactory

        outer = LimitsFactory(AllowlistFactory(self.relay)).buildProtocol(self.peer)
        transport = StringTransport(peerAddress=self.peer)
        outer.makeConnection(transport)
        inner = relay_inside(outer)
        self.assertIsInstance(inner, RelayProtocol)
        count_refused(outer, b"12345")
        self.assertEqual(inner.bytes_in, 5)
        relay_inside(outer).fail(ProtocolError("not-authorized", "no"))
        self.assertIn(b"not-authorized", transport.value())

    def test_wrappers_do_not_know_the_protocol(self) -> None:
        """The session chooser, the allowlist and the limits import only the interface."""
        from epop.relay import allowlist, limits, session

        for module in (session, allowlist, limits):
            with open(str(module.__file__), encoding="utf-8") as source:
                self.assertNotIn("epop.relay.protocol", source.read(), module.__name__)
