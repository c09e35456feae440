"""
Stopping the relay without cutting uploads short: C{--drain-seconds}.

On stop the relay stops listening, closes idle connections at once, lets the
operations in flight finish for up to C{drain_seconds}, then aborts the rest
so that e-PMSI never gets a complete file from them.  Tested on the factory
with a fake clock, and on real C{twistd epop} processes sent C{SIGTERM}.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.journal.observer import JournalObserver
from epop.testing import FakeUpstream, MemoryJournalWriter
from epop.relay.protocol import RelayFactory, RelayProtocol
from epop.epmsi.upstream import CheckResult
from epop.wire import Frame, FrameReader, FrameType, encode_message
from tests.relaying import HELLO, RawClient, raw_connect
from tests.support import free_port, make_trustme_sandbox, poll_until

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


# The drain logic, on a fake clock.


def _frames(transport: StringTransport) -> list[Frame]:
    return [item for item in FrameReader().feed(transport.value()) if isinstance(item, Frame)]


class DrainLogicTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.upstream = FakeUpstream("https://epmsi.test")
        self.factory = RelayFactory(self.clock, self.upstream, "drain-test")  # type: ignore[arg-type]
        self.writer = MemoryJournalWriter()
        observer = JournalObserver(self.writer, "drain-test", self.clock)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def connect(self, *frames: bytes) -> tuple[RelayProtocol, StringTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        protocol.dataReceived(HELLO + b"".join(frames))
        return protocol, transport

    def upload(self) -> tuple[RelayProtocol, StringTransport]:
        """A connection halfway through an upload: 5 of 10 bytes sent."""
        request = encode_message(
            FrameType.REQUEST,
            {"method": "POST", "path": "/syriusUpload.do", "headers": [], "length": 10},
        )
        protocol, transport = self.connect(request)
        protocol.dataReceived(b"12345")
        self.assertIsNotNone(protocol.operation)
        return protocol, transport

    def close(self, protocol: RelayProtocol, transport: StringTransport) -> None:
        """What the reactor does after loseConnection: the connection ends."""
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))

    def errors(self, transport: StringTransport) -> list[str]:
        return [f.message()["code"] for f in _frames(transport) if f.kind is FrameType.ERROR]

    def test_no_connection(self) -> None:
        """With nothing open, the drain is over at once and leaves no timer."""
        self.assertIsNone(self.successResultOf(self.factory.drain(30)))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idle_closed_at_once_busy_aborted_at_deadline(self) -> None:
        """Idle connections go at once; a transfer still running at the deadline is aborted."""
        idle, idle_transport = self.connect()
        busy, busy_transport = self.upload()
        drained = self.factory.drain(10)
        self.assertEqual(self.errors(idle_transport), ["relay-stopping"])
        self.close(idle, idle_transport)
        self.assertEqual(self.errors(busy_transport), [])
        self.clock.advance(9.9)
        self.assertEqual(self.errors(busy_transport), [])
        self.assertIsNotNone(busy.operation)
        self.assertNoResult(drained)
        self.clock.advance(0.1)
        self.assertEqual(self.errors(busy_transport), ["relay-stopping"])
        # e-PMSI's request was cancelled, short of its last chunk.
        self.assertTrue(self.upstream.requests[0].answer.called)
        self.close(busy, busy_transport)
        self.successResultOf(drained)
        released = [r for r in self.writer.records if r["type"] == "object-released"]
        self.assertEqual(
            [(r["outcome"], r["integrity"], r["length"]) for r in released],
            [("relay-stopping", "pending", 5)],
        )
        closed = [r["reason"] for r in self.writer.records if r["type"] == "connection-closed"]
        self.assertEqual(closed, ["relay-stopping", "relay-stopping"])

    def test_finished_operation_ends_the_drain_early(self) -> None:
        """An operation that ends during the drain closes its connection and the drain is done."""
        protocol, transport = self.connect(encode_message(FrameType.CHECK, {}))
        drained = self.factory.drain(30)
        self.assertEqual(self.errors(transport), [])
        self.clock.advance(5)
        self.upstream.checks[0].callback(
            CheckResult(ok=True, url="https://epmsi.test", elapsed=0.1, address="192.0.2.1:443", status=200)
        )
        kinds = [f.kind for f in _frames(transport)]
        self.assertEqual(kinds[-2:], [FrameType.CHECK_RESULT, FrameType.ERROR])
        self.close(protocol, transport)
        self.successResultOf(drained)
        self.assertEqual(self.clock.getDelayedCalls(), [], "the deadline was cancelled")
        released = [r for r in self.writer.records if r["type"] == "object-released"]
        self.assertEqual([r["outcome"] for r in released], ["completed"])

    def test_late_connection_is_closed(self) -> None:
        """A connection whose protocol is built during the drain is closed at once, and waited for."""
        busy, busy_transport = self.upload()
        drained = self.factory.drain(10)
        late, late_transport = self.connect()
        self.assertEqual(self.errors(late_transport), ["relay-stopping"])
        self.clock.advance(10)
        self.close(busy, busy_transport)
        self.assertNoResult(drained)
        self.close(late, late_transport)
        self.successResultOf(drained)

    def test_zero_seconds_aborts_at_once(self) -> None:
        """drain(0) is the old behaviour: every operation is aborted straight away."""
        _, busy_transport = self.upload()
        self.factory.drain(0)
        self.clock.advance(0)
        self.assertEqual(self.errors(busy_transport), ["relay-stopping"])


# Real twistd processes, sent SIGTERM.


class RelayProcess(ProcessProtocol):
    """A C{twistd epop} child: what it printed, when it ended, its journal."""

    def __init__(self, journal: str) -> None:
        self.journal = journal
        self.output = b""
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()
        self.process: Any = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback((reason.value.exitCode, reason.value.signal))

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """The journal so far; a line still being written is left out."""
        try:
            with open(self.journal, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]

    def types(self) -> list[str]:
        return [r["type"] for r in self.records()]

    def signal(self, number: int) -> None:
        if not self.ended.called:
            self.process.signalProcess(number)

    async def stop(self, seconds: float = 30) -> tuple[int | None, int | None]:
        """SIGTERM, then SIGKILL if it is still there after C{seconds}."""
        self.signal(signal.SIGTERM)
        if not await poll_until(reactor, lambda: self.ended.called, int(seconds * 10), 0.1):
            self.signal(signal.SIGKILL)
        return await self.ended


async def start_relay_process(
    testcase: TestCase, port: int, *arguments: str, environ: dict[str, str] | None = None
) -> RelayProcess:
    """
    Run C{twistd --nodaemon --pidfile= epop --listen tcp:PORT... ARGUMENTS}
    and wait until its journal says it listens; the test's cleanup stops it.
    C{environ} is added to this process's environment.
    """
    folder = os.path.abspath(testcase.mktemp())
    os.makedirs(folder)
    relay = RelayProcess(os.path.join(folder, "journal.jsonl"))
    argv = [
        *TWISTD, "--nodaemon", "--pidfile=", "epop",
        "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--journal", relay.journal, "--no-check", "--console", "none", *arguments,
    ]
    relay.process = reactor.spawnProcess(relay, sys.executable, argv, env={**os.environ, **(environ or {})}, path=folder)
    testcase.addCleanup(relay.stop)
    listening = await poll_until(
        reactor, lambda: relay.ended.called or "listening-opened" in relay.types(), 300, 0.1
    )
    testcase.assertTrue(listening and not relay.ended.called, relay.text())
    return relay


class RawUpload:
    """
    An upload driven by hand over raw e-POP, so that a test decides when
    the body moves: nothing depends on how fast loopback is.
    """

    def __init__(self, client: RawClient, size: int, seed: int) -> None:
        self.client = client
        self.body = random.Random(seed).randbytes(size)
        self.sha256 = hashlib.sha256(self.body).hexdigest()

    @classmethod
    async def start(cls, testcase: TestCase, port: int, size: int, seed: int = 0) -> RawUpload:
        client = await raw_connect(testcase, reactor, port)
        upload = cls(client, size, seed)
        client.transport.write(HELLO)
        welcome = await client.next_frame()
        testcase.assertEqual(welcome.kind, FrameType.WELCOME, welcome.message())
        client.transport.write(
            encode_message(
                FrameType.REQUEST,
                {
                    "method": "POST",
                    "path": "/syriusUpload.do",
                    "headers": [["Content-Type", "application/octet-stream"]],
                    "length": size,
                },
            )
        )
        return upload

    def send(self, start: int, end: int | None = None) -> None:
        self.client.transport.write(self.body[start:end])

    def finish(self, start: int) -> None:
        self.send(start)
        self.client.transport.write(encode_message(FrameType.BODY_END, {"sha256": self.sha256}))

    def ended(self) -> bool:
        return self.client.closed.called or any(
            f.kind in (FrameType.RESPONSE_END, FrameType.ERROR) for f in self.client.frames
        )

    def answer(self) -> dict[str, Any]:
        """e-PMSI's JSON answer, relayed as DATA frames."""
        data = b"".join(f.payload for f in self.client.frames if f.kind is FrameType.DATA)
        return json.loads(data)

    def errors(self) -> list[str]:
        return [m["code"] for m in self.client.messages(FrameType.ERROR)]


class DrainProcessTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.port = free_port()

    async def relay(self, *arguments: str) -> RelayProcess:
        return await start_relay_process(
            self, self.port, "--epmsi", self.sandbox.url, "--ca-file", self.sandbox.ca_path, *arguments
        )

    async def test_transfer_in_flight_completes(self) -> None:
        """SIGTERM during an upload: listening stops, idle clients go, the upload arrives whole."""
        relay = await self.relay("--drain-seconds", "30")
        size = 4 * 1024 * 1024
        upload = await RawUpload.start(self, self.port, size, seed=1)
        upload.send(0, size // 2)
        idle = await raw_connect(self, reactor, self.port)
        idle.transport.write(HELLO)
        await idle.next_frame()
        self.assertTrue(
            await poll_until(reactor, lambda: "object-instantiated" in relay.types(), 200, 0.05),
            relay.text(),
        )
        relay.signal(signal.SIGTERM)
        self.assertTrue(
            await poll_until(reactor, lambda: "listening-closed" in relay.types(), 200, 0.05),
            relay.text(),
        )
        # The idle workstation is told at once; the upload is still running.
        await idle.closed
        self.assertEqual([m["code"] for m in idle.messages(FrameType.ERROR)], ["relay-stopping"])
        self.assertFalse(upload.ended())
        self.assertFalse(relay.ended.called)
        upload.finish(size // 2)
        self.assertTrue(await poll_until(reactor, upload.ended, 400, 0.05), relay.text())
        await upload.client.closed
        # The whole answer first; then, the operation over, the connection is closed.
        kinds = [f.kind for f in upload.client.frames]
        self.assertEqual(kinds[-2:], [FrameType.RESPONSE_END, FrameType.ERROR], relay.text())
        self.assertEqual(upload.errors(), ["relay-stopping"])
        self.assertEqual(upload.answer()["files"][0]["sha256"], upload.sha256)
        stored = self.sandbox.complete_files()
        self.assertEqual([self.sandbox.sha256_of(f) for f in stored], [upload.sha256])
        self.assertIn(await relay.ended, [(0, None), (None, signal.SIGTERM)])
        records = relay.records()
        types = [r["type"] for r in records]
        self.assertLess(types.index("listening-closed"), types.index("object-released"))
        [released] = [r for r in records if r["type"] == "object-released"]
        self.assertEqual((released["outcome"], released["integrity"]), ("completed", "ok"))
        opened = {r["connection"] for r in records if r["type"] == "connection-opened"}
        closed = {r["connection"] for r in records if r["type"] == "connection-closed"}
        self.assertEqual(opened, closed)

    async def test_transfer_too_slow_is_aborted(self) -> None:
        """With --drain-seconds 1, an upload stuck halfway is aborted: e-PMSI never gets the file."""
        relay = await self.relay("--drain-seconds", "1")
        size = 1024 * 1024
        upload = await RawUpload.start(self, self.port, size, seed=2)
        upload.send(0, size // 2)  # ...and the workstation goes quiet.
        self.assertTrue(
            await poll_until(reactor, lambda: "object-instantiated" in relay.types(), 200, 0.05),
            relay.text(),
        )
        relay.signal(signal.SIGTERM)
        self.assertTrue(await poll_until(reactor, upload.ended, 300, 0.05), relay.text())
        self.assertEqual(upload.errors(), ["relay-stopping"])
        self.assertIn(await relay.ended, [(0, None), (None, signal.SIGTERM)])
        records = relay.records()
        [closing] = [r for r in records if r["type"] == "listening-closed"]
        [released] = [r for r in records if r["type"] == "object-released"]
        self.assertEqual(released["outcome"], "relay-stopping")
        self.assertNotEqual(released["integrity"], "ok")
        self.assertLess(released["length"], size)
        # It was given its grace period first.
        waited = _seconds(released["time"]) - _seconds(closing["time"])
        self.assertGreaterEqual(waited, 0.9)
        [closed] = [r for r in records if r["type"] == "connection-closed"]
        self.assertEqual(closed["reason"], "relay-stopping")
        # e-PMSI (the sandbox) saw its request cut short and kept nothing.
        await poll_until(reactor, lambda: False, 5, 0.05)
        self.assertEqual(self.sandbox.complete_files(), [])


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()
