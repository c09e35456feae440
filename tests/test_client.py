"""Unit tests for L{epop.workstation}: addresses, handshake and relay errors."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from epop.workstation import RelayAddress, RelayClientProtocol, TestReport, test_connection
from epop.errors import EpopError, RelayError, describe_upstream_failure
from epop.epmsi.upstream import CheckResult
from epop.wire import Frame, FrameReader, FrameType, encode_message
from epop.workstation.states import STATES, State


class EndpointTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """Addresses are typed as HOST, HOST:PORT or [IPv6]:PORT; 3358 by default."""
        self.assertEqual(RelayAddress.parse("10.1.2.3"), RelayAddress("10.1.2.3", 3358))
        self.assertEqual(RelayAddress.parse("relay.chu.local:4000"), RelayAddress("relay.chu.local", 4000))
        self.assertEqual(RelayAddress.parse("[::1]:4000"), RelayAddress("::1", 4000))
        self.assertEqual(RelayAddress.parse("::1"), RelayAddress("::1", 3358))
        self.assertEqual(str(RelayAddress("::1", 4000)), "[::1]:4000")

    def test_parse_errors(self) -> None:
        """A bad address says what was expected."""
        for text in (
            "", "host:", "host:0", "host:70000", "host:abc", "[::1", "[::1]x",
            "http://10.1.2.3:3358", "bad_host", "a b", "-host", "a..b", "[relay]:3358", "fe80::1::2",
        ):
            self.assertRaises(ValueError, RelayAddress.parse, text)
        for text in ("relay.chu.local.", "fe80::1%eth0", "[fd00::1]:3358", "hôpital.local"):
            RelayAddress.parse(text)


class HandshakeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.protocol = RelayClientProtocol(self.clock, timeout=10)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def test_sends_hello(self) -> None:
        """The client opens with HELLO naming the versions it speaks."""
        [hello] = list(FrameReader().feed(self.transport.value()))
        assert isinstance(hello, Frame)
        self.assertEqual(hello.kind, FrameType.HELLO)
        self.assertEqual(hello.message()["versions"], [1])

    def test_no_answer_in_time(self) -> None:
        """A peer that accepts but never answers is 'no answer in time'."""
        self.clock.advance(9.9)
        self.assertNoResult(self.protocol.welcomed)
        self.clock.advance(0.1)
        error = self.failureResultOf(self.protocol.welcomed, EpopError).value
        self.assertEqual(error.cause, "timeout")
        self.assertIn("no answer in time", error.message)
        self.assertTrue(self.transport.disconnecting or self.transport.disconnected)

    def test_relay_refuses(self) -> None:
        """An ERROR instead of WELCOME reaches the caller with its code and message."""
        message = "Client 10.1.2.3:51234 is not allowed to connect to this e-POP relay"
        self.protocol.dataReceived(
            encode_message(FrameType.ERROR, {"code": "not-authorized", "message": message})
        )
        error = self.failureResultOf(self.protocol.welcomed, RelayError).value
        self.assertEqual((error.code, error.message), ("not-authorized", message))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_not_a_relay(self) -> None:
        """A server that is not a relay (here an HTTP server) is called that, not a client."""
        self.protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        error = self.failureResultOf(self.protocol.welcomed, EpopError).value
        self.assertEqual(error.code, "bad-frame")
        self.assertIn("unknown frame type 0x48: this is not an e-POP relay", error.message)

    def test_relay_closes_during_operation(self) -> None:
        """A relay that hangs up mid-operation fails it with a clear error."""
        self.protocol.dataReceived(encode_message(FrameType.WELCOME, {"version": 1}))
        result = self.protocol.check()
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.failureResultOf(result, EpopError).value.code, "relay-closed")


class ConnectTimeoutTests(SynchronousTestCase):
    def test_connect_timeout(self) -> None:
        """The connect attempt carries the timeout, and its expiry reads 'no answer in time'."""
        from twisted.internet.error import TimeoutError

        from epop.workstation import connect_to_relay

        reactor = MemoryReactorClock()
        d = connect_to_relay(reactor, RelayAddress("127.0.0.1", 3358), timeout=10)
        reactor.advance(0)
        [(host, port, factory, timeout, _)] = reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 3358, 10))
        factory.clientConnectionFailed(None, Failure(TimeoutError()))
        reactor.advance(1)
        error = self.failureResultOf(d, EpopError).value
        self.assertEqual((error.code, error.cause), ("relay-unreachable", "timeout"))
        self.assertEqual(
            error.render("en"),
            "Could not reach the relay at 127.0.0.1:3358: no answer in time (10 s). "
            "No machine answered at that address: check the address.",
        )
        self.assertIn("pas de réponse dans le délai (10 s)", error.render("fr"))


class TestStepTests(SynchronousTestCase):
    """`epop test` names the step the relay's own refusals stopped at."""

    def report_for(self, code: str) -> TestReport:
        """Run the test on a memory reactor: the relay says WELCOME, then ERROR C{code}."""
        reactor = MemoryReactorClock()
        d = test_connection(reactor, relay=RelayAddress("127.0.0.1", 3358))
        reactor.advance(0)
        [(_, _, factory, _, _)] = reactor.tcpClients
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        reactor.advance(0.009)
        protocol.dataReceived(encode_message(FrameType.WELCOME, {"version": 1}))
        reactor.advance(0)
        protocol.dataReceived(
            encode_message(FrameType.ERROR, {"code": code, "message": f"refused: {code}"})
        )
        reactor.advance(0)
        return self.successResultOf(d)

    def test_limits(self) -> None:
        """A relay at one of its limits was reached: the step is its limits."""
        for code in (
            "too-many-checks",
            "too-many-connections",
            "too-many-connections-from-client",
            "too-many-silent-connections",
        ):
            report = self.report_for(code)
            self.assertFalse(report.ok)
            self.assertIn("Relay 127.0.0.1:3358 answered in 9 ms", report.describe())
            self.assertEqual(report.step.render("en"), "being served by the relay (its limits)", code)
            self.assertEqual(report.step.render("fr"), "le service par le relais (ses limites)", code)

    def test_proxy_header(self) -> None:
        """A relay behind a load balancer that got no or a bad PROXY header."""
        for code in ("no-proxy-header", "bad-proxy-header"):
            self.assertEqual(
                self.report_for(code).step.render("en"),
                "reaching the relay through its load balancer",
                code,
            )

    def test_time_limits(self) -> None:
        """The relay's own deadlines on what the workstation sends."""
        for code in ("hello-timeout", "frame-timeout"):
            self.assertEqual(
                self.report_for(code).step.render("en"),
                "sending to the relay within its time limits",
                code,
            )

    def test_unreachable_is_still_reaching(self) -> None:
        """Nothing answered: the step stays 'reaching the relay'."""
        report = TestReport("127.0.0.1:3358", error=EpopError("relay-unreachable", "no"), failed_step="relay")
        self.assertEqual(report.step.render("en"), "reaching the relay")


class _Body:
    """An upload body that never finishes: the relay goes away first."""

    length = 10

    def startProducing(self, consumer: object) -> Deferred[None]:
        return Deferred()

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class PlainWordsTests(SynchronousTestCase):
    """The relay's connection ending, and e-PMSI's timeouts, said without Twisted's words."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.protocol = RelayClientProtocol(self.clock)
        self.protocol.makeConnection(StringTransport())
        self.protocol.dataReceived(encode_message(FrameType.WELCOME, {"version": 1}))

    def lost(self, operation: Deferred[object], reason: Exception) -> EpopError:
        self.protocol.connectionLost(Failure(reason))
        error = self.failureResultOf(operation, EpopError).value
        self.assertEqual((error.code, error.cause), ("relay-closed", "connection-lost"))
        return error

    def test_closed_before_answering(self) -> None:
        """A clean close: 'the relay closed the connection', nothing more."""
        error = self.lost(self.protocol.check(), ConnectionDone())
        self.assertEqual(error.render("en"), "The relay closed the connection before answering.")
        self.assertEqual(error.render("fr"), "Le relais a fermé la connexion avant de répondre.")

    def test_cut_before_answering(self) -> None:
        """A lost connection says it was cut, not Twisted's 'non-clean fashion'."""
        error = self.lost(self.protocol.check(), ConnectionLost())
        self.assertEqual(
            error.render("en"),
            "The relay closed the connection before answering "
            "(the connection was cut, not closed cleanly).",
        )
        self.assertNotIn("fashion", error.render("en"))

    def test_closed_during_upload(self) -> None:
        """Mid-upload, the same plain words, with how far the file got."""
        error = self.lost(self.protocol.request("POST", "/syriusUpload.do", body=_Body()), ConnectionDone())
        self.assertEqual(
            error.render("en"),
            "The relay closed the connection during the upload, after 0 of 10 bytes: "
            "e-PMSI did not receive the file.",
        )
        self.assertNotIn("cleanly", error.render("en"))

    def test_epmsi_timeout_says_its_time_once(self) -> None:
        """'no answer in time (3 s)' is not followed by '(after 3004 ms)'."""
        url = "https://www.epmsi.atih.sante.fr/"
        timeout = describe_upstream_failure(Failure(TimeoutError()), url, timeout=3)
        check = CheckResult(ok=False, url=url, elapsed=3.004, error=timeout)
        report = TestReport(None, epmsi=check, error=timeout, failed_step="epmsi")
        text = report.describe()
        self.assertIn("no answer in time (3 s)", text)
        self.assertNotIn("ms)", text)
        self.assertEqual(text, timeout.render("en"))
        refused = describe_upstream_failure(Failure(ConnectionRefusedError()), url)
        other = TestReport(None, epmsi=CheckResult(ok=False, url=url, elapsed=0.002, error=refused))
        self.assertIn("(after 2 ms)", other.describe())


class StateTableTests(SynchronousTestCase):
    """The client's states: one table, entered by one method, and the doc that says the same."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.protocol = RelayClientProtocol(self.clock, timeout=10, stall_timeout=30)
        self.transport = StringTransport()

    def welcomed(self) -> None:
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(encode_message(FrameType.WELCOME, {"version": 1}))

    def test_states_and_timers(self) -> None:
        """Each state runs the timer its row names, and only that one."""
        self.assertIs(self.protocol.state, State.CONNECTING)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.protocol.makeConnection(self.transport)
        self.assertIs(self.protocol.state, State.WELCOME)
        [welcome] = self.clock.getDelayedCalls()
        self.assertEqual(welcome.getTime(), 10)
        self.protocol.dataReceived(encode_message(FrameType.WELCOME, {"version": 1}))
        self.assertIs(self.protocol.state, State.READY)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        request = self.protocol.request("GET", "/")
        self.assertIs(self.protocol.state, State.RESPONSE)
        [stall] = self.clock.getDelayedCalls()
        self.assertEqual(stall.getTime(), 30)
        self.protocol.dataReceived(
            encode_message(FrameType.RESPONSE, {"status": 200, "reason": "OK", "headers": []})
        )
        self.assertIs(self.protocol.state, State.RESPONSE_END)
        self.assertEqual(self.clock.getDelayedCalls(), [stall])
        self.protocol.dataReceived(encode_message(FrameType.RESPONSE_END, {"length": 0}))
        self.assertIs(self.protocol.state, State.READY)
        self.assertEqual(self.successResultOf(request).status, 200)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        check = self.protocol.check()
        self.assertIs(self.protocol.state, State.CHECK_RESULT)
        self.protocol.dataReceived(encode_message(FrameType.ERROR, {"code": "relay-stopping"}))
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertEqual(self.failureResultOf(check, RelayError).value.code, "relay-stopping")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_operation_at_a_time(self) -> None:
        """An operation starts only in READY."""
        self.protocol.makeConnection(self.transport)
        self.assertRaises(RuntimeError, self.protocol.check)
        self.protocol.dataReceived(encode_message(FrameType.WELCOME, {"version": 1}))
        self.protocol.check()
        self.assertRaises(RuntimeError, self.protocol.check)

    def test_answer_ended_before_the_body(self) -> None:
        """
        A RESPONSE_END ahead of the body (no relay sends one): SENDING until
        the body and its BODY_END are out, then the request completes.
        """

        class Body:
            length = 3

            def __init__(self) -> None:
                self.finished: Deferred[None] = Deferred()

            def startProducing(self, consumer: object) -> Deferred[None]:
                self.consumer = consumer
                return self.finished

            def stopProducing(self) -> None:
                pass

        body = Body()
        self.welcomed()
        request = self.protocol.request("POST", "/", body=body)  # type: ignore[arg-type]
        self.protocol.dataReceived(
            encode_message(FrameType.RESPONSE, {"status": 200, "headers": []})
            + encode_message(FrameType.RESPONSE_END, {"length": 0})
        )
        self.assertIs(self.protocol.state, State.SENDING)
        self.assertNoResult(request)
        body.consumer.write(b"abc")  # type: ignore[attr-defined]
        body.finished.callback(None)
        self.assertIs(self.protocol.state, State.READY)
        self.assertEqual(self.successResultOf(request).sent, 3)
        body_end = encode_message(FrameType.BODY_END, {"sha256": hashlib.sha256(b"abc").hexdigest()})
        self.assertTrue(self.transport.value().endswith(b"abc" + body_end))

    def refused(self, state_frames: list[bytes], start: str, frame: bytes) -> str:
        """The message of the error C{frame} gets in operation C{start}, after C{state_frames}."""
        self.welcomed()
        d = self.protocol.check() if start == "check" else self.protocol.request("GET", "/")
        for earlier in state_frames:
            self.protocol.dataReceived(earlier)
        self.protocol.dataReceived(frame)
        self.assertIs(self.protocol.state, State.CLOSED)
        error = self.failureResultOf(d, EpopError).value
        self.assertEqual(error.code, "unexpected-frame")
        return error.message

    def test_unexpected_frames(self) -> None:
        """A frame its state does not accept is the relay's mistake, said as such."""
        response = encode_message(FrameType.RESPONSE, {"status": 200, "headers": []})
        data = encode_message(FrameType.DATA, {})
        check_result = encode_message(FrameType.CHECK_RESULT, {"ok": True})
        self.assertEqual(self.refused([], "request", data), "DATA frame before RESPONSE")
        self.setUp()
        self.assertEqual(
            self.refused([], "check", encode_message(FrameType.RESPONSE_END, {"length": 0})),
            "RESPONSE_END frame before RESPONSE",
        )
        self.setUp()
        self.assertEqual(
            self.refused([], "request", check_result), "CHECK_RESULT frame was not expected"
        )
        self.setUp()
        self.assertEqual(self.refused([], "check", response), "RESPONSE frame was not expected")
        self.setUp()
        self.assertEqual(
            self.refused([response], "request", response), "RESPONSE frame was not expected"
        )
        self.setUp()
        self.assertEqual(
            self.refused([], "request", encode_message(FrameType.WELCOME, {"version": 1})),
            "WELCOME frame was not expected",
        )

    def test_the_doc_reads_like_the_table(self) -> None:
        """docs/protocol.md's client states: the same names, frames and timers as L{STATES}."""
        doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
        section = doc.split("### 3.1 Client states")[1].split("\n## ")[0]
        rows = [line for line in section.splitlines() if line.startswith("| `")]
        documented = {}
        for row in rows:
            name, _, accepted, timer = [cell.strip() for cell in row.strip("|").split("|")]
            frames = frozenset(FrameType[f] for f in re.findall(r"`([A-Z_]+)`", accepted))
            clock = None if timer.startswith("none") else timer.split(":")[0]
            documented[State[name.strip("`")]] = (frames, clock)
        self.assertEqual(
            documented,
            {
                state: (rule.accepts, None if rule.timer is None else rule.timer.value)
                for state, rule in STATES.items()
            },
        )
