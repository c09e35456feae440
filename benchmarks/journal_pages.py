"""
How fast the console pages through a large journal, beside reading it whole.

    .venv/bin/python -m benchmarks.journal_pages [LINES]

Writes a journal of LINES records (200 000 by default, about 60 MB) in a
temporary folder, then times, in one run: the newest page, the next one,
the newest 200 connections, a search for a text found nowhere (it reads
every line, backwards), and reading the journal whole as ``epop journal``
does.  The console reads pages in the reactor's thread pool, so even the
search holds up no transfer; the point here is what a person waits.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from epop.journal.pages import connection_rows, journal_page
from epop.journal.reader import read_journal

_TYPES = ("connection-opened", "object-instantiated", "object-released", "connection-closed")


def write_journal(path: str, lines: int) -> None:
    """LINES records of connections of four events each, as a busy relay writes them."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            number = i // 4 + 1
            kind = _TYPES[i % 4]
            record = {
                "time": "2026-12-04T06:00:00.000Z",
                "type": kind,
                "run": "bench",
                "connection": number,
                "client": "10.1.2.3:50000",
                "description": f"Connection {number}: {kind} " + "x" * 120,
            }
            f.write(json.dumps(record) + "\n")


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def main(argv: list[str]) -> int:
    lines = int(argv[0]) if argv else 200_000
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "journal.jsonl")
        write_journal(path, lines)
        size = os.path.getsize(path)
        first, (_, cursor) = timed(lambda: journal_page(path, before=None, limit=100))
        following, _ = timed(lambda: journal_page(path, before=cursor, limit=100))
        connections, _ = timed(lambda: connection_rows(path, 200))
        search, (found, _) = timed(lambda: journal_page(path, before=None, limit=100, text="found nowhere"))
        whole, count = timed(lambda: sum(1 for _ in read_journal(path)))
    rows = [
        ("newest page (100 records)", first),
        ("next page", following),
        ("newest 200 connections", connections),
        (f"a text found nowhere ({len(found)} records)", search),
        (f"the whole journal read ({count} records)", whole),
    ]
    print(f"journal: {lines} lines, {size / 1e6:.0f} MB")
    for label, seconds in rows:
        print(f"  {label:<40} {seconds * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
