"""
What the journal's readers refuse or cut short: a path that is not a
regular file (a device that never ends, a FIFO that would block, a
directory), and a line longer than L{MAX_LINE}, skipped in bounded chunks
so that memory stays small whatever the file holds.
"""

from __future__ import annotations

import io
import os
import tracemalloc
from datetime import datetime, timezone
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from epop import cli
from epop.journal.writer import encode_record
from epop.journal.reader import (
    MAX_LINE,
    JournalFollower,
    NotAJournalFile,
    Problem,
    open_journal,
    read_file,
    read_journal,
)
from tests.support import ShutdownClock

RUN = "3c1c3f5238c2"
NOW = datetime(2026, 11, 25, 12, tzinfo=timezone.utc).timestamp()


def _record(number: int) -> dict[str, Any]:
    return {
        "time": "2026-11-25T12:00:00.000Z",
        "type": "connection-opened",
        "run": RUN,
        "connection": number,
        "client": "10.1.4.27:51234",
        "description": f"Connection {number} opened from 10.1.4.27:51234",
    }


def _line(number: int) -> bytes:
    return encode_record(_record(number))


class NotAFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.fifo = os.path.join(self.folder, "fifo")
        os.mkfifo(self.fifo)
        self.environ = {"EPOP_CONFIG": os.path.join(self.folder, "config")}

    def run_epop(self, *argv: str) -> tuple[int, str, str]:
        fake = ShutdownClock()
        fake.advance(NOW)
        stdout, stderr = io.BytesIO(), io.StringIO()
        d = cli.run(fake, list(argv), stdout=stdout, stderr=stderr, environ=self.environ)
        self.assertEqual(fake.triggers, [], "nothing left running")
        self.assertEqual(fake.getDelayedCalls(), [])
        return self.successResultOf(d), stdout.getvalue().decode(), stderr.getvalue()

    def test_reader_refuses_what_is_not_a_regular_file(self) -> None:
        """A device, a FIFO (not waited on) and a directory are refused at once, whether read or read as records."""
        for path in ("/dev/full", "/dev/zero", "/dev/null", self.fifo, self.folder):
            with self.assertRaises(NotAJournalFile) as caught:
                open_journal(path)
            self.assertEqual(caught.exception.filename, path)
            self.assertRaises(NotAJournalFile, list, read_file(path))
            self.assertRaises(NotAJournalFile, list, read_journal(path))

    def test_commands_refuse_a_device_a_fifo_or_a_directory(self) -> None:
        """`epop journal`, `epop journal --follow` and `epop connections` on /dev/full, /dev/zero, a FIFO or a directory exit 1 with a clear message, in both languages."""
        for path in ("/dev/full", "/dev/zero", self.fifo, self.folder):
            for command in (["journal"], ["journal", "--follow"], ["journal", "--follow", "--since", "1h"], ["connections"]):
                code, out, err = self.run_epop("--lang", "en", *command, path)
                self.assertEqual(
                    (code, out, err),
                    (1, "", f"Cannot read {path}: not a regular file (a relay's journal is the file named by its --journal).\n"),
                    (path, command),
                )
        code, _, err = self.run_epop("--lang", "fr", "connections", "/dev/full")
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            "Impossible de lire /dev/full : ce n'est pas un fichier ordinaire (le journal d'un relais "
            "est le fichier indiqué par son --journal).\n",
        )

    def test_follow_waits_for_a_missing_file_but_not_on_a_fifo(self) -> None:
        """--follow still waits for a journal not created yet; a FIFO that appears at the path is not opened (it would block)."""
        path = os.path.join(self.folder, "later.jsonl")
        clock = Clock()
        follower = JournalFollower(path, lambda record: None, clock)
        follower.start()
        self.addCleanup(follower.stop)
        self.assertTrue(follower.waiting)
        os.mkfifo(path)
        clock.advance(0.5)
        self.assertTrue(follower.waiting)


class LongLineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.problems: list[Problem] = []

    def numbers(self) -> list[int]:
        return [r["connection"] for r in read_file(self.path, self.problems.append)]

    def test_a_line_of_the_limit_is_read_one_longer_is_skipped(self) -> None:
        """A record padded to exactly MAX_LINE bytes is read; one byte more and the line is reported as too long, and reading goes on."""
        body = _line(2)[:-1]
        with open(self.path, "wb") as f:
            f.write(_line(1))
            f.write(body + b" " * (MAX_LINE - len(body)) + b"\n")
            f.write(body + b" " * (MAX_LINE + 1 - len(body)) + b"\n")
            f.write(_line(4))
        self.assertEqual(self.numbers(), [1, 2, 4])
        self.assertEqual(self.problems, [Problem(self.path, 3, too_long=True)])
        self.assertEqual(
            self.problems[0].describe().render("en"),
            f"{self.path}, line 3: longer than 1 MiB, not a journal record, skipped",
        )
        self.assertEqual(
            self.problems[0].describe().render("fr"),
            f"{self.path}, ligne 3 : plus longue que 1 Mio, pas un enregistrement du journal, ignorée",
        )

    def test_a_huge_line_is_skipped_in_bounded_memory(self) -> None:
        """A 64 MiB line without a newline (a file of zeros), then records: reading keeps a few MiB at most, reports the line, and reads on."""
        with open(self.path, "wb") as f:
            f.write(_line(1))
            f.truncate(len(_line(1)) + 64 * MAX_LINE)  # zeros, as sparse as can be
            f.seek(0, os.SEEK_END)
            f.write(b"\n" + _line(3) + b"\0" * (3 * MAX_LINE))
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        numbers = self.numbers()
        _, peak = tracemalloc.get_traced_memory()
        self.assertEqual(numbers, [1, 3])
        # The last line, unterminated, is too long to be one being written.
        self.assertEqual(self.problems, [Problem(self.path, 2, too_long=True), Problem(self.path, 4, too_long=True)])
        self.assertLess(peak, 8 * MAX_LINE)

    def test_a_short_torn_last_line_is_still_skipped_silently(self) -> None:
        """The rule for a crash's torn line is unchanged: an unterminated last line under the limit is no problem."""
        with open(self.path, "wb") as f:
            f.write(_line(1) + _line(2)[:20])
        self.assertEqual(self.numbers(), [1])
        self.assertEqual(self.problems, [])

    def test_follower_skips_a_long_line_across_polls(self) -> None:
        """Following: a line that grows past the limit over several polls is dropped as it comes, reported once, and the next records are delivered."""
        seen: list[dict[str, Any]] = []
        clock = Clock()
        follower = JournalFollower(self.path, seen.append, clock, on_problem=self.problems.append)
        with open(self.path, "wb") as f:
            f.write(_line(1) + b"x" * (MAX_LINE // 2))
        follower.start()
        self.addCleanup(follower.stop)
        for _ in range(3):
            with open(self.path, "ab") as f:
                f.write(b"x" * (MAX_LINE // 2))
            clock.advance(0.5)
        self.assertEqual(self.problems, [])
        self.assertLessEqual(len(follower._lines._pending), MAX_LINE)
        with open(self.path, "ab") as f:
            f.write(b"\n" + _line(3))
        clock.advance(0.5)
        self.assertEqual([r["connection"] for r in seen], [1, 3])
        self.assertEqual(self.problems, [Problem(self.path, 2, too_long=True)])

    def test_commands_report_a_long_line_and_go_on(self) -> None:
        """`epop journal` and `epop connections` report the long line on stderr and show the rest."""
        with open(self.path, "wb") as f:
            f.write(_line(1) + b"{" * (2 * MAX_LINE) + b"\n" + _line(3))
        for command in ("journal", "connections"):
            stdout, stderr = io.BytesIO(), io.StringIO()
            d = cli.run(reactor, ["--lang", "en", command, self.path], stdout=stdout, stderr=stderr, environ={"EPOP_CONFIG": self.mktemp()})
            self.assertEqual(self.successResultOf(d), 0)
            self.assertEqual(stderr.getvalue(), f"{self.path}, line 2: longer than 1 MiB, not a journal record, skipped\n")
            self.assertEqual(len(stdout.getvalue().decode().splitlines()), 4, command)
