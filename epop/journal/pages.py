"""
The journal a page at a time, newest first, for the relay's console: its
"Journal d'écoute" shows the latest records and loads older ones on demand,
and its "Connexions" list the latest connections.

A journal may be hundreds of megabytes across its rotated files, so it is
read backwards, from the end of the newest file, a block at a time: a page
costs what its records take, not what the journal holds (memory stays
within a block, a line of at most L{MAX_LINE} and the page).  Lines that are
not records are skipped as C{epop journal} skips them (L{parse_line}), and so
is a torn last line (the relay may be writing it).

The next page is named by a cursor: the file it continues in, by identity
(device and inode, which the relay's rotation keeps since it renames the
file, L{epop.journal.writer}), and the offset of the first line already
shown.  So it stays right when the journal rotates between two pages: the
file is found again under its new name (C{PATH.1}, C{PATH.2026-11-25}), and
older files are the ones listed after it.  A file deleted since (retention)
ends the journal.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from epop.journal.connections import connection_summaries
from epop.journal.filters import JournalFilter
from epop.journal.reader import MAX_LINE, open_journal, parse_line
from epop.journal.table import outcome_label
from epop.journal.writer import rotated_files

__all__ = ["BLOCK", "connection_rows", "journal_page", "record_id"]

#: How much of a file is read at once, backwards.
BLOCK = 1 << 16

_CURSOR = re.compile(r"(\d+)-(\d+)-(\d+)")
_CONNECTION = re.compile(r"([0-9A-Za-z._-]+):(\d+)")
#: The fields the text filter looks in.
_TEXT_FIELDS = ("description", "client", "type", "user", "error")


@dataclass(frozen=True)
class _Cursor:
    """Where the next page starts: before C{offset} in the file C{device}/C{inode}."""

    device: int
    inode: int
    offset: int

    def __str__(self) -> str:
        return f"{self.device}-{self.inode}-{self.offset}"

    @classmethod
    def parse(cls, text: str) -> _Cursor:
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise ValueError(
                f"{text[:80]!r} is not a journal page cursor: give back the 'next' "
                "value of the previous page unchanged"
            )
        return cls(int(match[1]), int(match[2]), int(match[3]))


def record_id(record: dict[str, Any]) -> str | None:
    """C{RUN:N}, naming a record's connection, or None if it has none."""
    number = record.get("connection")
    if not isinstance(number, int) or isinstance(number, bool):
        return None
    return f"{record.get('run', '')}:{number}"


def _newest_first(path: str) -> list[str]:
    return [path, *reversed(rotated_files(path))]


def _lines_backwards(stream: IO[bytes], end: int) -> Iterator[tuple[int, bytes | None]]:
    """
    The whole lines before C{end}, last first, each with its offset; a line
    longer than L{MAX_LINE} comes as None.  What follows the last newline
    before C{end} is a torn line, skipped.
    """
    position = end
    tail, too_long, torn = b"", False, True
    while position > 0:
        size = min(BLOCK, position)
        position -= size
        stream.seek(position)
        chunk = stream.read(size)
        cut = len(chunk)
        while (newline := chunk.rfind(b"\n", 0, cut)) >= 0:
            piece = chunk[newline + 1 : cut]
            if not torn:
                long = too_long or len(piece) + len(tail) > MAX_LINE
                yield position + newline + 1, None if long else piece + tail
            torn, tail, too_long = False, b"", False
            cut = newline
        piece = chunk[:cut]
        if too_long or len(piece) + len(tail) > MAX_LINE:
            tail, too_long = b"", True
        else:
            tail = piece + tail
    if not torn:
        yield 0, None if too_long else tail


def _records_backwards(
    path: str, start: _Cursor | None = None
) -> Iterator[tuple[_Cursor, bool, dict[str, Any]]]:
    """
    The journal's records, newest first, from C{start} (the end without
    one): each with the cursor of its line, and whether it is in the oldest
    file.
    """
    names = _newest_first(path)
    found = start is None
    for index, name in enumerate(names):
        try:
            stream = open_journal(name)
        except FileNotFoundError:
            continue  # rotated or deleted since it was listed
        with stream:
            info = os.fstat(stream.fileno())
            end = info.st_size
            if not found:
                assert start is not None
                if (info.st_dev, info.st_ino) != (start.device, start.inode):
                    continue
                found, end = True, min(start.offset, end)
            oldest = index == len(names) - 1
            for offset, raw in _lines_backwards(stream, end):
                record = parse_line(raw) if raw is not None else None
                if record is not None:
                    yield _Cursor(info.st_dev, info.st_ino, offset), oldest, record


def _connection(text: str) -> str:
    """C{RUN:N} checked, as L{record_id} writes it."""
    match = _CONNECTION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text[:80]!r} is not a connection: expected RUN:NUMBER")
    return f"{match[1]}:{int(match[2])}"


def _has_text(record: dict[str, Any], needle: str) -> bool:
    return any(
        isinstance(record.get(field), str) and needle in record[field].casefold()
        for field in _TEXT_FIELDS
    )


def journal_page(
    path: str,
    *,
    before: str | None,
    limit: int,
    types: Sequence[str] = (),
    text: str = "",
    connections: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], str | None]:
    """
    Up to C{limit} records of the journal C{path}, newest first, and the
    cursor of the next (older) page, None at the end.

    @param before: the previous page's cursor; None for the newest page.
    @param types: keep records of any of these types (empty: all).
    @param text: keep records holding it, in any case, in their
        description, client, type, user or error.
    @param connections: keep records of these connections, C{RUN:N}.
    @raise ValueError: a malformed cursor, connection or limit, saying which.
    """
    if limit < 1:
        raise ValueError(f"the page size must be at least 1, not {limit}")
    start = _Cursor.parse(before) if before is not None else None
    wanted = JournalFilter(types=tuple(types))
    idents = {_connection(c) for c in connections}
    needle = text.casefold()
    records: list[dict[str, Any]] = []
    try:
        for cursor, oldest, record in _records_backwards(path, start):
            ident = record_id(record)
            if idents and ident not in idents:
                continue
            if not wanted.matches(record) or (needle and not _has_text(record, needle)):
                continue
            records.append({**record, "id": ident} if ident is not None else record)
            if len(records) == limit:
                end = oldest and cursor.offset == 0
                return records, None if end else str(cursor)
    except FileNotFoundError:
        pass  # no journal yet
    return records, None


def connection_rows(
    path: str, limit: int, now: float | None = None
) -> list[dict[str, Any]]:
    """
    The newest C{limit} connections of the journal C{path}, newest first, as
    the console lists them.  The journal is read backwards only as far as
    the opening of the C{limit}-th newest connection.
    """
    records: list[dict[str, Any]] = []
    opened: set[str | None] = set()
    whole = True
    try:
        for _cursor, _oldest, record in _records_backwards(path):
            if len(opened) >= limit:
                whole = False
                break
            records.append(record)
            if record.get("type") == "connection-opened":
                opened.add(record_id(record))
    except FileNotFoundError:
        pass
    records.reverse()
    summaries = connection_summaries(records, time.time() if now is None else now)
    if not whole:
        # Connections opened before the ones kept, still writing records.
        summaries = [s for s in summaries if s.ident(True) in opened]
    rows = []
    for summary in reversed(summaries[-limit:] if limit > 0 else []):
        found = summary.to_json()
        rows.append(
            {
                "id": summary.ident(True),
                "run": summary.run,
                "connection": summary.connection,
                "client": summary.client,
                "kind": summary.kind,
                "opened": found["opened"],
                "closed": found["closed"],
                "bytes_in": summary.bytes_in,
                "bytes_out": summary.bytes_out,
                "outcome": summary.reason,
                "outcome_text": outcome_label(summary.reason) if summary.reason else None,
                "state": summary.state,
                "user": summary.user,
            }
        )
    return rows
