"""
Property tests (hypothesis): whatever a client sends, the relay's readers
and validators give a valid result or the documented L{ProtocolError}, never
another exception; the relay protocol never logs an unhandled error and
never sends a frame over the limits it enforces.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from epop.errors import ProtocolError
from epop.relay.protocol import RelayFactory
from epop.relay.request_rules import parse_request
from epop.epmsi.upstream import CheckResult
from epop.testing import FakeUpstream
from epop.wire import (
    MAX_BODY_LENGTH,
    MAX_CONTROL_PAYLOAD,
    MAX_DATA_PAYLOAD,
    PROTOCOL_NAME,
    Frame,
    FrameReader,
    FrameType,
    encode_frame,
    encode_message,
)

#: Generous for the shared test machines: no per-example deadline.
PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)

#: REQUEST messages near the valid ones, so validation goes deep.
methods = st.sampled_from(["GET", "POST", "PUT", "TRACE", "get", ""]) | json_values
paths = st.sampled_from(["/", "/syriusUpload.do", "/a?b=c#d", "x", "/\n", "/a b"]) | st.text(max_size=40) | json_values
header_names = st.sampled_from(["Content-Type", "Host", "X-A\n", "Bad Name", ""]) | st.text(max_size=20)
header_values = st.sampled_from(["text/plain", "caf\u00e9", "\u20ac", "a\r\nb", ""]) | st.text(max_size=20)
headers = (
    st.lists(st.tuples(header_names, header_values).map(list), max_size=4)
    | st.lists(json_values, max_size=3)
    | json_values
)
lengths = (
    st.integers(min_value=-2, max_value=10)
    | st.integers(min_value=MAX_BODY_LENGTH - 2, max_value=MAX_BODY_LENGTH + 2)
    | st.integers(min_value=2**63, max_value=2**70)
    | json_values
)
requests = st.fixed_dictionaries(
    {}, optional={"method": methods, "path": paths, "headers": headers, "length": lengths, "x": json_values}
)

#: Payloads with deep, shallow, broken and quoted bracket structure.
bracket_payloads = st.text(alphabet='[]{}":,1\\ a', max_size=300).map(str.encode)


def fits_the_wire(error: ProtocolError) -> None:
    """The error's frame is within the limits, and its message is plain text."""
    frame = encode_message(FrameType.ERROR, error.to_wire())
    assert len(frame) - 5 <= MAX_CONTROL_PAYLOAD, len(frame)
    assert all(" " <= c <= "~" for c in error.message), error.message


class FrameReaderProperties(SynchronousTestCase):
    @PROPERTY_SETTINGS
    @given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10))
    def test_any_bytes_any_split(self, data: bytes, cuts: list[int]) -> None:
        """Any bytes, cut anywhere: frames within the limits, or a ProtocolError."""
        reader = FrameReader()
        bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
        try:
            for start, end in zip(bounds, bounds[1:]):
                for item in reader.feed(data[start:end]):
                    self.assertIsInstance(item, Frame)
                    assert isinstance(item, Frame)
                    limit = MAX_DATA_PAYLOAD if item.kind is FrameType.DATA else MAX_CONTROL_PAYLOAD
                    self.assertLessEqual(len(item.payload), limit)
                    try:
                        self.assertIsInstance(item.message(), dict)
                    except ProtocolError as error:
                        self.assertEqual(error.code, "bad-frame")
        except ProtocolError as error:
            self.assertIn(error.code, {"bad-frame", "frame-too-large"})

    @PROPERTY_SETTINGS
    @given(payload=st.binary(max_size=500) | bracket_payloads | json_values.map(lambda v: json.dumps(v).encode()))
    def test_any_payload(self, payload: bytes) -> None:
        """Any control payload decodes to a JSON object or is a bad-frame."""
        try:
            self.assertIsInstance(Frame(FrameType.HELLO, payload).message(), dict)
        except ProtocolError as error:
            self.assertEqual(error.code, "bad-frame")
            fits_the_wire(error)

    @PROPERTY_SETTINGS
    @given(depth=st.integers(min_value=0, max_value=5000), opener=st.sampled_from(["[", '{"a":']))
    def test_nesting_never_recurses(self, depth: int, opener: str) -> None:
        """However deep, nesting is read or refused as bad-frame, never a RecursionError."""
        closer = "]" if opener == "[" else "}"
        payload = ('{"a":' + opener * depth + "1" + closer * depth + "}").encode()
        try:
            Frame(FrameType.REQUEST, payload).message()
        except ProtocolError as error:
            self.assertEqual(error.code, "bad-frame")
            self.assertGreater(depth, 30)


class ParseRequestProperties(SynchronousTestCase):
    @PROPERTY_SETTINGS
    @given(message=requests)
    def test_valid_or_bad_request(self, message: dict[str, Any]) -> None:
        """Any JSON object is a valid request or a bad-request with a short, plain message."""
        try:
            method, path, checked, length = parse_request(message)
        except ProtocolError as error:
            self.assertEqual(error.code, "bad-request")
            fits_the_wire(error)
            return
        self.assertIsInstance(length, int)
        self.assertTrue(0 <= length <= MAX_BODY_LENGTH)
        self.assertTrue(path.startswith("/"))
        for name, value in checked:
            name.encode("ascii")
            value.encode("latin-1")


def fake_upstream() -> FakeUpstream:
    """e-PMSI's side: checks answered at once, requests left waiting, bodies taken as they come."""
    reached = CheckResult(True, "https://epmsi.example", 0.1, "192.0.2.1:443", 200)
    return FakeUpstream("https://epmsi.example", check_result=reached, read_bodies=True)


HELLO = encode_message(FrameType.HELLO, {"protocol": PROTOCOL_NAME, "versions": [1]})

#: Pieces a client could send: valid frames, near-valid ones, and noise.
pieces = st.one_of(
    st.sampled_from(
        [
            HELLO,
            encode_message(FrameType.CHECK, {}),
            encode_message(FrameType.REQUEST, {"method": "GET", "path": "/", "headers": [], "length": 0}),
            encode_message(FrameType.REQUEST, {"method": "POST", "path": "/u", "headers": [], "length": 5}),
            encode_message(FrameType.BODY_END, {"sha256": "00" * 32}),
            encode_frame(FrameType.DATA, b"x"),
            b"hello",
        ]
    ),
    st.binary(max_size=40),
    st.tuples(st.sampled_from(list(FrameType)), json_values).map(
        lambda kv: encode_frame(kv[0], json.dumps(kv[1]).encode())
    ),
    st.tuples(st.sampled_from([FrameType.HELLO, FrameType.REQUEST]), bracket_payloads).map(
        lambda kv: encode_frame(kv[0], kv[1])
    ),
    st.builds(
        lambda versions: encode_message(FrameType.HELLO, {"protocol": PROTOCOL_NAME, "versions": versions}),
        st.lists(json_values, max_size=50),
    ),
    requests.map(lambda message: encode_message(FrameType.REQUEST, message)),
    st.integers(min_value=0, max_value=5000).map(lambda depth: encode_frame(FrameType.HELLO, b"[" * depth)),
)


class RelayProtocolProperties(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @PROPERTY_SETTINGS
    @given(
        chunks=st.lists(pieces, max_size=12),
        pauses=st.lists(st.sampled_from([0.0, 0.5, 5.0, 40.0, 400.0]), max_size=12),
        start_with_hello=st.booleans(),
    )
    def test_any_input(self, chunks: list[bytes], pauses: list[float], start_with_hello: bool) -> None:
        """
        Whatever arrives, in whatever rhythm: no unhandled error is logged,
        and every frame the relay sends passes a reader with the protocol's
        limits.
        """
        self.events.clear()
        clock = MemoryReactorClock()
        factory = RelayFactory(clock, fake_upstream(), "properties")
        address = IPv4Address("TCP", "10.1.2.3", 5555)
        protocol = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        if start_with_hello:
            chunks = [HELLO, *chunks]
        for i, chunk in enumerate(chunks):
            if transport.disconnecting:
                break
            protocol.dataReceived(chunk)
            clock.advance(pauses[i] if i < len(pauses) else 0.0)
        clock.advance(1000)
        sent = list(FrameReader().feed(transport.value()))
        for frame in sent:
            assert isinstance(frame, Frame)
            if frame.kind is not FrameType.DATA:
                message = frame.message()
                if frame.kind is FrameType.ERROR:
                    self.assertNotEqual(message["code"], "internal-error", message)
                    self.assertTrue(all(" " <= c <= "~" for c in message["message"]), message)
        self.assertEqual(
            [e for e in self.events if "log_failure" in e or e.get("log_level") is LogLevel.critical], []
        )
