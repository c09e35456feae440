"""
A journal that cannot be written (disk full, read-only, its folder gone):
the relay goes on serving and says so once, at critical level, with the
path and the system's error; and once again when writing works again.
"""

from __future__ import annotations

import errno
import os
import shutil
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.journal import writer as journal_module
from epop.workstation.client import send_file
from epop.journal.events import emit
from epop.journal.observer import JournalService
from epop.journal.writer import FileJournalWriter, IJournalWriter, RotatingJournalWriter
from epop.journal.reader import Problem, read_file
from epop.relay.service import RelaySettings, make_relay_service
from tests.support import make_trustme_sandbox, poll_until

FULL = "/dev/full"
MORNING = 1_795_600_800.0  # 2026-11-25T10:00:00Z
DAY = 86400
RUN = "0123456789ab"


def _record(n: int) -> dict[str, Any]:
    return {
        "time": "2026-11-25T10:00:00.000Z",
        "type": "connection-opened",
        "run": "0123456789ab",
        "connection": n,
        "client": "10.1.4.27:51234",
        "description": f"Connection {n} opened from 10.1.4.27:51234",
    }


def _numbers(path: str, problems: list[Problem] | None = None) -> list[int]:
    return [r["connection"] for r in read_file(path, (problems if problems is not None else []).append)]


class _Log:
    """The journal's own messages in the global log, as twistd would show them."""

    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def journal(self) -> list[tuple[LogLevel, str]]:
        return [
            (e["log_level"], formatEvent(e))
            for e in self.events
            if e.get("log_namespace", "").startswith("epop.journal.writer") and formatEvent(e).startswith("journal:")
        ]


class _FullDisk:
    """
    Makes writes to a writer's open file fail with ENOSPC, then succeed
    again.  (Pointing the descriptor at /dev/full would change the file it
    names, which the writer takes for its file moved aside.)
    """

    def __init__(self, testcase: SynchronousTestCase, fd: int) -> None:
        self.fd = fd
        self.full = False
        real_write = os.write

        def write(fd: int, data: Any) -> int:
            if self.full and fd == self.fd:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        testcase.patch(journal_module.os, "write", write)

    def fill(self) -> None:
        self.full = True

    def free(self) -> None:
        self.full = False


class PlainWriterTests(SynchronousTestCase):
    def test_dev_full_is_said_once_at_critical_level(self) -> None:
        """Writing to /dev/full raises nothing; one critical message names the path and ENOSPC, however many lines fail."""
        log = _Log(self)
        writer = FileJournalWriter(FULL)
        self.addCleanup(writer.close)
        for n in range(5):
            writer.write(_record(n))
        self.assertEqual(
            log.journal(),
            [
                (
                    LogLevel.critical,
                    "journal: cannot write to /dev/full: No space left on device; the relay goes on "
                    "without its journal until writing works again",
                )
            ],
        )
        self.assertEqual(os.stat(FULL).st_mode & 0o777, 0o666, "a device's mode is left alone")

    def test_writing_again_is_said_once_and_lines_stay_whole(self) -> None:
        """A disk that fills up then frees: the lines before and after are intact, and both changes are said once."""
        path = os.path.abspath(self.mktemp())
        log = _Log(self)
        writer = FileJournalWriter(path)
        self.addCleanup(writer.close)
        writer.write(_record(1))
        disk = _FullDisk(self, writer._file._fd)
        disk.fill()
        writer.write(_record(2))
        writer.write(_record(3))
        disk.free()
        writer.write(_record(4))
        writer.write(_record(5))
        self.assertEqual(_numbers(path), [1, 4, 5])
        levels = [level for level, _ in log.journal()]
        self.assertEqual(levels, [LogLevel.critical, LogLevel.warn])
        self.assertIn(f"cannot write to {path}: No space left on device", log.journal()[0][1])
        self.assertEqual(
            log.journal()[1][1],
            f"journal: writing to {path} works again; 2 event(s) could not be written and are missing from it",
        )
        disk.fill()
        writer.write(_record(6))
        self.assertEqual(len(log.journal()), 3, "a new outage is said again")

    def test_a_line_cut_by_a_full_disk_does_not_spoil_the_next(self) -> None:
        """If only part of a line went out before the error, the next line starts on a line of its own."""
        path = os.path.abspath(self.mktemp())
        writer = FileJournalWriter(path)
        self.addCleanup(writer.close)
        writer.write(_record(1))
        real_write = os.write
        state = {"calls": 0}

        def filling(fd: int, data: Any) -> int:
            state["calls"] += 1
            if state["calls"] == 1:
                return real_write(fd, bytes(data)[:20])
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(journal_module.os, "write", filling)
        writer.write(_record(2))
        self.patch(journal_module.os, "write", real_write)
        writer.write(_record(3))
        problems: list[Problem] = []
        self.assertEqual(_numbers(path, problems), [1, 3])
        self.assertEqual(problems, [Problem(path, 2)])


    def test_folder_deleted_then_back(self) -> None:
        """The journal's folder deleted: the next line is missed with one critical message; the folder back, the file is created again with the new lines, and the gap is said once."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "j.jsonl")
        log = _Log(self)
        writer = FileJournalWriter(path)
        self.addCleanup(writer.close)
        writer.write(_record(1))
        shutil.rmtree(folder)
        writer.write(_record(2))
        writer.write(_record(3))
        self.assertEqual(
            log.journal(),
            [
                (
                    LogLevel.critical,
                    f"journal: cannot write to {path}: No such file or directory; the relay goes on "
                    "without its journal until writing works again",
                )
            ],
        )
        os.makedirs(folder)
        writer.write(_record(4))
        writer.write(_record(5))
        self.assertEqual(_numbers(path), [4, 5])
        self.assertEqual(
            log.journal()[1:],
            [
                (
                    LogLevel.warn,
                    f"journal: writing to {path} works again; 2 event(s) could not be written and are missing from it",
                )
            ],
        )
        reopened = [formatEvent(e) for e in log.events if "moved or deleted" in e.get("log_format", "")]
        self.assertEqual(
            reopened, [f"Journal {path} moved or deleted while the relay had it open: opening it again, created if need be"]
        )

    def test_file_moved_aside_or_deleted_is_created_again(self) -> None:
        """A journal moved aside (logrotate without copytruncate) or deleted: the next line goes to a new file at the path, the moved one keeps its lines."""
        path = os.path.abspath(self.mktemp())
        log = _Log(self)
        writer = FileJournalWriter(path)
        self.addCleanup(writer.close)
        writer.write(_record(1))
        os.rename(path, path + ".old")
        writer.write(_record(2))
        self.assertEqual((_numbers(path + ".old"), _numbers(path)), ([1], [2]))
        os.remove(path)
        writer.write(_record(3))
        self.assertEqual(_numbers(path), [3])
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o640)
        self.assertEqual(log.journal(), [], "no line was missed")

    def test_a_device_is_not_taken_for_a_moved_file(self) -> None:
        """A journal on a device (/dev/null) is the same file at every line: it is not opened again."""
        log = _Log(self)
        writer = FileJournalWriter(os.devnull)
        self.addCleanup(writer.close)
        opened = writer._file
        writer.write(_record(1))
        writer.write(_record(2))
        self.assertIs(writer._file, opened)
        self.assertEqual([e for e in log.events if "moved or deleted" in e.get("log_format", "")], [])


class RotatingWriterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.path = os.path.join(self.folder, "epop-journal.jsonl")
        self.clock = Clock()
        self.clock.advance(MORNING)
        self.log = _Log(self)

    def writer(self, rotate: str) -> RotatingJournalWriter:
        writer = RotatingJournalWriter(self.path, rotate, 3, self.clock)
        self.addCleanup(writer.close)
        return writer

    def test_full_disk_then_free(self) -> None:
        """The rotating writer too: no exception, one critical message, one when it works again."""
        writer = self.writer("daily")
        writer.write(_record(1))
        assert writer._file is not None
        disk = _FullDisk(self, writer._file._fd)
        disk.fill()
        for n in range(2, 6):
            writer.write(_record(n))
        disk.free()
        writer.write(_record(6))
        self.assertEqual(_numbers(self.path), [1, 6])
        self.assertEqual([level for level, _ in self.log.journal()], [LogLevel.critical, LogLevel.warn])
        self.assertIn("4 event(s) could not be written", self.log.journal()[1][1])

    def test_folder_gone_between_rotations_then_back(self) -> None:
        """The folder disappears (a disk unmounted): the file cannot be created again, said once; no rotation is tried without a file; the folder back, writing resumes in a new file."""
        writer = self.writer("300")
        writer.write(_record(1))
        shutil.rmtree(self.folder)
        for n in range(2, 8):
            writer.write(_record(n))
        self.assertEqual(
            [level for level, _ in self.log.journal()], [LogLevel.critical]
        )
        self.assertIn(f"journal: cannot write to {self.path}: No such file or directory", self.log.journal()[0][1])
        rotation_warnings = [e for e in self.log.events if "Could not rotate" in e.get("log_format", "")]
        self.assertEqual(rotation_warnings, [])
        os.makedirs(self.folder)
        writer.write(_record(8))
        writer.write(_record(9))
        writer.write(_record(10))
        # 8 started a new file; two lines would make one larger than 300 bytes.
        self.assertEqual(
            [_numbers(self.path + ".2"), _numbers(self.path + ".1"), _numbers(self.path)], [[8], [9], [10]]
        )
        self.assertEqual([level for level, _ in self.log.journal()], [LogLevel.critical, LogLevel.warn])
        self.assertIn("6 event(s) could not be written", self.log.journal()[1][1])

    def test_file_deleted_between_rotations_is_created_again(self) -> None:
        """Between rotations too, a journal deleted by hand is created again at the next line, with no critical message."""
        writer = self.writer("daily")
        writer.write(_record(1))
        os.remove(self.path)
        writer.write(_record(2))
        self.assertEqual(_numbers(self.path), [2])
        self.assertEqual(self.log.journal(), [])
        reopened = [e for e in self.log.events if "moved or deleted" in e.get("log_format", "")]
        self.assertEqual(len(reopened), 1)

    def test_daily_rotation_failing_is_tried_once_a_day(self) -> None:
        """A rotation that fails is not tried again at every line, and the day's lines are kept."""
        writer = self.writer("daily")
        writer.write(_record(1))
        self.clock.advance(DAY)
        calls: list[str] = []

        def refuse(source: str, target: str) -> None:
            calls.append(target)
            raise OSError(errno.EROFS, "Read-only file system")

        self.patch(journal_module.os, "rename", refuse)
        writer.write(_record(2))
        writer.write(_record(3))
        self.assertEqual(len(calls), 1)
        self.assertEqual(_numbers(self.path), [1, 2, 3])


class ServiceStartTests(SynchronousTestCase):
    def test_a_journal_that_cannot_be_opened_does_not_stop_the_start(self) -> None:
        """A directory where the file should be: the service starts, says it once, and journals once the path is free."""
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        log = _Log(self)
        service = JournalService(RUN, lambda: FileJournalWriter(path), Clock())
        service.startService()
        self.addCleanup(service.stopService)
        logger = Logger()
        for n in range(3):
            emit(logger, RUN, "connection-opened", "Connection {connection} opened", connection=n)
        self.assertEqual(
            log.journal(),
            [(LogLevel.critical, f"journal: cannot write to {path}: Is a directory; the relay goes on without its journal until writing works again")],
        )
        os.rmdir(path)
        emit(logger, RUN, "connection-opened", "Connection {connection} opened", connection=3)
        emit(logger, RUN, "connection-opened", "Connection {connection} opened", connection=4)
        self.assertEqual(_numbers(path), [3, 4])
        self.assertEqual(
            log.journal()[1],
            (LogLevel.warn, f"journal: writing to {path} works again; 3 event(s) could not be written and are missing from it"),
        )


class _Recording:
    """Wraps a writer; counts the records it was given."""

    def __init__(self, writer: IJournalWriter) -> None:
        self.writer = writer
        self.given: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.given.append(record)
        self.writer.write(record)

    def close(self) -> None:
        self.writer.close()


class RelayWithoutJournalTests(TestCase):
    """A real relay on loopback, relaying uploads to the sandbox while its journal cannot be written."""

    timeout = 60

    def start(self, open_writer: Any) -> tuple[Any, Any]:
        sandbox = make_trustme_sandbox(self, reactor)
        settings = RelaySettings(
            listen=("tcp:0:interface=127.0.0.1",),
            epmsi=sandbox.url,
            ca_file=sandbox.ca_path,
            check_at_start=False,
        )
        service = make_relay_service(reactor, settings, journal_writer=open_writer)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return service, sandbox

    async def upload(self, service: Any, seed: int) -> int:
        from epop.workstation.client import RelayAddress

        port = service.listeners[0].port.getHost().port
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(os.urandom(64 * 1024) + bytes([seed]))
        reply = await send_file(reactor, path, to="/syriusUpload.do", relay=RelayAddress("127.0.0.1", port))
        return reply.status

    async def test_uploads_go_on_with_the_journal_on_a_full_disk(self) -> None:
        """Journal on /dev/full: uploads are relayed whole, and the twistd log says it once, at critical level."""
        log = _Log(self)
        recording = _Recording(FileJournalWriter(FULL))
        service, sandbox = self.start(lambda: recording)
        self.assertEqual(await self.upload(service, 1), 200)
        self.assertEqual(await self.upload(service, 2), 200)
        self.assertEqual(len(sandbox.complete_files()), 2)
        self.assertTrue(await poll_until(reactor, lambda: [r["type"] for r in recording.given].count("connection-closed") == 2))
        self.assertGreater(len(recording.given), 8)
        self.assertEqual(
            [level for level, _ in log.journal()], [LogLevel.critical], log.journal()
        )
        self.assertIn("journal: cannot write to /dev/full: No space left on device", log.journal()[0][1])

    async def test_journal_folder_deleted_then_made_again(self) -> None:
        """A relay whose journal folder is deleted: uploads go on, said once at critical level; the folder made again, the journal is created again with the new events, and that is said."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "j.jsonl")
        log = _Log(self)
        service, sandbox = self.start(lambda: FileJournalWriter(path))
        self.assertEqual(await self.upload(service, 1), 200)
        shutil.rmtree(folder)
        self.assertEqual(await self.upload(service, 2), 200)
        self.assertTrue(await poll_until(reactor, lambda: len(log.journal()) == 1))
        self.assertEqual(log.journal()[0][0], LogLevel.critical)
        self.assertIn(f"cannot write to {path}: No such file or directory", log.journal()[0][1])
        os.makedirs(folder)
        self.assertEqual(await self.upload(service, 3), 200)
        self.assertTrue(await poll_until(reactor, lambda: len(log.journal()) == 2))
        self.assertEqual(log.journal()[1][0], LogLevel.warn)
        self.assertTrue(
            await poll_until(reactor, lambda: os.path.exists(path) and "connection-closed" in [r["type"] for r in read_file(path)])
        )
        self.assertEqual(len(sandbox.complete_files()), 3)

    async def test_uploads_go_on_while_the_rotating_journal_folder_is_gone(self) -> None:
        """Rotating journal whose folder vanishes: uploads go on; once it is back, the journal resumes and says so."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "journal.jsonl")
        log = _Log(self)
        service, sandbox = self.start(lambda: RotatingJournalWriter(path, "2K", 3, reactor))
        shutil.rmtree(folder)
        self.assertEqual(await self.upload(service, 1), 200)
        self.assertEqual(await self.upload(service, 2), 200)
        self.assertEqual(len(sandbox.complete_files()), 2)
        self.assertTrue(await poll_until(reactor, lambda: len(log.journal()) == 1))
        self.assertEqual(log.journal()[0][0], LogLevel.critical)
        os.makedirs(folder)
        self.assertEqual(await self.upload(service, 3), 200)
        self.assertTrue(await poll_until(reactor, lambda: len(log.journal()) == 2))
        self.assertEqual(log.journal()[1][0], LogLevel.warn)
        self.assertTrue(
            await poll_until(reactor, lambda: os.path.exists(path) and "connection-closed" in [r["type"] for r in read_file(path)])
        )
