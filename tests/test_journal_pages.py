"""
The console's journal pages: newest first, across rotated files, read
backwards a block at a time, with cursors that survive a rotation.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from epop.journal import pages
from epop.journal.pages import BLOCK, connection_rows, journal_page
from epop.journal.reader import open_journal
from epop.journal.writer import RotatingJournalWriter, encode_record


def record(n: int, **fields: Any) -> dict[str, Any]:
    found = {
        "time": f"2026-11-25T08:{n // 3600 % 60:02d}:{n // 60 % 60:02d}.{n % 60:03d}Z",
        "type": "object-released",
        "run": "r1",
        "connection": n % 7,
        "client": f"10.0.0.{n % 5}:5000",
        "description": f"record {n}",
    }
    found.update(fields)
    return found


def write(path: str, records: list[dict[str, Any]], tail: bytes = b"") -> None:
    with open(path, "ab") as f:
        for found in records:
            f.write(encode_record(found))
        f.write(tail)


def descriptions(records: list[dict[str, Any]]) -> list[str]:
    return [found["description"] for found in records]


def all_pages(path: str, limit: int, **filters: Any) -> list[list[str]]:
    """Every page, following the cursors, at most 1000 of them."""
    found, cursor = [], None
    for _ in range(1000):
        records, cursor = journal_page(path, before=cursor, limit=limit, **filters)
        found.append(descriptions(records))
        if cursor is None:
            return found
    raise AssertionError("more than 1000 pages")


class PageTests(TestCase):
    def test_newest_first_in_pages(self) -> None:
        """Pages follow each other with no record lost or twice, newest first."""
        path = self.mktemp()
        write(path, [record(n) for n in range(25)])
        found = all_pages(path, 10)
        self.assertEqual(
            found,
            [[f"record {n}" for n in range(24, 14, -1)],
             [f"record {n}" for n in range(14, 4, -1)],
             [f"record {n}" for n in range(4, -1, -1)]],
        )

    def test_exact_end(self) -> None:
        """A page that ends on the journal's first line says there is no next page."""
        path = self.mktemp()
        write(path, [record(n) for n in range(4)])
        self.assertEqual(all_pages(path, 2), [["record 3", "record 2"], ["record 1", "record 0"]])

    def test_ids(self) -> None:
        """A record with a connection gets its RUN:N id; others none."""
        path = self.mktemp()
        write(path, [record(1), {"time": "2026-11-25T08:00:00Z", "type": "listening-opened",
                                 "run": "r1", "description": "listening"}])
        records, _ = journal_page(path, before=None, limit=10)
        self.assertNotIn("id", records[0])
        self.assertEqual(records[1]["id"], "r1:1")

    def test_bad_lines_and_torn_tail(self) -> None:
        """Lines that are not records are skipped, and so is a torn last line."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(encode_record(record(1)) + b"not json\n\n[1,2]\n" + b"x" * (3 * BLOCK) + b"\n")
            f.write(encode_record(record(2)) + b'{"time": "2026-11-25T08:00:00Z", "ty')
        self.assertEqual(all_pages(path, 10), [["record 2", "record 1"]])

    def test_too_long_line(self) -> None:
        """A line longer than MAX_LINE is skipped without being held whole."""
        self.patch(pages, "MAX_LINE", 300)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(encode_record(record(1)))
            f.write(encode_record(record(3, description="y" * 500)))
            f.write(encode_record(record(2)))
        self.assertEqual(all_pages(path, 10), [["record 2", "record 1"]])

    def test_filters(self) -> None:
        """Types (any of), text (any case, in several fields), connections RUN:N."""
        path = self.mktemp()
        write(path, [
            record(1, type="connection-opened", client="10.9.9.9:1"),
            record(2, type="object-instantiated", description="Upload POST"),
            record(3, type="connection-closed", error="Integrity-Mismatch"),
            record(4, run="r2", connection=1, user="Alice"),
            record(5, run="r22", connection=1),
        ])
        page = lambda **f: descriptions(journal_page(path, before=None, limit=10, **f)[0])
        self.assertEqual(page(connections=["r22:1"]), ["record 5"])
        self.assertEqual(page(types=["connection-opened", "connection-closed"]),
                         ["record 3", "record 1"])
        self.assertEqual(page(text="upload post"), ["Upload POST"])
        self.assertEqual(page(text="INTEGRITY"), ["record 3"])
        self.assertEqual(page(text="10.9.9"), ["record 1"])
        self.assertEqual(page(text="alice"), ["record 4"])
        self.assertEqual(page(connections=["r2:1"]), ["record 4"])
        self.assertEqual(page(connections=["r1:1", "r1:3"]), ["record 3", "record 1"])

    def test_malformed(self) -> None:
        """A cursor, connection or limit that cannot be used is a clear ValueError."""
        path = self.mktemp()
        write(path, [record(1)])
        for kwargs, words in [
            ({"before": "garbage"}, "not a journal page cursor"),
            ({"before": "1-2"}, "not a journal page cursor"),
            ({"before": None, "connections": ["five"]}, "expected RUN:NUMBER"),
            ({"before": None, "limit": 0}, "at least 1"),
        ]:
            kwargs.setdefault("limit", 10)
            error = self.assertRaises(ValueError, journal_page, path, **kwargs)
            self.assertIn(words, str(error))

    def test_no_journal(self) -> None:
        """No journal yet: an empty page, the end."""
        self.assertEqual(journal_page(self.mktemp(), before=None, limit=5), ([], None))

    def test_across_rotated_files(self) -> None:
        """The rotated files follow the current one, newest first, as the writer names them."""
        path = self.mktemp()
        writer = RotatingJournalWriter(path, rotate=2000, keep=0, clock=Clock())
        for n in range(60):
            writer.write(record(n))
        writer.close()
        self.assertTrue(os.path.exists(path + ".3"))
        found = [d for page in all_pages(path, 7) for d in page]
        self.assertEqual(found, [f"record {n}" for n in range(59, -1, -1)])

    def test_cursor_survives_rotation(self) -> None:
        """A rotation between two pages: the next page goes on where the last one stopped."""
        path = self.mktemp()
        writer = RotatingJournalWriter(path, rotate=3000, keep=0, clock=Clock())
        for n in range(10):
            writer.write(record(n))
        first, cursor = journal_page(path, before=None, limit=4)
        self.assertEqual(descriptions(first), [f"record {n}" for n in range(9, 5, -1)])
        for n in range(10, 40):  # rotates: the file read is renamed
            writer.write(record(n))
        writer.close()
        self.assertTrue(os.path.exists(path + ".1"))
        second, cursor = journal_page(path, before=cursor, limit=4)
        self.assertEqual(descriptions(second), [f"record {n}" for n in range(5, 1, -1)])
        third, cursor = journal_page(path, before=cursor, limit=4)
        self.assertEqual(descriptions(third), ["record 1", "record 0"])
        self.assertIsNone(cursor)

    def test_deleted_file_ends(self) -> None:
        """The cursor's file deleted since (retention): the journal ends there."""
        path = self.mktemp()
        write(path, [record(n) for n in range(10)])
        _, cursor = journal_page(path, before=None, limit=4)
        os.rename(path, path + ".gone")
        write(path, [record(n) for n in range(3)])
        self.assertEqual(journal_page(path, before=cursor, limit=4), ([], None))

    def test_first_page_reads_little(self) -> None:
        """The first page of a 50 000-line journal reads a few blocks, not the file."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"".join(encode_record(record(n)) for n in range(50_000)))
        size = os.path.getsize(path)
        self.assertGreater(size, 50 * BLOCK)
        read = []

        class Counting:
            def __init__(self, stream: Any) -> None:
                self.stream = stream

            def read(self, size: int) -> bytes:
                data = self.stream.read(size)
                read.append(len(data))
                return data

            def __getattr__(self, name: str) -> Any:
                return getattr(self.stream, name)

            def __enter__(self) -> Counting:
                return self

            def __exit__(self, *exc: object) -> None:
                self.stream.close()

        self.patch(pages, "open_journal", lambda name: Counting(open_journal(name)))
        records, cursor = journal_page(path, before=None, limit=100)
        self.assertEqual(descriptions(records)[:2], ["record 49999", "record 49998"])
        self.assertEqual(len(records), 100)
        self.assertLessEqual(sum(read), 2 * BLOCK)
        read.clear()
        records, cursor = journal_page(path, before=cursor, limit=100)
        self.assertEqual(descriptions(records)[0], "record 49899")
        self.assertLessEqual(sum(read), 2 * BLOCK)


class ConnectionRowsTests(TestCase):
    def test_rows(self) -> None:
        """The newest connections first, with kind, state, outcome and user."""
        path = self.mktemp()
        t = "2026-11-25T08:00:0{}Z"
        write(path, [
            {"time": t.format(0), "type": "listening-opened", "run": "r1"},
            {"time": t.format(1), "type": "connection-opened", "run": "r1", "connection": 1,
             "client": "10.0.0.1:1"},
            {"time": t.format(2), "type": "connection-opened", "run": "r1", "connection": 2,
             "client": "10.0.0.2:2"},
            {"time": t.format(3), "type": "object-instantiated", "run": "r1", "connection": 2,
             "client": "10.0.0.2:2", "kind": "tunnel", "user": "alice"},
            {"time": t.format(4), "type": "connection-closed", "run": "r1", "connection": 1,
             "client": "10.0.0.1:1", "bytes_in": 10, "bytes_out": 20, "duration": 3.0,
             "reason": "closed-by-client"},
            {"time": t.format(5), "type": "connection-opened", "run": "r1", "connection": 3,
             "client": "10.0.0.3:3"},
        ])
        rows = connection_rows(path, 2)
        self.assertEqual([row["id"] for row in rows], ["r1:3", "r1:2"])
        self.assertEqual(rows[1], {
            "id": "r1:2", "run": "r1", "connection": 2, "client": "10.0.0.2:2",
            "kind": "tunnel", "opened": "2026-11-25T08:00:02.000Z", "closed": None,
            "bytes_in": None, "bytes_out": None, "outcome": None, "outcome_text": None, "state": "open",
            "user": "alice",
        })
        rows = connection_rows(path, 10)
        self.assertEqual([row["id"] for row in rows], ["r1:3", "r1:2", "r1:1"])
        self.assertEqual(
            {k: rows[2][k] for k in ("kind", "state", "outcome", "closed", "bytes_in")},
            {"kind": "e-pop", "state": "closed", "outcome": "closed-by-client",
             "closed": "2026-11-25T08:00:04.000Z", "bytes_in": 10},
        )
        # The outcome's label, for a reader in their language (the console).
        self.assertEqual(rows[2]["outcome_text"].render("fr"), "fermée par le client")
        self.assertEqual(connection_rows(self.mktemp(), 5), [])
