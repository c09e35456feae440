"""
The journal as files on disk: rotation by day or size, retention, lines
that survive a crash, the twistd options that choose them, and a real relay
(through an authenticating proxy) whose journal file keeps no secret and has
exactly the documented fields.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from datetime import datetime, timezone
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.journal import writer as journal_module

from epop.relay import tap
from epop.workstation.client import send_file
from epop.journal.writer import (
    DAILY,
    FileJournalWriter,
    RotatingJournalWriter,
    parse_rotate,
    rotated_files,
)
from epop.journal.reader import Problem, read_file, read_journal
from epop.epmsi.proxy import ProxyConfig
from epop.journal.process import process_start
from epop.relay.service import RelaySettings, make_relay_service
from tests.relaying import start_relay
from tests.support import make_trustme_sandbox, poll_until

DAY = 86400
#: 2026-11-25T10:00:00Z
MORNING = datetime(2026, 11, 25, 10, tzinfo=timezone.utc).timestamp()


def _record(n: int, pad: int = 0) -> dict[str, Any]:
    return {
        "time": "2026-11-25T10:00:00.000Z",
        "type": "connection-opened",
        "run": "0123456789ab",
        "connection": n,
        "client": "10.1.4.27:51234",
        "description": "x" * pad,
    }


def _numbers(path: str) -> list[int]:
    return [r["connection"] for r in read_file(path)]


class RotateOptionTests(SynchronousTestCase):
    def test_parse_rotate(self) -> None:
        """--journal-rotate takes 'daily', a K/M/G size (powers of 1024) or bytes, and nothing else."""
        self.assertEqual(parse_rotate("daily"), DAILY)
        self.assertEqual(parse_rotate("DAILY"), DAILY)
        self.assertEqual(parse_rotate("500K"), 500 * 1024)
        self.assertEqual(parse_rotate("100M"), 100 * 1024**2)
        self.assertEqual(parse_rotate("1g"), 1024**3)
        self.assertEqual(parse_rotate("4096"), 4096)
        for bad in ("", "0", "0M", "-1", "1.5M", "10X", "weekly", "M"):
            self.assertRaises(ValueError, parse_rotate, bad)

    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(["--journal", self.mktemp(), *args])
        return options

    def test_twistd_options(self) -> None:
        """--journal-rotate and --journal-keep reach RelaySettings; by default no rotation, 30 kept."""
        settings = self.parse().settings()
        self.assertIsNone(settings.journal_rotate)
        self.assertEqual(settings.journal_keep, 30)
        settings = self.parse("--journal-rotate", "100M", "--journal-keep", "5").settings()
        self.assertEqual((settings.journal_rotate, settings.journal_keep), ("100M", 5))
        settings = self.parse("--journal-rotate", "daily", "--journal-keep", "0").settings()
        self.assertEqual((settings.journal_rotate, settings.journal_keep), ("daily", 0))

    def test_twistd_option_errors_name_the_option(self) -> None:
        """A bad rotation or number to keep is a usage error that names its option."""
        error = self.assertRaises(usage.UsageError, self.parse, "--journal-rotate", "weekly")
        self.assertIn("--journal-rotate", str(error))
        for keep in ("-1", "many"):
            error = self.assertRaises(usage.UsageError, self.parse, "--journal-keep", keep)
            self.assertIn("--journal-keep", str(error))

    def test_relay_service_builds_the_rotating_writer(self) -> None:
        """make_relay_service journals through a RotatingJournalWriter when rotation is set, and rejects a bad one."""
        path = self.mktemp()
        settings = RelaySettings(journal=path, journal_rotate="1K", journal_keep=2, listen=())
        service = make_relay_service(Clock(), settings)
        writer = service.getServiceNamed("journal")._open_writer()
        self.addCleanup(writer.close)
        self.assertIsInstance(writer, RotatingJournalWriter)
        self.assertEqual((writer.rotate, writer.keep), (1024, 2))
        plain = make_relay_service(Clock(), RelaySettings(journal=path, listen=()))
        other = plain.getServiceNamed("journal")._open_writer()
        self.addCleanup(other.close)
        self.assertIsInstance(other, FileJournalWriter)
        self.assertRaises(
            ValueError, lambda: make_relay_service(Clock(), RelaySettings(journal_rotate="weekly", listen=()))
        )


class RotationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.path = os.path.join(self.folder, "epop-journal.jsonl")
        self.clock = Clock()
        self.clock.advance(MORNING)

    def writer(self, rotate: str, keep: int = 30) -> RotatingJournalWriter:
        writer = RotatingJournalWriter(self.path, rotate, keep, self.clock)
        self.addCleanup(writer.close)
        return writer

    def names(self) -> list[str]:
        return sorted(os.listdir(self.folder))

    def test_negative_keep_refused(self) -> None:
        """A writer told to keep fewer than 0 files refuses, before it deletes any."""
        error = self.assertRaises(ValueError, RotatingJournalWriter, self.path, "daily", -1, self.clock)
        self.assertEqual(str(error), "expected a whole number of rotated files, not -1 (0: keep all)")
        self.assertEqual(self.names(), [])

    def test_daily_rotation_names_the_day(self) -> None:
        """At the first event of a new UTC day, yesterday's file becomes PATH.YYYY-MM-DD."""
        writer = self.writer("daily")
        writer.write(_record(1))
        self.clock.advance(13 * 3600)  # 23:00 the same day: no rotation
        writer.write(_record(2))
        self.assertEqual(self.names(), ["epop-journal.jsonl"])
        self.clock.advance(3600)  # 00:00 on the 26th
        writer.write(_record(3))
        self.assertEqual(self.names(), ["epop-journal.jsonl", "epop-journal.jsonl.2026-11-25"])
        self.assertEqual(_numbers(self.path + ".2026-11-25"), [1, 2])
        self.assertEqual(_numbers(self.path), [3])
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o640)

    def test_daily_name_taken_gets_a_number(self) -> None:
        """If PATH.DAY already exists, the rotated file is PATH.DAY.1, then .2."""
        open(self.path + ".2026-11-25", "w").close()
        open(self.path + ".2026-11-25.1", "w").close()
        writer = self.writer("daily")
        writer.write(_record(1))
        self.clock.advance(DAY)
        writer.write(_record(2))
        self.assertEqual(_numbers(self.path + ".2026-11-25.2"), [1])
        self.assertEqual(
            rotated_files(self.path),
            [self.path + suffix for suffix in (".2026-11-25", ".2026-11-25.1", ".2026-11-25.2")],
        )

    def test_daily_quiet_days_do_not_rotate_an_empty_file(self) -> None:
        """Days without events leave no empty rotated files behind."""
        writer = self.writer("daily")
        writer.write(_record(1))
        self.clock.advance(3 * DAY)
        writer.write(_record(2))
        self.clock.advance(DAY)
        writer.write(_record(3))
        self.assertEqual(
            self.names(),
            ["epop-journal.jsonl", "epop-journal.jsonl.2026-11-25", "epop-journal.jsonl.2026-11-28"],
        )

    def test_daily_retention(self) -> None:
        """With keep N, only the N most recent days are kept; 0 keeps them all."""
        writer = self.writer("daily", keep=2)
        for n in range(5):
            writer.write(_record(n))
            self.clock.advance(DAY)
        writer.write(_record(5))
        self.assertEqual(rotated_files(self.path), [self.path + ".2026-11-28", self.path + ".2026-11-29"])
        everything = read_journal(self.path, since=datetime(2000, 1, 1, tzinfo=timezone.utc))
        self.assertEqual([r["connection"] for r in everything], [3, 4, 5])

    def test_daily_keep_zero_keeps_all(self) -> None:
        """--journal-keep 0 never deletes a rotated file."""
        writer = self.writer("daily", keep=0)
        for n in range(40):
            writer.write(_record(n))
            self.clock.advance(DAY)
        writer.write(_record(40))
        self.assertEqual(len(rotated_files(self.path)), 40)

    def test_existing_file_of_an_earlier_day(self) -> None:
        """A journal left by yesterday's run is rotated under yesterday's name at the first event today."""
        with open(self.path, "wb") as f:
            f.write(json.dumps(_record(1)).encode() + b"\n")
        yesterday = MORNING - DAY
        os.utime(self.path, (yesterday, yesterday))
        writer = self.writer("daily")
        writer.write(_record(2))
        self.assertEqual(_numbers(self.path + ".2026-11-24"), [1])
        self.assertEqual(_numbers(self.path), [2])

    def test_size_rotation_shifts_numbers(self) -> None:
        """By size: PATH.1 is the newest rotated file, the oldest beyond keep are deleted, and no file exceeds the size."""
        line = len(json.dumps(_record(100), separators=(",", ":")).encode()) + 1
        writer = self.writer(str(3 * line), keep=3)
        for n in range(100, 120):
            writer.write(_record(n))
        self.assertEqual(
            self.names(),
            ["epop-journal.jsonl", *(f"epop-journal.jsonl.{i}" for i in (1, 2, 3))],
        )
        self.assertEqual(_numbers(self.path + ".3"), [109, 110, 111])
        self.assertEqual(_numbers(self.path + ".2"), [112, 113, 114])
        self.assertEqual(_numbers(self.path + ".1"), [115, 116, 117])
        self.assertEqual(_numbers(self.path), [118, 119])
        for name in self.names():
            self.assertLessEqual(os.path.getsize(os.path.join(self.folder, name)), 3 * line)
        self.assertEqual(rotated_files(self.path), [self.path + ".3", self.path + ".2", self.path + ".1"])

    def test_size_keep_zero_and_a_line_larger_than_the_size(self) -> None:
        """keep 0 keeps every size-rotated file; a line longer than the size still gets written, alone."""
        writer = self.writer("100", keep=0)
        for n in range(5):
            writer.write(_record(n, pad=200))
        self.assertEqual(len(rotated_files(self.path)), 4)
        self.assertEqual(_numbers(self.path + ".4"), [0])
        self.assertEqual(_numbers(self.path), [4])

    def test_a_failed_rotation_keeps_journaling(self) -> None:
        """If the file cannot be moved aside, the relay logs it and writes on in the same file."""
        writer = self.writer("daily")
        writer.write(_record(1))
        self.clock.advance(DAY)

        def refuse(source: str, target: str) -> None:
            raise PermissionError(13, "Permission denied")

        self.patch(journal_module.os, "rename", refuse)
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        writer.write(_record(2))
        self.assertEqual(_numbers(self.path), [1, 2])
        self.assertTrue(any("Could not rotate" in e.get("log_format", "") for e in events))


class CrashSafetyTests(SynchronousTestCase):
    def test_one_write_per_line(self) -> None:
        """Each record reaches the file with one write() of the whole line and its newline, unbuffered."""
        path = self.mktemp()
        calls: list[bytes] = []
        real_write = os.write

        def counting(fd: int, data: Any) -> int:
            calls.append(bytes(data))
            return real_write(fd, data)

        self.patch(journal_module.os, "write", counting)
        writer = FileJournalWriter(path)
        self.addCleanup(writer.close)
        writer.write(_record(1))
        writer.write(_record(2, pad=100_000))
        self.assertEqual(len(calls), 2)
        self.assertTrue(all(call.endswith(b"\n") and call.count(b"\n") == 1 for call in calls))
        # Readable by another process at once: nothing waits in a buffer.
        self.assertEqual(_numbers(path), [1, 2])

    def test_short_writes_are_completed(self) -> None:
        """A write() that takes only part of the line is continued, so no line is cut."""
        path = self.mktemp()
        real_write = os.write
        self.patch(journal_module.os, "write", lambda fd, data: real_write(fd, bytes(data)[:7]))
        writer = FileJournalWriter(path)
        self.addCleanup(writer.close)
        writer.write(_record(1))
        self.assertEqual(_numbers(path), [1])

    def test_torn_line_left_by_a_crash(self) -> None:
        """After a crash mid-line, the next run ends the torn line: new records stay readable, the torn one is reported."""
        path = self.mktemp()
        whole = json.dumps(_record(1)).encode() + b"\n"
        with open(path, "wb") as f:
            f.write(whole + whole[:40])
        problems: list[Problem] = []
        self.assertEqual([r["connection"] for r in read_file(path, problems.append)], [1])
        self.assertEqual(problems, [], "a torn last line is skipped silently")
        writer = FileJournalWriter(path)
        writer.write(_record(2))
        writer.close()
        self.assertEqual([r["connection"] for r in read_file(path, problems.append)], [1, 2])
        self.assertEqual(problems, [Problem(path, 2)])


class _Splice(Protocol):
    def __init__(self, other: Protocol) -> None:
        self.other = other

    def dataReceived(self, data: bytes) -> None:
        self.other.transport.write(data)

    def connectionLost(self, reason: Failure) -> None:
        self.other.transport.loseConnection()


class _ConnectProxy(Protocol):
    """
    A minimal HTTP proxy: one C{CONNECT} with the right Basic credentials,
    then bytes spliced both ways; anything else gets 407 or 405.
    """

    def __init__(self, expected: bytes, heads: list[bytes]) -> None:
        self._expected = expected
        self._heads = heads
        self._buffer = b""
        self._target: Protocol | None = None
        self._tunnelled = False

    def dataReceived(self, data: bytes) -> None:
        if self._tunnelled:
            assert self._target is not None
            self._target.transport.write(data)
            return
        self._buffer += data
        if self._target is not None or b"\r\n\r\n" not in self._buffer:
            return
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        self._heads.append(head)
        lines = head.split(b"\r\n")
        method, authority, _ = lines[0].split(b" ", 2)
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(b":") for line in lines[1:])
        }
        if method != b"CONNECT":
            self.transport.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            self.transport.loseConnection()
            return
        if headers.get(b"proxy-authorization") != self._expected:
            self.transport.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
            )
            self.transport.loseConnection()
            return
        host, _, port = authority.rpartition(b":")
        self.transport.pauseProducing()
        self._target = _Splice(self)
        d = connectProtocol(
            TCP4ClientEndpoint(reactor, host.decode(), int(port)), self._target
        )
        d.addCallbacks(self._connected, lambda _: self.transport.loseConnection())

    def _connected(self, target: Protocol) -> None:
        self._tunnelled = True
        self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if self._buffer:
            target.transport.write(self._buffer)
            self._buffer = b""
        self.transport.resumeProducing()

    def connectionLost(self, reason: Failure) -> None:
        if self._target is not None and self._target.transport is not None:
            self._target.transport.loseConnection()


SECRET = "Zq7-s3cr3t-Pa55w0rd-e-PMSI"
FRAGMENTS = [SECRET[i : i + 8] for i in range(0, len(SECRET) - 7)]


class RelayJournalFileTests(TestCase):
    """A real relay on loopback, reaching the sandbox through a proxy, journaling to a file."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.heads: list[bytes] = []
        expected = b"Basic " + base64.b64encode(f"dim-proxy:{SECRET}".encode())
        factory = Factory.forProtocol(lambda: _ConnectProxy(expected, self.heads))
        self.proxy_port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.proxy_port.stopListening)
        self.journal = os.path.abspath(self.mktemp())
        self.relay = start_relay(
            self,
            reactor,
            self.sandbox.url,
            self.sandbox.ca_path,
            file_journal=True,
            journal=self.journal,
            proxy=ProxyConfig("127.0.0.1", self.proxy_port.getHost().port, "dim-proxy", SECRET),
        )
        self.upload = self.mktemp()
        with open(self.upload, "w") as f:
            f.write(f"RSS line 1 password={SECRET}\n" * 20)

    async def send_one(self) -> list[dict[str, Any]]:
        reply = await send_file(
            reactor,
            self.upload,
            to="/syriusUpload.do?userPwd=" + SECRET,
            field="theFile",
            fields=[("userPwd", SECRET), ("userId", "dim")],
            relay=self.relay.endpoint,
        )
        self.assertEqual(reply.status, 200)
        self.assertTrue(await poll_until(reactor, lambda: "connection-closed" in self.relay.types()))
        return self.relay.journal.records

    async def test_no_secret_in_the_journal_file(self) -> None:
        """The proxy password, a password form field, a query string and the file body never reach the journal file."""
        records = await self.send_one()
        self.assertTrue(self.heads, "the upload went through the authenticating proxy")
        self.assertIn(SECRET.encode(), base64.b64decode(self.heads[0].split(b"Basic ")[1].split(b"\r\n")[0]))
        [stored] = self.sandbox.complete_files()
        self.assertIn(SECRET.encode(), stored.getContent(), "the secret did travel")
        with open(self.journal, "rb") as f:
            content = f.read()
        for fragment in [SECRET, *FRAGMENTS, base64.b64encode(SECRET.encode()).decode()]:
            self.assertNotIn(fragment.encode(), content)
        self.assertNotIn(b"userPwd", content)
        self.assertNotIn(b"dim-proxy", content)
        self.assertEqual(
            [r["type"] for r in records],
            ["listening-opened", "connection-opened", "object-instantiated", "object-released", "connection-closed"],
        )
        self.assertEqual(records[3]["outcome"], "completed")
        self.assertEqual(records[3]["path"], "/syriusUpload.do")

    async def test_fields_of_each_event_type(self) -> None:
        """One transfer journals, in order, exactly the documented keys of each type, with their values."""
        records = await self.send_one()
        common = ["time", "type", "run"]
        run = records[0]["run"]
        self.assertRegex(run, r"^[0-9a-f]{12}$")
        port = self.relay.port
        expected_keys = {
            "listening-opened": [*common, "address", "port", "host", "pid", "process_start", "description"],
            "connection-opened": [*common, "connection", "client", "description"],
            "object-instantiated": [*common, "connection", "client", "kind", "method", "path", "length", "description"],
            "object-released": [
                *common, "connection", "client", "kind", "method", "path", "length",
                "integrity", "status", "outcome", "duration", "description",
            ],
            "connection-closed": [
                *common, "connection", "client", "duration", "bytes_in", "bytes_out", "reason", "description",
            ],
        }
        for record in records:
            self.assertEqual(list(record), expected_keys[record["type"]], record["type"])
            self.assertEqual(record["run"], run)
            self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        listening, opened, instantiated, released, closed = records
        self.assertEqual(listening["address"], f"127.0.0.1:{port}")
        self.assertEqual(listening["port"], port)
        self.assertEqual((listening["host"], listening["pid"]), (socket.gethostname(), os.getpid()))
        self.assertEqual(listening["process_start"], process_start(os.getpid()))
        self.assertEqual(
            listening["description"],
            f"e-POP relay listening on 127.0.0.1:{port} (endpoint tcp:0:interface=127.0.0.1); "
            "workstations use this address and port",
        )
        client = opened["client"]
        self.assertRegex(client, r"^127\.0\.0\.1:\d+$")
        self.assertEqual(opened["connection"], 1)
        self.assertEqual(opened["description"], f"Connection 1 opened from {client}")
        size = os.path.getsize(self.upload)
        self.assertEqual(
            {k: instantiated[k] for k in ("connection", "client", "kind", "method", "path")},
            {"connection": 1, "client": client, "kind": "upload", "method": "POST", "path": "/syriusUpload.do"},
        )
        self.assertGreater(instantiated["length"], size)
        self.assertEqual(
            instantiated["description"],
            f"Object instantiated: upload POST /syriusUpload.do ({instantiated['length']} bytes)",
        )
        self.assertEqual(
            {k: released[k] for k in ("connection", "client", "kind", "method", "path", "length", "integrity", "status", "outcome")},
            {
                "connection": 1, "client": client, "kind": "upload", "method": "POST",
                "path": "/syriusUpload.do", "length": instantiated["length"], "integrity": "ok",
                "status": 200, "outcome": "completed",
            },
        )
        self.assertIsInstance(released["duration"], float)
        self.assertEqual(released["description"], "Object released: upload POST /syriusUpload.do: completed")
        self.assertEqual(
            {k: closed[k] for k in ("connection", "client", "reason")},
            {"connection": 1, "client": client, "reason": "closed-by-client"},
        )
        self.assertGreater(closed["bytes_in"], instantiated["length"])
        self.assertGreater(closed["bytes_out"], 0)
        self.assertGreaterEqual(closed["duration"], released["duration"])
        self.assertEqual(closed["description"], f"Connection 1 from {client} closed: closed-by-client")
