"""
What an upload in flight holds in the relay: the held-back tail
(L{epop.tuning.HELD_TAIL}).  The memory itself is measured by the
benchmark's month-end rush (C{docs/performance.md}), not here.
"""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from epop.relay import RelayFactory, RelayProtocol
from epop.tuning import HELD_TAIL
from epop.wire import FrameType, encode_message
from tests.relaying import HELLO
from tests.test_relay import FakeUpstream, ListConsumer


class Connection:
    """A relay connection on a StringTransport wrapping a real socket's type."""

    def __init__(self, factory: RelayFactory, reactor: MemoryReactorClock) -> None:
        self.protocol: RelayProtocol = factory.buildProtocol(IPv4Address("TCP", "10.1.2.3", 5555))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 5555))
        # What epop.tuning.tune finds under wrappers such as TLS or PROXY.
        self.socket = FileDescriptor(reactor)
        self.transport.transport = self.socket  # type: ignore[attr-defined]
        self.protocol.makeConnection(self.transport)

    def upload(self, factory: RelayFactory, length: int) -> Any:
        request = {"method": "POST", "path": "/syriusUpload.do", "headers": [], "length": length}
        self.protocol.dataReceived(HELLO + encode_message(FrameType.REQUEST, request))
        upstream = factory.upstream
        assert isinstance(upstream, FakeUpstream)
        return upstream.requests[-1][3]

    def body_end(self, data: bytes) -> None:
        sha = hashlib.sha256(data).hexdigest()
        self.protocol.dataReceived(encode_message(FrameType.BODY_END, {"sha256": sha}))


def _cuts(draw: Any, length: int) -> list[int]:
    return sorted(draw(st.lists(st.integers(0, length), max_size=12)))


@st.composite
def split_bodies(draw: Any) -> tuple[bytes, list[bytes], int]:
    """A body, the reads it arrives in, and how many of them come before e-PMSI is ready."""
    body = draw(st.binary(min_size=1, max_size=3 * HELD_TAIL + 50))
    cuts = [0, *_cuts(draw, len(body)), len(body)]
    reads = [body[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
    early = draw(st.integers(0, len(reads)))
    return body, reads, early


class HeldTailTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.factory = RelayFactory(self.reactor, FakeUpstream(), "test-relay")

    @settings(max_examples=200, deadline=None)
    @given(split_bodies(), st.booleans())
    def test_tail_is_small_and_withheld_until_the_hash_matches(
        self, case: tuple[bytes, list[bytes], int], matches: bool
    ) -> None:
        """
        However the body is split into reads, and whenever e-PMSI's
        connection becomes ready, the relay holds at most HELD_TAIL bytes of
        it, e-PMSI has everything but the last HELD_TAIL bytes before
        BODY_END, all of it after a matching hash, and never all of it after
        a wrong one.
        """
        data, reads, early = case
        factory = RelayFactory(self.reactor, FakeUpstream(), "test-relay")
        connection = Connection(factory, self.reactor)
        body = connection.upload(factory, len(data))
        consumer = ListConsumer()
        for index, read in enumerate(reads):
            if index == early:
                done = body.startProducing(consumer)
            connection.protocol.dataReceived(read)
            if index >= early:
                self.assertLessEqual(body.held, HELD_TAIL)
        if early == len(reads):
            done = body.startProducing(consumer)
        self.assertLessEqual(body.held, HELD_TAIL)
        self.assertEqual(b"".join(consumer.chunks), data[: max(0, len(data) - HELD_TAIL)])
        self.assertNoResult(done)
        if matches:
            connection.body_end(data)
            self.assertEqual(b"".join(consumer.chunks), data)
            self.successResultOf(done)
        else:
            connection.body_end(data + b"x")
            self.assertNotEqual(b"".join(consumer.chunks), data)
            self.failureResultOf(done)

    def test_large_reads_pass_through_whole(self) -> None:
        """Reads before the tail reach e-PMSI as they came: no copy, no split."""
        connection = Connection(self.factory, self.reactor)
        first, second = b"a" * 1000, b"b" * 1000
        body = connection.upload(self.factory, 2000 + HELD_TAIL)
        consumer = ListConsumer()
        body.startProducing(consumer)
        connection.protocol.dataReceived(first)
        connection.protocol.dataReceived(second)
        self.assertIs(consumer.chunks[0], first)
        self.assertIs(consumer.chunks[1], second)
