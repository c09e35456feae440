"""
A journal record's C{time} and the C{duration}s it holds are read on the
same clock, the one the relay is timed with: a test that drives the relay
with a L{Clock} controls both.
"""

from __future__ import annotations

from datetime import datetime, timezone

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from epop.journal.observer import JournalService
from epop.testing import MemoryJournalWriter
from epop.relay.protocol import RelayFactory
from tests.relaying import HELLO

RUN = "c10c4c10c4c1"
#: 2026-11-25 08:30:00 UTC: far from the time the test runs at.
START = datetime(2026, 11, 25, 8, 30, tzinfo=timezone.utc).timestamp()


class JournalClockTests(SynchronousTestCase):
    def test_time_and_duration_come_from_the_relay_clock(self) -> None:
        """A connection held 2.5 s on the relay's clock is journaled at the clock's times, with that duration."""
        clock = Clock()
        clock.advance(START)
        writer = MemoryJournalWriter()
        service = JournalService(RUN, lambda: writer, clock)
        service.startService()
        self.addCleanup(service.stopService)
        # No whole frame arrives: e-PMSI's side is never used.
        factory = RelayFactory(clock, None, RUN)  # type: ignore[arg-type]
        peer = IPv4Address("TCP", "10.1.4.27", 51234)
        protocol = factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        protocol.dataReceived(HELLO[:1])  # the connection is journaled at its first byte
        clock.advance(2.5)
        transport.loseConnection()
        protocol.connectionLost(None)  # type: ignore[arg-type]
        opened, closed = [r for r in writer.records if r["type"].startswith("connection-")]
        self.assertEqual(opened["type"], "connection-opened")
        self.assertEqual(opened["time"], "2026-11-25T08:30:00.000Z")
        self.assertEqual(closed["type"], "connection-closed")
        self.assertEqual(closed["time"], "2026-11-25T08:30:02.500Z")
        self.assertEqual(closed["duration"], 2.5)
