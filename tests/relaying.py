"""
Test helpers for running a real relay on loopback and talking raw e-POP to it.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from epop.workstation.client import RelayAddress
from epop.testing import MemoryJournalWriter
from epop.relay.service import RelayService, RelaySettings, make_relay_service
from epop.wire import PROTOCOL_NAME, Frame, FrameReader, FrameType, encode_message


class FileJournal:
    """The complete lines of a relay's journal file, read afresh each time."""

    def __init__(self, path: str) -> None:
        self.path = path

    @property
    def records(self) -> list[dict[str, Any]]:
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.endswith("\n")]


class RunningRelay:
    """A relay service started for one test, with its journal in memory (or a file)."""

    def __init__(self, service: RelayService, journal: MemoryJournalWriter | FileJournal) -> None:
        self.service = service
        self.journal = journal

    @property
    def port(self) -> int:
        port = self.service.listeners[0].port
        assert port is not None
        return port.getHost().port

    @property
    def endpoint(self) -> RelayAddress:
        return RelayAddress("127.0.0.1", self.port)

    def types(self) -> list[str]:
        return [record["type"] for record in self.journal.records]

    def records(self, event_type: str) -> list[dict[str, Any]]:
        return [r for r in self.journal.records if r["type"] == event_type]


def start_relay(
    testcase: TestCase,
    reactor: Any,
    epmsi: str,
    ca_file: str | None,
    *,
    file_journal: bool = False,
    language: str = "en",
    **settings: Any,
) -> RunningRelay:
    """
    Start a relay on 127.0.0.1, port 0, stopped by the test's cleanup.  With
    C{file_journal}, it journals to C{settings["journal"]} as twistd's would;
    it logs for people in C{language}.
    """
    writer = MemoryJournalWriter()
    options: dict[str, Any] = {
        "listen": ("tcp:0:interface=127.0.0.1",),
        "epmsi": epmsi,
        "ca_file": ca_file,
        "check_at_start": False,
    }
    options.update(settings)
    if file_journal:
        service = make_relay_service(reactor, RelaySettings(**options), language=language)
    else:
        service = make_relay_service(
            reactor, RelaySettings(**options), journal_writer=lambda: writer, language=language
        )
    service.privilegedStartService()
    service.startService()
    testcase.addCleanup(service.stopService)
    return RunningRelay(service, FileJournal(options["journal"]) if file_journal else writer)


class RawClient(Protocol):
    """Sends whatever bytes a test wants and records the frames it gets back."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.closed: Deferred[None] = Deferred()
        self.got_frame: Deferred[Frame] | None = None
        self._reader = FrameReader()

    def dataReceived(self, data: bytes) -> None:
        for frame in self._reader.feed(data):
            assert isinstance(frame, Frame)
            self.frames.append(frame)
            waiting, self.got_frame = self.got_frame, None
            if waiting is not None:
                waiting.callback(frame)

    def next_frame(self) -> Deferred[Frame]:
        self.got_frame = Deferred()
        return self.got_frame

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(None)

    def messages(self, kind: FrameType) -> list[dict[str, Any]]:
        return [f.message() for f in self.frames if f.kind is kind]


HELLO = encode_message(FrameType.HELLO, {"protocol": PROTOCOL_NAME, "versions": [1]})


async def raw_connect(testcase: TestCase, reactor: Any, port: int) -> RawClient:
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawClient())
    testcase.addCleanup(lambda: client.transport.abortConnection())
    return client


class _Collect(Protocol):
    """Sends some bytes, and keeps every byte received until the connection closes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        if self.data:
            self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(self.received)


async def exchange(reactor: Any, port: int, data: bytes) -> bytes:
    """Send C{data} to the relay (HTTP, say) and return all it answers until it closes."""
    protocol = _Collect(data)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    return await protocol.done
