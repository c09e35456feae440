"""
The relay against slow and hostile clients: deadlines a trickle cannot
extend, uploads that must keep a minimum pace, e-PMSI requests opened only
for clients that send a body, rate-limited checks, and frames the relay sends
within the limits it enforces.  Units on C{MemoryReactorClock} and
C{StringTransport}; one test on loopback sockets.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Response
from twisted.web.http_headers import Headers

from epop.errors import EpopError, ProtocolError, excerpt
from epop.addressing import client_key
from epop.relay.pacing import RatesByClient
from epop.relay.protocol import RelayFactory, RelayProtocol
from epop.relay.request_rules import parse_request
from epop.epmsi.upstream import CheckResult
from epop.wire import (
    MAX_BODY_LENGTH,
    MAX_CONTROL_PAYLOAD,
    PROTOCOL_NAME,
    Frame,
    FrameReader,
    FrameType,
    encode_frame,
    encode_message,
)
from tests.relaying import HELLO, raw_connect, start_relay
from tests.support import poll_until
from epop.testing import FakeUpstream
from tests.test_relay import ListConsumer

GIB = 1024**3


def request_frame(length: int, **changes: Any) -> bytes:
    request: dict[str, Any] = {"method": "POST", "path": "/syriusUpload.do", "headers": [], "length": length}
    request.update(changes)
    return encode_message(FrameType.REQUEST, request)


class Workstation:
    """One connection to a relay factory, on a memory transport."""

    def __init__(self, factory: RelayFactory, host: str = "10.1.2.3", port: int = 5555) -> None:
        address = IPv4Address("TCP", host, port)
        self.protocol: RelayProtocol = factory.buildProtocol(address)
        self.transport = StringTransport(peerAddress=address)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def finish_closing(self) -> None:
        """The transport closes, as the relay asked: the connection is journaled closed."""
        assert self.transport.disconnecting
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def frames(self) -> list[Frame]:
        """Every frame the relay sent, read with the limits a client enforces."""
        return [f for f in FrameReader().feed(self.transport.value()) if isinstance(f, Frame)]

    def errors(self) -> list[dict[str, Any]]:
        return [f.message() for f in self.frames() if f.kind is FrameType.ERROR]

    def error_codes(self) -> list[str]:
        return [error["code"] for error in self.errors()]


class EpmsiTransport(StringTransport):
    """e-PMSI's connection: as a TCP transport, resuming it once stopped does nothing."""

    def resumeProducing(self) -> None:
        if self.producerState != "stopped":
            super().resumeProducing()


class LimitsTestCase(SynchronousTestCase):
    """A relay factory on a memory clock, its e-PMSI faked, its log watched."""

    settings: dict[str, Any] = {}

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.upstream = FakeUpstream()
        self.factory = RelayFactory(self.clock, self.upstream, "limits", **self.settings)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def journal(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("epop_event") == event_type]

    def closed_reasons(self) -> list[str]:
        """The journal's reasons for each connection closed."""
        return [e["reason"] for e in self.journal("connection-closed")]

    def outcomes(self) -> list[str]:
        """The journal's outcomes of relayed requests and uploads."""
        return [e["outcome"] for e in self.journal("object-released") if "integrity" in e]

    def failures(self) -> list[dict[str, Any]]:
        """Unhandled errors and critical events: the relay's own defects."""
        return [e for e in self.events if "log_failure" in e or e.get("log_level") is LogLevel.critical]

    def trickle(self, station: Workstation, data: bytes, every: float = 1.0) -> None:
        """Send C{data} one byte every C{every} seconds, as long as the relay listens."""
        for i in range(len(data)):
            if station.transport.disconnecting:
                return
            station.send(data[i : i + 1])
            self.clock.advance(every)


class HelloDeadlineTests(LimitsTestCase):
    def test_trickled_hello_is_cut(self) -> None:
        """A HELLO sent one byte a second is cut after the HELLO deadline, though each byte resets the idle timer."""
        station = Workstation(self.factory)
        self.trickle(station, HELLO * 3)
        self.assertEqual(station.error_codes(), ["hello-timeout"])
        self.assertTrue(station.transport.disconnecting)
        self.assertAlmostEqual(self.clock.seconds(), 30, delta=1)
        [error] = station.errors()
        self.assertEqual(error["text"]["params"], {"seconds": "30"})
        self.assertIn("HELLO", error["message"])
        station.finish_closing()
        self.assertEqual(self.closed_reasons(), ["hello-timeout"])

    def test_hello_in_time_is_welcomed(self) -> None:
        """A HELLO that arrives slowly but whole within the deadline is answered, and the deadline ends."""
        station = Workstation(self.factory)
        self.trickle(station, HELLO[:20], every=1.0)
        station.send(HELLO[20:])
        self.assertEqual([f.kind for f in station.frames()], [FrameType.WELCOME])
        self.clock.advance(100)
        self.assertEqual(station.error_codes(), [])

    def test_trickled_tls_handshake_is_cut(self) -> None:
        """In an encrypted session the TLS handshake counts in the HELLO's time: trickled, it is cut too."""
        import trustme
        from twisted.internet.ssl import Certificate, optionsForClientTLS
        from twisted.protocols.tls import TLSMemoryBIOFactory
        from twisted.python.filepath import FilePath

        from epop.local_tls import RelayTLS
        from epop.relay.session import SessionChoiceFactory

        ca = trustme.CA()
        issued = ca.issue_cert("localhost")
        cert, key = FilePath(self.mktemp()), FilePath(self.mktemp())
        cert.setContent(issued.cert_chain_pems[0].bytes())
        key.setContent(issued.private_key_pem.bytes())
        served = SessionChoiceFactory(self.factory, RelayTLS(cert.path, key.path), self.clock, 120)
        address = IPv4Address("TCP", "10.1.2.3", 5555)
        server = served.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        server.makeConnection(transport)
        trust = Certificate.loadPEM(ca.cert_pem.bytes())
        client = TLSMemoryBIOFactory(
            optionsForClientTLS("localhost", trustRoot=trust), True, Factory.forProtocol(Protocol)
        ).buildProtocol(address)
        sent = StringTransport()
        client.makeConnection(sent)
        client_hello = sent.value()
        for i in range(len(client_hello)):
            if transport.disconnecting:
                break
            server.dataReceived(client_hello[i : i + 1])
            self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertLessEqual(self.clock.seconds(), 30 + 5 + 1)  # the deadline, then the close grace
        [relay] = self.factory.connections.values()
        relay.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.closed_reasons(), ["hello-timeout"])

    def test_hello_has_its_own_deadline(self) -> None:
        """The HELLO is timed by the HELLO deadline alone, even when the frame deadline is shorter."""
        factory = RelayFactory(self.clock, self.upstream, "limits", hello_timeout=30, frame_timeout=5)
        station = Workstation(factory)
        self.trickle(station, HELLO[:29])
        self.assertEqual(station.error_codes(), [])
        self.clock.advance(1)
        self.assertEqual(station.error_codes(), ["hello-timeout"])

    def test_configurable(self) -> None:
        """The HELLO deadline is the factory's C{hello_timeout}."""
        factory = RelayFactory(self.clock, self.upstream, "limits", hello_timeout=5)
        station = Workstation(factory)
        station.send(HELLO[:3])
        self.clock.advance(4.9)
        self.assertEqual(station.error_codes(), [])
        self.clock.advance(0.1)
        self.assertEqual(station.error_codes(), ["hello-timeout"])


class FrameDeadlineTests(LimitsTestCase):
    settings = {"hello_timeout": 1000.0, "epmsi_timeout": 1e9}

    def test_trickled_frame_is_cut(self) -> None:
        """A REQUEST frame sent one byte a second is cut once it has taken the frame deadline."""
        station = Workstation(self.factory)
        station.send(HELLO)
        self.trickle(station, request_frame(100))
        self.assertEqual(station.error_codes(), ["frame-timeout"])
        self.assertEqual(self.upstream.requests, [])
        station.finish_closing()
        self.assertEqual(self.closed_reasons(), ["frame-timeout"])
        self.assertEqual(station.errors()[0]["text"]["params"], {"seconds": "30"})

    def test_deadline_counts_from_the_frame_first_byte(self) -> None:
        """Time between frames is the idle timeout's; each frame gets its own full deadline."""
        factory = RelayFactory(self.clock, self.upstream, "limits", frame_timeout=10, idle_timeout=120)
        station = Workstation(factory)
        station.send(HELLO)
        self.clock.advance(100)  # idle, not a frame
        station.send(encode_message(FrameType.CHECK, {})[:2])
        self.clock.advance(9)
        self.assertEqual(station.error_codes(), [])
        station.send(encode_message(FrameType.CHECK, {})[2:])
        self.upstream.checks[0].callback(CheckResult(True, "https://e", 0.1, "1.2.3.4:443", 200))
        station.send(encode_message(FrameType.CHECK, {})[:2])
        self.clock.advance(9.9)
        self.assertEqual(station.error_codes(), [])
        self.clock.advance(0.1)
        self.assertEqual(station.error_codes(), ["frame-timeout"])

    def test_time_held_back_by_epmsi_does_not_count(self) -> None:
        """While the relay holds the workstation back, a frame it has begun is not timed out."""
        station = Workstation(self.factory)
        body_end = encode_message(FrameType.BODY_END, {"sha256": "00" * 32})
        # The whole body and the start of BODY_END, before e-PMSI is ready.
        station.send(HELLO + request_frame(4) + b"abcd" + body_end[:3])
        self.assertEqual(station.transport.producerState, "paused")
        self.clock.advance(1000)
        self.assertEqual(station.error_codes(), [])
        body = self.upstream.requests[0][3]
        done = body.startProducing(ListConsumer())
        self.assertEqual(station.transport.producerState, "producing")
        self.clock.advance(29)
        self.assertEqual(station.error_codes(), [])
        self.clock.advance(1)
        self.assertEqual(station.error_codes(), ["frame-timeout"])
        self.assertEqual(self.failureResultOf(done, ProtocolError).value.code, "frame-timeout")


class UploadPaceTests(LimitsTestCase):
    # e-PMSI's stall watchdog is not under test here.
    settings = {"epmsi_timeout": 1e9, "idle_timeout": 1e9}

    def start_upload(self, length: int, first: bytes) -> tuple[Workstation, Any, Deferred[None]]:
        station = Workstation(self.factory)
        station.send(HELLO + request_frame(length) + first)
        body = self.upstream.requests[0][3]
        done = body.startProducing(ListConsumer())
        return station, body, done

    def test_trickled_upload_is_cut(self) -> None:
        """A 10 GiB upload sending one byte a second is cut after the grace period, and e-PMSI's request fails."""
        station, body, done = self.start_upload(10 * GIB, b"x")
        for _ in range(400):
            if station.transport.disconnecting:
                break
            self.clock.advance(1)
            station.send(b"x")
        self.assertEqual(station.error_codes(), ["upload-too-slow"])
        self.assertAlmostEqual(self.clock.seconds(), 300, delta=2)
        self.assertEqual(self.failureResultOf(done, EpopError).value.code, "upload-too-slow")
        self.assertEqual(self.outcomes(), ["upload-too-slow"])
        station.finish_closing()
        self.assertEqual(self.closed_reasons(), ["upload-too-slow"])
        params = station.errors()[0]["text"]["params"]
        self.assertEqual((params["minimum"], params["rate"]), ("1024", "1"))

    def test_large_minimum_in_plain_digits(self) -> None:
        """A 10 MB/s minimum and the rate are whole numbers in the message, never 1e+07."""
        factory = RelayFactory(
            self.clock, self.upstream, "limits", upload_min_rate=10_000_000, upload_grace=10,
            idle_timeout=1e9, epmsi_timeout=1e9,
        )
        station = Workstation(factory)
        station.send(HELLO + request_frame(10 * GIB) + b"x" * 65536)
        done = self.upstream.requests[0][3].startProducing(ListConsumer())
        self.clock.advance(11)
        self.assertEqual(station.error_codes(), ["upload-too-slow"])
        self.assertEqual(self.failureResultOf(done, EpopError).value.code, "upload-too-slow")
        error = station.errors()[0]
        self.assertEqual(error["text"]["params"]["minimum"], "10000000")
        self.assertEqual(error["text"]["params"]["rate"], "5957")  # 65536 bytes in 11 s, rounded down
        self.assertIn("below the 10000000 bytes/s this relay requires", error["message"])
        self.assertNotIn("e+", error["message"])

    def test_steady_slow_upload_is_not_cut(self) -> None:
        """An upload averaging twice the minimum goes on, past the grace period, to its end."""
        station, body, done = self.start_upload(2048 * 700, b"y" * 2048)
        for _ in range(699):
            self.clock.advance(1)
            station.send(b"y" * 2048)
        self.assertEqual(station.error_codes(), [])
        self.assertNoResult(done)

    def test_backpressure_does_not_count(self) -> None:
        """Time during which e-PMSI's side paused the workstation is left out of the average."""
        station, body, done = self.start_upload(10 * GIB, b"z" * (350 * 1024))
        body.pauseProducing()  # e-PMSI cannot take more
        self.clock.advance(10_000)
        self.assertEqual(station.error_codes(), [])
        body.resumeProducing()
        # 350 KiB at 1 KiB/s: the workstation has 350 s of its own time.
        self.clock.advance(349)
        self.assertEqual(station.error_codes(), [])
        self.clock.advance(2)
        self.assertEqual(station.error_codes(), ["upload-too-slow"])
        self.assertEqual(self.failureResultOf(done, EpopError).value.code, "upload-too-slow")

    def test_waiting_for_epmsi_connection_does_not_count(self) -> None:
        """The wait for e-PMSI's connection, the workstation held back, is not the workstation's time."""
        station = Workstation(self.factory)
        station.send(HELLO + request_frame(10 * GIB) + b"w")
        self.clock.advance(5000)
        self.assertEqual(station.error_codes(), [])

    def test_no_minimum(self) -> None:
        """With a minimum rate of 0 the pace is not checked."""
        factory = RelayFactory(
            self.clock, self.upstream, "limits", upload_min_rate=0, idle_timeout=1e9, epmsi_timeout=1e9
        )
        station = Workstation(factory)
        station.send(HELLO + request_frame(10 * GIB) + b"x")
        self.upstream.requests[0][3].startProducing(ListConsumer())
        self.clock.advance(100_000)
        self.assertEqual(station.error_codes(), [])

    def test_pace_ends_with_the_body(self) -> None:
        """Once the body is all in, the wait for BODY_END is the idle timeout's, not the pace's."""
        factory = RelayFactory(
            self.clock, self.upstream, "limits", idle_timeout=1e9, epmsi_timeout=1e9, upload_grace=10
        )
        station = Workstation(factory)
        station.send(HELLO + request_frame(3) + b"abc")
        self.upstream.requests[0][3].startProducing(ListConsumer())
        self.clock.advance(10_000)
        self.assertEqual(station.error_codes(), [])


class BodilessRequestTests(LimitsTestCase):
    def test_no_epmsi_request_before_a_body_byte(self) -> None:
        """100 uploads declared with no body byte open no request to e-PMSI; the first byte opens one."""
        stations = [Workstation(self.factory, port=6000 + i) for i in range(100)]
        for station in stations:
            station.send(HELLO + request_frame(10 * GIB))
        self.assertEqual(self.upstream.requests, [])
        self.assertEqual({s.transport.producerState for s in stations}, {"producing"})
        stations[7].send(b"x")
        self.assertEqual(len(self.upstream.requests), 1)
        self.assertEqual(stations[7].transport.producerState, "paused")

    def test_request_without_body_goes_at_once(self) -> None:
        """A request with length 0 has nothing to wait for."""
        station = Workstation(self.factory)
        station.send(HELLO + request_frame(0, method="GET", path="/"))
        self.assertEqual(len(self.upstream.requests), 1)

    def test_leaving_before_the_body_is_journaled(self) -> None:
        """A workstation that leaves before its first body byte: short body, nothing opened upstream."""
        station = Workstation(self.factory)
        station.send(HELLO + request_frame(100))
        station.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.upstream.requests, [])
        self.assertEqual(self.outcomes(), ["short-body"])
        self.assertEqual(self.failures(), [])

    def test_silent_before_body_meets_idle_timeout(self) -> None:
        """Before its first body byte the workstation is not held back: its silence is timed."""
        station = Workstation(self.factory)
        station.send(HELLO + request_frame(100))
        self.clock.advance(120)
        self.assertEqual(station.error_codes(), ["idle-timeout"])


class BodilessOnLoopbackTests(TestCase):
    """On real sockets: declared uploads without a byte leave e-PMSI untouched."""

    async def test_no_connection_to_epmsi_until_a_body_byte(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ServerEndpoint

        accepted: list[Protocol] = []

        class Counted(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self)

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Counted))
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [p.transport.abortConnection() for p in accepted])
        relay = start_relay(
            self, reactor, f"https://127.0.0.1:{port.getHost().port}", None, drain_seconds=0
        )
        clients = []
        for _ in range(20):
            client = await raw_connect(self, reactor, relay.port)
            client.transport.write(HELLO + request_frame(GIB))
            clients.append(client)
        await poll_until(reactor, lambda: len(relay.records("object-instantiated")) == 20)
        self.assertEqual(len(relay.records("object-instantiated")), 20)
        clients[0].transport.write(b"x")
        self.assertTrue(await poll_until(reactor, lambda: len(accepted) >= 1))
        await poll_until(reactor, lambda: False, attempts=4)
        self.assertEqual(len(accepted), 1)


class CheckRateTests(LimitsTestCase):
    def check(self, station: Workstation) -> str:
        """Ask for one check, answer it at once; the kind of frame the relay sent last."""
        before = len(self.upstream.checks)
        station.send(encode_message(FrameType.CHECK, {}))
        if len(self.upstream.checks) > before:
            self.upstream.checks[-1].callback(CheckResult(True, "https://e", 0.1, "1.2.3.4:443", 200))
        return station.frames()[-1].kind.name

    def test_a_few_in_a_row_are_fine(self) -> None:
        """Five checks within a second, on one connection, all go to e-PMSI."""
        station = Workstation(self.factory)
        station.send(HELLO)
        kinds = []
        for _ in range(5):
            kinds.append(self.check(station))
            self.clock.advance(0.2)
        self.assertEqual(kinds, ["CHECK_RESULT"] * 5)

    def test_loop_on_one_connection_is_refused(self) -> None:
        """A loop of 100 checks is refused after a few, saying when to try again."""
        station = Workstation(self.factory)
        station.send(HELLO)
        kinds = [self.check(station) for _ in range(100) if not station.transport.disconnecting]
        self.assertEqual(kinds, ["CHECK_RESULT"] * 6 + ["ERROR"])
        self.assertEqual(len(self.upstream.checks), 6)
        [error] = station.errors()
        self.assertEqual(error["code"], "too-many-checks")
        self.assertEqual(error["text"]["params"], {"limit": "6", "seconds": "10"})
        self.assertIn("try again in 10 s", error["message"])
        station.finish_closing()
        self.assertEqual(self.closed_reasons(), ["too-many-checks"])

    def test_allowance_comes_back_with_time(self) -> None:
        """At six a minute, one more check is allowed every ten seconds."""
        station = Workstation(self.factory)
        station.send(HELLO)
        for _ in range(6):
            self.check(station)
        self.clock.advance(10)
        self.assertEqual(self.check(station), "CHECK_RESULT")

    def test_loop_over_connections_is_refused_per_address(self) -> None:
        """New connections from one address share its allowance; another address has its own."""
        kinds = []
        for i in range(100):
            station = Workstation(self.factory, "10.9.9.9", 7000 + i)
            station.send(HELLO)
            kinds.append(self.check(station))
        self.assertEqual(kinds, ["CHECK_RESULT"] * 30 + ["ERROR"] * 70)
        self.assertIn("this workstation's address", station.errors()[0]["message"])
        other = Workstation(self.factory, "10.9.9.10")
        other.send(HELLO)
        self.assertEqual(self.check(other), "CHECK_RESULT")

    def test_configurable_and_can_be_off(self) -> None:
        """Both allowances are factory settings; 0 means no limit."""
        factory = RelayFactory(self.clock, self.upstream, "limits", checks_per_connection=0, checks_per_client=0)
        station = Workstation(factory)
        station.send(HELLO)
        kinds = {self.check(station) for _ in range(50)}
        self.assertEqual(kinds, {"CHECK_RESULT"})
        self.assertIsNone(factory.check_rates)


class RatesByClientTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        """Beyond its size the least recently used address is forgotten."""
        rates = RatesByClient(5, max_clients=3)
        for i in range(10):
            rates.bucket(f"10.0.0.{i}", 0.0).take(0.0)
        self.assertEqual(len(rates), 3)

    def test_expires_with_the_clock(self) -> None:
        """An address whose allowance is whole again is forgotten."""
        rates = RatesByClient(6)
        rates.bucket("10.0.0.1", 0.0).take(0.0)
        rates.bucket("10.0.0.2", 5.0).take(5.0)
        rates.bucket("10.0.0.3", 11.0)
        self.assertEqual(len(rates), 2)  # 10.0.0.1 was whole again at 10 s

    def test_client_key(self) -> None:
        """IPv6 clients count per /64; IPv4 seen over IPv6 counts as IPv4."""
        self.assertEqual(client_key("2001:db8::1"), client_key("2001:db8::ffff"))
        self.assertNotEqual(client_key("2001:db8:0:1::1"), client_key("2001:db8::1"))
        self.assertEqual(client_key("::ffff:10.1.2.3"), "10.1.2.3")
        self.assertEqual(client_key("not-an-ip"), "not-an-ip")


class SentFramesTests(LimitsTestCase):
    def test_many_versions_error_is_short(self) -> None:
        """A HELLO offering 21,000 versions gets a short unsupported-version error, within the limit."""
        station = Workstation(self.factory)
        hello = {"protocol": PROTOCOL_NAME, "versions": [2] * 21_000}
        station.send(encode_message(FrameType.HELLO, hello))
        [error] = station.errors()
        self.assertEqual(error["code"], "unsupported-version")
        self.assertLess(len(station.transport.value()), 1024)
        self.assertEqual(
            error["message"],
            "This relay speaks e-POP protocol version 1; the workstation offered "
            "2, 2, 2, 2, 2, 2, 2, 2, .... Update the older of the two.",
        )

    def test_client_text_is_sanitised(self) -> None:
        """Escape sequences and line breaks a client sent never come back in a message."""
        station = Workstation(self.factory)
        hello = {"protocol": PROTOCOL_NAME, "versions": ["\x1b[2J\r\nEvil: yes" * 50]}
        station.send(encode_message(FrameType.HELLO, hello))
        [error] = station.errors()
        for text in (error["message"], json.dumps(error["text"])):
            self.assertFalse(any(c in text for c in "\x1b\r\n"), text)
        self.assertLess(len(error["message"]), 200)

    def test_bad_request_quotes_briefly(self) -> None:
        """A refused header name is quoted in printable ASCII, cut short."""
        station = Workstation(self.factory)
        station.send(HELLO + request_frame(0, headers=[["X\x1b" + "y" * 60_000, "v"]]))
        [error] = station.errors()
        self.assertEqual(error["code"], "bad-request")
        self.assertEqual(error["message"], f"invalid header '{excerpt('X' + chr(27) + 'y' * 100)}'")
        self.assertLess(len(error["message"]), 100)

    def test_oversized_error_becomes_internal_error(self) -> None:
        """The sending path refuses a frame over the limit: a defect, logged critical, sent as internal-error."""
        station = Workstation(self.factory)
        station.protocol.fail(ProtocolError("bad-frame", "x" * (MAX_CONTROL_PAYLOAD + 1)))
        self.assertEqual(station.error_codes(), ["internal-error"])
        self.assertEqual(len(self.failures()), 1)
        self.assertTrue(station.transport.disconnecting)

    def test_answer_headers_over_the_limit(self) -> None:
        """e-PMSI headers too large for a RESPONSE frame end the operation cleanly, e-PMSI's connection closed."""
        station = Workstation(self.factory)
        station.send(HELLO + request_frame(0, method="GET", path="/"))
        from twisted.web._newclient import TransportProxyProducer

        epmsi = EpmsiTransport()
        headers = Headers({b"set-cookie": [b"c=" + b"v" * 1000] * 100})
        response = Response((b"HTTP", 1, 1), 200, b"OK", headers, TransportProxyProducer(epmsi))
        self.upstream.requests[0][4].callback(response)
        [error] = station.errors()
        self.assertEqual(error["code"], "epmsi-answer-too-large")
        self.assertNotIn(FrameType.RESPONSE, [f.kind for f in station.frames()])
        self.assertEqual(epmsi.producerState, "stopped")
        self.assertEqual(self.failures(), [])

    def test_every_frame_within_limits(self) -> None:
        """The RESPONSE a relay sends is checked by the same reader limits as any frame."""
        station = Workstation(self.factory)
        station.send(HELLO + request_frame(0, method="GET", path="/"))
        response = Response((b"HTTP", 1, 1), 200, b"OK", Headers({b"x": [b"y" * 60_000]}), StringTransport())
        self.upstream.requests[0][4].callback(response)
        self.assertEqual([f.kind for f in station.frames()], [FrameType.WELCOME, FrameType.RESPONSE])


class NestingAndNumbersTests(LimitsTestCase):
    def test_deep_nesting_is_a_bad_frame(self) -> None:
        """30,000 nested brackets are a bad frame, not an internal error with a traceback."""
        for payload in (b"[" * 30_000, b'{"protocol":' + b"[" * 30_000 + b"]" * 30_000 + b"}"):
            self.events.clear()
            station = Workstation(self.factory)
            station.send(encode_frame(FrameType.HELLO, payload))
            self.assertEqual(station.error_codes(), ["bad-frame"])
            self.assertIn("32 levels", station.errors()[0]["message"])
            self.assertEqual(self.failures(), [])

    def test_length_over_the_maximum(self) -> None:
        """2**64+5 or a 4,001-digit length is refused before anything reaches e-PMSI."""
        for length in (2**64 + 5, 10**4000, MAX_BODY_LENGTH + 1):
            station = Workstation(self.factory)
            station.send(HELLO + request_frame(length))
            self.assertEqual(station.error_codes(), ["bad-request"])
            self.assertIn(str(MAX_BODY_LENGTH), station.errors()[0]["message"])
        self.assertEqual(self.upstream.requests, [])

    def test_maximum_length_is_accepted(self) -> None:
        """The largest length allowed is a valid request."""
        request = {"method": "PUT", "path": "/x", "headers": [], "length": MAX_BODY_LENGTH}
        self.assertEqual(parse_request(request)[3], MAX_BODY_LENGTH)

    def test_number_with_too_many_digits(self) -> None:
        """A number Python refuses to read (over 4300 digits) is a bad frame that says so."""
        station = Workstation(self.factory)
        payload = b'{"method":"POST","path":"/","headers":[],"length":' + b"9" * 5000 + b"}"
        station.send(HELLO + encode_frame(FrameType.REQUEST, payload))
        [error] = station.errors()
        self.assertEqual(error["code"], "bad-frame")
        self.assertEqual(error["message"], "REQUEST frame holds a number with too many digits")
        self.assertEqual(self.failures(), [])


