"""
What an upload in flight holds in the relay: the held-back tail
(L{epop.tuning.HELD_TAIL}), the read size shared among the uploads in
flight (L{epop.tuning.ReadBudget}), and e-PMSI's TLS settings, shared by its
connections.  The memory itself is measured by the
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
from twisted.web.client import URI

from epop.relay.protocol import RelayFactory, RelayProtocol
from epop.tuning import HELD_TAIL, MIN_READ_SIZE, READ_BUDGET, READ_SIZE, ReadBudget
from epop.epmsi.origin import tls_policy
from epop.epmsi.upstream import EpmsiEndpointFactory
from epop.wire import FrameType, encode_message
from tests.relaying import HELLO
from epop.testing import FakeUpstream
from tests.test_relay import ListConsumer


class Connection:
    """A relay connection on a StringTransport wrapping a real socket's type."""

    def __init__(self, factory: RelayFactory, reactor: MemoryReactorClock) -> None:
        self.protocol: RelayProtocol = factory.buildProtocol(IPv4Address("TCP", "10.1.2.3", 5555))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 5555))
        # What epop.tuning.tune finds under wrappers such as TLS or PROXY.
        self.socket = FileDescriptor(reactor)
        self.transport.transport = self.socket  # type: ignore[attr-defined]
        self.protocol.makeConnection(self.transport)

    def upload(self, factory: RelayFactory, length: int, first: bytes) -> Any:
        """Start an upload with its C{first} body bytes, which open e-PMSI's request."""
        request = {"method": "POST", "path": "/syriusUpload.do", "headers": [], "length": length}
        self.protocol.dataReceived(HELLO + encode_message(FrameType.REQUEST, request) + first)
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
    """
    A body, the reads it arrives in, and how many of them come before
    e-PMSI is ready (at least the first, which opens e-PMSI's request).
    """
    body = draw(st.binary(min_size=1, max_size=3 * HELD_TAIL + 50))
    cuts = [0, *_cuts(draw, len(body)), len(body)]
    reads = [body[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
    early = draw(st.integers(1, len(reads)))
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
        body = connection.upload(factory, len(data), reads[0])
        consumer = ListConsumer()
        for index, read in enumerate(reads):
            if index == early:
                done = body.startProducing(consumer)
            if index:
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
        body = connection.upload(self.factory, 3000 + HELD_TAIL, b"0" * 1000)
        consumer = ListConsumer()
        body.startProducing(consumer)
        connection.protocol.dataReceived(first)
        connection.protocol.dataReceived(second)
        self.assertIs(consumer.chunks[1], first)
        self.assertIs(consumer.chunks[2], second)


class ReadBudgetTests(SynchronousTestCase):
    def test_few_uploads_read_the_most(self) -> None:
        """Up to READ_BUDGET / READ_SIZE uploads, each reads READ_SIZE."""
        budget = ReadBudget()
        self.assertEqual(budget.read_size(), READ_SIZE)
        for _ in range(READ_BUDGET // READ_SIZE):
            budget.started()
        self.assertEqual(budget.read_size(), READ_SIZE)

    def test_many_uploads_share_the_budget(self) -> None:
        """Past that, the reads together stay within the budget, in 4 KiB steps."""
        budget = ReadBudget()
        for _ in range(READ_BUDGET // READ_SIZE + 1):
            budget.started()
        size = budget.read_size()
        self.assertLess(size, READ_SIZE)
        self.assertLessEqual(size * budget.uploads, READ_BUDGET)
        self.assertEqual(size % 4096, 0)

    def test_never_below_the_floor(self) -> None:
        """However many uploads, each still reads MIN_READ_SIZE."""
        budget = ReadBudget()
        for _ in range(10_000):
            budget.started()
        self.assertEqual(budget.read_size(), MIN_READ_SIZE)

    def test_ended_uploads_give_their_share_back(self) -> None:
        """The count follows uploads ending, and never goes below zero."""
        budget = ReadBudget()
        for _ in range(200):
            budget.started()
        for _ in range(201):
            budget.ended()
        self.assertEqual(budget.uploads, 0)
        self.assertEqual(budget.read_size(), READ_SIZE)


class RelayReadSizeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.factory = RelayFactory(self.reactor, FakeUpstream(), "test-relay")

    def test_lone_upload_reads_large_chunks(self) -> None:
        """With one upload in flight its socket reads READ_SIZE at a time."""
        connection = Connection(self.factory, self.reactor)
        body = connection.upload(self.factory, 1000, b"x")
        body.startProducing(ListConsumer())
        self.assertEqual(connection.socket.bufferSize, READ_SIZE)

    def test_rush_reads_smaller_chunks(self) -> None:
        """
        With 200 uploads in flight, each socket reads its share of
        READ_BUDGET at a time once its upload resumes: the month-end rush's
        memory stays bounded.
        """
        connections = [Connection(self.factory, self.reactor) for _ in range(200)]
        bodies = [c.upload(self.factory, 1000, b"x") for c in connections]
        self.assertEqual(self.factory.read_budget.uploads, 200)
        producing = [body.startProducing(ListConsumer()) for body in bodies]
        [size] = {c.socket.bufferSize for c in connections}
        self.assertLessEqual(size * 200, READ_BUDGET)
        self.assertGreaterEqual(size, MIN_READ_SIZE)
        for connection, done in zip(connections[1:], producing[1:], strict=True):
            connection.protocol.connectionLost(None)  # type: ignore[arg-type]
            self.failureResultOf(done)  # e-PMSI's request fails with its upload
        bodies[0].pauseProducing()
        bodies[0].resumeProducing()
        self.assertEqual(connections[0].socket.bufferSize, READ_SIZE)

    def test_uploads_leave_the_count(self) -> None:
        """Verified, failed and abandoned uploads all leave the count of uploads in flight."""
        data = b"z" * 100
        verified, mismatched, abandoned = (Connection(self.factory, self.reactor) for _ in range(3))
        producing = [
            connection.upload(self.factory, len(data), data[:50]).startProducing(ListConsumer())
            for connection in (verified, mismatched, abandoned)
        ]
        self.assertEqual(self.factory.read_budget.uploads, 3)
        verified.protocol.dataReceived(data[50:])
        verified.body_end(data)
        self.assertEqual(self.factory.read_budget.uploads, 2)
        mismatched.protocol.dataReceived(data[50:])
        mismatched.body_end(b"other")
        self.assertEqual(self.factory.read_budget.uploads, 1)
        abandoned.protocol.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.factory.read_budget.uploads, 0)
        self.successResultOf(producing[0])
        self.failureResultOf(producing[1])
        self.failureResultOf(producing[2])


class CountingPolicy:
    """A TLS policy that counts the settings it builds."""

    def __init__(self) -> None:
        self.built: list[tuple[bytes, int]] = []
        self._policy = tls_policy(None)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        self.built.append((hostname, port))
        return self._policy.creatorForNetloc(hostname, port)


class SharedTLSSettingsTests(SynchronousTestCase):
    def test_one_tls_setting_per_origin(self) -> None:
        """
        Connections to one e-PMSI origin share its TLS settings (and the CAs
        they load); another origin gets its own, checked against its name.
        """
        policy = CountingPolicy()
        endpoints = EpmsiEndpointFactory(MemoryReactorClock(), policy)  # type: ignore[arg-type]
        for _ in range(3):
            endpoints.endpointForURI(URI.fromBytes(b"https://epmsi.example/syriusUpload.do"))
        endpoints.endpointForURI(URI.fromBytes(b"https://other.example:8443/"))
        self.assertEqual(policy.built, [(b"epmsi.example", 443), (b"other.example", 8443)])
